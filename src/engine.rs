//! The inference engine: runs a validated [`Model`] on one input in a caller-provided
//! workspace, either with the posterior mean weights or as a Monte Carlo posterior predictive.

use core::num::NonZeroU16;

use rand_core::RngCore;

use crate::early_exit::{ExitPrediction, Halting};
use crate::error::InferenceError;
use crate::input::{ByteTable, NormalizedU8};
use crate::model::Model;
use crate::plan::Plan;
use crate::predictive::Prediction;
use crate::runner::run;

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
/// ([`Plan::workspace_len`] of `Plan::new(model, CHUNK)`, f32 words, plus `CHUNK * 24` bytes
/// of stack).
///
/// Results depend only on the model, the input, the mode and the generator's state, never on
/// `CHUNK`: sample `m` draws its noise from its own Xoshiro128++ stream, seeded by the `m`-th
/// `u64` of the caller's generator. The generator must be `Clone`: an early-exit policy that
/// reads the exits replays the seeds from a copy when the samples do not fit one chunk.
pub struct Engine<'m, 'w, const CHUNK: usize> {
    model: &'m Model<'m>,
    plan: Plan,
    workspace: &'w mut [f32],
    /// Normalised value of every raw byte, for [`Engine::predict_u8`] (1 KiB).
    bytes: ByteTable,
}

impl<'m, 'w, const CHUNK: usize> Engine<'m, 'w, CHUNK> {
    /// Binds a model to a workspace; fails if the workspace is too small for `CHUNK`.
    pub fn new(model: &'m Model<'m>, workspace: &'w mut [f32]) -> Result<Self, InferenceError> {
        const { assert!(CHUNK > 0, "CHUNK must be at least 1") };
        let plan = Plan::new(model, CHUNK);
        let needed = plan.workspace_len();
        if workspace.len() < needed {
            return Err(InferenceError::WorkspaceTooSmall {
                needed,
                provided: workspace.len(),
            });
        }
        let (scale, offset) = model.input_normalization();
        Ok(Self {
            model,
            plan,
            workspace,
            bytes: ByteTable::new(scale, offset),
        })
    }

    /// The model this engine runs.
    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    /// The workspace plan (layout and size) the engine runs with.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Predicts from f32 inputs (already normalised), `model.input_len()` values in
    /// channel-major (C, H, W) order. `rng` is only read in [`Mode::MonteCarlo`]. An
    /// early-exit model runs every block and answers with its last exit.
    pub fn predict<const K: usize>(
        &mut self,
        input: &[f32],
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<Prediction<K>, InferenceError> {
        run::<_, _, K, CHUNK>(
            self.model,
            &self.plan,
            self.workspace,
            input,
            mode,
            Halting::All,
            rng,
        )
        .map(|p| p.prediction)
    }

    /// Predicts from raw 8-bit inputs (e.g. pixels), normalised on the fly with the model's
    /// input scale and offset; no copy of the input is made.
    pub fn predict_u8<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<Prediction<K>, InferenceError> {
        let input = NormalizedU8::new(raw, &self.bytes);
        run::<_, _, K, CHUNK>(
            self.model,
            &self.plan,
            self.workspace,
            &input,
            mode,
            Halting::All,
            rng,
        )
        .map(|p| p.prediction)
    }

    /// Runs an early-exit model block by block from f32 inputs and stops as `halting` allows
    /// (see [`Halting`]). Any number of Monte Carlo samples works with any `CHUNK`: when a
    /// policy that reads the exits (the joint mode, a threshold) has more samples than one
    /// chunk holds, each exit is reached by a sweep over the chunks that regenerates their
    /// paths from the input and replayed seeds, so the workspace stays that of one chunk and
    /// the answer is bit-identical to a single pass; the blocks before the deepest exit then
    /// run once per exit reached. [`ExitPrediction::macs`] counts one path.
    pub fn predict_early_exit<const K: usize>(
        &mut self,
        input: &[f32],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<ExitPrediction<K>, InferenceError> {
        if self.model.exit_count() == 0 {
            return Err(InferenceError::NotEarlyExit);
        }
        run::<_, _, K, CHUNK>(
            self.model,
            &self.plan,
            self.workspace,
            input,
            mode,
            halting,
            rng,
        )
    }

    /// [`Self::predict_early_exit`] from raw 8-bit inputs.
    pub fn predict_u8_early_exit<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<ExitPrediction<K>, InferenceError> {
        if self.model.exit_count() == 0 {
            return Err(InferenceError::NotEarlyExit);
        }
        let input = NormalizedU8::new(raw, &self.bytes);
        run::<_, _, K, CHUNK>(
            self.model,
            &self.plan,
            self.workspace,
            &input,
            mode,
            halting,
            rng,
        )
    }
}
