//! IDX files (MNIST's format) as data sets: `[N, H, W]` byte images are the model input
//! `[1, H, W]`. The reading itself is [`crate::idx`]'s; this module maps its
//! [`crate::idx::Dataset`] onto [`DataSet`].

use std::path::Path;

use super::{DataSet, Part, Samples, Values};

/// Reads an IDX image file and its label file as a labelled [`DataSet`] of `classes` classes,
/// with [`crate::idx::load_labelled`]'s one-line errors.
pub fn load_labelled(images: &Path, labels: &Path, classes: usize) -> anyhow::Result<DataSet> {
    Ok(crate::idx::load_labelled(images, labels, classes)?.into())
}

/// An IDX image array (rank 3, `[N, H, W]`) as [`Samples`] of shape `[1, H, W]`; other ranks
/// are flattened to vectors `[1, 1, D]`.
pub fn samples(array: crate::idx::IdxArray) -> Samples {
    let shape = match array.dims.as_slice() {
        [_, h, w] => [1, *h, *w],
        [_, rest @ ..] => [1, 1, rest.iter().product()],
        [] => [1, 1, 0],
    };
    Samples {
        shape,
        values: Values::U8(array.data),
    }
}

/// An IDX image array with optional labels as a [`Part`].
pub fn part(images: crate::idx::IdxArray, labels: Option<crate::idx::IdxArray>) -> Part {
    Part {
        samples: samples(images),
        labels: labels.map(|l| l.data.into_iter().map(u16::from).collect()),
    }
}
