//! `tinybayes train`: sparse variational dropout training (or MC dropout with `--dropout`)
//! with progress bars, checkpoints after every epoch and `--resume`.
//!
//! Architectures: `lenet300`, `lenet5` and the early-exit `resnet-ee` (`--blocks`,
//! `--channels`, `--prior-lambda`, `--exit-objective`; see [`crate::train::resnet`]). For
//! `resnet-ee` the epoch line also shows the validation accuracy of every exit, which is stored
//! in the checkpoint's history and in `history.json` (`exit_val_accuracy`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::data::{DataKeys, DataSet, NormalizeMode};
use crate::idx::MNIST_CLASSES;
use crate::run_dir::has_checkpoint;
use crate::train::config::RESUMABLE_SETTINGS;
use crate::train::{Arch, TrainConfig, TrainError, TrainEvent, Trainer};

/// The keys of a `--config` TOML file, with their defaults and limits (shown by
/// `train --help`; the defaults are those of [`TrainConfig::default`], tested).
pub const CONFIG_KEYS_HELP: &str = "\
Config file keys (--config FILE.toml; every key is optional, unknown keys are refused; the
command-line options above override the file; examples in models/configs/):
  arch = \"lenet300\"          lenet300 (784-300-100-10), lenet5 (LeNet-5-Caffe), resnet-ee, or
                             custom: the [[layers]] list below (set by itself with a list)
  epochs = 200               epochs, at least 1
  batch_size = 100           mini-batch size, 1 to 4096
  lr = 0.001                 base learning rate of Adam, positive
  lr_schedule                constant, constant_then_linear or linear [default: the arch's
                             recipe: constant_then_linear for lenet300, else linear]
  seed = 0                   seed of initialisation, validation split, shuffling and noise
  val_size = 2000            training examples held out for validation (0: none)
  warmup_start               epoch where the KL weight starts rising from 0 [default: 5, scaled
                             by epochs / 40 below 40 epochs]
  warmup_end                 epoch where it reaches kl_weight_max [default: 20, scaled alike]
  kl_weight_max = 1.0        KL weight after warm-up (1 is the ELBO; N / 60000 for N images
                             reproduces the paper's data-to-KL balance)
  prune_threshold = 3.0      log alpha above which a weight counts as pruned in the reports
  init_log_sigma2 = -10.0    initial log sigma^2 of every weight
  train_limit                train on the first N examples after the validation split [default: all]
  shards = 2                 parallel shards of a mini-batch, 1 to 16 (changing it changes
                             the noise draws)
  augment_shift = 0          random shift of training images by up to this many pixels,
                             below the image side
Data (see --data):
  data                       data file (.npz, .npy, .csv) or folder of IDX files, relative
                             to the current directory; --data overrides it [default: unset]
  data_keys                  arrays of a .npz, e.g. { x_train = \"X\", y_train = \"y\" }
                             (also x_test, y_test) [default: x_train, y_train, x_test, y_test]
  normalize                  standardize, scale, unit or none, fitted per channel on the
                             training split [default: unit (x/255) for u8, standardize for f32]
  normalization              the fitted normalisation, written by the trainer into the run's
                             config.toml (a resumed run and export use it; not set by hand)
MC dropout (lenet300 only; deterministic weights, exported as a Bernoulli posterior):
  dropout = [0.2, 0.5, 0.5]  drop probability in [0, 1) of each weight layer's inputs
                             [default: unset, variational dropout]
  weight_decay = 0.00001     weight decay of the dropout layers' weights (their prior)
resnet-ee only:
  blocks = 4                 residual blocks, one exit after each, 1 to 7
  channels = 32              channels of the stem and every block, 1 to 512
  stem_kernel = 4            stem convolution kernel size
  stem_stride = 4            stem convolution stride
  stem_padding = 0           stem convolution zero padding
  prior_lambda = 0.3         strength in [0, 1) of the geometric depth prior
  exit_objective = \"weighted\"  weighted or mixture
  (at most 65535 values per feature map, 4194304 weights, 134217728 activations per batch)
Your own network (docs/TRAINING.md; models/configs/lenet5.toml is LeNet-5 written so):
  layers                     instead of arch: a [[layers]] list, one table per layer, input
                             first, with these keys:
  kind = \"linear\"            outputs (the last: the classes), relu [true; last false]
  kind = \"conv\"              outputs (channels), kernel = k or [kh, kw] (over a [C, T]
                             time series k means [k, 1]), stride = 1, padding = 0, relu
  kind = \"pool\"              max pool: kernel = 2 (or [kh, kw]), stride [the window height]
  kind = \"flatten\"           maps to a vector (implicit before a linear layer)
  kind = \"residual\", \"exit\"  early-exit blocks: stem conv, then [conv, conv, residual, exit]
  posterior = \"vd\"           vd (sparse variational dropout), dropout (with p, linear only)
                             or deterministic (point weights, weight_decay as the prior)
  name = \"fc1\"               the layer's name (tinybayes import) [default: layers.<index>]
  input_shape                the input [channels, height, width], recorded from the data
  classes                    the class count, recorded from the data
--resume may change epochs, lr and lr_schedule only.";

/// Arguments of `train`.
#[derive(Args, Debug)]
#[command(
    after_help = "The config file's keys, defaults and limits: tinybayes train --help",
    after_long_help = CONFIG_KEYS_HELP
)]
pub struct TrainArgs {
    /// Architecture: lenet300 (784-300-100-10), lenet5 (LeNet-5-Caffe), resnet-ee (early-exit
    /// ResNet) or custom (the config file's list of layers, chosen by itself when the file
    /// has one) [default: lenet300] (overrides the config file).
    #[arg(long)]
    pub arch: Option<String>,
    /// resnet-ee: residual blocks, one exit after each, 1 to 7 [default: 4] (overrides the
    /// config file).
    #[arg(long, allow_negative_numbers = true)]
    pub blocks: Option<usize>,
    /// resnet-ee: channels of the stem and every block, 1 to 512, with at most 65535 values
    /// per feature map and 4194304 weights in all [default: 32] (overrides the config file).
    #[arg(long, allow_negative_numbers = true)]
    pub channels: Option<usize>,
    /// resnet-ee: strength lambda in [0, 1) of the truncated geometric prior over depth,
    /// p(z=l) ∝ (1-lambda)^(l-1), used in the objective [default: 0.3] (overrides the config
    /// file).
    #[arg(long, allow_negative_numbers = true)]
    pub prior_lambda: Option<f64>,
    /// resnet-ee: exit objective, weighted (-sum_l p(z=l) log p(y|x,z=l)) or mixture
    /// (-log sum_l p(z=l) p(y|x,z=l)) [default: weighted] (overrides the config file).
    #[arg(long)]
    pub exit_objective: Option<String>,
    /// Epochs [default: 200] (overrides the config file).
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Seed [default: 0] (overrides the config file).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// TOML file of training settings; its keys, defaults and limits are listed at the end of
    /// `tinybayes train --help`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training data: a .npz (arrays x_train, y_train, optional x_test, y_test; keys set by
    /// data_keys in the config), a .npy of samples (labels from --labels FILE.npy), a .csv
    /// with a header row and a `label` column, or a directory with the MNIST training files
    /// (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]). Samples are [N, D]
    /// vectors, [N, C, T] time series or [N, C, H, W] images, f32 or u8 [default: the
    /// config's data, else $TINYBAYES_DATA if set, else ../shared/data/mnist from the
    /// project root, wherever tinybayes is run from].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training images (IDX, gzip or plain; at most 1073741824 bytes of pixels); overrides
    /// --data.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Training labels (IDX, gzip or plain); overrides --data. With --data FILE.npy: a .npy
    /// of integer labels, one per sample.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Input normalisation, fitted per channel on the training split: standardize (mean 0,
    /// variance 1), scale (divide by the largest |x|), unit (bytes: x/255; f32: min..max onto
    /// 0..1) or none [default: unit for u8 data, standardize for f32] (overrides the config
    /// file).
    #[arg(long)]
    pub normalize: Option<String>,
    /// Train on the first N training examples only (after the validation split) [default:
    /// all] (overrides the config file).
    #[arg(long, allow_negative_numbers = true)]
    pub train_limit: Option<usize>,
    /// MC dropout instead of variational dropout: the drop probability, in [0, 1), of each
    /// weight layer's inputs, comma-separated (lenet300: three, e.g. 0.2,0.5,0.5) (overrides
    /// the config file).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub dropout: Option<Vec<f64>>,
    /// Run directory: checkpoint, history.json and config.toml go here.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run saved in --out. A resumed run may change only epochs, lr and
    /// lr_schedule (with --epochs, --config FILE or an edit of the run's config.toml); other
    /// changed settings are refused.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Start over even if --out already holds a run (its checkpoint is replaced).
    #[arg(long)]
    pub force: bool,
}

/// Environment variable naming the MNIST directory `train` reads when `--data` is not given.
pub const DATA_ENV: &str = "TINYBAYES_DATA";

/// The default MNIST directory, relative to the project root (the repository checkout).
pub const DEFAULT_DATA: &str = "../shared/data/mnist";

/// `path` with `.` and `..` components resolved lexically (the directory need not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The project root: the checkout this binary was built from.
pub fn project_root() -> PathBuf {
    normalize(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// The MNIST directory to read and how it was chosen: `--data`, else `$TINYBAYES_DATA`, else
/// [`DEFAULT_DATA`] from the [`project_root`] (not from the current directory).
pub fn data_dir(flag: Option<&Path>) -> (PathBuf, String) {
    if let Some(dir) = flag {
        return (dir.to_path_buf(), "--data".into());
    }
    match std::env::var_os(DATA_ENV) {
        Some(dir) if !dir.is_empty() => (PathBuf::from(dir), format!("from {DATA_ENV}")),
        _ => {
            let root = project_root();
            (
                normalize(&root.join(DEFAULT_DATA)),
                format!(
                    "the default {DEFAULT_DATA} from the project root {}",
                    root.display()
                ),
            )
        }
    }
}

/// Finds `name` or `name.gz` in `dir`; the error says where it looked and why there.
fn data_file(dir: &Path, why: &str, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(format!("{name}.gz")), dir.join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no {name}[.gz] in {} ({why}); give --data DIR, set {DATA_ENV}=DIR, or give --images \
         and --labels",
        dir.display()
    )
}

fn config_from(args: &TrainArgs) -> Result<TrainConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            toml::from_str::<TrainConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?
        }
        None => TrainConfig::default(),
    };
    apply_flags(args, &mut config)?;
    let config = config.with_layers_arch();
    config
        .check()
        .map_err(|e| anyhow::anyhow!("invalid training configuration: {e}"))?;
    Ok(config)
}

/// Reads a TOML configuration file as a table of the keys it sets.
fn config_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str::<toml::Table>(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

/// The settings `train --resume` asks for: the checkpoint's configuration, overridden by the
/// keys of the run's `config.toml` (where a user may have edited them), then by the keys of
/// `--config`, then by the flags. [`Trainer::resume_with`] refuses those that may not change.
fn resumed_config(args: &TrainArgs, saved: &TrainConfig) -> Result<TrainConfig> {
    let mut table = toml::Table::try_from(saved)?;
    let run_config = args.out.join("config.toml");
    let mut sources = Vec::new();
    if run_config.is_file() {
        sources.push(run_config);
    }
    sources.extend(args.config.clone());
    for path in &sources {
        table.extend(config_table(path)?);
    }
    let mut config: TrainConfig = table.try_into().map_err(|e: toml::de::Error| {
        let names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        anyhow::anyhow!("{}: {}", names.join(" + "), e.message())
    })?;
    apply_flags(args, &mut config)?;
    Ok(config)
}

/// Applies the command-line overrides to `config`.
fn apply_flags(args: &TrainArgs, config: &mut TrainConfig) -> Result<()> {
    if let Some(arch) = &args.arch {
        let arch: Arch = arch.parse().map_err(|e| anyhow::anyhow!("--arch: {e}"))?;
        config.arch = arch;
    }
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if args.train_limit.is_some() {
        config.train_limit = args.train_limit;
    }
    if let Some(blocks) = args.blocks {
        config.blocks = blocks;
    }
    if let Some(ps) = &args.dropout {
        config.dropout = Some(ps.clone());
    }
    if let Some(mode) = &args.normalize {
        config.normalize = Some(parse_normalize(mode)?);
    }
    if let Some(channels) = args.channels {
        config.channels = channels;
    }
    if let Some(lambda) = args.prior_lambda {
        config.prior_lambda = lambda;
    }
    if let Some(objective) = &args.exit_objective {
        config.exit_objective = objective
            .parse()
            .map_err(|e| anyhow::anyhow!("--exit-objective: {e}"))?;
    }
    let resnet_only = args.blocks.is_some()
        || args.channels.is_some()
        || args.prior_lambda.is_some()
        || args.exit_objective.is_some();
    if resnet_only && config.arch.is_sequential() {
        bail!(
            "--blocks, --channels, --prior-lambda and --exit-objective apply to resnet-ee only, not {}",
            config.arch
        );
    }
    Ok(())
}

/// `--normalize`'s value as a mode, or a one-line error listing the modes.
fn parse_normalize(mode: &str) -> Result<NormalizeMode> {
    toml::Value::String(mode.to_string())
        .try_into()
        .map_err(|_| {
            anyhow::anyhow!("--normalize: unknown mode {mode:?} (standardize, scale, unit or none)")
        })
}

/// The `data` key of `--config`, else (resuming) of the run's `config.toml`, read before the
/// settings are checked; unreadable files are left to the settings' own errors.
fn config_data_key(args: &TrainArgs) -> Option<PathBuf> {
    let run_config = args.out.join("config.toml");
    let files = args
        .config
        .iter()
        .cloned()
        .chain(args.resume.then_some(run_config));
    files
        .filter_map(|f| config_table(&f).ok())
        .find_map(|t| t.get("data").and_then(|v| v.as_str()).map(PathBuf::from))
}

/// Where the training data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainData {
    /// MNIST-style IDX image and label files.
    Idx {
        /// The image file.
        images: PathBuf,
        /// The label file.
        labels: PathBuf,
    },
    /// A `.npz`, `.npy` or `.csv` file (with a `.npy` of labels for a `.npy` of samples).
    File {
        /// The data file.
        path: PathBuf,
        /// Labels of a `.npy` of samples (`--labels`).
        labels: Option<PathBuf>,
    },
}

/// Chooses the training data: `--images`/`--labels` (IDX), else `--data` or the config's
/// `data`: a directory of IDX files, or a `.npz`/`.npy`/`.csv` file by its extension; else
/// the default MNIST directory ([`data_dir`]).
pub fn train_data(args: &TrainArgs, config_data: Option<&Path>) -> Result<TrainData> {
    let chosen = args
        .data
        .as_deref()
        .map(|p| (p, "--data"))
        .or(config_data.map(|p| (p, "the config's data")));
    if args.images.is_none() {
        if let Some((path, _)) = chosen.filter(|(p, _)| !p.is_dir()) {
            if crate::data::Format::of(path).is_ok() {
                return Ok(TrainData::File {
                    path: path.to_path_buf(),
                    labels: args.labels.clone(),
                });
            }
            if path.is_file() {
                crate::data::Format::of(path)?;
            }
        }
    }
    let (dir, why) = match chosen {
        Some((p, why)) => (p.to_path_buf(), why.to_string()),
        None => data_dir(None),
    };
    let images = match &args.images {
        Some(p) => p.clone(),
        None => data_file(&dir, &why, "train-images-idx3-ubyte")?,
    };
    let labels = match &args.labels {
        Some(p) => p.clone(),
        None => data_file(&dir, &why, "train-labels-idx1-ubyte")?,
    };
    Ok(TrainData::Idx { images, labels })
}

/// Reads the training data as a labelled set (IDX: MNIST's 10 classes; other files: the
/// largest label plus one), with a line saying what was read.
pub fn load_train_data(source: &TrainData, keys: &DataKeys) -> Result<(DataSet, String)> {
    match source {
        TrainData::Idx { images, labels } => {
            let data = crate::data::idx::load_labelled(images, labels, MNIST_CLASSES)?;
            Ok((
                data,
                format!("{} and {}", images.display(), labels.display()),
            ))
        }
        TrainData::File { path, labels } => {
            let file = crate::data::load(path, keys, labels.as_deref())?;
            let data = file.training_set(None)?;
            let what = format!(
                "{} ({} training examples of {} {}, {} classes{})",
                path.display(),
                data.len(),
                data.samples.shape_text(),
                data.samples.values.dtype(),
                data.classes,
                match &file.test {
                    Some(t) => format!(", {} test examples", t.samples.len()),
                    None => String::new(),
                }
            );
            Ok((data, what))
        }
    }
}

/// The resumable settings that differ between `saved` and `config`, as `key old -> new`.
fn describe_changes(saved: &TrainConfig, config: &TrainConfig) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Table::try_from(saved), toml::Table::try_from(config)) else {
        return Vec::new();
    };
    let show = |v: Option<&toml::Value>| v.map_or("default".to_string(), |v| v.to_string());
    RESUMABLE_SETTINGS
        .iter()
        .filter(|k| a.get(**k) != b.get(**k))
        .map(|k| format!("{k} {} -> {}", show(a.get(*k)), show(b.get(*k))))
        .collect()
}

/// Runs `train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    // The data is located first (a missing file is reported before any setting), from the
    // config's `data` key when --data is not given.
    let source = train_data(args, config_data_key(args).as_deref())?;
    if args.out.is_file() {
        bail!(
            "--out {} is a file, not a run directory",
            args.out.display()
        );
    }
    let existing = has_checkpoint(&args.out);
    if existing && !args.resume && !args.force {
        bail!(
            "{} already holds a training run: use --resume to continue it or --force to start over",
            args.out.display()
        );
    }
    if args.resume && !existing {
        bail!(
            "--resume: {} holds no checkpoint to resume",
            args.out.display()
        );
    }
    // Settings are checked before the data is read (a bad size fails at once).
    let (config, resumed) = if args.resume {
        let (saved, done) = Trainer::saved_config(&args.out)?;
        let asked = resumed_config(args, &saved)?;
        // Refused here, before the data is read, with the trainer's own rule.
        let config = saved
            .resumed_with(&asked, done)
            .map_err(TrainError::Resume)?;
        (None, Some((saved, config)))
    } else {
        (Some(config_from(args)?), None)
    };
    let settings = config.as_ref().or(resumed.as_ref().map(|(_, c)| c));
    let keys = settings
        .and_then(|c| c.data_keys.clone())
        .unwrap_or_default();
    let (data, data_text) = load_train_data(&source, &keys)?;

    let mut trainer = if let Some(config) = config {
        let trainer = Trainer::new(config, &data)?;
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create run directory {}", args.out.display()))?;
        // The configuration as the trainer completed it: the normalisation fitted on the
        // training split, and a [[layers]] network's input shape and class count.
        std::fs::write(
            args.out.join("config.toml"),
            toml::to_string(trainer.config())?,
        )
        .with_context(|| format!("cannot write into {}", args.out.display()))?;
        trainer
    } else {
        let (saved, config) = resumed.expect("a resumed run has its settings");
        let changes = describe_changes(&saved, &config);
        let t = Trainer::resume_with(&args.out, &data, |_, _| Ok(config.clone()))?;
        if !changes.is_empty() {
            std::fs::write(args.out.join("config.toml"), toml::to_string(t.config())?)
                .with_context(|| format!("cannot write into {}", args.out.display()))?;
        }
        crate::ui::status(format!(
            "resuming {} at epoch {} of {}{}",
            args.out.display(),
            t.epoch(),
            t.config().epochs,
            if changes.is_empty() {
                String::new()
            } else {
                format!(" (changed: {})", changes.join(", "))
            }
        ));
        t
    };
    let config = trainer.config().clone();
    crate::ui::detail(format!(
        "data: {data_text}; input normalisation {}; settings in effect ({}):\n{}",
        trainer.normalization().describe(),
        args.out.join("config.toml").display(),
        toml::to_string(&config)?.trim_end()
    ));
    crate::ui::status(format!(
        "training {} for {} epochs on {} examples ({} held out for validation), seed {}",
        config.arch,
        config.epochs,
        trainer.train_len(),
        trainer.val_len(),
        config.seed
    ));
    for line in config
        .describe_layers()
        .map_err(|e| anyhow::anyhow!("invalid training configuration: {e}"))?
    {
        crate::ui::detail(format!("  {line}"));
    }
    if let Some(net) = trainer.model().as_resnet() {
        let (h, w) = net.feature_size();
        crate::ui::status(format!(
            "resnet-ee: {} blocks of {} channels at {h}x{w}, {} weights, {:.2}M dense MACs with every block; \
             prior lambda {} ({}), {} objective",
            net.depth(),
            config.channels,
            net.sparsity().total,
            net.dense_macs_per_exit().last().copied().unwrap_or(0) as f64 / 1e6,
            net.prior.lambda,
            net.prior
                .probabilities(net.depth())
                .iter()
                .map(|p| format!("{p:.3}"))
                .collect::<Vec<_>>()
                .join("/"),
            config.exit_objective
        ));
    }

    // Bars on a terminal only (and never with -q); the epoch lines are status lines.
    let bars = if crate::ui::progress_enabled() {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let epochs_bar = bars.add(ProgressBar::new(config.epochs as u64));
    epochs_bar.set_style(
        ProgressStyle::with_template(
            "epochs {bar:30.cyan/blue} {pos}/{len} [{elapsed} < {eta}] {msg}",
        )
        .expect("valid template"),
    );
    epochs_bar.set_position(trainer.epoch() as u64);
    let batch_bar = bars.add(ProgressBar::new(0));
    batch_bar.set_style(
        ProgressStyle::with_template("epoch {prefix:>3} {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    epochs_bar.enable_steady_tick(Duration::from_millis(500));
    let out = args.out.clone();
    let result = trainer.run(Some(&out), |event| match event {
        TrainEvent::Batch(b) => {
            batch_bar.set_length(b.batches as u64);
            batch_bar.set_prefix(format!("{}", b.epoch + 1));
            batch_bar.set_position(b.batch as u64 + 1);
            batch_bar.set_message(format!(
                "loss {:.4} ce {:.4} kl {:.0} (weight {:.2}) lr {:.1e}",
                b.loss, b.ce, b.kl, b.kl_weight, b.lr
            ));
        }
        TrainEvent::Epoch(r) => {
            let mut val = r.val_accuracy.map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or("-".into());
            if !r.exit_val_accuracy.is_empty() {
                let exits: Vec<String> =
                    r.exit_val_accuracy.iter().map(|a| format!("{:.2}", 100.0 * a)).collect();
                val = format!("{val} (exits {})", exits.join("/"));
            }
            let line = format!(
                "epoch {:>3}/{}: loss {:.4}, ce {:.4}, kl {:.0}, val acc {}, sparsity {:.2}% ({}), {:.0} ex/s, {:.1} s",
                r.epoch + 1,
                r.epochs,
                r.loss,
                r.ce,
                r.kl,
                val,
                100.0 * r.sparsity,
                r.layer_sparsity
                    .iter()
                    .map(|s| format!("{:.1}", 100.0 * s))
                    .collect::<Vec<_>>()
                    .join("/"),
                r.examples_per_sec,
                r.seconds
            );
            // Without a terminal the bars are hidden, and so is `println` through them.
            if bars.is_hidden() {
                crate::ui::status(&line);
            } else if !crate::ui::quiet() {
                let _ = bars.println(&line);
            }
            epochs_bar.set_message(format!("val {val}, sparsity {:.2}%", 100.0 * r.sparsity));
            epochs_bar.inc(1);
        }
    });
    batch_bar.finish_and_clear();
    epochs_bar.finish();
    let history = serde_json::to_string_pretty(trainer.history())?;
    std::fs::write(out.join("history.json"), history)
        .with_context(|| format!("cannot write {}", out.join("history.json").display()))?;
    match result {
        Ok(()) => {
            crate::ui::status(format!(
                "done: checkpoint in {}; export it with `tinybayes export --run {} --out MODEL.tbm`",
                out.display(),
                out.display()
            ));
            Ok(())
        }
        // A checkpoint is written after every completed epoch: a run that diverges in its
        // first epoch has none to fall back on.
        Err(TrainError::NonFinite { epoch: 0, batch }) => bail!(
            "training diverged (NaN or infinity) at epoch 1, batch {batch}, before the first \
             epoch ended: this run has no checkpoint to resume (lower the learning rate, lr in \
             --config, and start over)"
        ),
        Err(TrainError::NonFinite { epoch, batch }) => bail!(
            "training diverged (NaN or infinity) at epoch {}, batch {batch}; the checkpoint \
             after epoch {epoch} in {} is kept (lower lr in {}, then --resume)",
            epoch + 1,
            out.display(),
            out.join("config.toml").display()
        ),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ExitObjective;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn config(extra: &[&str]) -> Result<TrainConfig> {
        let argv = ["tinybayes", "--out", "run"].iter().chain(extra);
        config_from(&Cli::try_parse_from(argv)?.args)
    }

    #[test]
    fn the_default_data_directory_is_absolute_and_named() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
        let root = project_root();
        assert!(
            root.is_absolute() && root.join("host-tools").is_dir(),
            "{root:?}"
        );
        let (dir, why) = data_dir(Some(Path::new("d")));
        assert_eq!((dir, why.as_str()), (PathBuf::from("d"), "--data"));
        if std::env::var_os(DATA_ENV).is_none() {
            let (dir, why) = data_dir(None);
            assert_eq!(dir, normalize(&root.join("../shared/data/mnist")));
            assert!(why.contains("project root"), "{why}");
        }
    }

    #[test]
    fn resnet_flags_override_the_configuration() {
        let c = config(&[
            "--arch",
            "resnet-ee",
            "--blocks",
            "5",
            "--prior-lambda",
            "0.2",
            "--channels",
            "16",
            "--exit-objective",
            "mixture",
        ])
        .unwrap();
        assert_eq!(c.arch, Arch::ResnetEe);
        assert_eq!((c.blocks, c.channels, c.prior_lambda), (5, 16, 0.2));
        assert_eq!(c.exit_objective, ExitObjective::Mixture);
        let d = config(&["--arch", "resnet_ee"]).unwrap();
        assert_eq!((d.blocks, d.exit_objective), (4, ExitObjective::Weighted));
    }

    #[test]
    fn bad_resnet_flags_are_errors() {
        for (argv, needle) in [
            (&["--arch", "lenet5", "--blocks", "5"][..], "resnet-ee only"),
            (
                &["--arch", "resnet-ee", "--prior-lambda", "1.5"][..],
                "prior_lambda",
            ),
            (&["--arch", "resnet-ee", "--blocks", "0"][..], "blocks"),
            (
                &["--arch", "resnet-ee", "--exit-objective", "sum"][..],
                "exit objective",
            ),
            (&["--arch", "resnet"][..], "unknown architecture"),
        ] {
            let err = config(argv).unwrap_err().to_string();
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
    }
}
