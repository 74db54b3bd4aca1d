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

use super::{portable, Line};

/// See [`super::dot`]. Two weights per iteration: 5 instructions per weight instead of the
/// portable loop's 10 (index bounds check, index arithmetic, separate pointer steps); measured
/// on LeNet-300-100's mean-weights pass (layers 2 and 3, 1,030 weights), see BENCHMARKS.md.
#[inline(always)]
pub(crate) fn dot<const W: usize>(line: Line<'_, W>, x: &[f32], bias: f32) -> f32 {
    if x.len() < line.bound() {
        return portable::dot(line, x, bias);
    }
    let n = line.indices().len();
    let mut acc = bias.to_bits();
    // SAFETY: every index of a `Line` is below `line.bound()` (model validation, see
    // `super::Line`), and `x.len() >= line.bound()` was checked above, so each `x` address
    // read is in bounds; `values` holds `n * W` words (checked when the line was made), and
    // the loop reads exactly `n` indices and `n` records. The block writes only the named
    // registers (and the flags).
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
                    idx = inout(reg) line.indices().as_ptr() => _,
                    vals = inout(reg) line.values().as_ptr() => _,
                    x = in(reg) x.as_ptr(),
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

/// See [`super::scatter`]. Two weights per iteration: 6.5 instructions per weight instead of
/// the portable loop's 11 to 12 (measured on LeNet-300-100's first layer by input).
#[inline(always)]
pub(crate) fn scatter<const W: usize>(line: Line<'_, W>, xv: f32, out: &mut [f32]) {
    if out.len() < line.bound() {
        return portable::scatter(line, xv, out);
    }
    let n = line.indices().len();
    // SAFETY: every index of a `Line` is below `line.bound() <= out.len()` (checked above), so
    // each `out` address read and written is in bounds, and `out` is borrowed mutably, so
    // nothing else reads it meanwhile; `values` holds `n * W` words and the loop reads `n`
    // indices and records. Indices within a line are strictly increasing (validation), so the
    // two outputs of an iteration are distinct and the loads and stores keep the sequential
    // result. Only the named registers and the flags are written.
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
                    idx = inout(reg) line.indices().as_ptr() => _,
                    vals = inout(reg) line.values().as_ptr() => _,
                    out = in(reg) out.as_mut_ptr(),
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

/// See [`super::accumulate`]. Blocks of 8 samples (sums in `s0`-`s15`, the inputs' block in
/// `s16`-`s23`) and of 4; any other block size runs the portable kernel. Per weight and block
/// of 8: one index load, one address `mla`, two `vldmia`, 24 arithmetic instructions and the
/// loop step, 3.75 instructions per weight and sample instead of the portable 6.25.
#[inline(always)]
pub(crate) fn accumulate(
    line: Line<'_, 2>,
    x: &[f32],
    s: usize,
    first: usize,
    bias: f32,
    mean: &mut [f32],
    var: &mut [f32],
) {
    let block = mean.len();
    let fits = var.len() == block
        && (block == 8 || block == 4)
        && first + block <= s
        && line
            .bound()
            .checked_mul(s)
            .is_some_and(|len| len <= x.len());
    if !fits {
        return portable::accumulate(line, x, s, first, bias, mean, var);
    }
    let n = line.indices().len();
    let stride = s * 4;
    // `first + block <= s <= x.len()`: in bounds (an empty line reads nothing from it).
    let x = x[first..].as_ptr();
    // SAFETY: every index `c` of a `Line` is below `line.bound()`, and
    // `line.bound() * s <= x.len()` with `first + block <= s` (checked above), so the block of
    // `block` words at `x + (c * s + first) * 4` lies inside `x`; `values` holds `2 n` words and
    // the loop reads `n` indices and records; `mean` and `var` hold `block` words each and are
    // borrowed mutably. Only the named registers and the flags are written.
    unsafe {
        if block == 8 {
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
            "vmul.f32 s16, s16, s16",
            "vmul.f32 s17, s17, s17",
            "vmul.f32 s18, s18, s18",
            "vmul.f32 s19, s19, s19",
            "vmul.f32 s20, s20, s20",
            "vmul.f32 s21, s21, s21",
            "vmul.f32 s22, s22, s22",
            "vmul.f32 s23, s23, s23",
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
                idx = inout(reg) line.indices().as_ptr() => _,
                vals = inout(reg) line.values().as_ptr() => _,
                x = in(reg) x,
                stride = in(reg) stride,
                mean = in(reg) mean.as_mut_ptr(),
                var = in(reg) var.as_mut_ptr(),
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
            "vmul.f32 s8, s8, s8",
            "vmul.f32 s9, s9, s9",
            "vmul.f32 s10, s10, s10",
            "vmul.f32 s11, s11, s11",
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
                idx = inout(reg) line.indices().as_ptr() => _,
                vals = inout(reg) line.values().as_ptr() => _,
                x = in(reg) x,
                stride = in(reg) stride,
                mean = in(reg) mean.as_mut_ptr(),
                var = in(reg) var.as_mut_ptr(),
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
