//! ARMv7E-M (Cortex-M4, M4F, M7) versions of the fixed-point [`super::portable`] kernels:
//! inline `asm!` loops that keep a row's integer sums in core registers and use the DSP
//! extension's 16 x 16 multiply-accumulates on the halves of an activation word.
//!
//! Integer sums wrap in both versions and are added in the same order, so they agree bit for
//! bit; the host tests of the portable kernels and the on-target fixed-point parity tests
//! (device outputs against host-computed ones) check it.
#![allow(unsafe_code)]

use core::arch::asm;

use super::{portable, Q8Columns, Q8Row, Q8Taps};

/// The group loop for one power-of-two sample stride: `$shift` is `log2(4 * stride)`, the
/// byte offset of input `i`'s first sample being `i << $shift`.
macro_rules! q8_row_loop {
    ($shift:literal, $records:expr, $end:expr, $x:expr) => {{
        let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
        let (mut v0, mut v1, mut v2, mut v3) = (0i32, 0i32, 0i32, 0i32);
        // SAFETY: `records..end` is the row's records, three bytes each (`Q8Row`); every index
        // is below the row's bound (model validation), and the caller checked that `x` holds
        // `(bound - 1) * stride + 4` words, so the four words read at `x + (i << shift)` are
        // inside `x`. r7 (the frame pointer, not available as an operand) is saved and
        // restored on the stack around the loop, which needs every other core register. Gain: 4.75 instructions per weight and sample instead of 8.8
        // (LeNet-300-100 q8, M = 32, Cortex-M4F: the compiler's loop spills its sums).
        unsafe {
            asm!(
                "push {{r7}}",
                "cmp {p}, {end}",
                "beq 3f",
                "2:",
                "ldrb {a}, [{p}], #3",
                "ldrsb lr, [{p}, #-2]",
                "ldrb r7, [{p}, #-1]",
                "pkhbt lr, lr, r7, lsl #16",
                concat!("add {a}, {x}, {a}, lsl #", $shift),
                "ldr r7, [{a}]",
                "smlabb {a0}, r7, lr, {a0}",
                "smlatt {v0}, r7, lr, {v0}",
                "ldr r7, [{a}, #4]",
                "smlabb {a1}, r7, lr, {a1}",
                "smlatt {v1}, r7, lr, {v1}",
                "ldr r7, [{a}, #8]",
                "smlabb {a2}, r7, lr, {a2}",
                "smlatt {v2}, r7, lr, {v2}",
                "ldr r7, [{a}, #12]",
                "smlabb {a3}, r7, lr, {a3}",
                "smlatt {v3}, r7, lr, {v3}",
                "cmp {p}, {end}",
                "bne 2b",
                "3:",
                "pop {{r7}}",
                p = inout(reg) $records => _,
                end = in(reg) $end,
                x = in(reg) $x,
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                a2 = inout(reg) a2,
                a3 = inout(reg) a3,
                v0 = inout(reg) v0,
                v1 = inout(reg) v1,
                v2 = inout(reg) v2,
                v3 = inout(reg) v3,
                a = out(reg) _,
                out("lr") _,
                options(readonly),
            );
        }
        ([a0, a1, a2, a3], [v0, v1, v2, v3])
    }};
}

/// See [`super::q8_row_sums4`].
#[inline(always)]
pub(crate) fn q8_row_sums4(row: Q8Row<'_>, x: &[i32], stride: usize) -> ([i32; 4], [i32; 4]) {
    let records = row.records();
    let needed = row.bound().saturating_sub(1) * stride + 4;
    if x.len() < needed || records.len() % 3 != 0 {
        return portable::q8_row_sums4(row, x, stride);
    }
    let start = records.as_ptr();
    let end = start.wrapping_add(records.len());
    let base = x.as_ptr();
    match stride {
        4 => q8_row_loop!("4", start, end, base),
        8 => q8_row_loop!("5", start, end, base),
        16 => q8_row_loop!("6", start, end, base),
        32 => q8_row_loop!("7", start, end, base),
        _ => portable::q8_row_sums4(row, x, stride),
    }
}

/// See [`super::q8_row_dot`].
#[inline(always)]
pub(crate) fn q8_row_dot(row: Q8Row<'_>, x: &[i32]) -> i32 {
    let records = row.records();
    if x.len() < row.bound() || records.len() % 3 != 0 {
        return portable::q8_row_dot(row, x);
    }
    let mut acc = 0i32;
    // SAFETY: `records..end` is the row's records, three bytes each (`Q8Row`); every index
    // is below the row's bound (model validation) and `x` holds at least `bound` words
    // (checked above), so every word read is inside `x`. Gain: 6 instructions per weight
    // instead of 7 and a bounds check in the compiler's loop (LeNet-300-100 q8 mean weights,
    // layers 2 and 3).
    unsafe {
        asm!(
            "cmp {p}, {end}",
            "beq 3f",
            "2:",
            "ldrb {i}, [{p}], #3",
            "ldrsb {t}, [{p}, #-2]",
            "ldr {i}, [{x}, {i}, lsl #2]",
            "smlabb {acc}, {i}, {t}, {acc}",
            "cmp {p}, {end}",
            "bne 2b",
            "3:",
            p = inout(reg) records.as_ptr() => _,
            end = in(reg) records.as_ptr().wrapping_add(records.len()),
            x = in(reg) x.as_ptr(),
            acc = inout(reg) acc,
            i = out(reg) _,
            t = out(reg) _,
            options(readonly, nostack),
        );
    }
    acc
}

/// See [`super::q8_scatter_bytes`].
#[inline(always)]
pub(crate) fn q8_scatter_bytes(columns: Q8Columns<'_>, x: &[u8], acc: &mut [i32]) {
    let (counts, records) = (columns.counts(), columns.records());
    let n = counts.len().min(x.len());
    if acc.len() < columns.bound() || n == 0 {
        return portable::q8_scatter_bytes(columns, x, acc);
    }
    // SAFETY: input `i < n` reads `counts[i]` and `x[i]`, both inside their slices. A column's
    // records `p..p + 3 count` are read only when they end at or before the records' end
    // (checked per column); every record's output index is below the columns' bound (model
    // validation, see `Q8Columns`), and `acc` holds at least `bound` words (checked above),
    // so every sum read and written is inside `acc`. Gain: 7 instructions per weight and 8
    // per blank input instead of 13 and 14 (LeNet-300-100 q8 mean weights, first layer).
    unsafe {
        asm!(
            "2:",
            "ldrb {c}, [{cnt}], #1",
            "ldrb {a}, [{px}], #1",
            "add {c}, {c}, {c}, lsl #1",
            "add {c}, {p}, {c}",
            "cmp {a}, #0",
            "beq 4f",
            "cmp {c}, {rend}",
            "bhi 4f",
            "cmp {p}, {c}",
            "beq 4f",
            "3:",
            "ldrb {j}, [{p}], #3",
            "ldrsb {t}, [{p}, #-2]",
            "ldr {s}, [{acc}, {j}, lsl #2]",
            "smlabb {s}, {a}, {t}, {s}",
            "str {s}, [{acc}, {j}, lsl #2]",
            "cmp {p}, {c}",
            "bne 3b",
            "4:",
            "mov {p}, {c}",
            "cmp {px}, {pend}",
            "bne 2b",
            cnt = inout(reg) counts.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            pend = in(reg) x.as_ptr().wrapping_add(n),
            p = inout(reg) records.as_ptr() => _,
            rend = in(reg) records.as_ptr().wrapping_add(records.len()),
            acc = in(reg) acc.as_mut_ptr(),
            c = out(reg) _,
            a = out(reg) _,
            j = out(reg) _,
            t = out(reg) _,
            s = out(reg) _,
            options(nostack),
        );
    }
}
/// The mean-weights tap loop for four output positions: `$load` reads their four words from
/// the address in r12 into r0-r3.
macro_rules! q8_means_loop {
    ($pairs:expr, $end:expr, $x:expr, $($load:literal),+) => {{
        let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
        // SAFETY: `pairs..end` is the channel's `[offset, weight]` pairs (8 bytes each, read
        // in ascending order into r12 and lr by one LDMIA); every offset is a non-negative
        // multiple of 4 below `4 * reach` (`Q8Taps::new`), and the caller checked that `x`
        // holds `reach + 3 * step` words from the first position's window, so the four words
        // read at `x + offset` (`$load`) are inside the input. Gain: the ResNet's depth-1
        // mean weights 4,307,560 -> see BENCHMARKS.md (the compiler's loop re-derived each
        // tap's index per position and kept its sums in memory).
        unsafe {
            asm!(
                "cmp {p}, {end}",
                "beq 3f",
                "2:",
                "ldmia {p}!, {{r12, lr}}",
                "add r12, {x}, r12",
                $($load,)+
                "smlabb {a0}, r0, lr, {a0}",
                "smlabb {a1}, r1, lr, {a1}",
                "smlabb {a2}, r2, lr, {a2}",
                "smlabb {a3}, r3, lr, {a3}",
                "cmp {p}, {end}",
                "bne 2b",
                "3:",
                p = inout(reg) $pairs => _,
                end = in(reg) $end,
                x = in(reg) $x,
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                a2 = inout(reg) a2,
                a3 = inout(reg) a3,
                out("r0") _,
                out("r1") _,
                out("r2") _,
                out("r3") _,
                out("r12") _,
                out("lr") _,
                options(readonly, nostack),
            );
        }
        [a0, a1, a2, a3]
    }};
}

/// See [`super::q8_tap_means4`].
#[inline(always)]
pub(crate) fn q8_tap_means4(taps: Q8Taps<'_>, x: &[i32], at: usize, step: usize) -> [i32; 4] {
    let needed = at + taps.reach() + 3 * step;
    if x.len() < needed || taps.pairs().is_empty() {
        return portable::q8_tap_means4(taps, x, at, step);
    }
    let start = taps.pairs().as_ptr();
    let end = start.wrapping_add(taps.pairs().len());
    let base = x.as_ptr().wrapping_add(at);
    match step {
        1 => q8_means_loop!(start, end, base, "ldm r12, {{r0-r3}}"),
        2 => q8_means_loop!(
            start,
            end,
            base,
            "ldr r0, [r12]",
            "ldr r1, [r12, #8]",
            "ldr r2, [r12, #16]",
            "ldr r3, [r12, #24]"
        ),
        _ => portable::q8_tap_means4(taps, x, at, step),
    }
}

/// See [`super::q8_tap_sums4`].
#[inline(always)]
pub(crate) fn q8_tap_sums4(taps: Q8Taps<'_>, x: &[i32], at: usize) -> ([i32; 4], [i32; 4]) {
    let needed = at + taps.reach() + 3;
    if x.len() < needed || taps.pairs().is_empty() {
        return portable::q8_tap_sums4(taps, x, at);
    }
    let start = taps.pairs().as_ptr();
    let end = start.wrapping_add(taps.pairs().len());
    let base = x.as_ptr().wrapping_add(at);
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    let (mut v0, mut v1, mut v2, mut v3) = (0i32, 0i32, 0i32, 0i32);
    // SAFETY: `start..end` is the channel's `[offset, weight]` pairs (8 bytes each, read in
    // ascending order into r12 and lr by one LDMIA); every offset is a non-negative multiple
    // of 4 below `4 * reach` (`Q8Taps::new`), and `x` holds `reach + 3` words from `at`
    // (checked above), so the four samples' words read at `x + offset` are
    // inside the input. r7 (the frame pointer, not available as an operand) is saved on the
    // stack and holds each sample's word in turn. Gain: see BENCHMARKS.md (the ResNet at M = 8;
    // the compiler's loop over eight samples kept its sums in memory and re-derived each
    // tap's index per position).
    unsafe {
        asm!(
            "push {{r7}}",
            "2:",
            "ldmia {p}!, {{r12, lr}}",
            "add r12, {x}, r12",
            "ldr r7, [r12]",
            "smlabb {a0}, r7, lr, {a0}",
            "smlatt {v0}, r7, lr, {v0}",
            "ldr r7, [r12, #4]",
            "smlabb {a1}, r7, lr, {a1}",
            "smlatt {v1}, r7, lr, {v1}",
            "ldr r7, [r12, #8]",
            "smlabb {a2}, r7, lr, {a2}",
            "smlatt {v2}, r7, lr, {v2}",
            "ldr r7, [r12, #12]",
            "smlabb {a3}, r7, lr, {a3}",
            "smlatt {v3}, r7, lr, {v3}",
            "cmp {p}, {end}",
            "bne 2b",
            "pop {{r7}}",
            p = inout(reg) start => _,
            end = in(reg) end,
            x = in(reg) base,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            v0 = inout(reg) v0,
            v1 = inout(reg) v1,
            v2 = inout(reg) v2,
            v3 = inout(reg) v3,
            out("r12") _,
            out("lr") _,
            options(readonly),
        );
    }
    ([a0, a1, a2, a3], [v0, v1, v2, v3])
}
