//! Sparse 2-D convolution kernels, weight-stationary: each surviving tap `(c, ky, kx, θ, σ²)`
//! is loaded once and applied to every output position of its channel (and, in the sampled
//! form, to every sample of the chunk). Zero padding is handled by clipping each tap's range
//! of output positions, so no padded copy of the input is made; a tap's reach is walked one
//! output row at a time (a slice of outputs against a strided slice of inputs).
//!
//! Summation order per output unit: bias, then taps in stored order, in all three forms.

use super::activate;
use crate::format::{unpack_tap, Posterior};
use crate::input::Input;
use crate::model::{Geometry, Layer, Weights};
use rand_xoshiro::Xoshiro128PlusPlus;

/// The range of outputs `o` along one axis for which `i = o * stride + k - padding` lies in
/// `[0, input)`.
#[inline]
fn valid_range(
    output: usize,
    input: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let lo = if k >= padding {
        0
    } else {
        (padding - k).div_ceil(stride)
    };
    let reach = input + padding;
    if reach <= k {
        return (0, 0);
    }
    let hi = ((reach - 1 - k) / stride + 1).min(output);
    (lo.min(hi), hi)
}

/// Calls `f(out_start, in_start, len)` for every output row a tap at `(ky, kx)` reaches:
/// outputs `out_start..out_start + len` (map-local, `oy * out_w + ox`) read inputs
/// `in_start`, `in_start + stride`, ... (`iy * in_w + ix`). Each output still receives the
/// taps in stored order, so the sums are the same bits as position by position.
#[inline(always)]
fn for_each_row(g: &Geometry, ky: usize, kx: usize, mut f: impl FnMut(usize, usize, usize)) {
    let [_, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    let (y0, y1) = valid_range(out_h, in_h, ky, g.stride, g.padding);
    let (x0, x1) = valid_range(out_w, in_w, kx, g.stride, g.padding);
    if x0 == x1 {
        return;
    }
    let ix0 = x0 * g.stride + kx - g.padding;
    for oy in y0..y1 {
        let iy = oy * g.stride + ky - g.padding;
        f(oy * out_w + x0, iy * in_w + ix0, x1 - x0);
    }
}

/// A convolution's geometry, row pointers, packed taps and weight records.
type ConvParts<'a> = (Geometry, &'a [u32], &'a [u32], &'a [f32]);

/// The layer's geometry and tap tables; `None` for a layer that is not a convolution.
fn parts<'a>(layer: &Layer<'a>) -> Option<ConvParts<'a>> {
    match (layer.operation(), layer.weights()) {
        (
            crate::model::Operation::Conv2d(g),
            Weights::Conv {
                row_ptr,
                taps,
                values,
            },
        ) => Some((g, row_ptr, taps, values)),
        _ => None,
    }
}

/// Mean weights, one input: `out[co, oy, ox] = act(bias + Σ θ x)`.
pub(super) fn forward_mean<X: Input + ?Sized>(layer: &Layer<'_>, x: &X, out: &mut [f32]) {
    let Some((g, row_ptr, taps, values)) = parts(layer) else {
        return;
    };
    let words = layer.posterior().words_per_weight();
    let map = g.output[1] * g.output[2];
    let plane = g.input[1] * g.input[2];
    if let Some(xs) = x.as_slice() {
        let (bias, maps) = (layer.bias(), g.output[0] * map);
        if crate::arch::conv3_mean(&g, row_ptr, taps, values, words, xs, bias, out) {
            for v in out[..maps].iter_mut() {
                *v = activate(layer.activation(), *v);
            }
            return;
        }
    }
    for (co, bounds) in row_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let out_map = &mut out[co * map..(co + 1) * map];
        out_map.fill(layer.bias()[co]);
        for (&tap, w) in taps[start..end]
            .iter()
            .zip(values[start * words..].chunks_exact(words))
        {
            let (ci, ky, kx) = unpack_tap(tap);
            let base = ci * plane;
            let w0 = w[0];
            for_each_row(&g, ky, kx, |o, i, len| {
                x.accumulate_scaled(base + i, g.stride, w0, &mut out_map[o..o + len]);
            });
        }
        for v in out_map.iter_mut() {
            *v = activate(layer.activation(), *v);
        }
    }
}

/// Pre-activation mean and standard deviation of every output unit for a fixed input.
pub(super) fn forward_moments<X: Input + ?Sized>(
    layer: &Layer<'_>,
    x: &X,
    mean: &mut [f32],
    std: &mut [f32],
) {
    let Some((g, row_ptr, taps, values)) = parts(layer) else {
        return;
    };
    let gaussian = layer.posterior() == Posterior::Gaussian;
    let words = layer.posterior().words_per_weight();
    let map = g.output[1] * g.output[2];
    let plane = g.input[1] * g.input[2];
    for (co, bounds) in row_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let m_map = &mut mean[co * map..(co + 1) * map];
        let v_map = &mut std[co * map..(co + 1) * map];
        m_map.fill(layer.bias()[co]);
        v_map.fill(0.0);
        for (&tap, w) in taps[start..end]
            .iter()
            .zip(values[start * words..].chunks_exact(words))
        {
            let (ci, ky, kx) = unpack_tap(tap);
            let base = ci * plane;
            let (w0, w1) = (w[0], w.get(1).copied().unwrap_or(0.0));
            for_each_row(&g, ky, kx, |o, i, len| {
                let ms = &mut m_map[o..o + len];
                let vs = &mut v_map[o..o + len];
                for (k, (m, v)) in ms.iter_mut().zip(vs.iter_mut()).enumerate() {
                    let xv = x.value(base + i + k * g.stride);
                    *m += xv * w0;
                    if gaussian {
                        *v += xv * xv * w1;
                    }
                }
            });
        }
        for v in v_map.iter_mut() {
            *v = crate::arch::sqrtf(*v);
        }
    }
}

/// A chunk of `s = rngs.len()` samples, unit-major (`x[i * s + m]`, `out[j * s + m]`).
/// `scratch` holds one channel's variance map for the chunk (`out_h * out_w * s` words).
pub(super) fn forward_samples(
    layer: &Layer<'_>,
    x: &[f32],
    rngs: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let Some((g, row_ptr, taps, values)) = parts(layer) else {
        return;
    };
    let s = rngs.len();
    let gaussian = layer.posterior() == Posterior::Gaussian;
    let words = layer.posterior().words_per_weight();
    let map = g.output[1] * g.output[2];
    let plane = g.input[1] * g.input[2];
    let var = &mut scratch[..map * s];
    for (co, bounds) in row_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let mean = &mut out[co * map * s..(co + 1) * map * s];
        mean.fill(layer.bias()[co]);
        var.fill(0.0);
        for (&tap, w) in taps[start..end]
            .iter()
            .zip(values[start * words..].chunks_exact(words))
        {
            let (ci, ky, kx) = unpack_tap(tap);
            let base = ci * plane;
            let (w0, w1) = (w[0], w.get(1).copied().unwrap_or(0.0));
            for_each_row(&g, ky, kx, |o, i, len| {
                // Samples of consecutive outputs are consecutive; inputs step by `stride`
                // positions of `s` samples each.
                let ms = &mut mean[o * s..(o + len) * s];
                let vs = &mut var[o * s..(o + len) * s];
                let xs = &x[(base + i) * s..(base + i + (len - 1) * g.stride + 1) * s];
                if g.stride == 1 {
                    multiply_accumulate(ms, vs, xs, w0, w1, gaussian);
                } else {
                    for ((ms, vs), xs) in ms
                        .chunks_exact_mut(s)
                        .zip(vs.chunks_exact_mut(s))
                        .zip(xs.chunks(s).step_by(g.stride))
                    {
                        multiply_accumulate(ms, vs, xs, w0, w1, gaussian);
                    }
                }
            });
        }
        super::finish_chunk(layer, mean, var, rngs);
    }
}

/// `m += x θ` and, for a Gaussian layer, `v += x² σ²` element by element.
#[inline(always)]
fn multiply_accumulate(
    ms: &mut [f32],
    vs: &mut [f32],
    xs: &[f32],
    w0: f32,
    w1: f32,
    gaussian: bool,
) {
    if gaussian {
        for ((m, v), &xv) in ms.iter_mut().zip(vs.iter_mut()).zip(xs) {
            *m += xv * w0;
            *v += xv * xv * w1;
        }
    } else {
        for (m, &xv) in ms.iter_mut().zip(xs) {
            *m += xv * w0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_range;

    #[test]
    fn valid_ranges_match_brute_force() {
        for input in 1..9 {
            for k in 0..4 {
                for stride in 1..4 {
                    for padding in 0..=k.min(2) {
                        let Some(output) = crate::format::window_output(input, 4, stride, padding)
                        else {
                            continue;
                        };
                        let (lo, hi) = valid_range(output, input, k, stride, padding);
                        for o in 0..output {
                            let i = (o * stride + k) as isize - padding as isize;
                            let inside = i >= 0 && (i as usize) < input;
                            assert_eq!(
                                inside,
                                (lo..hi).contains(&o),
                                "{input} {k} {stride} {padding} {o}"
                            );
                        }
                    }
                }
            }
        }
    }
}
