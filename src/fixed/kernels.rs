//! Integer kernels of one fixed-point layer, generic over the number format ([`Q8`],
//! [`Q16`]) and the index width (u8, u16); convolutions and pooling are in `conv`, reached
//! through the same entry points:
//!
//! - [`mean_layer`]: one input, posterior-mean weights.
//! - [`moments_layer`]: one input, Gaussian weights: per unit the pre-activation mean and noise
//!   scale, computed once (the first stochastic layer sees a deterministic input).
//! - [`draw_from_moments`]: a chunk of samples of that layer's activations.
//! - [`sampled_layer`]: a chunk of `s` sampled inputs laid out unit-major (`x[i * s + m]`),
//!   with the noise pre-drawn per unit and sample.
//!
//! All arithmetic is integer and wraps on overflow (which the exporter's ranges exclude and
//! the reader bounds where it matters), so the host and every Cortex-M core compute the same
//! bits.

use super::math::{sqrt_q4, sqrt_q4_u32};
use super::model::{QCounts, QLayer};
use super::noise::{NormalQ8, NORMAL_Q8_MAX};
use crate::format::{Activation, Posterior, Precision, Storage};
use crate::model::Operation;

/// Samples of a convolution's output position accumulated together.
pub(super) const GROUP: usize = 8;

/// Fractional bits shared by the noise product `sqrt_q4(V) ε_q8` (4 + 8).
const NOISE_FRAC_BITS: u32 = 12;

/// A fixed-point number format: how activations are packed into words and how weights
/// accumulate.
pub trait Format {
    /// Stored θ.
    type Theta: Copy + bytemuck::Pod;
    /// Stored σ².
    type Sigma2: Copy + bytemuck::Pod;
    /// Mean accumulator.
    type Acc: Copy + Default + bytemuck::Pod;
    /// Variance accumulator.
    type Var: Copy + Default;
    /// Largest activation.
    const ACT_MAX: i32;
    /// Bytes of a stored θ or σ².
    const WIDTH: usize;
    /// The θ stored at `r[at..]`.
    fn theta(r: &[u8], at: usize) -> Self::Theta;
    /// The σ² stored at `r[at..]`.
    fn sigma2(r: &[u8], at: usize) -> Self::Sigma2;
    /// The activation word of a value `0 <= a <= ACT_MAX`, or of a signed input code
    /// `-128 <= a <= 127`.
    fn pack(a: i32) -> i32;
    /// The value `a` of an activation word.
    fn value(w: i32) -> i32;
    /// `acc + a θ` for the activation word `w`.
    fn mac(acc: Self::Acc, w: i32, theta: Self::Theta) -> Self::Acc;
    /// `var + sq(a) σ²` for the activation word `w`.
    fn var_mac(var: Self::Var, w: i32, sigma2: Self::Sigma2) -> Self::Var;
    /// The mean sum as i64.
    fn acc_i64(acc: Self::Acc) -> i64;
    /// The variance sum as u64 (it is non-negative).
    fn var_u64(var: Self::Var) -> u64;
    /// The noise term of one unit and sample: `(sqrt_q4(V) ε) mσ >> 12`.
    fn noise(var: Self::Var, eps: i16, m_sigma: i32) -> i64;
    /// The sums of samples `0..ROW_GROUP` of one row from the architecture's kernel, where it
    /// has one for this record layout (`x` starts at the group's first sample, inputs `stride`
    /// words apart; every record's index is below `bound`); `None`: the generic loop.
    #[inline(always)]
    fn row_sums<I: Index, const GAUSS: bool>(
        _records: &[u8],
        _bound: usize,
        _x: &[i32],
        _stride: usize,
    ) -> Option<RowSums<Self>> {
        None
    }
    /// The mean sum of one row for one input from the architecture's kernel, where it has one
    /// for this record layout (`x[i]` the word of input `i`, every index below `bound`);
    /// `None`: the generic loop.
    #[inline(always)]
    fn row_dot<I: Index, const GAUSS: bool>(
        _records: &[u8],
        _bound: usize,
        _x: &[i32],
    ) -> Option<Self::Acc> {
        None
    }
    /// Adds the mean sums of a layer stored by input columns (`counts[i]` records for input
    /// `i`, every output index below `bound`) for raw input bytes `x` into `acc`, by the
    /// architecture's kernel where it has one for this record layout; false: not done.
    #[inline(always)]
    fn scatter_bytes<I: Index, const GAUSS: bool>(
        _counts: &[u8],
        _records: &[u8],
        _bound: usize,
        _x: &[u8],
        _acc: &mut [Self::Acc],
    ) -> bool {
        false
    }
}

/// The mean and variance sums of a group of samples of one row.
pub type RowSums<F> = (
    [<F as Format>::Acc; ROW_GROUP],
    [<F as Format>::Var; ROW_GROUP],
);

/// q8: activation word `(a^2 >> 1) << 16 | a` (`a` in the low half-word as a 16-bit two's
/// complement value, so a signed input code packs too); int32 sums.
pub struct Q8;
/// q16: activation word `a`; int64 sums.
pub struct Q16;

impl Format for Q8 {
    type Theta = i8;
    type Sigma2 = u8;
    type Acc = i32;
    type Var = i32;
    const ACT_MAX: i32 = 255;
    const WIDTH: usize = 1;
    #[inline(always)]
    fn theta(r: &[u8], at: usize) -> i8 {
        r[at] as i8
    }
    #[inline(always)]
    fn sigma2(r: &[u8], at: usize) -> u8 {
        r[at]
    }
    #[inline(always)]
    fn pack(a: i32) -> i32 {
        ((a * a) >> 1) << 16 | (a & 0xffff)
    }
    #[inline(always)]
    fn value(w: i32) -> i32 {
        // The low half-word, sign-extended (the same as `w & 0xffff` for activations).
        w as i16 as i32
    }
    #[inline(always)]
    fn mac(acc: i32, w: i32, theta: i8) -> i32 {
        // The low half-word times θ: a signed 16 x 16 multiply-accumulate (SMLABB on DSP cores).
        acc.wrapping_add((w as i16 as i32) * theta as i32)
    }
    #[inline(always)]
    fn var_mac(var: i32, w: i32, sigma2: u8) -> i32 {
        // The high half-word times σ² (SMLATB on DSP cores).
        var.wrapping_add((w >> 16) * sigma2 as i32)
    }
    #[inline(always)]
    fn acc_i64(acc: i32) -> i64 {
        acc as i64
    }
    #[inline(always)]
    fn var_u64(var: i32) -> u64 {
        var as u32 as u64
    }
    #[inline(always)]
    fn noise(var: i32, eps: i16, m_sigma: i32) -> i64 {
        // sqrt_q4(V) < 2^20 and |ε| < 2^10: the product fits an i32.
        let t = (sqrt_q4_u32(var as u32) as i32).wrapping_mul(eps as i32);
        (t as i64 * m_sigma as i64) >> NOISE_FRAC_BITS
    }
    #[inline(always)]
    fn row_sums<I: Index, const GAUSS: bool>(
        records: &[u8],
        bound: usize,
        x: &[i32],
        stride: usize,
    ) -> Option<RowSums<Self>> {
        if !q8_kernels_read::<I, GAUSS>() {
            return None;
        }
        let row = crate::arch::Q8Row::from_validated(records, bound)?;
        Some(crate::arch::q8_row_sums4(row, x, stride))
    }
    #[inline(always)]
    fn row_dot<I: Index, const GAUSS: bool>(
        records: &[u8],
        bound: usize,
        x: &[i32],
    ) -> Option<i32> {
        if !q8_kernels_read::<I, GAUSS>() {
            return None;
        }
        let row = crate::arch::Q8Row::from_validated(records, bound)?;
        Some(crate::arch::q8_row_dot(row, x))
    }
    #[inline(always)]
    fn scatter_bytes<I: Index, const GAUSS: bool>(
        counts: &[u8],
        records: &[u8],
        bound: usize,
        x: &[u8],
        acc: &mut [i32],
    ) -> bool {
        // i32 sums are exact (the same values as the generic i64 path) while at most 65,793
        // products `a θ` (|a θ| <= 255 * 128 = 32,640) meet in one output: 65,793 * 32,640 < 2^31.
        let exact = counts.len() <= 65_793;
        let columns = crate::arch::Q8Columns::from_validated(counts, records, bound);
        match columns {
            Some(columns) if exact && q8_kernels_read::<I, GAUSS>() => {
                crate::arch::q8_scatter_bytes(columns, x, acc);
                true
            }
            _ => false,
        }
    }
}

impl Format for Q16 {
    type Theta = i16;
    type Sigma2 = u16;
    type Acc = i64;
    type Var = u64;
    const ACT_MAX: i32 = 32767;
    const WIDTH: usize = 2;
    #[inline(always)]
    fn theta(r: &[u8], at: usize) -> i16 {
        i16::from_le_bytes([r[at], r[at + 1]])
    }
    #[inline(always)]
    fn sigma2(r: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([r[at], r[at + 1]])
    }
    #[inline(always)]
    fn pack(a: i32) -> i32 {
        a
    }
    #[inline(always)]
    fn value(w: i32) -> i32 {
        w
    }
    #[inline(always)]
    fn mac(acc: i64, w: i32, theta: i16) -> i64 {
        acc.wrapping_add((w * theta as i32) as i64)
    }
    #[inline(always)]
    fn var_mac(var: u64, w: i32, sigma2: u16) -> u64 {
        let sq = (w as u32).wrapping_mul(w as u32) as u64;
        var.wrapping_add(sq * sigma2 as u64)
    }
    #[inline(always)]
    fn acc_i64(acc: i64) -> i64 {
        acc
    }
    #[inline(always)]
    fn var_u64(var: u64) -> u64 {
        var
    }
    #[inline(always)]
    fn noise(var: u64, eps: i16, m_sigma: i32) -> i64 {
        let t = sqrt_q4(var) as i128 * eps as i128;
        ((t * m_sigma as i128) >> NOISE_FRAC_BITS) as i64
    }
}

/// Whether the q8 architecture kernels (`crate::arch::q8_*`) read a layer's records: Gaussian
/// records with a one-byte index, `[i, θ, σ²]` (`layout::<Q8, u8, true>`). ARMv6-M
/// (`tb_flash_lean`) keeps the generic loops of every q8 kernel: the same sums in less flash.
#[inline(always)]
const fn q8_kernels_read<I: Index, const GAUSS: bool>() -> bool {
    I::BYTES == 1 && GAUSS && !cfg!(tb_flash_lean)
}

/// The input as activation words of `precision` (q8 packs each value with its square), one
/// per input: what a first stochastic layer with a Bernoulli mask masks in every chunk.
#[inline(never)]
pub(crate) fn input_words<X: Words + ?Sized>(precision: Precision, x: &X, out: &mut [i32]) {
    for (i, o) in out.iter_mut().enumerate().take(x.len()) {
        *o = match precision {
            Precision::Q16 => x.word::<Q16>(i),
            _ => x.word::<Q8>(i),
        };
    }
}

/// An input vector read as activation words: raw bytes (the model input) or words.
pub trait Words {
    /// The word of input `i` (in range by validation).
    fn word<F: Format>(&self, i: usize) -> i32;
    /// Number of values.
    fn len(&self) -> usize;
    /// Whether input `i` is zero (its word is then 0 in every format).
    fn is_zero(&self, i: usize) -> bool;
    /// The activation words themselves, when the input is stored as words.
    fn words(&self) -> Option<&[i32]> {
        None
    }
    /// The raw input bytes, when the input is the model's byte input.
    fn bytes(&self) -> Option<&[u8]> {
        None
    }
    /// Whether the values are signed 8-bit codes (what a model flagged
    /// [`crate::format::FLAG_SIGNED_INPUT`] reads); the engine checks it against the model.
    const SIGNED: bool = false;
}

impl Words for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[inline(always)]
    fn is_zero(&self, i: usize) -> bool {
        self.get(i) == Some(&0)
    }
    #[inline(always)]
    fn word<F: Format>(&self, i: usize) -> i32 {
        F::pack(self[i] as i32)
    }
    #[inline(always)]
    fn bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Words for [i8] {
    const SIGNED: bool = true;
    fn len(&self) -> usize {
        <[i8]>::len(self)
    }
    #[inline(always)]
    fn is_zero(&self, i: usize) -> bool {
        self.get(i) == Some(&0)
    }
    #[inline(always)]
    fn word<F: Format>(&self, i: usize) -> i32 {
        F::pack(self[i] as i32)
    }
}

impl Words for [i32] {
    fn len(&self) -> usize {
        <[i32]>::len(self)
    }
    #[inline(always)]
    fn is_zero(&self, i: usize) -> bool {
        self.get(i) == Some(&0)
    }
    #[inline(always)]
    fn word<F: Format>(&self, i: usize) -> i32 {
        self[i]
    }
    #[inline(always)]
    fn words(&self) -> Option<&[i32]> {
        Some(self)
    }
}

/// How a record names its unit: no index (dense rows), or a u8 / u16 index.
pub trait Index {
    /// Bytes of the index at the start of a record.
    const BYTES: usize;
    /// The index stored in record `r` (dense: unused).
    fn read(r: &[u8]) -> usize;
}
/// Dense rows: the record's position is its input.
pub(crate) struct NoIndex;
impl Index for NoIndex {
    const BYTES: usize = 0;
    #[inline(always)]
    fn read(_: &[u8]) -> usize {
        0
    }
}
impl Index for u8 {
    const BYTES: usize = 1;
    #[inline(always)]
    fn read(r: &[u8]) -> usize {
        r[0] as usize
    }
}
impl Index for u16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn read(r: &[u8]) -> usize {
        u16::from_le_bytes([r[0], r[1]]) as usize
    }
}

/// Record length and the offsets of θ and σ² (as `format::quant_record_layout`), constant
/// for each instantiation.
#[inline(always)]
pub(super) const fn layout<F: Format, I: Index, const GAUSS: bool>() -> (usize, usize, usize) {
    let theta = I::BYTES.div_ceil(F::WIDTH) * F::WIDTH;
    let sigma = theta + F::WIDTH;
    (if GAUSS { sigma + F::WIDTH } else { sigma }, theta, sigma)
}

/// The row parameters of unit `j`: (mθ, mσ, bias `b << B`).
#[inline(always)]
pub(super) fn params(layer: &QLayer<'_>, j: usize) -> (i64, i32, i64) {
    let p = &layer.params[3 * j..3 * j + 3];
    (p[0] as i64, p[1], (p[2] as i64) << layer.bias_shift)
}

/// The output word of a pre-activation `z` (scaled by 2^S): ReLU-clamped and packed for
/// hidden layers, saturated to i32 for the logits.
#[inline(always)]
pub(super) fn finish<F: Format>(z: i64, shift: u32, activation: Activation) -> i32 {
    let y = z.wrapping_add(1 << (shift - 1)) >> shift;
    match activation {
        Activation::Relu => F::pack(y.clamp(0, F::ACT_MAX as i64) as i32),
        Activation::Identity => y.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
    }
}

/// Largest first-stochastic-layer noise scale kept before narrowing (far above any real one:
/// `sqrt_q4(V) < 2^33` and `mσ < 2^31`).
const SCALE_MAX: i128 = (i64::MAX >> 1) as i128;

/// Calls `f(line, records)` for every line of a sparse layer (output row, or input column for
/// by-input storage), or every output row of a dense one.
#[inline(always)]
fn for_each_line(layer: &QLayer<'_>, mut f: impl FnMut(usize, &[u8])) {
    let len = layer.record_len;
    let records = layer.records;
    let mut start = 0;
    let mut line = |i: usize, count: usize| {
        let end = start + count * len;
        if let Some(r) = records.get(start..end) {
            f(i, r);
        }
        start = end;
    };
    match layer.counts {
        QCounts::Dense => (0..layer.outputs).for_each(|j| line(j, layer.inputs)),
        QCounts::U8(c) => c.iter().enumerate().for_each(|(i, &n)| line(i, n as usize)),
        QCounts::U16(c) => c.iter().enumerate().for_each(|(i, &n)| line(i, n as usize)),
    }
}

/// Runs `body::<F, I, G, X>` with the layer's format, index type and posterior.
macro_rules! dispatch {
    ($layer:expr, $body:ident $(:: <$x:ty>)? ( $($arg:expr),* )) => {{
        let gaussian = $layer.posterior == Posterior::Gaussian;
        match ($layer.precision, $layer.counts, gaussian) {
            (Precision::Q16, QCounts::Dense, true) => $body::<Q16, NoIndex, true $(, $x)?>($($arg),*),
            (Precision::Q16, QCounts::Dense, false) => $body::<Q16, NoIndex, false $(, $x)?>($($arg),*),
            (Precision::Q16, QCounts::U8(_), true) => $body::<Q16, u8, true $(, $x)?>($($arg),*),
            (Precision::Q16, QCounts::U8(_), false) => $body::<Q16, u8, false $(, $x)?>($($arg),*),
            (Precision::Q16, QCounts::U16(_), true) => $body::<Q16, u16, true $(, $x)?>($($arg),*),
            (Precision::Q16, QCounts::U16(_), false) => $body::<Q16, u16, false $(, $x)?>($($arg),*),
            (_, QCounts::Dense, true) => $body::<Q8, NoIndex, true $(, $x)?>($($arg),*),
            (_, QCounts::Dense, false) => $body::<Q8, NoIndex, false $(, $x)?>($($arg),*),
            (_, QCounts::U8(_), true) => $body::<Q8, u8, true $(, $x)?>($($arg),*),
            (_, QCounts::U8(_), false) => $body::<Q8, u8, false $(, $x)?>($($arg),*),
            (_, QCounts::U16(_), true) => $body::<Q8, u16, true $(, $x)?>($($arg),*),
            (_, QCounts::U16(_), false) => $body::<Q8, u16, false $(, $x)?>($($arg),*),
        }
    }};
}

/// Integer sums `(A_j, V_j)` of every output unit for one input, handed to `f(j, A, V)` in
/// unit order (`V = 0` unless `WITH_VAR`). By-input layers scatter into `acc` / `var` first
/// (`outputs` entries each).
#[inline(always)]
fn sums<F: Format, I: Index, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    with_var: bool,
    acc: &mut [i64],
    var: &mut [i64],
    mut f: impl FnMut(usize, i64, u64),
) {
    let (len, at_theta, at_sigma) = layout::<F, I, GAUSS>();
    let with_var = with_var && GAUSS;
    // Mean sums of a first layer stored by input, over raw bytes: the format's scatter kernel
    // where it has one (q8: into exact i32 sums, the same values as the i64 path below).
    if let (Storage::SparseByInput, false, QCounts::U8(counts), Some(bytes)) =
        (layer.storage, with_var, layer.counts, x.bytes())
    {
        let n_out = layer.outputs;
        let sums: &mut [F::Acc] = bytemuck::cast_slice_mut(&mut acc[..n_out]);
        let sums = &mut sums[..n_out];
        sums.fill(F::Acc::default());
        if F::scatter_bytes::<I, GAUSS>(counts, layer.records, n_out, bytes, sums) {
            for (j, &a) in sums.iter().enumerate() {
                f(j, F::acc_i64(a), 0);
            }
            return;
        }
    }
    if layer.storage == Storage::SparseByInput {
        let n_out = layer.outputs;
        let (acc, var) = (&mut acc[..n_out], &mut var[..n_out]);
        acc.fill(0);
        var.fill(0);
        // Column by column; a zero input (blank pixel) contributes nothing and is skipped
        // before anything else is done for it.
        match layer.counts {
            QCounts::U8(c) => {
                sums_by_input::<F, I, GAUSS, X, u8>(c, layer.records, x, with_var, (acc, var))
            }
            QCounts::U16(c) => {
                sums_by_input::<F, I, GAUSS, X, u16>(c, layer.records, x, with_var, (acc, var))
            }
            QCounts::Dense => {}
        }
        for j in 0..n_out {
            f(j, acc[j], var[j] as u64);
        }
        return;
    }
    let words = x.words().filter(|_| !with_var);
    for_each_line(layer, |j, records| {
        if let Some(a) = words.and_then(|w| F::row_dot::<I, GAUSS>(records, layer.inputs, w)) {
            f(j, F::acc_i64(a), 0);
            return;
        }
        let (mut a, mut v) = (F::Acc::default(), F::Var::default());
        for (k, r) in records.chunks_exact(len).enumerate() {
            let i = if I::BYTES == 0 { k } else { I::read(r) };
            let w = x.word::<F>(i);
            a = F::mac(a, w, F::theta(r, at_theta));
            if with_var {
                v = F::var_mac(v, w, F::sigma2(r, at_sigma));
            }
        }
        f(j, F::acc_i64(a), F::var_u64(v));
    });
}

/// The i64 sums `(A, V)` of a layer stored by input columns (`counts[i]` records for input
/// `i`), scattered into `acc` and `var` (cleared by the caller); `V` only `with_var`.
#[inline(always)]
fn sums_by_input<F: Format, I: Index, const GAUSS: bool, X: Words + ?Sized, C>(
    counts: &[C],
    records: &[u8],
    x: &X,
    with_var: bool,
    (acc, var): (&mut [i64], &mut [i64]),
) where
    C: Copy + Into<u32>,
{
    let (len, at_theta, at_sigma) = layout::<F, I, GAUSS>();
    let mut start = 0usize;
    for (i, &count) in counts.iter().enumerate() {
        let end = start + count.into() as usize * len;
        if !x.is_zero(i) {
            let w = x.word::<F>(i);
            for r in records.get(start..end).unwrap_or(&[]).chunks_exact(len) {
                let j = I::read(r);
                let a = F::mac(F::Acc::default(), w, F::theta(r, at_theta));
                if let Some(s) = acc.get_mut(j) {
                    *s = s.wrapping_add(F::acc_i64(a));
                }
                if with_var {
                    let v = F::var_mac(F::Var::default(), w, F::sigma2(r, at_sigma));
                    if let Some(s) = var.get_mut(j) {
                        *s = s.wrapping_add(F::var_u64(v) as i64);
                    }
                }
            }
        }
        start = end;
    }
}

/// Mean weights: `out[j]` is the output word of unit `j`. `scratch` holds `2 * outputs` i64
/// (used by by-input layers).
#[inline(always)]
pub(crate) fn mean_layer<X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    out: &mut [i32],
    scratch: (&mut [i64], &mut [i64]),
) {
    match layer.operation {
        Operation::Conv2d(g) => super::conv::mean(layer, &g, x, out),
        Operation::MaxPool(g) => super::conv::max_pool(layer.precision, &g, x, 1, out),
        Operation::GlobalAvgPool { map } => {
            super::graph::global_average_pool(layer.precision, map, x, 1, out)
        }
        // The runner adds residuals itself (it holds the skip).
        Operation::ResidualAdd { .. } => {}
        Operation::Linear | Operation::ExitHead { .. } => {
            dispatch!(layer, mean_typed::<X>(layer, x, out, scratch))
        }
    }
}

#[inline(always)]
fn mean_typed<F: Format, I: Index, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    out: &mut [i32],
    scratch: (&mut [i64], &mut [i64]),
) {
    let (shift, act) = (layer.shift, layer.activation);
    let (acc, var) = scratch;
    sums::<F, I, GAUSS, X>(layer, x, false, acc, var, |j, a, _| {
        let (m_theta, _, bias) = params(layer, j);
        if let Some(o) = out.get_mut(j) {
            *o = finish::<F>(a.wrapping_mul(m_theta).wrapping_add(bias), shift, act);
        }
    });
}

/// Gaussian weights, one input: `base[j] = A mθ + b` and `scale[j] = sqrt_q4(V) mσ` (the
/// noise of a draw ε is `scale ε >> 12`), or -1 for a ReLU unit that no draw can switch on
/// (the noise is bounded, so this is exact). A deterministic layer gets scale 0.
#[inline(always)]
pub(crate) fn moments_layer<X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    match layer.operation {
        Operation::Conv2d(g) => super::conv::moments(layer, &g, x, base, scale),
        // Pooling and residual additions have no weights: never a stochastic layer.
        Operation::MaxPool(_) | Operation::GlobalAvgPool { .. } | Operation::ResidualAdd { .. } => {
        }
        Operation::Linear | Operation::ExitHead { .. } => {
            dispatch!(layer, moments_typed::<X>(layer, x, base, scale))
        }
    }
}

#[inline(always)]
fn moments_typed<F: Format, I: Index, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    let moments = |j: usize, a: i64, v: u64| unit_moments(layer, j, a, v);
    let n = layer.outputs;
    let (base, scale) = (&mut base[..n], &mut scale[..n]);
    if layer.storage == Storage::SparseByInput {
        // Scatter the sums into base (A) and scale (V), then turn them into moments in place.
        sums::<F, I, GAUSS, X>(layer, x, true, base, scale, |_, _, _| {});
        for j in 0..n {
            (base[j], scale[j]) = moments(j, base[j], scale[j] as u64);
        }
    } else {
        sums::<F, I, GAUSS, X>(layer, x, true, &mut [], &mut [], |j, a, v| {
            if let (Some(b), Some(s)) = (base.get_mut(j), scale.get_mut(j)) {
                (*b, *s) = moments(j, a, v);
            }
        });
    }
}

/// The moments of one unit of the first stochastic layer from its integer sums `A`, `V`,
/// with the parameters of its output line `line` (row, or channel of a convolution):
/// `(A mθ + b, sqrt_q4(V) mσ)`, the scale -1 for a ReLU unit no draw can switch on. Out of
/// line: once per unit and input, and inlined into every variant of the first layer it
/// doubles their stack frames (1,656 to 3,296 B on the Cortex-M3).
#[inline(never)]
pub(super) fn unit_moments(layer: &QLayer<'_>, line: usize, a: i64, v: u64) -> (i64, i64) {
    let shift = layer.shift;
    let relu = layer.activation == Activation::Relu;
    let (m_theta, m_sigma, bias) = params(layer, line);
    let mean = a.wrapping_mul(m_theta).wrapping_add(bias);
    let sc = (sqrt_q4(v) as i128 * m_sigma as i128).clamp(0, SCALE_MAX);
    // The largest pre-activation any draw can give, rounded like `finish`: if even it gives
    // y <= 0, the ReLU output is 0 for every draw.
    let top =
        mean as i128 + ((sc * NORMAL_Q8_MAX as i128) >> NOISE_FRAC_BITS) + (1i128 << (shift - 1));
    let inactive = relu && top < (1i128 << shift);
    (mean, if inactive { -1 } else { sc as i64 })
}

/// Most fractional bits (below one output unit) of the first stochastic layer's narrowed
/// moments (see [`narrow_moments`]).
const MOMENT_FRAC_BITS_MAX: u32 = 16;

/// Narrowed moments stay below 2^this, so that `b + (scale ε >> 12)` fits an i32.
const MOMENT_LIMIT_BITS: u32 = 30;

/// Rescales the first stochastic layer's moments from `2^S` units of the output to `2^F`
/// units (floor), so that each sample's draw needs 32-bit arithmetic only, and returns `F`:
/// the most fractional bits, at most 16, that keep every mean and scale below 2^30 (the
/// logits' unit is already 2^-16, so they keep fewer). A scale of -1 (a unit no draw
/// switches on) stays -1.
pub(crate) fn narrow_moments(layer: &QLayer<'_>, base: &mut [i64], scale: &mut [i64]) -> u32 {
    let largest = base
        .iter()
        .map(|b| b.unsigned_abs())
        .chain(scale.iter().map(|&s| s.max(0) as u64))
        .max()
        .unwrap_or(0);
    // The most fractional bits F that keep `largest` (in 2^S units) below 2^30 in 2^F units:
    // `bits(largest) - (S - F) <= 30`.
    let bits = 64 - largest.leading_zeros() as i32;
    let shift = layer.shift as i32;
    let frac_bits = (shift + MOMENT_LIMIT_BITS as i32 - bits).clamp(0, MOMENT_FRAC_BITS_MAX as i32);
    let by = shift - frac_bits;
    // Exact in i64: with this F every value is below 2^30 after the shift (the clamp only
    // acts when even F = 0 leaves a value above it).
    let limit = 1i64 << MOMENT_LIMIT_BITS;
    let narrow = |v: i64| -> i64 {
        let v = if by >= 0 { v >> by } else { v << -by };
        v.clamp(-limit, limit)
    };
    for (b, sc) in base.iter_mut().zip(scale.iter_mut()) {
        *b = narrow(*b);
        if *sc >= 0 {
            *sc = narrow(*sc);
        }
    }
    frac_bits as u32
}

/// Samples of the first stochastic layer from its moments narrowed to `frac_bits` (`F`):
/// `out[j * s + m]` for `s = streams.len()` samples, sample-major so each stream stays in
/// registers: `y = (b + (scale ε >> 12) + 2^(F-1)) >> F`, then the activation; a unit with
/// scale -1 is 0 without a draw.
pub(crate) fn draw_from_moments(
    layer: &QLayer<'_>,
    (base, scale, frac_bits): (&[i64], &[i64], u32),
    streams: &mut [NormalQ8],
    out: &mut [i32],
) {
    match layer.precision {
        Precision::Q16 => draw_typed::<Q16>(layer, (base, scale, frac_bits), streams, out),
        _ => draw_typed::<Q8>(layer, (base, scale, frac_bits), streams, out),
    }
}

#[inline(never)]
fn draw_typed<F: Format>(
    layer: &QLayer<'_>,
    (base, scale, frac_bits): (&[i64], &[i64], u32),
    streams: &mut [NormalQ8],
    out: &mut [i32],
) {
    let half = (1i32 << frac_bits) >> 1;
    let s = streams.len();
    let act = layer.activation;
    let gaussian = layer.posterior == Posterior::Gaussian;
    for (m, stream) in streams.iter_mut().enumerate() {
        let mut local = stream.clone();
        for ((&b, &sc), unit) in base.iter().zip(scale).zip(out.chunks_exact_mut(s)) {
            // `m < s` and every chunk has `s` words: the index check folds away.
            let Some(o) = unit.get_mut(m) else { continue };
            let (b, sc) = (b as i32, sc as i32);
            *o = if sc < 0 {
                F::pack(0)
            } else {
                let noise = if gaussian {
                    // (scale ε) >> 12 as the high word of scale * (ε << 20); |ε| < 2^11, so
                    // ε << 20 fits an i32 and the product is one 32 x 32 -> high-word
                    // multiply (SMMUL on DSP cores).
                    ((sc as i64 * (((local.draw() as i32) << 20) as i64)) >> 32) as i32
                } else {
                    0
                };
                let y = b.saturating_add(noise).saturating_add(half) >> frac_bits;
                match act {
                    Activation::Relu => F::pack(y.clamp(0, F::ACT_MAX)),
                    Activation::Identity => y,
                }
            };
        }
        *stream = local;
    }
}

/// Draws the noise of a Gaussian layer for a chunk: `eps[j * s + m]` from stream `m`,
/// units in ascending order.
#[inline(never)]
pub(crate) fn draw_noise(units: usize, streams: &mut [NormalQ8], eps: &mut [i16]) {
    let s = streams.len();
    for (m, stream) in streams.iter_mut().enumerate() {
        let mut local = stream.clone();
        for unit in eps[..units * s].chunks_exact_mut(s) {
            if let Some(e) = unit.get_mut(m) {
                *e = local.draw();
            }
        }
        *stream = local;
    }
}

/// One layer for a chunk of `s` samples: `x[i * s + m]` is input `i` of sample `m`,
/// `eps[j * s + m]` the noise of unit `j` (Gaussian layers); writes `out[j * s + m]`. Row
/// storage only (the reader allows by-input storage on the first layer alone, which never
/// runs here). Inputs that are zero in every sample (ReLU units of the first stochastic layer
/// that no draw can switch on) have the word 0 and add nothing: their weights are not skipped,
/// which costs less than a per-weight test.
pub(crate) fn sampled_layer(layer: &QLayer<'_>, x: &[i32], s: usize, eps: &[i16], out: &mut [i32]) {
    match layer.operation {
        Operation::Conv2d(g) => super::conv::sampled(layer, &g, x, s, eps, out),
        Operation::MaxPool(g) => super::conv::max_pool(layer.precision, &g, x, s, out),
        Operation::GlobalAvgPool { map } => {
            super::graph::global_average_pool(layer.precision, map, x, s, out)
        }
        Operation::ResidualAdd { .. } => {}
        Operation::Linear | Operation::ExitHead { .. } => {
            dispatch!(layer, sampled_typed(layer, x, s, eps, out))
        }
    }
}

/// Samples of a q8 row accumulated together: four (mean, variance) pairs of 32-bit sums, the
/// record pointer and the inputs' base fill the core registers of an ARMv7-M (eight samples
/// spill their sums to the stack on every weight: measured). q16's 64-bit sums spill either
/// way, and groups of [`GROUP`] read its records half as often (measured).
pub(super) const ROW_GROUP: usize = 4;

#[inline(never)]
fn sampled_typed<F: Format, I: Index, const GAUSS: bool>(
    layer: &QLayer<'_>,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    if F::WIDTH == 1 {
        sampled_rows::<F, I, GAUSS, ROW_GROUP>(layer, x, s, eps, out)
    } else {
        sampled_rows::<F, I, GAUSS, GROUP>(layer, x, s, eps, out)
    }
}

/// [`sampled_layer`] for row storage, `N` samples of a row at a time.
#[inline(always)]
fn sampled_rows<F: Format, I: Index, const GAUSS: bool, const N: usize>(
    layer: &QLayer<'_>,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    // Every input `i < inputs` of every sample is in `x` (checked once here, so the row
    // kernels index within bounds by the model's validation of every stored index).
    if x.len() < layer.inputs * s {
        return;
    }
    let full = s / N * N;
    for_each_line(layer, |j, records| {
        let finish = LineFinish::new(layer, j);
        let unit = j * s;
        let eps = eps.get(unit..unit + s).unwrap_or(&[]);
        let Some(out) = out.get_mut(unit..unit + s) else {
            return;
        };
        let mut g0 = 0;
        while g0 < full {
            let group = x.get(g0..).unwrap_or(&[]);
            let (acc, var) = accumulate_full::<F, I, GAUSS, N>(records, layer.inputs, group, s);
            let at = g0..g0 + N;
            finish.group::<F, GAUSS, N>(
                (&acc, &var),
                eps.get(at.clone()).unwrap_or(&[]),
                &mut out[at],
            );
            g0 += N;
        }
        if g0 < s {
            let (acc, var) = accumulate_part::<F, I, GAUSS, N>(records, x, s, g0, s - g0);
            finish.group::<F, GAUSS, N>((&acc, &var), eps.get(g0..).unwrap_or(&[]), &mut out[g0..]);
        }
    });
}

/// What turns a unit's integer sums into its output word, read once per output line (row,
/// or channel of a convolution): `z = acc mθ + (b + 2^(S-1)) + noise`, then `z >> S` through
/// the activation (the same bits as [`finish`], whose rounding half is added to the bias
/// here once).
#[derive(Clone, Copy)]
pub(super) struct LineFinish {
    m_theta: i64,
    m_sigma: i32,
    base: i64,
    shift: u32,
    activation: Activation,
}

impl LineFinish {
    /// The finishing step of output line `line` of `layer`.
    #[inline(always)]
    pub(super) fn new(layer: &QLayer<'_>, line: usize) -> Self {
        let (m_theta, m_sigma, bias) = params(layer, line);
        Self {
            m_theta,
            m_sigma,
            base: bias.wrapping_add(1 << (layer.shift - 1)),
            shift: layer.shift,
            activation: layer.activation,
        }
    }

    /// The output words of a group of samples from their sums: `acc[m] mθ + b`, plus the
    /// noise `eps[m]` scaled by `sqrt_q4(var[m]) mσ` (Gaussian layers), through the
    /// activation. Writes `min(outs.len(), eps.len(), N)` words (`eps` unused unless
    /// `GAUSS`). Out of line on ARMv6-M (one copy per format and group size instead of one
    /// per row kernel: the Cortex-M0's flash), inlined elsewhere.
    #[cfg_attr(not(tb_flash_lean), inline(always))]
    #[cfg_attr(tb_flash_lean, inline(never))]
    pub(super) fn group<F: Format, const GAUSS: bool, const N: usize>(
        &self,
        (acc, var): (&[F::Acc; N], &[F::Var; N]),
        eps: &[i16],
        outs: &mut [i32],
    ) {
        let word = |z: i64| -> i32 {
            let y = z >> self.shift;
            match self.activation {
                Activation::Relu => F::pack(y.clamp(0, F::ACT_MAX as i64) as i32),
                Activation::Identity => y.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            }
        };
        let mean = |m: usize| {
            F::acc_i64(acc[m])
                .wrapping_mul(self.m_theta)
                .wrapping_add(self.base)
        };
        if GAUSS {
            for (m, (o, &e)) in outs.iter_mut().zip(eps).take(N).enumerate() {
                *o = word(mean(m).wrapping_add(F::noise(var[m], e, self.m_sigma)));
            }
        } else {
            for (m, o) in outs.iter_mut().take(N).enumerate() {
                *o = word(mean(m));
            }
        }
    }
}

/// The sums of the `N` samples of one row whose first sample `x` starts at (inputs `s` words
/// apart): the architecture's kernel where it has one for the row's records and `N` samples,
/// else one pointer streams the records, each record's inputs one contiguous run of `x`.
#[inline(always)]
fn accumulate_full<F: Format, I: Index, const GAUSS: bool, const N: usize>(
    records: &[u8],
    inputs: usize,
    x: &[i32],
    s: usize,
) -> ([F::Acc; N], [F::Var; N]) {
    let mut acc = [F::Acc::default(); N];
    let mut var = [F::Var::default(); N];
    if N == ROW_GROUP {
        if let Some((a, v)) = F::row_sums::<I, GAUSS>(records, inputs, x, s) {
            let n = ROW_GROUP.min(N);
            acc[..n].copy_from_slice(&a[..n]);
            var[..n].copy_from_slice(&v[..n]);
            return (acc, var);
        }
    }
    accumulate_loop::<F, I, GAUSS, N>(records, x, s)
}

/// The generic loop of [`accumulate_full`]. Kept out of line: inlined into the engine, its
/// sums spill to the stack (measured).
#[inline(never)]
fn accumulate_loop<F: Format, I: Index, const GAUSS: bool, const N: usize>(
    records: &[u8],
    x: &[i32],
    s: usize,
) -> ([F::Acc; N], [F::Var; N]) {
    let (len, at_theta, at_sigma) = layout::<F, I, GAUSS>();
    let mut acc = [F::Acc::default(); N];
    let mut var = [F::Var::default(); N];
    for (k, r) in records.chunks_exact(len).enumerate() {
        let i = if I::BYTES == 0 { k } else { I::read(r) };
        let Some(xs) = x.get(i * s..i * s + N) else {
            continue;
        };
        let t = F::theta(r, at_theta);
        for m in 0..N {
            acc[m] = F::mac(acc[m], xs[m], t);
        }
        if GAUSS {
            let v = F::sigma2(r, at_sigma);
            for m in 0..N {
                var[m] = F::var_mac(var[m], xs[m], v);
            }
        }
    }
    (acc, var)
}

/// [`accumulate_full`] for a partial group of `g < N` samples.
#[inline(always)]
fn accumulate_part<F: Format, I: Index, const GAUSS: bool, const N: usize>(
    records: &[u8],
    x: &[i32],
    s: usize,
    g0: usize,
    g: usize,
) -> ([F::Acc; N], [F::Var; N]) {
    let (len, at_theta, at_sigma) = layout::<F, I, GAUSS>();
    let mut acc = [F::Acc::default(); N];
    let mut var = [F::Var::default(); N];
    for (k, r) in records.chunks_exact(len).enumerate() {
        let i = if I::BYTES == 0 { k } else { I::read(r) };
        let at = i * s + g0;
        let Some(xs) = x.get(at..at + g) else {
            continue;
        };
        let t = F::theta(r, at_theta);
        for (m, &w) in xs.iter().enumerate().take(N) {
            acc[m] = F::mac(acc[m], w, t);
            if GAUSS {
                var[m] = F::var_mac(var[m], w, F::sigma2(r, at_sigma));
            }
        }
    }
    (acc, var)
}
