//! `tinybayes adapt`: the Bayesian update of a model's last layer from K labelled examples
//! (`tinybayes::adapt`, the code a device runs), written as an adapted model file; with
//! `--report DIR`, the adapted model's accuracy, NLL and ECE against K on held-out data, as a
//! JSON report and a plot.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use serde::Serialize;
use tinybayes::adapt::{LastLayer, Likelihood, Settings};
use tinybayes::writer::{ModelBuffer, ModelSpec};
use tinybayes::{Engine, Mode, Model, Plan};

use crate::data::{DataKeys, DataSet, Values};
use crate::files::{check_writable, write_new};
use crate::halting::HaltingArgs;
use crate::metrics::{evaluate, Metrics};
use crate::runner::Runner;
use crate::simulate::{describe_mode, Examples, Images};

/// Report file names in `--report DIR`.
pub const REPORT_FILE: &str = "adapt.json";
/// The plot of the metrics against K.
pub const PLOT_FILE: &str = "adapt.png";

/// Arguments of `adapt`.
#[derive(Args, Debug)]
pub struct AdaptArgs {
    /// f32 model file (.tbm) of a plain network whose last layer is a Gaussian linear layer
    /// (the adapted model is f32: adapt the f32 model a fixed-point one was exported from).
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled examples to learn from: a .npz (its x_train/y_train, or its only arrays), a
    /// .npy of samples with --labels FILE.npy, or a .csv with a `label` column; values as the
    /// model reads them (f32 raw values, or bytes).
    #[arg(long, required_unless_present_any = ["images", "state"], conflicts_with = "images")]
    pub data: Option<PathBuf>,
    /// With --data FILE.npz: the arrays to read, as NAME=KEY pairs (NAME: x_train, y_train,
    /// x_test, y_test).
    #[arg(long, requires = "data", value_parser = DataKeys::parse, value_name = "PAIRS")]
    pub data_keys: Option<DataKeys>,
    /// IDX images to learn from (with --labels FILE, IDX labels), instead of --data.
    #[arg(long, requires = "labels")]
    pub images: Option<PathBuf>,
    /// Labels: IDX with --images, a .npy of integer labels with --data FILE.npy.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// How many labelled examples to learn from, drawn at random without replacement (seeded
    /// by --seed) from the file's training split; 0 writes the model with its last layer
    /// rewritten but unchanged in distribution.
    #[arg(long, value_name = "K", required_unless_present = "state")]
    pub count: Option<usize>,
    /// Instead of learning here: the state a device saved (`tinybayes::adapt::store`), as a
    /// dump of its flash region (both slots, from the region's start), exported as the
    /// adapted model. The prior's settings must be the device's.
    #[arg(long, value_name = "DUMP", conflicts_with_all = ["data", "images", "count", "report"])]
    pub state: Option<PathBuf>,
    /// With --state: the erase size of the device's flash, bytes.
    #[arg(long, default_value_t = 4096, requires = "state", value_name = "BYTES")]
    pub erase_size: usize,
    /// Seed of the draw of the K examples (and of the Monte Carlo report).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multiplies the exported variances of the last layer's weights to form the prior: 1
    /// keeps the exported posterior; larger values let a few examples of data unlike the
    /// training set move a posterior fitted on it.
    #[arg(long, default_value_t = 1.0, value_name = "C")]
    pub prior_scale: f32,
    /// Prior variance of each class's bias deviation (0 keeps the stored biases).
    #[arg(long, default_value_t = 0.0, value_name = "V")]
    pub bias_variance: f32,
    /// How an example is observed: `bound` (the Böhning bound of the softmax at the model's
    /// logits: for data close to the training set) or `label` (regression of the logits on
    /// smoothed labels, --smoothing and --noise: for data unlike it).
    #[arg(long, value_enum, default_value = "bound")]
    pub likelihood: LikelihoodKind,
    /// `label`: label smoothing in (0, 1).
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f32,
    /// `label`: noise variance of the logit targets.
    #[arg(long, default_value_t = 1.0)]
    pub noise: f32,
    /// The adapted model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Evaluate the model adapted on the first 0, 5, 10, 20, 50, ... of the K examples (each
    /// set contains the previous one) on held-out data, and write `adapt.json` and
    /// `adapt.png` into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Held-out labelled data for --report [default: the --data file's test split].
    #[arg(long, requires = "report", value_name = "FILE")]
    pub eval_data: Option<PathBuf>,
    /// Monte Carlo samples per example for --report.
    #[arg(long, default_value_t = 32, value_name = "M")]
    pub samples: u16,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

/// `--likelihood`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LikelihoodKind {
    /// The Böhning bound of the softmax log-likelihood at the exported model.
    Bound,
    /// Regression of the logits on smoothed labels.
    Label,
}

/// One point of the report: the metrics of the model adapted on `count` examples.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// Examples learnt from.
    pub count: usize,
    /// Accuracy on the held-out data.
    pub accuracy: f64,
    /// Mean negative log-likelihood, nats.
    pub nll: f64,
    /// Expected calibration error.
    pub ece: f64,
    /// Mean mutual information (epistemic uncertainty), nats.
    pub mutual_information: f64,
}

/// The JSON report of `adapt --report`.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    /// The model adapted.
    pub model: String,
    /// The labelled examples learnt from.
    pub data: String,
    /// The held-out data evaluated.
    pub eval_data: String,
    /// Held-out examples.
    pub eval_count: usize,
    /// The prior's settings.
    pub prior_scale: f32,
    /// The prior variance of the bias deviations.
    pub bias_variance: f32,
    /// The likelihood.
    pub likelihood: LikelihoodKind,
    /// Its label smoothing and noise variance (`label`).
    pub smoothing: Option<f32>,
    /// See `smoothing`.
    pub noise: Option<f32>,
    /// The draw's seed.
    pub seed: u64,
    /// How the predictive was computed.
    pub mode: String,
    /// One point per K.
    pub curve: Vec<CurvePoint>,
}

/// The labelled pool of an input file, checked against the model.
fn load_pool(args: &AdaptArgs, model: &Model<'_>) -> Result<(DataSet, Option<DataSet>, String)> {
    let classes = model.num_classes();
    let (pool, test, name) = match (&args.data, &args.images, &args.labels) {
        (Some(path), _, labels) => {
            let file = crate::data::load(
                path,
                &args.data_keys.clone().unwrap_or_default(),
                labels.as_deref(),
            )?;
            let pool = file.training_set(Some(classes))?;
            let test = match &file.test {
                Some(_) => Some(file.eval_set(classes)?),
                None => None,
            };
            (pool, test, path.display().to_string())
        }
        (None, Some(images), Some(labels)) => (
            crate::data::idx::load_labelled(images, labels, classes)?,
            None,
            images.display().to_string(),
        ),
        _ => bail!("give --data FILE, or --images FILE with --labels FILE"),
    };
    pool.samples
        .check_shape(model.input_shape())
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok((pool, test, name))
}

/// The penultimate features of example `i` of `set`, as the device computes them.
fn features<'e>(engine: &'e mut Engine<'_, '_, 1>, set: &DataSet, i: usize) -> Result<&'e [f32]> {
    let per = set.samples.features();
    let result = match &set.samples.values {
        Values::F32(v) => engine.features_raw(&v[i * per..(i + 1) * per]),
        Values::U8(v) => engine.features_u8(&v[i * per..(i + 1) * per]),
    };
    result.with_context(|| format!("example {i}"))
}

/// The counts of the report's curve: 0, 5, 10, 20, 50, 100, 200, 500, ... up to `count`,
/// and `count` itself.
pub fn curve_counts(count: usize) -> Vec<usize> {
    let mut out = vec![0];
    let mut scale = 1usize;
    'grow: loop {
        for base in [5, 10, 20] {
            let k = base * scale;
            if k >= count {
                break 'grow;
            }
            out.push(k);
        }
        scale *= 10;
    }
    if count > 0 {
        out.push(count);
    }
    out
}

/// The adapted model: `model` with the head written from `layer`.
fn adapted_model(model: &Model<'_>, layer: &LastLayer<'_, '_>) -> Result<ModelBuffer> {
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let mut words = vec![0u32; layer.head_len()];
    let bytes = layer.write_head(&mut scratch, &mut words)?;
    let head = Model::from_bytes(bytes)?;
    let composed = model.with_head(&head)?;
    let mut spec = ModelSpec::from_model(&composed);
    // The trained size describes the network before pruning; the head is no longer it.
    spec.trained = None;
    Ok(spec.to_buffer()?)
}

/// The metrics of a model on `test`, and its mean mutual information.
fn metrics_of(
    buffer: ModelBuffer,
    test: &DataSet,
    mode: Mode,
    seed: u64,
) -> Result<(Metrics, f64)> {
    let runner = Runner::from_buffer(buffer)?;
    let per = test.samples.features();
    let halting = HaltingArgs::default();
    let sim = match &test.samples.values {
        Values::F32(v) => runner.simulate(Examples::Raw(v), mode, seed, &halting)?,
        Values::U8(pixels) => {
            let images = Images {
                rows: 1,
                cols: per,
                pixels,
            };
            runner.simulate(Examples::Bytes(&images), mode, seed, &halting)?
        }
    };
    let mi = sim
        .predictions
        .iter()
        .map(|p| f64::from(p.mutual_information))
        .sum::<f64>()
        / sim.predictions.len().max(1) as f64;
    Ok((evaluate(&sim.predictions, &test.labels_usize())?, mi))
}

/// Runs `tinybayes adapt`.
pub fn run(args: &AdaptArgs) -> Result<()> {
    check_writable(&args.out, args.force)?;
    if let Some(dir) = &args.report {
        check_report_dir(dir, args.force)?;
    }
    let runner = crate::runner::read_any_model(&args.model)?;
    let model = match &runner {
        Runner::F32(m) => m.as_ref(),
        Runner::Fixed(m) => bail!(
            "{} is a {} model: adapt updates f32 models (the adapted last layer is f32); adapt \
             the f32 model it was exported from",
            args.model.display(),
            m.precision().name()
        ),
    };
    let settings = Settings {
        prior_scale: args.prior_scale,
        bias_variance: args.bias_variance,
        likelihood: match args.likelihood {
            LikelihoodKind::Bound => Likelihood::SoftmaxBound,
            LikelihoodKind::Label => Likelihood::LabelRegression {
                smoothing: args.smoothing,
                noise: args.noise,
            },
        },
    };
    let mut state =
        vec![0.0f32; LastLayer::state_len(model).context(args.model.display().to_string())?];
    let mut layer = LastLayer::new(model, settings, &mut state)?;
    if let Some(dump) = &args.state {
        return export_state(args, dump, model, &mut layer);
    }
    let count = args.count.unwrap_or(0);
    let (pool, file_test, name) = load_pool(args, model)?;
    if count > pool.len() {
        bail!(
            "--count {count} but {name} has {} labelled training examples",
            pool.len()
        );
    }
    let test = match &args.eval_data {
        Some(path) => {
            let file = crate::data::load(path, &DataKeys::default(), None)?;
            let set = file.eval_set(model.num_classes())?;
            set.samples
                .check_shape(model.input_shape())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some((set, path.display().to_string()))
        }
        None => file_test.map(|set| (set, format!("{name} (test split)"))),
    };
    if args.report.is_some() && test.is_none() {
        bail!("--report needs held-out data: a --data file with a test split, or --eval-data FILE");
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }

    // The K examples: a seeded draw without replacement.
    let mut order: Vec<usize> = (0..pool.len()).collect();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(args.seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order.truncate(count);

    let plan = Plan::new(model, 1);
    let mut workspace = vec![0.0f32; plan.workspace_len()];
    let mut engine = Engine::<1>::new(model, &mut workspace)?;
    let mode = Mode::MonteCarlo {
        samples: std::num::NonZeroU16::new(args.samples).context("--samples")?,
    };
    let counts = if args.report.is_some() {
        curve_counts(count)
    } else {
        vec![count]
    };
    let labels = pool.labels_usize();
    let mut curve = Vec::new();
    let bar = crate::ui::progress_bar(count as u64);
    let mut done = 0;
    for &k in &counts {
        while done < k {
            let i = order[done];
            layer.update(features(&mut engine, &pool, i)?, labels[i])?;
            done += 1;
            bar.inc(1);
        }
        if let Some((test, _)) = &test {
            if args.report.is_some() {
                let (m, mi) = metrics_of(adapted_model(model, &layer)?, test, mode, args.seed)?;
                curve.push(CurvePoint {
                    count: k,
                    accuracy: m.accuracy,
                    nll: m.nll,
                    ece: m.ece,
                    mutual_information: mi,
                });
            }
        }
    }
    bar.finish_and_clear();
    let out = adapted_model(model, &layer)?;
    write_new(&args.out, out.as_bytes(), args.force)?;
    crate::ui::status(format!(
        "adapted the last layer of {} on {} examples of {name} (prior scale {}, bias variance \
         {}, seed {}); wrote {} ({} bytes)",
        args.model.display(),
        count,
        args.prior_scale,
        args.bias_variance,
        args.seed,
        args.out.display(),
        out.as_bytes().len()
    ));
    if let (Some(dir), Some((test, eval_name))) = (&args.report, &test) {
        let report = AdaptReport {
            model: args.model.display().to_string(),
            data: name,
            eval_data: eval_name.clone(),
            eval_count: test.len(),
            prior_scale: args.prior_scale,
            bias_variance: args.bias_variance,
            likelihood: args.likelihood,
            smoothing: (args.likelihood == LikelihoodKind::Label).then_some(args.smoothing),
            noise: (args.likelihood == LikelihoodKind::Label).then_some(args.noise),
            seed: args.seed,
            mode: describe_mode(mode),
            curve,
        };
        write_report(dir, &report, args.force)?;
    }
    Ok(())
}

/// Most bytes of a flash dump `--state` reads.
const MAX_DUMP: u64 = 64 << 20;

/// `--state`: the device's saved state, written as the adapted model.
fn export_state(
    args: &AdaptArgs,
    dump: &Path,
    model: &Model<'_>,
    layer: &mut LastLayer<'_, '_>,
) -> Result<()> {
    let len = std::fs::metadata(dump)
        .with_context(|| format!("cannot read {}", dump.display()))?
        .len();
    if len > MAX_DUMP {
        bail!(
            "{} is {len} bytes; a flash dump is at most {MAX_DUMP}",
            dump.display()
        );
    }
    let bytes = std::fs::read(dump).with_context(|| format!("cannot read {}", dump.display()))?;
    let count = crate::flash_dump::restore(bytes, args.erase_size, layer).map_err(|e| {
        match e.downcast_ref::<tinybayes::adapt::AdaptError>() {
            Some(tinybayes::adapt::AdaptError::StateMismatch) => anyhow::anyhow!(
                "{}: the saved state belongs to another model or was saved with other settings \
                 (--prior-scale, --bias-variance, --likelihood, --smoothing, --noise)",
                dump.display()
            ),
            _ => e.context(dump.display().to_string()),
        }
    })?;
    let out = adapted_model(model, layer)?;
    write_new(&args.out, out.as_bytes(), args.force)?;
    crate::ui::status(format!(
        "restored the state of {count} examples from {}; wrote {} ({} bytes)",
        dump.display(),
        args.out.display(),
        out.as_bytes().len()
    ));
    Ok(())
}

fn check_report_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    for file in [REPORT_FILE, PLOT_FILE] {
        check_writable(&dir.join(file), force)?;
    }
    Ok(())
}

fn write_report(dir: &Path, report: &AdaptReport, force: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    write_new(&dir.join(REPORT_FILE), json.as_bytes(), force)?;
    let png = crate::plots::adaptation_curve(
        &report
            .curve
            .iter()
            .map(|p| (p.count as f64, p.accuracy, p.nll, p.ece))
            .collect::<Vec<_>>(),
        &format!(" ({})", report.eval_data),
    )?;
    write_new(&dir.join(PLOT_FILE), &png, force)?;
    let mut table = String::from("     K  accuracy     NLL     ECE  mean MI\n");
    for p in &report.curve {
        table.push_str(&format!(
            "{:>6}  {:>7.2}%  {:>6.3}  {:>6.3}  {:>7.4}\n",
            p.count,
            100.0 * p.accuracy,
            p.nll,
            p.ece,
            p.mutual_information
        ));
    }
    print!("{table}");
    crate::ui::status(format!(
        "{} held-out examples, {}; wrote {} and {}",
        report.eval_count,
        report.mode,
        dir.join(REPORT_FILE).display(),
        dir.join(PLOT_FILE).display()
    ));
    Ok(())
}
