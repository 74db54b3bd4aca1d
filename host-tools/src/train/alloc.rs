//! Allocator tuning for the training loop.
//!
//! A training step of LeNet-5 allocates and frees about 100 MB of activations, patch matrices and
//! gradients. With glibc's default settings most of those blocks are `mmap`ed and unmapped (or
//! trimmed from the heap top) every step, so every step pays for fresh page faults and zeroing:
//! in measurements here that was a third or more of the run time. [`tune_allocator`] raises the
//! `mmap` threshold to its maximum (32 MiB) and disables heap trimming, so the memory is reused
//! from step to step. The process then keeps its peak heap size until exit, which is what a
//! training process needs anyway. On other platforms it does nothing.

use std::sync::Once;

/// Applies the allocator settings once per process (idempotent, thread-safe). Called by
/// [`super::Trainer::new`] and [`super::Trainer::resume`]; a program may call it earlier.
pub fn tune_allocator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it takes the arena locks itself
        // and has no memory-safety preconditions. Failure (return 0) just leaves the defaults.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    });
}
