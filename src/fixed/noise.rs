//! Gaussian noise for the integer path: a 1024-level inverse-CDF table in Q8.
//!
//! Each draw takes 10 bits of a Xoshiro128++ output (three draws per 32-bit word) and looks up
//! the standard normal quantile at `(k + 1/2) / 1024`, rescaled so that the discrete
//! distribution has variance exactly 1 (the midpoint quantiles alone have variance 0.9937), then rounded to 1/256.
//! The draws are therefore symmetric, unit-variance and bounded by [`NORMAL_Q8_MAX`]
//! (3.30 standard deviations); their Kolmogorov–Smirnov distance to N(0, 1) is below 0.0015
//! (tested). Bounded noise lets the kernels skip a ReLU unit exactly when even the largest
//! draw cannot switch it on.

use rand_core::RngCore;
use rand_xoshiro::Xoshiro128PlusPlus;

use super::math::NORMAL_Q8;

/// Fractional bits of a draw: 256 is one standard deviation.
pub const NORMAL_FRAC_BITS: u32 = 8;

/// Largest draw, in Q8 (the table is symmetric: the smallest is its negative).
pub const NORMAL_Q8_MAX: i32 = NORMAL_Q8[NORMAL_Q8.len() - 1] as i32;

/// One sample's stream of standard normal draws in Q8.
#[derive(Clone, Debug)]
pub struct NormalQ8 {
    rng: Xoshiro128PlusPlus,
    bits: u32,
    left: u32,
}

impl NormalQ8 {
    /// Draws from `rng`, 10 bits at a time.
    pub fn new(rng: Xoshiro128PlusPlus) -> Self {
        Self {
            rng,
            bits: 0,
            left: 0,
        }
    }

    /// The next 32 uniform bits of the underlying generator (an MC dropout mask draw),
    /// leaving the buffered normal draws as they are.
    #[inline(always)]
    pub fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    /// The next draw, `eps * 4096` rounded, `|eps| <= 3.30`.
    #[inline(always)]
    pub fn draw(&mut self) -> i16 {
        if self.left == 0 {
            self.bits = self.rng.next_u32();
            self.left = 3;
        }
        let k = (self.bits & 1023) as usize;
        self.bits >>= 10;
        self.left -= 1;
        NORMAL_Q8[k]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn cdf(x: f64) -> f64 {
        0.5 * libm::erfc(-x / core::f64::consts::SQRT_2)
    }

    #[test]
    fn table_is_symmetric_unit_variance_and_close_to_the_normal_cdf() {
        let n = NORMAL_Q8.len();
        for k in 0..n {
            assert_eq!(NORMAL_Q8[k], -NORMAL_Q8[n - 1 - k], "asymmetric at {k}");
        }
        let var: f64 = NORMAL_Q8
            .iter()
            .map(|&q| (q as f64 / 256.0).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!((var - 1.0).abs() < 2e-3, "variance {var}");
        // KS distance of the discrete distribution (mass 1/n at each level) to N(0, 1).
        let mut ks = 0.0f64;
        for (k, &q) in NORMAL_Q8.iter().enumerate() {
            let f = cdf(q as f64 / 256.0);
            ks = ks.max((f - k as f64 / n as f64).abs());
            ks = ks.max((f - (k + 1) as f64 / n as f64).abs());
        }
        assert!(ks < 0.0015, "KS distance {ks}");
        assert!((NORMAL_Q8_MAX as f64 / 256.0 - 3.30).abs() < 0.01);
    }

    #[test]
    fn draws_are_uniform_over_the_levels_and_have_unit_variance() {
        let mut s = NormalQ8::new(Xoshiro128PlusPlus::seed_from_u64(42));
        let n = 600_000;
        // Levels with equal values (near the centre, where quantiles are closer than 1/256)
        // merge into one cell holding their combined probability.
        let mut counts = [0u32; 1024];
        let (mut sum, mut sum2) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let d = s.draw();
            let v = d as f64 / 256.0;
            sum += v;
            sum2 += v * v;
            counts[NORMAL_Q8.partition_point(|&q| q < d)] += 1;
        }
        let mean = sum / n as f64;
        let var = sum2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        let mut chi2 = 0.0f64;
        let mut cells = 0;
        for (k, &c) in counts.iter().enumerate() {
            let first = NORMAL_Q8.partition_point(|&q| q < NORMAL_Q8[k]);
            if first != k {
                continue; // merged into the cell of its first equal level
            }
            let multiplicity = NORMAL_Q8.iter().filter(|&&q| q == NORMAL_Q8[k]).count();
            let expected = n as f64 * multiplicity as f64 / 1024.0;
            chi2 += (c as f64 - expected).powi(2) / expected;
            cells += 1;
        }
        // cells - 1 degrees of freedom: mean cells - 1, sd sqrt(2 (cells - 1)); allow 5 sd.
        let dof = (cells - 1) as f64;
        assert!(
            chi2 < dof + 5.0 * libm::sqrt(2.0 * dof),
            "chi-square {chi2} over {cells} cells"
        );
    }
}
