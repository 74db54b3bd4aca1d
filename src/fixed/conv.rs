//! Integer kernels of fixed-point convolutions and max pooling (format version 6), in the
//! three forms of every fixed-point layer: one input with the posterior-mean weights
//! ([`mean`]), one input with Gaussian weights as the first stochastic layer
//! ([`moments`]), and a chunk of `s` samples laid out unit-major, `x[i * s + m]`
//! ([`sampled`]).
//!
//! A convolution is a linear layer whose rows are (output channel, position) pairs sharing
//! their channel's taps and row parameters: per output unit, `A = Σ a θ` and `V = Σ sq(a) σ²`
//! over the channel's taps that fall inside the input (zero padding contributes nothing),
//! in stored tap order, then the same output step as a linear row (`kernels::LineFinish`,
//! `kernels::unit_moments`). Output-stationary: a unit's sums stay in registers while its
//! channel's taps stream past, so no scratch is needed beyond the noise draws.
//!
//! All arithmetic is integer and wraps on overflow, exactly as the linear kernels, so the
//! host and every core compute the same bits.

use super::kernels::{
    finish, layout, params, unit_moments, Format, LineFinish, NoIndex, Words, GROUP, Q16, Q8,
};
use super::model::{QCounts, QLayer};
use crate::format::{unpack_tap, Posterior, Precision};
use crate::model::Geometry;

/// Runs `body::<F, GAUSS>` with the layer's format and posterior.
macro_rules! dispatch_conv {
    ($layer:expr, $body:ident $(:: <$x:ty>)? ( $($arg:expr),* )) => {{
        let gaussian = $layer.posterior == Posterior::Gaussian;
        match ($layer.precision, gaussian) {
            (Precision::Q16, true) => $body::<Q16, true $(, $x)?>($($arg),*),
            (Precision::Q16, false) => $body::<Q16, false $(, $x)?>($($arg),*),
            (_, true) => $body::<Q8, true $(, $x)?>($($arg),*),
            (_, false) => $body::<Q8, false $(, $x)?>($($arg),*),
        }
    }};
}

/// Calls `f(channel, taps, records)` for every output channel, with its taps and their
/// weight records.
#[inline(always)]
fn for_each_channel(layer: &QLayer<'_>, mut f: impl FnMut(usize, &[u32], &[u8])) {
    let QCounts::U16(counts) = layer.counts else {
        return;
    };
    let len = layer.record_len;
    let mut start = 0usize;
    for (co, &n) in counts.iter().enumerate() {
        let end = start + n as usize;
        if let (Some(taps), Some(records)) = (
            layer.taps.get(start..end),
            layer.records.get(start * len..end * len),
        ) {
            f(co, taps, records);
        }
        start = end;
    }
}

/// The input a tap reads at output position `(oy, ox)`; `None` in the zero padding.
#[inline(always)]
fn tap_input(g: &Geometry, tap: u32, oy: usize, ox: usize) -> Option<usize> {
    let (c, ky, kx) = unpack_tap(tap);
    let iy = (oy * g.stride + ky).checked_sub(g.padding)?;
    let ix = (ox * g.stride + kx).checked_sub(g.padding)?;
    if iy >= g.input[1] || ix >= g.input[2] {
        return None;
    }
    Some((c * g.input[1] + iy) * g.input[2] + ix)
}

/// The input index of the window's first element at output position `(oy, ox)` when the
/// whole kernel lies inside the input (every position but a border of width `padding`); then
/// a tap reads `origin + (c * in_h + ky) * in_w + kx` without a bounds check.
#[inline(always)]
fn window_origin(g: &Geometry, oy: usize, ox: usize) -> Option<usize> {
    let [_, in_h, in_w] = g.input;
    let (y0, x0) = (oy * g.stride, ox * g.stride);
    let inside = y0 >= g.padding
        && x0 >= g.padding
        && y0 + g.window[0] <= in_h + g.padding
        && x0 + g.window[1] <= in_w + g.padding;
    inside.then(|| (y0 - g.padding) * in_w + (x0 - g.padding))
}

/// The input a tap reads at `(oy, ox)`, the window's origin there given (interior) or not
/// (border: checked); `None` in the zero padding.
#[inline(always)]
fn tap_input_at(
    g: &Geometry,
    origin: Option<usize>,
    tap: u32,
    oy: usize,
    ox: usize,
) -> Option<usize> {
    match origin {
        Some(o) => {
            let (c, ky, kx) = unpack_tap(tap);
            Some(o + (c * g.input[1] + ky) * g.input[2] + kx)
        }
        None => tap_input(g, tap, oy, ox),
    }
}

/// The sums `(A, V)` of one output unit at `(oy, ox)` for one input (`V = 0` unless
/// `with_var` on a Gaussian layer).
#[inline(always)]
fn unit_sums<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    g: &Geometry,
    taps: &[u32],
    records: &[u8],
    x: &X,
    (oy, ox): (usize, usize),
    with_var: bool,
) -> (i64, u64) {
    let (len, at_theta, at_sigma) = layout::<F, NoIndex, GAUSS>();
    let (mut a, mut v) = (F::Acc::default(), F::Var::default());
    let origin = window_origin(g, oy, ox);
    for (&tap, r) in taps.iter().zip(records.chunks_exact(len)) {
        let Some(i) = tap_input_at(g, origin, tap, oy, ox) else {
            continue;
        };
        let w = x.word::<F>(i);
        a = F::mac(a, w, F::theta(r, at_theta));
        if GAUSS && with_var {
            v = F::var_mac(v, w, F::sigma2(r, at_sigma));
        }
    }
    (F::acc_i64(a), F::var_u64(v))
}

/// Calls `f(channel, unit, A, V)` for every output unit of one input, in unit order (`V = 0`
/// unless `with_var`).
#[inline(always)]
fn for_each_unit<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    with_var: bool,
    mut f: impl FnMut(usize, usize, i64, u64),
) {
    let [_, out_h, out_w] = g.output;
    for_each_channel(layer, |co, taps, records| {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let (a, v) = unit_sums::<F, GAUSS, X>(g, taps, records, x, (oy, ox), with_var);
                f(co, (co * out_h + oy) * out_w + ox, a, v);
            }
        }
    });
}

/// Mean weights, one input: `out[(co, oy, ox)]` is the output word of that unit.
#[inline(never)]
pub(crate) fn mean<X: Words + ?Sized>(layer: &QLayer<'_>, g: &Geometry, x: &X, out: &mut [i32]) {
    dispatch_conv!(layer, mean_typed::<X>(layer, g, x, out))
}

#[inline(never)]
fn mean_typed<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    out: &mut [i32],
) {
    for_each_unit::<F, GAUSS, X>(layer, g, x, false, |co, u, a, _| {
        let (m_theta, _, bias) = params(layer, co);
        let z = a.wrapping_mul(m_theta).wrapping_add(bias);
        if let Some(o) = out.get_mut(u) {
            *o = finish::<F>(z, layer.shift, layer.activation);
        }
    });
}

/// Gaussian weights, one input: `base[u]`, `scale[u]` of every output unit `u`, as
/// `kernels::moments_layer` defines them.
#[inline(never)]
pub(crate) fn moments<X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    dispatch_conv!(layer, moments_typed::<X>(layer, g, x, base, scale))
}

#[inline(never)]
fn moments_typed<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    for_each_unit::<F, GAUSS, X>(layer, g, x, true, |co, u, a, v| {
        if let (Some(b), Some(sc)) = (base.get_mut(u), scale.get_mut(u)) {
            (*b, *sc) = unit_moments(layer, co, a, v);
        }
    });
}

/// A chunk of `s` samples: `x[i * s + m]` is input `i` of sample `m`, `eps[u * s + m]` the
/// noise of output unit `u` (Gaussian layers); writes `out[u * s + m]`.
#[inline(never)]
pub(crate) fn sampled(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    dispatch_conv!(layer, sampled_typed(layer, g, x, s, eps, out))
}

#[inline(never)]
fn sampled_typed<F: Format, const GAUSS: bool>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    let (len, at_theta, at_sigma) = layout::<F, NoIndex, GAUSS>();
    let [_, out_h, out_w] = g.output;
    for_each_channel(layer, |co, taps, records| {
        let finish = LineFinish::new(layer, co);
        for oy in 0..out_h {
            for ox in 0..out_w {
                let u = (co * out_h + oy) * out_w + ox;
                let origin = window_origin(g, oy, ox);
                let mut g0 = 0;
                while g0 < s {
                    let n = GROUP.min(s - g0);
                    let mut acc = [F::Acc::default(); GROUP];
                    let mut var = [F::Var::default(); GROUP];
                    for (&tap, r) in taps.iter().zip(records.chunks_exact(len)) {
                        let Some(i) = tap_input_at(g, origin, tap, oy, ox) else {
                            continue;
                        };
                        let Some(xs) = x.get(i * s + g0..i * s + g0 + n) else {
                            continue;
                        };
                        let t = F::theta(r, at_theta);
                        for (m, &w) in xs.iter().enumerate().take(GROUP) {
                            acc[m] = F::mac(acc[m], w, t);
                            if GAUSS {
                                var[m] = F::var_mac(var[m], w, F::sigma2(r, at_sigma));
                            }
                        }
                    }
                    let at = u * s + g0;
                    if let Some(outs) = out.get_mut(at..at + n) {
                        let eps = eps.get(at..at + n).unwrap_or(&[]);
                        finish.group::<F, GAUSS, GROUP>((&acc, &var), eps, outs);
                    }
                    g0 += n;
                }
            }
        }
    });
}

/// Max pooling of `s` samples (`s = 1` for one input): `out[(c, oy, ox) * s + m]` is the
/// largest word of the window. Activations are non-negative and their words grow with them
/// (the q8 word holds `a^2 >> 1` above `a`), so the largest word is the word of the largest
/// activation.
#[inline(never)]
pub(crate) fn max_pool<X: Words + ?Sized>(
    precision: Precision,
    g: &Geometry,
    x: &X,
    s: usize,
    out: &mut [i32],
) {
    match precision {
        Precision::Q16 => pool_typed::<Q16, X>(g, x, s, out),
        _ => pool_typed::<Q8, X>(g, x, s, out),
    }
}

#[inline(never)]
fn pool_typed<F: Format, X: Words + ?Sized>(g: &Geometry, x: &X, s: usize, out: &mut [i32]) {
    let n = x.len();
    let word = |i: usize| if i < n { x.word::<F>(i) } else { i32::MIN };
    crate::kernels::max_pool_by(g, s, i32::MIN, i32::max, word, out);
}
