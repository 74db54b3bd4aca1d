//! The training loop: epochs of shuffled mini-batches, Adam, KL warm-up, validation, progress
//! callbacks, NaN/inf detection and checkpoints.
//!
//! Objective (per example): `loss = mean_batch CE + rw * KL / N`, with `N` the number of training
//! examples and `rw = kl_weight_max * warmup(epoch)`. For `resnet-ee` the cross-entropy is
//! replaced by the exit objective of [`super::exits`] (`-log sum_l p(z=l) p(y|x,z=l)` by
//! default), and the KL sums over every VD layer (stem, block convolutions, exit heads). This is the paper's
//! `(N/B) * sum_batch CE + rw * KL` divided by `N`; Adam is invariant to that constant factor (up
//! to its epsilon), and per-example numbers are easier to read. `EpochReport::kl` is the un-scaled
//! KL sum in nats. MC dropout layers ([`super::TrainedLayer::DropoutLinear`]) have no KL; their
//! prior is the weight decay, `+ weight_decay / 2 * Σ θ²` per example.
//!
//! Parallelism: each mini-batch is split into `shards` parts whose forward and backward passes
//! run on the rayon pool; their gradients are added in shard order. Matrix products go through
//! `matrixmultiply`; with its `threading` feature each product may also use threads, which on a
//! 2-core machine only oversubscribes the cores, so a binary that trains should set
//! `MATMUL_NUM_THREADS=1` (before any thread starts) unless measurements say otherwise.
//!
//! Reproducibility: every random draw is derived from `(seed, purpose, epoch, batch, shard,
//! layer)`, never from a running generator, so an epoch's shuffling and noise depend only on the
//! seed and the epoch number. A checkpoint therefore needs no generator state, and a resumed run
//! performs bit-identical computations. Parallel kernels use fixed chunking and ordered
//! reductions, so the same seed and `shards` give identical parameters on the same machine,
//! whatever the number of threads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::arch::Arch;
use super::checkpoint::{self, CheckpointError, Header};
use super::config::TrainConfig;
use super::model::Model;
use super::network::Network;
use super::optim::{kl_weight, Adam};
use super::resnet::ResNetEe;
use super::tensor::{fill_normal, mix_seed, CHUNK};
use crate::data::{DataSet as Dataset, DataSpec, Normalization, NormalizeMode};
use crate::idx::IdxError;

const PURPOSE_SHUFFLE: u64 = 1;
const PURPOSE_NOISE: u64 = 2;
const PURPOSE_AUGMENT: u64 = 3;

/// Why training stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The data does not fit the configuration (split too large, wrong image size, ...).
    #[error("training data: {0}")]
    Data(IdxError),
    /// The data has the wrong shape for the architecture.
    #[error(
        "data has {} examples and {classes} classes; {arch} needs {} inputs and at most {max_classes} classes",
        crate::data::shape_text(*shape),
        crate::data::shape_text(*expected)
    )]
    DataShape {
        /// Architecture name.
        arch: String,
        /// Input shape the architecture needs, channels x height x width.
        expected: [usize; 3],
        /// Shape of one example of the data, channels x height x width.
        shape: [usize; 3],
        /// Classes in the data.
        classes: usize,
        /// Classes the network can output.
        max_classes: usize,
    },
    /// The loss or a parameter became NaN or infinite; the trainer refuses to continue or to save.
    #[error("non-finite loss or parameters at epoch {epoch}, batch {batch}")]
    NonFinite {
        /// Epoch (0-based) of the failing batch.
        epoch: usize,
        /// Batch (0-based) within the epoch.
        batch: usize,
    },
    /// A previous error left the parameters unusable.
    #[error("trainer state is invalid after a non-finite update; resume from the last checkpoint")]
    Poisoned,
    /// All configured epochs have run.
    #[error("training already finished ({0} epochs)")]
    Finished(usize),
    /// Checkpoint reading or writing failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The run holds a different kind of model than the caller asked for (e.g.
    /// [`Trainer::load_network`] on a `resnet-ee` run, which is not a layer sequence).
    #[error("the run trains {found}, which is not {wanted} (use Trainer::load_model)")]
    WrongModelKind {
        /// Architecture of the run.
        found: Arch,
        /// What was asked for.
        wanted: &'static str,
    },
    /// A resumed run was asked to change a setting that cannot change (see
    /// [`TrainConfig::resumed_with`]).
    #[error("cannot resume with these settings: {0}")]
    Resume(String),
    /// The checkpoint was made with different training data.
    #[error(
        "checkpoint was made with different data (fingerprint {saved:016x}, now {current:016x})"
    )]
    DataMismatch {
        /// Fingerprint stored in the checkpoint.
        saved: u64,
        /// Fingerprint of the data given now.
        current: u64,
    },
}

/// The data error is part of the message, and not also `source()` (one cause, printed once).
impl From<IdxError> for TrainError {
    fn from(e: IdxError) -> Self {
        TrainError::Data(e)
    }
}

/// Progress after one mini-batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Batch within the epoch (0-based).
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// Objective of this batch per example: `ce + kl_weight * kl / N`.
    pub loss: f64,
    /// Mean cross-entropy of this batch (nats).
    pub ce: f64,
    /// KL sum over all weights (nats); while `kl_weight` is 0 it is not recomputed per batch and
    /// holds the value at the start of the epoch.
    pub kl: f64,
    /// Learning rate in use.
    pub lr: f64,
    /// KL weight in use.
    pub kl_weight: f64,
}

/// Summary of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// Epoch that just finished (0-based).
    pub epoch: usize,
    /// Total epochs configured.
    pub epochs: usize,
    /// Mean over batches of the per-example objective.
    pub loss: f64,
    /// Mean over batches of the mean cross-entropy.
    pub ce: f64,
    /// KL sum over all weights at the end of the epoch (nats).
    pub kl: f64,
    /// Accuracy of the deterministic pruned network on the validation split (`None` without one);
    /// for `resnet-ee`, of its last exit (every block run).
    pub val_accuracy: Option<f64>,
    /// `resnet-ee`: validation accuracy of every exit (exit 1 first) of the deterministic pruned
    /// network; empty for other architectures or without a validation split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_val_accuracy: Vec<f64>,
    /// Fraction of all weights with log alpha above the prune threshold.
    pub sparsity: f64,
    /// The same fraction per weight layer (for `resnet-ee` in the order of
    /// [`ResNetEe::weight_layers`]).
    pub layer_sparsity: Vec<f64>,
    /// Learning rate used in this epoch.
    pub lr: f64,
    /// KL weight used in this epoch.
    pub kl_weight: f64,
    /// Training throughput (examples per second, excluding validation).
    pub examples_per_sec: f64,
    /// Wall-clock seconds of the epoch, validation included.
    pub seconds: f64,
}

/// What the progress callback receives.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    /// After every mini-batch.
    Batch(BatchReport),
    /// After every epoch.
    Epoch(EpochReport),
}

/// Checks that data of `spec` (input shape and class count, [`crate::data::DataSet::spec`])
/// fits a network of input `shape` with `outputs` classes: the same shape, value for value,
/// and no more classes than outputs. The built-in architectures take `[1, 28, 28]` and 10
/// classes; other data is refused here with [`TrainError::DataShape`].
pub fn check_data_fits(
    arch: &str,
    shape: [usize; 3],
    outputs: usize,
    spec: DataSpec,
) -> Result<(), TrainError> {
    if spec.input_shape != shape || spec.classes > outputs {
        return Err(TrainError::DataShape {
            arch: arch.to_string(),
            expected: shape,
            shape: spec.input_shape,
            classes: spec.classes,
            max_classes: outputs,
        });
    }
    Ok(())
}

/// Sparse variational dropout trainer.
pub struct Trainer {
    config: TrainConfig,
    pub(super) model: Model<f32>,
    pub(super) adam: Adam,
    epoch: usize,
    train_x: Array2<f32>,
    train_y: Vec<usize>,
    val_x: Array2<f32>,
    val_y: Vec<usize>,
    fingerprint: u64,
    history: Vec<EpochReport>,
    poisoned: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("epoch", &self.epoch)
            .field("train_len", &self.train_len())
            .field("val_len", &self.val_len())
            .field("adam_step", &self.adam.step)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Starts a run: validates `config`, carves the validation split from `data` (seeded by
    /// `config.seed`), applies `train_limit`, and initialises the network. Also applies
    /// [`super::alloc::tune_allocator`] (process-wide, once).
    pub fn new(config: TrainConfig, data: &Dataset) -> Result<Self, TrainError> {
        let config = config
            .with_layers_arch()
            .with_data_shape(data.samples.shape, data.classes);
        let model = config.build_model::<f32>().map_err(TrainError::Config)?;
        let sizes: Vec<usize> = model.params().iter().map(|p| p.len()).collect();
        Self::assemble(config, data, model, Adam::new(&sizes), 0, Vec::new())
    }

    fn assemble(
        mut config: TrainConfig,
        data: &Dataset,
        model: Model<f32>,
        adam: Adam,
        epoch: usize,
        history: Vec<EpochReport>,
    ) -> Result<Self, TrainError> {
        config.check().map_err(TrainError::Config)?;
        super::alloc::tune_allocator();
        check_data_fits(
            &config.arch.to_string(),
            model.input_shape(),
            model.classes(),
            data.spec(),
        )?;
        let (train, val) = if config.val_size > 0 {
            data.split_validation(config.val_size, config.seed)?
        } else {
            (data.clone(), data.take(0))
        };
        let train = match config.train_limit {
            Some(n) => train.take(n),
            None => train,
        };
        // Fitted on the training examples when the run starts; a resumed run keeps the saved one.
        let norm = match config.normalization.clone() {
            Some(n) => {
                n.check_fits(&data.samples).map_err(TrainError::Config)?;
                n
            }
            None => {
                let mode = config
                    .normalize
                    .unwrap_or_else(|| NormalizeMode::default_for(&data.samples.values));
                Normalization::fit(mode, &train.samples)
            }
        };
        let train_x = train.to_f32(&norm);
        let val_x = val.to_f32(&norm);
        config.normalization = Some(norm);
        Ok(Self {
            fingerprint: data.fingerprint(),
            train_x,
            train_y: train.labels_usize(),
            val_x,
            val_y: val.labels_usize(),
            config,
            model,
            adam,
            epoch,
            history,
            poisoned: false,
        })
    }

    /// Restores a trainer from the checkpoint in `dir`. `data` must be the same dataset the run
    /// started with (checked by fingerprint); the split and limit are re-derived from the saved
    /// configuration.
    pub fn resume(dir: &Path, data: &Dataset) -> Result<Self, TrainError> {
        Self::resume_with(dir, data, |saved, _| Ok(saved.clone()))
    }

    /// [`Self::resume`] with changed settings: `settings` receives the saved configuration and
    /// the epochs done, and returns the settings asked for, which
    /// [`TrainConfig::resumed_with`] accepts or refuses ([`TrainError::Resume`]: only the
    /// epoch count, the learning rate and its schedule can change).
    pub fn resume_with(
        dir: &Path,
        data: &Dataset,
        settings: impl FnOnce(&TrainConfig, usize) -> Result<TrainConfig, TrainError>,
    ) -> Result<Self, TrainError> {
        let (header, payload) = checkpoint::read(dir)?;
        let saved = Self::checkpoint_config(dir, &header)?;
        let asked = settings(&saved, header.epoch)?;
        let config = saved
            .resumed_with(&asked, header.epoch)
            .map_err(TrainError::Resume)?;
        if header.data_fingerprint != data.fingerprint() {
            return Err(TrainError::DataMismatch {
                saved: header.data_fingerprint,
                current: data.fingerprint(),
            });
        }
        let model = Self::restore_model(dir, &config, &header, &payload.params)?;
        let sizes: Vec<usize> = header.tensor_sizes.clone();
        let mut adam = Adam::new(&sizes);
        adam.step = header.adam_step;
        adam.m = payload.m;
        adam.v = payload.v;
        Self::assemble(config, data, model, adam, header.epoch, header.history)
    }

    /// The configuration saved in the checkpoint in `dir` and the epochs done (what a resumed
    /// run starts from).
    pub fn saved_config(dir: &Path) -> Result<(TrainConfig, usize), TrainError> {
        let (header, _) = checkpoint::read(dir)?;
        Ok((Self::checkpoint_config(dir, &header)?, header.epoch))
    }

    /// Reads only the model from the checkpoint in `dir` (no training data needed), e.g. for
    /// export or evaluation, with the run's configuration and epoch history (whose
    /// [`EpochReport::exit_val_accuracy`] holds the per-exit validation accuracies of a
    /// `resnet-ee` run).
    pub fn load_model(
        dir: &Path,
    ) -> Result<(Model<f32>, TrainConfig, Vec<EpochReport>), TrainError> {
        let (header, payload) = checkpoint::read(dir)?;
        let config = Self::checkpoint_config(dir, &header)?;
        let model = Self::restore_model(dir, &config, &header, &payload.params)?;
        Ok((model, config, header.history))
    }

    /// Reads only the layer-sequence network from the checkpoint in `dir` (no training data
    /// needed). A `resnet-ee` run gives [`TrainError::WrongModelKind`].
    pub fn load_network(dir: &Path) -> Result<Network<f32>, TrainError> {
        match Self::load_model(dir)? {
            (Model::Sequential(n), ..) => Ok(n),
            (Model::ResNetEe(_), config, _) => Err(TrainError::WrongModelKind {
                found: config.arch,
                wanted: "a layer sequence",
            }),
        }
    }

    /// Reads the early-exit network from the checkpoint in `dir` (no training data needed). A
    /// run of another architecture gives [`TrainError::WrongModelKind`].
    pub fn load_resnet(dir: &Path) -> Result<ResNetEe<f32>, TrainError> {
        match Self::load_model(dir)? {
            (Model::ResNetEe(r), ..) => Ok(*r),
            (Model::Sequential(_), config, _) => Err(TrainError::WrongModelKind {
                found: config.arch,
                wanted: "resnet-ee",
            }),
        }
    }

    fn checkpoint_config(dir: &Path, header: &Header) -> Result<TrainConfig, TrainError> {
        toml::from_str(&header.config_toml).map_err(|e| {
            TrainError::Checkpoint(CheckpointError::Corrupt {
                path: dir.join(checkpoint::CHECKPOINT_FILE),
                reason: format!("bad configuration: {e}"),
            })
        })
    }

    fn restore_model(
        dir: &Path,
        config: &TrainConfig,
        header: &Header,
        params: &[Vec<f32>],
    ) -> Result<Model<f32>, TrainError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: dir.join(checkpoint::CHECKPOINT_FILE),
            reason,
        };
        let mut model = config
            .build_model::<f32>()
            .map_err(|e| corrupt(format!("bad configuration: {e}")))?;
        let sizes: Vec<usize> = model.params().iter().map(|p| p.len()).collect();
        if sizes != header.tensor_sizes {
            return Err(CheckpointError::Corrupt {
                path: dir.join(checkpoint::CHECKPOINT_FILE),
                reason: format!(
                    "tensor sizes {:?} do not match architecture {}",
                    header.tensor_sizes, config.arch
                ),
            }
            .into());
        }
        for (dst, src) in model.params_mut().into_iter().zip(params) {
            dst.copy_from_slice(src);
        }
        Ok(model)
    }

    /// Writes the full state into `dir` atomically (see [`super::checkpoint`]) and returns the
    /// file path. Refuses after a non-finite update, so the last good checkpoint survives.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        if self.poisoned {
            return Err(TrainError::Poisoned);
        }
        let config_toml = toml::to_string(&self.config)
            .map_err(|e| TrainError::Config(format!("cannot serialise configuration: {e}")))?;
        let header = Header {
            format: 0,
            config_toml,
            epoch: self.epoch,
            adam_step: self.adam.step,
            data_fingerprint: self.fingerprint,
            tensor_sizes: Vec::new(),
            payload_checksum: 0,
            history: self.history.clone(),
        };
        Ok(checkpoint::write(
            dir,
            header,
            &self.model.params(),
            &self.adam.m,
            &self.adam.v,
        )?)
    }

    /// The configuration of this run.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model in its current state.
    pub fn model(&self) -> &Model<f32> {
        &self.model
    }

    /// Consumes the trainer, returning the model.
    pub fn into_model(self) -> Model<f32> {
        self.model
    }

    /// The layer-sequence network in its current state (`None` for `resnet-ee`).
    pub fn network(&self) -> Option<&Network<f32>> {
        self.model.as_network()
    }

    /// Consumes the trainer, returning the layer-sequence network (`None` for `resnet-ee`).
    pub fn into_network(self) -> Option<Network<f32>> {
        match self.model {
            Model::Sequential(n) => Some(n),
            Model::ResNetEe(_) => None,
        }
    }

    /// Next epoch to run (= epochs completed).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// True when all configured epochs have run.
    pub fn is_finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    /// Reports of the epochs run so far (including those before a resume).
    pub fn history(&self) -> &[EpochReport] {
        &self.history
    }

    /// Number of training examples (after split and limit).
    pub fn train_len(&self) -> usize {
        self.train_y.len()
    }

    /// Number of validation examples.
    pub fn val_len(&self) -> usize {
        self.val_y.len()
    }

    /// Accuracy of the current deterministic pruned network on `data` (e.g. the test set); for
    /// `resnet-ee`, of its last exit.
    pub fn evaluate(&self, data: &Dataset) -> f64 {
        self.evaluate_exits(data).0
    }

    /// Accuracy on `data` of the final output and (for `resnet-ee`) of every exit, exit 1 first.
    pub fn evaluate_exits(&self, data: &Dataset) -> (f64, Vec<f64>) {
        let norm = self.normalization();
        self.model
            .accuracies(&data.to_f32(&norm), &data.labels_usize())
    }

    /// The input normalisation the network trains on (fitted on the training split when the
    /// run started, or the resumed run's).
    pub fn normalization(&self) -> Normalization {
        self.config
            .normalization
            .clone()
            .unwrap_or_else(|| Normalization {
                mode: NormalizeMode::None,
                bytes: false,
                scale: Vec::new(),
                offset: Vec::new(),
            })
    }

    /// Runs every remaining epoch, saving a checkpoint into `checkpoint_dir` (when given) after
    /// each one. Stops at the first error; a non-finite batch never reaches the checkpoint.
    pub fn run(
        &mut self,
        checkpoint_dir: Option<&Path>,
        mut on_event: impl FnMut(&TrainEvent),
    ) -> Result<(), TrainError> {
        while !self.is_finished() {
            self.train_epoch(&mut on_event)?;
            if let Some(dir) = checkpoint_dir {
                self.save_checkpoint(dir)?;
            }
        }
        Ok(())
    }

    /// Runs one epoch, calling `on_event` after every batch and at the end.
    pub fn train_epoch(
        &mut self,
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<EpochReport, TrainError> {
        if self.poisoned {
            return Err(TrainError::Poisoned);
        }
        if self.is_finished() {
            return Err(TrainError::Finished(self.config.epochs));
        }
        let start = Instant::now();
        let epoch = self.epoch;
        let cfg = &self.config;
        let n = self.train_y.len();
        let lr = cfg.effective_lr_schedule().lr(cfg.lr, epoch, cfg.epochs);
        let (ws, we) = cfg.effective_warmup();
        let rw = cfg.kl_weight_max * kl_weight(epoch, ws, we);
        let kl_scale = (rw / n as f64) as f32;
        let seed = cfg.seed;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[
            seed,
            PURPOSE_SHUFFLE,
            epoch as u64,
        ])));
        let batches = n.div_ceil(cfg.batch_size);
        let mut kl = self.model.kl();
        let (mut loss_sum, mut ce_sum) = (0.0, 0.0);
        for (bi, idx) in order.chunks(cfg.batch_size).enumerate() {
            let (batch_ce, mut grads) = self.shard_gradients(idx, epoch, bi);
            let ce = batch_ce / idx.len() as f64;
            if rw > 0.0 {
                kl = self.model.add_kl_grad(&mut grads, kl_scale);
            }
            // MC dropout layers: the weight decay is their prior (0 for other models).
            let decay = self
                .model
                .add_weight_decay_grad(&mut grads, cfg.weight_decay as f32);
            let loss = ce + rw * kl / n as f64 + decay;
            if !loss.is_finite() {
                self.poisoned = true;
                return Err(TrainError::NonFinite { epoch, batch: bi });
            }
            if !self.adam.update(&mut self.model.params_mut(), &grads, lr) {
                self.poisoned = true;
                return Err(TrainError::NonFinite { epoch, batch: bi });
            }
            loss_sum += loss;
            ce_sum += ce;
            on_event(&TrainEvent::Batch(BatchReport {
                epoch,
                batch: bi,
                batches,
                loss,
                ce,
                kl,
                lr,
                kl_weight: rw,
            }));
        }
        let train_secs = start.elapsed().as_secs_f64();
        let (val_accuracy, exit_val_accuracy) = if self.val_y.is_empty() {
            (None, Vec::new())
        } else {
            let (last, exits) = self.model.accuracies(&self.val_x, &self.val_y);
            (Some(last), exits)
        };
        let sparsity = self.model.sparsity();
        let report = EpochReport {
            epoch,
            epochs: self.config.epochs,
            loss: loss_sum / batches.max(1) as f64,
            ce: ce_sum / batches.max(1) as f64,
            kl: self.model.kl(),
            val_accuracy,
            exit_val_accuracy,
            sparsity: sparsity.fraction(),
            layer_sparsity: sparsity.layers.iter().map(|l| l.fraction()).collect(),
            lr,
            kl_weight: rw,
            examples_per_sec: n as f64 / train_secs.max(1e-9),
            seconds: start.elapsed().as_secs_f64(),
        };
        self.epoch += 1;
        self.history.push(report.clone());
        on_event(&TrainEvent::Epoch(report.clone()));
        Ok(report)
    }

    /// Forward and backward passes of one mini-batch, split into `config.shards` shards that run
    /// in parallel. Returns the summed data term (cross-entropy, or the exit objective) and its
    /// gradient of the batch mean; shard
    /// gradients are added in shard order, so the result does not depend on thread scheduling.
    pub(super) fn shard_gradients(
        &self,
        idx: &[usize],
        epoch: usize,
        batch: usize,
    ) -> (f64, Vec<Vec<f32>>) {
        let seed = self.config.seed;
        let shard_len = idx.len().div_ceil(self.config.shards).max(1);
        let parts: Vec<(f64, Vec<Vec<f32>>)> = idx
            .par_chunks(shard_len)
            .enumerate()
            .map(|(si, sidx)| {
                let mut x = self.train_x.select(Axis(0), sidx);
                if self.config.augment_shift > 0 {
                    let words = [seed, PURPOSE_AUGMENT, epoch as u64, batch as u64, si as u64];
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&words));
                    let shape = self.config.input_shape();
                    super::augment::shift_batch(&mut x, shape, self.config.augment_shift, &mut rng);
                }
                let labels: Vec<usize> = sidx.iter().map(|&i| self.train_y[i]).collect();
                let mut noise = |layer: usize, eps: &mut [f32]| {
                    let words = [
                        seed,
                        PURPOSE_NOISE,
                        epoch as u64,
                        batch as u64,
                        si as u64,
                        layer as u64,
                    ];
                    fill_normal(eps, mix_seed(&words));
                };
                self.model.data_term_gradients(
                    x,
                    &labels,
                    idx.len(),
                    self.config.exit_objective,
                    &mut noise,
                )
            })
            .collect();
        let mut parts = parts.into_iter();
        let (mut ce, mut grads) = parts.next().unwrap_or_default();
        for (c, g) in parts {
            ce += c;
            for (acc, add) in grads.iter_mut().zip(&g) {
                acc.par_chunks_mut(CHUNK)
                    .zip(add.par_chunks(CHUNK))
                    .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            }
        }
        (ce, grads)
    }

    /// Test hook: overwrites one parameter (to provoke a non-finite update).
    #[cfg(test)]
    pub(crate) fn poke_param(&mut self, tensor: usize, index: usize, value: f32) {
        self.model.params_mut()[tensor][index] = value;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::{Arch, TrainedLayer};
    use rand::Rng;
    use std::path::PathBuf;

    /// The shared MNIST directory (beside the checkout, as in CI, else the workplace's copy);
    /// the tests that need it fail, rather than pass silently, when it is absent.
    pub(crate) fn mnist_dir() -> PathBuf {
        let candidates = [
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist"),
            PathBuf::from("/work/shared/data/mnist"),
        ];
        candidates
            .iter()
            .find(|d| d.join("train-images-idx3-ubyte.gz").exists())
            .cloned()
            .unwrap_or_else(|| {
                panic!("MNIST not found in any of {candidates:?}: the tests need it")
            })
    }

    fn mnist(prefix: &str) -> Dataset {
        let dir = mnist_dir();
        crate::idx::load_dataset(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        )
        .expect("MNIST loads")
        .into()
    }

    /// The MNIST training set (panics if the shared data directory is absent).
    pub(crate) fn mnist_train() -> Dataset {
        mnist("train")
    }

    /// The MNIST test set (panics if the shared data directory is absent).
    pub(crate) fn mnist_test() -> Dataset {
        mnist("t10k")
    }

    /// `n` synthetic 28x28 images of 10 classes: a class-specific 7x7 block pattern plus noise.
    fn synthetic(n: usize, seed: u64) -> Dataset {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut pixels = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % 10;
            labels.push(class as u8);
            for r in 0..28 {
                for c in 0..28 {
                    let block = (r / 7) * 4 + c / 7;
                    let on = (block * 7 + class * 3) % 10 < 4;
                    let base: f64 = if on { 200.0 } else { 20.0 };
                    let v = base + rng.random_range(-20.0..20.0);
                    pixels.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
        crate::idx::Dataset::new(28, 28, pixels, labels, 10)
            .unwrap()
            .into()
    }

    fn small_config(arch: Arch, epochs: usize) -> TrainConfig {
        let config = TrainConfig {
            epochs,
            val_size: 50,
            warmup_start: Some(0.0),
            warmup_end: Some(1.0),
            seed: 5,
            ..TrainConfig::for_arch(arch)
        };
        if arch == Arch::ResnetEe {
            // A narrow two-block network keeps the unoptimised test build fast.
            TrainConfig {
                channels: 6,
                blocks: 2,
                lr: 3e-3,
                ..config
            }
        } else {
            config
        }
    }

    #[test]
    fn tiny_mnist_run_learns_and_sparsifies() {
        let data = mnist_train();
        // 500 training images; KL weight 0 in epochs 0-1, 0.5 in epoch 2, 1 from epoch 3.
        let config = TrainConfig {
            epochs: 5,
            val_size: 1000,
            train_limit: Some(500),
            warmup_start: Some(1.0),
            warmup_end: Some(3.0),
            lr_schedule: Some(crate::train::LrSchedule::Constant),
            ..TrainConfig::for_arch(Arch::Lenet300)
        };
        let mut trainer = Trainer::new(config, &data).unwrap();
        assert_eq!((trainer.train_len(), trainer.val_len()), (500, 1000));
        let mut batches = 0;
        trainer
            .run(None, |e| {
                if let TrainEvent::Batch(b) = e {
                    assert_eq!(b.batches, 5);
                    batches += 1;
                }
            })
            .unwrap();
        assert_eq!(batches, 25);
        let h = trainer.history();
        for r in h {
            eprintln!(
                "epoch {} rw {} loss {:.3} ce {:.3} val {:?} sparsity {:.4}",
                r.epoch, r.kl_weight, r.loss, r.ce, r.val_accuracy, r.sparsity
            );
        }
        assert_eq!(h[1].kl_weight, 0.0);
        assert!(h[2].kl_weight > 0.0);
        let acc = h[4].val_accuracy.unwrap();
        assert!(acc > 0.5, "validation accuracy {acc}");
        assert!(
            h[4].sparsity > h[1].sparsity + 0.03,
            "sparsity {} before KL, {} after",
            h[1].sparsity,
            h[4].sparsity
        );
        // The KL term shrinks once it is weighted.
        assert!(h[4].kl < h[1].kl);
    }

    #[test]
    fn tiny_mnist_resnet_run_learns_every_exit_and_sparsifies() {
        let data = mnist_train();
        // 600 training images in batches of 20, 8 channels, 3 blocks; KL weight 0 in epochs
        // 0-2, then rising to 0.1 (a full-weight KL swamps 600 examples).
        let config = TrainConfig {
            epochs: 6,
            val_size: 300,
            train_limit: Some(600),
            batch_size: 20,
            warmup_start: Some(2.0),
            warmup_end: Some(4.0),
            kl_weight_max: 0.1,
            lr: 5e-3,
            lr_schedule: Some(crate::train::LrSchedule::Constant),
            channels: 8,
            blocks: 3,
            ..TrainConfig::for_arch(Arch::ResnetEe)
        };
        let mut trainer = Trainer::new(config, &data).unwrap();
        trainer.run(None, |_| {}).unwrap();
        let h = trainer.history();
        for r in h {
            eprintln!(
                "epoch {} rw {} loss {:.3} val {:?} exits {:?} sparsity {:.4}",
                r.epoch, r.kl_weight, r.loss, r.val_accuracy, r.exit_val_accuracy, r.sparsity
            );
        }
        let last = &h[5];
        assert_eq!(last.exit_val_accuracy.len(), 3);
        assert_eq!(last.val_accuracy, last.exit_val_accuracy.last().copied());
        assert_eq!(last.layer_sparsity.len(), 1 + 3 * 3);
        // Chance is 10%: every exit has learned something (this network starts slowly: at full
        // size it passes 97% in a few epochs), and depth helps.
        for (l, &acc) in last.exit_val_accuracy.iter().enumerate() {
            assert!(acc > 0.25, "exit {} validation accuracy {acc}", l + 1);
        }
        let e = &last.exit_val_accuracy;
        assert!(e[2] > 0.4 && e[2] > e[0], "{e:?}");
        assert!(
            last.sparsity > h[2].sparsity + 0.03,
            "sparsity {} before KL, {} after",
            h[2].sparsity,
            last.sparsity
        );
        assert!(last.kl < h[2].kl);
    }

    #[test]
    fn resnet_checkpoint_loads_as_resnet_only() {
        let data = synthetic(200, 7);
        let dir = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            train_limit: Some(50),
            ..small_config(Arch::ResnetEe, 1)
        };
        let mut t = Trainer::new(config.clone(), &data).unwrap();
        t.run(Some(dir.path()), |_| {}).unwrap();
        let net = Trainer::load_resnet(dir.path()).unwrap();
        assert_eq!(Some(&net), t.model().as_resnet());
        assert_eq!(
            (net.depth(), net.blocks[0].conv_a.theta.dim()),
            (2, (6, 6, 3, 3))
        );
        assert_eq!((net.stem.stride, net.stem.padding), (4, 0));
        let (model, saved, history) = Trainer::load_model(dir.path()).unwrap();
        // The saved configuration carries the normalisation fitted at the start: bytes / 255.
        let fitted = TrainConfig {
            normalization: Some(Normalization::byte_unit(1)),
            ..config
        };
        assert_eq!((model.as_resnet(), saved), (Some(&net), fitted));
        assert_eq!(history[0].exit_val_accuracy.len(), 2);
        assert!(matches!(
            Trainer::load_network(dir.path()),
            Err(TrainError::WrongModelKind {
                found: Arch::ResnetEe,
                ..
            })
        ));
        assert!(t.network().is_none());
        // A layer-sequence run is not a resnet.
        let lenet = tempfile::tempdir().unwrap();
        Trainer::new(small_config(Arch::Lenet300, 1), &data)
            .unwrap()
            .save_checkpoint(lenet.path())
            .unwrap();
        assert!(Trainer::load_network(lenet.path()).is_ok());
        assert!(matches!(
            Trainer::load_resnet(lenet.path()),
            Err(TrainError::WrongModelKind { .. })
        ));
        // History written by an older trainer (no per-exit field) still parses.
        let old = r#"{"epoch":0,"epochs":1,"loss":1.0,"ce":1.0,"kl":2.0,"val_accuracy":0.5,
            "sparsity":0.1,"layer_sparsity":[0.1],"lr":0.001,"kl_weight":0.0,
            "examples_per_sec":10.0,"seconds":1.0}"#;
        let r: EpochReport = serde_json::from_str(old).unwrap();
        assert!(r.exit_val_accuracy.is_empty());
        assert!(!serde_json::to_string(&r).unwrap().contains("exit_val"));
    }

    #[test]
    fn same_seed_gives_identical_parameters() {
        let data = synthetic(300, 1);
        for arch in [Arch::Lenet300, Arch::Lenet5, Arch::ResnetEe] {
            let limit = if arch == Arch::Lenet300 {
                None
            } else {
                Some(100)
            };
            let config = TrainConfig {
                train_limit: limit,
                ..small_config(arch, 2)
            };
            let mut a = Trainer::new(config.clone(), &data).unwrap();
            a.run(None, |_| {}).unwrap();
            let mut b = Trainer::new(config.clone(), &data).unwrap();
            b.run(None, |_| {}).unwrap();
            assert_eq!(a.model(), b.model(), "{arch}");
            assert_eq!(a.adam, b.adam);
            let mut c = Trainer::new(
                TrainConfig {
                    seed: 6,
                    ..config.clone()
                },
                &data,
            )
            .unwrap();
            c.run(None, |_| {}).unwrap();
            assert_ne!(a.model(), c.model());
            // Training moved the parameters and the synthetic task is learnable (in two steps
            // by the LeNets; the early-exit network starts slower).
            assert_ne!(Ok(a.model().clone()), config.build_model::<f32>());
            if arch.is_sequential() {
                assert!(a.history()[1].val_accuracy.unwrap() > 0.3, "{arch}");
            }
        }
    }

    #[test]
    fn resumed_run_matches_uninterrupted_run() {
        let data = synthetic(300, 2);
        for arch in [Arch::Lenet300, Arch::Lenet5, Arch::ResnetEe] {
            let limit = if arch == Arch::Lenet300 {
                None
            } else {
                Some(100)
            };
            let config = TrainConfig {
                train_limit: limit,
                ..small_config(arch, 3)
            };
            let mut whole = Trainer::new(config.clone(), &data).unwrap();
            whole.run(None, |_| {}).unwrap();

            let dir = tempfile::tempdir().unwrap();
            let mut first = Trainer::new(config, &data).unwrap();
            first.train_epoch(&mut |_| {}).unwrap();
            let path = first.save_checkpoint(dir.path()).unwrap();
            assert!(path.exists() && !dir.path().join("trainer.ckpt.tmp").exists());
            drop(first);
            let mut resumed = Trainer::resume(dir.path(), &data).unwrap();
            assert_eq!(resumed.epoch(), 1);
            resumed.run(Some(dir.path()), |_| {}).unwrap();
            assert!(resumed.is_finished());
            assert_eq!(resumed.model(), whole.model(), "{arch}");
            assert_eq!(resumed.adam, whole.adam);
            assert_eq!(resumed.history().len(), 3);
            // The checkpoint written after the last epoch restores the final state too.
            let again = Trainer::resume(dir.path(), &data).unwrap();
            assert_eq!(again.model(), whole.model());
            assert!(matches!(
                again.clone_config_and_finish(),
                Err(TrainError::Finished(3))
            ));
        }
    }

    impl Trainer {
        fn clone_config_and_finish(mut self) -> Result<EpochReport, TrainError> {
            self.train_epoch(&mut |_| {})
        }
    }

    #[test]
    fn non_finite_update_stops_and_keeps_last_checkpoint() {
        let data = synthetic(200, 3);
        let dir = tempfile::tempdir().unwrap();
        let mut t = Trainer::new(small_config(Arch::Lenet300, 3), &data).unwrap();
        t.train_epoch(&mut |_| {}).unwrap();
        let path = t.save_checkpoint(dir.path()).unwrap();
        let saved = std::fs::read(&path).unwrap();
        t.poke_param(0, 17, f32::NAN);
        let err = t.train_epoch(&mut |_| {}).unwrap_err();
        assert!(
            matches!(err, TrainError::NonFinite { epoch: 1, batch: 0 }),
            "{err}"
        );
        assert!(matches!(
            t.save_checkpoint(dir.path()),
            Err(TrainError::Poisoned)
        ));
        assert!(matches!(
            t.train_epoch(&mut |_| {}),
            Err(TrainError::Poisoned)
        ));
        assert_eq!(std::fs::read(&path).unwrap(), saved);
        let r = Trainer::resume(dir.path(), &data).unwrap();
        assert_eq!(r.epoch(), 1);
        assert!(r
            .model()
            .params()
            .iter()
            .all(|p| p.iter().all(|v| v.is_finite())));

        // An infinite learning rate blows up the parameters on the first update.
        let mut t = Trainer::new(
            TrainConfig {
                lr: 1e38,
                ..small_config(Arch::Lenet300, 2)
            },
            &data,
        )
        .unwrap();
        let err = t.train_epoch(&mut |_| {}).unwrap_err();
        assert!(
            matches!(err, TrainError::NonFinite { epoch: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn checkpoint_rejects_corruption_and_other_data() {
        let data = synthetic(200, 4);
        let dir = tempfile::tempdir().unwrap();
        let t = Trainer::new(small_config(Arch::Lenet300, 2), &data).unwrap();
        let path = t.save_checkpoint(dir.path()).unwrap();
        let other = synthetic(200, 5);
        assert!(matches!(
            Trainer::resume(dir.path(), &other),
            Err(TrainError::DataMismatch { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Trainer::resume(dir.path(), &data),
            Err(TrainError::Checkpoint(CheckpointError::Corrupt { .. }))
        ));
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(matches!(
            Trainer::resume(dir.path(), &data),
            Err(TrainError::Checkpoint(CheckpointError::Corrupt { .. }))
        ));
        assert!(matches!(
            Trainer::resume(&dir.path().join("nope"), &data),
            Err(TrainError::Checkpoint(CheckpointError::Io { .. }))
        ));
    }

    #[test]
    fn bad_configurations_and_data_are_typed_errors() {
        let data = synthetic(100, 6);
        let err = Trainer::new(TrainConfig::default(), &data).unwrap_err();
        assert!(
            matches!(err, TrainError::Data(IdxError::SplitTooLarge { .. })),
            "{err}"
        );
        let err = Trainer::new(
            TrainConfig {
                epochs: 0,
                ..small_config(Arch::Lenet5, 1)
            },
            &data,
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Config(_)), "{err}");
        let small: Dataset = crate::idx::Dataset::new(2, 2, vec![0; 40], vec![0; 10], 10)
            .unwrap()
            .into();
        let err = Trainer::new(small_config(Arch::Lenet300, 1), &small).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::DataShape {
                    shape: [1, 2, 2],
                    ..
                }
            ),
            "{err}"
        );
        // A finished trainer refuses more epochs, and the exported layers have the documented shapes.
        let mut t = Trainer::new(small_config(Arch::Lenet300, 1), &data).unwrap();
        t.run(None, |_| {}).unwrap();
        assert!(matches!(
            t.train_epoch(&mut |_| {}),
            Err(TrainError::Finished(1))
        ));
        let net = t.into_network().unwrap();
        match &net.layers[0] {
            TrainedLayer::Linear {
                theta,
                log_sigma2,
                bias,
                relu,
            } => {
                assert_eq!(
                    (theta.dim(), log_sigma2.dim(), bias.len(), *relu),
                    ((300, 784), (300, 784), 300, true)
                );
            }
            other => panic!("unexpected first layer {other:?}"),
        }
    }
}
