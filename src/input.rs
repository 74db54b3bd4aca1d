//! What a first layer can read: f32 values, or raw 8-bit values normalised on the fly (so the
//! device needs no RAM copy of a normalised image).

/// A read-only input vector for the first layer.
pub(crate) trait Input {
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
        self.iter().all(|v| v.is_finite())
    }
}

/// 8-bit raw values `p`, read as `p * scale + offset` (the model's input normalisation)
/// through a 256-entry table built once per inference (1 KiB of stack): one load per read
/// instead of a conversion, a multiply and an add, with bit-identical values.
pub(crate) struct NormalizedU8<'a> {
    raw: &'a [u8],
    table: [f32; 256],
    /// Raw 0 normalises to exactly 0 (offset 0), so zero bytes contribute nothing.
    zero_is_zero: bool,
}

impl<'a> NormalizedU8<'a> {
    pub(crate) fn new(raw: &'a [u8], scale: f32, offset: f32) -> Self {
        let mut table = [0.0f32; 256];
        for (p, t) in table.iter_mut().enumerate() {
            *t = p as f32 * scale + offset;
        }
        Self {
            raw,
            zero_is_zero: table[0] == 0.0,
            table,
        }
    }
}

impl Input for NormalizedU8<'_> {
    fn len(&self) -> usize {
        self.raw.len()
    }
    #[inline(always)]
    fn value(&self, index: usize) -> f32 {
        self.table[self.raw[index] as usize]
    }
    fn all_finite(&self) -> bool {
        // Validated models map all 256 raw values to finite ones; checked again here because
        // the table is cheap to scan and this keeps the type sound on its own.
        self.table.iter().all(|v| v.is_finite())
    }
    #[inline(always)]
    fn is_zero(&self, index: usize) -> bool {
        self.zero_is_zero && self.raw[index] == 0
    }
}
