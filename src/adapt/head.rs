//! The head file: the two linear layers that replace an adapted last layer, written in place
//! without an allocator (format version 1, `docs/FORMAT.md`; the writer module's
//! `ModelSpec::to_bytes` gives the same bytes for the same layers, which a test checks).

use super::{tri, AdaptError, LastLayer};
use crate::format::{
    self, align_up, header, record, Activation, LayerKind, Posterior, HEADER_LEN, LAYER_RECORD_LEN,
    MIN_FORMAT_VERSION, TRAILER_LEN,
};

/// Sizes of the head's two layers.
struct Layout {
    /// Outputs of the first layer: `F` copies of φ, then each class's `u_k`.
    units: usize,
    nnz_a: usize,
    nnz_b: usize,
    a_len: usize,
    b_len: usize,
}

impl Layout {
    fn of(l: &LastLayer<'_, '_>) -> Option<Self> {
        let f = l.features;
        let bias = usize::from(l.bias_adapts());
        let mut units = f;
        let mut nnz_a = f;
        let mut nnz_b = 0;
        for k in 0..l.classes {
            let n = l.adaptable(k);
            let weights = n - bias;
            units += n;
            nnz_a += tri(weights, 0) + bias * weights;
            nnz_b += l.row(k).count() + n;
        }
        let sparse = |posterior: Posterior, inputs, outputs, nnz| {
            format::payload_len(format::Storage::Sparse, posterior, inputs, outputs, nnz)
        };
        Some(Layout {
            units,
            nnz_a,
            nnz_b,
            a_len: sparse(Posterior::Deterministic, f, units, nnz_a)?,
            b_len: sparse(Posterior::Gaussian, units, l.classes, nnz_b)?,
        })
    }

    fn a_start(&self) -> usize {
        HEADER_LEN + 2 * LAYER_RECORD_LEN
    }
    fn b_start(&self) -> usize {
        self.a_start() + self.a_len
    }
    fn file_len(&self) -> usize {
        self.b_start() + self.b_len + TRAILER_LEN
    }
}

/// Offsets of one sparse payload's arrays.
struct Sparse {
    bias: usize,
    row_ptr: usize,
    cols: usize,
    values: usize,
}

impl Sparse {
    fn at(start: usize, outputs: usize, nnz: usize) -> Self {
        let row_ptr = start + 4 * outputs;
        let cols = row_ptr + 4 * (outputs + 1);
        // `nnz` is bounded by a payload length that fitted in `usize`.
        let values = cols + align_up(2 * nnz).unwrap_or(0);
        Sparse {
            bias: start,
            row_ptr,
            cols,
            values,
        }
    }
}

fn put_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_f32(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl LastLayer<'_, '_> {
    /// Words (u32) of the head file [`Self::write_head`] writes.
    pub fn head_len(&self) -> usize {
        Layout::of(self).map_or(usize::MAX, |l| l.file_len().div_ceil(4))
    }
}

pub(super) fn write<'b>(
    l: &LastLayer<'_, '_>,
    scratch: &mut [f32],
    out: &'b mut [u32],
) -> Result<&'b [u8], AdaptError> {
    let layout = Layout::of(l).ok_or(AdaptError::TooLarge)?;
    let len = layout.file_len();
    if out.len() * 4 < len {
        return Err(AdaptError::BufferTooSmall {
            needed: len.div_ceil(4),
            provided: out.len(),
        });
    }
    let (index, factor, mean) = l.split_scratch(scratch)?;
    let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(out)[..len];
    bytes.fill(0);
    let (f, classes) = (l.features, l.classes);

    // Header (version 1: linear layers only) and the two records.
    bytes[..4].copy_from_slice(&format::MAGIC);
    put_u16(bytes, header::VERSION, MIN_FORMAT_VERSION);
    put_u16(bytes, header::HEADER_LEN, HEADER_LEN as u16);
    put_u32(bytes, header::FILE_LEN, len as u32);
    put_u16(bytes, header::LAYER_COUNT, 2);
    put_u16(bytes, header::NUM_CLASSES, classes as u16);
    put_u16(bytes, header::INPUT_CHANNELS, f as u16);
    put_u16(bytes, header::INPUT_HEIGHT, 1);
    put_u16(bytes, header::INPUT_WIDTH, 1);
    put_f32(bytes, header::INPUT_SCALE, 1.0);
    put_f32(bytes, header::INPUT_OFFSET, 0.0);
    put_u32(bytes, header::LAYER_TABLE, HEADER_LEN as u32);
    let records = [
        (
            Posterior::Deterministic,
            f,
            layout.units,
            layout.nnz_a,
            layout.a_start(),
            layout.a_len,
        ),
        (
            Posterior::Gaussian,
            layout.units,
            classes,
            layout.nnz_b,
            layout.b_start(),
            layout.b_len,
        ),
    ];
    for (r, (posterior, inputs, outputs, nnz, start, plen)) in records.into_iter().enumerate() {
        let at = HEADER_LEN + r * LAYER_RECORD_LEN;
        bytes[at + record::KIND] = LayerKind::SparseLinear as u8;
        bytes[at + record::POSTERIOR] = posterior as u8;
        bytes[at + record::ACTIVATION] = Activation::Identity as u8;
        let fields = [
            (record::INPUTS, inputs),
            (record::OUTPUTS, outputs),
            (record::NNZ, nnz),
            (record::PAYLOAD_OFFSET, start),
            (record::PAYLOAD_LEN, plen),
        ];
        for (field, v) in fields {
            put_u32(bytes, at + field, v as u32);
        }
    }

    // Layer A: φ copied, then per class u_k = L⁻¹ (φ, 1) over its adaptable inputs.
    let a = Sparse::at(layout.a_start(), layout.units, layout.nnz_a);
    let b = Sparse::at(layout.b_start(), classes, layout.nnz_b);
    let (mut row, mut nnz) = (0usize, 0usize);
    let push_a = |bytes: &mut [u8], row: &mut usize, nnz: &mut usize, col: Option<usize>, v| {
        if let Some(col) = col {
            put_u16(bytes, a.cols + 2 * *nnz, col as u16);
            put_f32(bytes, a.values + 4 * *nnz, v);
            *nnz += 1;
        } else {
            put_f32(bytes, a.bias + 4 * *row, v);
        }
    };
    for i in 0..f {
        put_u32(bytes, a.row_ptr + 4 * row, nnz as u32);
        push_a(bytes, &mut row, &mut nnz, Some(i), 1.0);
        row += 1;
    }
    let mut nnz_b = 0usize;
    for k in 0..classes {
        let n = l.posterior(k, index, factor, mean)?;
        let u_first = row;
        for j in 0..n {
            put_u32(bytes, a.row_ptr + 4 * row, nnz as u32);
            for p in 0..=j {
                let input = index[p] as usize;
                let col = (input < f).then_some(input);
                push_a(bytes, &mut row, &mut nnz, col, factor[tri(j, p)]);
            }
            row += 1;
        }
        // Layer B, row k: the means on φ (variance 0), then N(0, 1) weights on u_k.
        put_u32(bytes, b.row_ptr + 4 * k, nnz_b as u32);
        let mut bias = l.layer.bias()[k];
        let mut active = 0;
        for w in l.row(k) {
            let theta = if w.variance > 0.0 {
                active += 1;
                mean[active - 1]
            } else {
                w.theta
            };
            put_u16(bytes, b.cols + 2 * nnz_b, w.col as u16);
            put_f32(bytes, b.values + 8 * nnz_b, theta);
            nnz_b += 1;
        }
        if active < n {
            bias += mean[n - 1];
        }
        put_f32(bytes, b.bias + 4 * k, bias);
        for j in 0..n {
            put_u16(bytes, b.cols + 2 * nnz_b, (u_first + j) as u16);
            put_f32(bytes, b.values + 8 * nnz_b + 4, 1.0);
            nnz_b += 1;
        }
    }
    put_u32(bytes, a.row_ptr + 4 * row, nnz as u32);
    put_u32(bytes, b.row_ptr + 4 * classes, nnz_b as u32);
    debug_assert_eq!(
        (row, nnz, nnz_b),
        (layout.units, layout.nnz_a, layout.nnz_b)
    );
    let crc = format::crc32(&bytes[..len - TRAILER_LEN]);
    put_u32(bytes, len - TRAILER_LEN, crc);
    Ok(bytes)
}
