//! Integer approximations of the functions the predictive needs: e^-x, ln and square root.
//! Table lookups with linear interpolation; no floating-point operation anywhere.
//!
//! Error bounds (checked against f64 in the tests below, over dense grids):
//! - [`exp_neg_q15`]: `|result - 32768 e^-x| <= 1` (one unit of Q15).
//! - [`ln_q16`]: `|result - 65536 ln v| <= 2` (two units of Q16) for every `v >= 1`.
//! - [`sqrt_q4`]: `|result - 16 sqrt(v)| <= 1 + 2^-13 * 16 sqrt(v)` (relative error 2^-13 from
//!   the table, plus the truncation of the last bit).

include!(concat!(env!("OUT_DIR"), "/fixed_tables.rs"));

/// log2(e) in Q16 (1.4426950 * 65536 = 94548.0).
const LOG2_E_Q16: u64 = 94_548;
/// ln(2) in Q32 (0.693147180 * 2^32).
const LN2_Q32: i64 = 2_977_044_472;
/// `n ln 2` in Q16, rounded from the Q32 constant.
pub(crate) const fn n_ln2_q16(n: i64) -> i64 {
    (n * LN2_Q32 + (1 << 15)) >> 16
}

/// `e^(-x)` for `x >= 0` given in Q16 (nats), returned in Q15 (1.0 = 32768).
pub fn exp_neg_q15(x_q16: u32) -> u32 {
    // y = x log2(e) in Q16: integer part n halves the result n times, the fraction is tabled.
    let y = (x_q16 as u64 * LOG2_E_Q16) >> 16;
    let n = y >> 16;
    if n >= 16 {
        return 0;
    }
    let frac = (y & 0xffff) as u32;
    let (i, lo) = ((frac >> 8) as usize, frac & 0xff);
    let (a, b) = (EXP2_NEG_Q30[i], EXP2_NEG_Q30[i + 1]);
    // Interpolate between 2^(-i/256) and 2^(-(i+1)/256); a >= b.
    let v = a - (((a - b) as u64 * lo as u64) >> 8) as u32;
    // Q30 -> Q15, halved n times, rounded to nearest.
    let shift = 15 + n as u32;
    (v + (1 << (shift - 1))) >> shift
}

/// Natural logarithm of a positive integer in Q16 (`ln v * 65536`); 0 for `v = 0`, which the
/// callers never pass.
pub fn ln_q16(v: u32) -> i32 {
    if v == 0 {
        return 0;
    }
    let lz = v.leading_zeros();
    let exponent = 31 - lz;
    // Mantissa with the leading one at bit 31: the next 8 bits index the table, the 8 after
    // that interpolate.
    let m = v << lz;
    let i = ((m >> 23) & 0xff) as usize;
    let lo = (m >> 15) & 0xff;
    let (a, b) = (LOG2_Q24[i], LOG2_Q24[i + 1]);
    let frac_q24 = a + (((b - a) as u64 * lo as u64) >> 8) as u32;
    let log2_q24 = ((exponent as i64) << 24) + frac_q24 as i64;
    // ln v = log2 v * ln 2: Q24 * Q32 -> Q56, rounded to Q16.
    ((log2_q24 * LN2_Q32 + (1 << 39)) >> 40) as i32
}

/// `16 sqrt(v)` (the square root in Q4, truncated), from a 193-entry table with
/// interpolation: `v = m 4^t` with `m` in `[2^14, 2^16)`, `sqrt(m)` from the table.
pub fn sqrt_q4(v: u64) -> u64 {
    if v == 0 {
        return 0;
    }
    let msb = 63 - v.leading_zeros() as i32;
    let two_t = (msb - 14) & !1;
    let m = if two_t >= 0 {
        (v >> two_t) as u32
    } else {
        (v << -two_t) as u32
    };
    let root = table_root(m) as u64;
    let shift = two_t / 2 - 4;
    if shift >= 0 {
        root << shift
    } else {
        root >> -shift
    }
}

/// [`sqrt_q4`] for 32-bit values with 32-bit operations only and no branch (the q8 hot
/// path); equal to `sqrt_q4(v as u64)` for every `v` (tested). An even number `e` of leading
/// zeros is shifted out, so that the mantissa `m = (v << e) >> 16` lies in `[2^14, 2^16)` and
/// `16 sqrt(v) = 256 sqrt(m) 2^(4 - e/2)`; `v = 0` gives `m = 0`, whose table root is 0.
#[inline(always)]
pub fn sqrt_q4_u32(v: u32) -> u32 {
    let e = v.leading_zeros() & 30;
    let m = (v << e) >> 16;
    (table_root(m) << 4) >> (e / 2)
}

/// `256 sqrt(m)` for `m` in `[2^14, 2^16)`: `4096 sqrt(m / 256)` interpolated in the table.
#[inline(always)]
fn table_root(m: u32) -> u32 {
    let i = ((m >> 8) & 0xff) as usize;
    let lo = m & 0xff;
    let a = SQRT_4096[i];
    let b = SQRT_4096[i + 1];
    a + (((b - a) * lo) >> 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_within_one_q15_unit() {
        let mut worst = 0.0f64;
        for x in (0..(20 << 16)).step_by(37) {
            let exact = 32768.0 * libm::exp(-(x as f64) / 65536.0);
            let err = (exp_neg_q15(x) as f64 - exact).abs();
            worst = worst.max(err);
        }
        assert!(worst <= 1.0, "worst error {worst}");
        assert_eq!(exp_neg_q15(0), 32768);
        assert_eq!(exp_neg_q15(u32::MAX), 0);
    }

    #[test]
    fn ln_matches_f64_within_two_q16_units() {
        let mut worst = 0.0f64;
        let mut v = 1u64;
        while v <= u32::MAX as u64 {
            for d in [0u64, 1, 3, 7, 77, 1001] {
                let x = (v + d).min(u32::MAX as u64) as u32;
                let exact = 65536.0 * libm::log(x as f64);
                worst = worst.max((ln_q16(x) as f64 - exact).abs());
            }
            v = v * 9 / 8 + 1;
        }
        for x in 1..5000u32 {
            worst = worst.max((ln_q16(x) as f64 - 65536.0 * libm::log(x as f64)).abs());
        }
        assert!(worst <= 2.0, "worst error {worst}");
    }

    #[test]
    fn sqrt_relative_error_is_below_two_to_minus_13() {
        let mut v = 1u64;
        while v < (1u64 << 62) {
            for d in [0u64, 1, 5, 99, 12345] {
                let x = v + d;
                let exact = 16.0 * libm::sqrt(x as f64);
                let got = sqrt_q4(x) as f64;
                assert!(
                    (got - exact).abs() <= 1.0 + exact / 8192.0,
                    "sqrt_q4({x}) = {got}, exact {exact}"
                );
            }
            v += v / 4 + 1;
        }
        assert_eq!(sqrt_q4(0), 0);
        assert_eq!(sqrt_q4(1), 16);
        assert_eq!(sqrt_q4(1 << 16), 16 * 256);
    }

    #[test]
    fn the_32_bit_square_root_equals_the_64_bit_one() {
        let mut v = 0u32;
        loop {
            assert_eq!(sqrt_q4_u32(v) as u64, sqrt_q4(v as u64), "{v}");
            match v.checked_add(1 + v / 1000) {
                Some(n) => v = n,
                None => break,
            }
        }
        assert_eq!(sqrt_q4_u32(u32::MAX) as u64, sqrt_q4(u32::MAX as u64));
    }
}
