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

use crate::commands::predict::{check_output_dir, load_images, SamplingArgs};
use crate::files::{check_writable, write_new};
use crate::idx::{read_labels, Dataset, IdxError};
use crate::metrics::{evaluate, LayerSparsity, Metrics, ECE_BINS, PROBABILITY_FLOOR};
use crate::plots;
use crate::runner::{load_runner, PrecisionArgs};
use crate::simulate::{describe_mode, ImagePrediction, Images};

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
    /// IDX image file (`[n, rows, cols]` unsigned bytes, plain or gzip).
    #[arg(long)]
    pub images: PathBuf,
    /// IDX label file (`[n]` unsigned bytes, each below the model's classes).
    #[arg(long)]
    pub labels: PathBuf,
    /// Sampling of the posterior.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Number format.
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Report directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: PathBuf,
    /// Overwrite an existing report.
    #[arg(long)]
    pub force: bool,
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
    /// Fixed-point runs: CRC-32 of every output bit in image order (the firmware's parity
    /// digest); absent for f32.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs_crc32: Option<String>,
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
    for name in OUTPUT_FILES {
        check_writable(&dir.join(name), force)?;
    }
    check_output_dir(dir)
}

fn load_dataset(args: &EvalArgs, classes: usize) -> Result<Dataset> {
    let images = load_images(&args.images)?;
    let labels = read_labels(&args.labels).map_err(|e| match e {
        IdxError::Io { .. } => anyhow!(e),
        other => anyhow!(other).context(format!("labels {}", args.labels.display())),
    })?;
    Dataset::from_idx(images, labels, classes).map_err(|e| match e {
        IdxError::CountMismatch { .. } => anyhow!(e).context("images and labels do not match"),
        other => anyhow!(other),
    })
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
                &values(predictions, &hits, true, pe),
                &values(predictions, &hits, false, pe),
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
                    Mode::MonteCarlo { .. } => {
                        format!("Mutual information: correct vs wrong{note}")
                    }
                },
                "mutual information (nats; epistemic uncertainty)",
                &values(predictions, &hits, true, mi),
                &values(predictions, &hits, false, mi),
                0.0,
            )?,
        ),
        (SPARSITY_PNG, plots::sparsity_chart(sparsity, "")?),
    ])
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"))
}

fn summary(report: &EvalReport, mode: Mode, dir: &Path) -> String {
    let m = &report.metrics;
    let u = &m.uncertainty;
    let mean = |s: Option<crate::metrics::Summary>| fmt_opt(s.map(|s| s.mean));
    format!(
        "evaluated {} images ({}, {}, seed {}) in {:.2} s{}\n\
         accuracy {:.4} ({} of {})  NLL {:.4}  Brier {:.4}  ECE {:.4}\n\
         mean predictive entropy correct {} / wrong {} (AUROC {}), \
         mutual information correct {} / wrong {} (AUROC {})\n\
         wrote {}",
        m.count,
        report.precision,
        describe_mode(mode),
        report.seed,
        report.inference_seconds,
        report
            .outputs_crc32
            .as_ref()
            .map(|c| format!("; outputs CRC-32 {c}"))
            .unwrap_or_default(),
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
        dir.join(REPORT_FILE).display(),
    )
}

/// Runs `eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let mode = args.sampling.mode()?;
    let runner = load_runner(&args.model, &args.precision)?;
    let classes = runner.num_classes();
    let dataset = load_dataset(args, classes)?;
    let images = Images {
        rows: dataset.rows,
        cols: dataset.cols,
        pixels: &dataset.pixels,
    };
    if images.values() != runner.input_len() {
        bail!(
            "images are {}x{} = {} values but the model takes {} inputs",
            images.rows,
            images.cols,
            images.values(),
            runner.input_len()
        );
    }
    prepare_report_dir(&args.report, args.force)?;

    let start = Instant::now();
    let sim = runner.simulate(&images, mode, args.sampling.seed)?;
    let predictions = sim.predictions;
    let inference_seconds = start.elapsed().as_secs_f64();
    let labels = dataset.labels_usize();
    let metrics = evaluate(&predictions, &labels)?;
    let sparsity = runner.sparsity();
    let pngs = draw_plots(&predictions, &labels, &metrics, &sparsity, classes, mode)?;
    let report = EvalReport {
        model: args.model.display().to_string(),
        images: args.images.display().to_string(),
        labels: args.labels.display().to_string(),
        precision: runner.precision().name(),
        outputs_crc32: sim.outputs_crc32.map(|c| format!("{c:#010x}")),
        mode: match mode {
            Mode::MeanWeights => "mean_weights",
            Mode::MonteCarlo { .. } => "monte_carlo",
        },
        samples: match mode {
            Mode::MeanWeights => 0,
            Mode::MonteCarlo { samples } => u32::from(samples.get()),
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
    };
    for (name, bytes) in &pngs {
        write_new(&args.report.join(name), bytes, args.force)?;
    }
    let mut json = serde_json::to_string_pretty(&report)?;
    json.push('\n');
    write_new(&args.report.join(REPORT_FILE), json.as_bytes(), args.force)?;
    // A closed stdout (e.g. piped into `head`) is not an error once the files are written.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        summary(&report, mode, &args.report)
    );
    Ok(())
}
