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

/// 8-bit raw values `p`, read as `p * scale + offset` (the model's input normalisation).
pub(crate) struct NormalizedU8<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) scale: f32,
    pub(crate) offset: f32,
}

impl Input for NormalizedU8<'_> {
    fn len(&self) -> usize {
        self.raw.len()
    }
    #[inline(always)]
    fn value(&self, index: usize) -> f32 {
        self.raw[index] as f32 * self.scale + self.offset
    }
    fn all_finite(&self) -> bool {
        // Validated models have a finite scale and offset, and |p| <= 255.
        true
    }
}
