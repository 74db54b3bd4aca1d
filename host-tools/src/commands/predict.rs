//! `tinybayes predict`: runs a model over an IDX image file exactly as the device would (the
//! core engine on raw 8-bit pixels) and writes one CSV row per image.
//!
//! The CSV header is exactly `index,pred,p0,...,p{K-1},entropy,expected_entropy,mutual_info`
//! (K = the model's classes). Floats are written in Rust's shortest round-trip form, so reading
//! a value back gives the same `f32` bit for bit.
//!
//! Extension point: models with early exits will also report, per image, the exit taken and the
//! multiply-accumulates spent. Those go in [`ExtraColumn`]s passed to [`csv_text`], which
//! appends them *after* the required columns (e.g. `...,mutual_info,depth,macs`), so readers
//! of the required columns keep working.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tinybayes::Mode;

use crate::data::{DataKeys, Values};
use crate::files::{check_writable, write_new};
use crate::halting::HaltingArgs;
use crate::idx::load_images;
use crate::runner::{load_runner, PrecisionArgs};
use crate::simulate::{describe_mode, parse_samples, Examples, ImagePrediction, Images};

/// Samples used when neither `--samples` nor `--mean-weights` is given.
pub const DEFAULT_SAMPLES: &str = "32";

/// How the posterior becomes a prediction (`--mode`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeKind {
    /// The posterior-mean network, one pass (no uncertainty about the weights).
    Mean,
    /// Monte Carlo: the average over --samples draws of the weights [default: 32].
    Mc,
    /// Moment propagation: one pass carrying each unit's mean and variance, then the probit
    /// approximation of the expected softmax (mutual information 0).
    Moments,
    /// Moment propagation, then --samples draws of the logits only [default: 32].
    MomentsMc,
}

/// How to sample the posterior: shared by `predict` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// How the posterior becomes a prediction; without it, --samples decides (0: mean
    /// weights, else Monte Carlo).
    #[arg(long, value_enum)]
    pub mode: Option<ModeKind>,
    /// Samples per image, 1..=65535 (Monte Carlo; logit draws for moments-mc), or 0 for the
    /// posterior-mean network [default: 32].
    #[arg(long, value_name = "M", allow_hyphen_values = true)]
    pub samples: Option<String>,
    /// Run the posterior-mean network once per image (same as --samples 0).
    #[arg(long, conflicts_with_all = ["samples", "mode"])]
    pub mean_weights: bool,
    /// Seed: image i draws its noise from Xoshiro128++ seeded with seed + i (as on the device).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The inference mode these arguments ask for (a one-line error for a bad `--samples`).
    pub fn mode(&self) -> Result<Mode> {
        if self.mean_weights {
            return Ok(Mode::MeanWeights);
        }
        let counted = parse_samples(self.samples.as_deref().unwrap_or(DEFAULT_SAMPLES))
            .map_err(|e| anyhow!(e))?;
        let samples = match counted {
            Mode::MonteCarlo { samples } => Some(samples),
            _ => None,
        };
        let given = self.samples.is_some();
        Ok(match (self.mode, samples) {
            (None, _) => counted,
            (Some(ModeKind::Mean), _) if given && samples.is_some() => {
                bail!("--mode mean runs one pass: drop --samples (or give --samples 0)")
            }
            (Some(ModeKind::Mean), _) => Mode::MeanWeights,
            (Some(ModeKind::Moments), _) if given => {
                bail!("--mode moments takes no --samples (--mode moments-mc draws the logits)")
            }
            (Some(ModeKind::Moments), _) => Mode::Moments,
            (Some(ModeKind::Mc | ModeKind::MomentsMc), None) => {
                bail!("--mode mc and moments-mc need --samples of at least 1")
            }
            (Some(ModeKind::Mc), Some(samples)) => Mode::MonteCarlo { samples },
            (Some(ModeKind::MomentsMc), Some(samples)) => Mode::MomentsThenSample { samples },
        })
    }
}

/// Arguments of `predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model file (.tbm).
    #[arg(long)]
    pub model: PathBuf,
    /// IDX image file (`[n, rows, cols]` unsigned bytes, plain or gzip; at most 1073741824
    /// bytes of pixels).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub images: Option<PathBuf>,
    /// Data file instead of --images: a .npz (its x_test, or x_train when it has no test
    /// split), a .npy of samples or a .csv with a `label` column. Each example's shape must be
    /// the model's input shape; f32 values are fed raw and normalised by the engine with the
    /// model's stored normalisation. Labels found in the file are written as a `label`
    /// column.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data FILE.npz: the arrays to read, as NAME=KEY pairs (NAME: x_train, y_train,
    /// x_test, y_test), e.g. `x_test=X_val,y_test=y_val` [default: the names themselves].
    #[arg(long, requires = "data", value_parser = DataKeys::parse, value_name = "PAIRS")]
    pub data_keys: Option<DataKeys>,
    /// With --data FILE.npy: a .npy of integer labels, written as a `label` column.
    #[arg(long, requires = "data")]
    pub labels: Option<PathBuf>,
    /// Sampling of the posterior.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Number format.
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Early exit (early-exit models only).
    #[command(flatten)]
    pub halting: HaltingArgs,
    /// Output CSV file, or - for stdout (the status line then goes to stderr).
    #[arg(long, allow_hyphen_values = true)]
    pub out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// An extra per-image CSV column, appended after the required ones (for early-exit models:
/// `depth` and `macs`). `values[i]` is the text of image `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraColumn {
    /// Header name.
    pub name: String,
    /// One value per image, already formatted.
    pub values: Vec<String>,
}

/// The CSV header for `classes` classes followed by the `extra` column names.
pub fn csv_header(classes: usize, extra: &[ExtraColumn]) -> String {
    let mut cols = vec!["index".to_string(), "pred".to_string()];
    cols.extend((0..classes).map(|k| format!("p{k}")));
    cols.extend(["entropy", "expected_entropy", "mutual_info"].map(String::from));
    cols.extend(extra.iter().map(|c| c.name.clone()));
    cols.join(",")
}

/// The whole CSV text (header and one row per prediction, `\n` line ends). Every prediction
/// must have `classes` probabilities and every extra column one value per prediction.
pub fn csv_text(
    predictions: &[ImagePrediction],
    classes: usize,
    extra: &[ExtraColumn],
) -> Result<String> {
    if let Some(c) = extra.iter().find(|c| c.values.len() != predictions.len()) {
        bail!(
            "column {} has {} values for {} images",
            c.name,
            c.values.len(),
            predictions.len()
        );
    }
    let mut out = csv_header(classes, extra);
    out.push('\n');
    for (i, p) in predictions.iter().enumerate() {
        if p.probabilities.len() != classes {
            bail!(
                "image {i} has {} probabilities, expected {classes}",
                p.probabilities.len()
            );
        }
        let mut row = vec![i.to_string(), p.class.to_string()];
        row.extend(p.probabilities.iter().map(f32::to_string));
        row.push(p.predictive_entropy.to_string());
        row.push(p.expected_entropy.to_string());
        row.push(p.mutual_information.to_string());
        row.extend(extra.iter().map(|c| c.values[i].clone()));
        out.push_str(&row.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// Fails early, before any work, if `dir` is not a directory we can create files in.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if dir.exists() && !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if !dir.is_dir() {
        bail!("output directory {} does not exist", dir.display());
    }
    let probe = dir.join(format!(".tinybayes-probe-{}", std::process::id()));
    std::fs::File::create(&probe)
        .with_context(|| format!("cannot write in directory {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs `predict`.
pub fn run(args: &PredictArgs) -> Result<()> {
    let mode = args.sampling.mode()?;
    let to_stdout = args.out.as_os_str() == "-";
    if !to_stdout {
        check_writable(&args.out, args.force)?;
        if args.out.is_dir() {
            bail!("{} is a directory, not a file", args.out.display());
        }
        check_output_dir(args.out.parent().unwrap_or(Path::new(".")))?;
    }
    let runner = load_runner(&args.model, &args.precision)?;
    crate::ui::detail(format!(
        "model {}: {} ({} classes, input {:?})",
        args.model.display(),
        runner.precision().name(),
        runner.num_classes(),
        runner.input_shape()
    ));
    let (part, source) = match (&args.data, &args.images) {
        (Some(path), _) => {
            let file = crate::data::load(
                path,
                &args.data_keys.clone().unwrap_or_default(),
                args.labels.as_deref(),
            )?;
            let part = file.eval_part().clone();
            part.samples
                .check_shape(runner.input_shape())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (part, path.clone())
        }
        (None, Some(images)) => {
            let array = load_images(images)?;
            (crate::data::idx::part(array, None), images.clone())
        }
        (None, None) => anyhow::bail!("give --data FILE or --images FILE"),
    };
    crate::ui::detail(format!(
        "images {}: {} of {} {}; {}, seed {} (image i seeded with seed + i)",
        source.display(),
        part.samples.len(),
        part.samples.shape_text(),
        part.samples.values.dtype(),
        describe_mode(mode),
        args.sampling.seed
    ));
    let start = Instant::now();
    crate::ui::set_task("predict");
    let sim = match &part.samples.values {
        Values::F32(v) => {
            runner.simulate(Examples::Raw(v), mode, args.sampling.seed, &args.halting)?
        }
        Values::U8(pixels) => {
            // IDX images keep their rows and columns (the file's own check); other byte
            // data has had its full shape checked above and runs flat.
            let [c, h, w] = part.samples.shape;
            let (rows, cols) = if c == 1 && args.data.is_none() {
                (h, w)
            } else {
                (1, c * h * w)
            };
            let images = Images { rows, cols, pixels };
            runner.simulate(
                Examples::Bytes(&images),
                mode,
                args.sampling.seed,
                &args.halting,
            )?
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    // Early-exit models add the depth used and the MACs spent per image.
    let extra = match &sim.early_exit {
        Some(run) => vec![
            ExtraColumn {
                name: "depth".into(),
                values: run.depth.iter().map(usize::to_string).collect(),
            },
            ExtraColumn {
                name: "macs".into(),
                values: run.macs.iter().map(usize::to_string).collect(),
            },
        ],
        None => Vec::new(),
    };
    let mut extra = extra;
    if let Some(labels) = &part.labels {
        extra.push(ExtraColumn {
            name: "label".into(),
            values: labels.iter().map(u16::to_string).collect(),
        });
    }
    let text = csv_text(&sim.predictions, runner.num_classes(), &extra)?;
    let digest = format!("; outputs CRC-32 {:#010x}", sim.outputs_crc32);
    let line = format!(
        "predicted {} images ({}, {}, seed {}) in {seconds:.2} s{digest}; wrote {}",
        sim.predictions.len(),
        runner.precision().name(),
        describe_mode(mode),
        args.sampling.seed,
        if to_stdout {
            "the CSV to stdout".to_string()
        } else {
            args.out.display().to_string()
        }
    );
    if to_stdout {
        // A closed stdout (e.g. piped into `head`) ends the output, it is not an error.
        let _ = std::io::stdout().write_all(text.as_bytes());
        if !crate::ui::quiet() {
            eprintln!("{line}");
        }
    } else {
        write_new(&args.out, text.as_bytes(), args.force)?;
        crate::ui::status(line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(probabilities: &[f32]) -> ImagePrediction {
        ImagePrediction {
            probabilities: probabilities.to_vec(),
            class: 1,
            predictive_entropy: 0.5,
            expected_entropy: 0.25,
            mutual_information: 0.25,
        }
    }

    #[test]
    fn header_is_exact() {
        assert_eq!(
            csv_header(10, &[]),
            "index,pred,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9,entropy,expected_entropy,mutual_info"
        );
        let extra = [
            ExtraColumn {
                name: "depth".into(),
                values: vec!["2".into()],
            },
            ExtraColumn {
                name: "macs".into(),
                values: vec!["1234".into()],
            },
        ];
        assert_eq!(
            csv_header(2, &extra),
            "index,pred,p0,p1,entropy,expected_entropy,mutual_info,depth,macs"
        );
        let text = csv_text(&[pred(&[0.1, 0.9])], 2, &extra).unwrap();
        assert_eq!(
            text.lines().nth(1),
            Some("0,1,0.1,0.9,0.5,0.25,0.25,2,1234")
        );
    }

    #[test]
    fn rows_round_trip_and_shapes_are_checked() {
        let p = [0.1f32, 0.7, 0.2];
        let text = csv_text(&[pred(&p), pred(&p)], 3, &[]).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3);
        let back: Vec<f32> = rows[2]
            .split(',')
            .skip(2)
            .take(3)
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(back, p);
        assert!(rows[2].starts_with("1,1,"));
        assert!(csv_text(&[pred(&p)], 2, &[]).is_err());
        let short = ExtraColumn {
            name: "depth".into(),
            values: vec![],
        };
        assert!(csv_text(&[pred(&p)], 3, &[short]).is_err());
    }

    #[test]
    fn sampling_arguments() {
        let args = |samples: Option<&str>, mean_weights| SamplingArgs {
            mode: None,
            samples: samples.map(String::from),
            mean_weights,
            seed: 0,
        };
        assert!(matches!(
            args(None, false).mode().unwrap(),
            Mode::MonteCarlo { samples } if samples.get() == 32
        ));
        assert_eq!(args(None, true).mode().unwrap(), Mode::MeanWeights);
        assert_eq!(args(Some("0"), false).mode().unwrap(), Mode::MeanWeights);
        assert!(args(Some("70000"), false).mode().is_err());
    }

    #[test]
    fn mode_arguments() {
        let args = |mode, samples: Option<&str>| SamplingArgs {
            mode: Some(mode),
            samples: samples.map(String::from),
            mean_weights: false,
            seed: 0,
        };
        let m = |n: u16| std::num::NonZeroU16::new(n).unwrap();
        let ok = |mode, samples| args(mode, samples).mode().unwrap();
        assert_eq!(ok(ModeKind::Mean, None), Mode::MeanWeights);
        assert_eq!(ok(ModeKind::Mean, Some("0")), Mode::MeanWeights);
        assert_eq!(ok(ModeKind::Mc, None), Mode::MonteCarlo { samples: m(32) });
        assert_eq!(
            ok(ModeKind::Mc, Some("8")),
            Mode::MonteCarlo { samples: m(8) }
        );
        assert_eq!(ok(ModeKind::Moments, None), Mode::Moments);
        assert_eq!(
            ok(ModeKind::MomentsMc, Some("16")),
            Mode::MomentsThenSample { samples: m(16) }
        );
        for (mode, samples) in [
            (ModeKind::Mean, "8"),
            (ModeKind::Mc, "0"),
            (ModeKind::Moments, "8"),
            (ModeKind::Moments, "0"),
            (ModeKind::MomentsMc, "0"),
            (ModeKind::MomentsMc, "-1"),
        ] {
            let err = args(mode, Some(samples)).mode().unwrap_err().to_string();
            assert!(err.starts_with("--"), "{mode:?} {samples}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
