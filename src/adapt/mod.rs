//! The device keeps learning: a closed-form Bayesian update of the output layer from labelled
//! examples, on the microcontroller, with no heap.
//!
//! # The model
//! The network's last layer maps the penultimate features `φ(x)` (length `F`, the
//! mean-weights activations of the layers before it: [`crate::Engine::features`]) to the
//! logits, `f_k = w_k · φ + b_k`. Its exported posterior is the prior: every stored weight
//! `w_kj ~ N(θ_kj, c σ²_kj)` independently (`c` = [`Settings::prior_scale`], 1 keeps the
//! exported posterior; a larger `c` tempers it for data unlike the training set), pruned
//! weights are exactly zero and stay so, and the bias is the stored `b_k` plus, when
//! [`Settings::bias_variance`] `v_b > 0`, a deviation `δ_k ~ N(0, v_b)`. The weights of
//! different classes stay independent: each class has its own Gaussian posterior over its
//! own stored weights (and its bias), `N(μ_k, Σ_k)`.
//!
//! # The likelihood: Gaussian pseudo-observations of the logits
//! The softmax likelihood of a labelled example is not Gaussian in the logits. Each example
//! is observed instead as Gaussian targets `t_k` of its logits with noise variance `1/h`,
//! independently per class ([`Likelihood`]), both fixed functions of the example and the
//! exported model (mean logits `f₀`, softmax `p₀`):
//! - [`Likelihood::SoftmaxBound`]: the Hessian of the softmax log-likelihood
//!   `diag(p) - p pᵀ` is bounded by `½ (I - 11ᵀ/K) ≤ ½ I` (Böhning 1992), so for every `f`,
//!   `ℓ(f) ≥ ℓ(f₀) + (y - p₀)·(f - f₀) - ¼ ‖f - f₀‖²`: up to a constant, the likelihood of
//!   `t_k = f₀_k + 2 (y_k - p₀_k)` with `h = ½`. A lower bound of the true likelihood, tight
//!   at the exported model; it moves a logit by at most 2 per example's worth of evidence, so
//!   it suits data close to the training set.
//! - [`Likelihood::LabelRegression`]: the logits regressed on the logarithm of the smoothed
//!   label, centred on the exported logits' mean, with a chosen noise variance (the
//!   label-regression view of classification, as in Dirichlet-based Gaussian process
//!   classification, Milios et al. 2018, with one noise level). Its targets do not depend on
//!   how wrong the exported model is, so it can repair a model that data unlike its training
//!   set defeats; near the training set it pulls confident logits towards the target margin.
//!
//! Because the pseudo-observations never change, the update is exact Bayesian linear
//! regression: sequential updates equal the batch posterior and the order of the examples
//! does not matter. What is approximate: the pseudo-likelihood itself, the per-class
//! independence (no coupling through the softmax normaliser), and `φ`, the mean-weights
//! features, taken as fixed (the layers before keep their posterior, which the predictive
//! still samples).
//!
//! # Information form, one shared Gram matrix
//! Per class, the posterior precision is `Λ_k = D_k⁻¹ + h Σ_n φ_n φ_nᵀ` (restricted to the
//! class's adaptable weights; `D_k` the prior variances) and `Λ_k μ_k = D_k⁻¹ μ₀_k + Σ_n φ_n
//! r_nk`, with `r_nk = h (t_nk - the fixed part of the logit)`. The data term `Σ φ φᵀ` is the same
//! for every class, so the state is one packed symmetric `(F+1) x (F+1)` Gram matrix (`φ`
//! extended by a constant 1 for the bias) and one `(F+1)` vector per class, each entry a
//! compensated f32 sum (a sum and its running rounding error, Neumaier's summation):
//! [`LastLayer::state_len`] f32 words, `(F+1)(F+2) + 2 K (F+1)` (HMP model: F = 51, K = 14:
//! 4,212 words, 16.8 KB). An update adds one rank-one term to the Gram matrix and one scaled
//! `φ` per class: `(F+1)(F+2)/2 + K (F+1)` compensated multiply-adds plus the exported logits
//! and their softmax, `K (S + 10)` operations for `S` stored weights per class. Every update
//! is a sum, so the state is symmetric by construction, and compensated sums keep it within a
//! few ulps of the exact sums whatever the number of updates (a plain f32 sum of `N` terms
//! drifts by up to `N` half-ulps, which after a million updates breaks positive
//! semi-definiteness); the prior's positive diagonal keeps each `Λ_k` positive definite.
//! What can still fail is the f32 Cholesky factorisation of `Λ_k` once its condition number
//! nears `1 / (n ε)` (about 3·10⁵ for n = 50 adaptable weights: a prior variance 10⁵ times
//! smaller than the data's precision along some direction); [`LastLayer::write_head`] then
//! returns `NotPositiveDefinite` rather than a wrong head.
//!
//! # The updated model
//! [`LastLayer::write_head`] turns the state into an ordinary model file of two linear
//! layers that replaces the last layer ([`crate::Model::with_head`]): per class, a Cholesky
//! factorisation `Λ_k = L Lᵀ` (`n³/6` multiply-adds for `n` adaptable weights), the mean
//! `μ_k` by two triangular solves, and `L⁻¹`. The first head layer is deterministic, with
//! identity activation: it copies `φ` and computes `u_k = L⁻¹ φ_k` per class; the second is
//! Gaussian: row `k` has the weights `μ_k` on `φ` (variance 0) and weights of mean 0 and
//! variance 1 on `u_k`, so that its pre-activation has mean `μ_k · φ + b_k` and variance
//! `‖u_k‖² = φᵀ Σ_k φ`, the exact Bayesian linear regression predictive given `φ`. The
//! engine's Monte Carlo sampling and moment propagation then run unchanged; under moment
//! propagation the variance is `μ_kᵀ diag(v) μ_k + mᵀ Σ_k m + tr(Σ_k diag(v))` for features
//! of mean `m` and variance `v`, the full-covariance formula.
//!
//! # Fixed point
//! The update runs in f32 only, and the head it writes is f32. Its precision matrix grows
//! with the number of examples while its factor's entries shrink: a fixed-point Cholesky
//! factor would need a rescaling per update and a square root and division per pivot in
//! software. And the head's first layer has signed outputs with identity activation (`u_k =
//! L⁻¹ φ`), which the fixed-point format does not represent (its hidden activations are ReLU
//! outputs), so an adapted model is not quantized either (splitting `u` into `ReLU(u)` and
//! `ReLU(-u)` would give a quantizable head of twice the size). Cores without an FPU run the
//! f32 update in software.
//!
//! # Persistence
//! [`store`] saves the state (not the head: it is smaller and exact) to NOR flash through
//! `embedded-storage`, in two alternating page-aligned slots with a sequence number, a
//! version and a CRC, so that a torn write leaves the previous state valid.

pub mod flash;
mod head;
pub mod store;

use crate::format::{Posterior, MAX_UNITS};
use crate::model::{Layer, Model, Operation, Weights};

/// The curvature of the Böhning bound of the softmax log-likelihood
/// ([`Likelihood::SoftmaxBound`]: the pseudo-targets' noise precision).
pub const CURVATURE: f32 = 0.5;

/// Most penultimate features the update handles (its Gram matrix grows as their square).
pub const MAX_FEATURES: usize = 1024;

/// Largest feature magnitude an update takes: its square, summed over 10⁸ updates, stays
/// finite in f32.
pub const MAX_FEATURE: f32 = 1e15;

/// The prior's settings: how the exported posterior of the last layer becomes the prior of
/// the update.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Settings {
    /// Multiplies the exported posterior variances of the last layer's weights (finite,
    /// positive). 1 keeps the exported posterior (with no data the adapted model predicts as
    /// the exported one); a variational posterior fitted on one domain is narrow, and a larger
    /// value lets a few examples of another domain move it.
    pub prior_scale: f32,
    /// Prior variance of a deviation of each class's bias from the stored bias (finite, at
    /// least 0). 0 keeps the biases fixed (the exported biases are point values).
    pub bias_variance: f32,
    /// How a labelled example is observed.
    pub likelihood: Likelihood,
}

/// The Gaussian pseudo-observation of the logits that a labelled example `(φ, y)` gives,
/// independently per class: a target `t_k` with noise variance `1 / h`. Both are fixed
/// functions of the example and the exported model, so the update is exact Bayesian linear
/// regression (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Likelihood {
    /// The Böhning quadratic lower bound of the softmax log-likelihood expanded at the
    /// exported model's logits `f₀`: `t_k = f₀_k + 2 (y_k - p₀_k)`, `h = ½`. Faithful to the
    /// softmax near the exported model, but it moves a logit by at most 2 per example's
    /// worth of evidence: for data close to the training set.
    SoftmaxBound,
    /// Regression of the logits on the logarithm of the label smoothed by `smoothing` (in
    /// (0, 1)), centred on the exported logits' mean `f̄₀`:
    /// `t_k = f̄₀ + ln q_k - mean_j ln q_j`, `q = (1 - smoothing) onehot(y) + smoothing / K`,
    /// with noise variance `noise` (`h = 1 / noise`). Targets that do not depend on how wrong
    /// the exported model is: for data unlike the training set (the label-regression view of
    /// classification, as in Dirichlet-based Gaussian process classifiers).
    LabelRegression {
        /// Label smoothing in (0, 1): the target margin is `ln((1 - s + s/K) K / s)`.
        smoothing: f32,
        /// Noise variance of the targets (finite, positive).
        noise: f32,
    },
}

impl Likelihood {
    /// The pseudo-observations' precision `h`.
    pub fn precision(self) -> f32 {
        match self {
            Likelihood::SoftmaxBound => CURVATURE,
            Likelihood::LabelRegression { noise, .. } => 1.0 / noise,
        }
    }

    fn is_valid(self) -> bool {
        match self {
            Likelihood::SoftmaxBound => true,
            Likelihood::LabelRegression { smoothing, noise } => {
                smoothing > 0.0 && smoothing < 1.0 && noise.is_finite() && noise > 0.0
            }
        }
    }
}

/// `ln q_k - mean_j ln q_j` of the smoothed label `q` for the true class or another.
fn label_target(smoothing: f32, classes: usize, true_class: bool) -> f32 {
    let k = classes as f32;
    let low = libm::logf(smoothing / k);
    let high = libm::logf(1.0 - smoothing + smoothing / k);
    let mean = (high + (k - 1.0) * low) / k;
    if true_class {
        high - mean
    } else {
        low - mean
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prior_scale: 1.0,
            bias_variance: 0.0,
            likelihood: Likelihood::SoftmaxBound,
        }
    }
}

/// Why an update, a head or a stored state was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AdaptError {
    /// The model is an early-exit network, or its last layer is not a linear layer.
    NotPlain,
    /// The last layer's weights are not Gaussian (a deterministic or MC dropout layer has no
    /// variances to start from).
    NotGaussian,
    /// The last layer has no weight with a positive variance and the bias is fixed: there is
    /// nothing to update.
    NothingToAdapt,
    /// More penultimate features than [`MAX_FEATURES`], or a head that would exceed the
    /// format's unit limits.
    TooLarge,
    /// A setting is not finite or out of its range (see [`Settings`]).
    BadSettings,
    /// The state slice is shorter than [`LastLayer::state_len`].
    StateTooSmall {
        /// Words needed.
        needed: usize,
        /// Words provided.
        provided: usize,
    },
    /// The features given have the wrong length.
    FeatureLength {
        /// The last layer's inputs.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A feature is NaN, infinite or larger in magnitude than [`MAX_FEATURE`] (its square
    /// must stay finite in the Gram matrix), or the exported logits of the features are not
    /// finite.
    BadFeatures,
    /// The label is not a class of the model.
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// The scratch or output buffer of [`LastLayer::write_head`] is too small.
    BufferTooSmall {
        /// Words needed.
        needed: usize,
        /// Words provided.
        provided: usize,
    },
    /// A class's posterior precision is not numerically positive definite (or the state holds
    /// non-finite values), so no head can be written from it.
    NotPositiveDefinite {
        /// The class.
        class: usize,
    },
    /// [`Model::with_head`]: the model is not a plain network ending in a linear layer, or
    /// the head does not read its last layer's inputs and answer its classes with linear
    /// layers, or there would be too many layers.
    HeadMismatch,
    /// Reading, erasing or writing the flash failed (the driver's error is not kept).
    Flash,
    /// No valid stored state: both slots are erased, torn or corrupted.
    NoStoredState,
    /// The stored state was written for another model or with other settings.
    StateMismatch,
    /// The flash region cannot hold two slots of the state's record.
    FlashTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

impl core::fmt::Display for AdaptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            AdaptError::NotPlain => {
                write!(
                    f,
                    "the model's last layer is not a linear layer of a plain network"
                )
            }
            AdaptError::NotGaussian => write!(
                f,
                "the model's last layer has no Gaussian posterior (no variances to update)"
            ),
            AdaptError::NothingToAdapt => write!(
                f,
                "no weight of the last layer has a positive variance and the bias is fixed"
            ),
            AdaptError::TooLarge => write!(
                f,
                "the last layer is too large to update (at most {MAX_FEATURES} features)"
            ),
            AdaptError::BadSettings => write!(
                f,
                "prior scale and noise must be finite and positive, bias variance finite and at \
                 least 0, smoothing in (0, 1)"
            ),
            AdaptError::StateTooSmall { needed, provided } => {
                write!(f, "state of {provided} words, {needed} needed")
            }
            AdaptError::FeatureLength { expected, found } => {
                write!(f, "{found} features given, the last layer reads {expected}")
            }
            AdaptError::BadFeatures => write!(
                f,
                "a feature is NaN, infinite or beyond {MAX_FEATURE:e} in magnitude"
            ),
            AdaptError::LabelOutOfRange { label, classes } => {
                write!(f, "label {label} is not a class (the model has {classes})")
            }
            AdaptError::BufferTooSmall { needed, provided } => {
                write!(f, "buffer of {provided} words, {needed} needed")
            }
            AdaptError::NotPositiveDefinite { class } => write!(
                f,
                "the posterior precision of class {class} is not positive definite"
            ),
            AdaptError::HeadMismatch => write!(
                f,
                "the head does not fit the model (plain network, same features and classes)"
            ),
            AdaptError::Flash => write!(f, "the flash driver failed"),
            AdaptError::NoStoredState => write!(f, "no valid stored state in either slot"),
            AdaptError::StateMismatch => write!(
                f,
                "the stored state belongs to another model or other settings"
            ),
            AdaptError::FlashTooSmall { needed, available } => write!(
                f,
                "flash region of {available} bytes, two slots need {needed}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AdaptError {}

/// Packed index of `(i, j)`, `j <= i`, in a row-major lower triangle.
#[inline]
pub(crate) const fn tri(i: usize, j: usize) -> usize {
    i * (i + 1) / 2 + j
}

/// The scratch of one class's posterior: its adaptable inputs, the packed factor and the
/// mean.
type Scratch<'b> = (&'b mut [u16], &'b mut [f32], &'b mut [f32]);

/// One stored weight of the last layer: its input, mean and variance.
#[derive(Clone, Copy)]
struct Stored {
    col: usize,
    theta: f32,
    variance: f32,
}

/// The last layer's posterior under updates: the exported layer (borrowed from the model, in
/// flash) and the sufficient statistics of the examples seen (in a caller's slice). See the
/// module documentation for the model and its costs.
pub struct LastLayer<'m, 's> {
    layer: Layer<'m>,
    settings: Settings,
    features: usize,
    classes: usize,
    count: u32,
    /// The model's CRC-32 trailer: which model a stored state belongs to.
    model_crc: u32,
    /// Packed lower triangle of `Σ φ̃ φ̃ᵀ`, `φ̃ = (φ, 1)`, as compensated sums
    /// ([`accumulate`]): `(F+1)(F+2)` words.
    gram: &'s mut [f32],
    /// Per class, `Σ φ̃ r` as compensated sums: `2 K (F+1)` words.
    info: &'s mut [f32],
}

impl<'m, 's> LastLayer<'m, 's> {
    /// Words of state (f32) the update of `model`'s last layer needs:
    /// `(F+1)(F+2) + 2 K (F+1)` for `F` inputs and `K` classes.
    pub fn state_len(model: &Model<'_>) -> Result<usize, AdaptError> {
        let layer = last_layer(model)?;
        Ok(state_words(layer.inputs(), layer.outputs()))
    }

    /// The exported posterior of `model`'s last layer as the prior, with no examples seen.
    /// `state` (at least [`Self::state_len`] words) is zeroed.
    pub fn new(
        model: &Model<'m>,
        settings: Settings,
        state: &'s mut [f32],
    ) -> Result<Self, AdaptError> {
        let layer = *last_layer(model)?;
        let scale_ok = settings.prior_scale.is_finite() && settings.prior_scale > 0.0;
        let bias_ok = settings.bias_variance.is_finite() && settings.bias_variance >= 0.0;
        if !(scale_ok && bias_ok && settings.likelihood.is_valid()) {
            return Err(AdaptError::BadSettings);
        }
        let (features, classes) = (layer.inputs(), layer.outputs());
        let needed = state_words(features, classes);
        if state.len() < needed {
            return Err(AdaptError::StateTooSmall {
                needed,
                provided: state.len(),
            });
        }
        let (gram, rest) = state[..needed].split_at_mut(gram_words(features));
        gram.fill(0.0);
        rest.fill(0.0);
        let this = LastLayer {
            layer,
            settings,
            features,
            classes,
            count: 0,
            model_crc: model_crc(model),
            gram,
            info: rest,
        };
        if (0..classes).all(|k| this.adaptable(k) == 0) {
            return Err(AdaptError::NothingToAdapt);
        }
        // The head's first layer has F + Σ n_k outputs, each a u16 index of the second.
        let units = features + (0..classes).map(|k| this.adaptable(k)).sum::<usize>();
        if units > MAX_UNITS {
            return Err(AdaptError::TooLarge);
        }
        Ok(this)
    }

    /// Number of penultimate features `F` (the last layer's inputs).
    pub fn features(&self) -> usize {
        self.features
    }
    /// Number of classes `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Examples seen since the prior.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// The prior's settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Adds one labelled example, given by its penultimate features (the mean-weights
    /// activations before the last layer, [`crate::Engine::features`]). Nothing changes on
    /// error.
    pub fn update(&mut self, features: &[f32], label: usize) -> Result<(), AdaptError> {
        let (f, k_count) = (self.features, self.classes);
        if features.len() != f {
            return Err(AdaptError::FeatureLength {
                expected: f,
                found: features.len(),
            });
        }
        if label >= k_count {
            return Err(AdaptError::LabelOutOfRange {
                label,
                classes: k_count,
            });
        }
        if !features.iter().all(|v| v.abs() <= MAX_FEATURE) {
            return Err(AdaptError::BadFeatures);
        }
        // The exported model's logits, their mean, maximum and softmax normaliser, in one
        // pass (the normaliser rescaled whenever the maximum grows).
        let (mut max, mut sum, mut total) = (f32::NEG_INFINITY, 0.0f32, 0.0f32);
        for k in 0..k_count {
            let logit = self.adaptable_dot(k, features).1 + self.layer.bias()[k];
            if !logit.is_finite() {
                return Err(AdaptError::BadFeatures);
            }
            if logit > max {
                total = total * libm::expf(max - logit) + 1.0;
                max = logit;
            } else {
                total += libm::expf(logit - max);
            }
            sum += logit;
        }
        let mean = sum / k_count as f32;
        let h = self.settings.likelihood.precision();
        for k in 0..k_count {
            let (active, all) = self.adaptable_dot(k, features);
            let logit = all + self.layer.bias()[k];
            let y = if k == label { 1.0 } else { 0.0 };
            // r_k = h (t_k - fixed part), the fixed part being f0_k - μ0·φ over the
            // adaptable weights.
            let r = match self.settings.likelihood {
                Likelihood::SoftmaxBound => h * active + y - libm::expf(logit - max) / total,
                Likelihood::LabelRegression { smoothing, .. } => {
                    let target = mean + label_target(smoothing, k_count, k == label);
                    h * (target - logit + active)
                }
            };
            let row = &mut self.info[2 * k * (f + 1)..2 * (k + 1) * (f + 1)];
            let (pairs, last) = row.split_at_mut(2 * f);
            for (acc, &phi) in pairs.chunks_exact_mut(2).zip(features) {
                accumulate(acc, phi * r);
            }
            accumulate(last, r);
        }
        // The Gram matrix of (φ, 1): rank one.
        let extended = |j: usize| features.get(j).copied().unwrap_or(1.0);
        for i in 0..=f {
            let xi = extended(i);
            let row = &mut self.gram[2 * tri(i, 0)..2 * (tri(i, i) + 1)];
            for (j, acc) in row.chunks_exact_mut(2).enumerate() {
                accumulate(acc, xi * extended(j));
            }
        }
        self.count = self.count.saturating_add(1);
        Ok(())
    }

    /// The stored weights of class `k`'s row, in column order.
    fn row(&self, k: usize) -> impl Iterator<Item = Stored> + 'm {
        let layer = self.layer;
        let f = self.features;
        let (cols, values): (&'m [u16], &'m [f32]) = match layer.weights() {
            Weights::Sparse {
                row_ptr,
                cols,
                values,
            } => {
                let r = row_ptr[k] as usize..row_ptr[k + 1] as usize;
                (&cols[r.clone()], &values[2 * r.start..2 * r.end])
            }
            Weights::Dense { values } => (&[], &values[2 * k * f..2 * (k + 1) * f]),
            _ => (&[], &[]),
        };
        values
            .chunks_exact(2)
            .enumerate()
            .map(move |(n, w)| Stored {
                col: cols.get(n).map_or(n, |&c| c as usize),
                theta: w[0],
                variance: w[1],
            })
    }

    /// Class `k`'s adaptable weights (stored, positive variance) plus its bias when the bias
    /// is adaptable.
    fn adaptable(&self, k: usize) -> usize {
        self.row(k).filter(|w| w.variance > 0.0).count() + usize::from(self.bias_adapts())
    }

    fn bias_adapts(&self) -> bool {
        self.settings.bias_variance > 0.0
    }

    /// `(μ₀ · φ over the adaptable weights, μ₀ · φ over every stored weight)` of class `k`.
    fn adaptable_dot(&self, k: usize, features: &[f32]) -> (f32, f32) {
        let (mut active, mut all) = (0.0f32, 0.0f32);
        for w in self.row(k) {
            let term = w.theta * features[w.col];
            all += term;
            if w.variance > 0.0 {
                active += term;
            }
        }
        (active, all)
    }

    /// The posterior of class `k`: its adaptable inputs (`F` for the bias) in `index`, the
    /// Cholesky factor's inverse `L⁻¹` (packed lower, `Λ_k = L Lᵀ`) in `factor` and the mean
    /// in `mean`; returns `n`, the number of adaptable parameters.
    fn posterior(
        &self,
        k: usize,
        index: &mut [u16],
        factor: &mut [f32],
        mean: &mut [f32],
    ) -> Result<usize, AdaptError> {
        let f = self.features;
        let c = self.settings.prior_scale;
        let mut n = 0;
        for w in self.row(k).filter(|w| w.variance > 0.0) {
            index[n] = w.col as u16;
            let prior = c * w.variance;
            mean[n] = w.theta / prior;
            factor[tri(n, n)] = 1.0 / prior;
            n += 1;
        }
        if self.bias_adapts() {
            index[n] = f as u16;
            mean[n] = 0.0;
            factor[tri(n, n)] = 1.0 / self.settings.bias_variance;
            n += 1;
        }
        let info = |a: usize| {
            let at = 2 * (k * (f + 1) + a);
            self.info[at] + self.info[at + 1]
        };
        let h = self.settings.likelihood.precision();
        // Λ = D⁻¹ + h G on the adaptable inputs; right-hand side D⁻¹ μ₀ + Σ φ r.
        for i in 0..n {
            let a = index[i] as usize;
            mean[i] += info(a);
            for j in 0..=i {
                let b = index[j] as usize;
                let at = 2 * tri(a, b);
                let g = h * (self.gram[at] + self.gram[at + 1]);
                if i == j {
                    factor[tri(i, i)] += g;
                } else {
                    factor[tri(i, j)] = g;
                }
            }
        }
        cholesky(&mut factor[..tri(n, 0)], n)
            .ok_or(AdaptError::NotPositiveDefinite { class: k })?;
        solve_lower(factor, n, &mut mean[..n]);
        solve_upper(factor, n, &mut mean[..n]);
        invert_lower(factor, n);
        if !factor[..tri(n, 0)]
            .iter()
            .chain(&mean[..n])
            .all(|v| v.is_finite())
        {
            return Err(AdaptError::NotPositiveDefinite { class: k });
        }
        Ok(n)
    }

    /// The posterior mean and variance of class `k`'s logit given features `φ` (the
    /// Bayesian linear regression predictive without the pseudo-targets' noise), computed
    /// directly from the state; `scratch` as for [`Self::write_head`]. For checks: the
    /// engine runs the head [`Self::write_head`] writes.
    pub fn logit_moments(
        &self,
        k: usize,
        features: &[f32],
        scratch: &mut [f32],
    ) -> Result<(f32, f32), AdaptError> {
        if features.len() != self.features {
            return Err(AdaptError::FeatureLength {
                expected: self.features,
                found: features.len(),
            });
        }
        let (index, factor, mean) = self.split_scratch(scratch)?;
        let n = self.posterior(k, index, factor, mean)?;
        let extended = |a: usize| features.get(a).copied().unwrap_or(1.0);
        let mut m = self.layer.bias()[k];
        for w in self.row(k).filter(|w| w.variance == 0.0) {
            m += w.theta * features[w.col];
        }
        let mut v = 0.0;
        for i in 0..n {
            m += mean[i] * extended(index[i] as usize);
            let u: f32 = (0..=i)
                .map(|j| factor[tri(i, j)] * extended(index[j] as usize))
                .sum();
            v += u * u;
        }
        Ok((m, v))
    }

    /// Words of scratch [`Self::write_head`] needs: a packed triangle, a vector and an index
    /// list of the largest class's adaptable parameters.
    pub fn scratch_len(&self) -> usize {
        scratch_words(self.most_adaptable())
    }

    /// The most adaptable parameters of any class: the order of the largest posterior.
    fn most_adaptable(&self) -> usize {
        (0..self.classes)
            .map(|k| self.adaptable(k))
            .max()
            .unwrap_or(0)
    }

    fn split_scratch<'b>(&self, scratch: &'b mut [f32]) -> Result<Scratch<'b>, AdaptError> {
        let n = self.most_adaptable();
        let needed = scratch_words(n);
        if scratch.len() < needed {
            return Err(AdaptError::BufferTooSmall {
                needed,
                provided: scratch.len(),
            });
        }
        let (factor, rest) = scratch.split_at_mut(tri(n, 0));
        let (mean, index) = rest.split_at_mut(n);
        let index: &mut [u16] = bytemuck::cast_slice_mut(&mut index[..n.div_ceil(2)]);
        Ok((index, factor, mean))
    }

    /// Writes the model file of two linear layers that replaces the last layer (see the
    /// module documentation) into `out` (at least [`Self::head_len`] words) and returns its bytes,
    /// ready for [`Model::from_bytes`] and [`Model::with_head`]. `scratch` holds
    /// [`Self::scratch_len`] words. Costs `Σ_k n_k³ / 3` multiply-adds, `n_k` the class's
    /// adaptable parameters.
    pub fn write_head<'b>(
        &self,
        scratch: &mut [f32],
        out: &'b mut [u32],
    ) -> Result<&'b [u8], AdaptError> {
        head::write(self, scratch, out)
    }
}

/// Scratch words for a posterior of order `n`: its packed factor, its mean and its `n` u16
/// input indices.
fn scratch_words(n: usize) -> usize {
    tri(n, 0) + n + n.div_ceil(2)
}

/// The model's CRC-32 trailer (a validated model always ends with one).
fn model_crc(model: &Model<'_>) -> u32 {
    let bytes = model.as_bytes();
    crate::model::u32_at(bytes, bytes.len() - crate::format::TRAILER_LEN)
}

/// Words of the Gram matrix: each entry a compensated sum ([`accumulate`]).
fn gram_words(features: usize) -> usize {
    2 * tri(features + 1, 0)
}

fn state_words(features: usize, classes: usize) -> usize {
    gram_words(features) + 2 * classes * (features + 1)
}

/// Adds `x` to the compensated sum `pair = [sum, compensation]` (Neumaier's variant of
/// Kahan summation): the rounding error of every addition is kept in the compensation, so the
/// value `sum + compensation` stays within a few units in the last place of the exact sum
/// whatever the number of terms. A plain f32 sum of `N` terms drifts by up to `N` half-ulps:
/// after a million updates the Gram matrix would no longer be positive semi-definite.
#[inline]
fn accumulate(pair: &mut [f32], x: f32) {
    let sum = pair[0];
    let t = sum + x;
    pair[1] += if sum.abs() >= x.abs() {
        (sum - t) + x
    } else {
        (x - t) + sum
    };
    pair[0] = t;
}

/// The last layer of a plain network, checked for the update.
fn last_layer<'a, 'm>(model: &'a Model<'m>) -> Result<&'a Layer<'m>, AdaptError> {
    let layer = model.layers().last().ok_or(AdaptError::NotPlain)?;
    if model.exit_count() > 0
        || layer.operation() != Operation::Linear
        || !matches!(
            layer.weights(),
            Weights::Sparse { .. } | Weights::Dense { .. }
        )
    {
        return Err(AdaptError::NotPlain);
    }
    if layer.posterior() != Posterior::Gaussian {
        return Err(AdaptError::NotGaussian);
    }
    if layer.inputs() > MAX_FEATURES {
        return Err(AdaptError::TooLarge);
    }
    Ok(layer)
}

/// In-place Cholesky factorisation of a packed lower triangle of order `n`: `A = L Lᵀ`, `L`
/// left in place. `None` when a pivot is not positive and finite.
pub(crate) fn cholesky(a: &mut [f32], n: usize) -> Option<()> {
    for j in 0..n {
        let mut d = a[tri(j, j)];
        for p in 0..j {
            d -= a[tri(j, p)] * a[tri(j, p)];
        }
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let d = libm::sqrtf(d);
        a[tri(j, j)] = d;
        for i in j + 1..n {
            let mut s = a[tri(i, j)];
            for p in 0..j {
                s -= a[tri(i, p)] * a[tri(j, p)];
            }
            a[tri(i, j)] = s / d;
        }
    }
    Some(())
}

/// Solves `L z = b` in place (`L` packed lower).
fn solve_lower(l: &[f32], n: usize, b: &mut [f32]) {
    for i in 0..n {
        let mut s = b[i];
        for j in 0..i {
            s -= l[tri(i, j)] * b[j];
        }
        b[i] = s / l[tri(i, i)];
    }
}

/// Solves `Lᵀ x = b` in place (`L` packed lower).
fn solve_upper(l: &[f32], n: usize, b: &mut [f32]) {
    for i in (0..n).rev() {
        let mut s = b[i];
        for j in i + 1..n {
            s -= l[tri(j, i)] * b[j];
        }
        b[i] = s / l[tri(i, i)];
    }
}

/// Replaces a packed lower triangular `L` by `L⁻¹` (also lower triangular), in place, column
/// by column from the last.
fn invert_lower(l: &mut [f32], n: usize) {
    for j in (0..n).rev() {
        let d = 1.0 / l[tri(j, j)];
        l[tri(j, j)] = d;
        // Rows i > j of column j: -(Σ_{j<p≤i} X[i][p] L[p][j]) / L[j][j], with X = L⁻¹ known
        // in columns > j.
        for i in (j + 1..n).rev() {
            let mut s = 0.0f32;
            for p in j + 1..=i {
                s += l[tri(i, p)] * l[tri(p, j)];
            }
            l[tri(i, j)] = -s * d;
        }
    }
}
