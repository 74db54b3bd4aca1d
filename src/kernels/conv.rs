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

/// Output width of the output-stationary path for unpadded convolutions ([`rows_fit`]): the
/// early-exit ResNet's 4x4 stride-4 stem on 28x28 inputs. A row of sums (and, for the
/// moments, a row of variance sums) stays in registers across all of a channel's taps.
const ROW: usize = 7;

/// Whether the output-stationary row path runs: no padding, outputs `ROW` wide, and every tap
/// of every output inside the input (so no clipping).
fn rows_fit(g: &Geometry) -> bool {
    let [_, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    g.padding == 0
        && g.stride >= 1
        && out_w == ROW
        && out_h >= 1
        && (out_h - 1) * g.stride + g.window[0] <= in_h
        && (out_w - 1) * g.stride + g.window[1] <= in_w
}

/// Output row `oy` of channel `co` (taps `start..end`), output-stationary: `ROW` sums start at
/// `init` and receive `f(x, w)` for each tap in stored order, where `x` are the tap's `ROW`
/// inputs and `w` its record. Each output gets the weight-stationary loop's sums (the
/// same terms in the same order), so the same bits.
#[inline(always)]
fn row_sums<X: Input + ?Sized, const N: usize>(
    g: &Geometry,
    (taps, values, words): (&[u32], &[f32], usize),
    x: &X,
    oy: usize,
    init: [[f32; ROW]; N],
    mut f: impl FnMut(&mut [[f32; ROW]; N], &[f32; ROW], &[f32]),
) -> [[f32; ROW]; N] {
    let [_, in_h, in_w] = g.input;
    let mut acc = init;
    for (&tap, w) in taps.iter().zip(values.chunks_exact(words)) {
        let (ci, ky, kx) = unpack_tap(tap);
        let start = (ci * in_h + oy * g.stride + ky) * in_w + kx;
        f(&mut acc, &x.gather::<ROW>(start, g.stride), w);
    }
    acc
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
    if rows_fit(&g) {
        for (co, bounds) in row_ptr.windows(2).enumerate() {
            let (start, end) = (bounds[0] as usize, bounds[1] as usize);
            let tap_list = (
                &taps[start..end],
                &values[start * words..end * words],
                words,
            );
            let out_map = &mut out[co * map..(co + 1) * map];
            let init = [[layer.bias()[co]; ROW]];
            for (oy, out_row) in out_map.chunks_exact_mut(ROW).enumerate() {
                let [sums] = row_sums(&g, tap_list, x, oy, init, |[acc], xs, w| {
                    for (a, &xv) in acc.iter_mut().zip(xs) {
                        *a += xv * w[0];
                    }
                });
                for (o, a) in out_row.iter_mut().zip(sums) {
                    *o = activate(layer.activation(), a);
                }
            }
        }
        return;
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
    if rows_fit(&g) {
        for (co, bounds) in row_ptr.windows(2).enumerate() {
            let (start, end) = (bounds[0] as usize, bounds[1] as usize);
            let tap_list = (
                &taps[start..end],
                &values[start * words..end * words],
                words,
            );
            let m_map = &mut mean[co * map..(co + 1) * map];
            let v_map = &mut std[co * map..(co + 1) * map];
            let init = [[layer.bias()[co]; ROW], [0.0; ROW]];
            for (oy, (m_row, v_row)) in m_map
                .chunks_exact_mut(ROW)
                .zip(v_map.chunks_exact_mut(ROW))
                .enumerate()
            {
                let [ms, vs] = row_sums(&g, tap_list, x, oy, init, |[ms, vs], xs, w| {
                    let (w0, w1) = (w[0], w.get(1).copied().unwrap_or(0.0));
                    for ((m, v), &xv) in ms.iter_mut().zip(vs.iter_mut()).zip(xs) {
                        *m += xv * w0;
                        if gaussian {
                            *v += xv * xv * w1;
                        }
                    }
                });
                m_row.copy_from_slice(&ms);
                for (o, v) in v_row.iter_mut().zip(vs) {
                    *o = crate::arch::sqrtf(v);
                }
            }
        }
        return;
    }
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
    // One sample per pass (the early-exit ResNet): the hand-scheduled output-stationary
    // kernel where it runs (the same sums), else the loop below for every channel.
    let mut native = s == 1 && gaussian && words == 2;
    for (co, bounds) in row_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let mean = &mut out[co * map * s..(co + 1) * map * s];
        let bias = layer.bias()[co];
        native = native
            && crate::arch::conv3_moments(&g, row_ptr, taps, values, x, co, bias, (mean, var));
        if native {
            super::finish_chunk(layer, mean, var, rngs);
            continue;
        }
        mean.fill(bias);
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

/// Moment propagation from input means and variances (`x[2 i]`, `x[2 i + 1]`) to output
/// pre-activation moments (`out[2 o]`, `out[2 o + 1]`): per output, the bias then every tap
/// in stored order adds `θ m_i` to the mean and `θ² v_i + σ² (m_i² + v_i)` to the variance.
pub(super) fn propagate(layer: &Layer<'_>, x: &[f32], out: &mut [f32]) {
    let Some((g, row_ptr, taps, values)) = parts(layer) else {
        return;
    };
    let words = layer.posterior().words_per_weight();
    let map = g.output[1] * g.output[2];
    let plane = g.input[1] * g.input[2];
    for (co, bounds) in row_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let Some(out_map) = out.get_mut(2 * co * map..2 * (co + 1) * map) else {
            return;
        };
        let b = layer.bias()[co];
        for unit in out_map.chunks_exact_mut(2) {
            unit.copy_from_slice(&[b, 0.0]);
        }
        for (&tap, w) in taps[start..end]
            .iter()
            .zip(values[start * words..].chunks_exact(words))
        {
            let (ci, ky, kx) = unpack_tap(tap);
            let base = ci * plane;
            for_each_row(&g, ky, kx, |o, i, len| {
                for k in 0..len {
                    let at = 2 * (base + i + k * g.stride);
                    let (Some(&[m, v]), Some([mean, var])) = (
                        x.get(at..at + 2),
                        out_map.get_mut(2 * (o + k)..2 * (o + k) + 2),
                    ) else {
                        continue;
                    };
                    let (dm, dv) = super::moments::weight_terms(w, m, v);
                    *mean += dm;
                    *var += dv;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parts, rows_fit, valid_range};
    use crate::format::{unpack_tap, Activation};
    use crate::input::{ByteTable, NormalizedU8};
    use crate::writer::{LayerOp, LayerSpec, ModelSpec, StorageChoice};
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro128PlusPlus;
    use std::vec::Vec;

    fn uniform(rng: &mut Xoshiro128PlusPlus) -> f32 {
        (rng.next_u32() >> 8) as f32 / 16_777_216.0
    }

    /// The output-stationary row path (unpadded, outputs 7 wide) gives, for f32 and byte
    /// inputs, the bits of the definition: per output, the bias (or 0 for the variance), then
    /// each tap's term in stored order; the moments' standard deviation its square root.
    #[test]
    fn row_path_gives_the_stored_order_sums() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(21);
        // The ResNet's stem (4x4 stride 4 on 28x28) and a 3x3 stride-2 case (15 wide).
        for (shape, kernel, stride) in [([1, 28, 28], 4, 4), ([2, 15, 15], 3, 2)] {
            let out_channels = 5;
            let n = out_channels * shape[0] * kernel * kernel;
            let theta: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.next_u32() % 2 == 0 {
                        uniform(&mut rng) - 0.5
                    } else {
                        0.0
                    }
                })
                .collect();
            let variance = theta
                .iter()
                .map(|&t| {
                    if t != 0.0 {
                        uniform(&mut rng) * 0.1
                    } else {
                        0.0
                    }
                })
                .collect();
            let side = (shape[1] - kernel) / stride + 1;
            let conv = LayerSpec {
                op: LayerOp::Conv2d {
                    out_channels,
                    kernel: [kernel, kernel],
                    stride,
                    padding: 0,
                },
                inputs: shape.iter().product(),
                outputs: out_channels * side * side,
                activation: Activation::Relu,
                bias: (0..out_channels).map(|_| uniform(&mut rng) - 0.5).collect(),
                theta,
                variance: Some(variance),
                storage: StorageChoice::Sparse,
                dropout: None,
            };
            let outputs = out_channels * side * side;
            let head = LayerSpec {
                op: LayerOp::Linear,
                inputs: outputs,
                outputs: 2,
                activation: Activation::Identity,
                bias: std::vec![0.0; 2],
                theta: std::vec![0.5; 2 * outputs],
                variance: Some(std::vec![0.1; 2 * outputs]),
                storage: StorageChoice::Smallest,
                dropout: None,
            };
            let spec = ModelSpec {
                input_shape: shape,
                num_classes: 2,
                input_scale: 1.0 / 255.0,
                input_offset: 0.0,
                layers: std::vec![conv, head],
                trained: None,
                channel_norm: None,
            };
            let buffer = spec.to_buffer().unwrap();
            let model = buffer.model().unwrap();
            let layer = &model.layers()[0];
            let (g, row_ptr, taps, values) = parts(layer).unwrap();
            assert!(rows_fit(&g));
            let size: usize = shape.iter().product();
            let bytes: Vec<u8> = (0..size).map(|_| rng.next_u32() as u8).collect();
            let table = ByteTable::new(1.0 / 255.0, 0.0);
            let input = NormalizedU8::new(&bytes, &table);
            let floats: Vec<f32> = (0..size).map(|_| uniform(&mut rng) * 2.0 - 1.0).collect();
            let value = |from_bytes: bool, i: usize| {
                if from_bytes {
                    crate::input::Input::value(&input, i)
                } else {
                    floats[i]
                }
            };
            for from_bytes in [true, false] {
                let mut out = std::vec![0.0f32; outputs];
                let (mut mean, mut std_dev) =
                    (std::vec![0.0f32; outputs], std::vec![0.0f32; outputs]);
                if from_bytes {
                    super::forward_mean(layer, &input, &mut out);
                    super::forward_moments(layer, &input, &mut mean, &mut std_dev);
                } else {
                    super::forward_mean(layer, &floats[..], &mut out);
                    super::forward_moments(layer, &floats[..], &mut mean, &mut std_dev);
                }
                for co in 0..out_channels {
                    for o in 0..side * side {
                        let (oy, ox) = (o / side, o % side);
                        let (mut m, mut v) = (layer.bias()[co], 0.0f32);
                        let span = row_ptr[co] as usize..row_ptr[co + 1] as usize;
                        for k in span {
                            let (ci, ky, kx) = unpack_tap(taps[k]);
                            let i =
                                (ci * shape[1] + oy * stride + ky) * shape[2] + ox * stride + kx;
                            let xv = value(from_bytes, i);
                            m += xv * values[2 * k];
                            v += xv * xv * values[2 * k + 1];
                        }
                        let j = co * side * side + o;
                        let a = super::activate(Activation::Relu, m);
                        assert_eq!(out[j].to_bits(), a.to_bits(), "{shape:?} {j}");
                        assert_eq!(mean[j].to_bits(), m.to_bits(), "{shape:?} {j}");
                        assert_eq!(std_dev[j].to_bits(), v.sqrt().to_bits(), "{shape:?} {j}");
                    }
                }
            }
        }
    }

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
