//! Training configuration, deserialisable from TOML with a default for every field.

use serde::{Deserialize, Serialize};

use super::arch::Arch;
use super::optim::LrSchedule;

/// Epoch count below which the default KL warm-up (5 -> 20) is compressed proportionally.
pub const WARMUP_REFERENCE_EPOCHS: usize = 40;

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
/// - LeNet-5-Caffe: `epochs = 150`, `kl_weight_max = 0.367`: test error 1.06 %, 99.34 % of
///   weights pruned (63.2 / 96.3 / 99.7 / 93.1 % per layer, 151x fewer weights), 43 minutes at
///   about 17 s per epoch with `MATMUL_NUM_THREADS=1` (see [`super::trainer`]); 200 epochs would
///   take about 57 minutes.
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
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
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
        if self.shards == 0 {
            return Err("shards must be at least 1".into());
        }
        if self.train_limit == Some(0) {
            return Err("train_limit must be at least 1".into());
        }
        Ok(())
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
        let text = toml::to_string(&TrainConfig::default()).unwrap();
        assert_eq!(
            toml::from_str::<TrainConfig>(&text).unwrap(),
            TrainConfig::default()
        );
    }
}
