//! Early-exit options of `eval` and `predict`, and the simulation of early-exit models: every
//! image through `Engine::predict_u8_early_exit`, the device's code, with its depth and MACs.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tinybayes::early_exit::{ExitSummary, Halting, QExitPrediction, Uncertainty};
use tinybayes::fixed::QModel;
use tinybayes::format::Precision;
use tinybayes::numeric::FixedPoint;
use tinybayes::{Engine, ExitPrediction, Mode, Model, Q16, Q8, UQ16};

use crate::runner::Runner;
use crate::simulate::{
    for_each_example, outputs_crc32, signed_codes, Examples, FixedFeed, FloatFeed, ImagePrediction,
    Images,
};

/// Samples per pass when simulating early exit on the host: up to this many samples advance
/// together exit by exit; with more, a policy that reads the exits regenerates the chunks'
/// paths per exit (the same bits, more time). RAM is plentiful here, so the chunk is large.
pub const EARLY_EXIT_CHUNK: usize = 64;

/// The halting policies of `eval --halting` ([`tinybayes::early_exit`] defines each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Run every block (the reference).
    All,
    /// (a) The exact mode of p(y, z | x), stopping with the early-termination bound.
    Joint,
    /// (b) A depth sampled from its posterior (which is the prior for this model).
    Sample,
    /// (c) Stop at the first exit whose mutual information is at most --threshold.
    Mi,
    /// (c) Stop at the first exit whose predictive entropy is at most --threshold.
    Entropy,
    /// (d) The exact joint mode over the exits whose mutual information is below --mi-below
    /// (and the last): never stops early on an input the exit is epistemically unsure about.
    Robust,
}

/// Early-exit options (used by early-exit models only); the default is none given.
#[derive(Args, Debug, Clone, Default)]
pub struct HaltingArgs {
    /// Halting policy of an early-exit model [default: joint].
    #[arg(long, value_enum)]
    pub halting: Option<Policy>,
    /// Strength lambda of the truncated geometric depth prior p(z = l) ∝ (1 - lambda)^(l - 1)
    /// for `joint`, `sample` and `robust` [default: the prior stored in the model].
    #[arg(long, allow_negative_numbers = true, value_name = "LAMBDA")]
    pub prior_lambda: Option<f64>,
    /// Threshold in nats for `mi` and `entropy`.
    #[arg(long, allow_negative_numbers = true, value_name = "NATS")]
    pub threshold: Option<f32>,
    /// Bound τ in nats for `robust`: an exit before the last answers only if its mutual
    /// information is strictly below τ (0: every block; inf: the joint mode). Choose it on
    /// validation images (`eval --suggest-mi-below`), not on the test set.
    #[arg(long, allow_negative_numbers = true, value_name = "NATS")]
    pub mi_below: Option<f32>,
}

/// A resolved policy with its prior.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HaltingSpec {
    /// The policy.
    pub policy: Policy,
    /// The depth prior used (`joint`, `sample`), one mass per exit.
    pub prior: Option<Vec<f32>>,
    /// The threshold (`mi`, `entropy`).
    pub threshold: Option<f32>,
    /// The mutual-information bound τ of `robust`, nats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mi_below: Option<f32>,
}

/// The truncated geometric prior of strength `lambda` over `exits` exits.
pub fn geometric_prior(exits: usize, lambda: f64) -> Result<Vec<f32>> {
    if !(0.0..1.0).contains(&lambda) {
        bail!("--prior-lambda must be in [0, 1), got {lambda}");
    }
    let raw: Vec<f64> = (0..exits).map(|l| (1.0 - lambda).powi(l as i32)).collect();
    let total: f64 = raw.iter().sum();
    Ok(raw.iter().map(|p| (p / total) as f32).collect())
}

impl HaltingArgs {
    /// Resolves the options for a model with `exits` exits.
    pub fn resolve(&self, exits: usize) -> Result<HaltingSpec> {
        let policy = self.halting.unwrap_or(Policy::Joint);
        let prior = match (policy, self.prior_lambda) {
            (Policy::Joint | Policy::Sample | Policy::Robust, Some(lambda)) => {
                Some(geometric_prior(exits, lambda)?)
            }
            (Policy::Joint | Policy::Sample | Policy::Robust, None) => None,
            (_, Some(_)) => bail!("--prior-lambda applies to --halting joint, sample or robust"),
            (_, None) => None,
        };
        let threshold = match (policy, self.threshold) {
            (Policy::Mi | Policy::Entropy, Some(t)) if t.is_finite() && t >= 0.0 => Some(t),
            (Policy::Mi | Policy::Entropy, Some(t)) => {
                bail!("--threshold must be a non-negative number of nats, got {t}")
            }
            (Policy::Mi | Policy::Entropy, None) => {
                bail!("--halting mi and entropy need --threshold (nats)")
            }
            (_, Some(_)) => bail!("--threshold applies to --halting mi or entropy"),
            (_, None) => None,
        };
        let mi_below = match (policy, self.mi_below) {
            // +inf is allowed: it trusts every exit (the joint mode).
            (Policy::Robust, Some(t)) if t >= 0.0 => Some(t),
            (Policy::Robust, Some(t)) => {
                bail!("--mi-below must be a non-negative number of nats, got {t}")
            }
            (Policy::Robust, None) => bail!(
                "--halting robust needs --mi-below NATS (choose it on validation images with \
                 eval --suggest-mi-below)"
            ),
            (_, Some(_)) => bail!("--mi-below applies to --halting robust"),
            (_, None) => None,
        };
        Ok(HaltingSpec {
            policy,
            prior,
            threshold,
            mi_below,
        })
    }
}

impl HaltingSpec {
    /// The core's policy, borrowing this spec's prior.
    pub fn halting(&self) -> Halting<'_> {
        let prior = self.prior.as_deref();
        let at_most = self.threshold.unwrap_or(0.0);
        match self.policy {
            Policy::All => Halting::All,
            Policy::Joint => Halting::JointMode { prior },
            Policy::Sample => Halting::SampleDepth { prior },
            Policy::Mi => Halting::Threshold {
                measure: Uncertainty::MutualInformation,
                at_most,
            },
            Policy::Entropy => Halting::Threshold {
                measure: Uncertainty::PredictiveEntropy,
                at_most,
            },
            Policy::Robust => Halting::Robust {
                prior,
                // Resolved specs always hold the bound; 0 would run every block.
                mutual_information_below: self.mi_below.unwrap_or(0.0),
            },
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match (self.policy, &self.prior, self.threshold) {
            (Policy::All, _, _) => "every block".into(),
            (Policy::Joint, Some(_), _) => "exact joint mode (given prior)".into(),
            (Policy::Joint, None, _) => "exact joint mode (model prior)".into(),
            (Policy::Sample, _, _) => "sampled depth".into(),
            (Policy::Mi, _, Some(t)) => format!("mutual information <= {t} nats"),
            (Policy::Entropy, _, Some(t)) => format!("predictive entropy <= {t} nats"),
            (Policy::Robust, prior, _) => format!(
                "exact joint mode over exits with mutual information < {} nats ({})",
                self.mi_below.unwrap_or(0.0),
                if prior.is_some() {
                    "given prior"
                } else {
                    "model prior"
                }
            ),
            _ => format!("{:?}", self.policy),
        }
    }
}

/// One image's early-exit result.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitResult {
    /// The prediction of the answering exit.
    pub prediction: ImagePrediction,
    /// Answering exit (0-based).
    pub exit: usize,
    /// Blocks run.
    pub depth: usize,
    /// MACs per weight sample.
    pub macs: usize,
    /// The largest predictive entropy of the exits computed (nats): the doubt of every exit
    /// the policy passed, which the device reads from `ExitPrediction::exits`.
    pub largest_predictive_entropy: f32,
    /// The largest mutual information of the exits computed (nats).
    pub largest_mutual_information: f32,
}

/// The largest (predictive entropy, mutual information) over exit summaries.
fn largest<V: Copy>(exits: &[ExitSummary<V>], f32_of: impl Fn(V) -> f32) -> (f32, f32) {
    exits.iter().fold((0.0f32, 0.0f32), |(h, mi), s| {
        (
            h.max(f32_of(s.predictive_entropy)),
            mi.max(f32_of(s.mutual_information)),
        )
    })
}

/// Every exit's summary for every image, in the number type its policy decides in.
#[derive(Clone, Debug, PartialEq)]
pub enum ExitSummaries {
    /// An f32 model's.
    F32(Vec<Vec<ExitSummary>>),
    /// A fixed-point model's (its policies decide on these integers).
    Fixed(Vec<Vec<ExitSummary<UQ16>>>),
}

impl ExitSummaries {
    /// The class each image's exit `e` predicts.
    pub fn classes_at(&self, e: usize) -> Vec<usize> {
        match self {
            ExitSummaries::F32(all) => all.iter().map(|s| s[e].class).collect(),
            ExitSummaries::Fixed(all) => all.iter().map(|s| s[e].class).collect(),
        }
    }
}

/// One run of the early-exit engine over every image, in the model's format.
enum Outputs {
    F32(Vec<ExitPrediction<16>>),
    Fixed(Vec<QExitPrediction<16>>),
}

/// Runs every image through the early-exit engine with `halting` ([`for_each_example`]: in
/// parallel, image `i` with the generator `seed + i`), f32 or fixed point. Returns the
/// results and the digest of the answering exits' outputs.
pub fn simulate_early_exit(
    runner: &Runner,
    examples: Examples<'_>,
    mode: Mode,
    seed: u64,
    spec: &HaltingSpec,
) -> Result<(Vec<ExitResult>, u32)> {
    Ok(match run_early_exit(runner, examples, mode, seed, spec)? {
        Outputs::F32(outputs) => {
            let crc = outputs_crc32(outputs.iter().map(|p| &p.prediction));
            let results = outputs
                .into_iter()
                .map(|p| {
                    let (h, mi) = largest(&p.exits, |v| v);
                    ExitResult {
                        prediction: ImagePrediction::from(p.prediction),
                        exit: p.exit,
                        depth: p.depth,
                        macs: p.macs,
                        largest_predictive_entropy: h,
                        largest_mutual_information: mi,
                    }
                })
                .collect();
            (results, crc)
        }
        Outputs::Fixed(outputs) => {
            let crc = outputs_crc32(outputs.iter().map(|p| &p.prediction));
            let results = outputs
                .iter()
                .map(|p| {
                    let (h, mi) = largest(&p.exits, UQ16::to_f32);
                    ExitResult {
                        prediction: ImagePrediction::from(&p.prediction),
                        exit: p.exit,
                        depth: p.depth,
                        macs: p.macs,
                        largest_predictive_entropy: h,
                        largest_mutual_information: mi,
                    }
                })
                .collect();
            (results, crc)
        }
    })
}

/// Every exit's summary for every image, running as `spec` says (every block, for
/// replaying policies).
pub fn all_exit_summaries(
    runner: &Runner,
    images: &Images<'_>,
    mode: Mode,
    seed: u64,
    spec: &HaltingSpec,
) -> Result<ExitSummaries> {
    Ok(
        match run_early_exit(runner, Examples::Bytes(images), mode, seed, spec)? {
            Outputs::F32(o) => {
                ExitSummaries::F32(o.into_iter().map(|p| p.exits.to_vec()).collect())
            }
            Outputs::Fixed(o) => {
                ExitSummaries::Fixed(o.into_iter().map(|p| p.exits.to_vec()).collect())
            }
        },
    )
}

fn run_early_exit(
    runner: &Runner,
    examples: Examples<'_>,
    mode: Mode,
    seed: u64,
    spec: &HaltingSpec,
) -> Result<Outputs> {
    if let Examples::Bytes(images) = examples {
        crate::simulate::check_image_set(runner.input_shape(), images)?;
    }
    if runner.num_classes() > 16 {
        bail!("early-exit simulation supports up to 16 classes");
    }
    let halting = spec.halting();
    Ok(match runner {
        Runner::F32(model) => Outputs::F32(run_f32(model, examples, mode, seed, halting)?),
        Runner::Fixed(model) => Outputs::Fixed(match model.precision() {
            Precision::Q16 => run_fixed::<Q16>(model, examples, mode, seed, halting)?,
            _ => run_fixed::<Q8>(model, examples, mode, seed, halting)?,
        }),
    })
}

fn run_f32(
    model: &Model<'_>,
    examples: Examples<'_>,
    mode: Mode,
    seed: u64,
    halting: Halting<'_>,
) -> Result<Vec<ExitPrediction<16>>> {
    match examples {
        Examples::Bytes(images) => exits_f32(model, images.pixels, mode, seed, halting),
        Examples::Raw(values) => exits_f32(model, values, mode, seed, halting),
    }
}

/// The f32 early-exit engine over examples of `model.input_len()` values of `E`.
fn exits_f32<E: FloatFeed>(
    model: &Model<'_>,
    values: &[E],
    mode: Mode,
    seed: u64,
    halting: Halting<'_>,
) -> Result<Vec<ExitPrediction<16>>> {
    let workspace_len = tinybayes::Plan::new(model, EARLY_EXIT_CHUNK).workspace_len();
    Ok(for_each_example(
        values,
        model.input_len(),
        seed,
        || vec![0.0f32; workspace_len],
        |w, x, rng| {
            let mut engine = Engine::<EARLY_EXIT_CHUNK>::new(model, w)?;
            E::predict_early_exit(&mut engine, x, mode, halting, rng)
        },
    )?)
}

fn run_fixed<N: FixedPoint>(
    model: &QModel<'_>,
    examples: Examples<'_>,
    mode: Mode,
    seed: u64,
    halting: Halting<'_>,
) -> Result<Vec<QExitPrediction<16>>> {
    match examples {
        Examples::Bytes(images) => exits_fixed::<N, _>(model, images.pixels, mode, seed, halting),
        Examples::Raw(values) => {
            let codes = signed_codes(model, values)?;
            exits_fixed::<N, _>(model, &codes, mode, seed, halting)
        }
    }
}

/// The fixed-point early-exit engine over examples of `model.input_len()` values of `E`.
fn exits_fixed<N: FixedPoint, E: FixedFeed>(
    model: &QModel<'_>,
    values: &[E],
    mode: Mode,
    seed: u64,
    halting: Halting<'_>,
) -> Result<Vec<QExitPrediction<16>>> {
    let workspace_len = model.workspace_len(EARLY_EXIT_CHUNK);
    Ok(for_each_example(
        values,
        model.input_len(),
        seed,
        || vec![0u64; workspace_len],
        |w, x, rng| {
            let mut engine = Engine::<EARLY_EXIT_CHUNK, N>::new(model, w)?;
            E::predict_early_exit(&mut engine, x, mode, halting, rng)
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro128PlusPlus;
    use tinybayes::writer::synthetic;

    #[test]
    fn options_resolve_with_one_line_errors() {
        let args = |halting, lambda, threshold| HaltingArgs {
            halting,
            prior_lambda: lambda,
            threshold,
            mi_below: None,
        };
        let spec = args(None, Some(0.5), None).resolve(3).unwrap();
        assert_eq!(spec.policy, Policy::Joint);
        let p = spec.prior.unwrap();
        assert!((p[0] - 4.0 / 7.0).abs() < 1e-6 && (p[2] - 1.0 / 7.0).abs() < 1e-6);
        assert!(args(Some(Policy::Mi), None, None).resolve(3).is_err());
        assert!(args(Some(Policy::Mi), Some(0.2), Some(0.1))
            .resolve(3)
            .is_err());
        assert!(args(Some(Policy::Joint), Some(1.5), None)
            .resolve(3)
            .is_err());
        assert!(args(Some(Policy::Entropy), None, Some(f32::NAN))
            .resolve(3)
            .is_err());
        let t = args(Some(Policy::Entropy), None, Some(0.3))
            .resolve(3)
            .unwrap();
        assert_eq!(t.threshold, Some(0.3));
        // The robust policy's bound: required, non-negative (inf allowed), its own.
        let robust = |lambda, tau| HaltingArgs {
            halting: Some(Policy::Robust),
            prior_lambda: lambda,
            threshold: None,
            mi_below: tau,
        };
        let spec = robust(Some(0.3), Some(0.01)).resolve(4).unwrap();
        assert_eq!(
            (spec.mi_below, spec.prior.map(|p| p.len())),
            (Some(0.01), Some(4))
        );
        assert_eq!(
            spec_halting(robust(None, Some(f32::INFINITY))),
            Halting::Robust {
                prior: None,
                mutual_information_below: f32::INFINITY
            }
        );
        for bad in [None, Some(-0.1), Some(f32::NAN), Some(f32::NEG_INFINITY)] {
            let err = robust(None, bad).resolve(3).unwrap_err().to_string();
            assert!(err.contains("--mi-below") && !err.contains('\n'), "{err}");
        }
        let mut joint = robust(None, Some(0.1));
        joint.halting = Some(Policy::Joint);
        assert!(joint.resolve(3).is_err());
        let mut mi = robust(None, None);
        mi.halting = Some(Policy::Mi);
        mi.threshold = Some(0.1);
        mi.mi_below = Some(0.1);
        assert!(mi.resolve(3).is_err());
    }

    fn spec_halting(args: HaltingArgs) -> Halting<'static> {
        let spec = args.resolve(3).unwrap();
        match spec.halting() {
            Halting::Robust {
                prior: None,
                mutual_information_below,
            } => Halting::Robust {
                prior: None,
                mutual_information_below,
            },
            other => panic!("not a robust policy: {other:?}"),
        }
    }

    #[test]
    fn simulation_matches_the_engine_image_by_image() {
        let spec = synthetic::resnet_ee(4, 6, 4, 5, &[0.5, 0.3, 0.2], 2.0);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let px: Vec<u8> = (0..10 * 36).map(|i| (i * 41 % 256) as u8).collect();
        let images = Images {
            rows: 6,
            cols: 6,
            pixels: &px,
        };
        let halting = HaltingArgs {
            halting: Some(Policy::Joint),
            prior_lambda: Some(0.6),
            threshold: None,
            mi_below: None,
        }
        .resolve(3)
        .unwrap();
        let mode = Mode::MonteCarlo {
            samples: core::num::NonZeroU16::new(8).unwrap(),
        };
        let runner = Runner::from_buffer(buffer.clone()).unwrap();
        let (got, _) =
            simulate_early_exit(&runner, Examples::Bytes(&images), mode, 3, &halting).unwrap();
        assert_eq!(got.len(), 10);
        let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 8).workspace_len()];
        for (i, g) in got.iter().enumerate() {
            let mut engine = Engine::<8>::new(&model, &mut ws).unwrap();
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(3 + i as u64);
            let p: ExitPrediction<5> = engine
                .predict_u8_early_exit(&px[i * 36..(i + 1) * 36], mode, halting.halting(), &mut rng)
                .unwrap();
            assert_eq!((g.exit, g.depth, g.macs), (p.exit, p.depth, p.macs));
            assert_eq!(g.prediction, ImagePrediction::from(p.prediction));
        }
    }

    /// f32 data on an early-exit model: the raw values run through `predict_raw_early_exit`,
    /// whose normalisation of a byte's value gives the bits of `predict_u8_early_exit` on the
    /// byte, so the two simulations agree exactly, exit for exit; a q8 model of bytes refuses
    /// f32 data.
    #[test]
    fn raw_f32_examples_run_early_exit_models() {
        let spec = synthetic::resnet_ee(5, 6, 4, 5, &[0.5, 0.3, 0.2], 2.0);
        let buffer = spec.to_buffer().unwrap();
        let px: Vec<u8> = (0..6 * 36).map(|i| (i * 53 % 256) as u8).collect();
        let values: Vec<f32> = px.iter().map(|&b| b as f32).collect();
        let images = Images {
            rows: 6,
            cols: 6,
            pixels: &px,
        };
        let halting = HaltingArgs {
            halting: Some(Policy::Joint),
            prior_lambda: Some(0.6),
            threshold: None,
            mi_below: None,
        }
        .resolve(3)
        .unwrap();
        let mode = Mode::MonteCarlo {
            samples: core::num::NonZeroU16::new(8).unwrap(),
        };
        let runner = Runner::from_buffer(buffer).unwrap();
        let (bytes, crc_bytes) =
            simulate_early_exit(&runner, Examples::Bytes(&images), mode, 7, &halting).unwrap();
        let (raw, crc_raw) =
            simulate_early_exit(&runner, Examples::Raw(&values), mode, 7, &halting).unwrap();
        assert_eq!(crc_bytes, crc_raw);
        for (b, r) in bytes.iter().zip(&raw) {
            assert_eq!(
                (b.exit, b.depth, &b.prediction),
                (r.exit, r.depth, &r.prediction)
            );
        }
        let q8 = tinybayes::fixed::quantize::quantize(
            &spec,
            Precision::Q8,
            &[&px[..36], &px[36..72]],
            Default::default(),
        )
        .unwrap();
        let q8_runner = Runner::from_buffer(q8.to_buffer().unwrap()).unwrap();
        let err = simulate_early_exit(&q8_runner, Examples::Raw(&values), mode, 7, &halting)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsigned bytes") || err.contains("signed"),
            "{err}"
        );
    }
}
