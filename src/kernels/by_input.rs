//! Kernels of linear layers stored by input (compressed sparse columns). Each input's
//! surviving outgoing weights are applied in one go, so an input that is zero (a blank pixel)
//! costs one test, not one per weight. Every output still sums its bias first, then its
//! inputs in ascending order: the same order, hence the same bits, as row-major storage.

use crate::arch::{self, Lines};
use crate::format::Posterior;
use crate::input::Input;
use crate::model::{Layer, Weights};
use rand_xoshiro::Xoshiro128PlusPlus;

use super::activate;

/// The layer's column pointers, row indices and weight records (`None` if stored otherwise).
fn columns<'a>(layer: &Layer<'a>) -> Option<(&'a [u32], &'a [u16], &'a [f32])> {
    match layer.weights() {
        Weights::SparseByInput {
            col_ptr,
            rows,
            values,
        } => Some((col_ptr, rows, values)),
        _ => None,
    }
}

/// Calls `f(xv, start, end)` for every input that is not known to be zero, with its value and
/// the span of its stored column in the layer's arrays.
#[inline(always)]
fn for_each_input<X: Input + ?Sized>(
    layer: &Layer<'_>,
    x: &X,
    mut f: impl FnMut(f32, usize, usize),
) {
    let Some((col_ptr, _, _)) = columns(layer) else {
        return;
    };
    let mut visit = |i: usize, start: usize, end: usize| f(x.value(i), start, end);
    if let Some(raw) = x.zero_skippable_bytes() {
        // Walk the bytes four at a time with the column pointers: four blank pixels (most of an
        // image) cost one word load and one test.
        let mut start = 0usize;
        let mut i = 0usize;
        for (bytes, ends) in raw.chunks_exact(4).zip(col_ptr[1..].chunks_exact(4)) {
            let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if word == 0 {
                start = ends[3] as usize;
                i += 4;
                continue;
            }
            for (&byte, &end) in bytes.iter().zip(ends) {
                let end = end as usize;
                if byte != 0 && start != end {
                    visit(i, start, end);
                }
                start = end;
                i += 1;
            }
        }
        let tail = raw.len() / 4 * 4;
        for (&byte, &end) in raw[tail..].iter().zip(&col_ptr[tail + 1..]) {
            let end = end as usize;
            if byte != 0 && start != end {
                visit(i, start, end);
            }
            start = end;
            i += 1;
        }
        return;
    }
    for (i, bounds) in col_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        if start == end || x.is_zero(i) {
            continue;
        }
        visit(i, start, end);
    }
}

/// Mean weights, one input: `out[j] = act(bias_j + Σ_i θ_ji x_i)`.
pub(super) fn forward_mean<X: Input + ?Sized>(layer: &Layer<'_>, x: &X, out: &mut [f32]) {
    let out = &mut out[..layer.outputs()];
    out.copy_from_slice(layer.bias());
    match layer.posterior() {
        Posterior::Deterministic | Posterior::Bernoulli => {
            if let Some(columns) = Lines::<1>::of(layer) {
                for_each_input(layer, x, |xv, start, end| {
                    arch::scatter_span(columns, start..end, xv, out)
                });
            }
        }
        Posterior::Gaussian => {
            if let Some(columns) = Lines::<2>::of(layer) {
                for_each_input(layer, x, |xv, start, end| {
                    arch::scatter_span(columns, start..end, xv, out)
                });
            }
        }
    }
    for o in out.iter_mut() {
        *o = activate(layer.activation(), *o);
    }
}

/// Pre-activation mean and standard deviation of every output for a fixed input.
pub(super) fn forward_moments<X: Input + ?Sized>(
    layer: &Layer<'_>,
    x: &X,
    mean: &mut [f32],
    std: &mut [f32],
) {
    let (mean, var) = (&mut mean[..layer.outputs()], &mut std[..layer.outputs()]);
    mean.copy_from_slice(layer.bias());
    var.fill(0.0);
    match layer.posterior() {
        Posterior::Deterministic => {
            if let Some(columns) = Lines::<1>::of(layer) {
                for_each_input(layer, x, |xv, start, end| {
                    arch::scatter_span(columns, start..end, xv, mean)
                });
            }
        }
        Posterior::Bernoulli => {
            // Each input kept with probability q: mean b + q Σ θ x, variance
            // q (1 - q) Σ θ² x² (as the row form, `linear::dot_dropout_moments`).
            let q = layer.keep_probability();
            if let (Some(columns), Some((_, rows, values))) =
                (Lines::<1>::of(layer), columns(layer))
            {
                for_each_input(layer, x, |xv, start, end| {
                    arch::scatter_span(columns, start..end, q * xv, mean);
                    for (&r, &w) in rows[start..end].iter().zip(&values[start..end]) {
                        let t = xv * w;
                        if let Some(v) = var.get_mut(r as usize) {
                            *v += t * t;
                        }
                    }
                });
                for v in var.iter_mut() {
                    *v *= q * (1.0 - q);
                }
            }
        }
        Posterior::Gaussian => {
            if let Some(columns) = Lines::<2>::of(layer) {
                for_each_input(layer, x, |xv, start, end| {
                    arch::scatter_moments_span(columns, start..end, xv, (mean, var))
                });
            }
        }
    }
    arch::sqrt_in_place(var);
}

/// A chunk of `s = rngs.len()` samples, unit-major. Pre-activations accumulate in `out`,
/// variances in `scratch` (`outputs * s` words); then the noise is drawn sample by sample.
pub(super) fn forward_samples(
    layer: &Layer<'_>,
    x: &[f32],
    rngs: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let Some((col_ptr, rows, values)) = columns(layer) else {
        return;
    };
    let s = rngs.len();
    let outputs = layer.outputs();
    let gaussian = layer.posterior() == Posterior::Gaussian;
    let words = layer.posterior().words_per_weight();
    let mean = &mut out[..outputs * s];
    // Only a Gaussian layer has (and is given scratch for) variances.
    let var: &mut [f32] = if gaussian {
        &mut scratch[..outputs * s]
    } else {
        &mut []
    };
    for (unit, &b) in mean.chunks_exact_mut(s).zip(layer.bias()) {
        unit.fill(b);
    }
    var.fill(0.0);
    for (i, bounds) in col_ptr.windows(2).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let xs = &x[i * s..(i + 1) * s];
        if !gaussian {
            // Deterministic weights (a Bernoulli layer's masked inputs): sample by sample,
            // so an input a sample dropped, or a zero one (a blank pixel), costs one test.
            // Every output still adds its inputs in ascending order.
            let column = rows[start..end].iter().zip(&values[start..end]);
            for (m, &xv) in xs.iter().enumerate() {
                if xv == 0.0 {
                    continue;
                }
                for (&r, &w) in column.clone() {
                    if let Some(o) = mean.get_mut(r as usize * s + m) {
                        *o += xv * w;
                    }
                }
            }
            continue;
        }
        for (&r, w) in rows[start..end]
            .iter()
            .zip(values[start * words..].chunks_exact(words))
        {
            let r = r as usize;
            for (m, &xv) in mean[r * s..(r + 1) * s].iter_mut().zip(xs) {
                *m += xv * w[0];
            }
            if gaussian {
                for (v, &xv) in var[r * s..(r + 1) * s].iter_mut().zip(xs) {
                    *v += xv * xv * w[1];
                }
            }
        }
    }
    super::finish_chunk(layer, mean, var, rngs);
}

/// Moment propagation from input means and variances (`x[2 i]`, `x[2 i + 1]`) to output
/// pre-activation moments (`out[2 j]`, `out[2 j + 1]`), as the row-major form
/// (`linear::propagate`) computes them (a Bernoulli layer's mask included); inputs with mean
/// and variance 0 are skipped.
pub(super) fn propagate(layer: &Layer<'_>, x: &[f32], out: &mut [f32]) {
    let Some((col_ptr, rows, values)) = columns(layer) else {
        return;
    };
    let words = layer.posterior().words_per_weight();
    let out = &mut out[..2 * layer.outputs()];
    for (unit, &b) in out.chunks_exact_mut(2).zip(layer.bias()) {
        unit.copy_from_slice(&[b, 0.0]);
    }
    let drop = layer.drop_probability().is_some();
    let q = layer.keep_probability();
    for ((bounds, &m), &v) in col_ptr
        .windows(2)
        .zip(x.iter().step_by(2))
        .zip(x.iter().skip(1).step_by(2))
    {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        if m == 0.0 && v == 0.0 {
            continue;
        }
        // A Bernoulli layer's mask, once per input ([`super::moments::dropout`]).
        let (m, v) = if drop {
            super::moments::dropout(q, m, v)
        } else {
            (m, v)
        };
        for (&r, w) in rows[start..end]
            .iter()
            .zip(values[start * words..].chunks_exact(words))
        {
            let (dm, dv) = super::moments::weight_terms(w, m, v);
            if let Some([mean, var]) = out.get_mut(2 * r as usize..2 * r as usize + 2) {
                *mean += dm;
                *var += dv;
            }
        }
    }
}
