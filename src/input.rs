//! What a first layer can read: f32 values, or raw 8-bit values normalised on the fly (so the
//! device needs no RAM copy of a normalised image).

/// A read-only input vector for the first layer.
pub trait Input {
    /// Number of values.
    fn len(&self) -> usize;
    /// Value `index` (`index < len()`, guaranteed by the validated model).
    fn value(&self, index: usize) -> f32;
    /// Whether every value is finite.
    fn all_finite(&self) -> bool;
    /// Whether value `index` is known to be zero without converting it, so a kernel can skip
    /// its weights (most pixels of an image are 0). `false` when unsure.
    #[inline(always)]
    fn is_zero(&self, _index: usize) -> bool {
        false
    }
    /// The raw bytes, when zero bytes are exactly zero values: kernels may then walk the bytes
    /// directly and skip the zeros without calling [`Input::is_zero`] per index.
    #[inline(always)]
    fn zero_skippable_bytes(&self) -> Option<&[u8]> {
        None
    }
    /// The values as one f32 slice, when they are stored as one (the kernels' fast paths).
    #[inline(always)]
    fn as_slice(&self) -> Option<&[f32]> {
        None
    }
    /// `[value(start), value(start + stride), ...]`, `W` values (indices in range: the
    /// caller's geometry). One output row's inputs for a convolution tap.
    #[inline(always)]
    fn gather<const W: usize>(&self, start: usize, stride: usize) -> [f32; W] {
        core::array::from_fn(|k| self.value(start + k * stride))
    }
    /// `out[k] += value(start + k * stride) * w` for every `k < out.len()` (indices in range:
    /// the caller's geometry). A convolution tap's reach along one output row.
    #[inline(always)]
    fn accumulate_scaled(&self, start: usize, stride: usize, w: f32, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o += self.value(start + k * stride) * w;
        }
    }
}

/// An input scaled by a constant factor: a Bernoulli (MC dropout) layer's inputs in the mean
/// network, each multiplied by its keep probability (the expectation of its 0/1 mask).
pub(crate) struct Scaled<'a, X: ?Sized> {
    pub(crate) x: &'a X,
    pub(crate) factor: f32,
}

impl<X: Input + ?Sized> Input for Scaled<'_, X> {
    fn len(&self) -> usize {
        self.x.len()
    }
    #[inline(always)]
    fn value(&self, index: usize) -> f32 {
        self.x.value(index) * self.factor
    }
    fn all_finite(&self) -> bool {
        self.x.all_finite()
    }
    #[inline(always)]
    fn is_zero(&self, index: usize) -> bool {
        self.x.is_zero(index)
    }
    // A zero byte stays a zero value once scaled; the kernels read the values themselves
    // through `value`.
    #[inline(always)]
    fn zero_skippable_bytes(&self) -> Option<&[u8]> {
        self.x.zero_skippable_bytes()
    }
}

impl Input for [f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    #[inline(always)]
    fn value(&self, index: usize) -> f32 {
        self[index]
    }
    fn all_finite(&self) -> bool {
        crate::model::all_finite(self)
    }
    #[inline(always)]
    fn as_slice(&self) -> Option<&[f32]> {
        Some(self)
    }
    /// The same sums as the default, over a slice: no index arithmetic or bounds check per
    /// value (the ResNet's 7x7 maps: 4.45 million instructions for every block with mean
    /// weights on the Cortex-M4F instead of 5.36 million; the rest is the per-row set-up).
    #[inline(always)]
    fn accumulate_scaled(&self, start: usize, stride: usize, w: f32, out: &mut [f32]) {
        let Some(span) = out.len().checked_sub(1).map(|last| last * stride + 1) else {
            return;
        };
        let xs = &self[start..start + span];
        if stride == 1 {
            for (o, &xv) in out.iter_mut().zip(xs) {
                *o += xv * w;
            }
        } else {
            for (o, &xv) in out.iter_mut().zip(xs.iter().step_by(stride)) {
                *o += xv * w;
            }
        }
    }
}

/// 8-bit raw values `p`, read as `p * scale + offset` (the model's input normalisation)
/// through a 256-entry table built once per engine (1 KiB): one load per read instead of a
/// conversion, a multiply and an add, with bit-identical values.
pub struct NormalizedU8<'a> {
    raw: &'a [u8],
    table: &'a ByteTable,
}

impl<'a> NormalizedU8<'a> {
    pub(crate) fn new(raw: &'a [u8], table: &'a ByteTable) -> Self {
        Self { raw, table }
    }

    /// [`Input::gather`] for a stride `S` known when compiling: the row's bytes as one
    /// fixed-length array (one bounds check), read at constant offsets `k * S`, each through
    /// the table. Where the stride was a run-time value, the compiler stepped an iterator with
    /// a check per value (about 60 instructions per row of 7 in the stem; measured in
    /// BENCHMARKS.md).
    #[inline(always)]
    fn gather_by<const W: usize, const S: usize>(&self, start: usize) -> [f32; W] {
        let span = W.saturating_sub(1) * S + 1;
        let raw = &self.raw[start..start + span];
        core::array::from_fn(|k| self.table.values[usize::from(raw[k * S])])
    }
}

/// The normalised value of each of the 256 raw byte values, built once per engine.
#[derive(Clone, Debug)]
pub struct ByteTable {
    values: [f32; 256],
    /// Raw 0 normalises to exactly 0 (offset 0), so zero bytes contribute nothing.
    zero_is_zero: bool,
    /// Every entry is finite.
    finite: bool,
}

impl ByteTable {
    pub(crate) fn new(scale: f32, offset: f32) -> Self {
        let mut values = [0.0f32; 256];
        let mut finite = true;
        for (p, v) in values.iter_mut().enumerate() {
            *v = p as f32 * scale + offset;
            finite &= v.is_finite();
        }
        Self {
            zero_is_zero: values[0] == 0.0,
            finite,
            values,
        }
    }
}

impl Input for NormalizedU8<'_> {
    fn len(&self) -> usize {
        self.raw.len()
    }
    #[inline(always)]
    fn value(&self, index: usize) -> f32 {
        self.table.values[self.raw[index] as usize]
    }
    fn all_finite(&self) -> bool {
        // Validated models map all 256 raw values to finite ones; the table records it anyway,
        // so the type stays sound on its own.
        self.table.finite
    }
    #[inline(always)]
    fn is_zero(&self, index: usize) -> bool {
        self.table.zero_is_zero && self.raw[index] == 0
    }
    #[inline(always)]
    fn zero_skippable_bytes(&self) -> Option<&[u8]> {
        self.table.zero_is_zero.then_some(self.raw)
    }
    /// The same values as the default, with one bounds check for the row instead of one per
    /// value (and, for stride 4, the early-exit ResNet's stem, constant offsets into it).
    #[inline(always)]
    fn gather<const W: usize>(&self, start: usize, stride: usize) -> [f32; W] {
        if stride == 4 {
            return self.gather_by::<W, 4>(start);
        }
        let span = W.saturating_sub(1) * stride + 1;
        let raw = &self.raw[start..start + span];
        let mut bytes = raw.iter().step_by(stride);
        core::array::from_fn(|_| {
            bytes
                .next()
                .map_or(0.0, |&b| self.table.values[usize::from(b)])
        })
    }
}

/// Raw values normalised per input channel as they are read, with no copy: value `i` is
/// `raw[i] * scale_c + offset_c` (f32, in that order) for the channel `c = i / (H * W)` of a
/// channel-major `(C, H, W)` input. The engine reads raw 8-bit inputs of a model with a
/// per-channel table this way ([`crate::Engine::predict_u8`]), and raw f32 inputs of every
/// model ([`crate::Engine::predict_raw`]). One division per read finds the channel (the
/// kernels read values in random order, so no running channel boundary would do).
pub struct ChannelNormalized<'a, T> {
    raw: &'a [T],
    /// `[scale, offset]` per channel.
    pairs: &'a [[f32; 2]],
    /// Values per channel (at least 1).
    plane: usize,
}

impl<'a, T> ChannelNormalized<'a, T> {
    /// `plane` values per pair of `pairs`; the runner checks the input length first, so every
    /// index it reads has its pair.
    pub(crate) fn new(raw: &'a [T], pairs: &'a [[f32; 2]], plane: usize) -> Self {
        Self {
            raw,
            pairs,
            plane: plane.max(1),
        }
    }
}

impl<T: Copy + Into<f32>> Input for ChannelNormalized<'_, T> {
    fn len(&self) -> usize {
        self.raw.len()
    }
    #[inline(always)]
    fn value(&self, index: usize) -> f32 {
        let [scale, offset] = self.pairs[index / self.plane];
        self.raw[index].into() * scale + offset
    }
    fn all_finite(&self) -> bool {
        // A raw value may be finite and still overflow once scaled: check what is read.
        (0..self.raw.len()).all(|i| self.value(i).is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::{ByteTable, ChannelNormalized, Input, NormalizedU8};

    /// Values are normalised with their own channel's pair, in the host's order of
    /// operations, for bytes and for f32 values alike.
    #[test]
    fn channel_normalized_values_use_their_channels_pair() {
        let pairs = [[0.5f32, -1.0], [2.0, 0.25], [-0.125, 3.0]];
        let raw: std::vec::Vec<u8> = (0..12u8).map(|i| i * 21).collect();
        let floats: std::vec::Vec<f32> = raw.iter().map(|&b| b as f32 - 100.5).collect();
        let bytes = ChannelNormalized::new(&raw, &pairs, 4);
        let values = ChannelNormalized::new(&floats, &pairs, 4);
        for i in 0..raw.len() {
            let [s, o] = pairs[i / 4];
            assert_eq!(bytes.value(i).to_bits(), (raw[i] as f32 * s + o).to_bits());
            assert_eq!(values.value(i).to_bits(), (floats[i] * s + o).to_bits());
        }
        assert!(bytes.all_finite() && values.all_finite());
        let huge = [f32::MAX; 12];
        assert!(!ChannelNormalized::new(&huge, &pairs, 4).all_finite());
    }

    /// The gathered rows (stride 4 through the constant-offset path, other strides through the
    /// iterator) are the values read one by one.
    #[test]
    fn gathered_rows_are_the_values_read_one_by_one() {
        let raw: std::vec::Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        let table = ByteTable::new(1.0 / 255.0, -0.25);
        let input = NormalizedU8::new(&raw, &table);
        for stride in 1..6 {
            for start in 0..raw.len() - 6 * stride {
                let row = input.gather::<7>(start, stride);
                for (k, v) in row.iter().enumerate() {
                    let expected = raw[start + k * stride] as f32 * (1.0 / 255.0) + -0.25;
                    assert_eq!(v.to_bits(), expected.to_bits(), "{stride} {start} {k}");
                }
            }
        }
    }
}
