//! # tinybayes-c
//!
//! The C API of tinybayes: the engine behind a small, stable C ABI, built as a static
//! library (`libtinybayes_c.a`) with a generated header (`include/tinybayes.h`, cbindgen;
//! a host test keeps it current). `no_std`, no heap, no global state: the caller owns every
//! byte (the model in flash, the `tb_engine` struct, the workspace, the generator and the
//! result), and every pointer and length is checked at the boundary (NULL, alignment,
//! lengths that wrap, a result struct of another version, an engine not set up or moved),
//! each failure with its own `tb_status` code.
//!
//! The two calls a C program needs:
//!
//! ```c
//! static tb_engine engine;                      /* ~8 KB, caller-owned */
//! static uint64_t workspace[4096];              /* >= tb_workspace_size(...) bytes */
//! tb_status s = tb_engine_init(&engine, model, model_len, 8, workspace, sizeof workspace);
//! tb_rng rng; tb_rng_seed(&rng, 42);
//! tb_result r; tb_result_init(&r);
//! tb_mode mc = { TB_MODE_MONTE_CARLO, 32 };
//! s = tb_predict_u8(&engine, pixels, 784, mc, &rng, &r);   /* r.predicted_class, r.mutual_information */
//! ```
//!
//! The same model, input, mode and seed give the same bits as the Rust API
//! (`Engine::predict_u8` with `Xoshiro128PlusPlus::seed_from_u64(seed)`); `examples/c/`
//! runs this in QEMU and CI compares its output with the Rust demo's.
//!
//! Cargo features: `f32` (f32 model files) and `fixed` (q8 and q16 files), both on by
//! default; a build without one answers those files with `TB_STATUS_FORMAT_NOT_BUILT` and saves
//! its flash. Chunks (samples per pass over the weights): 1, 2, 4 and 8.
//!
//! The code that turns C's raw pointers into references is in `boundary`; every other
//! `unsafe` block states which of its checks and which part of the caller's contract make
//! it sound.
#![no_std]
#![warn(missing_docs)]

#[cfg(not(target_os = "none"))]
extern crate std;

#[cfg(not(any(feature = "f32", feature = "q8", feature = "q16")))]
compile_error!("tinybayes-c needs at least one number format: feature `f32`, `q8` or `q16`");
#[cfg(not(any(
    feature = "chunk-1",
    feature = "chunk-2",
    feature = "chunk-4",
    feature = "chunk-8"
)))]
compile_error!(
    "tinybayes-c needs at least one chunk: feature `chunk-1`, `chunk-2`, `chunk-4` or `chunk-8`"
);

mod args;
mod boundary;
mod engine;
mod predict;
mod result;
mod run;
mod status;

pub use args::{
    tb_rng_seed, TbHalting, TbMode, TbRng, TB_HALTING_ALL, TB_HALTING_DEPTH, TB_HALTING_JOINT_MODE,
    TB_HALTING_ROBUST, TB_HALTING_SAMPLE_DEPTH, TB_HALTING_THRESHOLD,
    TB_MEASURE_MUTUAL_INFORMATION, TB_MEASURE_PREDICTIVE_ENTROPY, TB_MODE_MEAN, TB_MODE_MOMENTS,
    TB_MODE_MOMENTS_THEN_SAMPLE, TB_MODE_MONTE_CARLO,
};
pub use engine::{
    tb_engine_get_info, tb_engine_init, tb_engine_size, tb_workspace_size, TbEngine, TbEngineInfo,
    TB_ENGINE_WORDS,
};
pub use predict::{
    tb_predict_early_exit_f32, tb_predict_early_exit_u8, tb_predict_f32, tb_predict_u8,
};
pub use result::{tb_result_init, TbResult, TB_MAX_CLASSES, TB_RESULT_SIZE, TB_RESULT_VERSION};
pub use status::{tb_status_name, TbStatus};

/// The version of this C ABI: functions, structs and codes. Bumped on any incompatible
/// change.
pub const TB_ABI_VERSION: u32 = 1;

/// `TB_ABI_VERSION` of the library linked (compare with the header's to catch a stale
/// library).
#[no_mangle]
pub extern "C" fn tb_abi_version() -> u32 {
    TB_ABI_VERSION
}

/// On the device a panic halts here. The engine returns a status for every input it is
/// given (the core is fuzzed for panics on bad models and inputs), so this is only reached
/// by a bug.
#[cfg(all(target_os = "none", not(test)))]
#[panic_handler]
fn halt(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
