//! Hard-float Cortex-M (M4F, M7, M33) versions of the [`super::portable`] kernels: inline
//! `asm!` loops over one [`Line`] that keep their sums in FPU registers, step the index and
//! record pointers with post-increment loads, load records (and a block of samples) with one
//! `vldmia`, and check their buffers once per line instead of once per weight.
//!
//! Every block sums in the portable kernel's order with `vmla.f32`, the FPU's unfused
//! multiply-accumulate (the product is rounded, then the sum), which is what the portable
//! kernel's `acc += x * w` computes: the bits agree, as the host tests of the portable kernels
//! and the on-target parity tests (device against host-computed outputs) check.
//!
//! Floating-point registers are named as clobbers (`out("s0") _`): the `sreg` operand class
//! needs a `vfp2` feature that single-precision cores lack, but named clobbers do not, and the
//! compiler then saves the callee-saved `s16`-`s31` the blocks use.
#![allow(unsafe_code)]

use core::arch::asm;

use super::{portable, Line, Lines};
use crate::model::Geometry;

/// See [`super::dot`].
#[inline(always)]
pub(crate) fn dot<const W: usize>(line: Line<'_, W>, x: &[f32], bias: f32) -> f32 {
    if x.len() < line.bound() {
        return portable::dot(line, x, bias);
    }
    // SAFETY: every index of a `Line` is below `line.bound() <= x.len()` (model validation,
    // see `super::Line`; checked above), and `values` holds `W` words per index.
    unsafe {
        dot_raw::<W>(
            line.indices().as_ptr(),
            line.values().as_ptr(),
            line.indices().len(),
            x.as_ptr(),
            bias,
        )
    }
}

/// See [`super::dot_rows`]: the row loop steps the row pointers without slicing (about 12
/// instructions per row instead of 60 through [`dot`] and the generic row walk).
#[inline(always)]
pub(crate) fn dot_rows<const W: usize>(
    rows: Lines<'_, W>,
    x: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    if x.len() < rows.bound {
        return portable::dot_rows(rows, x, bias, out);
    }
    for ((o, &b), bounds) in out.iter_mut().zip(bias).zip(rows.pointers.windows(2)) {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let Some(n) = end.checked_sub(start) else {
            continue;
        };
        // SAFETY: validation made the pointers non-decreasing and `Lines::of` checked the last
        // one against `indices.len()` (and `values.len() == W * indices.len()`), so the row's
        // `n` indices and records lie inside the arrays; every index is below
        // `rows.bound <= x.len()`.
        *o = unsafe {
            dot_raw::<W>(
                rows.indices.as_ptr().add(start),
                rows.values.as_ptr().add(start * W),
                n,
                x.as_ptr(),
                b,
            )
        };
    }
}

/// `bias + Σ_k x[idx[k]] · vals[k W]` for `k < n`. Two weights per iteration: 5 instructions
/// per weight instead of the portable loop's 10 (index bounds check, index arithmetic, separate
/// pointer steps), measured on LeNet-300-100's mean-weights pass (layers 2 and 3, 1,030 weights).
///
/// # Safety
/// `idx` points to `n` readable indices, `vals` to `n W` readable words, and `x + idx[k]` is a
/// readable f32 for every `k`.
#[inline(always)]
unsafe fn dot_raw<const W: usize>(
    idx: *const u16,
    vals: *const f32,
    n: usize,
    x: *const f32,
    bias: f32,
) -> f32 {
    let mut acc = bias.to_bits();
    // SAFETY: the caller's contract: the loop reads exactly `n` indices, `n` records and the
    // `x` value of each index. The block writes only the named registers (and the flags).
    unsafe {
        // One weight: its record is the first `W` words of the registers from `s2`.
        macro_rules! dot_loop {
            ($one:literal, $pair:literal, $second:literal) => {
                asm!(
                    "vmov s0, {acc}",
                    "tst {n}, #1",
                    "beq 2f",
                    "ldrh {c0}, [{idx}], #2",
                    "add {c0}, {x}, {c0}, lsl #2",
                    "vldr s1, [{c0}]",
                    concat!("vldmia {vals}!, ", $one),
                    "vmla.f32 s0, s1, s2",
                    "2:",
                    "lsrs {n}, {n}, #1",
                    "beq 4f",
                    "3:",
                    "ldrh {c0}, [{idx}], #2",
                    "ldrh {c1}, [{idx}], #2",
                    "add {c0}, {x}, {c0}, lsl #2",
                    "add {c1}, {x}, {c1}, lsl #2",
                    "vldr s1, [{c0}]",
                    "vldr s6, [{c1}]",
                    concat!("vldmia {vals}!, ", $pair),
                    "vmla.f32 s0, s1, s2",
                    concat!("vmla.f32 s0, s6, ", $second),
                    "subs {n}, {n}, #1",
                    "bne 3b",
                    "4:",
                    "vmov {acc}, s0",
                    acc = inout(reg) acc,
                    n = inout(reg) n => _,
                    idx = inout(reg) idx => _,
                    vals = inout(reg) vals => _,
                    x = in(reg) x,
                    c0 = out(reg) _,
                    c1 = out(reg) _,
                    out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _,
                    out("s5") _, out("s6") _,
                    options(nostack, readonly),
                )
            };
        }
        if W == 1 {
            dot_loop!("{{s2}}", "{{s2-s3}}", "s3");
        } else {
            dot_loop!("{{s2-s3}}", "{{s2-s5}}", "s4");
        }
    }
    f32::from_bits(acc)
}

/// See [`super::scatter_span`]: two compares for the span, then [`scatter_raw`].
#[inline(always)]
pub(crate) fn scatter_span<const W: usize>(
    lines: Lines<'_, W>,
    span: core::ops::Range<usize>,
    xv: f32,
    out: &mut [f32],
) {
    if span.start > span.end || span.end > lines.indices.len() {
        return;
    }
    if out.len() < lines.bound {
        return portable::scatter_span(lines, span, xv, out);
    }
    // SAFETY: `span` lies inside `indices` (checked above), and `values` holds `W` words per
    // index (`Lines::of`); every index is below `lines.bound <= out.len()` (validation; checked
    // above), and `out` is borrowed mutably.
    unsafe {
        scatter_raw::<W>(
            lines.indices.as_ptr().add(span.start),
            lines.values.as_ptr().add(span.start * W),
            span.end - span.start,
            xv,
            out.as_mut_ptr(),
        )
    }
}

/// See [`super::scatter_moments_span`]: one weight per iteration, the mean and the variance
/// sums read, multiply-added and stored together (11 instructions per weight instead of the
/// portable loop's 16, with its two bounds checks).
#[inline(always)]
pub(crate) fn scatter_moments_span(
    lines: Lines<'_, 2>,
    span: core::ops::Range<usize>,
    xv: f32,
    (mean, var): (&mut [f32], &mut [f32]),
) {
    let in_range = span.start <= span.end && span.end <= lines.indices.len();
    if !in_range || mean.len() < lines.bound || var.len() < lines.bound {
        return portable::scatter_moments_span(lines, span, xv, (mean, var));
    }
    let n = span.end - span.start;
    // SAFETY: `span` lies inside `indices` (checked above) and `values` holds 2 words per index
    // (`Lines::of`); every index is below `lines.bound <= mean.len(), var.len()` (validation;
    // checked above), and both are borrowed mutably. The loop reads `n` indices and records
    // and reads and writes one word of each of `mean` and `var` per index, one index at a
    // time. Only the named registers and the flags are written.
    unsafe {
        asm!(
            "vmov s0, {xv}",
            "vmul.f32 s1, s0, s0",
            "cmp {n}, #0",
            "beq 4f",
            "3:",
            "ldrh {c}, [{idx}], #2",
            "vldmia {vals}!, {{s2-s3}}",
            "add {m}, {mean}, {c}, lsl #2",
            "add {c}, {var}, {c}, lsl #2",
            "vldr s4, [{m}]",
            "vldr s5, [{c}]",
            "vmla.f32 s4, s0, s2",
            "vmla.f32 s5, s1, s3",
            "vstr s4, [{m}]",
            "vstr s5, [{c}]",
            "subs {n}, {n}, #1",
            "bne 3b",
            "4:",
            xv = in(reg) xv.to_bits(),
            n = inout(reg) n => _,
            idx = inout(reg) lines.indices.as_ptr().add(span.start) => _,
            vals = inout(reg) lines.values.as_ptr().add(2 * span.start) => _,
            mean = in(reg) mean.as_mut_ptr(),
            var = in(reg) var.as_mut_ptr(),
            c = out(reg) _,
            m = out(reg) _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _,
            options(nostack),
        );
    }
}

/// `out[idx[k]] += xv · vals[k W]` for `k < n`, in order. Two weights per iteration: 6.5
/// instructions per weight instead of the portable loop's 11 to 12 (measured on
/// LeNet-300-100's first layer by input).
///
/// # Safety
/// `idx` points to `n` readable indices and `vals` to `n W` readable words; `out + idx[k]` is
/// a writable f32 for every `k` that nothing else accesses during the call.
#[inline(always)]
unsafe fn scatter_raw<const W: usize>(
    idx: *const u16,
    vals: *const f32,
    n: usize,
    xv: f32,
    out: *mut f32,
) {
    // SAFETY: the caller's contract: the loop reads `n` indices and records and reads and
    // writes the `out` word of each index. The two outputs of an iteration are distinct when
    // the indices strictly increase (one line of a validated layer), so the loads and stores
    // keep the sequential result; else only the sums are wrong. Only the named registers and
    // the flags are written.
    unsafe {
        // One weight: its record is the first `W` words of the registers from `s2`.
        macro_rules! scatter_loop {
            ($one:literal, $pair:literal, $second:literal) => {
                asm!(
                    "vmov s0, {xv}",
                    "tst {n}, #1",
                    "beq 2f",
                    "ldrh {c0}, [{idx}], #2",
                    "add {c0}, {out}, {c0}, lsl #2",
                    "vldr s1, [{c0}]",
                    concat!("vldmia {vals}!, ", $one),
                    "vmla.f32 s1, s0, s2",
                    "vstr s1, [{c0}]",
                    "2:",
                    "lsrs {n}, {n}, #1",
                    "beq 4f",
                    "3:",
                    "ldrh {c0}, [{idx}], #2",
                    "ldrh {c1}, [{idx}], #2",
                    "add {c0}, {out}, {c0}, lsl #2",
                    "add {c1}, {out}, {c1}, lsl #2",
                    "vldr s1, [{c0}]",
                    "vldr s6, [{c1}]",
                    concat!("vldmia {vals}!, ", $pair),
                    "vmla.f32 s1, s0, s2",
                    concat!("vmla.f32 s6, s0, ", $second),
                    "vstr s1, [{c0}]",
                    "vstr s6, [{c1}]",
                    "subs {n}, {n}, #1",
                    "bne 3b",
                    "4:",
                    xv = in(reg) xv.to_bits(),
                    n = inout(reg) n => _,
                    idx = inout(reg) idx => _,
                    vals = inout(reg) vals => _,
                    out = in(reg) out,
                    c0 = out(reg) _,
                    c1 = out(reg) _,
                    out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _,
                    out("s5") _, out("s6") _,
                    options(nostack),
                )
            };
        }
        if W == 1 {
            scatter_loop!("{{s2}}", "{{s2-s3}}", "s3");
        } else {
            scatter_loop!("{{s2-s3}}", "{{s2-s5}}", "s4");
        }
    }
}

/// See [`super::accumulate_rows`]: each row in blocks of 8 samples, then 4, then the portable
/// kernel for the rest, with the bounds checked once for the layer instead of once per row
/// and block.
#[inline(always)]
pub(crate) fn accumulate_rows(
    rows: Lines<'_, 2>,
    (x, squares): (&[f32], &[f32]),
    s: usize,
    bias: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) {
    let units = rows.count();
    let inputs = rows.bound.checked_mul(s);
    let fits = units
        .checked_mul(s)
        .is_some_and(|len| len <= mean.len() && len <= var.len())
        && bias.len() >= units
        && inputs.is_some_and(|len| len <= x.len() && len <= squares.len());
    if !fits {
        return portable::accumulate_rows(rows, (x, squares), s, bias, mean, var);
    }
    let stride = s * 4;
    // From an input's block to its squares' block, in bytes (wrapping: only added in `block`).
    let offset = (squares.as_ptr() as usize).wrapping_sub(x.as_ptr() as usize);
    for (j, (bounds, &b)) in rows.pointers.windows(2).zip(bias).enumerate() {
        let (start, end) = (bounds[0] as usize, bounds[1] as usize);
        let Some(n) = end.checked_sub(start) else {
            continue;
        };
        let mut first = 0;
        // SAFETY: the row's `n` indices and `2 n` record words lie inside the arrays (pointers
        // non-decreasing by validation, the last checked by `Lines::of`); each index `c` is
        // below `rows.bound`, and `rows.bound * s <= x.len(), squares.len()`, so a block of 8
        // (or 4) words from `c * s + first` with `first + 8 <= s` (or 4) lies inside `x` and
        // inside `squares`; `j * s + first` plus the block is below
        // `units * s <= mean.len(), var.len()` (checked above), and both are borrowed mutably.
        unsafe {
            let (idx, vals) = (
                rows.indices.as_ptr().add(start),
                rows.values.as_ptr().add(2 * start),
            );
            let (x, mean, var) = (
                x.as_ptr(),
                mean.as_mut_ptr().add(j * s),
                var.as_mut_ptr().add(j * s),
            );
            let run = |size: usize, first: usize| match size {
                8 => block::<8>(
                    idx,
                    vals,
                    n,
                    x.add(first),
                    offset,
                    stride,
                    b,
                    mean.add(first),
                    var.add(first),
                ),
                _ => block::<4>(
                    idx,
                    vals,
                    n,
                    x.add(first),
                    offset,
                    stride,
                    b,
                    mean.add(first),
                    var.add(first),
                ),
            };
            while first + 8 <= s {
                run(8, first);
                first += 8;
            }
            if first + 4 <= s {
                run(4, first);
                first += 4;
            }
        }
        if first < s {
            if let Some(line) = rows.line(j) {
                let range = j * s + first..(j + 1) * s;
                portable::accumulate(
                    line,
                    (x, squares),
                    s,
                    first,
                    b,
                    &mut mean[range.clone()],
                    &mut var[range],
                );
            }
        }
    }
}

/// See [`super::square_into`]: eight values per `vldmia`, eight `vmul.f32`, one `vstmia`.
#[inline(always)]
pub(crate) fn square_into(x: &[f32], squares: &mut [f32]) {
    let n = x.len().min(squares.len());
    let (x, squares) = (&x[..n], &mut squares[..n]);
    let mut blocks = squares.chunks_exact_mut(8);
    let mut inputs = x.chunks_exact(8);
    for (out, block) in (&mut blocks).zip(&mut inputs) {
        // SAFETY: `block` and `out` are 8 words each (`out` borrowed mutably); the block reads
        // and writes exactly those and only the named registers.
        unsafe {
            asm!(
                "vldmia {x}, {{s0-s7}}",
                "vmul.f32 s0, s0, s0",
                "vmul.f32 s1, s1, s1",
                "vmul.f32 s2, s2, s2",
                "vmul.f32 s3, s3, s3",
                "vmul.f32 s4, s4, s4",
                "vmul.f32 s5, s5, s5",
                "vmul.f32 s6, s6, s6",
                "vmul.f32 s7, s7, s7",
                "vstmia {out}, {{s0-s7}}",
                x = in(reg) block.as_ptr(),
                out = in(reg) out.as_mut_ptr(),
                out("s0") _, out("s1") _, out("s2") _, out("s3") _,
                out("s4") _, out("s5") _, out("s6") _, out("s7") _,
                options(nostack, preserves_flags),
            );
        }
    }
    for (q, &v) in blocks.into_remainder().iter_mut().zip(inputs.remainder()) {
        *q = v * v;
    }
}

/// One row's sums over a block of `B` (8 or 4) samples: `mean[m] = bias + Σ_k θ_k x_m` and
/// `var[m] = Σ_k σ²_k q_m` where `x_m` is the word `m` from `x + idx[k] * stride` bytes and
/// `q_m`, its square, the word `m` from `squares` bytes further. The block of 8 holds its sums
/// in `s0`-`s15` and an input block (then its squares) in `s16`-`s23`. Per weight and block of
/// 8: one index load, the address `mla` and `add`, three `vldmia`, 16 `vmla` and the loop step,
/// 2.9 instructions per weight and sample (3.75 when the squares were taken here, the portable
/// loop 6.25).
///
/// # Safety
/// `idx` points to `n` readable indices and `vals` to `2 n` readable words; for every index `c`,
/// `B` words from `x + c * stride` bytes and from `squares` bytes further are readable; `mean`
/// and `var` point to `B` writable words each that nothing else accesses during the call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<const B: usize>(
    idx: *const u16,
    vals: *const f32,
    n: usize,
    x: *const f32,
    squares: usize,
    stride: usize,
    bias: f32,
    mean: *mut f32,
    var: *mut f32,
) {
    // SAFETY: the caller's contract: the loop reads `n` indices, `n` records and a block of `B`
    // words per index, and writes `B` words to each of `mean` and `var`. Only the named
    // registers and the flags are written.
    unsafe {
        if B == 8 {
            asm!(
                "vmov s0, {bias}",
                "vmov.f32 s1, s0",
                "vmov.f32 s2, s0",
                "vmov.f32 s3, s0",
                "vmov.f32 s4, s0",
                "vmov.f32 s5, s0",
                "vmov.f32 s6, s0",
                "vmov.f32 s7, s0",
                "vmov s8, {zero}",
                "vmov.f32 s9, s8",
                "vmov.f32 s10, s8",
                "vmov.f32 s11, s8",
                "vmov.f32 s12, s8",
                "vmov.f32 s13, s8",
                "vmov.f32 s14, s8",
                "vmov.f32 s15, s8",
                "cmp {n}, #0",
                "beq 4f",
                "3:",
                "ldrh {c}, [{idx}], #2",
                "mla {c}, {c}, {stride}, {x}",
                "vldmia {c}, {{s16-s23}}",
                "vldmia {vals}!, {{s24-s25}}",
                "vmla.f32 s0, s16, s24",
                "vmla.f32 s1, s17, s24",
                "vmla.f32 s2, s18, s24",
                "vmla.f32 s3, s19, s24",
                "vmla.f32 s4, s20, s24",
                "vmla.f32 s5, s21, s24",
                "vmla.f32 s6, s22, s24",
                "vmla.f32 s7, s23, s24",
                "add {c}, {c}, {squares}",
                "vldmia {c}, {{s16-s23}}",
                "vmla.f32 s8, s16, s25",
                "vmla.f32 s9, s17, s25",
                "vmla.f32 s10, s18, s25",
                "vmla.f32 s11, s19, s25",
                "vmla.f32 s12, s20, s25",
                "vmla.f32 s13, s21, s25",
                "vmla.f32 s14, s22, s25",
                "vmla.f32 s15, s23, s25",
                "subs {n}, {n}, #1",
                "bne 3b",
                "4:",
                "vstmia {mean}, {{s0-s7}}",
                "vstmia {var}, {{s8-s15}}",
                bias = in(reg) bias.to_bits(),
                zero = in(reg) 0u32,
                n = inout(reg) n => _,
                idx = inout(reg) idx => _,
                vals = inout(reg) vals => _,
                x = in(reg) x,
                stride = in(reg) stride,
                squares = in(reg) squares,
                mean = in(reg) mean,
                var = in(reg) var,
                c = out(reg) _,
                out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _, out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _, out("s24") _, out("s25") _,
                options(nostack),
            );
        } else {
            asm!(
                "vmov s0, {bias}",
                "vmov.f32 s1, s0",
                "vmov.f32 s2, s0",
                "vmov.f32 s3, s0",
                "vmov s4, {zero}",
                "vmov.f32 s5, s4",
                "vmov.f32 s6, s4",
                "vmov.f32 s7, s4",
                "cmp {n}, #0",
                "beq 4f",
                "3:",
                "ldrh {c}, [{idx}], #2",
                "mla {c}, {c}, {stride}, {x}",
                "vldmia {c}, {{s8-s11}}",
                "vldmia {vals}!, {{s12-s13}}",
                "vmla.f32 s0, s8, s12",
                "vmla.f32 s1, s9, s12",
                "vmla.f32 s2, s10, s12",
                "vmla.f32 s3, s11, s12",
                "add {c}, {c}, {squares}",
                "vldmia {c}, {{s8-s11}}",
                "vmla.f32 s4, s8, s13",
                "vmla.f32 s5, s9, s13",
                "vmla.f32 s6, s10, s13",
                "vmla.f32 s7, s11, s13",
                "subs {n}, {n}, #1",
                "bne 3b",
                "4:",
                "vstmia {mean}, {{s0-s3}}",
                "vstmia {var}, {{s4-s7}}",
                bias = in(reg) bias.to_bits(),
                zero = in(reg) 0u32,
                n = inout(reg) n => _,
                idx = inout(reg) idx => _,
                vals = inout(reg) vals => _,
                x = in(reg) x,
                stride = in(reg) stride,
                squares = in(reg) squares,
                mean = in(reg) mean,
                var = in(reg) var,
                c = out(reg) _,
                out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _,
                options(nostack),
            );
        }
    }
}

/// See [`super::sqrt_in_place`]: eight values per `vldmia`, eight `vsqrt.f32` and one
/// `vstmia` (10 instructions per 8 values, against 5 per value through [`sqrtf`]).
#[inline(always)]
pub(crate) fn sqrt_in_place(values: &mut [f32]) {
    let mut blocks = values.chunks_exact_mut(8);
    for block in &mut blocks {
        // SAFETY: `block` is 8 words, borrowed mutably; the block reads and writes exactly
        // those and only the named registers.
        unsafe {
            asm!(
                "vldmia {p}, {{s0-s7}}",
                "vsqrt.f32 s0, s0",
                "vsqrt.f32 s1, s1",
                "vsqrt.f32 s2, s2",
                "vsqrt.f32 s3, s3",
                "vsqrt.f32 s4, s4",
                "vsqrt.f32 s5, s5",
                "vsqrt.f32 s6, s6",
                "vsqrt.f32 s7, s7",
                "vstmia {p}, {{s0-s7}}",
                p = in(reg) block.as_mut_ptr(),
                out("s0") _, out("s1") _, out("s2") _, out("s3") _,
                out("s4") _, out("s5") _, out("s6") _, out("s7") _,
                options(nostack, preserves_flags),
            );
        }
    }
    for v in blocks.into_remainder() {
        *v = sqrtf(*v);
    }
}

/// See [`super::sqrtf`]: `vsqrt.f32`, three instructions with the register moves, where
/// `libm::sqrtf`'s software routine costs about 50 (`scripts/qemu-profile.py` on the demo).
#[inline(always)]
pub(crate) fn sqrtf(x: f32) -> f32 {
    let bits: u32;
    // SAFETY: the block moves the value through `s0` (a named clobber) and touches no memory,
    // no stack and no flags. Every hard-float Cortex-M core has `vsqrt.f32`.
    unsafe {
        asm!(
            "vmov s0, {value}",
            "vsqrt.f32 s0, s0",
            "vmov {value}, s0",
            value = inout(reg) x.to_bits() => bits,
            out("s0") _,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    f32::from_bits(bits)
}

/// See [`super::conv3_mean`]: output-stationary. For each output channel, blocks of up to three
/// output rows hold their 21 sums in `s0`-`s20` across all of the channel's taps; a tap loads
/// each input row it reaches with one `vldmia` (`s21`-`s27`) and multiply-adds it into the
/// row's sums, shifted by its column (`kx`), so clipping at the left and right edges costs
/// nothing. The top block enters a tap of the kernel's first row at its second row, and the
/// last output row is a block of its own that skips the kernel's last row: no tap ever reads
/// outside its channel. Each output still receives the bias, then its taps in stored order
/// (the portable weight-stationary loop's order), so the bits are the same.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3_mean(
    g: &Geometry,
    row_ptr: &[u32],
    taps: &[u32],
    values: &[f32],
    words: usize,
    x: &[f32],
    bias: &[f32],
    out: &mut [f32],
) -> bool {
    let outputs = g.output[0];
    let map = g.output[1] * g.output[2];
    if !conv3_fits(g, row_ptr, taps, values, words, x)
        || bias.len() < outputs
        || out.len() < outputs * map
    {
        return false;
    }
    for (co, &b) in bias[..outputs].iter().enumerate() {
        let out_map = &mut out[co * map..(co + 1) * map];
        if !conv3_channel(g, row_ptr, taps, values, words, x, co, b, false, out_map) {
            return false;
        }
    }
    true
}

/// See [`super::conv3_moments`]: the mean map as in [`conv3_mean`], then the variance map by
/// the same blocks with σ² as the weight and each input row squared in its registers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3_moments(
    g: &Geometry,
    row_ptr: &[u32],
    taps: &[u32],
    values: &[f32],
    x: &[f32],
    co: usize,
    bias: f32,
    (mean, var): (&mut [f32], &mut [f32]),
) -> bool {
    conv3_fits(g, row_ptr, taps, values, 2, x)
        && conv3_channel(g, row_ptr, taps, values, 2, x, co, bias, false, mean)
        && conv3_channel(g, row_ptr, taps, values, 2, x, co, 0.0, true, var)
}

/// Whether [`conv3_channel`] runs this layer: the geometry, the record width and the lengths
/// of the tap arrays and of the input.
fn conv3_fits(
    g: &Geometry,
    row_ptr: &[u32],
    taps: &[u32],
    values: &[f32],
    words: usize,
    x: &[f32],
) -> bool {
    let [channels, h, w] = g.input;
    g.window == [3, 3]
        && g.stride == 1
        && g.padding == 1
        && w == CONV3_WIDTH
        && h >= 4
        && g.output[1] == h
        && g.output[2] == w
        && (words == 1 || words == 2)
        && row_ptr.len() == g.output[0] + 1
        && x.len() >= channels * h * w
        && row_ptr
            .last()
            .is_some_and(|&last| last as usize <= taps.len())
        && values.len() >= taps.len() * words
}

/// One output channel `co` of a layer that [`conv3_fits`]: `out[oy, ox] = init + Σ w x` over
/// the channel's taps in stored order, where `w` is θ and `x` the input (`variance` false), or
/// `w` is σ² and `x` the input squared (`variance` true, `words` 2). `false`, having written
/// nothing, if `out` is shorter than the map or `co` has no taps entry.
#[allow(clippy::too_many_arguments)]
fn conv3_channel(
    g: &Geometry,
    row_ptr: &[u32],
    taps: &[u32],
    values: &[f32],
    words: usize,
    x: &[f32],
    co: usize,
    init: f32,
    variance: bool,
    out: &mut [f32],
) -> bool {
    let [_, h, w] = g.input;
    let map = h * w;
    let (Some(&start), Some(&end)) = (row_ptr.get(co), row_ptr.get(co + 1)) else {
        return false;
    };
    let (start, end) = (start as usize, end as usize);
    let Some(n) = end.checked_sub(start) else {
        return false;
    };
    if out.len() < map || (variance && words != 2) {
        return false;
    }
    // Blocks: rows 0..3 (top), then up to three rows at a time before the last row, then
    // the last row.
    let mut oy = 0;
    while oy < h {
        let (rows, mode) = if oy == 0 {
            (3, 0)
        } else if oy == h - 1 {
            (1, 2)
        } else {
            ((h - 1 - oy).min(3), 1)
        };
        // SAFETY: the channel's `n` taps and `n * words` record words lie inside the arrays
        // (pointers non-decreasing by validation, the last checked by `conv3_fits`).
        // Validation proved every tap's channel `ci < channels`, `ky < 3` and `kx < 3`. A tap
        // reads input rows `oy + r + ky - 1` of channel `ci` for the block's rows `r`, 7 words
        // each: the top block (`oy = 0`) skips `r = 0` when `ky = 0`, every other block has
        // `oy >= 1`; every block but the last ends at or before row `h - 1`, so
        // `oy + r + ky - 1 <= h - 1`, and the last block (`oy = h - 1`, one row) skips
        // `ky = 2`. So every row read lies in `x[..channels * h * 7]` (checked by
        // `conv3_fits`). The block writes `rows * 7` words at `out[oy * 7..]`, inside `out`
        // (checked above, borrowed mutably). The base pointer `x + (oy - 1) * 7` is only
        // formed as an integer (wrapping), never read below `x`.
        unsafe {
            conv3_block(
                taps.as_ptr().add(start),
                values.as_ptr().add(start * words),
                n,
                (x.as_ptr() as usize).wrapping_add(oy.wrapping_sub(1).wrapping_mul(4 * w)),
                4 * map,
                init,
                out.as_mut_ptr().add(oy * w),
                (rows, mode, words, variance),
            );
        }
        oy += rows;
    }
    true
}

/// The only row width [`conv3_mean`] runs (the early-exit ResNet's 7x7 maps): three rows of
/// sums and one row of inputs fill 28 of the 32 FPU registers.
const CONV3_WIDTH: usize = 7;

/// One block of `rows` output rows of one channel (see [`conv3_mean`]): `mode` 0 is the top
/// block, 1 a middle block, 2 the last row; `words` is the record width.
///
/// # Safety
/// `taps` points to `n` readable taps and `vals` to `n * words` readable words; for every tap
/// `(ci, ky, kx)` and every row `r` the block runs for it (see [`conv3_mean`]), the 7 words at
/// `base + ci * plane + (ky + r) * 28` bytes are readable; `out` points to `7 * rows` writable
/// words that nothing else accesses during the call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn conv3_block(
    taps: *const u32,
    vals: *const f32,
    n: usize,
    base: usize,
    plane: usize,
    bias: f32,
    out: *mut f32,
    (rows, mode, words, variance): (usize, u8, usize, bool),
) {
    let row = 4 * CONV3_WIDTH;
    // SAFETY: the caller's contract: per tap the block reads its record and, for each row it
    // runs, one input row of 7 words; it writes `7 * rows` words at `out`. Only the named
    // registers and the flags are written.
    unsafe {
        macro_rules! conv_asm {
            ($($line:expr),* $(,)?) => {
                asm!(
                    $($line),*,
                    t = inout(reg) bias.to_bits() => _,
                    n = inout(reg) n => _,
                    taps = inout(reg) taps => _,
                    vals = inout(reg) vals => _,
                    base = in(reg) base,
                    plane = in(reg) plane,
                    row = in(reg) row,
                    dst = in(reg) out,
                    a = out(reg) _,
                    c = out(reg) _,
                    out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _,
                    out("s5") _, out("s6") _, out("s7") _, out("s8") _, out("s9") _,
                    out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _,
                    out("s15") _, out("s16") _, out("s17") _, out("s18") _, out("s19") _,
                    out("s20") _, out("s21") _, out("s22") _, out("s23") _, out("s24") _,
                    out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _,
                    options(nostack),
                )
            };
        }
        macro_rules! blocks {
            ($wload:expr, $w:literal, $sq0:literal, $sq1:literal, $sq2:literal) => {{
                macro_rules! ld_next {
                    ($sq:literal) => {
                        concat!("vldmia {a}!, {{s21-s27}}", $sq)
                    };
                }
                macro_rules! ld_last {
                    ($sq:literal) => {
                        concat!("vldmia {a}, {{s21-s27}}", $sq)
                    };
                }
                match (rows, mode) {
                    (3, 0) => conv_asm!(
                        "vmov s0, {t}",
                        "vmov.f32 s1, s0",
                        "vmov.f32 s2, s0",
                        "vmov.f32 s3, s0",
                        "vmov.f32 s4, s0",
                        "vmov.f32 s5, s0",
                        "vmov.f32 s6, s0",
                        "vmov.f32 s7, s0",
                        "vmov.f32 s8, s0",
                        "vmov.f32 s9, s0",
                        "vmov.f32 s10, s0",
                        "vmov.f32 s11, s0",
                        "vmov.f32 s12, s0",
                        "vmov.f32 s13, s0",
                        "vmov.f32 s14, s0",
                        "vmov.f32 s15, s0",
                        "vmov.f32 s16, s0",
                        "vmov.f32 s17, s0",
                        "vmov.f32 s18, s0",
                        "vmov.f32 s19, s0",
                        "vmov.f32 s20, s0",
                        "cmp {n}, #0",
                        "beq 8f",
                        "2:",
                        "ldr {t}, [{taps}], #4",
                        $wload,
                        "lsrs {c}, {t}, #16",
                        "mla {a}, {c}, {plane}, {base}",
                        "ubfx {c}, {t}, #8, #8",
                        "mla {a}, {c}, {row}, {a}",
                        "cmp {c}, #0",
                        "beq 5f",
                        "uxtb {c}, {t}",
                        "cmp {c}, #1",
                        "beq 40f",
                        "bhi 50f",
                        "30:",
                        ld_next!($sq0),
                        concat!("vmla.f32 s1, s21, ", $w),
                        concat!("vmla.f32 s2, s22, ", $w),
                        concat!("vmla.f32 s3, s23, ", $w),
                        concat!("vmla.f32 s4, s24, ", $w),
                        concat!("vmla.f32 s5, s25, ", $w),
                        concat!("vmla.f32 s6, s26, ", $w),
                        "31:",
                        ld_next!($sq0),
                        concat!("vmla.f32 s8, s21, ", $w),
                        concat!("vmla.f32 s9, s22, ", $w),
                        concat!("vmla.f32 s10, s23, ", $w),
                        concat!("vmla.f32 s11, s24, ", $w),
                        concat!("vmla.f32 s12, s25, ", $w),
                        concat!("vmla.f32 s13, s26, ", $w),
                        "32:",
                        ld_last!($sq0),
                        concat!("vmla.f32 s15, s21, ", $w),
                        concat!("vmla.f32 s16, s22, ", $w),
                        concat!("vmla.f32 s17, s23, ", $w),
                        concat!("vmla.f32 s18, s24, ", $w),
                        concat!("vmla.f32 s19, s25, ", $w),
                        concat!("vmla.f32 s20, s26, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "40:",
                        ld_next!($sq1),
                        concat!("vmla.f32 s0, s21, ", $w),
                        concat!("vmla.f32 s1, s22, ", $w),
                        concat!("vmla.f32 s2, s23, ", $w),
                        concat!("vmla.f32 s3, s24, ", $w),
                        concat!("vmla.f32 s4, s25, ", $w),
                        concat!("vmla.f32 s5, s26, ", $w),
                        concat!("vmla.f32 s6, s27, ", $w),
                        "41:",
                        ld_next!($sq1),
                        concat!("vmla.f32 s7, s21, ", $w),
                        concat!("vmla.f32 s8, s22, ", $w),
                        concat!("vmla.f32 s9, s23, ", $w),
                        concat!("vmla.f32 s10, s24, ", $w),
                        concat!("vmla.f32 s11, s25, ", $w),
                        concat!("vmla.f32 s12, s26, ", $w),
                        concat!("vmla.f32 s13, s27, ", $w),
                        "42:",
                        ld_last!($sq1),
                        concat!("vmla.f32 s14, s21, ", $w),
                        concat!("vmla.f32 s15, s22, ", $w),
                        concat!("vmla.f32 s16, s23, ", $w),
                        concat!("vmla.f32 s17, s24, ", $w),
                        concat!("vmla.f32 s18, s25, ", $w),
                        concat!("vmla.f32 s19, s26, ", $w),
                        concat!("vmla.f32 s20, s27, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "50:",
                        ld_next!($sq2),
                        concat!("vmla.f32 s0, s22, ", $w),
                        concat!("vmla.f32 s1, s23, ", $w),
                        concat!("vmla.f32 s2, s24, ", $w),
                        concat!("vmla.f32 s3, s25, ", $w),
                        concat!("vmla.f32 s4, s26, ", $w),
                        concat!("vmla.f32 s5, s27, ", $w),
                        "51:",
                        ld_next!($sq2),
                        concat!("vmla.f32 s7, s22, ", $w),
                        concat!("vmla.f32 s8, s23, ", $w),
                        concat!("vmla.f32 s9, s24, ", $w),
                        concat!("vmla.f32 s10, s25, ", $w),
                        concat!("vmla.f32 s11, s26, ", $w),
                        concat!("vmla.f32 s12, s27, ", $w),
                        "52:",
                        ld_last!($sq2),
                        concat!("vmla.f32 s14, s22, ", $w),
                        concat!("vmla.f32 s15, s23, ", $w),
                        concat!("vmla.f32 s16, s24, ", $w),
                        concat!("vmla.f32 s17, s25, ", $w),
                        concat!("vmla.f32 s18, s26, ", $w),
                        concat!("vmla.f32 s19, s27, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "5:",
                        "add {a}, {a}, #28",
                        "uxtb {c}, {t}",
                        "cmp {c}, #1",
                        "beq 41b",
                        "bhi 51b",
                        "b 31b",
                        "7:",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "8:",
                        "vstmia {dst}, {{s0-s20}}",
                    ),
                    (3, 1) => conv_asm!(
                        "vmov s0, {t}",
                        "vmov.f32 s1, s0",
                        "vmov.f32 s2, s0",
                        "vmov.f32 s3, s0",
                        "vmov.f32 s4, s0",
                        "vmov.f32 s5, s0",
                        "vmov.f32 s6, s0",
                        "vmov.f32 s7, s0",
                        "vmov.f32 s8, s0",
                        "vmov.f32 s9, s0",
                        "vmov.f32 s10, s0",
                        "vmov.f32 s11, s0",
                        "vmov.f32 s12, s0",
                        "vmov.f32 s13, s0",
                        "vmov.f32 s14, s0",
                        "vmov.f32 s15, s0",
                        "vmov.f32 s16, s0",
                        "vmov.f32 s17, s0",
                        "vmov.f32 s18, s0",
                        "vmov.f32 s19, s0",
                        "vmov.f32 s20, s0",
                        "cmp {n}, #0",
                        "beq 8f",
                        "2:",
                        "ldr {t}, [{taps}], #4",
                        $wload,
                        "lsrs {c}, {t}, #16",
                        "mla {a}, {c}, {plane}, {base}",
                        "ubfx {c}, {t}, #8, #8",
                        "mla {a}, {c}, {row}, {a}",
                        "uxtb {c}, {t}",
                        "cmp {c}, #1",
                        "beq 40f",
                        "bhi 50f",
                        "30:",
                        ld_next!($sq0),
                        concat!("vmla.f32 s1, s21, ", $w),
                        concat!("vmla.f32 s2, s22, ", $w),
                        concat!("vmla.f32 s3, s23, ", $w),
                        concat!("vmla.f32 s4, s24, ", $w),
                        concat!("vmla.f32 s5, s25, ", $w),
                        concat!("vmla.f32 s6, s26, ", $w),
                        "31:",
                        ld_next!($sq0),
                        concat!("vmla.f32 s8, s21, ", $w),
                        concat!("vmla.f32 s9, s22, ", $w),
                        concat!("vmla.f32 s10, s23, ", $w),
                        concat!("vmla.f32 s11, s24, ", $w),
                        concat!("vmla.f32 s12, s25, ", $w),
                        concat!("vmla.f32 s13, s26, ", $w),
                        "32:",
                        ld_last!($sq0),
                        concat!("vmla.f32 s15, s21, ", $w),
                        concat!("vmla.f32 s16, s22, ", $w),
                        concat!("vmla.f32 s17, s23, ", $w),
                        concat!("vmla.f32 s18, s24, ", $w),
                        concat!("vmla.f32 s19, s25, ", $w),
                        concat!("vmla.f32 s20, s26, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "40:",
                        ld_next!($sq1),
                        concat!("vmla.f32 s0, s21, ", $w),
                        concat!("vmla.f32 s1, s22, ", $w),
                        concat!("vmla.f32 s2, s23, ", $w),
                        concat!("vmla.f32 s3, s24, ", $w),
                        concat!("vmla.f32 s4, s25, ", $w),
                        concat!("vmla.f32 s5, s26, ", $w),
                        concat!("vmla.f32 s6, s27, ", $w),
                        "41:",
                        ld_next!($sq1),
                        concat!("vmla.f32 s7, s21, ", $w),
                        concat!("vmla.f32 s8, s22, ", $w),
                        concat!("vmla.f32 s9, s23, ", $w),
                        concat!("vmla.f32 s10, s24, ", $w),
                        concat!("vmla.f32 s11, s25, ", $w),
                        concat!("vmla.f32 s12, s26, ", $w),
                        concat!("vmla.f32 s13, s27, ", $w),
                        "42:",
                        ld_last!($sq1),
                        concat!("vmla.f32 s14, s21, ", $w),
                        concat!("vmla.f32 s15, s22, ", $w),
                        concat!("vmla.f32 s16, s23, ", $w),
                        concat!("vmla.f32 s17, s24, ", $w),
                        concat!("vmla.f32 s18, s25, ", $w),
                        concat!("vmla.f32 s19, s26, ", $w),
                        concat!("vmla.f32 s20, s27, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "50:",
                        ld_next!($sq2),
                        concat!("vmla.f32 s0, s22, ", $w),
                        concat!("vmla.f32 s1, s23, ", $w),
                        concat!("vmla.f32 s2, s24, ", $w),
                        concat!("vmla.f32 s3, s25, ", $w),
                        concat!("vmla.f32 s4, s26, ", $w),
                        concat!("vmla.f32 s5, s27, ", $w),
                        "51:",
                        ld_next!($sq2),
                        concat!("vmla.f32 s7, s22, ", $w),
                        concat!("vmla.f32 s8, s23, ", $w),
                        concat!("vmla.f32 s9, s24, ", $w),
                        concat!("vmla.f32 s10, s25, ", $w),
                        concat!("vmla.f32 s11, s26, ", $w),
                        concat!("vmla.f32 s12, s27, ", $w),
                        "52:",
                        ld_last!($sq2),
                        concat!("vmla.f32 s14, s22, ", $w),
                        concat!("vmla.f32 s15, s23, ", $w),
                        concat!("vmla.f32 s16, s24, ", $w),
                        concat!("vmla.f32 s17, s25, ", $w),
                        concat!("vmla.f32 s18, s26, ", $w),
                        concat!("vmla.f32 s19, s27, ", $w),
                        "7:",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "8:",
                        "vstmia {dst}, {{s0-s20}}",
                    ),
                    (2, 1) => conv_asm!(
                        "vmov s0, {t}",
                        "vmov.f32 s1, s0",
                        "vmov.f32 s2, s0",
                        "vmov.f32 s3, s0",
                        "vmov.f32 s4, s0",
                        "vmov.f32 s5, s0",
                        "vmov.f32 s6, s0",
                        "vmov.f32 s7, s0",
                        "vmov.f32 s8, s0",
                        "vmov.f32 s9, s0",
                        "vmov.f32 s10, s0",
                        "vmov.f32 s11, s0",
                        "vmov.f32 s12, s0",
                        "vmov.f32 s13, s0",
                        "cmp {n}, #0",
                        "beq 8f",
                        "2:",
                        "ldr {t}, [{taps}], #4",
                        $wload,
                        "lsrs {c}, {t}, #16",
                        "mla {a}, {c}, {plane}, {base}",
                        "ubfx {c}, {t}, #8, #8",
                        "mla {a}, {c}, {row}, {a}",
                        "uxtb {c}, {t}",
                        "cmp {c}, #1",
                        "beq 40f",
                        "bhi 50f",
                        "30:",
                        ld_next!($sq0),
                        concat!("vmla.f32 s1, s21, ", $w),
                        concat!("vmla.f32 s2, s22, ", $w),
                        concat!("vmla.f32 s3, s23, ", $w),
                        concat!("vmla.f32 s4, s24, ", $w),
                        concat!("vmla.f32 s5, s25, ", $w),
                        concat!("vmla.f32 s6, s26, ", $w),
                        "31:",
                        ld_last!($sq0),
                        concat!("vmla.f32 s8, s21, ", $w),
                        concat!("vmla.f32 s9, s22, ", $w),
                        concat!("vmla.f32 s10, s23, ", $w),
                        concat!("vmla.f32 s11, s24, ", $w),
                        concat!("vmla.f32 s12, s25, ", $w),
                        concat!("vmla.f32 s13, s26, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "40:",
                        ld_next!($sq1),
                        concat!("vmla.f32 s0, s21, ", $w),
                        concat!("vmla.f32 s1, s22, ", $w),
                        concat!("vmla.f32 s2, s23, ", $w),
                        concat!("vmla.f32 s3, s24, ", $w),
                        concat!("vmla.f32 s4, s25, ", $w),
                        concat!("vmla.f32 s5, s26, ", $w),
                        concat!("vmla.f32 s6, s27, ", $w),
                        "41:",
                        ld_last!($sq1),
                        concat!("vmla.f32 s7, s21, ", $w),
                        concat!("vmla.f32 s8, s22, ", $w),
                        concat!("vmla.f32 s9, s23, ", $w),
                        concat!("vmla.f32 s10, s24, ", $w),
                        concat!("vmla.f32 s11, s25, ", $w),
                        concat!("vmla.f32 s12, s26, ", $w),
                        concat!("vmla.f32 s13, s27, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "50:",
                        ld_next!($sq2),
                        concat!("vmla.f32 s0, s22, ", $w),
                        concat!("vmla.f32 s1, s23, ", $w),
                        concat!("vmla.f32 s2, s24, ", $w),
                        concat!("vmla.f32 s3, s25, ", $w),
                        concat!("vmla.f32 s4, s26, ", $w),
                        concat!("vmla.f32 s5, s27, ", $w),
                        "51:",
                        ld_last!($sq2),
                        concat!("vmla.f32 s7, s22, ", $w),
                        concat!("vmla.f32 s8, s23, ", $w),
                        concat!("vmla.f32 s9, s24, ", $w),
                        concat!("vmla.f32 s10, s25, ", $w),
                        concat!("vmla.f32 s11, s26, ", $w),
                        concat!("vmla.f32 s12, s27, ", $w),
                        "7:",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "8:",
                        "vstmia {dst}, {{s0-s13}}",
                    ),
                    (1, 1) => conv_asm!(
                        "vmov s0, {t}",
                        "vmov.f32 s1, s0",
                        "vmov.f32 s2, s0",
                        "vmov.f32 s3, s0",
                        "vmov.f32 s4, s0",
                        "vmov.f32 s5, s0",
                        "vmov.f32 s6, s0",
                        "cmp {n}, #0",
                        "beq 8f",
                        "2:",
                        "ldr {t}, [{taps}], #4",
                        $wload,
                        "lsrs {c}, {t}, #16",
                        "mla {a}, {c}, {plane}, {base}",
                        "ubfx {c}, {t}, #8, #8",
                        "mla {a}, {c}, {row}, {a}",
                        "uxtb {c}, {t}",
                        "cmp {c}, #1",
                        "beq 40f",
                        "bhi 50f",
                        "30:",
                        ld_last!($sq0),
                        concat!("vmla.f32 s1, s21, ", $w),
                        concat!("vmla.f32 s2, s22, ", $w),
                        concat!("vmla.f32 s3, s23, ", $w),
                        concat!("vmla.f32 s4, s24, ", $w),
                        concat!("vmla.f32 s5, s25, ", $w),
                        concat!("vmla.f32 s6, s26, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "40:",
                        ld_last!($sq1),
                        concat!("vmla.f32 s0, s21, ", $w),
                        concat!("vmla.f32 s1, s22, ", $w),
                        concat!("vmla.f32 s2, s23, ", $w),
                        concat!("vmla.f32 s3, s24, ", $w),
                        concat!("vmla.f32 s4, s25, ", $w),
                        concat!("vmla.f32 s5, s26, ", $w),
                        concat!("vmla.f32 s6, s27, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "50:",
                        ld_last!($sq2),
                        concat!("vmla.f32 s0, s22, ", $w),
                        concat!("vmla.f32 s1, s23, ", $w),
                        concat!("vmla.f32 s2, s24, ", $w),
                        concat!("vmla.f32 s3, s25, ", $w),
                        concat!("vmla.f32 s4, s26, ", $w),
                        concat!("vmla.f32 s5, s27, ", $w),
                        "7:",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "8:",
                        "vstmia {dst}, {{s0-s6}}",
                    ),
                    (1, 2) => conv_asm!(
                        "vmov s0, {t}",
                        "vmov.f32 s1, s0",
                        "vmov.f32 s2, s0",
                        "vmov.f32 s3, s0",
                        "vmov.f32 s4, s0",
                        "vmov.f32 s5, s0",
                        "vmov.f32 s6, s0",
                        "cmp {n}, #0",
                        "beq 8f",
                        "2:",
                        "ldr {t}, [{taps}], #4",
                        $wload,
                        "lsrs {c}, {t}, #16",
                        "mla {a}, {c}, {plane}, {base}",
                        "ubfx {c}, {t}, #8, #8",
                        "mla {a}, {c}, {row}, {a}",
                        "cmp {c}, #2",
                        "beq 7f",
                        "uxtb {c}, {t}",
                        "cmp {c}, #1",
                        "beq 40f",
                        "bhi 50f",
                        "30:",
                        ld_last!($sq0),
                        concat!("vmla.f32 s1, s21, ", $w),
                        concat!("vmla.f32 s2, s22, ", $w),
                        concat!("vmla.f32 s3, s23, ", $w),
                        concat!("vmla.f32 s4, s24, ", $w),
                        concat!("vmla.f32 s5, s25, ", $w),
                        concat!("vmla.f32 s6, s26, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "40:",
                        ld_last!($sq1),
                        concat!("vmla.f32 s0, s21, ", $w),
                        concat!("vmla.f32 s1, s22, ", $w),
                        concat!("vmla.f32 s2, s23, ", $w),
                        concat!("vmla.f32 s3, s24, ", $w),
                        concat!("vmla.f32 s4, s25, ", $w),
                        concat!("vmla.f32 s5, s26, ", $w),
                        concat!("vmla.f32 s6, s27, ", $w),
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "b 8f",
                        "50:",
                        ld_last!($sq2),
                        concat!("vmla.f32 s0, s22, ", $w),
                        concat!("vmla.f32 s1, s23, ", $w),
                        concat!("vmla.f32 s2, s24, ", $w),
                        concat!("vmla.f32 s3, s25, ", $w),
                        concat!("vmla.f32 s4, s26, ", $w),
                        concat!("vmla.f32 s5, s27, ", $w),
                        "7:",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        "8:",
                        "vstmia {dst}, {{s0-s6}}",
                    ),
                    _ => {}
                }
            }};
        }
        match (words, variance) {
            (1, false) => blocks!("vldmia {vals}!, {{s28}}", "s28", "", "", ""),
            (_, false) => blocks!("vldmia {vals}!, {{s28-s29}}", "s28", "", "", ""),
            // The variance form: σ² (the record's second word, `s29`) as the weight, the input
            // values the tap's column uses squared in their registers after the row's load
            // (`x * x` rounded, as the portable `xv * xv * σ²`): s21-s26 for `kx` 0, s21-s27
            // for 1, s22-s27 for 2.
            (_, true) => blocks!(
                "vldmia {vals}!, {{s28-s29}}",
                "s29",
                "\nvmul.f32 s21, s21, s21\nvmul.f32 s22, s22, s22\nvmul.f32 s23, s23, s23\nvmul.f32 s24, s24, s24\nvmul.f32 s25, s25, s25\nvmul.f32 s26, s26, s26",
                "\nvmul.f32 s21, s21, s21\nvmul.f32 s22, s22, s22\nvmul.f32 s23, s23, s23\nvmul.f32 s24, s24, s24\nvmul.f32 s25, s25, s25\nvmul.f32 s26, s26, s26\nvmul.f32 s27, s27, s27",
                "\nvmul.f32 s22, s22, s22\nvmul.f32 s23, s23, s23\nvmul.f32 s24, s24, s24\nvmul.f32 s25, s25, s25\nvmul.f32 s26, s26, s26\nvmul.f32 s27, s27, s27"
            ),
        }
    }
}
