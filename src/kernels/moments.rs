//! Moment propagation (f32): one deterministic pass that carries the mean and variance of
//! every unit instead of samples ([`crate::Mode::Moments`]; Gast and Roth 2018, Brach et al.
//! 2020; GUIDE sections 2 and 8).
//!
//! Layout: unit `j` of a layer holds its mean at `x[2 j]` and its variance at `x[2 j + 1]`,
//! the unit-major layout of a two-sample chunk, so the plan's activation buffers hold a layer's
//! moments whenever its chunk is at least 2.
//!
//! Approximations (each the standard one):
//! - units are independent of each other (so variances add across a sum);
//! - an MC dropout (Bernoulli) layer's mask multiplies each input by an independent 0/1
//!   factor of mean `q`: the input's moments become `(q m, q (v + m²) - q² m²)` ([`dropout`]);
//! - a weight layer's pre-activations are Gaussian (exact for the first Gaussian layer given
//!   the input, a central-limit approximation after it); with Gaussian weights and independent
//!   inputs, `m' = b + Σ θ m` and `v' = Σ θ² v + σ² (m² + v)`;
//! - ReLU of a Gaussian in closed form: with `s = sqrt(v)` and `a = m / s`,
//!   `m' = m Φ(a) + s φ(a)` and `E[relu²] = (m² + v) Φ(a) + m s φ(a)`;
//! - max pooling by Clark's (1961) moments of the maximum of two Gaussians, applied pairwise
//!   over the window in scan order, each intermediate maximum taken as Gaussian (uncorrelated
//!   inputs);
//! - a residual addition adds means and variances (the block's input and its branch taken as
//!   uncorrelated), then applies its ReLU;
//! - global average pooling: `m = mean(m_p)`, `v = Σ v_p / area²`;
//! - the expected softmax of the Gaussian logits: the probit (MacKay) approximation
//!   `softmax(m / sqrt(1 + π v / 8))`, or draws of the logits alone
//!   ([`crate::Mode::MomentsThenSample`]).

use crate::format::Activation;
use crate::model::{Geometry, Layer, Operation};

/// `1 / sqrt(2 π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Standard deviations beyond which a ReLU unit is taken as surely off (below) or surely on
/// (above): `Φ(-9) = 1.1e-19` (the sampling kernels skip the same units), and `Φ(-5.5) =
/// 1.9e-8` is below an f32's resolution of 1.
const OFF_SIGMAS: f32 = -9.0;
const ON_SIGMAS: f32 = 5.5;

/// What one stored weight record `w` (`[θ]` of a deterministic layer, `[θ, σ²]` of a
/// Gaussian one) adds to the mean and to the variance of its output, given its input's mean
/// `m` and variance `v`. The record's length picks the form (a constant where the caller
/// walks records of a fixed width, so the match folds away).
#[inline(always)]
pub(super) fn weight_terms(w: &[f32], m: f32, v: f32) -> (f32, f32) {
    match *w {
        // θ² v + σ² (m² + v) as (θ² + σ²) v + (σ² m) m: four multiply-adds, no copy.
        [theta, sigma2, ..] => {
            let spread = sigma2 * m;
            (theta * m, (sigma2 + theta * theta) * v + spread * m)
        }
        [theta] => (theta * m, theta * theta * v),
        [] => (0.0, 0.0),
    }
}

/// The moments of a unit of mean `m` and variance `v` after an MC dropout mask: kept with
/// probability `q` (a 0/1 factor independent of the unit), the product has mean `q m` and
/// variance `E[mask² x²] - (q m)² = q (v + m²) - q² m²`. A Bernoulli layer stores its weights
/// divided by `q`, so with `θ = q θ_stored` its pre-activation has mean `Σ θ m` and variance
/// `Σ θ² ((v + m²) / q - m²)` (GUIDE section 8).
#[inline(always)]
pub(super) fn dropout(q: f32, m: f32, v: f32) -> (f32, f32) {
    let mean = q * m;
    (mean, q * (v + m * m) - mean * mean)
}

/// The standard normal CDF `Φ(a)` and density `φ(a)` from one exponential, `e^(-a²/2)`:
/// the upper tail `Φ(-|a|) = ½ erfc(|a| / √2)` by Abramowitz and Stegun 7.1.26
/// (`erfc(x) ≈ t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-x²)`, `t = 1 / (1 + p x)`, absolute
/// error below 1.5e-7; below 3e-7 for `Φ` evaluated in f32, tested), which shares the
/// density's exponential. About a third of
/// `libm::erfcf` plus `libm::expf` on a Cortex-M4F.
#[inline]
fn normal_cdf_pdf(a: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let e = crate::exp::exp_nonpositive(-0.5 * a * a);
    let x = a.abs() * core::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * x);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let tail = 0.5 * poly * e;
    let cdf = if a <= 0.0 { tail } else { 1.0 - tail };
    (cdf, INV_SQRT_2PI * e)
}

/// `max(x, 0)` (a variance that rounding left below 0, a ReLU of a certain value) by a
/// compare: `f32::max` is a libm call on Cortex-M (1,600 instructions per LeNet-300-100
/// pass).
#[inline(always)]
fn positive(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Mean and variance of `max(0, z)` for `z ~ N(m, v)`.
pub(crate) fn relu(m: f32, v: f32) -> (f32, f32) {
    if v <= 0.0 || !v.is_finite() {
        return (positive(m), 0.0);
    }
    let s = crate::arch::sqrtf(v);
    let a = m / s;
    if a <= OFF_SIGMAS {
        return (0.0, 0.0);
    }
    if a >= ON_SIGMAS {
        return (m, v);
    }
    let (cdf, pdf) = normal_cdf_pdf(a);
    let mean = m * cdf + s * pdf;
    let second = (m * m + v) * cdf + m * s * pdf;
    (mean, positive(second - mean * mean))
}

/// Clark's moments of `max(X1, X2)` for independent Gaussians `X1 ~ N(a[0], a[1])` and
/// `X2 ~ N(b[0], b[1])`; a mean of `-inf` stands for "no value yet".
pub(crate) fn max_of(a: [f32; 2], b: [f32; 2]) -> [f32; 2] {
    if a[0] == f32::NEG_INFINITY {
        return b;
    }
    if b[0] == f32::NEG_INFINITY {
        return a;
    }
    let theta2 = a[1] + b[1];
    if theta2 <= 0.0 {
        return if a[0] >= b[0] { a } else { b };
    }
    let theta = crate::arch::sqrtf(theta2);
    let alpha = (a[0] - b[0]) / theta;
    // Far apart, the larger one is the maximum (to f32 precision).
    if alpha >= ON_SIGMAS {
        return a;
    }
    if alpha <= -ON_SIGMAS {
        return b;
    }
    let (cdf, pdf) = normal_cdf_pdf(alpha);
    let other = 1.0 - cdf;
    let mean = a[0] * cdf + b[0] * other + theta * pdf;
    let second =
        (a[0] * a[0] + a[1]) * cdf + (b[0] * b[0] + b[1]) * other + (a[0] + b[0]) * theta * pdf;
    [mean, positive(second - mean * mean)]
}

/// Applies `activation` in closed form to every `[mean, variance]` pair of `x`.
pub(crate) fn activate(activation: Activation, x: &mut [f32]) {
    if activation == Activation::Relu {
        for unit in x.chunks_exact_mut(2) {
            let (m, v) = relu(unit[0], unit[1]);
            unit[0] = m;
            unit[1] = v;
        }
    }
}

/// One layer's output moments from its input moments: a weight layer (linear, convolution, an
/// exit head's linear part on the pooled map) with its activation, max pooling or global
/// average pooling.
/// `out` holds `2 * layer.outputs()` values.
pub(crate) fn propagate(layer: &Layer<'_>, x: &[f32], out: &mut [f32]) {
    match layer.operation() {
        Operation::Linear | Operation::ExitHead { .. } => super::linear::propagate(layer, x, out),
        Operation::Conv2d(_) => super::conv::propagate(layer, x, out),
        Operation::MaxPool(g) => return max_pool(&g, x, out),
        // The exit heads' pool of moments, on its own (no activation).
        Operation::GlobalAvgPool { map } => return global_average_pool(map, x, out),
        // Residual additions read two buffers: the runner calls `residual_add`.
        Operation::ResidualAdd { .. } => return,
    }
    let n = (2 * layer.outputs()).min(out.len());
    activate(layer.activation(), &mut out[..n]);
}

/// Max pooling of moment pairs, window by window (see [`max_of`]).
fn max_pool(g: &Geometry, x: &[f32], out: &mut [f32]) {
    let whole = out.len() / 2 * 2;
    let pairs: &mut [[f32; 2]] = bytemuck::cast_slice_mut(&mut out[..whole]);
    let lowest = [f32::NEG_INFINITY, 0.0];
    let value = |i: usize| match x.get(2 * i..2 * i + 2) {
        Some(&[m, v]) => [m, v],
        _ => lowest,
    };
    super::max_pool_by(g, 1, lowest, max_of, value, pairs);
}

/// A residual addition on moments: `x = act(x + skip)`, means and variances added.
pub(crate) fn residual_add(activation: Activation, x: &mut [f32], skip: &[f32]) {
    for (v, &k) in x.iter_mut().zip(skip) {
        *v += k;
    }
    let n = skip.len().min(x.len());
    activate(activation, &mut x[..n]);
}

/// Global average pooling of a (channels, height, width) map of moments: per channel the mean
/// of the means and the sum of the variances over `area²`.
pub(crate) fn global_average_pool(map: [usize; 3], x: &[f32], out: &mut [f32]) {
    let area = map[1] * map[2];
    if area == 0 {
        return;
    }
    let inv = 1.0 / area as f32;
    for (c, pooled) in out.chunks_exact_mut(2).take(map[0]).enumerate() {
        let (mut m, mut v) = (0.0f32, 0.0f32);
        for unit in x
            .get(2 * c * area..)
            .unwrap_or(&[])
            .chunks_exact(2)
            .take(area)
        {
            m += unit[0];
            v += unit[1];
        }
        pooled[0] = m * inv;
        pooled[1] = v * inv * inv;
    }
}

/// The first Gaussian layer's output moments from its pre-activation mean and standard
/// deviation (computed once from the deterministic input), with its activation applied.
pub(crate) fn from_first(activation: Activation, mean: &[f32], std: &[f32], out: &mut [f32]) {
    for ((unit, &m), &s) in out.chunks_exact_mut(2).zip(mean).zip(std) {
        unit[0] = m;
        unit[1] = s * s;
    }
    let n = (2 * mean.len()).min(out.len());
    activate(activation, &mut out[..n]);
}

/// The probit (MacKay) approximation's logits: `m / sqrt(1 + π v / 8)` for each
/// `[mean, variance]` pair of `x`, whose softmax approximates the expected softmax.
pub(crate) fn probit_logits(x: &[f32], out: &mut [f32]) {
    const PI_OVER_8: f32 = core::f32::consts::PI / 8.0;
    for (o, unit) in out.iter_mut().zip(x.chunks_exact(2)) {
        *o = unit[0] / crate::arch::sqrtf(1.0 + PI_OVER_8 * positive(unit[1]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normal::standard_normal;
    use crate::writer::synthetic::mlp;
    use crate::writer::{LayerSpec, StorageChoice};
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro128PlusPlus;
    use std::vec;
    use std::vec::Vec;

    /// Sample mean and variance (f64) of `n` draws of `f`.
    fn sample_moments(n: usize, mut f: impl FnMut() -> f64) -> (f64, f64) {
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let v = f();
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        (mean, s2 / n as f64 - mean * mean)
    }

    /// `E[g(z)]` for `z ~ N(m, v)` by the midpoint rule over ±12 standard deviations (f64).
    fn gaussian_expectation(m: f64, v: f64, g: impl Fn(f64) -> f64) -> f64 {
        let s = v.sqrt();
        let n = 200_000;
        let h = 24.0 / n as f64;
        (0..n)
            .map(|k| {
                let t = -12.0 + (k as f64 + 0.5) * h;
                let density = (-0.5 * t * t).exp() / (2.0 * core::f64::consts::PI).sqrt();
                g(m + s * t) * density * h
            })
            .sum()
    }

    #[test]
    fn normal_cdf_and_density_are_within_their_error_bound() {
        let mut a = -9.0f32;
        while a <= 9.0 {
            let (cdf, pdf) = normal_cdf_pdf(a);
            let x = a as f64;
            let cdf_ref = 0.5 * libm::erfc(-x / core::f64::consts::SQRT_2);
            let pdf_ref = (-0.5 * x * x).exp() / (2.0 * core::f64::consts::PI).sqrt();
            assert!(
                (cdf as f64 - cdf_ref).abs() < 3e-7,
                "Φ({a}) = {cdf} vs {cdf_ref}"
            );
            assert!(
                (pdf as f64 - pdf_ref).abs() < 1e-6 * pdf_ref + 1e-12,
                "φ({a}) = {pdf} vs {pdf_ref}"
            );
            a += 0.01;
        }
    }

    #[test]
    fn relu_moments_match_numerical_integration() {
        for &(m, v) in &[
            (0.0f32, 1.0f32),
            (1.3, 0.2),
            (-0.7, 2.5),
            (-3.0, 0.5),
            (4.0, 0.01),
            (-8.0, 1.0),
            (0.05, 1e-4),
        ] {
            let (mean, var) = relu(m, v);
            let e1 = gaussian_expectation(m as f64, v as f64, |z| z.max(0.0));
            let e2 = gaussian_expectation(m as f64, v as f64, |z| z.max(0.0).powi(2));
            let var_ref = e2 - e1 * e1;
            let scale = (v as f64).sqrt().max(m.abs() as f64);
            assert!(
                (mean as f64 - e1).abs() <= 2e-6 * scale.max(1.0),
                "mean at ({m}, {v}): {mean} vs {e1}"
            );
            assert!(
                (var as f64 - var_ref).abs() <= 1e-5 * (v as f64).max(1e-6) + 1e-9,
                "variance at ({m}, {v}): {var} vs {var_ref}"
            );
        }
        // A certain input passes through the ReLU unchanged.
        assert_eq!(relu(2.0, 0.0), (2.0, 0.0));
        assert_eq!(relu(-2.0, 0.0), (0.0, 0.0));
    }

    #[test]
    fn clark_max_matches_monte_carlo_for_independent_gaussians() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(5);
        let n = 400_000;
        for &(a, b) in &[
            ([0.0f32, 1.0f32], [0.0f32, 1.0f32]),
            ([1.0, 0.5], [-0.5, 2.0]),
            ([3.0, 0.1], [2.8, 0.3]),
            ([-1.0, 4.0], [2.0, 0.01]),
        ] {
            let [mean, var] = max_of(a, b);
            let (m_ref, v_ref) = sample_moments(n, || {
                let x1 = a[0] as f64 + (a[1] as f64).sqrt() * standard_normal(&mut rng) as f64;
                let x2 = b[0] as f64 + (b[1] as f64).sqrt() * standard_normal(&mut rng) as f64;
                x1.max(x2)
            });
            let sd = v_ref.sqrt();
            // Five standard errors of the mean and of the variance.
            assert!(
                (mean as f64 - m_ref).abs() < 5.0 * sd / (n as f64).sqrt(),
                "{a:?} {b:?}: mean {mean} vs {m_ref}"
            );
            assert!(
                (var as f64 - v_ref).abs() < 5.0 * v_ref * (2.0 / n as f64).sqrt() * 2.0,
                "{a:?} {b:?}: variance {var} vs {v_ref}"
            );
        }
        // The order of the arguments does not matter, and a missing value is no value.
        let (ab, ba) = (
            max_of([1.0, 0.5], [-0.5, 2.0]),
            max_of([-0.5, 2.0], [1.0, 0.5]),
        );
        assert!((ab[0] - ba[0]).abs() < 1e-6 && (ab[1] - ba[1]).abs() < 1e-6);
        assert_eq!(max_of([f32::NEG_INFINITY, 0.0], [1.0, 2.0]), [1.0, 2.0]);
    }

    /// A linear layer on independent Gaussian inputs: the propagated pre-activation mean and
    /// variance are exact, so they must match a Monte Carlo estimate that samples the inputs
    /// and every weight, in every storage form.
    #[test]
    fn linear_moments_match_monte_carlo_over_inputs_and_weights() {
        let spec = mlp(3, &[12, 5, 2], 0.6);
        let l: &LayerSpec = &spec.layers[0];
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(9);
        let x: Vec<f32> = (0..12)
            .flat_map(|i| {
                let m = 0.3 * standard_normal(&mut rng) + 0.2;
                let v = 0.05 * (1 + i % 3) as f32;
                [m, v]
            })
            .collect();
        let n = 200_000;
        for storage in [
            StorageChoice::Dense,
            StorageChoice::Sparse,
            StorageChoice::SparseByInput,
        ] {
            let mut spec = spec.clone();
            spec.layers[0].storage = storage;
            // The pre-activation itself (the ReLU is checked on its own).
            spec.layers[0].activation = Activation::Identity;
            let buffer = spec.to_buffer().unwrap();
            let model = crate::Model::from_bytes(buffer.as_bytes()).unwrap();
            let mut out = vec![0.0f32; 2 * 5];
            propagate(&model.layers()[0], &x, &mut out);
            for j in 0..5 {
                let row = &l.theta[j * 12..(j + 1) * 12];
                let var_row = &l.variance.as_ref().unwrap()[j * 12..(j + 1) * 12];
                let (m_ref, v_ref) = sample_moments(n, || {
                    let mut y = l.bias[j] as f64;
                    for i in 0..12 {
                        if row[i] == 0.0 {
                            continue;
                        }
                        let xi = x[2 * i] as f64
                            + (x[2 * i + 1] as f64).sqrt() * standard_normal(&mut rng) as f64;
                        let w = row[i] as f64
                            + (var_row[i] as f64).sqrt() * standard_normal(&mut rng) as f64;
                        y += w * xi;
                    }
                    y
                });
                let sd = v_ref.sqrt();
                assert!(
                    (out[2 * j] as f64 - m_ref).abs() < 5.0 * sd / (n as f64).sqrt() + 1e-6,
                    "{storage:?} unit {j}: mean {} vs {m_ref}",
                    out[2 * j]
                );
                assert!(
                    (out[2 * j + 1] as f64 - v_ref).abs() < 0.03 * v_ref + 1e-7,
                    "{storage:?} unit {j}: variance {} vs {v_ref}",
                    out[2 * j + 1]
                );
            }
        }
    }

    /// A Bernoulli (MC dropout) linear layer on independent Gaussian inputs: each input kept
    /// with probability q, the stored weights already divided by q. The propagated mean
    /// `Σ θ m` and variance `Σ θ² ((v + m²)/q − m²)` (θ = q θ_stored) are exact, so they must
    /// match a Monte Carlo estimate that samples the inputs and the masks, in every storage
    /// form; and for a certain input (v = 0) the first layer's moments must match too.
    #[test]
    fn dropout_moments_match_monte_carlo_over_inputs_and_masks() {
        let base = mlp(4, &[10, 4, 2], 0.8);
        let q = 0.65f32;
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(21);
        let x: Vec<f32> = (0..10)
            .flat_map(|i| {
                let m = 0.4 * standard_normal(&mut rng) + 0.3;
                [m, 0.04 * (i % 4) as f32]
            })
            .collect();
        let certain: Vec<f32> = x.iter().step_by(2).copied().collect();
        let n = 400_000;
        for storage in [
            StorageChoice::Dense,
            StorageChoice::Sparse,
            StorageChoice::SparseByInput,
        ] {
            let mut spec = base.clone();
            let l = &mut spec.layers[0];
            l.storage = storage;
            l.activation = Activation::Identity;
            l.variance = None;
            l.dropout = Some(1.0 - q);
            spec.layers[1].variance = None;
            let l = spec.layers[0].clone();
            let buffer = spec.to_buffer().unwrap();
            let model = crate::Model::from_bytes(buffer.as_bytes()).unwrap();
            let layer = &model.layers()[0];
            let mut out = vec![0.0f32; 2 * 4];
            propagate(layer, &x, &mut out);
            let (mut mean0, mut std0) = (vec![0.0f32; 4], vec![0.0f32; 4]);
            crate::kernels::forward_moments(layer, &certain[..], &mut mean0, &mut std0);
            for j in 0..4 {
                let row = &l.theta[j * 10..(j + 1) * 10];
                let mut sample = |v_scale: f64| {
                    sample_moments(n, || {
                        let mut y = l.bias[j] as f64;
                        for i in 0..10 {
                            let kept = (rng.next_u32() as f64) < q as f64 * 4_294_967_296.0;
                            let xi = x[2 * i] as f64
                                + v_scale
                                    * (x[2 * i + 1] as f64).sqrt()
                                    * standard_normal(&mut rng) as f64;
                            if kept {
                                y += row[i] as f64 * xi;
                            }
                        }
                        y
                    })
                };
                for (v_scale, (m, v)) in [
                    (1.0, (out[2 * j], out[2 * j + 1])),
                    (0.0, (mean0[j], std0[j] * std0[j])),
                ] {
                    let (m_ref, v_ref) = sample(v_scale);
                    let sd = v_ref.sqrt();
                    assert!(
                        (m as f64 - m_ref).abs() < 5.0 * sd / (n as f64).sqrt() + 1e-6,
                        "{storage:?} unit {j} ({v_scale}): mean {m} vs {m_ref}"
                    );
                    assert!(
                        (v as f64 - v_ref).abs() < 0.02 * v_ref + 1e-7,
                        "{storage:?} unit {j} ({v_scale}): variance {v} vs {v_ref}"
                    );
                }
            }
        }
    }

    #[test]
    fn average_pool_and_residual_addition_combine_moments_as_independent_sums() {
        // Two channels of a 2x2 map.
        let x = [
            1.0, 0.4, 3.0, 0.0, -1.0, 0.2, 1.0, 0.2, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0,
        ];
        let mut out = [0.0f32; 4];
        global_average_pool([2, 2, 2], &x, &mut out);
        assert_eq!(out, [1.0, 0.8 / 16.0, 2.0, 4.0 / 16.0]);
        let mut cur = [1.0f32, 0.5, -4.0, 0.1];
        residual_add(Activation::Identity, &mut cur, &[0.5, 0.25, 1.0, 0.0]);
        assert_eq!(cur, [1.5, 0.75, -3.0, 0.1]);
    }

    #[test]
    fn probit_logits_shrink_uncertain_logits_towards_zero() {
        let mut z = [0.0f32; 3];
        probit_logits(
            &[2.0, 0.0, 2.0, 8.0 / core::f32::consts::PI, -1.0, 1e6],
            &mut z,
        );
        assert_eq!(z[0], 2.0);
        assert!((z[1] - 2.0 / 2.0f32.sqrt()).abs() < 1e-6);
        assert!(z[2] > -0.01 && z[2] < 0.0);
    }
}
