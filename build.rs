//! Generates the ziggurat tables of the standard normal sampler (`src/normal.rs`).
//!
//! The tables are computed here, in f64 with the `libm` crate, so that every build of the
//! core (host or device) embeds the very same constants and no table can drift from the
//! maths that defines it.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

/// Number of strips of the ziggurat (a power of two: the strip index is 7 random bits).
const STRIPS: usize = 128;

/// Unnormalised standard normal density.
fn density(x: f64) -> f64 {
    libm::exp(-0.5 * x * x)
}

/// Area of every strip for a given right edge `r` of the base strip: the rectangle under
/// f(r) plus the tail beyond r.
fn strip_area(r: f64) -> f64 {
    r * density(r)
        + libm::sqrt(core::f64::consts::FRAC_PI_2) * libm::erfc(r / core::f64::consts::SQRT_2)
}

/// Builds the strip edges x[0..=STRIPS] for a base edge `r`; returns them with the residual
/// `f(x[STRIPS-1]) + V / x[STRIPS-1] - 1`, which is zero when the top strip closes at x = 0.
fn edges(r: f64) -> ([f64; STRIPS + 1], f64) {
    let v = strip_area(r);
    let mut x = [0.0f64; STRIPS + 1];
    x[0] = v / density(r);
    x[1] = r;
    for k in 1..STRIPS - 1 {
        let y = density(x[k]) + v / x[k];
        x[k + 1] = if y >= 1.0 {
            0.0
        } else {
            libm::sqrt(-2.0 * libm::log(y))
        };
    }
    x[STRIPS] = 0.0;
    let last = x[STRIPS - 1];
    let residual = if last > 0.0 {
        density(last) + v / last - 1.0
    } else {
        1.0
    };
    (x, residual)
}

fn main() {
    // ARMv7E-M cores (M4, M4F, M7) have the DSP extension: `tb_arm_dsp` selects the
    // hand-scheduled fixed-point kernels of `src/arch/arm_dsp.rs`.
    println!("cargo::rustc-check-cfg=cfg(tb_arm_dsp)");
    if env::var("TARGET").is_ok_and(|t| t.starts_with("thumbv7em")) {
        println!("cargo::rustc-cfg=tb_arm_dsp");
    }
    // ARMv6-M parts (Cortex-M0/M0+) have little flash: `tb_flash_lean` keeps the fixed-point
    // kernels' size-costly fast paths out of their builds (the same bits either way).
    println!("cargo::rustc-check-cfg=cfg(tb_flash_lean)");
    if env::var("TARGET").is_ok_and(|t| t.starts_with("thumbv6m")) {
        println!("cargo::rustc-cfg=tb_flash_lean");
    }
    // Bisection on r: a larger r makes every strip thinner, so the top strip overshoots.
    let (mut lo, mut hi) = (3.0f64, 4.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let (_, res) = edges(mid);
        if res > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let r = 0.5 * (lo + hi);
    let (x, _) = edges(r);
    let scale = (1u64 << 24) as f64;

    let mut src = String::new();
    writeln!(src, "/// Right edge of the base strip (start of the tail).").unwrap();
    writeln!(src, "pub(crate) const ZIG_R: f32 = {:?};", r as f32).unwrap();
    writeln!(src, "/// 1 / ZIG_R, for the tail sampler.").unwrap();
    writeln!(
        src,
        "pub(crate) const ZIG_R_INV: f32 = {:?};",
        (1.0 / r) as f32
    )
    .unwrap();
    writeln!(
        src,
        "/// Strip widths scaled by 2^-24, so that a 24-bit integer times W[k] lies in [0, x[k])."
    )
    .unwrap();
    write!(src, "pub(crate) static ZIG_W: [f32; {STRIPS}] = [").unwrap();
    for xk in &x[..STRIPS] {
        write!(src, "{:?}, ", (xk / scale) as f32).unwrap();
    }
    writeln!(src, "];").unwrap();
    writeln!(
        src,
        "/// Acceptance thresholds: a 24-bit integer below K[k] lands inside the curve."
    )
    .unwrap();
    write!(src, "pub(crate) static ZIG_K: [u32; {STRIPS}] = [").unwrap();
    for pair in x.windows(2) {
        write!(src, "{}, ", libm::floor(scale * pair[1] / pair[0]) as u32).unwrap();
    }
    writeln!(src, "];").unwrap();
    writeln!(
        src,
        "/// Density at each strip edge, f(x[k]) = exp(-x[k]^2 / 2)."
    )
    .unwrap();
    write!(src, "pub(crate) static ZIG_F: [f32; {}] = [", STRIPS + 1).unwrap();
    for xk in x.iter() {
        write!(src, "{:?}, ", density(*xk) as f32).unwrap();
    }
    writeln!(src, "];").unwrap();

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("ziggurat_tables.rs"), src).expect("write ziggurat tables");
    fs::write(out.join("fixed_tables.rs"), fixed_tables()).expect("write fixed-point tables");
    println!("cargo::rerun-if-changed=build.rs");
}

/// Entries of the fixed-point normal quantile table (a power of two: 10 random bits each).
const NORMAL_LEVELS: usize = 1024;
/// Fractional bits of the fixed-point normal draws.
const NORMAL_FRAC_BITS: u32 = 8;

/// Standard normal CDF.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / core::f64::consts::SQRT_2)
}

/// Standard normal quantile by bisection on the CDF (exact to f64 resolution).
fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Tables of the integer-only inference path (`src/fixed/math.rs`, `src/fixed/noise.rs`).
fn fixed_tables() -> String {
    let mut src = String::new();
    // Normal quantiles at the midpoints (k + 1/2) / 1024, scaled so that the discrete
    // distribution has unit variance, in Q12.
    let q: Vec<f64> = (0..NORMAL_LEVELS)
        .map(|k| normal_quantile((k as f64 + 0.5) / NORMAL_LEVELS as f64))
        .collect();
    let var = q.iter().map(|v| v * v).sum::<f64>() / NORMAL_LEVELS as f64;
    let unit = 1.0 / libm::sqrt(var);
    let one = (1u32 << NORMAL_FRAC_BITS) as f64;
    writeln!(
        src,
        "/// Standard normal quantiles at (k + 1/2) / {NORMAL_LEVELS}, rescaled by {unit:.6} to unit variance, Q{NORMAL_FRAC_BITS}."
    )
    .unwrap();
    write!(
        src,
        "pub(crate) static NORMAL_Q8: [i16; {NORMAL_LEVELS}] = ["
    )
    .unwrap();
    for v in &q {
        write!(src, "{}, ", libm::round(v * unit * one) as i16).unwrap();
    }
    writeln!(src, "];").unwrap();

    writeln!(src, "/// 2^(-i/256) in Q30, i = 0..=256.").unwrap();
    write!(src, "pub(crate) static EXP2_NEG_Q30: [u32; 257] = [").unwrap();
    for i in 0..=256 {
        let v = libm::pow(2.0, -(i as f64) / 256.0) * (1u64 << 30) as f64;
        write!(src, "{}, ", libm::round(v) as u32).unwrap();
    }
    writeln!(src, "];").unwrap();

    writeln!(src, "/// log2(1 + i/256) in Q24, i = 0..=256.").unwrap();
    write!(src, "pub(crate) static LOG2_Q24: [u32; 257] = [").unwrap();
    for i in 0..=256 {
        let v = libm::log2(1.0 + i as f64 / 256.0) * (1u64 << 24) as f64;
        write!(src, "{}, ", libm::round(v) as u32).unwrap();
    }
    writeln!(src, "];").unwrap();

    writeln!(
        src,
        "/// 4096 * sqrt(i), i = 0..=256 (only 64..=256 are read)."
    )
    .unwrap();
    write!(src, "pub(crate) static SQRT_4096: [u32; 257] = [").unwrap();
    for i in 0..=256 {
        write!(
            src,
            "{}, ",
            libm::round(4096.0 * libm::sqrt(i as f64)) as u32
        )
        .unwrap();
    }
    writeln!(src, "];").unwrap();
    src
}
