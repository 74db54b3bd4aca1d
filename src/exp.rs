//! `e^x` for `x <= 0`, the softmax's only exponential (`e^(z - z_max)`), in about 25
//! instructions on a Cortex-M4F instead of `libm::expf`'s 72 (`scripts/qemu-profile.py`: 320
//! calls per M = 32 LeNet-300-100 inference).
//!
//! Range reduction `x = n ln 2 + r` with `n` the nearest integer to `x / ln 2` and `ln 2` split
//! in two parts (Cody and Waite), so `|r| <= ln 2 / 2` up to rounding; `e^r` by its Taylor
//! polynomial of degree 6 (truncation error below `r^7 / 7! <= 1.2e-7` relative); `2^n` put
//! into the exponent bits. The result is within 4 units in the last place of the exact value
//! (tested against f64 over the whole range), exactly 1 at 0, and 0 below -87.3, where the true
//! value is below the smallest normal f32 (libm would return a subnormal there; a softmax term
//! that small next to the largest one, which is exactly 1, never changes the sum).

/// `ln 2`'s high part, exact in f32 with trailing zero bits so `n * LN2_HIGH` is exact.
const LN2_HIGH: f32 = 0.693_145_75;
/// `ln 2 - LN2_HIGH`.
const LN2_LOW: f32 = 1.428_606_8e-6;
const LOG2_E: f32 = core::f32::consts::LOG2_E;
/// Below this, `e^x` is under the smallest normal f32 (`2^-126`).
const SMALLEST: f32 = -87.33;

/// `e^x` for `x <= 0` (see the module documentation for the error bound). NaN gives NaN.
/// The reduction assumes `x <= 0`: positive arguments get a less accurate (still finite below
/// 88) value, and no caller passes one.
#[inline]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    if x < SMALLEST {
        return 0.0;
    }
    // Nearest integer to x / ln 2 for x <= 0: truncation of t - 0.5 rounds half away from zero.
    let n = (x * LOG2_E - 0.5) as i32;
    let nf = n as f32;
    let r = (x - nf * LN2_HIGH) - nf * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n for -126 <= n <= 0 (x >= -87.33 keeps n above -127).
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, exact: f64) -> f64 {
        let e = exact as f32;
        let ulp = f32::from_bits(e.to_bits() + 1) - e;
        ((f64::from(a) - exact) / f64::from(ulp)).abs()
    }

    #[test]
    fn within_four_ulps_of_f64_over_the_range() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > SMALLEST {
            let exact = f64::from(x).exp();
            let got = exp_nonpositive(x);
            worst = worst.max(ulps(got, exact));
            x -= 0.000_731;
        }
        assert!(worst <= 4.0, "worst error {worst} ulps");
    }

    #[test]
    fn exact_at_zero_and_zero_far_below() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn monotone_on_a_fine_grid_near_the_reduction_boundaries() {
        // Around x = -k ln 2 / 2, where the reduced argument changes sides.
        for k in 1..100 {
            let centre = -(k as f32) * core::f32::consts::LN_2 * 0.5;
            // Every f32 within 200 units in the last place on either side (negative floats grow
            // in magnitude as their bits grow).
            let mut x = f32::from_bits(centre.to_bits() - 200);
            let mut previous = exp_nonpositive(x);
            for _ in 0..400 {
                x = f32::from_bits(x.to_bits() + 1);
                let v = exp_nonpositive(x);
                assert!(v <= previous, "not monotone at {x}");
                previous = v;
            }
        }
    }
}
