//! A training run directory: the checkpoint the trainer writes after every epoch, read back
//! without the training data (for export and inspection).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::train::checkpoint;
use crate::train::{EpochReport, Network, TrainConfig};

/// A finished or interrupted run, as saved in its directory.
pub struct Run {
    /// The configuration the run trained with.
    pub config: TrainConfig,
    /// The network after the last completed epoch.
    pub network: Network,
    /// Epochs completed.
    pub epochs_done: usize,
    /// One report per completed epoch.
    pub history: Vec<EpochReport>,
}

/// Whether `dir` holds a checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(checkpoint::CHECKPOINT_FILE).is_file()
}

/// Loads the network and history saved in a run directory.
pub fn load_run(dir: &Path) -> Result<Run> {
    if !has_checkpoint(dir) {
        bail!(
            "{} holds no training checkpoint ({} missing): train with `tinybayes train --out {}`",
            dir.display(),
            checkpoint::CHECKPOINT_FILE,
            dir.display()
        );
    }
    let (header, payload) = checkpoint::read(dir)?;
    let config: TrainConfig = toml::from_str(&header.config_toml).with_context(|| {
        format!(
            "the checkpoint in {} has a bad configuration",
            dir.display()
        )
    })?;
    let mut network =
        config
            .arch
            .build::<f32>(config.seed, config.init_log_sigma2, config.prune_threshold);
    let mut params = network.params_mut();
    if params.len() != payload.params.len()
        || params
            .iter()
            .zip(&payload.params)
            .any(|(dst, src)| dst.len() != src.len())
    {
        bail!(
            "the checkpoint in {} does not match architecture {}",
            dir.display(),
            config.arch
        );
    }
    for (dst, src) in params.iter_mut().zip(&payload.params) {
        dst.copy_from_slice(src);
    }
    Ok(Run {
        config,
        network,
        epochs_done: header.epoch,
        history: header.history,
    })
}
