//! Data sets of any shape: vectors, time series and images, in f32 or bytes, read from NumPy
//! `.npy`/`.npz` files ([`npy`]), CSV tables ([`csv`]) or IDX files ([`idx`]), with per-channel
//! normalisation fitted on the training split ([`normalize`]).
//!
//! Every file is mapped onto the model's input shape `[C, H, W]`:
//!
//! | samples in the file | model input | what |
//! |---|---|---|
//! | `[N, D]` | `[1, 1, D]` | feature vectors (CSV tables are always this) |
//! | `[N, C, T]` | `[C, T, 1]` | time series: time runs along the height, so a `[k, 1]` kernel is a 1-D convolution |
//! | `[N, C, H, W]` | `[C, H, W]` | images |
//! | IDX `[N, H, W]` | `[1, H, W]` | grey-scale images (MNIST) |
//!
//! Values are f32 (f64 files are converted) or u8 (kept as bytes: the device reads raw bytes).
//! Labels are integers `0..K-1` of any integer type in the file; `K` is the largest label plus
//! one unless the caller gives it, and at most [`tinybayes::format::MAX_CLASSES`].
//!
//! Every wrong input is a [`DataError`] whose message is one line naming the file; sizes are
//! checked against [`MAX_DATA_BYTES`] before anything is allocated.

pub mod csv;
pub mod idx;
pub mod normalize;
pub mod npy;

use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

pub use normalize::{Normalization, NormalizeMode};

/// Largest array accepted, in bytes as stored in the file (1 GiB, like the IDX reader's cap).
pub const MAX_DATA_BYTES: u64 = crate::idx::MAX_DECODED_BYTES;

/// Why a data file could not be used: the file and one line saying what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct DataError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: DataErrorKind,
}

/// What is wrong with a data file (see [`DataError`]).
#[derive(Debug, thiserror::Error)]
pub enum DataErrorKind {
    /// The file could not be opened or read.
    #[error("cannot read: {0}")]
    Io(std::io::Error),
    /// The file is not of its format, is truncated or is corrupt.
    #[error("{0}")]
    Corrupt(String),
    /// The samples or labels have a shape this crate cannot use.
    #[error("{0}")]
    Shape(String),
    /// An element type this crate cannot use.
    #[error("{what} have dtype {dtype}, which is not supported ({supported})")]
    Dtype {
        /// `"samples"` or `"labels"` (with the key, in an `.npz`).
        what: String,
        /// The dtype found.
        dtype: String,
        /// The dtypes accepted.
        supported: &'static str,
    },
    /// A label is negative or too large.
    #[error("label {label} of example {index} {why}")]
    Label {
        /// Example whose label is wrong.
        index: usize,
        /// The label found.
        label: i128,
        /// Why it is refused.
        why: String,
    },
    /// A feature is NaN or infinite.
    #[error("example {index} has a non-finite value ({value}) at position {position}")]
    NonFinite {
        /// Example at fault.
        index: usize,
        /// Position of the value within the example (channel-major).
        position: usize,
        /// The value.
        value: f32,
    },
    /// Samples and labels disagree on the number of examples.
    #[error("{samples} examples but {labels} labels{}", if where_.is_empty() { String::new() } else { format!(" ({where_})") })]
    CountMismatch {
        /// Examples among the samples.
        samples: usize,
        /// Labels.
        labels: usize,
        /// Which arrays (keys), if any.
        where_: String,
    },
    /// An `.npz` lacks an array.
    #[error("no array {key:?} (it has {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    MissingKey {
        /// The key asked for.
        key: String,
        /// The keys present.
        available: Vec<String>,
    },
    /// An array is larger than [`MAX_DATA_BYTES`].
    #[error("{what} of shape {shape:?} would take {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Which array.
        what: String,
        /// Its shape as declared.
        shape: Vec<usize>,
        /// Bytes it would take (`u64::MAX` on overflow).
        bytes: u64,
        /// The cap.
        limit: u64,
    },
    /// No examples (or examples of no values).
    #[error("the data set is empty ({0})")]
    Empty(String),
    /// Labels were needed but the file has none.
    #[error("{0}")]
    NoLabels(String),
}

impl DataError {
    /// An error about `path`.
    pub fn new(path: &Path, kind: DataErrorKind) -> Self {
        DataError {
            path: path.to_path_buf(),
            kind,
        }
    }
}

/// Sample values: f32, or raw bytes (kept as bytes for the device).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// One byte per value.
    U8(Vec<u8>),
    /// One f32 per value.
    F32(Vec<f32>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::U8(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"u8"` or `"f32"`.
    pub fn dtype(&self) -> &'static str {
        match self {
            Values::U8(_) => "u8",
            Values::F32(_) => "f32",
        }
    }

    /// The values of examples `indices`, `per` values each, in that order.
    fn gather(&self, indices: &[usize], per: usize) -> Values {
        fn pick<T: Copy>(v: &[T], indices: &[usize], per: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(indices.len() * per);
            for &i in indices {
                if let Some(s) = v.get(i * per..(i + 1) * per) {
                    out.extend_from_slice(s);
                }
            }
            out
        }
        match self {
            Values::U8(v) => Values::U8(pick(v, indices, per)),
            Values::F32(v) => Values::F32(pick(v, indices, per)),
        }
    }
}

/// Examples without labels: values shaped as the model input `[C, H, W]`, example after
/// example, channel-major within each.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// The model input shape of one example, `[C, H, W]`.
    pub shape: [usize; 3],
    /// `len() * C * H * W` values.
    pub values: Values,
}

impl Samples {
    /// Values per example (`C * H * W`).
    pub fn features(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.features()).unwrap_or(0)
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape as written in a message: `CxHxW`.
    pub fn shape_text(&self) -> String {
        shape_text(self.shape)
    }

    /// Checks that the samples are the model's input, shape for shape, in one line naming both.
    pub fn check_shape(&self, model: [usize; 3]) -> Result<(), String> {
        if self.shape == model {
            Ok(())
        } else {
            Err(format!(
                "the data's examples are {} but the model's input is {}",
                self.shape_text(),
                shape_text(model)
            ))
        }
    }
}

/// `[C, H, W]` written `CxHxW`.
pub fn shape_text(shape: [usize; 3]) -> String {
    format!("{}x{}x{}", shape[0], shape[1], shape[2])
}

/// One part of a data file (its training or test split): samples, with labels where the file
/// has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The examples.
    pub samples: Samples,
    /// One class index per example, when the file has labels.
    pub labels: Option<Vec<u16>>,
}

/// A whole data file: its training split and, where it has one, its test split.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// The file read.
    pub path: PathBuf,
    /// The training split (the whole file when it has no split).
    pub train: Part,
    /// The test split, if the file has one.
    pub test: Option<Part>,
}

/// The keys of the arrays of an `.npz` file (config `data_keys = { x_train = "..." }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataKeys {
    /// Training samples [default: `x_train`].
    pub x_train: String,
    /// Training labels [default: `y_train`].
    pub y_train: String,
    /// Test samples, optional in the file [default: `x_test`].
    pub x_test: String,
    /// Test labels [default: `y_test`].
    pub y_test: String,
}

impl Default for DataKeys {
    fn default() -> Self {
        DataKeys {
            x_train: "x_train".into(),
            y_train: "y_train".into(),
            x_test: "x_test".into(),
            y_test: "y_test".into(),
        }
    }
}

impl DataKeys {
    /// Parses `--data-keys`: comma-separated `NAME=KEY` pairs, NAME one of `x_train`,
    /// `y_train`, `x_test`, `y_test` (the others keep their defaults), e.g.
    /// `x_test=X_val,y_test=y_val`.
    pub fn parse(text: &str) -> Result<DataKeys, String> {
        let mut keys = DataKeys::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, key)) = pair.split_once('=') else {
                return Err(format!("--data-keys wants NAME=KEY pairs, got {pair:?}"));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("--data-keys: empty key for {}", name.trim()));
            }
            let slot = match name.trim() {
                "x_train" => &mut keys.x_train,
                "y_train" => &mut keys.y_train,
                "x_test" => &mut keys.x_test,
                "y_test" => &mut keys.y_test,
                other => {
                    return Err(format!(
                        "--data-keys: {other:?} is not x_train, y_train, x_test or y_test"
                    ))
                }
            };
            *slot = key.to_string();
        }
        Ok(keys)
    }
}

/// The file formats `--data FILE` takes, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NumPy `.npz` archive (samples and labels by key).
    Npz,
    /// NumPy `.npy` array (samples only; labels from a second `.npy`).
    Npy,
    /// CSV table with a `label` column.
    Csv,
}

impl Format {
    /// The format of `path` from its extension, or an error naming the ones supported.
    pub fn of(path: &Path) -> Result<Format, DataError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("npz") => Ok(Format::Npz),
            Some("npy") => Ok(Format::Npy),
            Some("csv") => Ok(Format::Csv),
            _ => Err(DataError::new(
                path,
                DataErrorKind::Shape(
                    "unknown data format (give a .npz, .npy or .csv file, or a folder of IDX files)"
                        .into(),
                ),
            )),
        }
    }
}

/// Reads a data file of any supported format: an `.npz` by `keys`, an `.npy` of samples with
/// labels from `labels` (an `.npy` of integers, optional), or a CSV table.
pub fn load(path: &Path, keys: &DataKeys, labels: Option<&Path>) -> Result<DataFile, DataError> {
    let file = match Format::of(path)? {
        Format::Npz => npy::load_npz(path, keys)?,
        Format::Npy => npy::load_npy(path, labels)?,
        Format::Csv => csv::load_csv(path)?,
    };
    if let (Format::Npz | Format::Csv, Some(l)) = (Format::of(path)?, labels) {
        return Err(DataError::new(
            l,
            DataErrorKind::Shape(format!(
                "separate labels go with a .npy of samples only; {} has its own",
                path.display()
            )),
        ));
    }
    Ok(file)
}

/// What the trainer learns from the data: the input shape `[C, H, W]` and the class count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSpec {
    /// Model input shape of one example.
    pub input_shape: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

/// Labelled examples for training or evaluation: samples, one label each, and the class count.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSet {
    /// The examples.
    pub samples: Samples,
    /// One class index below `classes` per example.
    pub labels: Vec<u16>,
    /// Number of classes.
    pub classes: usize,
}

impl DataFile {
    /// The class count: `given`, or the largest label of either split plus one; checked
    /// against every label and [`tinybayes::format::MAX_CLASSES`].
    pub fn classes(&self, given: Option<usize>) -> Result<usize, DataError> {
        let parts = std::iter::once(&self.train).chain(self.test.as_ref());
        let mut largest: Option<(usize, u16)> = None;
        for part in parts {
            for (i, &l) in part.labels.iter().flatten().enumerate() {
                if largest.is_none_or(|(_, m)| l > m) {
                    largest = Some((i, l));
                }
            }
        }
        let found = largest.map_or(0, |(_, m)| usize::from(m) + 1);
        let classes = given.unwrap_or(found);
        let max = tinybayes::format::MAX_CLASSES;
        if classes == 0 || classes > max {
            return Err(self.err(DataErrorKind::Shape(format!(
                "{classes} classes; a model has 1 to {max}"
            ))));
        }
        if let Some((index, label)) = largest.filter(|&(_, m)| usize::from(m) >= classes) {
            return Err(self.err(DataErrorKind::Label {
                index,
                label: i128::from(label),
                why: format!("is not below the number of classes {classes}"),
            }));
        }
        Ok(classes)
    }

    /// The training split as a labelled set of `classes` classes (see [`Self::classes`]).
    pub fn training_set(&self, classes: Option<usize>) -> Result<DataSet, DataError> {
        if self.train.labels.is_none() {
            return self.labelled(&self.train, 0, "training");
        }
        let classes = self.classes(classes)?;
        self.labelled(&self.train, classes, "training")
    }

    /// The split to evaluate or predict on: the test split, or the whole file when it has none.
    pub fn eval_part(&self) -> &Part {
        self.test.as_ref().unwrap_or(&self.train)
    }

    /// [`Self::eval_part`] as a labelled set of `classes` classes.
    pub fn eval_set(&self, classes: usize) -> Result<DataSet, DataError> {
        self.labelled(self.eval_part(), classes, "evaluation")
    }

    fn labelled(&self, part: &Part, classes: usize, what: &str) -> Result<DataSet, DataError> {
        let labels = part.labels.clone().ok_or_else(|| {
            self.err(DataErrorKind::NoLabels(format!(
                "the {what} examples have no labels (give --labels FILE.npy with a .npy of samples)"
            )))
        })?;
        if let Some((index, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= classes)
        {
            return Err(self.err(DataErrorKind::Label {
                index,
                label: i128::from(l),
                why: format!("is not below the number of classes {classes}"),
            }));
        }
        Ok(DataSet {
            samples: part.samples.clone(),
            labels,
            classes,
        })
    }

    fn err(&self, kind: DataErrorKind) -> DataError {
        DataError::new(&self.path, kind)
    }
}

impl DataSet {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per example.
    pub fn features(&self) -> usize {
        self.samples.features()
    }

    /// Input shape and class count, what the trainer builds a network for.
    pub fn spec(&self) -> DataSpec {
        DataSpec {
            input_shape: self.samples.shape,
            classes: self.classes,
        }
    }

    /// All examples normalised by `norm`, as an `[n, C*H*W]` matrix.
    pub fn to_f32(&self, norm: &Normalization) -> Array2<f32> {
        let data = norm.apply(&self.samples);
        Array2::from_shape_vec((self.len(), self.features()), data)
            .unwrap_or_else(|_| unreachable!("value count validated when the set was built"))
    }

    /// Labels as `usize` class indices.
    pub fn labels_usize(&self) -> Vec<usize> {
        self.labels.iter().map(|&l| usize::from(l)).collect()
    }

    /// The examples at `indices` (in that order; out-of-range indices are skipped).
    pub fn subset(&self, indices: &[usize]) -> DataSet {
        let kept: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| i < self.len())
            .collect();
        DataSet {
            samples: Samples {
                shape: self.samples.shape,
                values: self.samples.values.gather(&kept, self.features()),
            },
            labels: kept.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
        }
    }

    /// The first `n` examples (all of them when `n >= len()`).
    pub fn take(&self, n: usize) -> DataSet {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }

    /// Splits off `n_val` examples for validation by a seeded shuffle, as
    /// [`crate::idx::Dataset::split_validation`] does (the same examples for the same
    /// `(len, n_val, seed)`), and returns `(train, validation)`.
    pub fn split_validation(
        &self,
        n_val: usize,
        seed: u64,
    ) -> Result<(DataSet, DataSet), crate::idx::IdxError> {
        if n_val >= self.len() {
            return Err(crate::idx::IdxError::SplitTooLarge {
                requested: n_val,
                available: self.len(),
            });
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let (val, train) = order.split_at_mut(n_val);
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(train), self.subset(val)))
    }

    /// A 64-bit fingerprint of the contents, used to check that a resumed run sees the same
    /// data. Grey-scale byte images of fewer than 256 classes hash exactly as
    /// [`crate::idx::Dataset::fingerprint`] does, so runs started before this type existed
    /// resume; every other set also hashes its shape and dtype.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |w: u64| {
            h ^= w;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        let [c, rows, cols] = self.samples.shape;
        let legacy = c == 1 && matches!(self.samples.values, Values::U8(_)) && self.classes <= 256;
        if !legacy {
            // A tag no legacy stream starts with (rows of an image are far fewer).
            eat(u64::MAX);
            eat(c as u64);
            eat(u64::from(matches!(self.samples.values, Values::F32(_))));
        }
        for v in [rows, cols, self.len(), self.classes] {
            eat(v as u64);
        }
        let mut eat_bytes = |bytes: &mut dyn Iterator<Item = u8>| {
            let mut word = [0u8; 8];
            let mut n = 0;
            for b in bytes {
                word[n] = b;
                n += 1;
                if n == 8 {
                    eat(u64::from_le_bytes(word));
                    n = 0;
                }
            }
            let mut tail = [0u8; 8];
            tail[..n].copy_from_slice(&word[..n]);
            eat(u64::from_le_bytes(tail) ^ ((n as u64) << 59));
        };
        match &self.samples.values {
            Values::U8(v) => eat_bytes(&mut v.iter().copied()),
            Values::F32(v) => eat_bytes(&mut v.iter().flat_map(|x| x.to_le_bytes())),
        }
        if legacy {
            eat_bytes(&mut self.labels.iter().map(|&l| l as u8));
        } else {
            eat_bytes(&mut self.labels.iter().flat_map(|l| l.to_le_bytes()));
        }
        h
    }
}

impl From<crate::idx::Dataset> for DataSet {
    fn from(d: crate::idx::Dataset) -> Self {
        DataSet {
            samples: Samples {
                shape: [1, d.rows, d.cols],
                values: Values::U8(d.pixels),
            },
            labels: d.labels.into_iter().map(u16::from).collect(),
            classes: d.classes,
        }
    }
}

/// Maps the shape of a file's sample array (`[N, ...]`) onto the model input `[C, H, W]`
/// (module docs), or says why it cannot.
pub fn input_shape(dims: &[usize]) -> Result<[usize; 3], String> {
    let shape = match dims {
        [_, d] => [1, 1, *d],
        [_, c, t] => [*c, *t, 1],
        [_, c, h, w] => [*c, *h, *w],
        _ => {
            return Err(format!(
                "samples have shape {dims:?}; expected [N, D] vectors, [N, C, T] time series or \
                 [N, C, H, W] images"
            ))
        }
    };
    if shape.contains(&0) {
        return Err(format!(
            "samples have shape {dims:?}, with no values per example"
        ));
    }
    Ok(shape)
}

/// Checks that every value is finite, naming the first that is not.
pub fn check_finite(samples: &Samples) -> Result<(), DataErrorKind> {
    if let Values::F32(v) = &samples.values {
        let per = samples.features().max(1);
        if let Some((i, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(DataErrorKind::NonFinite {
                index: i / per,
                position: i % per,
                value,
            });
        }
    }
    Ok(())
}

/// Converts integer labels to class indices, refusing negative ones and ones at or above
/// [`tinybayes::format::MAX_CLASSES`].
pub fn class_indices(labels: &[i128]) -> Result<Vec<u16>, DataErrorKind> {
    let max = tinybayes::format::MAX_CLASSES;
    labels
        .iter()
        .enumerate()
        .map(|(index, &label)| {
            if label < 0 {
                Err(DataErrorKind::Label {
                    index,
                    label,
                    why: "is negative (labels are class indices 0..K-1)".into(),
                })
            } else if label >= max as i128 {
                Err(DataErrorKind::Label {
                    index,
                    label,
                    why: format!("is too large (at most {max} classes)"),
                })
            } else {
                Ok(label as u16)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
