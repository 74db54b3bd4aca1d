//! A training run directory: the checkpoint the trainer writes after every epoch, read back
//! without the training data (for export and inspection).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::train::checkpoint;
use crate::train::{EpochReport, Model, TrainConfig, Trainer};

/// A finished or interrupted run, as saved in its directory.
pub struct Run {
    /// The configuration the run trained with.
    pub config: TrainConfig,
    /// The model after the last completed epoch: a layer sequence (LeNets) or an early-exit
    /// ResNet.
    pub model: Model<f32>,
    /// Epochs completed.
    pub epochs_done: usize,
    /// One report per completed epoch.
    pub history: Vec<EpochReport>,
}

/// Whether `dir` holds a checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(checkpoint::CHECKPOINT_FILE).is_file()
}

/// Loads the model and history saved in a run directory.
pub fn load_run(dir: &Path) -> Result<Run> {
    if !has_checkpoint(dir) {
        bail!(
            "{} holds no training checkpoint ({} missing): train with `tinybayes train --out {}`",
            dir.display(),
            checkpoint::CHECKPOINT_FILE,
            dir.display()
        );
    }
    let (model, config, history) = Trainer::load_model(dir)
        .with_context(|| format!("cannot read the run in {}", dir.display()))?;
    Ok(Run {
        config,
        model,
        epochs_done: history.len(),
        history,
    })
}
