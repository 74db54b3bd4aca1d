//! Training configuration, deserialisable from TOML with a default for every field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{DataKeys, Normalization, NormalizeMode};

use super::arch::Arch;
use super::conv::ConvGeom;
use super::exits::{DepthPrior, ExitObjective};
use super::model::Model;
use super::optim::LrSchedule;
use super::resnet::{ResNetEe, ResNetSpec};
use super::schema::{self, Built, LayerConfig};
use super::tensor::Real;

/// Largest `blocks` accepted: the model format's 32 layers hold the stem and 7 blocks of four
/// layers (two convolutions, the residual addition, the exit head), so a deeper network could
/// not be exported.
pub const MAX_BLOCKS: usize = (tinybayes::format::MAX_LAYERS - 1) / 4;
/// Largest `channels` accepted.
pub const MAX_CHANNELS: usize = 512;
/// Largest `channels x height x width` of a `resnet-ee` feature map after the stem: the model
/// format's limit on the units of a layer.
pub const MAX_FEATURE_MAP: usize = tinybayes::format::MAX_UNITS;
/// Most weights of a `resnet-ee` network (4,194,304): with the variances, gradients and Adam
/// moments the trainer holds about 8 floats per weight.
pub const MAX_WEIGHTS: u64 = 1 << 22;
/// Largest `shards` accepted: every shard holds a gradient of the whole network at once.
pub const MAX_SHARDS: usize = 16;
/// Largest `batch_size` accepted (activations are held per example of a batch).
pub const MAX_BATCH_SIZE: usize = 4096;
/// Most activation values of one `resnet-ee` mini-batch, `batch_size x feature map x (3 x
/// blocks + 1)` (134,217,728, half a gigabyte of f32), checked before anything is allocated.
pub const MAX_BATCH_ACTIVATIONS: u64 = 1 << 27;

/// Weight layers of `lenet300`: the length of [`TrainConfig::dropout`].
pub const DROPOUT_LAYERS_LENET300: usize = 3;

/// Epoch count below which the default KL warm-up (5 -> 20) is compressed proportionally.
pub const WARMUP_REFERENCE_EPOCHS: usize = 40;

/// The settings a resumed run may change (`train --resume` with `--epochs`, `--config` or an
/// edited `config.toml`): the epoch count, the learning rate and its schedule. (While the
/// epoch count changes, a default KL warm-up is pinned: see [`TrainConfig::resumed_with`].)
pub const RESUMABLE_SETTINGS: [&str; 3] = ["epochs", "lr", "lr_schedule"];

/// Everything that defines a training run. Missing TOML fields take the defaults listed on each
/// field (the paper's recipe).
///
/// Recipes measured on the 24,000-image MNIST subset (2,000 held out for validation, so
/// `N = 22,000`), on a 2-core machine shared with other work:
///
/// - LeNet-300-100: `epochs = 200`, `kl_weight_max = 0.367` (= N / 60,000, the paper's balance
///   of data and KL): test error 2.30 %, 98.0 % of weights pruned (98.3 / 97.3 / 65.0 % per
///   layer), about 10 minutes. With the plain ELBO (`kl_weight_max = 1`) the network prunes
///   more (98.9 %) but underfits: 2.88 % test error.
/// - LeNet-300-100 with MC dropout (`models/configs/lenet300-mcdropout.toml`: `dropout =
///   [0.2, 0.3, 0.3]`, `weight_decay = 1e-5`, `augment_shift = 2`, `epochs = 300`): test error
///   1.13% at M = 32 (1.18% with mean weights), dense (266,200 weights), 3.5 minutes.
/// - LeNet-5-Caffe: `epochs = 150`, `kl_weight_max = 0.367`: test error 1.06 %, 99.34 % of
///   weights pruned (63.2 / 96.3 / 99.7 / 93.1 % per layer, 151x fewer weights), 43 minutes at
///   about 17 s per epoch with `MATMUL_NUM_THREADS=1` (see [`super::trainer`]); 200 epochs would
///   take about 57 minutes.
/// - ResNet-EE (`arch = "resnet-ee"`, `models/configs/resnet-ee.toml`): 4 blocks of 32
///   channels on a 4x4 stride-4 stem, weighted exit objective with `prior_lambda = 0.3`,
///   `lr = 3e-3` decaying linearly over `epochs = 160`, `kl_weight_max = 0.367`: test accuracy
///   98.11 / 98.53 / 98.61 / 98.54 % at exits 1-4, 91.5 % of weights pruned (6,414 of 75,520
///   kept; block 4 almost entirely), 41 minutes at about 14 s per epoch with
///   `MATMUL_NUM_THREADS=1`.
///
/// ```
/// use tinybayes_host::train::TrainConfig;
/// let c: TrainConfig = toml::from_str("arch = \"lenet5\"\nepochs = 30").unwrap();
/// assert_eq!(c.batch_size, 100);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Architecture (default `lenet300`).
    pub arch: Arch,
    /// Number of epochs (default 200).
    pub epochs: usize,
    /// Mini-batch size (default 100).
    pub batch_size: usize,
    /// Base learning rate of Adam (default 1e-3).
    pub lr: f64,
    /// Learning-rate schedule; `None` (default) takes the architecture's recipe
    /// ([`Arch::default_lr_schedule`]).
    pub lr_schedule: Option<LrSchedule>,
    /// Seed of initialisation, validation split, shuffling and noise (default 0).
    pub seed: u64,
    /// Examples held out of the training data for validation (default 2000; 0 disables).
    pub val_size: usize,
    /// Epoch at which the KL weight starts rising from 0; `None` (default) means 5, scaled by
    /// `epochs / 40` when `epochs < 40`.
    pub warmup_start: Option<f64>,
    /// Epoch at which the KL weight reaches 1; `None` (default) means 20, scaled like
    /// `warmup_start`.
    pub warmup_end: Option<f64>,
    /// Final value of the KL weight after warm-up (default 1.0, the true ELBO). Values below 1
    /// weaken the KL term relative to the data term; `N / 60000` reproduces, on a subset of `N`
    /// MNIST images, the data-to-KL balance of the paper's 60,000-image runs.
    pub kl_weight_max: f64,
    /// Weights with log alpha above this are pruned (default 3.0).
    pub prune_threshold: f64,
    /// Initial log sigma^2 of every weight (default -10).
    pub init_log_sigma2: f64,
    /// Train on only the first this-many training examples (after the validation split).
    pub train_limit: Option<usize>,
    /// Each mini-batch is split into this many shards whose forward and backward passes run in
    /// parallel (default 2, one per core of a small machine). Results are reproducible for a
    /// fixed value; changing it changes the noise draws and the summation order.
    pub shards: usize,
    /// Shift every training image by up to this many pixels along each axis, drawn anew per
    /// example and epoch (default 0: no augmentation).
    pub augment_shift: usize,
    /// `resnet-ee` only: residual blocks `L`, one exit after each (default 4).
    pub blocks: usize,
    /// `resnet-ee` only: channels of the stem and of every block (default 32).
    pub channels: usize,
    /// `resnet-ee` only: kernel size of the stem convolution (default 4).
    pub stem_kernel: usize,
    /// `resnet-ee` only: stride of the stem convolution (default 4: with `stem_kernel = 4` and
    /// no padding the stem cuts 28x28 inputs into 4x4 patches, giving 7x7 feature maps).
    pub stem_stride: usize,
    /// `resnet-ee` only: zero padding of the stem convolution (default 0).
    pub stem_padding: usize,
    /// `resnet-ee` only: strength `lambda in [0, 1)` of the truncated geometric prior over the
    /// depth used by the training objective, `p(z = l) ∝ (1 - lambda)^(l - 1)` (default 0.3;
    /// 0 is uniform). See [`super::exits`].
    pub prior_lambda: f64,
    /// `resnet-ee` only: how the exits enter the objective: `"weighted"` (default,
    /// `-sum_l p(z=l) log p(y|x,z=l)`) or `"mixture"` (`-log sum_l p(z=l) p(y|x,z=l)`, the
    /// PACT-style marginal likelihood). Measured on MNIST (see [`super::exits`]), the mixture
    /// lets each exit specialise on the examples it is responsible for, so single exits stay
    /// far less accurate than under the weighted objective; the early-exit decision rule needs
    /// every exit to be accurate on its own.
    pub exit_objective: ExitObjective,
    /// MC dropout (Gal and Ghahramani 2016): one drop probability `p` in `[0, 1)` per weight
    /// layer, for that layer's *inputs* (`dropout = [0.2, 0.5, 0.5]` for LeNet-300-100: its
    /// 784 pixels, then its 300 and 100 hidden units). Set, the network trains deterministic
    /// weights under Bernoulli masks (each input kept with probability `1 - p` and scaled by
    /// `1 / (1 - p)` while training) with [`Self::weight_decay`] as the prior, instead of
    /// variational dropout; no KL term. Linear-only architectures (`lenet300`). Default: unset.
    pub dropout: Option<Vec<f64>>,
    /// MC dropout only: weight decay `λ` of the deterministic weights (biases excluded): the
    /// objective per example gains `λ/2 Σ θ²`, a Gaussian prior of precision `λ N` on the
    /// weights (default 1e-5). Also the prior of `posterior = "deterministic"` layers.
    pub weight_decay: f64,
    /// The network as a `[[layers]]` list (`arch = "custom"`, set by itself when the list is
    /// given): see [`super::schema`] for the keys. Default: unset (a built-in `arch`).
    pub layers: Option<Vec<LayerConfig>>,
    /// `custom` only: the input shape `[channels, height, width]` (vectors `[1, 1, D]`, time
    /// series `[C, T, 1]`); recorded by `tinybayes train` from the data.
    pub input_shape: Option<[usize; 3]>,
    /// `custom` only: the number of classes; recorded by `tinybayes train` from the data.
    pub classes: Option<usize>,
    /// Data to train on: an `.npz`, `.npy` or `.csv` file, or a folder of MNIST IDX files
    /// (`--data` overrides it). Where the data comes from is not compared when a run resumes
    /// (the data's fingerprint is). Default: unset (`--data`, `$TINYBAYES_DATA` or MNIST).
    pub data: Option<PathBuf>,
    /// Keys of the arrays in an `.npz` data file (default `x_train`, `y_train`, `x_test`,
    /// `y_test`); like [`Self::data`], not compared on resume.
    pub data_keys: Option<DataKeys>,
    /// Input normalisation fitted on the training split: `standardize`, `scale`, `unit` or
    /// `none` (see [`crate::data::normalize`]). Default: unset, `unit` for byte data (`x /
    /// 255`, the MNIST recipe) and `standardize` for f32 data.
    pub normalize: Option<NormalizeMode>,
    /// The normalisation the trainer fitted when the run started, written into the run's
    /// configuration and checkpoint (not meant to be set by hand): a resumed run and the
    /// exporter use it. Default: unset (fitted at the start of the run).
    pub normalization: Option<Normalization>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Lenet300,
            epochs: 200,
            batch_size: 100,
            lr: 1e-3,
            lr_schedule: None,
            seed: 0,
            val_size: 2000,
            warmup_start: None,
            warmup_end: None,
            kl_weight_max: 1.0,
            prune_threshold: 3.0,
            init_log_sigma2: -10.0,
            train_limit: None,
            shards: 2,
            augment_shift: 0,
            blocks: 4,
            channels: 32,
            stem_kernel: 4,
            stem_stride: 4,
            stem_padding: 0,
            prior_lambda: 0.3,
            exit_objective: ExitObjective::Weighted,
            dropout: None,
            weight_decay: 1e-5,
            layers: None,
            input_shape: None,
            classes: None,
            data: None,
            data_keys: None,
            normalize: None,
            normalization: None,
        }
    }
}

impl TrainConfig {
    /// Defaults for `arch`.
    pub fn for_arch(arch: Arch) -> Self {
        Self {
            arch,
            ..Self::default()
        }
    }

    /// The configuration with `arch = "custom"` when it has a `[[layers]]` list and left
    /// `arch` at its default (what a configuration file with only a list means).
    pub fn with_layers_arch(mut self) -> Self {
        if self.layers.is_some() && self.arch == Arch::default() {
            self.arch = Arch::Custom;
        }
        self
    }

    /// The configuration for data of `shape` `(channels, height, width)` and `classes`
    /// classes: a `custom` network records them (where not recorded yet); the built-in
    /// architectures keep their fixed shape (the trainer checks the data against it).
    pub fn with_data_shape(mut self, shape: [usize; 3], classes: usize) -> Self {
        if self.arch == Arch::Custom {
            self.input_shape.get_or_insert(shape);
            self.classes.get_or_insert(classes);
        }
        self
    }

    /// Input shape `(channels, height, width)`: the recorded one of a `custom` network (the
    /// built-in architectures' MNIST shape when none is recorded).
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape.unwrap_or_else(|| self.arch.input_shape())
    }

    /// Number of classes: the recorded one of a `custom` network, else MNIST's 10.
    pub fn classes(&self) -> usize {
        self.classes.unwrap_or(crate::idx::MNIST_CLASSES)
    }

    /// Lines describing a `custom` network layer by layer (its output shapes), for
    /// `tinybayes train --verbose`; empty for a built-in architecture.
    ///
    /// # Errors
    /// The list's first problem.
    pub fn describe_layers(&self) -> Result<Vec<String>, String> {
        match &self.layers {
            Some(layers) => schema::describe(layers, self.input_shape(), self.classes())
                .map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        }
    }

    /// The learning-rate schedule in effect.
    pub fn effective_lr_schedule(&self) -> LrSchedule {
        self.lr_schedule
            .unwrap_or_else(|| self.arch.default_lr_schedule())
    }

    /// The KL warm-up `(start, end)` in effect, in epochs.
    pub fn effective_warmup(&self) -> (f64, f64) {
        let scale = (self.epochs as f64 / WARMUP_REFERENCE_EPOCHS as f64).min(1.0);
        (
            self.warmup_start.unwrap_or(5.0 * scale),
            self.warmup_end.unwrap_or(20.0 * scale),
        )
    }

    /// Checks the values make sense; returns a description of the first problem.
    pub fn check(&self) -> Result<(), String> {
        let (ws, we) = self.effective_warmup();
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(format!(
                "batch_size must be in 1..={MAX_BATCH_SIZE}, got {}",
                self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr must be positive and finite, got {}", self.lr));
        }
        if !(ws.is_finite() && we.is_finite() && ws >= 0.0 && we >= ws) {
            return Err(format!(
                "need 0 <= warmup_start <= warmup_end, got {ws} and {we}"
            ));
        }
        if !(self.kl_weight_max.is_finite() && self.kl_weight_max >= 0.0) {
            return Err(format!(
                "kl_weight_max must be finite and >= 0, got {}",
                self.kl_weight_max
            ));
        }
        if !self.prune_threshold.is_finite() || !self.init_log_sigma2.is_finite() {
            return Err("prune_threshold and init_log_sigma2 must be finite".into());
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(format!(
                "shards must be in 1..={MAX_SHARDS}, got {}",
                self.shards
            ));
        }
        self.check_layers()?;
        let [_, rows, cols] = self.input_shape();
        if self.augment_shift >= rows.min(cols) {
            return Err(format!(
                "augment_shift must be below the image side {}, got {}",
                rows.min(cols),
                self.augment_shift
            ));
        }
        if self.train_limit == Some(0) {
            return Err("train_limit must be at least 1".into());
        }
        DepthPrior::new(self.prior_lambda).map_err(|e| e.to_string())?;
        if !(1..=MAX_BLOCKS).contains(&self.blocks) {
            return Err(format!(
                "blocks must be in 1..={MAX_BLOCKS}, got {}",
                self.blocks
            ));
        }
        if !(1..=MAX_CHANNELS).contains(&self.channels) {
            return Err(format!(
                "channels must be in 1..={MAX_CHANNELS}, got {}",
                self.channels
            ));
        }
        let [_, h, w] = self.input_shape();
        let stem = ConvGeom {
            stride: self.stem_stride,
            padding: self.stem_padding,
        };
        let side = h.min(w);
        if self.arch == Arch::ResnetEe
            && (self.stem_kernel == 0
                || self.stem_kernel > side
                || self.stem_padding >= self.stem_kernel
                || stem.out_size(side, self.stem_kernel).is_none())
        {
            return Err(format!(
                "stem_kernel {}, stem_stride {} and stem_padding {} do not fit {h}x{w} inputs \
                 (need 1 <= kernel <= {side}, stride >= 1, padding < kernel)",
                self.stem_kernel, self.stem_stride, self.stem_padding
            ));
        }
        if self.arch == Arch::ResnetEe {
            self.check_resnet_size()?;
        }
        self.check_dropout()?;
        Ok(())
    }

    /// `arch = "custom"` goes with a `[[layers]]` list and a built-in `arch` without one; a
    /// recorded input shape and class count belong to `custom` networks.
    fn check_layers(&self) -> Result<(), String> {
        match (self.arch, &self.layers) {
            (Arch::Custom, None) => {
                return Err("arch = \"custom\" needs a [[layers]] list".into());
            }
            (Arch::Custom, Some(_)) => {}
            (arch, Some(_)) => {
                return Err(format!(
                    "give either arch = \"{arch}\" or a [[layers]] list, not both"
                ));
            }
            (_, None) => {
                if self.input_shape.is_some() || self.classes.is_some() {
                    return Err(format!(
                        "input_shape and classes are recorded for [[layers]] networks only, not \
                         {}",
                        self.arch
                    ));
                }
            }
        }
        if let Some(shape) = self.input_shape {
            if shape.contains(&0) || shape.iter().any(|&d| d > u16::MAX as usize) {
                return Err(format!(
                    "input_shape {shape:?}: every dimension must be in 1..=65535"
                ));
            }
        }
        if let Some(k) = self.classes {
            if !(2..=tinybayes::format::MAX_CLASSES).contains(&k) {
                return Err(format!(
                    "classes must be in 2..={}, got {k}",
                    tinybayes::format::MAX_CLASSES
                ));
            }
        }
        if self.layers.is_some() && self.dropout.is_some() {
            return Err(
                "with a [[layers]] list, give MC dropout per layer (posterior = \"dropout\", p = \
                 ...), not as dropout = [...]"
                    .into(),
            );
        }
        Ok(())
    }

    /// The MC dropout settings: one probability in `[0, 1)` per weight layer of a linear-only
    /// architecture, and a finite, non-negative weight decay.
    fn check_dropout(&self) -> Result<(), String> {
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay must be finite and >= 0, got {}",
                self.weight_decay
            ));
        }
        let Some(ps) = &self.dropout else {
            return Ok(());
        };
        if self.arch != Arch::Lenet300 {
            return Err(format!(
                "dropout applies to linear-only architectures (lenet300), not {}",
                self.arch
            ));
        }
        let layers = DROPOUT_LAYERS_LENET300;
        if ps.len() != layers {
            return Err(format!(
                "dropout needs one probability per weight layer of {} ({layers}), got {}",
                self.arch,
                ps.len()
            ));
        }
        if let Some(p) = ps
            .iter()
            .find(|p| !(p.is_finite() && (0.0..1.0).contains(*p)))
        {
            return Err(format!(
                "dropout probability {p} is outside [0, 1) (a unit is dropped with probability p)"
            ));
        }
        Ok(())
    }

    /// The size limits of a `resnet-ee` network (the geometry is already checked).
    fn check_resnet_size(&self) -> Result<(), String> {
        let [cin, h, w] = self.input_shape();
        let stem = ConvGeom {
            stride: self.stem_stride,
            padding: self.stem_padding,
        };
        let (fh, fw) = (
            stem.out_size(h, self.stem_kernel).unwrap_or(0) as u64,
            stem.out_size(w, self.stem_kernel).unwrap_or(0) as u64,
        );
        let c = self.channels as u64;
        let map = c * fh * fw;
        if map > MAX_FEATURE_MAP as u64 {
            return Err(format!(
                "{} channels on {fh}x{fw} feature maps give {map} values per map, more than the \
                 model format's {MAX_FEATURE_MAP} (use fewer channels or a larger stem_stride)",
                self.channels
            ));
        }
        let k = self.stem_kernel as u64;
        let weights = c * cin as u64 * k * k + self.blocks as u64 * (18 * c * c + 10 * c);
        if weights > MAX_WEIGHTS {
            return Err(format!(
                "{} blocks of {} channels have {weights} weights, more than the limit of \
                 {MAX_WEIGHTS}",
                self.blocks, self.channels
            ));
        }
        let activations = self.batch_size as u64 * map * (3 * self.blocks as u64 + 1);
        if activations > MAX_BATCH_ACTIVATIONS {
            return Err(format!(
                "batch_size {} with {map}-value feature maps and {} blocks needs {activations} \
                 activations per batch, more than the limit of {MAX_BATCH_ACTIVATIONS} (lower \
                 batch_size or channels)",
                self.batch_size, self.blocks
            ));
        }
        Ok(())
    }

    /// The configuration a run saved with `self` continues with when resumed with the
    /// settings `edited`, after `epochs_done` epochs. Only [`RESUMABLE_SETTINGS`] may differ:
    /// the others define the network, its data or its noise, which a checkpoint cannot change.
    /// When the epoch count changes, a KL warm-up left to its default (which scales with the
    /// epochs of short runs) is pinned to the values the run started with, so resuming does
    /// not move a warm-up already under way.
    ///
    /// # Errors
    /// A one-line reason naming the first setting that may not change, or an epoch count below
    /// the epochs already done.
    pub fn resumed_with(&self, edited: &TrainConfig, epochs_done: usize) -> Result<Self, String> {
        // A default warm-up is compared (and pinned) as the values it had in the saved run.
        let (start, end) = self.effective_warmup();
        // Where the data comes from is not compared (its fingerprint is), and the fitted
        // normalisation is the saved run's.
        let pin = |c: &TrainConfig| TrainConfig {
            warmup_start: Some(c.warmup_start.unwrap_or(start)),
            warmup_end: Some(c.warmup_end.unwrap_or(end)),
            data: None,
            data_keys: None,
            normalization: self.normalization.clone(),
            ..c.clone()
        };
        let saved = toml::Table::try_from(pin(self)).map_err(|e| e.to_string())?;
        let asked = toml::Table::try_from(pin(edited)).map_err(|e| e.to_string())?;
        let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        for key in saved.keys().chain(asked.keys()) {
            if !RESUMABLE_SETTINGS.contains(&key.as_str()) && saved.get(key) != asked.get(key) {
                return Err(format!(
                    "{key} would change from {} to {}; a resumed run can change only {} (start a \
                     new run with --force to change the others)",
                    show(saved.get(key)),
                    show(asked.get(key)),
                    RESUMABLE_SETTINGS.join(", ")
                ));
            }
        }
        if edited.epochs < epochs_done {
            return Err(format!(
                "epochs {} is fewer than the {epochs_done} epochs already done",
                edited.epochs
            ));
        }
        let mut out = if edited.epochs == self.epochs {
            edited.clone()
        } else {
            pin(edited)
        };
        out.normalization = self.normalization.clone();
        out.data = edited.data.clone();
        out.data_keys = edited.data_keys.clone();
        out.check()?;
        Ok(out)
    }

    /// Shape of the `resnet-ee` network this configuration's settings describe (10 classes,
    /// the input shape of [`Arch::input_shape`]).
    pub fn resnet_spec(&self) -> ResNetSpec {
        ResNetSpec {
            input_shape: self.input_shape(),
            channels: self.channels,
            blocks: self.blocks,
            stem_kernel: self.stem_kernel,
            stem_stride: self.stem_stride,
            stem_padding: self.stem_padding,
            classes: crate::idx::MNIST_CLASSES,
        }
    }

    /// A freshly initialised model of [`Self::arch`] (deterministic in [`Self::seed`]).
    ///
    /// # Errors
    /// The description of the first invalid setting (see [`Self::check`]).
    pub fn build_model<T: Real>(&self) -> Result<Model<T>, String> {
        self.check()?;
        let resnet = |spec: &ResNetSpec| -> Result<Model<T>, String> {
            let prior = DepthPrior::new(self.prior_lambda).map_err(|e| e.to_string())?;
            Ok(Model::ResNetEe(Box::new(ResNetEe::build(
                spec,
                self.seed,
                self.init_log_sigma2,
                self.prune_threshold,
                prior,
            ))))
        };
        if let Some(layers) = &self.layers {
            let built = schema::build(
                layers,
                self.input_shape(),
                self.classes(),
                self.seed,
                self.init_log_sigma2,
                self.prune_threshold,
            )
            .map_err(|e| e.to_string())?;
            return match built {
                Built::Sequential(network) => Ok(Model::Sequential(network)),
                Built::ResNet(spec) => {
                    // The size limits of the built-in resnet-ee hold for a listed one too.
                    if !(1..=MAX_BLOCKS).contains(&spec.blocks)
                        || !(1..=MAX_CHANNELS).contains(&spec.channels)
                    {
                        return Err(format!(
                            "[[layers]]: {} blocks of {} channels; an early-exit network has \
                             1..={MAX_BLOCKS} blocks of 1..={MAX_CHANNELS} channels",
                            spec.blocks, spec.channels
                        ));
                    }
                    TrainConfig {
                        arch: Arch::ResnetEe,
                        channels: spec.channels,
                        blocks: spec.blocks,
                        stem_kernel: spec.stem_kernel,
                        stem_stride: spec.stem_stride,
                        stem_padding: spec.stem_padding,
                        ..self.clone()
                    }
                    .check_resnet_size()?;
                    resnet(&spec)
                }
            };
        }
        Ok(if self.arch.is_sequential() {
            let network = self
                .arch
                .build(self.seed, self.init_log_sigma2, self.prune_threshold);
            Model::Sequential(match &self.dropout {
                Some(ps) => network.with_dropout(ps),
                None => network,
            })
        } else {
            resnet(&self.resnet_spec())?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_and_defaults() {
        let c: TrainConfig = toml::from_str(
            "arch = \"lenet5\"\nepochs = 10\nlr_schedule = \"constant\"\ntrain_limit = 300\n",
        )
        .unwrap();
        assert_eq!(c.arch, Arch::Lenet5);
        assert_eq!(c.effective_lr_schedule(), LrSchedule::Constant);
        assert_eq!(c.train_limit, Some(300));
        assert_eq!(c.val_size, 2000);
        assert_eq!(c.effective_warmup(), (1.25, 5.0));
        assert_eq!(TrainConfig::default().effective_warmup(), (5.0, 20.0));
        assert_eq!(
            TrainConfig::default().effective_lr_schedule(),
            LrSchedule::ConstantThenLinear
        );
        assert!(toml::from_str::<TrainConfig>("epoch = 3").is_err());
        assert!(c.check().is_ok());
        let bad = TrainConfig {
            warmup_start: Some(9.0),
            warmup_end: Some(2.0),
            ..c
        };
        assert!(bad.check().is_err());
        // Early-exit settings: names, defaults and checks.
        let r: TrainConfig = toml::from_str(
            "arch = \"resnet-ee\"\nblocks = 6\nprior_lambda = 0.5\nexit_objective = \"mixture\"\n",
        )
        .unwrap();
        assert_eq!(r.arch, Arch::ResnetEe);
        assert_eq!(
            (r.blocks, r.channels, r.stem_kernel, r.stem_stride),
            (6, 32, 4, 4)
        );
        assert_eq!(r.exit_objective, ExitObjective::Mixture);
        assert_eq!(r.effective_lr_schedule(), LrSchedule::Linear);
        assert!(r.check().is_ok());
        assert_eq!(
            toml::from_str::<TrainConfig>("arch = \"resnet_ee\"")
                .unwrap()
                .arch,
            Arch::ResnetEe
        );
        for bad in [
            "prior_lambda = 1.0",
            "prior_lambda = -0.5",
            "blocks = 0",
            "blocks = 1000",
            "blocks = 8",
            "channels = 0",
            "channels = 512",
            "channels = 100\nstem_stride = 1\nstem_kernel = 1",
            "channels = 80\nstem_stride = 1\nstem_kernel = 1\nbatch_size = 200",
            "batch_size = 5000",
            "shards = 0",
            "shards = 17",
            "augment_shift = 28",
            "augment_shift = 9223372036854775807",
            "stem_stride = 0",
            "stem_kernel = 29",
            "stem_padding = 4",
        ] {
            let c: TrainConfig = toml::from_str(&format!("arch = \"resnet-ee\"\n{bad}")).unwrap();
            assert!(c.check().is_err(), "{bad}");
            assert!(c.build_model::<f32>().is_err(), "{bad}");
        }
        assert!(toml::from_str::<TrainConfig>("exit_objective = \"sum\"").is_err());
        // A configuration written before the early-exit fields existed still parses.
        let old = "arch = \"lenet5\"\nepochs = 150\nbatch_size = 100\nlr = 0.001\nseed = 0\n\
                   val_size = 2000\nkl_weight_max = 0.367\nprune_threshold = 3.0\n\
                   init_log_sigma2 = -10.0\nshards = 2\naugment_shift = 0\n";
        let c: TrainConfig = toml::from_str(old).unwrap();
        assert_eq!((c.arch, c.blocks), (Arch::Lenet5, 4));
        assert!(matches!(c.build_model::<f32>(), Ok(Model::Sequential(_))));
        // Resuming: epochs, lr and lr_schedule may change, nothing else; a default warm-up is
        // pinned when the epoch count changes, and the pinned values compare as equal later.
        let saved = TrainConfig {
            epochs: 10,
            ..TrainConfig::default()
        };
        assert_eq!(saved.effective_warmup(), (1.25, 5.0));
        let longer = TrainConfig {
            epochs: 30,
            lr: 1e-4,
            lr_schedule: Some(LrSchedule::Constant),
            ..saved.clone()
        };
        let resumed = saved.resumed_with(&longer, 10).unwrap();
        assert_eq!((resumed.epochs, resumed.lr), (30, 1e-4));
        assert_eq!(resumed.effective_warmup(), (1.25, 5.0));
        assert_eq!(resumed.resumed_with(&resumed, 12).unwrap(), resumed);
        assert_eq!(saved.resumed_with(&saved, 3).unwrap(), saved);
        let err = saved
            .resumed_with(
                &TrainConfig {
                    batch_size: 50,
                    ..saved.clone()
                },
                3,
            )
            .unwrap_err();
        assert!(
            err.starts_with("batch_size would change from 100 to 50"),
            "{err}"
        );
        let err = saved
            .resumed_with(
                &TrainConfig {
                    train_limit: Some(9),
                    ..saved.clone()
                },
                3,
            )
            .unwrap_err();
        assert!(
            err.starts_with("train_limit would change from unset to 9"),
            "{err}"
        );
        let err = saved
            .resumed_with(
                &TrainConfig {
                    warmup_end: Some(9.0),
                    ..saved.clone()
                },
                3,
            )
            .unwrap_err();
        assert!(err.starts_with("warmup_end would change"), "{err}");
        let err = saved
            .resumed_with(
                &TrainConfig {
                    epochs: 2,
                    ..saved.clone()
                },
                3,
            )
            .unwrap_err();
        assert!(
            err.contains("fewer than the 3 epochs already done"),
            "{err}"
        );
        let text = toml::to_string(&TrainConfig::default()).unwrap();
        assert_eq!(
            toml::from_str::<TrainConfig>(&text).unwrap(),
            TrainConfig::default()
        );
    }
}
