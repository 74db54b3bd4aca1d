//! Square roots for the kernels, one per unit and Monte Carlo sample.
//!
//! On hard-float Cortex-M targets (`eabihf`: Cortex-M4F, M7F, M33F) this is the FPU's
//! `vsqrt.f32` (five instructions with the register moves) instead of `libm::sqrtf`'s software routine, which the bench
//! measured at about 50 instructions inlined (`scripts/qemu-profile.py` on the demo). Both are
//! correctly rounded (IEEE 754 requires it of square root), so the device computes the very
//! bits the host computes with libm; the on-target parity test checks it.
//!
//! This module holds the crate's only `unsafe` code (the `asm!` block below).

/// Correctly rounded square root.
#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn sqrtf(x: f32) -> f32 {
    let bits: u32;
    // SAFETY: the block moves the value through `s0`, restoring `s0` before it ends, so no
    // floating-point register is clobbered (Rust's `sreg` operands need a `vfp2` feature that
    // single-precision cores lack). It touches no memory, no stack and no condition flags.
    // Every eabihf Cortex-M core has `vsqrt.f32`.
    unsafe {
        core::arch::asm!(
            "vmov {save}, s0",
            "vmov s0, {value}",
            "vsqrt.f32 s0, s0",
            "vmov {value}, s0",
            "vmov s0, {save}",
            value = inout(reg) x.to_bits() => bits,
            save = out(reg) _,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    f32::from_bits(bits)
}

/// Correctly rounded square root.
#[cfg(not(all(target_arch = "arm", target_abi = "eabihf")))]
#[inline(always)]
pub(crate) fn sqrtf(x: f32) -> f32 {
    libm::sqrtf(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_libm_bit_for_bit() {
        let mut x = 0.0f32;
        while x < 1.0e6 {
            assert_eq!(super::sqrtf(x).to_bits(), libm::sqrtf(x).to_bits());
            x = x * 1.37 + 1.0e-7;
        }
    }
}
