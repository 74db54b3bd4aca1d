//! The plain-data arguments of a prediction, as C writes them: `tb_mode`, `tb_halting` and
//! the generator `tb_rng`. Every field is checked before it becomes a core type: an
//! enumerated value C wrote is a `uint32_t` here, never a Rust enum (whose invalid values
//! would be undefined behaviour).

use core::num::NonZeroU16;

use tinybayes::rand_core::SeedableRng;
use tinybayes::rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Halting, Mode, Uncertainty};

use crate::status::TbStatus;

/// `tb_mode.kind`: one pass with the posterior mean weights (fastest; mutual information 0).
pub const TB_MODE_MEAN: u32 = 0;
/// `tb_mode.kind`: the Monte Carlo posterior predictive over `samples` weight draws.
pub const TB_MODE_MONTE_CARLO: u32 = 1;
/// `tb_mode.kind`: moment propagation, one deterministic pass (f32 models, chunk >= 2; mutual
/// information 0).
pub const TB_MODE_MOMENTS: u32 = 2;
/// `tb_mode.kind`: moment propagation, then `samples` draws of the logits only (f32 models,
/// chunk >= 2; mutual information kept).
pub const TB_MODE_MOMENTS_THEN_SAMPLE: u32 = 3;

/// How to turn the weight posterior into a prediction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TbMode {
    /// `TB_MODE_MEAN`, `TB_MODE_MONTE_CARLO`, `TB_MODE_MOMENTS` or
    /// `TB_MODE_MOMENTS_THEN_SAMPLE`.
    pub kind: u32,
    /// Samples M of the sampling modes (1 to 65535; 0 is `TB_STATUS_ZERO_SAMPLES`); ignored by
    /// the others.
    pub samples: u32,
}

impl TbMode {
    /// The core's mode, or why there is none.
    pub(crate) fn to_mode(self) -> Result<Mode, TbStatus> {
        let samples = || match u16::try_from(self.samples) {
            Ok(m) => NonZeroU16::new(m).ok_or(TbStatus::ZeroSamples),
            Err(_) => Err(TbStatus::BadArgument),
        };
        match self.kind {
            TB_MODE_MEAN => Ok(Mode::MeanWeights),
            TB_MODE_MONTE_CARLO => Ok(Mode::MonteCarlo {
                samples: samples()?,
            }),
            TB_MODE_MOMENTS => Ok(Mode::Moments),
            TB_MODE_MOMENTS_THEN_SAMPLE => Ok(Mode::MomentsThenSample {
                samples: samples()?,
            }),
            _ => Err(TbStatus::BadArgument),
        }
    }
}

/// `tb_halting.kind`: run every block, answer with the last exit.
pub const TB_HALTING_ALL: u32 = 0;
/// `tb_halting.kind`: the exact mode of p(y, z | x) with its early-termination bound.
pub const TB_HALTING_JOINT_MODE: u32 = 1;
/// `tb_halting.kind`: a depth sampled from its posterior (the prior), drawn before running.
pub const TB_HALTING_SAMPLE_DEPTH: u32 = 2;
/// `tb_halting.kind`: a fixed budget of `exits` exits.
pub const TB_HALTING_DEPTH: u32 = 3;
/// `tb_halting.kind`: the first exit whose `measure` is at most `threshold` nats.
pub const TB_HALTING_THRESHOLD: u32 = 4;
/// `tb_halting.kind`: the joint mode over the exits whose mutual information is below
/// `threshold` nats (the last exit always qualifies): halting that stays honest off the
/// training data.
pub const TB_HALTING_ROBUST: u32 = 5;

/// `tb_halting.measure`: mutual information (epistemic).
pub const TB_MEASURE_MUTUAL_INFORMATION: u32 = 0;
/// `tb_halting.measure`: predictive entropy (total).
pub const TB_MEASURE_PREDICTIVE_ENTROPY: u32 = 1;

/// When an early-exit model stops computing. Fields a kind does not read are ignored.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TbHalting {
    /// `TB_HALTING_ALL`, `_JOINT_MODE`, `_SAMPLE_DEPTH`, `_DEPTH`, `_THRESHOLD` or `_ROBUST`.
    pub kind: u32,
    /// `TB_HALTING_DEPTH`: exits to compute, at least 1.
    pub exits: u32,
    /// `TB_HALTING_THRESHOLD`: `TB_MEASURE_MUTUAL_INFORMATION` or
    /// `TB_MEASURE_PREDICTIVE_ENTROPY`.
    pub measure: u32,
    /// `TB_HALTING_THRESHOLD`: the bound in nats (stop at the first exit at most this);
    /// `TB_HALTING_ROBUST`: the mutual-information bound in nats (an exit other than the last
    /// may answer only strictly below it). NaN is `TB_STATUS_BAD_PRIOR`.
    pub threshold: f32,
    /// `TB_HALTING_JOINT_MODE`, `_SAMPLE_DEPTH`, `_ROBUST`: one prior mass per exit, or NULL
    /// for the priors stored in the model. Read during the call only.
    pub prior: *const f32,
    /// Masses at `prior`.
    pub prior_len: u32,
}

impl TbHalting {
    /// The core's policy, or why there is none.
    ///
    /// # Safety
    /// A non-NULL `prior` must point to `prior_len` floats valid for `'a`.
    pub(crate) unsafe fn to_halting<'a>(self) -> Result<Halting<'a>, TbStatus> {
        let prior = if self.prior.is_null() {
            None
        } else {
            // SAFETY: the caller's contract above.
            Some(unsafe { crate::boundary::slice(self.prior, self.prior_len as usize) }?)
        };
        match self.kind {
            TB_HALTING_ALL => Ok(Halting::All),
            TB_HALTING_JOINT_MODE => Ok(Halting::JointMode { prior }),
            TB_HALTING_SAMPLE_DEPTH => Ok(Halting::SampleDepth { prior }),
            TB_HALTING_DEPTH => Ok(Halting::Depth {
                exits: self.exits as usize,
            }),
            TB_HALTING_THRESHOLD => Ok(Halting::Threshold {
                measure: match self.measure {
                    TB_MEASURE_MUTUAL_INFORMATION => Uncertainty::MutualInformation,
                    TB_MEASURE_PREDICTIVE_ENTROPY => Uncertainty::PredictiveEntropy,
                    _ => return Err(TbStatus::BadArgument),
                },
                at_most: self.threshold,
            }),
            TB_HALTING_ROBUST => Ok(Halting::Robust {
                prior,
                mutual_information_below: self.threshold,
            }),
            _ => Err(TbStatus::BadArgument),
        }
    }
}

/// A random generator's state (Xoshiro128++, the engine's generator), owned by the caller:
/// seed it with `tb_rng_seed`; each prediction advances it. Opaque.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TbRng {
    /// The generator's 128 bits of state.
    pub state: [u32; 4],
}

// The generator lives in place in a `TbRng`: same size, no stricter alignment.
const _: () = assert!(core::mem::size_of::<Xoshiro128PlusPlus>() == core::mem::size_of::<TbRng>());
const _: () =
    assert!(core::mem::align_of::<Xoshiro128PlusPlus>() <= core::mem::align_of::<TbRng>());

impl TbRng {
    /// The state as the core's generator, in place.
    pub(crate) fn generator(&mut self) -> &mut Xoshiro128PlusPlus {
        let ptr = (self as *mut TbRng).cast::<Xoshiro128PlusPlus>();
        // SAFETY: same size, alignment at most `TbRng`'s (asserted above); the generator is
        // four `u32`s of state, for which every bit pattern is valid (an all-zero state is a
        // degenerate stream, not undefined behaviour); the borrow of `self` makes it unique.
        unsafe { &mut *ptr }
    }
}

/// Seeds `*rng` as the Rust API's `Xoshiro128PlusPlus::seed_from_u64(seed)` does (the same
/// predictions from the same seed). NULL: `TB_STATUS_NULL_POINTER`.
///
/// # Safety
/// `rng` is NULL or points to a `tb_rng` nothing else uses during the call.
#[no_mangle]
pub unsafe extern "C" fn tb_rng_seed(rng: *mut TbRng, seed: u64) -> TbStatus {
    // SAFETY: the caller's contract above.
    match unsafe { crate::boundary::write(rng) } {
        Ok(rng) => {
            *rng.generator() = Xoshiro128PlusPlus::seed_from_u64(seed);
            TbStatus::Ok
        }
        Err(status) => status,
    }
}
