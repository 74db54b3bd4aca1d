//! Branch-free `f32` exponential and logarithm that the compiler can vectorise.
//!
//! The KL term and `sigma^2 = exp(log sigma^2)` need a few transcendental functions per weight
//! per step; through libm's scalar calls that costs as much as the matrix products of
//! LeNet-300-100. These versions are plain arithmetic and bit operations, so loops over slices
//! compile to SIMD code. Accuracy (checked in the tests against `std`): relative error below
//! `4e-7` for `exp` on `[-87, 88]` and absolute error below `2e-7` for `ln` on normal positive
//! numbers, i.e. a few ulp.
//!
//! Method. `exp`: `x = n ln2 + r` with `n` the nearest integer to `x / ln 2` (two-part `ln 2` so
//! `r` is exact), `|r| <= ln2 / 2`, `exp(r)` by its degree-7 Taylor polynomial, scaled by `2^n`
//! built in the exponent bits. `ln`: `x = 2^e m` with `m` in `[sqrt(1/2), sqrt(2))`, then
//! `ln m = 2 atanh(s)`, `s = (m - 1)/(m + 1)`, `|s| < 0.172`, by its odd series up to `s^11`.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting `1.5 * 2^23` rounds an `f32` of magnitude below `2^22` to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` (saturating: below -87.3 returns ~1.2e-38 rather than 0, above 88 returns ~1.7e38
/// rather than infinity; NaN in gives NaN out).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // The low mantissa bits of `shifted` hold `n` (offset by the magic's own bits): integer
    // extraction without a float-to-int conversion, which would not vectorise.
    let n_int = shifted.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// Natural logarithm of a positive normal `x` (zero, negative, subnormal, infinite and NaN
/// inputs give meaningless finite results: callers guarantee `x >= 1e-8`).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += i32::from(big);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 2.0
        * s
        * (1.0
            + s2 * (1.0 / 3.0
                + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0))))));
    e as f32 * std::f32::consts::LN_2 + series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(1000.0).is_finite());
    }

    #[test]
    fn ln_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = 1e-8f32;
        while x < 1e8 {
            let want = f64::from(x).ln();
            let got = f64::from(ln_f32(x));
            worst = worst.max((got - want).abs() / want.abs().max(1.0));
            x *= 1.000_37;
        }
        assert!(worst < 2e-7, "worst error {worst:e}");
        assert_eq!(ln_f32(1.0), 0.0);
    }
}
