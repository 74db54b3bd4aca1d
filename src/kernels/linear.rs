//! f32 kernels of one linear layer, in three forms:
//!
//! - [`forward_mean`]: one input vector, mean weights (the deterministic mode).
//! - [`forward_moments`]: one input vector, Gaussian weights: the mean and standard deviation
//!   of every pre-activation (local reparameterization, computed once when the input is
//!   deterministic).
//! - [`forward_samples`]: a chunk of `s` sampled input vectors laid out unit-major
//!   (`x[i * s + m]`), so each index and weight is loaded once for all `s` samples.
//!
//! All slices come from a validated [`Model`](crate::Model): indices are in range by
//! construction. Summation order is fixed (bias first, then weights in stored order) so the
//! host and the device produce the same bits.

use super::activate;
use crate::arch::{self, Line, Lines};
use crate::format::Posterior;
use crate::input::Input;
use crate::model::{Layer, Weights};
use rand_xoshiro::Xoshiro128PlusPlus;

/// The stored weights of one output unit, `W` words per weight.
#[derive(Clone, Copy)]
enum Row<'a, const W: usize> {
    Dense(&'a [f32]),
    Sparse(Line<'a, W>),
}

/// Calls `f(j, row)` for every output unit `j` in order (`W` must be the layer's record
/// width: `Posterior::words_per_weight`).
#[inline(always)]
fn for_each_row<'a, const W: usize>(layer: &Layer<'a>, mut f: impl FnMut(usize, Row<'a, W>)) {
    match layer.weights() {
        Weights::Dense { values } => {
            for (j, row) in values.chunks_exact(layer.inputs() * W).enumerate() {
                f(j, Row::Dense(row));
            }
        }
        Weights::Sparse {
            row_ptr,
            cols,
            values,
        } => {
            for (j, bounds) in row_ptr.windows(2).enumerate() {
                let (start, end) = (bounds[0] as usize, bounds[1] as usize);
                let line = Line::from_validated(
                    &cols[start..end],
                    &values[start * W..end * W],
                    layer.inputs(),
                );
                if let Some(line) = line {
                    f(j, Row::Sparse(line));
                }
            }
        }
        // Not row-major: the by-input kernels handle those, the dispatcher the rest.
        Weights::SparseByInput { .. } | Weights::Conv { .. } | Weights::None => {}
    }
}

/// `bias + sum_i theta_i x_i` over one row; `W` words per stored weight, theta first.
#[inline(always)]
fn dot_theta<X: Input + ?Sized, const W: usize>(row: Row<'_, W>, x: &X, bias: f32) -> f32 {
    let mut acc = bias;
    match row {
        Row::Dense(values) => {
            for (i, w) in values.chunks_exact(W).enumerate() {
                acc += x.value(i) * w[0];
            }
        }
        Row::Sparse(line) => {
            if let Some(xs) = x.as_slice() {
                return arch::dot(line, xs, bias);
            }
            for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(W)) {
                acc += x.value(c as usize) * w[0];
            }
        }
    }
    acc
}

/// Mean and variance of one Gaussian row's pre-activation given a fixed input.
#[inline(always)]
fn dot_moments<X: Input + ?Sized>(row: Row<'_, 2>, x: &X, bias: f32) -> (f32, f32) {
    let (mut mean, mut var) = (bias, 0.0f32);
    let mut add = |xv: f32, w: &[f32]| {
        mean += xv * w[0];
        var += xv * xv * w[1];
    };
    match row {
        Row::Dense(values) => {
            for (i, w) in values.chunks_exact(2).enumerate() {
                add(x.value(i), w);
            }
        }
        Row::Sparse(line) => {
            for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(2)) {
                add(x.value(c as usize), w);
            }
        }
    }
    (mean, var)
}

/// Mean and variance of one Bernoulli (MC dropout) row's pre-activation given a fixed input:
/// each input is kept with probability `q` (a 0/1 factor of mean `q` and variance
/// `q (1 - q)`), so `mean = b + q Σ θ x` and `var = q (1 - q) Σ θ² x²`.
#[inline(always)]
fn dot_dropout_moments<X: Input + ?Sized>(row: Row<'_, 1>, x: &X, bias: f32, q: f32) -> (f32, f32) {
    let (mut sum, mut squares) = (0.0f32, 0.0f32);
    let mut add = |xv: f32, w: &[f32]| {
        let t = xv * w[0];
        sum += t;
        squares += t * t;
    };
    match row {
        Row::Dense(values) => {
            for (i, w) in values.chunks_exact(1).enumerate() {
                add(x.value(i), w);
            }
        }
        Row::Sparse(line) => {
            for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(1)) {
                add(x.value(c as usize), w);
            }
        }
    }
    (bias + q * sum, q * (1.0 - q) * squares)
}

/// Deterministic forward pass with the posterior means: `out[j] = act(bias_j + theta_j . x)`.
pub(super) fn forward_mean<X: Input + ?Sized>(layer: &Layer<'_>, x: &X, out: &mut [f32]) {
    if let Weights::SparseByInput { .. } = layer.weights() {
        return super::by_input::forward_mean(layer, x, out);
    }
    let bias = layer.bias();
    let act = layer.activation();
    let out = &mut out[..layer.outputs()];
    if let Some(xs) = x.as_slice() {
        let done = match layer.posterior() {
            Posterior::Deterministic | Posterior::Bernoulli => {
                Lines::<1>::of(layer).map(|rows| arch::dot_rows(rows, xs, bias, out))
            }
            Posterior::Gaussian => {
                Lines::<2>::of(layer).map(|rows| arch::dot_rows(rows, xs, bias, out))
            }
        };
        if done.is_some() {
            for o in out.iter_mut() {
                *o = activate(act, *o);
            }
            return;
        }
    }
    match layer.posterior() {
        Posterior::Deterministic | Posterior::Bernoulli => for_each_row::<1>(layer, |j, row| {
            out[j] = activate(act, dot_theta(row, x, bias[j]));
        }),
        Posterior::Gaussian => for_each_row::<2>(layer, |j, row| {
            out[j] = activate(act, dot_theta(row, x, bias[j]));
        }),
    }
}

/// Pre-activation moments of a layer for a fixed input: `mean[j]` and `std[j] = sqrt(var[j])`.
/// A deterministic layer gets `std = 0`.
pub(super) fn forward_moments<X: Input + ?Sized>(
    layer: &Layer<'_>,
    x: &X,
    mean: &mut [f32],
    std: &mut [f32],
) {
    if let Weights::SparseByInput { .. } = layer.weights() {
        return super::by_input::forward_moments(layer, x, mean, std);
    }
    let bias = layer.bias();
    let (mean, std) = (&mut mean[..layer.outputs()], &mut std[..layer.outputs()]);
    match layer.posterior() {
        Posterior::Deterministic => for_each_row::<1>(layer, |j, row| {
            mean[j] = dot_theta(row, x, bias[j]);
            std[j] = 0.0;
        }),
        Posterior::Bernoulli => {
            let q = layer.keep_probability();
            for_each_row::<1>(layer, |j, row| {
                let (m, v) = dot_dropout_moments(row, x, bias[j], q);
                mean[j] = m;
                std[j] = crate::arch::sqrtf(v);
            })
        }
        Posterior::Gaussian => for_each_row::<2>(layer, |j, row| {
            let (m, v) = dot_moments(row, x, bias[j]);
            mean[j] = m;
            std[j] = crate::arch::sqrtf(v);
        }),
    }
}

/// One layer for a chunk of `s = rngs.len() <= CHUNK` samples. `x[i * s + m]` is input `i` of
/// sample `m`; writes `out[j * s + m]`. Local reparameterization: per unit and sample,
/// `act(mean + sqrt(var) * eps)` with `eps` drawn from the sample's own generator `rngs[m]`.
/// A Gaussian layer first accumulates every unit's mean (into `out`) and variance (into
/// `scratch`, `outputs * s` words), then draws the noise sample by sample.
pub(super) fn forward_samples<const CHUNK: usize>(
    layer: &Layer<'_>,
    x: &[f32],
    rngs: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    if let Weights::SparseByInput { .. } = layer.weights() {
        return super::by_input::forward_samples(layer, x, rngs, out, scratch);
    }
    let s = rngs.len();
    let bias = layer.bias();
    let act = layer.activation();
    let out = &mut out[..layer.outputs() * s];
    // A Bernoulli layer's inputs arrive masked (`super::drop_inputs`): its rows are then
    // those of a deterministic layer.
    match layer.posterior() {
        Posterior::Deterministic | Posterior::Bernoulli => for_each_row::<1>(layer, |j, row| {
            let mut mean = [0.0f32; CHUNK];
            accumulate::<CHUNK, 1>(row, x, s, bias[j], &mut mean, &mut [0.0; CHUNK]);
            for (o, &m) in out[j * s..(j + 1) * s].iter_mut().zip(&mean) {
                *o = activate(act, m);
            }
        }),
        Posterior::Gaussian => {
            let (var_out, squares) = scratch.split_at_mut(layer.outputs() * s);
            let n = layer.inputs() * s;
            // The plan leaves room for the squares except for a first Gaussian layer, whose
            // moments are computed once (`forward_moments`), not per sample.
            if let (Some(rows), Some(x), Some(squares)) =
                (Lines::<2>::of(layer), x.get(..n), squares.get_mut(..n))
            {
                arch::square_into(x, squares);
                arch::accumulate_rows(rows, (x, squares), s, bias, out, var_out);
                return super::add_noise_and_activate(act, out, var_out, rngs);
            }
            for_each_row::<2>(layer, |j, row| {
                let (mean_out, var_out) = (
                    &mut out[j * s..(j + 1) * s],
                    &mut var_out[j * s..(j + 1) * s],
                );
                let mut mean = [0.0f32; CHUNK];
                let mut var = [0.0f32; CHUNK];
                accumulate::<CHUNK, 2>(row, x, s, bias[j], &mut mean, &mut var);
                store(mean_out, &mean);
                store(var_out, &var);
            });
            super::add_noise_and_activate(act, out, var_out, rngs);
        }
    }
}

/// A Bernoulli layer with dense rows for a chunk of `s = streams.len()` samples, sample by
/// sample, so that a dropped input costs nothing: sample `m` draws its mask (one `u32` per
/// input, in order, as [`super::drop_inputs`] does), lists the inputs it keeps that are not
/// zero into `kept`, then sums every row over that list only. The sums are those of the
/// masked row kernel bit for bit (bias first, kept inputs in ascending order; a dropped or
/// zero input would add a zero). `x` is unit-major, or with `shared` one value per input.
/// `kept` must hold `inputs` words.
pub(super) fn forward_dropout_dense(
    layer: &Layer<'_>,
    x: &[f32],
    shared: bool,
    streams: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
    kept: &mut [u32],
) {
    let Weights::Dense { values } = layer.weights() else {
        return;
    };
    let (inputs, outputs, s) = (layer.inputs(), layer.outputs(), streams.len());
    let threshold = layer.drop_threshold();
    let (bias, act) = (layer.bias(), layer.activation());
    let stride = if shared { 1 } else { s };
    if kept.len() < inputs || x.len() < (inputs - 1) * stride + 1 || out.len() < outputs * s {
        return;
    }
    for (m, stream) in streams.iter_mut().enumerate() {
        let offset = if shared { 0 } else { m };
        let mut count = 0;
        for i in 0..inputs {
            let keep = rand_core::RngCore::next_u32(stream) >= threshold;
            if keep && x[i * stride + offset] != 0.0 {
                kept[count] = i as u32;
                count += 1;
            }
        }
        let kept = &kept[..count];
        for (j, row) in values.chunks_exact(inputs).enumerate().take(outputs) {
            let mut acc = bias[j];
            for &i in kept {
                let i = i as usize;
                acc += x[i * stride + offset] * row[i];
            }
            out[j * s + m] = activate(act, acc);
        }
    }
}

/// Stores the first `dst.len()` sums. Each is stored as `sum + 0.0` (the same value, but for
/// the sign of a zero sum, which the activation and noise that follow make irrelevant): a plain
/// copy would be turned into a `memcpy` call per unit, which Thumb-2 code generation emits for
/// any copy above four words (measured: 24,000 instructions per M = 32 inference).
#[inline(always)]
fn store<const CHUNK: usize>(dst: &mut [f32], sums: &[f32; CHUNK]) {
    for (d, &v) in dst.iter_mut().zip(sums) {
        *d = v + 0.0;
    }
}

/// Accumulates one row for `s` samples: `mean[m] = bias + sum theta x_m` and, when `W == 2`,
/// `var[m] = sum sigma^2 x_m^2`. Each stored weight is loaded once for the whole chunk. A full
/// chunk (`s == CHUNK`) runs with a constant trip count, which the compiler unrolls.
#[inline(always)]
fn accumulate<const CHUNK: usize, const W: usize>(
    row: Row<'_, W>,
    x: &[f32],
    s: usize,
    bias: f32,
    mean: &mut [f32; CHUNK],
    var: &mut [f32; CHUNK],
) {
    if s == CHUNK {
        accumulate_n::<CHUNK, W>(row, x, CHUNK, bias, mean, var);
    } else {
        accumulate_n::<CHUNK, W>(row, x, s, bias, mean, var);
    }
}

#[inline(always)]
fn accumulate_n<const CHUNK: usize, const W: usize>(
    row: Row<'_, W>,
    x: &[f32],
    s: usize,
    bias: f32,
    mean: &mut [f32; CHUNK],
    var: &mut [f32; CHUNK],
) {
    let (mean, var) = (&mut mean[..s], &mut var[..s]);
    mean.fill(bias);
    let mut add = |i: usize, w: &[f32]| {
        let xs = &x[i * s..i * s + s];
        for ((m, v), &xv) in mean.iter_mut().zip(var.iter_mut()).zip(xs) {
            *m += xv * w[0];
            if W == 2 {
                *v += xv * xv * w[1];
            }
        }
    };
    match row {
        Row::Dense(values) => {
            for (i, w) in values.chunks_exact(W).enumerate() {
                add(i, w);
            }
        }
        Row::Sparse(line) => {
            for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(W)) {
                add(c as usize, w);
            }
        }
    }
}

/// Moment propagation ([`crate::Mode::Moments`]): given every input's mean and variance
/// (`x[2 i]`, `x[2 i + 1]`, independent inputs), the pre-activation mean and variance of every
/// output, `out[2 j]` and `out[2 j + 1]`: `m = b + Σ θ m_i` and
/// `v = Σ θ² v_i + σ² (m_i² + v_i)` (GUIDE section 2; σ² = 0 for a deterministic layer). A
/// Bernoulli layer's inputs first pass its mask ([`super::moments::dropout`]).
pub(super) fn propagate(layer: &Layer<'_>, x: &[f32], out: &mut [f32]) {
    if let Weights::SparseByInput { .. } = layer.weights() {
        return super::by_input::propagate(layer, x, out);
    }
    let bias = layer.bias();
    let out = &mut out[..2 * layer.outputs()];
    let q = layer.keep_probability();
    match layer.posterior() {
        Posterior::Deterministic => for_each_row::<1>(layer, |j, row| {
            let moments = propagate_row::<1, false>(row, x, bias[j], q);
            out[2 * j..2 * j + 2].copy_from_slice(&moments);
        }),
        Posterior::Bernoulli => for_each_row::<1>(layer, |j, row| {
            let moments = propagate_row::<1, true>(row, x, bias[j], q);
            out[2 * j..2 * j + 2].copy_from_slice(&moments);
        }),
        Posterior::Gaussian => for_each_row::<2>(layer, |j, row| {
            let moments = propagate_row::<2, false>(row, x, bias[j], q);
            out[2 * j..2 * j + 2].copy_from_slice(&moments);
        }),
    }
}

/// `[mean, variance]` of one row's pre-activation from input moments (see [`propagate`]);
/// with `DROP` (a Bernoulli layer) each input first passes the dropout mask of keep
/// probability `q` ([`super::moments::dropout`]).
#[inline(always)]
fn propagate_row<const W: usize, const DROP: bool>(
    row: Row<'_, W>,
    x: &[f32],
    bias: f32,
    q: f32,
) -> [f32; 2] {
    let pairs: &[[f32; 2]] = bytemuck::cast_slice(&x[..x.len() / 2 * 2]);
    let mut acc = [bias, 0.0];
    let mut add = |&[m, v]: &[f32; 2], w: &[f32]| {
        let (m, v) = if DROP {
            super::moments::dropout(q, m, v)
        } else {
            (m, v)
        };
        let (dm, dv) = super::moments::weight_terms(w, m, v);
        acc[0] += dm;
        acc[1] += dv;
    };
    match row {
        Row::Dense(values) => {
            for (pair, w) in pairs.iter().zip(values.chunks_exact(W)) {
                add(pair, w);
            }
        }
        Row::Sparse(line) => {
            for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(W)) {
                if let Some(pair) = pairs.get(c as usize) {
                    add(pair, w);
                }
            }
        }
    }
    acc
}
