//! The portable kernels: safe Rust, the definition every architecture's version must match
//! bit for bit.

use super::{Line, Lines, Q8Columns, Q8Row, Q8Taps};
use crate::model::Geometry;

/// See [`super::dot`].
#[inline(always)]
pub(crate) fn dot<const W: usize>(line: Line<'_, W>, x: &[f32], bias: f32) -> f32 {
    debug_assert!(x.len() >= line.bound());
    let mut acc = bias;
    for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(W)) {
        acc += x[c as usize] * w[0];
    }
    acc
}

/// See [`super::dot_rows`].
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[inline(always)]
pub(crate) fn dot_rows<const W: usize>(
    rows: Lines<'_, W>,
    x: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    for (j, (o, &b)) in out.iter_mut().zip(bias).take(rows.count()).enumerate() {
        if let Some(line) = rows.line(j) {
            *o = dot(line, x, b);
        }
    }
}

/// See [`super::accumulate_rows`]: each row over all samples in one pass.
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[inline(always)]
pub(crate) fn accumulate_rows(
    rows: Lines<'_, 2>,
    x: (&[f32], &[f32]),
    s: usize,
    bias: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) {
    let units = mean.chunks_exact_mut(s).zip(var.chunks_exact_mut(s));
    for (j, ((m, v), &b)) in units.zip(bias).take(rows.count()).enumerate() {
        if let Some(line) = rows.line(j) {
            accumulate(line, x, s, 0, b, m, v);
        }
    }
}

/// See [`super::square_into`].
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[inline(always)]
pub(crate) fn square_into(x: &[f32], squares: &mut [f32]) {
    for (q, &v) in squares.iter_mut().zip(x) {
        *q = v * v;
    }
}

/// See [`super::scatter_span`].
#[inline(always)]
pub(crate) fn scatter_span<const W: usize>(
    lines: Lines<'_, W>,
    span: core::ops::Range<usize>,
    xv: f32,
    out: &mut [f32],
) {
    let Some(line) = lines.span(span) else {
        return;
    };
    debug_assert!(out.len() >= line.bound());
    for (&r, w) in line.indices().iter().zip(line.values().chunks_exact(W)) {
        out[r as usize] += xv * w[0];
    }
}

/// See [`super::scatter_moments_span`].
#[inline(always)]
pub(crate) fn scatter_moments_span(
    lines: Lines<'_, 2>,
    span: core::ops::Range<usize>,
    xv: f32,
    (mean, var): (&mut [f32], &mut [f32]),
) {
    let Some(line) = lines.span(span) else {
        return;
    };
    let x2 = xv * xv;
    for (&r, w) in line.indices().iter().zip(line.values().chunks_exact(2)) {
        let r = r as usize;
        mean[r] += xv * w[0];
        var[r] += x2 * w[1];
    }
}

/// One row's sums for the samples `first..first + mean.len()` of a unit-major chunk of `s`
/// (see [`super::accumulate_rows`]).
#[inline(always)]
pub(crate) fn accumulate(
    line: Line<'_, 2>,
    (x, squares): (&[f32], &[f32]),
    s: usize,
    first: usize,
    bias: f32,
    mean: &mut [f32],
    var: &mut [f32],
) {
    let n = mean.len().min(var.len());
    let (mean, var) = (&mut mean[..n], &mut var[..n]);
    mean.fill(bias);
    var.fill(0.0);
    for (&c, w) in line.indices().iter().zip(line.values().chunks_exact(2)) {
        let start = c as usize * s + first;
        let inputs = x[start..start + n].iter().zip(&squares[start..start + n]);
        for ((m, v), (&xv, &q)) in mean.iter_mut().zip(var.iter_mut()).zip(inputs) {
            *m += xv * w[0];
            *v += q * w[1];
        }
    }
}

/// See [`super::sqrt_in_place`].
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[inline(always)]
pub(crate) fn sqrt_in_place(values: &mut [f32]) {
    for v in values {
        *v = sqrtf(*v);
    }
}

/// See [`super::sqrtf`]. (Hard-float cores use `vsqrt.f32` instead.)
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[inline(always)]
pub(crate) fn sqrtf(x: f32) -> f32 {
    libm::sqrtf(x)
}

/// See [`super::q8_scatter_bytes`].
#[inline(always)]
pub(crate) fn q8_scatter_bytes(columns: Q8Columns<'_>, x: &[u8], acc: &mut [i32]) {
    let records = columns.records();
    let mut start = 0usize;
    for (&count, &a) in columns.counts().iter().zip(x) {
        let end = start + 3 * count as usize;
        if a != 0 {
            if let Some(column) = records.get(start..end) {
                for r in column.chunks_exact(3) {
                    if let Some(s) = acc.get_mut(r[0] as usize) {
                        *s = s.wrapping_add(a as i32 * (r[1] as i8 as i32));
                    }
                }
            }
        }
        start = end;
    }
}

/// See [`super::q8_row_dot`].
#[inline(always)]
pub(crate) fn q8_row_dot(row: Q8Row<'_>, x: &[i32]) -> i32 {
    let mut acc = 0i32;
    for r in row.records().chunks_exact(3) {
        if let Some(&w) = x.get(r[0] as usize) {
            acc = acc.wrapping_add((w as i16 as i32) * (r[1] as i8 as i32));
        }
    }
    acc
}

/// See [`super::q8_row_sums4`].
#[inline(always)]
pub(crate) fn q8_row_sums4(row: Q8Row<'_>, x: &[i32], stride: usize) -> ([i32; 4], [i32; 4]) {
    let (mut acc, mut var) = ([0i32; 4], [0i32; 4]);
    for r in row.records().chunks_exact(3) {
        let at = r[0] as usize * stride;
        let Some(xs) = x.get(at..at + 4) else {
            continue;
        };
        let (theta, sigma2) = (r[1] as i8 as i32, r[2] as i32);
        for m in 0..4 {
            acc[m] = acc[m].wrapping_add((xs[m] as i16 as i32) * theta);
            var[m] = var[m].wrapping_add((xs[m] >> 16) * sigma2);
        }
    }
    (acc, var)
}

/// See [`super::q8_tap_means4`].
#[inline(always)]
pub(crate) fn q8_tap_means4(taps: Q8Taps<'_>, x: &[i32], at: usize, step: usize) -> [i32; 4] {
    let mut acc = [0i32; 4];
    for &[off, theta] in taps.pairs() {
        let first = at + (off as usize >> 2);
        for (k, a) in acc.iter_mut().enumerate() {
            if let Some(&w) = x.get(first + k * step) {
                *a = a.wrapping_add((w as i16 as i32) * (theta as i16 as i32));
            }
        }
    }
    acc
}

/// See [`super::q8_tap_sums4`].
#[inline(always)]
pub(crate) fn q8_tap_sums4(taps: Q8Taps<'_>, x: &[i32], at: usize) -> ([i32; 4], [i32; 4]) {
    let (mut acc, mut var) = ([0i32; 4], [0i32; 4]);
    for &[off, weight] in taps.pairs() {
        let first = at + (off as usize >> 2);
        let Some(xs) = x.get(first..first + 4) else {
            continue;
        };
        let (theta, sigma2) = (weight as i16 as i32, weight >> 16);
        for m in 0..4 {
            acc[m] = acc[m].wrapping_add((xs[m] as i16 as i32) * theta);
            var[m] = var[m].wrapping_add((xs[m] >> 16) * sigma2);
        }
    }
    (acc, var)
}

/// See [`super::conv3_mean`]: the caller's weight-stationary loop is the portable version.
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn conv3_mean(
    _g: &Geometry,
    _row_ptr: &[u32],
    _taps: &[u32],
    _values: &[f32],
    _words: usize,
    _x: &[f32],
    _bias: &[f32],
    _out: &mut [f32],
) -> bool {
    false
}

/// See [`super::conv3_moments`]: the caller's weight-stationary loop is the portable version.
#[cfg_attr(all(target_arch = "arm", target_abi = "eabihf"), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn conv3_moments(
    _g: &Geometry,
    _row_ptr: &[u32],
    _taps: &[u32],
    _values: &[f32],
    _x: &[f32],
    _co: usize,
    _bias: f32,
    _moments: (&mut [f32], &mut [f32]),
) -> bool {
    false
}
