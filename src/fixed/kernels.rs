//! Integer kernels of one fixed-point linear layer, generic over the number format
//! ([`Q8`], [`Q16`]) and the index width (u8, u16):
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

use super::model::{QIndex, QLayer, QValues};
use super::noise::{NormalQ12, NORMAL_FRAC_BITS, NORMAL_Q12_MAX};
use crate::format::{Activation, Posterior, Storage};

/// A fixed-point number format: how activations are packed into words and how weights
/// accumulate.
pub(crate) trait Format {
    /// Stored θ.
    type Theta: Copy + bytemuck::Pod;
    /// Stored σ².
    type Sigma2: Copy + bytemuck::Pod;
    /// Mean accumulator.
    type Acc: Copy + Default;
    /// Variance accumulator.
    type Var: Copy + Default;
    /// Largest activation.
    const ACT_MAX: i32;
    /// The activation word of a value `0 <= a <= ACT_MAX`.
    fn pack(a: i32) -> i32;
    /// `acc + a θ` for the activation word `w`.
    fn mac(acc: Self::Acc, w: i32, theta: Self::Theta) -> Self::Acc;
    /// `var + sq(a) σ²` for the activation word `w`.
    fn var_mac(var: Self::Var, w: i32, sigma2: Self::Sigma2) -> Self::Var;
    /// The mean sum as i64.
    fn acc_i64(acc: Self::Acc) -> i64;
    /// The variance sum as u64.
    fn var_u64(var: Self::Var) -> u64;
}

/// q8: activation word `(a^2 >> 1) << 16 | a`; int32 sums.
pub(crate) struct Q8;
/// q16: activation word `a`; int64 sums.
pub(crate) struct Q16;

impl Format for Q8 {
    type Theta = i8;
    type Sigma2 = u8;
    type Acc = i32;
    type Var = i32;
    const ACT_MAX: i32 = 255;
    #[inline(always)]
    fn pack(a: i32) -> i32 {
        ((a * a) >> 1) << 16 | a
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
}

impl Format for Q16 {
    type Theta = i16;
    type Sigma2 = u16;
    type Acc = i64;
    type Var = u64;
    const ACT_MAX: i32 = 32767;
    #[inline(always)]
    fn pack(a: i32) -> i32 {
        a
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
}

/// An input vector read as activation words: raw bytes (the model input) or words.
pub(crate) trait Words {
    /// The word of input `i` (in range by validation).
    fn word<F: Format>(&self, i: usize) -> i32;
}

impl Words for [u8] {
    #[inline(always)]
    fn word<F: Format>(&self, i: usize) -> i32 {
        F::pack(self[i] as i32)
    }
}

impl Words for [i32] {
    #[inline(always)]
    fn word<F: Format>(&self, i: usize) -> i32 {
        self[i]
    }
}

/// An index type of the sparse layouts.
pub(crate) trait Index: Copy {
    fn get(self) -> usize;
}
impl Index for u8 {
    #[inline(always)]
    fn get(self) -> usize {
        self as usize
    }
}
impl Index for u16 {
    #[inline(always)]
    fn get(self) -> usize {
        self as usize
    }
}

/// The row parameters of unit `j`: (mθ, mσ, bias).
#[inline(always)]
fn params(layer: &QLayer<'_>, j: usize) -> (i64, i64, i64) {
    let p = &layer.params[3 * j..3 * j + 3];
    (p[0] as i64, p[1] as i64, p[2] as i64)
}

/// The output word of a pre-activation `z` (scaled by 2^S): ReLU-clamped and packed for
/// hidden layers, saturated to i32 for the logits.
#[inline(always)]
fn finish<F: Format>(z: i64, shift: u32, activation: Activation) -> i32 {
    let y = z.wrapping_add(1 << (shift - 1)) >> shift;
    match activation {
        Activation::Relu => F::pack(y.clamp(0, F::ACT_MAX as i64) as i32),
        Activation::Identity => y.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
    }
}

/// Noise scale of a unit in the output's units times 2^S: `sqrt_q8(V) mσ >> 8`.
#[inline(always)]
fn noise_scale(var: u64, m_sigma: i64) -> i64 {
    (super::math::sqrt_q8(var) as i64).wrapping_mul(m_sigma) >> 8
}

/// `z + (scale ε >> 12)`.
#[inline(always)]
fn add_noise(base: i64, scale: i64, eps: i16) -> i64 {
    base.wrapping_add(scale.wrapping_mul(eps as i64) >> NORMAL_FRAC_BITS)
}

/// Calls `f(line, entries)` for every line (output row, or input column for by-input
/// storage), where `entries` yields `(index, position)` pairs: the other unit's index and the
/// position of the weight in the value arrays.
#[inline(always)]
fn for_each_line<I: Index>(counts: &[I], indices: &[I], mut f: impl FnMut(usize, &[I], usize)) {
    let mut start = 0;
    for (line, &c) in counts.iter().enumerate() {
        let end = start + c.get();
        f(line, &indices[start..end], start);
        start = end;
    }
}

/// Runs `body::<F, I>` with the layer's concrete format and index types.
macro_rules! dispatch {
    ($layer:expr, $body:ident ( $($arg:expr),* )) => {
        match ($layer.values, $layer.index) {
            (QValues::Q8 { theta, sigma2 }, QIndex::U8 { counts, indices }) =>
                $body::<Q8, u8, _>($($arg,)* theta, sigma2, Some((counts, indices))),
            (QValues::Q8 { theta, sigma2 }, QIndex::U16 { counts, indices }) =>
                $body::<Q8, u16, _>($($arg,)* theta, sigma2, Some((counts, indices))),
            (QValues::Q8 { theta, sigma2 }, QIndex::Dense) =>
                $body::<Q8, u8, _>($($arg,)* theta, sigma2, None),
            (QValues::Q16 { theta, sigma2 }, QIndex::U8 { counts, indices }) =>
                $body::<Q16, u8, _>($($arg,)* theta, sigma2, Some((counts, indices))),
            (QValues::Q16 { theta, sigma2 }, QIndex::U16 { counts, indices }) =>
                $body::<Q16, u16, _>($($arg,)* theta, sigma2, Some((counts, indices))),
            (QValues::Q16 { theta, sigma2 }, QIndex::Dense) =>
                $body::<Q16, u8, _>($($arg,)* theta, sigma2, None),
        }
    };
}

type Sparse<'a, I> = Option<(&'a [I], &'a [I])>;

/// Integer sums `(A_j, V_j)` of every output unit for one input, handed to `f(j, A, V)` in
/// unit order. By-input layers scatter into `acc` / `var` first (`outputs` entries each).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sums<F: Format, I: Index, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    theta: &[F::Theta],
    sigma2: &[F::Sigma2],
    sparse: Sparse<'_, I>,
    acc: &mut [i64],
    var: &mut [i64],
    mut f: impl FnMut(usize, i64, u64),
) {
    let gaussian = layer.posterior == Posterior::Gaussian;
    let (n_in, n_out) = (layer.inputs, layer.outputs);
    match (layer.storage, sparse) {
        (Storage::SparseByInput, Some((counts, indices))) => {
            let (acc, var) = (&mut acc[..n_out], &mut var[..n_out]);
            acc.fill(0);
            var.fill(0);
            for_each_line(counts, indices, |i, rows, start| {
                let w = x.word::<F>(i);
                if w == 0 {
                    return; // a zero input (blank pixel) contributes nothing
                }
                for (k, &r) in rows.iter().enumerate() {
                    let j = r.get();
                    let a = F::mac(F::Acc::default(), w, theta[start + k]);
                    acc[j] = acc[j].wrapping_add(F::acc_i64(a));
                    if gaussian {
                        let v = F::var_mac(F::Var::default(), w, sigma2[start + k]);
                        var[j] = var[j].wrapping_add(F::var_u64(v) as i64);
                    }
                }
            });
            for j in 0..n_out {
                f(j, acc[j], var[j] as u64);
            }
        }
        (Storage::Sparse, Some((counts, indices))) => {
            for_each_line(counts, indices, |j, cols, start| {
                let (mut a, mut v) = (F::Acc::default(), F::Var::default());
                for (k, &c) in cols.iter().enumerate() {
                    let w = x.word::<F>(c.get());
                    a = F::mac(a, w, theta[start + k]);
                    if gaussian {
                        v = F::var_mac(v, w, sigma2[start + k]);
                    }
                }
                f(j, F::acc_i64(a), F::var_u64(v));
            });
        }
        _ => {
            for j in 0..n_out {
                let (mut a, mut v) = (F::Acc::default(), F::Var::default());
                for i in 0..n_in {
                    let w = x.word::<F>(i);
                    a = F::mac(a, w, theta[j * n_in + i]);
                    if gaussian {
                        v = F::var_mac(v, w, sigma2[j * n_in + i]);
                    }
                }
                f(j, F::acc_i64(a), F::var_u64(v));
            }
        }
    }
}

/// Mean weights: `out[j]` is the output word of unit `j`. `scratch` holds `2 * outputs` i64
/// (used by by-input layers).
pub(crate) fn mean_layer<X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    out: &mut [i32],
    scratch: (&mut [i64], &mut [i64]),
) {
    dispatch!(layer, mean_layer_typed(layer, x, out, scratch))
}

fn mean_layer_typed<F: Format, I: Index, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    out: &mut [i32],
    scratch: (&mut [i64], &mut [i64]),
    theta: &[F::Theta],
    sigma2: &[F::Sigma2],
    sparse: Sparse<'_, I>,
) {
    let (shift, act) = (layer.shift, layer.activation);
    sums::<F, I, X>(
        layer,
        x,
        theta,
        sigma2,
        sparse,
        scratch.0,
        scratch.1,
        |j, a, _| {
            let (m_theta, _, bias) = params(layer, j);
            out[j] = finish::<F>(a.wrapping_mul(m_theta).wrapping_add(bias), shift, act);
        },
    );
}

/// Gaussian weights, one input: `base[j] = A mθ + b` and `scale[j]` the noise scale (see
/// [`noise_scale`]), or -1 for a ReLU unit that no draw can switch on (bounded noise: exact).
/// A deterministic layer gets scale 0.
pub(crate) fn moments_layer<X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    dispatch!(layer, moments_layer_typed(layer, x, base, scale))
}

fn moments_layer_typed<F: Format, I: Index, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
    theta: &[F::Theta],
    sigma2: &[F::Sigma2],
    sparse: Sparse<'_, I>,
) {
    let shift = layer.shift;
    let relu = layer.activation == Activation::Relu;
    let moments = |j: usize, a: i64, v: u64| -> (i64, i64) {
        let (m_theta, m_sigma, bias) = params(layer, j);
        let mean = a.wrapping_mul(m_theta).wrapping_add(bias);
        let sc = noise_scale(v, m_sigma);
        // Largest possible pre-activation, rounded like `finish`: if even it gives y <= 0,
        // the ReLU output is 0 for every draw.
        let top = add_noise(mean, sc, NORMAL_Q12_MAX as i16).wrapping_add(1 << (shift - 1));
        let inactive = relu && sc >= 0 && top < (1i64 << shift);
        (mean, if inactive { -1 } else { sc })
    };
    let n = layer.outputs;
    let (base, scale) = (&mut base[..n], &mut scale[..n]);
    if layer.storage == Storage::SparseByInput {
        // Scatter the sums into base (A) and scale (V), then turn them into moments in place.
        sums::<F, I, X>(layer, x, theta, sigma2, sparse, base, scale, |_, _, _| {});
        for j in 0..n {
            (base[j], scale[j]) = moments(j, base[j], scale[j] as u64);
        }
    } else {
        sums::<F, I, X>(
            layer,
            x,
            theta,
            sigma2,
            sparse,
            &mut [],
            &mut [],
            |j, a, v| {
                (base[j], scale[j]) = moments(j, a, v);
            },
        );
    }
}

/// Samples of the first stochastic layer from its moments: `out[j * s + m]` for `s =
/// streams.len()` samples, sample-major so each stream stays in registers; a unit with scale
/// -1 is 0 without a draw.
pub(crate) fn draw_from_moments(
    layer: &QLayer<'_>,
    base: &[i64],
    scale: &[i64],
    streams: &mut [NormalQ12],
    out: &mut [i32],
) {
    match layer.values {
        QValues::Q8 { .. } => draw_typed::<Q8>(layer, base, scale, streams, out),
        QValues::Q16 { .. } => draw_typed::<Q16>(layer, base, scale, streams, out),
    }
}

fn draw_typed<F: Format>(
    layer: &QLayer<'_>,
    base: &[i64],
    scale: &[i64],
    streams: &mut [NormalQ12],
    out: &mut [i32],
) {
    let s = streams.len();
    let (shift, act) = (layer.shift, layer.activation);
    let gaussian = layer.posterior == Posterior::Gaussian;
    for (m, stream) in streams.iter_mut().enumerate() {
        let mut local = stream.clone();
        for (j, (&b, &sc)) in base.iter().zip(scale).enumerate() {
            let z = if sc < 0 {
                out[j * s + m] = F::pack(0);
                continue;
            } else if gaussian {
                add_noise(b, sc, local.draw())
            } else {
                b
            };
            out[j * s + m] = finish::<F>(z, shift, act);
        }
        *stream = local;
    }
}

/// Draws the noise of a Gaussian layer for a chunk: `eps[j * s + m]` from stream `m`,
/// units in ascending order.
pub(crate) fn draw_noise(units: usize, streams: &mut [NormalQ12], eps: &mut [i16]) {
    let s = streams.len();
    for (m, stream) in streams.iter_mut().enumerate() {
        let mut local = stream.clone();
        for j in 0..units {
            eps[j * s + m] = local.draw();
        }
        *stream = local;
    }
}

/// One layer for a chunk of `s <= CHUNK` samples: `x[i * s + m]` is input `i` of sample `m`,
/// `eps[j * s + m]` the noise of unit `j` (Gaussian layers); writes `out[j * s + m]`.
pub(crate) fn sampled_layer<const CHUNK: usize>(
    layer: &QLayer<'_>,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    macro_rules! go {
        ($f:ty, $i:ty, $theta:expr, $sigma2:expr, $sparse:expr) => {
            if s == CHUNK {
                sampled_typed::<$f, $i, CHUNK>(layer, x, CHUNK, eps, out, $theta, $sigma2, $sparse)
            } else {
                sampled_typed::<$f, $i, CHUNK>(layer, x, s, eps, out, $theta, $sigma2, $sparse)
            }
        };
    }
    match (layer.values, layer.index) {
        (QValues::Q8 { theta, sigma2 }, QIndex::U8 { counts, indices }) => {
            go!(Q8, u8, theta, sigma2, Some((counts, indices)))
        }
        (QValues::Q8 { theta, sigma2 }, QIndex::U16 { counts, indices }) => {
            go!(Q8, u16, theta, sigma2, Some((counts, indices)))
        }
        (QValues::Q8 { theta, sigma2 }, QIndex::Dense) => go!(Q8, u8, theta, sigma2, None),
        (QValues::Q16 { theta, sigma2 }, QIndex::U8 { counts, indices }) => {
            go!(Q16, u8, theta, sigma2, Some((counts, indices)))
        }
        (QValues::Q16 { theta, sigma2 }, QIndex::U16 { counts, indices }) => {
            go!(Q16, u16, theta, sigma2, Some((counts, indices)))
        }
        (QValues::Q16 { theta, sigma2 }, QIndex::Dense) => go!(Q16, u8, theta, sigma2, None),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sampled_typed<F: Format, I: Index, const CHUNK: usize>(
    layer: &QLayer<'_>,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
    theta: &[F::Theta],
    sigma2: &[F::Sigma2],
    sparse: Sparse<'_, I>,
) {
    let (shift, act) = (layer.shift, layer.activation);
    let gaussian = layer.posterior == Posterior::Gaussian;
    let n_in = layer.inputs;
    let mut row = |j: usize, acc: &[F::Acc; CHUNK], var: &[F::Var; CHUNK]| {
        let (m_theta, m_sigma, bias) = params(layer, j);
        for m in 0..s {
            let mut z = F::acc_i64(acc[m]).wrapping_mul(m_theta).wrapping_add(bias);
            if gaussian {
                let sc = noise_scale(F::var_u64(var[m]), m_sigma);
                z = add_noise(z, sc, eps[j * s + m]);
            }
            out[j * s + m] = finish::<F>(z, shift, act);
        }
    };
    let add = |i: usize, k: usize, acc: &mut [F::Acc; CHUNK], var: &mut [F::Var; CHUNK]| {
        let xs = &x[i * s..i * s + s];
        let (th, s2) = (
            theta[k],
            if gaussian {
                sigma2[k]
            } else {
                sigma2_zero::<F>()
            },
        );
        for m in 0..s {
            acc[m] = F::mac(acc[m], xs[m], th);
            if gaussian {
                var[m] = F::var_mac(var[m], xs[m], s2);
            }
        }
    };
    match sparse {
        Some((counts, indices)) => for_each_line(counts, indices, |j, cols, start| {
            let mut acc = [F::Acc::default(); CHUNK];
            let mut var = [F::Var::default(); CHUNK];
            for (k, &c) in cols.iter().enumerate() {
                add(c.get(), start + k, &mut acc, &mut var);
            }
            row(j, &acc, &var);
        }),
        None => {
            for j in 0..layer.outputs {
                let mut acc = [F::Acc::default(); CHUNK];
                let mut var = [F::Var::default(); CHUNK];
                for i in 0..n_in {
                    add(i, j * n_in + i, &mut acc, &mut var);
                }
                row(j, &acc, &var);
            }
        }
    }
}

/// A σ² placeholder for deterministic layers (whose σ² slice is empty).
#[inline(always)]
fn sigma2_zero<F: Format>() -> F::Sigma2 {
    bytemuck::Zeroable::zeroed()
}
