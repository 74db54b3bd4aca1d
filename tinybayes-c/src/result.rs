//! `tb_result`: the answer for one input, as C reads it, versioned so that a caller built
//! against another header is told instead of misread.

use tinybayes::early_exit::{ExitPrediction, QExitPrediction};
use tinybayes::{Prediction, QPrediction, UQ16};

use crate::status::TbStatus;

/// Most classes a model may have for the C API (the capacity of `tb_result`); a model with
/// more gives `TB_STATUS_CLASS_CAPACITY`.
pub const TB_MAX_CLASSES: usize = 32;

/// The version of `tb_result` this header describes; `tb_result_init` writes it, every
/// prediction checks it.
pub const TB_RESULT_VERSION: u32 = 1;

/// The posterior predictive for one input and its uncertainty (natural logarithms, nats).
/// Prepare it once with `tb_result_init`; a prediction overwrites everything but `version`
/// and `size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TbResult {
    /// `TB_RESULT_VERSION` (written by `tb_result_init`; a prediction refuses any other value
    /// with `TB_STATUS_RESULT_VERSION`).
    pub version: u32,
    /// `sizeof(tb_result)` (written by `tb_result_init`; checked like `version`).
    pub size: u32,
    /// Classes of the model: the valid entries of the probability arrays.
    pub class_count: u32,
    /// The most probable class (the first one on ties).
    pub predicted_class: u32,
    /// Mean class probabilities over the samples; they sum to 1 (fixed point: within
    /// rounding).
    pub probabilities: [f32; TB_MAX_CLASSES],
    /// Predictive entropy H[p̄]: total uncertainty.
    pub predictive_entropy: f32,
    /// Expected entropy: the aleatoric part.
    pub expected_entropy: f32,
    /// Mutual information, predictive minus expected entropy: the epistemic part (what the
    /// model does not know). 0 in the mean and moments modes.
    pub mutual_information: f32,
    /// Samples averaged (1 for the one-pass modes).
    pub samples: u32,
    /// 1 when a fixed-point (q8/q16) model answered: then the `_uq16` fields hold the exact
    /// integer outputs (value times 65536) and the float fields are those divided by 65536;
    /// 0 for f32 models (the `_uq16` fields are 0).
    pub fixed_point: u32,
    /// Fixed point: `probabilities` as unsigned Q16 integers.
    pub probabilities_uq16: [u32; TB_MAX_CLASSES],
    /// Fixed point: `predictive_entropy` in unsigned Q16.
    pub predictive_entropy_uq16: u32,
    /// Fixed point: `expected_entropy` in unsigned Q16.
    pub expected_entropy_uq16: u32,
    /// Fixed point: `mutual_information` in unsigned Q16.
    pub mutual_information_uq16: u32,
    /// Early exit: the answering exit (0 = after the first block); 0 for other models.
    pub exit: u32,
    /// Early exit: exits computed (the depth used); 0 for other models.
    pub depth: u32,
    /// Multiply-accumulates per weight sample of the layers run (every layer for a model
    /// without exits); M samples spend M times this.
    pub macs: u32,
}

/// `sizeof(tb_result)` on every target (the header's static assertion checks the C side).
pub const TB_RESULT_SIZE: usize = 316;

const _: () = assert!(core::mem::size_of::<TbResult>() == TB_RESULT_SIZE);

impl TbResult {
    /// A result prepared for this version, all answers zero.
    pub const fn new() -> Self {
        TbResult {
            version: TB_RESULT_VERSION,
            size: TB_RESULT_SIZE as u32,
            class_count: 0,
            predicted_class: 0,
            probabilities: [0.0; TB_MAX_CLASSES],
            predictive_entropy: 0.0,
            expected_entropy: 0.0,
            mutual_information: 0.0,
            samples: 0,
            fixed_point: 0,
            probabilities_uq16: [0; TB_MAX_CLASSES],
            predictive_entropy_uq16: 0,
            expected_entropy_uq16: 0,
            mutual_information_uq16: 0,
            exit: 0,
            depth: 0,
            macs: 0,
        }
    }

    /// `TB_STATUS_RESULT_VERSION` unless prepared by `tb_result_init` of this version.
    pub(crate) fn check_version(&self) -> Result<(), TbStatus> {
        if self.version == TB_RESULT_VERSION && self.size as usize == TB_RESULT_SIZE {
            Ok(())
        } else {
            Err(TbStatus::ResultVersion)
        }
    }

    /// Overwrites the answer with an f32 prediction of a model of `macs` MACs per sample.
    pub(crate) fn set_f32<const K: usize>(&mut self, p: &Prediction<K>, macs: usize) {
        *self = TbResult::new();
        self.set_common(p.probabilities.len(), p.class, p.samples, macs);
        self.probabilities[..p.probabilities.len()].copy_from_slice(&p.probabilities);
        self.predictive_entropy = p.predictive_entropy;
        self.expected_entropy = p.expected_entropy;
        self.mutual_information = p.mutual_information;
    }

    /// Overwrites the answer with a fixed-point prediction.
    pub(crate) fn set_fixed<const K: usize>(&mut self, p: &QPrediction<K>, macs: usize) {
        *self = TbResult::new();
        self.set_common(p.probabilities.len(), p.class, p.samples, macs);
        self.fixed_point = 1;
        for (i, q) in p.probabilities.iter().enumerate() {
            self.probabilities_uq16[i] = q.to_bits();
            self.probabilities[i] = q.to_f32();
        }
        let set = |v: UQ16, bits: &mut u32, value: &mut f32| {
            *bits = v.to_bits();
            *value = v.to_f32();
        };
        set(
            p.predictive_entropy,
            &mut self.predictive_entropy_uq16,
            &mut self.predictive_entropy,
        );
        set(
            p.expected_entropy,
            &mut self.expected_entropy_uq16,
            &mut self.expected_entropy,
        );
        set(
            p.mutual_information,
            &mut self.mutual_information_uq16,
            &mut self.mutual_information,
        );
    }

    /// Overwrites the answer with an f32 early-exit prediction.
    pub(crate) fn set_f32_exit<const K: usize>(&mut self, p: &ExitPrediction<K>) {
        self.set_f32(&p.prediction, p.macs);
        self.set_exit(p.exit, p.depth);
    }

    /// Overwrites the answer with a fixed-point early-exit prediction.
    pub(crate) fn set_fixed_exit<const K: usize>(&mut self, p: &QExitPrediction<K>) {
        self.set_fixed(&p.prediction, p.macs);
        self.set_exit(p.exit, p.depth);
    }

    fn set_common(&mut self, classes: usize, class: usize, samples: usize, macs: usize) {
        self.class_count = saturate(classes);
        self.predicted_class = saturate(class);
        self.samples = saturate(samples);
        self.macs = saturate(macs);
    }

    fn set_exit(&mut self, exit: usize, depth: usize) {
        self.exit = saturate(exit);
        self.depth = saturate(depth);
    }
}

impl Default for TbResult {
    fn default() -> Self {
        Self::new()
    }
}

/// A count as the result's `uint32_t` (counts here are far below 2^32; saturated if not).
fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Prepares `*result` for this header's version: writes `version` and `size`, zeroes the
/// answer. Call it once before the first prediction into a result. NULL:
/// `TB_STATUS_NULL_POINTER`.
///
/// # Safety
/// `result` is NULL or points to a `tb_result` nothing else uses during the call.
#[no_mangle]
pub unsafe extern "C" fn tb_result_init(result: *mut TbResult) -> TbStatus {
    // SAFETY: the caller's contract above.
    match unsafe { crate::boundary::write(result) } {
        Ok(r) => {
            *r = TbResult::new();
            TbStatus::Ok
        }
        Err(status) => status,
    }
}
