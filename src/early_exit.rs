//! Early exit as Bayesian control flow (README: "Early-exit ResNets"): a residual network with an exit head
//! after every block, a latent depth `z` with prior `p(z)`, and the joint
//! `p(y, z | x) ∝ p(y | x, z) p(z)` over label and depth. The engine computes block by block,
//! hands every exit's posterior predictive to a [`Halting`] policy, and stops as soon as the
//! policy allows: blocks not run cost nothing.

use crate::error::InferenceError;
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
}

/// What one exit said.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExitSummary {
    /// Most probable class at this exit.
    pub class: usize,
    /// Its predictive probability `max_y p(y | x, z)`.
    pub confidence: f32,
    /// Predictive entropy, nats.
    pub predictive_entropy: f32,
    /// Mutual information, nats.
    pub mutual_information: f32,
}

/// The answer of an early-exit model.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitPrediction<const K: usize> {
    /// The posterior predictive at the answering exit, with its uncertainty.
    pub prediction: Prediction<K>,
    /// Index of the answering exit (0 = after the first block).
    pub exit: usize,
    /// Exits computed: the depth used (blocks run).
    pub depth: usize,
    /// Multiply-accumulates spent per weight sample (the layers run, exit heads included);
    /// a Monte Carlo run with M samples spends M times this.
    pub macs: usize,
    /// What every computed exit said, in order.
    pub exits: heapless::Vec<ExitSummary, MAX_EXITS>,
}

/// A policy in progress: told each exit's summary in order, decides whether to stop and which
/// exit answers. The engine drives it; it can also replay a policy on recorded summaries (the
/// decisions depend on nothing else), as the host's parameter sweeps do.
#[derive(Clone, Debug)]
pub struct HaltingState<'p> {
    halting: Halting<'p>,
    prior: Option<&'p [f32]>,
    target: usize,
    best: Option<(f32, usize)>,
}

/// Checks a prior: one finite positive mass per exit, summing to 1 (within 1e-3), and
/// non-increasing when `monotone`.
pub(crate) fn check_prior(
    prior: &[f32],
    exits: usize,
    monotone: bool,
) -> Result<(), InferenceError> {
    let sum: f32 = prior.iter().sum();
    let ok = prior.len() == exits
        && prior.iter().all(|p| p.is_finite() && *p > 0.0)
        && (sum - 1.0).abs() <= 1e-3
        && (!monotone || prior.windows(2).all(|w| w[1] <= w[0]));
    if ok {
        Ok(())
    } else {
        Err(InferenceError::BadPrior)
    }
}

impl<'p> HaltingState<'p> {
    /// Prepares a policy for a model with `exits` exits whose stored priors are
    /// `model_prior` (used when the policy does not give its own); `draw` gives a uniform
    /// number in [0, 1) (read only by [`Halting::SampleDepth`]). Fails with
    /// [`InferenceError::BadPrior`] on an invalid prior or a NaN threshold.
    pub fn new(
        halting: Halting<'p>,
        model_prior: &'p [f32],
        exits: usize,
        draw: impl FnOnce() -> f32,
    ) -> Result<Self, InferenceError> {
        let (prior, monotone) = match halting {
            Halting::JointMode { prior } => (Some(prior.unwrap_or(model_prior)), true),
            Halting::SampleDepth { prior } => (Some(prior.unwrap_or(model_prior)), false),
            Halting::All | Halting::Threshold { .. } | Halting::Depth { .. } => (None, false),
        };
        if let Some(p) = prior {
            check_prior(p, exits, monotone)?;
        }
        if let Halting::Threshold { at_most, .. } = halting {
            if at_most.is_nan() {
                return Err(InferenceError::BadPrior);
            }
        }
        let mut target = exits.saturating_sub(1);
        if let Halting::Depth { exits: d } = halting {
            if d == 0 {
                return Err(InferenceError::BadPrior);
            }
            target = target.min(d - 1);
        }
        if let (Halting::SampleDepth { .. }, Some(p)) = (halting, prior) {
            let u = draw();
            let mut cumulative = 0.0;
            for (l, &mass) in p.iter().enumerate() {
                cumulative += mass;
                if u < cumulative {
                    target = l;
                    break;
                }
            }
        }
        Ok(Self {
            halting,
            prior,
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
            Halting::JointMode { .. } | Halting::Threshold { .. } => None,
        }
    }

    /// Told exit `l` (of `exits`); returns true to stop here.
    pub fn observe(&mut self, l: usize, exits: usize, summary: &ExitSummary) -> bool {
        let last = l + 1 >= exits;
        match self.halting {
            Halting::All => last,
            Halting::JointMode { .. } => {
                let prior = self.prior.unwrap_or(&[]);
                let joint = summary.confidence * prior.get(l).copied().unwrap_or(0.0);
                if self.best.is_none_or(|(b, _)| joint > b) {
                    self.best = Some((joint, l));
                }
                let best = self.best.map_or(0.0, |(b, _)| b);
                last || best >= prior.get(l + 1).copied().unwrap_or(0.0)
            }
            Halting::SampleDepth { .. } | Halting::Depth { .. } => last || l >= self.target,
            Halting::Threshold { measure, at_most } => {
                let u = match measure {
                    Uncertainty::MutualInformation => summary.mutual_information,
                    Uncertainty::PredictiveEntropy => summary.predictive_entropy,
                };
                last || u <= at_most
            }
        }
    }

    /// The exit that answers, once stopped after exit `l`.
    pub fn answer(&self, l: usize) -> usize {
        match self.halting {
            Halting::JointMode { .. } => self.best.map_or(l, |(_, e)| e),
            _ => l,
        }
    }
}
