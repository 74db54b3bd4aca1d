//! Standard normal draws for Cortex-M: a 128-strip ziggurat (Marsaglia and Tsang, 2000).
//!
//! One 32-bit random word usually makes one draw: 7 bits choose the strip, 1 bit the sign and
//! 24 bits the position, so index and value never share bits. About 98.8% of draws take the
//! fast path (one entry of a 256-entry table of thresholds and signed widths, one compare, one
//! multiply); the rest test a wedge against `exp` (the crate's `e^x` for `x <= 0`, within 4 units in the last place) or sample
//! the tail beyond `ZIG_R` (r ≈ 3.4426) with Marsaglia's exponential method. The tables are computed at
//! build time by `build.rs` in f64 and stored as f32 (1.5 KiB of flash, and the fast path's interleaved copy: 2 KiB).

use rand_core::RngCore;

include!(concat!(env!("OUT_DIR"), "/ziggurat_tables.rs"));

const STRIP_MASK: u32 = 0x7f;
const SIGN_BIT: u32 = 0x80;

/// One strip of the fast path, for one sign: the threshold of the inner rectangle and the
/// width scale, signed.
#[derive(Clone, Copy)]
struct FastStrip {
    threshold: u32,
    width: f32,
}

/// The fast path's table indexed by the low 8 bits of the word (strip and sign): threshold and
/// signed width side by side, so a draw makes one address and no sign branch
/// (`position * -w` is bit for bit `-(position * w)`). 2 KiB of flash.
static FAST: [FastStrip; 256] = {
    let mut table = [FastStrip {
        threshold: 0,
        width: 0.0,
    }; 256];
    let mut i = 0;
    while i < 256 {
        let strip = i & STRIP_MASK as usize;
        let width = ZIG_W[strip];
        table[i] = FastStrip {
            threshold: ZIG_K[strip],
            width: if i & SIGN_BIT as usize == 0 {
                width
            } else {
                -width
            },
        };
        i += 1;
    }
    table
};
const TWO_POW_MINUS_24: f32 = 1.0 / 16_777_216.0;

/// A uniform f32 in (0, 1], never zero, from the top 24 bits of one word.
#[inline]
fn open_unit(rng: &mut impl RngCore) -> f32 {
    ((rng.next_u32() >> 8) + 1) as f32 * TWO_POW_MINUS_24
}

/// A uniform f32 in [0, 1) from the top 24 bits of one word.
#[inline]
fn half_open_unit(rng: &mut impl RngCore) -> f32 {
    (rng.next_u32() >> 8) as f32 * TWO_POW_MINUS_24
}

/// Draws beyond the base edge: returns r + a where a has density proportional to
/// exp(-(r + a)^2 / 2) on a > 0.
#[cold]
fn tail(rng: &mut impl RngCore) -> f32 {
    loop {
        let a = -libm::logf(open_unit(rng)) * ZIG_R_INV;
        let b = -libm::logf(open_unit(rng));
        if b + b > a * a {
            return ZIG_R + a;
        }
    }
}

/// Draws one standard normal variate N(0, 1).
///
/// Deterministic for a given generator state: the host and the device draw the same values
/// from the same seed, as both run this code with the same tables and `libm`.
///
/// The generator is `Clone` so that the rare slow path can take a copy by value: the hot loop
/// never exposes the generator's address, and the compiler keeps its state in registers.
#[inline]
pub fn standard_normal<R: RngCore + Clone>(rng: &mut R) -> f32 {
    loop {
        let word = rng.next_u32();
        let fast = FAST[(word & 0xff) as usize];
        let position = word >> 8;
        if position < fast.threshold {
            return position as f32 * fast.width;
        }
        let strip = (word & STRIP_MASK) as usize;
        let magnitude = position as f32 * ZIG_W[strip];
        let (value, state) = slow_path(rng.clone(), strip, magnitude);
        *rng = state;
        if let Some(value) = value {
            return if word & SIGN_BIT == 0 { value } else { -value };
        }
    }
}

/// The 1.2% of draws outside the inner rectangles: the tail of the base strip, or the wedge
/// between a strip's inner rectangle and the curve. `None` rejects the draw. Takes and returns
/// the generator by value (see [`standard_normal`]).
#[cold]
#[inline(never)]
fn slow_path<R: RngCore>(mut rng: R, strip: usize, magnitude: f32) -> (Option<f32>, R) {
    if strip == 0 {
        return (Some(tail(&mut rng)), rng);
    }
    let lower = ZIG_F[strip];
    let upper = ZIG_F[strip + 1];
    let height = lower + half_open_unit(&mut rng) * (upper - lower);
    let value =
        (height < crate::exp::exp_nonpositive(-0.5 * magnitude * magnitude)).then_some(magnitude);
    (value, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro128PlusPlus;

    /// Standard normal CDF from libm's erf, in f64: independent of the ziggurat tables.
    fn normal_cdf(x: f64) -> f64 {
        0.5 * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
    }

    #[test]
    fn tables_are_consistent() {
        // Strip widths decrease, densities increase towards the mode, thresholds are < 2^24.
        for k in 1..ZIG_W.len() {
            assert!(ZIG_W[k] < ZIG_W[k - 1], "widths must shrink at strip {k}");
            assert!(ZIG_F[k] > ZIG_F[k - 1], "densities must grow at strip {k}");
            assert!(ZIG_K[k] < 1 << 24);
        }
        assert_eq!(ZIG_F[ZIG_F.len() - 1], 1.0);
        // Marsaglia and Tsang's published base edge for 128 strips.
        assert!((ZIG_R - 3.442_62).abs() < 1e-4, "r = {ZIG_R}");
    }

    #[test]
    fn moments_kolmogorov_smirnov_and_tails_over_a_million_draws() {
        const N: usize = 1_000_000;
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(0x5eed);
        let mut draws = std::vec![0.0f32; N];
        for d in draws.iter_mut() {
            *d = standard_normal(&mut rng);
        }
        let n = N as f64;
        let mean = draws.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = draws
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let kurt = draws
            .iter()
            .map(|&v| (v as f64 - mean).powi(4))
            .sum::<f64>()
            / n
            / (var * var);
        // 5 standard errors: the standard error of the mean is 1/sqrt(n), of the variance sqrt(2/n).
        assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
        assert!(
            (kurt - 3.0).abs() < 5.0 * (24.0 / n).sqrt(),
            "kurtosis {kurt}"
        );

        let mut sorted = draws.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let mut d_max = 0.0f64;
        for (i, &v) in sorted.iter().enumerate() {
            let cdf = normal_cdf(v as f64);
            d_max = d_max
                .max((cdf - i as f64 / n).abs())
                .max(((i + 1) as f64 / n - cdf).abs());
        }
        // Critical value of the KS statistic at significance 0.001 is 1.95 / sqrt(n).
        assert!(d_max * n.sqrt() < 1.95, "KS statistic {}", d_max * n.sqrt());

        // Beyond 4 sigma on each side: P(Z > 4) = 3.167e-5, so about 31.7 draws per side; a
        // binomial count stays within 5 standard deviations of it.
        let p4 = 1.0 - normal_cdf(4.0);
        let (expected, sd) = (n * p4, (n * p4 * (1.0 - p4)).sqrt());
        let above = draws.iter().filter(|&&v| v > 4.0).count() as f64;
        let below = draws.iter().filter(|&&v| v < -4.0).count() as f64;
        for (side, count) in [("above", above), ("below", below)] {
            assert!(
                (count - expected).abs() < 5.0 * sd,
                "{count} draws {side} 4 sigma, {expected:.1} expected"
            );
        }
    }

    #[test]
    fn chi_square_over_tail_and_wedge_bins() {
        // Bins chosen to exercise the tail (|z| > 3.44) and the wedges separately.
        const EDGES: [f64; 11] = [
            -4.0, -3.44262, -2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.44262, 4.0,
        ];
        const N: usize = 400_000;
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(42);
        let mut counts = [0u64; EDGES.len() + 1];
        for _ in 0..N {
            let z = standard_normal(&mut rng) as f64;
            let bin = EDGES.iter().position(|&e| z < e).unwrap_or(EDGES.len());
            counts[bin] += 1;
        }
        let mut chi2 = 0.0;
        for (bin, &count) in counts.iter().enumerate() {
            let lo = if bin == 0 {
                f64::NEG_INFINITY
            } else {
                EDGES[bin - 1]
            };
            let hi = if bin == EDGES.len() {
                f64::INFINITY
            } else {
                EDGES[bin]
            };
            let expected = N as f64 * (normal_cdf(hi) - normal_cdf(lo));
            chi2 += (count as f64 - expected).powi(2) / expected;
        }
        // 11 degrees of freedom: the 0.999 quantile is 31.26.
        assert!(chi2 < 31.26, "chi-square {chi2}, counts {counts:?}");
    }

    /// The tail sampler against the exact conditional law of N(0, 1) beyond the base edge:
    /// `P(Z <= x | Z > r) = 1 - Q(x) / Q(r)` with `Q(x) = erfc(x / sqrt 2) / 2`, by the
    /// Kolmogorov-Smirnov distance over 200,000 tail draws. An acceptance test with the wrong
    /// exponent (`b > a * a`, density `exp(-r a - a^2)`) shifts the law by far more than the
    /// 0.999 critical value.
    #[test]
    fn the_tail_follows_the_normal_law_beyond_the_base_edge() {
        fn upper(x: f64) -> f64 {
            0.5 * libm::erfc(x / core::f64::consts::SQRT_2)
        }
        const N: usize = 200_000;
        let r = f64::from(ZIG_R);
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(77);
        let mut draws: std::vec::Vec<f64> = (0..N).map(|_| f64::from(tail(&mut rng))).collect();
        assert!(draws.iter().all(|&x| x >= r));
        draws.sort_by(|a, b| a.total_cmp(b));
        let mut d_max = 0.0f64;
        for (i, &x) in draws.iter().enumerate() {
            let cdf = 1.0 - upper(x) / upper(r);
            let lo = i as f64 / N as f64;
            let hi = (i + 1) as f64 / N as f64;
            d_max = d_max.max((cdf - lo).abs()).max((hi - cdf).abs());
        }
        let n = N as f64;
        assert!(d_max * n.sqrt() < 1.95, "KS statistic {}", d_max * n.sqrt());
    }

    #[test]
    fn same_seed_same_draws() {
        let mut a = Xoshiro128PlusPlus::seed_from_u64(9);
        let mut b = Xoshiro128PlusPlus::seed_from_u64(9);
        for _ in 0..1000 {
            assert_eq!(
                standard_normal(&mut a).to_bits(),
                standard_normal(&mut b).to_bits()
            );
        }
    }
}
