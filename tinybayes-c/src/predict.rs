//! The predictions: from raw 8-bit or normalised f32 inputs, with or without an early-exit
//! halting policy. Each checks its arguments, runs the engine, and writes `*result` on
//! success only.

use crate::args::{TbHalting, TbMode, TbRng};
use crate::boundary;
use crate::engine::{bound, Bound, TbEngine};
use crate::result::TbResult;
use crate::run::Run;
use crate::status::{status_of, TbStatus};

/// The pointer arguments every prediction shares.
struct Call {
    engine: *mut TbEngine,
    mode: TbMode,
    halting: *const TbHalting,
    rng: *mut TbRng,
    result: *mut TbResult,
}

impl Call {
    /// Checks the arguments in a fixed order (result, generator, policy, mode, input, engine)
    /// and runs the engine on the input that `input` makes of the caller's pointer.
    ///
    /// # Safety
    /// Every pointer is NULL or valid as the C function states; `input` builds the input
    /// under the same contract.
    unsafe fn run<I: Copy>(
        self,
        input: impl FnOnce() -> Result<I, TbStatus>,
        early_exit: bool,
    ) -> TbStatus
    where
        Bound: Run<I>,
    {
        status_of((|| {
            // SAFETY: the caller's contract, for each pointer in turn.
            let result = unsafe { boundary::write(self.result) }?;
            result.check_version()?;
            let rng = unsafe { boundary::write(self.rng) }?;
            let halting = if early_exit {
                let policy = *unsafe { boundary::read(self.halting) }?;
                Some(unsafe { policy.to_halting() }?)
            } else {
                None
            };
            let mode = self.mode.to_mode()?;
            let input = input()?;
            let engine = unsafe { bound(self.engine) }?;
            engine.run(input, mode, halting, rng.generator(), result)
        })())
    }
}

/// Predicts from raw 8-bit inputs (`len` values, e.g. pixels; channel-major), which the model
/// normalises with its stored scale and offset: the posterior predictive in `mode`, drawing
/// from `*rng` (read by the sampling modes, advanced by them), into `*result` (prepared by
/// `tb_result_init`). An early-exit model runs every block. On failure `*result` is left as it
/// was.
///
/// # Safety
/// Each pointer is NULL or valid for the call: `engine` set up by `tb_engine_init`, `input`
/// `len` readable bytes, `rng` and `result` writable; none overlaps another or the engine's
/// workspace.
#[no_mangle]
pub unsafe extern "C" fn tb_predict_u8(
    engine: *mut TbEngine,
    input: *const u8,
    len: usize,
    mode: TbMode,
    rng: *mut TbRng,
    result: *mut TbResult,
) -> TbStatus {
    let call = Call {
        engine,
        mode,
        halting: core::ptr::null(),
        rng,
        result,
    };
    // SAFETY: the caller's contract above.
    unsafe { call.run(|| boundary::slice(input, len), false) }
}

/// Predicts from normalised f32 inputs (`len` values, channel-major; f32 models only: a
/// fixed-point model gives `TB_STATUS_INPUT_TYPE`), as `tb_predict_u8` does otherwise. NaN or
/// infinite inputs give `TB_STATUS_NON_FINITE_INPUT`.
///
/// # Safety
/// As `tb_predict_u8`, with `input` pointing to `len` readable floats.
#[no_mangle]
pub unsafe extern "C" fn tb_predict_f32(
    engine: *mut TbEngine,
    input: *const f32,
    len: usize,
    mode: TbMode,
    rng: *mut TbRng,
    result: *mut TbResult,
) -> TbStatus {
    let call = Call {
        engine,
        mode,
        halting: core::ptr::null(),
        rng,
        result,
    };
    // SAFETY: the caller's contract above.
    unsafe { call.run(|| boundary::slice(input, len), false) }
}

/// Runs an early-exit model block by block from raw 8-bit inputs and stops as `*halting`
/// allows; `*result` says which exit answered (`exit`), how many ran (`depth`) and the MACs
/// spent per sample. A model without exits gives `TB_STATUS_NOT_EARLY_EXIT`.
///
/// # Safety
/// As `tb_predict_u8`, with `halting` pointing to a readable `tb_halting` (and its `prior`, if
/// not NULL, to `prior_len` readable floats).
#[no_mangle]
pub unsafe extern "C" fn tb_predict_early_exit_u8(
    engine: *mut TbEngine,
    input: *const u8,
    len: usize,
    mode: TbMode,
    halting: *const TbHalting,
    rng: *mut TbRng,
    result: *mut TbResult,
) -> TbStatus {
    let call = Call {
        engine,
        mode,
        halting,
        rng,
        result,
    };
    // SAFETY: the caller's contract above.
    unsafe { call.run(|| boundary::slice(input, len), true) }
}

/// `tb_predict_early_exit_u8` from normalised f32 inputs (f32 models only).
///
/// # Safety
/// As `tb_predict_early_exit_u8`, with `input` pointing to `len` readable floats.
#[no_mangle]
pub unsafe extern "C" fn tb_predict_early_exit_f32(
    engine: *mut TbEngine,
    input: *const f32,
    len: usize,
    mode: TbMode,
    halting: *const TbHalting,
    rng: *mut TbRng,
    result: *mut TbResult,
) -> TbStatus {
    let call = Call {
        engine,
        mode,
        halting,
        rng,
        result,
    };
    // SAFETY: the caller's contract above.
    unsafe { call.run(|| boundary::slice(input, len), true) }
}
