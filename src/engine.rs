//! The inference engine: runs a validated [`Model`] on one input in a caller-provided
//! workspace, either with the posterior mean weights or as a Monte Carlo posterior predictive.

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;

use crate::early_exit::{ExitPrediction, Halting};
use crate::error::InferenceError;
use crate::format::Posterior;
use crate::graph_runner::run_graph;
use crate::input::{ByteTable, Input, NormalizedU8};
use crate::kernels::{forward_mean, forward_moments, forward_samples, sample_from_moments};
use crate::model::Model;
use crate::predictive::{Prediction, PredictiveAccumulator};

/// How to turn the weight posterior into a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    /// One pass with the posterior means θ (the "test network" of sparse variational dropout).
    /// Mutual information is 0 and the expected entropy equals the predictive entropy.
    MeanWeights,
    /// Average the softmax over `samples` draws of the weights (local reparameterization).
    MonteCarlo {
        /// Number of samples M.
        samples: NonZeroU16,
    },
}

/// Runs a model in a borrowed workspace. `CHUNK` is how many Monte Carlo samples share one
/// pass over the weight tables: more is faster and needs more RAM
/// ([`Model::workspace_len`]`(CHUNK)` f32 words, plus `CHUNK * 24` bytes of stack).
///
/// Results depend only on the model, the input, the mode and the generator's state, never on
/// `CHUNK`: sample `m` draws its noise from its own Xoshiro128++ stream, seeded by the `m`-th
/// `u64` of the caller's generator.
pub struct Engine<'m, 'w, const CHUNK: usize> {
    model: &'m Model<'m>,
    workspace: &'w mut [f32],
    /// Normalised value of every raw byte, for [`Engine::predict_u8`] (1 KiB).
    bytes: ByteTable,
}

impl<'m, 'w, const CHUNK: usize> Engine<'m, 'w, CHUNK> {
    /// Binds a model to a workspace; fails if the workspace is too small for `CHUNK`.
    pub fn new(model: &'m Model<'m>, workspace: &'w mut [f32]) -> Result<Self, InferenceError> {
        const { assert!(CHUNK > 0, "CHUNK must be at least 1") };
        let needed = model.workspace_len(CHUNK);
        if workspace.len() < needed {
            return Err(InferenceError::WorkspaceTooSmall {
                needed,
                provided: workspace.len(),
            });
        }
        let (scale, offset) = model.input_normalization();
        Ok(Self {
            model,
            workspace,
            bytes: ByteTable::new(scale, offset),
        })
    }

    /// The model this engine runs.
    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    /// Predicts from f32 inputs (already normalised), `model.input_len()` values in
    /// channel-major (C, H, W) order. `rng` is only read in [`Mode::MonteCarlo`]. An
    /// early-exit model runs every block and answers with its last exit.
    pub fn predict<const K: usize>(
        &mut self,
        input: &[f32],
        mode: Mode,
        rng: &mut impl RngCore,
    ) -> Result<Prediction<K>, InferenceError> {
        if self.model.is_graph() {
            let p = run_graph::<_, K, CHUNK>(
                self.model,
                self.workspace,
                input,
                mode,
                Halting::All,
                rng,
            )?;
            return Ok(p.prediction);
        }
        run::<_, K, CHUNK>(self.model, self.workspace, input, mode, rng)
    }

    /// Runs an early-exit model block by block from f32 inputs and stops as `halting` allows
    /// (see [`Halting`]). With a policy that can stop early, every Monte Carlo sample must fit
    /// in one pass (`samples <= CHUNK`), so that each exit sees the whole posterior
    /// predictive; [`Halting::All`] has no such limit.
    pub fn predict_early_exit<const K: usize>(
        &mut self,
        input: &[f32],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut impl RngCore,
    ) -> Result<ExitPrediction<K>, InferenceError> {
        run_graph::<_, K, CHUNK>(self.model, self.workspace, input, mode, halting, rng)
    }

    /// [`Self::predict_early_exit`] from raw 8-bit inputs.
    pub fn predict_u8_early_exit<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut impl RngCore,
    ) -> Result<ExitPrediction<K>, InferenceError> {
        let input = NormalizedU8::new(raw, &self.bytes);
        run_graph::<_, K, CHUNK>(self.model, self.workspace, &input, mode, halting, rng)
    }

    /// Predicts from raw 8-bit inputs (e.g. pixels), normalised on the fly with the model's
    /// input scale and offset; no copy of the input is made.
    pub fn predict_u8<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        rng: &mut impl RngCore,
    ) -> Result<Prediction<K>, InferenceError> {
        let input = NormalizedU8::new(raw, &self.bytes);
        if self.model.is_graph() {
            let p = run_graph::<_, K, CHUNK>(
                self.model,
                self.workspace,
                &input,
                mode,
                Halting::All,
                rng,
            )?;
            return Ok(p.prediction);
        }
        run::<_, K, CHUNK>(self.model, self.workspace, &input, mode, rng)
    }
}

/// The input checks every runner makes: length, class capacity `k`, finite values.
pub(crate) fn check_input<X: Input + ?Sized>(
    model: &Model<'_>,
    x: &X,
    k: usize,
) -> Result<(), InferenceError> {
    if x.len() != model.input_len() {
        return Err(InferenceError::InputLength {
            expected: model.input_len(),
            found: x.len(),
        });
    }
    let classes = model.num_classes();
    if classes > k {
        return Err(InferenceError::ClassCapacity {
            classes,
            capacity: k,
        });
    }
    if !x.all_finite() {
        return Err(InferenceError::NonFiniteInput);
    }
    Ok(())
}

/// One prediction: the body of [`Engine::predict`] and [`Engine::predict_u8`].
fn run<X: Input + ?Sized, const K: usize, const CHUNK: usize>(
    model: &Model<'_>,
    workspace: &mut [f32],
    x: &X,
    mode: Mode,
    rng: &mut impl RngCore,
) -> Result<Prediction<K>, InferenceError> {
    check_input(model, x, K)?;
    let classes = model.num_classes();
    let layers = model.layers();
    let width = model.max_width();
    let (stats, rest) = workspace.split_at_mut(2 * width);
    let (stat_mean, stat_std) = stats.split_at_mut(width);
    let (buf_a, rest) = rest.split_at_mut(width * CHUNK);
    let (buf_b, scratch) = rest.split_at_mut(width * CHUNK);
    let mut acc = PredictiveAccumulator::<K>::new(classes);

    // The prefix of deterministic layers (all of them in MeanWeights mode) runs once.
    let stochastic_from = match mode {
        Mode::MeanWeights => None,
        Mode::MonteCarlo { .. } => layers
            .iter()
            .position(|l| l.posterior() == Posterior::Gaussian),
    };
    let prefix_end = stochastic_from.unwrap_or(layers.len());
    let (mut cur, mut next) = (buf_a, buf_b);
    if prefix_end > 0 {
        forward_mean(&layers[0], x, cur);
        for layer in &layers[1..prefix_end] {
            forward_mean(layer, &cur[..layer.inputs()], next);
            core::mem::swap(&mut cur, &mut next);
        }
    }
    let (Some(first), Mode::MonteCarlo { samples }) = (stochastic_from, mode) else {
        // Mean weights, or a model without any Gaussian layer: every sample is identical.
        if !acc.add_logits(&cur[..classes]) {
            return Err(InferenceError::NonFiniteLogits);
        }
        return Ok(acc.finish());
    };

    // The first Gaussian layer sees a deterministic input: its pre-activation moments are
    // computed once and only the noise is drawn per sample.
    let stochastic = &layers[first];
    let units = stochastic.outputs();
    if first == 0 {
        forward_moments(stochastic, x, stat_mean, stat_std);
    } else {
        forward_moments(stochastic, &cur[..stochastic.inputs()], stat_mean, stat_std);
    }

    let total = samples.get() as usize;
    let mut rngs: [Xoshiro128PlusPlus; CHUNK] =
        core::array::from_fn(|_| Xoshiro128PlusPlus::from_seed([0x5a; 16]));
    let mut done = 0;
    while done < total {
        let s = CHUNK.min(total - done);
        let rngs = &mut rngs[..s];
        for r in rngs.iter_mut() {
            *r = Xoshiro128PlusPlus::seed_from_u64(rng.next_u64());
        }
        sample_from_moments(
            stochastic,
            &stat_mean[..units],
            &stat_std[..units],
            rngs,
            &mut cur[..units * s],
        );
        for layer in &layers[first + 1..] {
            forward_samples::<CHUNK>(layer, &cur[..layer.inputs() * s], rngs, next, scratch);
            core::mem::swap(&mut cur, &mut next);
        }
        let mut logits = [0.0f32; K];
        for m in 0..s {
            for (k, z) in logits[..classes].iter_mut().enumerate() {
                *z = cur[k * s + m];
            }
            if !acc.add_logits(&logits[..classes]) {
                return Err(InferenceError::NonFiniteLogits);
            }
        }
        done += s;
    }
    Ok(acc.finish())
}
