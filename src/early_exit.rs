//! Early exit as Bayesian control flow (README: "Early-exit ResNets"): a residual network with an exit head
//! after every block, a latent depth `z` with prior `p(z)`, and the joint
//! `p(y, z | x) ∝ p(y | x, z) p(z)` over label and depth. The engine computes block by block,
//! hands every exit's posterior predictive to a [`Halting`] policy, and stops as soon as the
//! policy allows: blocks not run cost nothing.

use crate::error::InferenceError;
use crate::fixed::UQ16;
use crate::format::MAX_LAYERS;
use crate::predictive::Prediction;

/// Most exits a model can have (one per layer at most).
pub const MAX_EXITS: usize = MAX_LAYERS;

/// Which uncertainty a threshold policy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Uncertainty {
    /// Mutual information (epistemic): needs Monte Carlo samples to be non-zero.
    MutualInformation,
    /// Predictive entropy (total).
    PredictiveEntropy,
}

/// When to stop computing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Halting<'p> {
    /// Run every block; answer with the last exit (the reference the others save against).
    All,
    /// Policy (a): the exact mode of `p(y, z | x)`. After exit `l`,
    /// `best = max over l' <= l and y of p(y | x, l') p(l')`; no later exit can beat
    /// `p(l + 1)` because `p(y | x, z) <= 1` and the prior does not increase, so the engine
    /// stops as soon as `best >= p(l + 1)`. The answer is the argmax of the joint (the earliest
    /// exit on ties), the same decision as running every exit. `prior`: one mass per exit, or
    /// `None` for the priors stored in the model.
    JointMode {
        /// Overrides the model's prior (must not increase with depth).
        prior: Option<&'p [f32]>,
    },
    /// Policy (b): a sample of the depth from its posterior. Under this model the posterior
    /// over depth alone is the prior (`Σ_y p(y | x, z) = 1`), so `z ~ p(z)` is drawn from the
    /// caller's generator before anything runs and the engine stops at exit `z`.
    SampleDepth {
        /// Overrides the model's prior.
        prior: Option<&'p [f32]>,
    },
    /// A fixed budget: stop after `exits` exits (all of them if there are fewer); for
    /// anytime use and for measuring the cost of each depth.
    Depth {
        /// Exits to compute, at least 1.
        exits: usize,
    },
    /// Policy (c): stop at the first exit whose uncertainty is at most `at_most` nats (the last
    /// exit answers if none qualifies).
    Threshold {
        /// The uncertainty compared.
        measure: Uncertainty,
        /// Threshold in nats.
        at_most: f32,
    },
    /// Policy (d), halting that stays honest: the exact mode of `p(y, z | x)` over the depths
    /// the model is epistemically sure of. The joint mode never stops early on an input the
    /// exit is unsure about, and answers as [`Halting::JointMode`] on the others.
    ///
    /// Why: the joint mode's rule reads only `p(y | x, l)` and the prior. A network is often
    /// confidently wrong off its training data (an out-of-distribution input gets a top
    /// probability near 1 at the first exit), so the rule stops there as on a clean digit, and
    /// the answer carries the first exit's small uncertainty. Mutual information (GUIDE
    /// section 2: `H[p̄] - mean_m H[p^m]`, the epistemic part) measures how much the weight
    /// samples disagree, which grows off the training data even when their average is sharp.
    ///
    /// The rule: exit `l` is *trusted* when its mutual information is strictly below
    /// `mutual_information_below` (τ, nats), and the last exit always is (it is the reference
    /// every policy saves against, and something must answer). The policy is the exact mode
    /// of the joint restricted to trusted depths, `argmax over trusted l and y of
    /// p(y | x, l) p(l)` (the earliest exit on ties): the joint with the mass of untrusted
    /// depths set to 0. Zeroing masses only lowers joints, so `p(l + 1)` still bounds every
    /// later exit (`p(y | x, z) <= 1`, the prior does not increase) and the engine stops after
    /// exit `l` as soon as the best trusted joint so far reaches `p(l + 1)`: the same answer,
    /// exit and bits as running every block and taking the restricted mode. When it stops
    /// early, the joint mode's own condition holds there too (the restricted best is at most
    /// the unrestricted one), and the answering exit is trusted; so an exit is never the
    /// answer before the last unless its weight samples agree.
    ///
    /// Edge cases: τ = +∞ trusts every exit and is [`Halting::JointMode`] exactly; τ <= 0
    /// trusts only the last exit (mutual information is never negative) and is
    /// [`Halting::All`]'s answer. With [`crate::Mode::MeanWeights`] every mutual information
    /// is 0: there is no epistemic estimate, and any τ > 0 gives the joint mode. Choose τ on
    /// validation data (the host's `tinybayes eval --suggest-mi-below`), never on the test
    /// set.
    ///
    /// Fixed point: τ is converted once to [`UQ16`] (rounded to the nearest 2^-16 nats,
    /// saturated) and every decision compares integers. The state is that of the joint mode:
    /// no RAM beyond the other policies'.
    Robust {
        /// Overrides the model's prior (must not increase with depth).
        prior: Option<&'p [f32]>,
        /// τ, nats: an exit other than the last may answer only when its mutual information
        /// is strictly below this. NaN is refused.
        mutual_information_below: f32,
    },
}

/// The number type a halting policy decides in: `f32` for f32 models, [`UQ16`] for
/// fixed-point ones (whose policies run on integers only). Sealed.
pub trait HaltValue: Copy + PartialOrd + core::fmt::Debug + seal::Sealed {
    /// Zero.
    const ZERO: Self;
    /// The value of a caller-given `f32` (a prior mass, a threshold in nats): exact for
    /// `f32`; for [`UQ16`] rounded to the nearest 2^-16 and saturated to its range (the one
    /// conversion a fixed-point policy makes, once per prediction, and only for a prior or
    /// threshold given as `f32`).
    fn from_f32(x: f32) -> Self;
    /// `a + b` (saturating for [`UQ16`]).
    fn add(a: Self, b: Self) -> Self;
    /// `a * b`, the joint `p(y | x, z) p(z)` of a confidence and a prior mass.
    fn mul(a: Self, b: Self) -> Self;
    /// Whether a prior's masses sum to 1 within 1e-3 (66 units of 2^-16 for [`UQ16`]).
    fn sums_to_one(prior: &[Self]) -> bool;
    /// A uniform number in [0, 1) from 32 random bits (the depth draw of
    /// [`Halting::SampleDepth`]).
    fn uniform(bits: u32) -> Self;
}

mod seal {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::UQ16 {}
}

impl HaltValue for f32 {
    const ZERO: f32 = 0.0;
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    fn sums_to_one(prior: &[f32]) -> bool {
        (prior.iter().sum::<f32>() - 1.0).abs() <= 1e-3
    }
    fn uniform(bits: u32) -> f32 {
        (bits >> 8) as f32 / (1u32 << 24) as f32
    }
}

impl HaltValue for UQ16 {
    const ZERO: UQ16 = UQ16(0);
    fn from_f32(x: f32) -> UQ16 {
        // NaN and negative values give 0, values of 65536 and more saturate.
        UQ16(libm::roundf(x * 65536.0) as u32)
    }
    fn add(a: UQ16, b: UQ16) -> UQ16 {
        UQ16(a.0.saturating_add(b.0))
    }
    fn mul(a: UQ16, b: UQ16) -> UQ16 {
        UQ16(((a.0 as u64 * b.0 as u64 + (1 << 15)) >> 16).min(u32::MAX as u64) as u32)
    }
    fn sums_to_one(prior: &[UQ16]) -> bool {
        let sum: u64 = prior.iter().map(|p| p.0 as u64).sum();
        sum.abs_diff(1 << 16) <= 66
    }
    fn uniform(bits: u32) -> UQ16 {
        UQ16(bits >> 16)
    }
}

/// What one exit said, in the policy's number type `V` (`f32`, or [`UQ16`] for fixed point).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExitSummary<V = f32> {
    /// Most probable class at this exit.
    pub class: usize,
    /// Its predictive probability `max_y p(y | x, z)`.
    pub confidence: V,
    /// Predictive entropy, nats.
    pub predictive_entropy: V,
    /// Mutual information, nats.
    pub mutual_information: V,
}

/// The answer of an early-exit model: `P` is the prediction type ([`Prediction`], or
/// [`crate::QPrediction`] for fixed point, see [`QExitPrediction`]) and `V` the number type
/// of the exits' summaries.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitPrediction<const K: usize, P = Prediction<K>, V = f32> {
    /// The posterior predictive at the answering exit, with its uncertainty.
    pub prediction: P,
    /// Index of the answering exit (0 = after the first block).
    pub exit: usize,
    /// Exits computed: the depth used (blocks run).
    pub depth: usize,
    /// Multiply-accumulates spent per weight sample (the layers run, exit heads included);
    /// a Monte Carlo run with M samples spends M times this.
    pub macs: usize,
    /// What every computed exit said, in order.
    pub exits: heapless::Vec<ExitSummary<V>, MAX_EXITS>,
}

/// The answer of a fixed-point early-exit model: integer predictive and summaries.
pub type QExitPrediction<const K: usize> = ExitPrediction<K, crate::QPrediction<K>, UQ16>;

/// A policy in progress: told each exit's summary in order, decides whether to stop and which
/// exit answers. The engine drives it; it can also replay a policy on recorded summaries (the
/// decisions depend on nothing else), as the host's parameter sweeps do.
///
/// `V` is the number type it decides in (`f32`, or [`UQ16`] for fixed point: then every
/// decision is integer).
#[derive(Clone, Debug)]
pub struct HaltingState<'p, V: HaltValue = f32> {
    halting: Halting<'p>,
    /// The prior in use (the policy's own or the model's), `prior_len` masses.
    prior: [V; MAX_EXITS],
    prior_len: usize,
    at_most: V,
    target: usize,
    best: Option<(V, usize)>,
}

/// Checks a prior: one finite positive mass per exit, summing to 1 (within 1e-3), and
/// non-increasing when `monotone`.
pub(crate) fn check_prior<V: HaltValue>(
    prior: &[V],
    exits: usize,
    monotone: bool,
) -> Result<(), InferenceError> {
    // `p > 0` is false for NaN; infinities fail the sum.
    let ok = prior.len() == exits
        && prior.iter().all(|p| *p > V::ZERO)
        && V::sums_to_one(prior)
        && (!monotone || prior.windows(2).all(|w| w[1] <= w[0]));
    if ok {
        Ok(())
    } else {
        Err(InferenceError::BadPrior)
    }
}

impl<'p, V: HaltValue> HaltingState<'p, V> {
    /// Prepares a policy for a model with `exits` exits whose stored priors are
    /// `model_prior` (used when the policy does not give its own); `draw` gives a uniform
    /// number in [0, 1) (read only by [`Halting::SampleDepth`]). Fails with
    /// [`InferenceError::BadPrior`] on an invalid prior or a NaN threshold.
    pub fn new(
        halting: Halting<'p>,
        model_prior: &[V],
        exits: usize,
        draw: impl FnOnce() -> V,
    ) -> Result<Self, InferenceError> {
        let (given, uses_prior, monotone) = match halting {
            Halting::JointMode { prior } | Halting::Robust { prior, .. } => (prior, true, true),
            Halting::SampleDepth { prior } => (prior, true, false),
            Halting::All | Halting::Threshold { .. } | Halting::Depth { .. } => {
                (None, false, false)
            }
        };
        let mut prior = [V::ZERO; MAX_EXITS];
        let mut prior_len = 0;
        if uses_prior {
            let n = given.map_or(model_prior.len(), <[f32]>::len);
            if n > MAX_EXITS {
                return Err(InferenceError::BadPrior);
            }
            match given {
                Some(p) => {
                    if p.iter().any(|m| !m.is_finite()) {
                        return Err(InferenceError::BadPrior);
                    }
                    for (q, &m) in prior.iter_mut().zip(p) {
                        *q = V::from_f32(m);
                    }
                }
                None => prior[..n].copy_from_slice(model_prior),
            }
            check_prior(&prior[..n], exits, monotone)?;
            prior_len = n;
        }
        let mut at_most = V::ZERO;
        if let Halting::Threshold { at_most: t, .. }
        | Halting::Robust {
            mutual_information_below: t,
            ..
        } = halting
        {
            if t.is_nan() {
                return Err(InferenceError::BadPrior);
            }
            at_most = V::from_f32(t);
        }
        let mut target = exits.saturating_sub(1);
        if let Halting::Depth { exits: d } = halting {
            if d == 0 {
                return Err(InferenceError::BadPrior);
            }
            target = target.min(d - 1);
        }
        if let Halting::SampleDepth { .. } = halting {
            let u = draw();
            let mut cumulative = V::ZERO;
            for (l, &mass) in prior[..prior_len].iter().enumerate() {
                cumulative = V::add(cumulative, mass);
                if u < cumulative {
                    target = l;
                    break;
                }
            }
        }
        Ok(Self {
            halting,
            prior,
            prior_len,
            at_most,
            target,
            best: None,
        })
    }

    /// Whether every exit must be computed regardless of what they say.
    pub fn runs_everything(&self) -> bool {
        self.halting == Halting::All
    }

    /// The exit the policy stops at, when that is known before anything runs: the last for
    /// [`Halting::All`], the budget or the drawn depth for [`Halting::Depth`] and
    /// [`Halting::SampleDepth`]; `None` for the policies that decide from what the exits say.
    pub fn known_target(&self) -> Option<usize> {
        match self.halting {
            Halting::All | Halting::Depth { .. } | Halting::SampleDepth { .. } => Some(self.target),
            Halting::JointMode { .. } | Halting::Threshold { .. } | Halting::Robust { .. } => None,
        }
    }

    /// Told exit `l` (of `exits`); returns true to stop here.
    pub fn observe(&mut self, l: usize, exits: usize, summary: &ExitSummary<V>) -> bool {
        let last = l + 1 >= exits;
        match self.halting {
            Halting::All => last,
            Halting::JointMode { .. } | Halting::Robust { .. } => {
                // The joint mode trusts every exit; the robust policy the last, and the others
                // when their weight samples agree (mutual information below τ).
                let trusted = match self.halting {
                    Halting::Robust { .. } => last || summary.mutual_information < self.at_most,
                    _ => true,
                };
                let prior = &self.prior[..self.prior_len];
                let mass = |e: usize| prior.get(e).copied().unwrap_or(V::ZERO);
                if trusted {
                    let joint = V::mul(summary.confidence, mass(l));
                    if self.best.is_none_or(|(b, _)| joint > b) {
                        self.best = Some((joint, l));
                    }
                }
                last || self.best.is_some_and(|(b, _)| b >= mass(l + 1))
            }
            Halting::SampleDepth { .. } | Halting::Depth { .. } => last || l >= self.target,
            Halting::Threshold { measure, .. } => {
                let u = match measure {
                    Uncertainty::MutualInformation => summary.mutual_information,
                    Uncertainty::PredictiveEntropy => summary.predictive_entropy,
                };
                last || u <= self.at_most
            }
        }
    }

    /// The exit that answers, once stopped after exit `l`.
    pub fn answer(&self, l: usize) -> usize {
        match self.halting {
            Halting::JointMode { .. } | Halting::Robust { .. } => self.best.map_or(l, |(_, e)| e),
            _ => l,
        }
    }
}
