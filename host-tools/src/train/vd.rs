//! Sparse variational dropout: `log alpha` and the KL approximation of Molchanov et al. (2017).
//!
//! For a weight with posterior `N(theta, sigma^2)` under the log-uniform prior,
//!
//! ```text
//! log alpha = clip(log sigma^2 - ln(theta^2 + 1e-8), -8, 8)
//! -KL      ~= k1 * sigmoid(k2 + k3 * log alpha) - 0.5 * ln1p(exp(-log alpha)) - k1
//! ```
//!
//! with `k1 = 0.63576, k2 = 1.87320, k3 = 1.48695`. The clip has zero gradient outside
//! `(-8, 8)`: a weight whose raw log alpha is past a bound gets no KL gradient at all.

use rayon::prelude::*;

use super::tensor::{Real, CHUNK};

/// `k1` of the KL approximation.
pub const K1: f64 = 0.63576;
/// `k2` of the KL approximation.
pub const K2: f64 = 1.87320;
/// `k3` of the KL approximation.
pub const K3: f64 = 1.48695;
/// Lower clip bound of log alpha.
pub const LOG_ALPHA_MIN: f64 = -8.0;
/// Upper clip bound of log alpha.
pub const LOG_ALPHA_MAX: f64 = 8.0;
/// Added to `theta^2` inside the logarithm.
pub const THETA_EPS: f64 = 1e-8;

/// Unclipped `log sigma^2 - ln(theta^2 + 1e-8)`.
#[inline]
fn raw_log_alpha<T: Real>(theta: T, log_sigma2: T) -> T {
    log_sigma2 - (theta * theta + T::from_f64(THETA_EPS)).ln()
}

/// `log alpha = clip(log sigma^2 - ln(theta^2 + 1e-8), -8, 8)` of one weight.
#[inline]
pub fn log_alpha<T: Real>(theta: T, log_sigma2: T) -> T {
    let la = raw_log_alpha(theta, log_sigma2);
    // max/min return the non-NaN operand; keep NaN visible instead.
    if la.is_nan() {
        la
    } else {
        la.max(T::from_f64(LOG_ALPHA_MIN))
            .min(T::from_f64(LOG_ALPHA_MAX))
    }
}

/// The KL divergence approximation of one weight as a function of its (clipped) log alpha:
/// `k1 - k1*sigmoid(k2 + k3*la) + 0.5*ln1p(exp(-la))`.
#[inline]
pub fn kl_of_log_alpha<T: Real>(la: T) -> T {
    let k1 = T::from_f64(K1);
    let s = sigmoid(T::from_f64(K2) + T::from_f64(K3) * la);
    k1 - k1 * s + T::from_f64(0.5) * (-la).exp().ln_1p()
}

#[inline]
fn sigmoid<T: Real>(z: T) -> T {
    T::one() / (T::one() + (-z).exp())
}

/// KL value of one weight and its derivatives with respect to `theta` and `log sigma^2`.
/// Branch-free (the clip becomes a 0/1 factor) so loops over it vectorise.
#[inline(always)]
fn kl_and_derivatives<T: Real>(theta: T, log_sigma2: T) -> (T, T, T) {
    let t2 = theta * theta + T::from_f64(THETA_EPS);
    let raw = log_sigma2 - t2.fast_ln();
    let (lo, hi) = (T::from_f64(LOG_ALPHA_MIN), T::from_f64(LOG_ALPHA_MAX));
    let inside = if raw > lo && raw < hi {
        T::one()
    } else {
        T::zero()
    };
    let la = if raw < lo {
        lo
    } else if raw > hi {
        hi
    } else {
        raw
    };
    let k1 = T::from_f64(K1);
    // s = sigmoid(z) = 1/(1+q) and s(1-s) = q/(1+q)^2 with q = exp(-z): no cancellation in
    // 1-s when s is close to 1.
    let q = (-(T::from_f64(K2) + T::from_f64(K3) * la)).fast_exp();
    let s = T::one() / (T::one() + q);
    let s_1ms = q * s * s;
    let e = (-la).fast_exp();
    let half = T::from_f64(0.5);
    // ln(1 + e) rather than ln_1p(e): e >= exp(-8), so the cancellation ln_1p guards against
    // costs at most ~1e-4 relative on this value, and ln_1p has no vectorisable form here.
    let kl = k1 - k1 * s + half * (T::one() + e).fast_ln();
    // dKL/dla = -k1*k3*s*(1-s) - 0.5*sigmoid(-la); zero where the clip is active.
    let dla = inside * (-k1 * T::from_f64(K3) * s_1ms - half * e / (T::one() + e));
    let two = T::from_f64(2.0);
    (kl, dla * (-two * theta / t2), dla)
}

/// Sum of the KL approximation over all weights of one tensor (accumulated in `f64`, in a fixed
/// order).
pub fn kl_sum<T: Real>(theta: &[T], log_sigma2: &[T]) -> f64 {
    let partial: Vec<f64> = theta
        .par_chunks(CHUNK)
        .zip(log_sigma2.par_chunks(CHUNK))
        .map(|(t, l)| {
            t.iter()
                .zip(l)
                .map(|(&t, &l)| kl_of_log_alpha(log_alpha(t, l)).as_f64())
                .sum()
        })
        .collect();
    partial.iter().sum()
}

/// Lanes of the vectorised KL loop.
const LANES: usize = 8;

/// One chunk of [`add_kl_grad`]: per-lane partial sums keep the loop free of a serial
/// floating-point reduction, so it vectorises.
fn kl_grad_chunk<T: Real>(t: &[T], l: &[T], gt: &mut [T], gl: &mut [T], scale: T) -> f64 {
    let mut acc = [T::zero(); LANES];
    let body = t.len() / LANES * LANES;
    let (t0, t1) = t.split_at(body);
    let (l0, l1) = l.split_at(body);
    let (gt0, gt1) = gt.split_at_mut(body);
    let (gl0, gl1) = gl.split_at_mut(body);
    for (((t, l), gt), gl) in t0
        .chunks_exact(LANES)
        .zip(l0.chunks_exact(LANES))
        .zip(gt0.chunks_exact_mut(LANES))
        .zip(gl0.chunks_exact_mut(LANES))
    {
        for j in 0..LANES {
            let (kl, dt, dl) = kl_and_derivatives(t[j], l[j]);
            acc[j] += kl;
            gt[j] += scale * dt;
            gl[j] += scale * dl;
        }
    }
    let mut sum: f64 = acc.iter().map(|a| a.as_f64()).sum();
    for (((&t, &l), gt), gl) in t1.iter().zip(l1).zip(gt1).zip(gl1) {
        let (kl, dt, dl) = kl_and_derivatives(t, l);
        sum += kl.as_f64();
        *gt += scale * dt;
        *gl += scale * dl;
    }
    sum
}

/// Adds `scale * dKL/dtheta` to `grad_theta` and `scale * dKL/dlog_sigma2` to
/// `grad_log_sigma2`, and returns the KL sum (unscaled, fixed reduction order).
pub(crate) fn add_kl_grad<T: Real>(
    theta: &[T],
    log_sigma2: &[T],
    grad_theta: &mut [T],
    grad_log_sigma2: &mut [T],
    scale: T,
) -> f64 {
    let partial: Vec<f64> = theta
        .par_chunks(CHUNK)
        .zip(log_sigma2.par_chunks(CHUNK))
        .zip(grad_theta.par_chunks_mut(CHUNK))
        .zip(grad_log_sigma2.par_chunks_mut(CHUNK))
        .map(|(((t, l), gt), gl)| kl_grad_chunk(t, l, gt, gl, scale))
        .collect();
    partial.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_matches_paper_shape() {
        // KL is positive, decreasing in log alpha, and near 0 for huge alpha.
        let mut prev = f64::INFINITY;
        for i in -8..=8 {
            let kl = kl_of_log_alpha(f64::from(i));
            assert!(kl > 0.0 && kl < prev, "la={i}: {kl}");
            prev = kl;
        }
        assert!(kl_of_log_alpha(8.0f64) < 0.01);
        // Hand-computed value at la = 0: k1 - k1*sigmoid(k2) + 0.5*ln 2.
        let expect = K1 - K1 / (1.0 + (-K2).exp()) + 0.5 * 2f64.ln();
        assert!((kl_of_log_alpha(0.0f64) - expect).abs() < 1e-12);
        assert_eq!(log_alpha(1.0f64, 100.0), 8.0);
        assert_eq!(log_alpha(1.0f64, -100.0), -8.0);
        assert!((log_alpha(0.5f64, -1.0) - (-1.0 - (0.25f64 + 1e-8).ln())).abs() < 1e-12);
    }

    #[test]
    fn kl_gradient_matches_finite_differences() {
        // Points well inside the clip range and points clipped on either side.
        let theta = [0.3f64, -0.05, 1.2, -0.7, 0.01, 2.0, 0.5];
        let ls2 = [-3.0f64, -6.0, -1.0, 0.5, -9.5, 15.0, -30.0];
        let mut gt = [0.0; 7];
        let mut gl = [0.0; 7];
        let scale = 0.7;
        let kl = add_kl_grad(&theta, &ls2, &mut gt, &mut gl, scale);
        assert!((kl - kl_sum(&theta, &ls2)).abs() < 1e-12);
        let h = 1e-6;
        for i in 0..theta.len() {
            let f = |t: f64, l: f64| scale * kl_of_log_alpha(log_alpha(t, l));
            let nt = (f(theta[i] + h, ls2[i]) - f(theta[i] - h, ls2[i])) / (2.0 * h);
            let nl = (f(theta[i], ls2[i] + h) - f(theta[i], ls2[i] - h)) / (2.0 * h);
            for (a, n) in [(gt[i], nt), (gl[i], nl)] {
                assert!(
                    (a - n).abs() <= 1e-6 * (1.0 + n.abs()),
                    "weight {i}: analytic {a} vs numeric {n}"
                );
            }
        }
        // The last two are clipped: exactly zero gradient.
        assert_eq!((gt[5], gl[5], gt[6], gl[6]), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn fast_f32_path_matches_f64() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let n = 10_003; // not a multiple of the lane count
        let theta: Vec<f64> = (0..n).map(|_| rng.random_range(-0.3..0.3)).collect();
        let ls2: Vec<f64> = (0..n).map(|_| rng.random_range(-14.0..2.0)).collect();
        let (mut gt, mut gl) = (vec![0.0; n], vec![0.0; n]);
        let kl = add_kl_grad(&theta, &ls2, &mut gt, &mut gl, 1.0);
        let t32: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
        let l32: Vec<f32> = ls2.iter().map(|&v| v as f32).collect();
        let (mut gt32, mut gl32) = (vec![0.0f32; n], vec![0.0f32; n]);
        let kl32 = add_kl_grad(&t32, &l32, &mut gt32, &mut gl32, 1.0);
        assert!((kl32 - kl).abs() < 1e-5 * kl, "{kl32} vs {kl}");
        for i in 0..n {
            for (a, b) in [(gt32[i], gt[i]), (gl32[i], gl[i])] {
                let (a, b) = (f64::from(a), b);
                assert!(
                    (a - b).abs() <= 1e-4 * (b.abs() + 1e-3),
                    "{i}: {a} vs {b} theta {} ls2 {}",
                    theta[i],
                    ls2[i]
                );
            }
        }
        assert!((kl_sum(&t32, &l32) - kl).abs() < 1e-5 * kl);
    }
}
