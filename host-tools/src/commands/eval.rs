//! `tinybayes eval`: runs a model over a labelled IDX test set exactly as the device would, and
//! writes a report directory: `report.json` (accuracy, NLL, Brier score, ECE, reliability bins,
//! uncertainty of correct vs wrong predictions, per-layer sparsity) and PNG plots beside it.
//!
//! Nothing existing is overwritten without `--force`: every output file is checked before any
//! work starts, and each is written atomically (`report.json` last).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tinybayes::Mode;

use crate::commands::predict::{check_output_dir, SamplingArgs};
use crate::data::{DataKeys, Values};
use crate::files::{check_writable, write_new};
use crate::halting::{
    all_exit_summaries, geometric_prior, ExitSummaries, HaltingArgs, HaltingSpec, Policy,
};
use crate::idx::{load_images, load_labelled};
use crate::metrics::{
    evaluate, out_of_distribution, propose_thresholds, LayerSparsity, Metrics, OutOfDistribution,
    Thresholds, ECE_BINS, PROBABILITY_FLOOR,
};
use crate::plots;
use crate::runner::Runner;
use crate::runner::{load_runner, PrecisionArgs};
use crate::simulate::{describe_mode, Examples, ImagePrediction, Images};
use tinybayes::early_exit::{ExitSummary, HaltValue, Halting, HaltingState, Uncertainty};
use tinybayes::UQ16;

/// Name of the JSON report inside the report directory.
pub const REPORT_FILE: &str = "report.json";
/// Reliability diagram.
pub const RELIABILITY_PNG: &str = "reliability.png";
/// Histogram of predictive entropy, correct vs wrong.
pub const ENTROPY_PNG: &str = "entropy_hist.png";
/// Histogram of mutual information, correct vs wrong.
pub const MUTUAL_INFO_PNG: &str = "mutual_info_hist.png";
/// Fraction of weights pruned per layer.
pub const SPARSITY_PNG: &str = "sparsity.png";

/// Every file `eval` writes in the report directory (the JSON report last).
pub const OUTPUT_FILES: [&str; 5] = [
    RELIABILITY_PNG,
    ENTROPY_PNG,
    MUTUAL_INFO_PNG,
    SPARSITY_PNG,
    REPORT_FILE,
];

/// Arguments of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model file (.tbm).
    #[arg(long)]
    pub model: PathBuf,
    /// IDX image file (`[n, rows, cols]` unsigned bytes, plain or gzip; at most 1073741824
    /// bytes of pixels).
    #[arg(long, required_unless_present = "data", requires = "labels")]
    pub images: Option<PathBuf>,
    /// IDX label file (`[n]` unsigned bytes, each below the model's classes); with --data
    /// FILE.npy, a .npy of integer labels.
    #[arg(long, required_unless_present = "data")]
    pub labels: Option<PathBuf>,
    /// Data file instead of --images/--labels: a .npz (its x_test and y_test, or x_train and
    /// y_train when it has no test split), a .npy of samples (labels from --labels FILE.npy)
    /// or a .csv with a `label` column. Each example's shape must be the model's input
    /// shape; f32 values are fed raw and normalised by the engine with the model's stored
    /// normalisation, u8 values as bytes.
    #[arg(long, conflicts_with = "images")]
    pub data: Option<PathBuf>,
    /// With --data FILE.npz: the arrays to read, as NAME=KEY pairs (NAME: x_train, y_train,
    /// x_test, y_test), e.g. `x_test=X_val,y_test=y_val` [default: the names themselves].
    #[arg(long, requires = "data", value_parser = DataKeys::parse, value_name = "PAIRS")]
    pub data_keys: Option<DataKeys>,
    /// Sampling of the posterior.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Number format.
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Early exit (early-exit models only).
    #[command(flatten)]
    pub halting: HaltingArgs,
    /// Early-exit models: also sweep the prior strength of the joint-mode policy, the
    /// thresholds of the mutual-information and entropy policies and the bound of the robust
    /// policy (with the model's prior), and plot accuracy against average MACs (sweep.png,
    /// and `sweep` in report.json).
    #[arg(long)]
    pub sweep: bool,
    /// Propose "unsure" thresholds from these (validation) labels: the mutual information and
    /// the top probability that each flag at least SHARE (0 < SHARE <= 1) of the wrong
    /// answers, with the share of right answers they flag too (`thresholds` in report.json).
    /// Use with --validation-of, not on the test set.
    #[arg(long, value_name = "SHARE")]
    pub suggest_thresholds: Option<f64>,
    /// With --suggest-thresholds: also write the thresholds as Rust constants
    /// (`UNSURE_MUTUAL_INFORMATION`, `UNSURE_CONFIDENCE`) to FILE, as the firmware's demos
    /// read them (firmware/src/unsure/): f32 for an f32 model, UQ16 raw bits for q8 and q16,
    /// each flagging on the device exactly the answers it flags here.
    #[arg(long, value_name = "FILE", requires = "suggest_thresholds")]
    pub emit_rust: Option<PathBuf>,
    /// Evaluate on the validation split that the training run in DIR held out of these images
    /// (give the training images and labels): the same seeded split as the trainer's. For
    /// choosing a halting prior or threshold without touching the test set.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["skip", "limit"])]
    pub validation_of: Option<PathBuf>,
    /// Evaluate on the validation split `tinybayes train` holds out of these images with
    /// `val_size = SIZE` and `seed = --split-seed` (the same seeded split as --validation-of,
    /// for when the run's checkpoint is not at hand: the shipped models were trained with
    /// 2000 and their config's seed, 0). Give the training images and labels.
    #[arg(
        long,
        value_name = "SIZE",
        conflicts_with_all = ["skip", "limit", "validation_of"]
    )]
    pub validation_split: Option<usize>,
    /// Seed of --validation-split (the training config's `seed`) [default: 0].
    #[arg(long, value_name = "SEED", requires = "validation_split")]
    pub split_seed: Option<u64>,
    /// Early-exit models: propose the bound τ of `--halting robust` on these (validation)
    /// images: the smallest τ (most conservative) whose robust policy, replayed on every
    /// exit's summaries, runs at most FRACTION (0 < FRACTION <= 1) of the executed MACs of
    /// every block (`early_exit.suggested_mi_below` in report.json). With `--halting robust`
    /// and no --mi-below, this evaluation then uses it. Not on the test set.
    #[arg(long, value_name = "FRACTION")]
    pub suggest_mi_below: Option<f64>,
    /// Skip this many images (and labels) first.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub skip: usize,
    /// Evaluate at most this many images (after --skip).
    #[arg(long, allow_negative_numbers = true)]
    pub limit: Option<usize>,
    /// Also run the model over these images that are unlike its training data (an IDX image
    /// file of the same shape, no labels; e.g. Fashion-MNIST for an MNIST model) and report
    /// how well predictive entropy and mutual information flag them (AUROC, means; `ood` in
    /// report.json, ood_hist.png). `--skip` and `--limit` select from these images too.
    #[arg(long, value_name = "IDX")]
    pub ood_images: Option<PathBuf>,
    /// Report directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: PathBuf,
    /// Overwrite an existing report.
    #[arg(long)]
    pub force: bool,
    /// Print the report (what report.json holds) as JSON on stdout instead of the summary;
    /// the files written are then named on stderr.
    #[arg(long)]
    pub json: bool,
}

/// The names of the plots in the report directory.
#[derive(Debug, Clone, Serialize)]
pub struct PlotFiles {
    /// Reliability diagram.
    pub reliability: &'static str,
    /// Predictive entropy histogram.
    pub predictive_entropy: &'static str,
    /// Mutual information histogram.
    pub mutual_information: &'static str,
    /// Sparsity per layer.
    pub sparsity: &'static str,
}

/// The contents of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Model file evaluated.
    pub model: String,
    /// Image file.
    pub images: String,
    /// Label file.
    pub labels: String,
    /// Number format run: `f32`, `q8` or `q16`.
    pub precision: &'static str,
    /// CRC-32 of every output bit in image order (`tinybayes::digest`, the firmware's parity
    /// digest; image `i` seeded with `seed + i`).
    pub outputs_crc32: String,
    /// `"mean_weights"` or `"monte_carlo"`.
    pub mode: &'static str,
    /// Monte Carlo samples per image (0 for mean weights).
    pub samples: u32,
    /// Seed (image i uses seed + i).
    pub seed: u64,
    /// Classes of the model.
    pub classes: usize,
    /// Number of confidence bins of the ECE.
    pub ece_bins: usize,
    /// Probability floor of the NLL.
    pub nll_probability_floor: f64,
    /// Wall time of the inference over all images, seconds.
    pub inference_seconds: f64,
    /// The metrics (flattened: count, correct, accuracy, nll, brier, ece, reliability,
    /// uncertainty).
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Fraction of weights pruned in each layer, from the model file.
    pub sparsity: Vec<LayerSparsity>,
    /// The plots written beside the report.
    pub plots: PlotFiles,
    /// Early-exit models: the policy, the depth and MACs used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_exit: Option<EarlyExitReport>,
    /// With `--ood-images`: how uncertainty flags the out-of-distribution images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodReport>,
    /// With `--suggest-thresholds`: proposed "unsure" thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
}

/// The early-exit part of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EarlyExitReport {
    /// The policy, its prior and threshold.
    pub halting: HaltingSpec,
    /// Exits of the model.
    pub exits: usize,
    /// Mean blocks run per image.
    pub mean_depth: f64,
    /// Images per depth (entry `d - 1` for `d` blocks).
    pub depth_histogram: Vec<usize>,
    /// Mean MACs per image per weight sample (Monte Carlo multiplies by the samples).
    pub mean_macs: f64,
    /// MACs per weight sample of running every block.
    pub full_macs: usize,
    /// `mean_macs / full_macs`.
    pub macs_fraction: f64,
    /// The same fraction for the unpruned architecture (every kernel tap of the blocks run),
    /// as early-exit papers count it.
    pub dense_macs_fraction: f64,
    /// Accuracy of every exit alone (running every block), when `--sweep` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_accuracy: Option<Vec<f64>>,
    /// The sweep, when `--sweep` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Vec<SweepPoint>>,
    /// The bound proposed by `--suggest-mi-below`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_mi_below: Option<MiBoundSuggestion>,
    /// The exit-depth histogram.
    pub depth_plot: &'static str,
    /// The sweep plot, when `--sweep` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_plot: Option<&'static str>,
}

/// The bound of `--halting robust` that `--suggest-mi-below` proposes, and what the policy
/// gives with it on the images it was chosen on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MiBoundSuggestion {
    /// The budget asked for: executed MACs as a fraction of running every block.
    pub macs_fraction_target: f64,
    /// The smallest τ (nats) meeting it: `--mi-below`.
    pub mi_below: f32,
    /// Executed MACs of the robust policy with τ / those of every block.
    pub macs_fraction: f64,
    /// Its accuracy.
    pub accuracy: f64,
    /// Its mean blocks run.
    pub mean_depth: f64,
    /// Accuracy of running every block.
    pub every_block_accuracy: f64,
    /// Accuracy of the joint mode (τ = +∞, the same prior).
    pub joint_accuracy: f64,
    /// Executed MACs fraction of the joint mode.
    pub joint_macs_fraction: f64,
}

/// One point of the sweep: a policy parameter and what it gives on this set.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// `joint` (parameter: prior lambda), `mi` or `entropy` (parameter: threshold in nats),
    /// `robust` (parameter: the bound τ in nats, with the model's prior).
    pub policy: &'static str,
    /// The parameter value.
    pub parameter: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Mean blocks run.
    pub mean_depth: f64,
    /// Mean MACs / MACs of running every block.
    pub macs_fraction: f64,
    /// The same for the unpruned architecture.
    pub dense_macs_fraction: f64,
}

/// Mutual information of the test set against the out-of-distribution images.
pub const OOD_PNG: &str = "ood_hist.png";

/// The out-of-distribution part of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct OodReport {
    /// The out-of-distribution image file.
    pub images: String,
    /// Its uncertainty against the test set's, and the AUROCs.
    #[serde(flatten)]
    pub metrics: OutOfDistribution,
    /// Early-exit models: the AUROCs when an image's score is the largest uncertainty of any
    /// exit the policy computed (not only the answering exit's): a policy that ran deeper
    /// because an exit was unsure keeps that doubt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_seen: Option<LargestSeenAuroc>,
    /// The histogram plot.
    pub plot: &'static str,
}

/// AUROCs of the largest uncertainty seen over the exits computed (early-exit models).
#[derive(Debug, Clone, Serialize)]
pub struct LargestSeenAuroc {
    /// By the largest predictive entropy.
    pub auroc_predictive_entropy: Option<f64>,
    /// By the largest mutual information.
    pub auroc_mutual_information: Option<f64>,
}

/// Exit-depth histogram, next to the report of an early-exit model.
pub const DEPTH_PNG: &str = "exit_depth.png";
/// Accuracy against MACs for the policy sweeps.
pub const SWEEP_PNG: &str = "sweep.png";

/// Lambdas of the joint-mode sweep.
const SWEEP_LAMBDAS: [f64; 12] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];
/// Thresholds (nats) of the mutual-information sweep.
const SWEEP_MI: [f64; 9] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];
/// Thresholds (nats) of the entropy sweep.
const SWEEP_ENTROPY: [f64; 9] = [0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.4, 0.8];

/// The exit priors stored in an f32 model (empty for a fixed-point one).
fn f32_priors(runner: &Runner) -> Vec<f32> {
    match runner {
        Runner::F32(m) => m.exit_priors().collect(),
        Runner::Fixed(_) => Vec::new(),
    }
}

/// The exit priors stored in a fixed-point model, as its policies read them (empty for f32).
fn fixed_priors(runner: &Runner) -> Vec<UQ16> {
    match runner {
        Runner::F32(_) => Vec::new(),
        Runner::Fixed(m) => m.exit_priors().collect(),
    }
}

/// Replays the policies on every image's per-exit summaries (from running every block): the
/// decisions depend on nothing else (tested against the engine in the core's early-exit
/// tests), so one run of every block prices every parameter.
fn sweep(
    runner: &Runner,
    exits: &ExitSummaries,
    labels: &[usize],
    macs_through: &[usize],
    dense_through: &[usize],
) -> Result<Vec<SweepPoint>> {
    match exits {
        ExitSummaries::F32(e) => {
            sweep_in(e, &f32_priors(runner), labels, macs_through, dense_through)
        }
        ExitSummaries::Fixed(e) => sweep_in(
            e,
            &fixed_priors(runner),
            labels,
            macs_through,
            dense_through,
        ),
    }
}

/// [`sweep`] on summaries in the policy's number type `V`; `model_prior` is the model's
/// stored prior (the robust points use it).
fn sweep_in<V: HaltValue>(
    exits: &[Vec<ExitSummary<V>>],
    model_prior: &[V],
    labels: &[usize],
    macs_through: &[usize],
    dense_through: &[usize],
) -> Result<Vec<SweepPoint>> {
    let mut points = Vec::new();
    let mut add = |policy: &'static str, parameter: f64, halting: Halting<'_>| -> Result<()> {
        let replayed = replay_all(halting, model_prior, exits, labels)?;
        points.push(SweepPoint {
            policy,
            parameter,
            accuracy: replayed.accuracy(),
            mean_depth: replayed.mean_depth(),
            macs_fraction: replayed.fraction(macs_through),
            dense_macs_fraction: replayed.fraction(dense_through),
        });
        Ok(())
    };
    let count = macs_through.len();
    for lambda in SWEEP_LAMBDAS {
        let prior = geometric_prior(count, lambda)?;
        add(
            "joint",
            lambda,
            Halting::JointMode {
                prior: Some(&prior),
            },
        )?;
    }
    for t in SWEEP_MI {
        let halting = Halting::Threshold {
            measure: Uncertainty::MutualInformation,
            at_most: t as f32,
        };
        add("mi", t, halting)?;
    }
    for t in SWEEP_ENTROPY {
        let halting = Halting::Threshold {
            measure: Uncertainty::PredictiveEntropy,
            at_most: t as f32,
        };
        add("entropy", t, halting)?;
    }
    for t in SWEEP_MI {
        let halting = Halting::Robust {
            prior: None,
            mutual_information_below: t as f32,
        };
        add("robust", t, halting)?;
    }
    Ok(points)
}

/// What a policy gives when replayed on every image's per-exit summaries.
struct Replayed {
    /// Images evaluated (at least 1, so that the means stay finite).
    images: usize,
    /// Images answered right.
    correct: usize,
    /// Images that stopped at each depth (`stops[d - 1]` after `d` exits).
    stops: Vec<usize>,
}

impl Replayed {
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images as f64
    }
    fn mean_depth(&self) -> f64 {
        let depth: usize = self
            .stops
            .iter()
            .enumerate()
            .map(|(d, &k)| (d + 1) * k)
            .sum();
        depth as f64 / self.images as f64
    }
    /// The mean cost per image, as a fraction of running every block, from the cost of
    /// stopping at each depth (`through[d - 1]`: executed or unpruned MACs).
    fn fraction(&self, through: &[usize]) -> f64 {
        let full = through.last().copied().unwrap_or(1).max(1) as f64;
        let spent: usize = self.stops.iter().zip(through).map(|(&k, &c)| k * c).sum();
        spent as f64 / self.images as f64 / full
    }
}

/// Replays `halting` on every image's per-exit summaries.
fn replay_all<V: HaltValue>(
    halting: Halting<'_>,
    model_prior: &[V],
    exits: &[Vec<ExitSummary<V>>],
    labels: &[usize],
) -> Result<Replayed> {
    let depths = exits.iter().map(Vec::len).max().unwrap_or(0);
    let mut replayed = Replayed {
        images: exits.len().max(1),
        correct: 0,
        stops: vec![0; depths],
    };
    for (summaries, &label) in exits.iter().zip(labels) {
        let (answer, d) = replay(halting, model_prior, summaries)?;
        replayed.correct += usize::from(summaries[answer].class == label);
        replayed.stops[d - 1] += 1;
    }
    Ok(replayed)
}

/// `--suggest-mi-below`: the smallest bound τ whose robust policy (prior `prior`, or the
/// model's) spends at most `target` of the executed MACs of every block on these images.
fn suggest_mi_below(
    runner: &Runner,
    exits: &ExitSummaries,
    prior: Option<&[f32]>,
    labels: &[usize],
    target: f64,
) -> Result<MiBoundSuggestion> {
    let macs_through = runner.macs_through_exits();
    match exits {
        ExitSummaries::F32(e) => {
            // The smallest f32 above `v`: `mi < τ` then holds exactly when `mi <= v`.
            let above = |v: f32| {
                if v.is_finite() && v >= 0.0 {
                    f32::from_bits(v.to_bits() + 1)
                } else {
                    f32::INFINITY
                }
            };
            let model_prior = f32_priors(runner);
            suggest_in(e, &model_prior, prior, labels, &macs_through, target, above)
        }
        ExitSummaries::Fixed(e) => {
            // τ converts to UQ16 by rounding `τ * 2^16`: (v + 1) / 2^16 converts to v + 1
            // exactly (mutual information stays far below 2^24 steps).
            let above = |v: UQ16| (f64::from(v.0) + 1.0) as f32 / 65536.0;
            let model_prior = fixed_priors(runner);
            suggest_in(e, &model_prior, prior, labels, &macs_through, target, above)
        }
    }
}

/// [`suggest_mi_below`] on summaries in the policy's number type `V`; `above(v)` is the
/// smallest τ under which an exit of mutual information `v` is trusted. The executed MACs
/// never grow with τ (a larger τ trusts more exits, so the best trusted joint reaches the
/// bound no later), so a binary search over the τ that change a decision finds the smallest.
fn suggest_in<V: HaltValue>(
    exits: &[Vec<ExitSummary<V>>],
    model_prior: &[V],
    prior: Option<&[f32]>,
    labels: &[usize],
    macs_through: &[usize],
    target: f64,
    above: impl Fn(V) -> f32,
) -> Result<MiBoundSuggestion> {
    let mut candidates: Vec<f32> = vec![0.0];
    for summaries in exits {
        let before_last = summaries.len().saturating_sub(1);
        candidates.extend(
            summaries[..before_last]
                .iter()
                .map(|s| above(s.mutual_information)),
        );
    }
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let robust = |tau: f32| Halting::Robust {
        prior,
        mutual_information_below: tau,
    };
    let at = |tau: f32| {
        replay_all(robust(tau), model_prior, exits, labels)
            .map(|r| (r.accuracy(), r.mean_depth(), r.fraction(macs_through)))
    };
    let (joint_accuracy, _, joint_macs_fraction) = at(f32::INFINITY)?;
    if joint_macs_fraction > target {
        bail!(
            "no --mi-below meets {:.1}% of the executed MACs on these images: even the joint \
             mode (τ = inf) runs {:.1}%",
            100.0 * target,
            100.0 * joint_macs_fraction
        );
    }
    // The largest candidate trusts every exit before the last: the joint mode's decisions.
    let (mut lo, mut hi) = (0, candidates.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if at(candidates[mid])?.2 <= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mi_below = candidates[lo];
    let (accuracy, mean_depth, macs_fraction) = at(mi_below)?;
    let (every_block_accuracy, _, _) = at(0.0)?;
    Ok(MiBoundSuggestion {
        macs_fraction_target: target,
        mi_below,
        macs_fraction,
        accuracy,
        mean_depth,
        every_block_accuracy,
        joint_accuracy,
        joint_macs_fraction,
    })
}

/// The decision of a policy on one image's per-exit summaries: (answering exit, depth).
/// `model_prior` serves the policies that use the model's prior.
fn replay<V: HaltValue>(
    halting: Halting<'_>,
    model_prior: &[V],
    summaries: &[ExitSummary<V>],
) -> Result<(usize, usize)> {
    let count = summaries.len();
    let mut state = HaltingState::<V>::new(halting, model_prior, count, || V::ZERO)
        .map_err(|e| anyhow!("policy: {e}"))?;
    for (l, s) in summaries.iter().enumerate() {
        if state.observe(l, count, s) {
            return Ok((state.answer(l), l + 1));
        }
    }
    Ok((count - 1, count))
}

/// Creates the report directory if needed and checks that it can be written and that no output
/// exists (unless `force`).
fn prepare_report_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "report path {} exists and is not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    for name in OUTPUT_FILES.iter().chain(&[DEPTH_PNG, SWEEP_PNG, OOD_PNG]) {
        check_writable(&dir.join(name), force)?;
    }
    check_output_dir(dir)
}

fn values(
    predictions: &[ImagePrediction],
    hits: &[bool],
    want: bool,
    f: fn(&ImagePrediction) -> f32,
) -> Vec<f64> {
    predictions
        .iter()
        .zip(hits)
        .filter(|(_, &h)| h == want)
        .map(|(p, _)| f64::from(f(p)))
        .collect()
}

/// Draws the plots; returns (file name, PNG bytes) pairs.
fn draw_plots(
    predictions: &[ImagePrediction],
    labels: &[usize],
    metrics: &Metrics,
    sparsity: &[LayerSparsity],
    classes: usize,
    mode: Mode,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let hits: Vec<bool> = predictions
        .iter()
        .zip(labels)
        .map(|(p, &y)| p.class == y)
        .collect();
    let note = format!(" ({})", describe_mode(mode));
    let pe = |p: &ImagePrediction| p.predictive_entropy;
    let mi = |p: &ImagePrediction| p.mutual_information;
    Ok(vec![
        (
            RELIABILITY_PNG,
            plots::reliability_diagram(&metrics.reliability, metrics.ece, &note)?,
        ),
        (
            ENTROPY_PNG,
            plots::uncertainty_histogram(
                &format!("Predictive entropy: correct vs wrong{note}"),
                "predictive entropy (nats; total uncertainty)",
                (
                    &values(predictions, &hits, true, pe),
                    &values(predictions, &hits, false, pe),
                ),
                plots::CORRECT_WRONG,
                (classes as f64).ln(),
            )?,
        ),
        (
            MUTUAL_INFO_PNG,
            plots::uncertainty_histogram(
                &match mode {
                    Mode::MeanWeights => {
                        "Mutual information: correct vs wrong (mean weights: always 0)".to_string()
                    }
                    Mode::Moments => {
                        "Mutual information: correct vs wrong (probit moments: always 0)"
                            .to_string()
                    }
                    Mode::MonteCarlo { .. } | Mode::MomentsThenSample { .. } => {
                        format!("Mutual information: correct vs wrong{note}")
                    }
                },
                "mutual information (nats; epistemic uncertainty)",
                (
                    &values(predictions, &hits, true, mi),
                    &values(predictions, &hits, false, mi),
                ),
                plots::CORRECT_WRONG,
                0.0,
            )?,
        ),
        (SPARSITY_PNG, plots::sparsity_chart(sparsity, "")?),
    ])
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"))
}

fn summary(report: &EvalReport, mode: Mode) -> String {
    let early = report
        .early_exit
        .as_ref()
        .map(|e| {
            let suggested = e.suggested_mi_below.as_ref().map_or_else(String::new, |s| {
                format!(
                    "\nsuggested --mi-below {} (nats): {:.1}% of the executed MACs of every block \
                     (budget {:.1}%), accuracy {:.4}, mean depth {:.2}; every block {:.4}; joint \
                     mode {:.4} at {:.1}%",
                    s.mi_below,
                    100.0 * s.macs_fraction,
                    100.0 * s.macs_fraction_target,
                    s.accuracy,
                    s.mean_depth,
                    s.every_block_accuracy,
                    s.joint_accuracy,
                    100.0 * s.joint_macs_fraction
                )
            });
            format!(
                "\nearly exit ({}): mean depth {:.2} of {}, mean MACs {:.0} = {:.1}% of every block ({:.1}% counting the unpruned architecture), depths {:?}{}",
                e.halting.describe(),
                e.mean_depth,
                e.exits,
                e.mean_macs,
                100.0 * e.macs_fraction,
                100.0 * e.dense_macs_fraction,
                e.depth_histogram,
                suggested
            )
        })
        .unwrap_or_default();
    let ood = report
        .ood
        .as_ref()
        .map(|o| {
            let m = &o.metrics;
            let mean = |s: Option<crate::metrics::Summary>| fmt_opt(s.map(|s| s.mean));
            let largest = o.largest_seen.as_ref().map_or_else(String::new, |l| {
                format!(
                    "; largest over the exits computed: AUROC by entropy {}, by mutual \
                     information {}",
                    fmt_opt(l.auroc_predictive_entropy),
                    fmt_opt(l.auroc_mutual_information)
                )
            });
            format!(
                "\nout of distribution ({} images of {}): mean predictive entropy {} (test set {}), \
                 mutual information {} (test set {}); AUROC by entropy {}, by mutual information {}{}",
                m.ood.count,
                o.images,
                mean(m.ood.predictive_entropy),
                mean(m.test.predictive_entropy),
                mean(m.ood.mutual_information),
                mean(m.test.mutual_information),
                fmt_opt(m.auroc_predictive_entropy),
                fmt_opt(m.auroc_mutual_information),
                largest
            )
        })
        .unwrap_or_default();
    let thresholds = report
        .thresholds
        .as_ref()
        .map(|t| {
            let line = |name: &str, rule: &str, p: &Option<crate::metrics::ThresholdProposal>| {
                p.as_ref().map_or_else(
                    || format!("\n{name}: no wrong answer to calibrate on"),
                    |p| {
                        format!(
                            "\nunsure when {name} {rule} {:.4}: flags {:.1}% of wrong and {:.1}% of right answers",
                            p.threshold,
                            100.0 * p.wrong_flagged,
                            100.0 * p.correct_flagged
                        )
                    },
                )
            };
            format!(
                "{}{}",
                line("mutual information", ">", &t.mutual_information),
                line("top probability", "<", &t.confidence)
            )
        })
        .unwrap_or_default();
    let m = &report.metrics;
    let u = &m.uncertainty;
    let mean = |s: Option<crate::metrics::Summary>| fmt_opt(s.map(|s| s.mean));
    format!(
        "evaluated {} images ({}, {}, seed {}) in {:.2} s; outputs CRC-32 {}\n\
         accuracy {:.4} ({} of {})  NLL {:.4}  Brier {:.4}  ECE {:.4}\n\
         mean predictive entropy correct {} / wrong {} (AUROC {}), \
         mutual information correct {} / wrong {} (AUROC {}){}{}{}{}",
        m.count,
        report.precision,
        describe_mode(mode),
        report.seed,
        report.inference_seconds,
        report.outputs_crc32,
        m.accuracy,
        m.correct,
        m.count,
        m.nll,
        m.brier,
        m.ece,
        mean(u.correct.predictive_entropy),
        mean(u.wrong.predictive_entropy),
        fmt_opt(u.auroc_predictive_entropy),
        mean(u.correct.mutual_information),
        mean(u.wrong.mutual_information),
        fmt_opt(u.auroc_mutual_information),
        early,
        report
            .early_exit
            .as_ref()
            .map(sweep_table)
            .unwrap_or_default(),
        ood,
        thresholds
    )
}

/// The sweep of `eval --sweep` as a table (empty without a sweep): per exit its accuracy
/// alone, then one row per policy and parameter.
pub fn sweep_table(e: &EarlyExitReport) -> String {
    let Some(points) = &e.sweep else {
        return String::new();
    };
    let mut s = String::new();
    if let Some(acc) = &e.exit_accuracy {
        let exits: Vec<String> = acc.iter().map(|a| format!("{:.4}", a)).collect();
        s += &format!("\naccuracy of each exit alone: {}", exits.join(" / "));
    }
    s += &format!(
        "\nsweep ({} points):\n{:<8} {:>9} {:>9} {:>10} {:>8} {:>15}",
        points.len(),
        "policy",
        "parameter",
        "accuracy",
        "mean depth",
        "MACs %",
        "unpruned MACs %"
    );
    for p in points {
        s += &format!(
            "\n{:<8} {:>9} {:>9.4} {:>10.2} {:>8.1} {:>15.1}",
            p.policy,
            p.parameter,
            p.accuracy,
            p.mean_depth,
            100.0 * p.macs_fraction,
            100.0 * p.dense_macs_fraction
        );
    }
    s
}

/// Runs `eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    if let Some(share) = args.suggest_thresholds {
        if !(share > 0.0 && share <= 1.0) {
            bail!("--suggest-thresholds {share} is not a share in (0, 1] (e.g. 0.8)");
        }
    }
    if let Some(fraction) = args.suggest_mi_below {
        if !(fraction > 0.0 && fraction <= 1.0) {
            bail!("--suggest-mi-below {fraction} is not a fraction in (0, 1] (e.g. 0.6)");
        }
    }
    let mode = args.sampling.mode()?;
    if let Some(file) = &args.emit_rust {
        check_writable(file, args.force)?;
    }
    let runner = load_runner(&args.model, &args.precision)?;
    let classes = runner.num_classes();
    crate::ui::detail(format!(
        "model {}: {} ({classes} classes, input {:?})",
        args.model.display(),
        runner.precision().name(),
        runner.input_shape()
    ));
    let (mut dataset, images_path, labels_path) = match (&args.data, &args.images, &args.labels) {
        (Some(path), _, labels) => {
            let set = crate::data::load(
                path,
                &args.data_keys.clone().unwrap_or_default(),
                labels.as_deref(),
            )?
            .eval_set(classes)?;
            set.samples
                .check_shape(runner.input_shape())
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let labels = labels.clone().unwrap_or_else(|| path.clone());
            (set, path.clone(), labels)
        }
        (None, Some(images), Some(labels)) => (
            load_labelled(images, labels, classes)?.into(),
            images.clone(),
            labels.clone(),
        ),
        _ => bail!("give --data FILE, or --images and --labels"),
    };
    let raw = match &dataset.samples.values {
        Values::F32(_) => {
            if args.sweep || args.suggest_mi_below.is_some() || args.ood_images.is_some() {
                bail!("--sweep, --suggest-mi-below and --ood-images take byte data only for now");
            }
            true
        }
        Values::U8(_) => false,
    };
    crate::ui::detail(format!(
        "images {} and labels {}: {} images; {}, seed {} (image i seeded with seed + i)",
        images_path.display(),
        labels_path.display(),
        dataset.len(),
        describe_mode(mode),
        args.sampling.seed
    ));
    if let Some(run) = &args.validation_of {
        let run = crate::run_dir::load_run(run)?;
        if run.config.val_size == 0 {
            bail!("the run held out no validation images (val_size = 0)");
        }
        let (_, validation) = dataset
            .split_validation(run.config.val_size, run.config.seed)
            .map_err(|e| anyhow!(e).context("cannot split the validation images"))?;
        dataset = validation;
    }
    if let Some(size) = args.validation_split {
        if size == 0 {
            bail!("--validation-split 0 selects no image: give the trainer's val_size (2000)");
        }
        let (_, validation) = dataset
            .split_validation(size, args.split_seed.unwrap_or(0))
            .map_err(|e| anyhow!(e).context("cannot split the validation images"))?;
        dataset = validation;
    }
    if args.skip > 0 || args.limit.is_some() {
        if args.limit == Some(0) {
            bail!("--limit 0 selects no image: give at least 1");
        }
        let end = args.limit.map_or(dataset.len(), |l| {
            args.skip.saturating_add(l).min(dataset.len())
        });
        if args.skip >= end {
            bail!("--skip {} leaves no image of {}", args.skip, dataset.len());
        }
        let indices: Vec<usize> = (args.skip..end).collect();
        dataset = dataset.subset(&indices);
    }
    if args.sweep && runner.exit_count() == 0 {
        bail!("--sweep applies to early-exit models only");
    }
    if args.suggest_mi_below.is_some() && runner.exit_count() == 0 {
        bail!("--suggest-mi-below applies to early-exit models only");
    }
    let [channels, rows, cols] = dataset.samples.shape;
    let (rows, cols) = if channels == 1 {
        (rows, cols)
    } else {
        (1, dataset.features())
    };
    let images = Images {
        rows,
        cols,
        pixels: match &dataset.samples.values {
            Values::U8(v) => v,
            Values::F32(_) => &[],
        },
    };
    if !raw {
        crate::simulate::check_image_set(runner.input_shape(), &images)?;
    }
    let ood_images = match &args.ood_images {
        Some(path) => {
            let set = load_images(path)?;
            crate::simulate::check_image_set(runner.input_shape(), &Images::from_idx(&set))
                .with_context(|| format!("out-of-distribution images {}", path.display()))?;
            Some(set)
        }
        None => None,
    };
    prepare_report_dir(&args.report, args.force)?;
    // Every exit's summary, from running every block: the sweep and the suggestion replay
    // their policies on these.
    let every_exit = if args.sweep || args.suggest_mi_below.is_some() {
        let spec = HaltingSpec {
            policy: Policy::All,
            prior: None,
            threshold: None,
            mi_below: None,
        };
        crate::ui::set_task("eval: every exit");
        Some(all_exit_summaries(
            &runner,
            &images,
            mode,
            args.sampling.seed,
            &spec,
        )?)
    } else {
        None
    };
    let labels = dataset.labels_usize();
    let suggestion = match (args.suggest_mi_below, &every_exit) {
        (Some(target), Some(all)) => {
            let prior = args
                .halting
                .prior_lambda
                .map(|lambda| geometric_prior(runner.exit_count(), lambda))
                .transpose()?;
            Some(suggest_mi_below(
                &runner,
                all,
                prior.as_deref(),
                &labels,
                target,
            )?)
        }
        _ => None,
    };
    // `--halting robust` without a bound evaluates with the suggested one.
    let mut halting = args.halting.clone();
    if let (Some(Policy::Robust), None, Some(s)) = (halting.halting, halting.mi_below, &suggestion)
    {
        halting.mi_below = Some(s.mi_below);
    }

    let start = Instant::now();
    crate::ui::set_task("eval");
    let sim = match &dataset.samples.values {
        Values::F32(v) => runner.simulate(Examples::Raw(v), mode, args.sampling.seed, &halting)?,
        Values::U8(_) => {
            runner.simulate(Examples::Bytes(&images), mode, args.sampling.seed, &halting)?
        }
    };
    let predictions = sim.predictions;
    let inference_seconds = start.elapsed().as_secs_f64();
    let metrics = evaluate(&predictions, &labels)?;
    let sparsity = runner.sparsity();
    let mut pngs = draw_plots(&predictions, &labels, &metrics, &sparsity, classes, mode)?;
    let early_exit = match &sim.early_exit {
        Some(run) => {
            let n = run.depth.len().max(1) as f64;
            let mut histogram = vec![0usize; run.exits];
            for &d in &run.depth {
                histogram[d - 1] += 1;
            }
            let mean_macs = run.macs.iter().sum::<usize>() as f64 / n;
            let dense = runner.dense_macs_through_exits();
            let dense_full = dense.last().copied().unwrap_or(1).max(1) as f64;
            let dense_macs_fraction =
                run.depth.iter().map(|&d| dense[d - 1] as f64).sum::<f64>() / n / dense_full;
            let note = format!(" ({}, {})", run.spec.describe(), describe_mode(mode));
            pngs.push((DEPTH_PNG, plots::exit_histogram(&histogram, &note)?));
            let (exit_accuracy, sweep_points, sweep_plot) =
                if let (true, Some(all)) = (args.sweep, &every_exit) {
                    let macs_through = runner.macs_through_exits();
                    let points = sweep(&runner, all, &labels, &macs_through, &dense)?;
                    let exit_accuracy: Vec<f64> = (0..run.exits)
                        .map(|e| {
                            let classes = all.classes_at(e);
                            let hits = classes.iter().zip(&labels).filter(|(c, y)| c == y);
                            hits.count() as f64 / n
                        })
                        .collect();
                    let mut curves: Vec<plots::SweepCurve> = [
                        ("exact joint mode, prior strength λ", "joint"),
                        ("mutual information threshold", "mi"),
                        ("entropy threshold", "entropy"),
                        ("robust: joint mode with mutual information below", "robust"),
                    ]
                    .iter()
                    .map(|(label, policy)| plots::SweepCurve {
                        label: label.to_string(),
                        points: points
                            .iter()
                            .filter(|p| p.policy == *policy)
                            .map(|p| (p.macs_fraction, p.accuracy, p.parameter))
                            .collect(),
                    })
                    .collect();
                    curves.push(plots::SweepCurve {
                        label: "exact joint mode, MACs of the unpruned architecture".into(),
                        points: points
                            .iter()
                            .filter(|p| p.policy == "joint")
                            .map(|p| (p.dense_macs_fraction, p.accuracy, p.parameter))
                            .collect(),
                    });
                    let full_accuracy = exit_accuracy.last().copied().unwrap_or(0.0);
                    let note = format!(" ({})", describe_mode(mode));
                    pngs.push((
                        SWEEP_PNG,
                        plots::macs_sweep(&curves, (1.0, full_accuracy), &note)?,
                    ));
                    (Some(exit_accuracy), Some(points), Some(SWEEP_PNG))
                } else {
                    (None, None, None)
                };
            Some(EarlyExitReport {
                halting: run.spec.clone(),
                exits: run.exits,
                mean_depth: run.depth.iter().sum::<usize>() as f64 / n,
                depth_histogram: histogram,
                mean_macs,
                full_macs: run.full_macs,
                macs_fraction: mean_macs / run.full_macs.max(1) as f64,
                dense_macs_fraction,
                exit_accuracy,
                sweep: sweep_points,
                suggested_mi_below: suggestion.clone(),
                depth_plot: DEPTH_PNG,
                sweep_plot,
            })
        }
        None => None,
    };
    let report = EvalReport {
        model: args.model.display().to_string(),
        images: images_path.display().to_string(),
        labels: labels_path.display().to_string(),
        precision: runner.precision().name(),
        outputs_crc32: format!("{:#010x}", sim.outputs_crc32),
        mode: match mode {
            Mode::MeanWeights => "mean_weights",
            Mode::MonteCarlo { .. } => "monte_carlo",
            Mode::Moments => "moments",
            Mode::MomentsThenSample { .. } => "moments_then_sample",
        },
        samples: match mode {
            Mode::MeanWeights | Mode::Moments => 0,
            Mode::MonteCarlo { samples } | Mode::MomentsThenSample { samples } => {
                u32::from(samples.get())
            }
        },
        seed: args.sampling.seed,
        classes,
        ece_bins: ECE_BINS,
        nll_probability_floor: PROBABILITY_FLOOR,
        inference_seconds,
        metrics,
        sparsity,
        plots: PlotFiles {
            reliability: RELIABILITY_PNG,
            predictive_entropy: ENTROPY_PNG,
            mutual_information: MUTUAL_INFO_PNG,
            sparsity: SPARSITY_PNG,
        },
        early_exit,
        ood: None,
        thresholds: args.suggest_thresholds.map(|share| {
            let hits: Vec<bool> = predictions
                .iter()
                .zip(&labels)
                .map(|(p, &y)| p.class == y)
                .collect();
            propose_thresholds(&predictions, &hits, share)
        }),
    };
    let emitted = match (&args.emit_rust, &report.thresholds) {
        (Some(file), Some(thresholds)) => {
            let name = |p: &Path| {
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            };
            let images = match (&args.validation_of, args.validation_split) {
                (Some(run), _) => format!(
                    "the validation split of run {} in {}",
                    name(run),
                    name(&images_path)
                ),
                (None, Some(size)) => format!(
                    "the validation split ({size} images, seed {}) of {}",
                    args.split_seed.unwrap_or(0),
                    name(&images_path)
                ),
                (None, None) => format!(
                    "images {}..={} of {}",
                    args.skip,
                    args.skip + dataset.len() - 1,
                    name(&images_path)
                ),
            };
            let from = crate::unsure::Provenance {
                model: name(&args.model),
                images,
                count: report.metrics.count,
                wrong: report.metrics.count - report.metrics.correct,
                mode: describe_mode(mode),
                seed: args.sampling.seed,
            };
            let source = crate::unsure::rust_constants(thresholds, runner.precision(), &from)?;
            Some((file, source))
        }
        _ => None,
    };
    let mut report = report;
    if let (Some(set), Some(path)) = (&ood_images, &args.ood_images) {
        let all = Images::from_idx(set);
        let end = args
            .limit
            .map_or(all.len(), |l| (args.skip + l).min(all.len()));
        if args.skip >= end {
            bail!(
                "--skip {} leaves no out-of-distribution image of {}",
                args.skip,
                all.len()
            );
        }
        let images = Images {
            pixels: &all.pixels[args.skip * all.values()..end * all.values()],
            ..all
        };
        crate::ui::set_task("eval: out-of-distribution images");
        let ood = runner.simulate(Examples::Bytes(&images), mode, args.sampling.seed, &halting)?;
        let metrics = out_of_distribution(&predictions, &ood.predictions);
        let mi = |p: &ImagePrediction| f64::from(p.mutual_information);
        let test_mi: Vec<f64> = predictions.iter().map(mi).collect();
        let ood_mi: Vec<f64> = ood.predictions.iter().map(mi).collect();
        pngs.push((
            OOD_PNG,
            plots::uncertainty_histogram(
                &format!(
                    "Mutual information: test set vs out of distribution ({})",
                    describe_mode(mode)
                ),
                "mutual information (nats; epistemic uncertainty)",
                (&test_mi, &ood_mi),
                plots::IN_OUT,
                0.0,
            )?,
        ));
        let largest_seen = match (&sim.early_exit, &ood.early_exit) {
            (Some(test), Some(out)) => {
                let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
                Some(LargestSeenAuroc {
                    auroc_predictive_entropy: crate::metrics::auroc(
                        &f64s(&out.largest_predictive_entropy),
                        &f64s(&test.largest_predictive_entropy),
                    ),
                    auroc_mutual_information: crate::metrics::auroc(
                        &f64s(&out.largest_mutual_information),
                        &f64s(&test.largest_mutual_information),
                    ),
                })
            }
            _ => None,
        };
        report.ood = Some(OodReport {
            images: path.display().to_string(),
            metrics,
            largest_seen,
            plot: OOD_PNG,
        });
    }
    for (name, bytes) in &pngs {
        write_new(&args.report.join(name), bytes, args.force)?;
    }
    let mut json = serde_json::to_string_pretty(&report)?;
    json.push('\n');
    write_new(&args.report.join(REPORT_FILE), json.as_bytes(), args.force)?;
    let mut written: Vec<&str> = pngs.iter().map(|(name, _)| *name).collect();
    written.push(REPORT_FILE);
    let mut files = format!(
        "wrote {} files in {}: {}",
        written.len(),
        args.report.display(),
        written.join(", ")
    );
    if let Some((file, source)) = &emitted {
        write_new(file, source.as_bytes(), args.force)?;
        files += &format!("; the thresholds as Rust constants in {}", file.display());
    }
    if args.json {
        // A closed stdout (e.g. piped into `head`) is not an error once the files are written.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), json.as_bytes());
        if !crate::ui::quiet() {
            eprintln!("{files}");
        }
    } else {
        // The summary is the result asked for: printed with -q too.
        let _ = writeln!(std::io::stdout(), "{}", summary(&report, mode));
        crate::ui::status(files);
    }
    Ok(())
}
