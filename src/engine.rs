//! The inference engine: runs a validated [`Model`] on one input in a caller-provided
//! workspace, either with the posterior mean weights or as a Monte Carlo posterior predictive.

use core::num::NonZeroU16;

use rand_core::RngCore;

use crate::early_exit::{ExitPrediction, Halting, QExitPrediction};
use crate::error::InferenceError;
use crate::fixed::QPrediction;
use crate::input::{ChannelNormalized, NormalizedU8};
use crate::numeric::seal::Reads;
use crate::numeric::{FixedPoint, Numeric, F32};
use crate::plan::Plan;
use crate::predictive::Prediction;
use crate::runner::{features, run_exits, run_plain, Outcome};

/// How to turn the weight posterior into a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    /// One pass with the posterior means θ (the "test network" of sparse variational dropout;
    /// with MC dropout layers, each input times its keep probability). Mutual information is 0
    /// and the expected entropy equals the predictive entropy.
    MeanWeights,
    /// Average the softmax over `samples` draws of the weights (local reparameterization) and
    /// of the dropout masks of Bernoulli layers (each input kept with probability `1 - p`,
    /// one `u32` draw per input and sample; dropped inputs add nothing).
    MonteCarlo {
        /// Number of samples M.
        samples: NonZeroU16,
    },
    /// Moment propagation: one deterministic pass that carries every unit's mean and
    /// variance (GUIDE section 2; the approximations are listed in the `kernels::moments`
    /// module's documentation), then the probit approximation of the expected softmax of the
    /// Gaussian logits, `softmax(m / sqrt(1 + π v / 8))`. One pass, no noise draws; the
    /// result counts as one sample, so its mutual information is 0 (use
    /// [`Mode::MomentsThenSample`] for it). Needs a `CHUNK` of at least 2 (a unit's mean and
    /// variance take the place of two samples); f32 models only so far.
    Moments,
    /// Moment propagation to the logits, then `samples` draws of the logits alone from their
    /// Gaussians (independent per class): the predictive, expected entropy and mutual
    /// information of those draws, for a few normal draws per class and sample instead of a
    /// network pass. The draws come from one stream seeded by one `u64` of the caller's
    /// generator.
    MomentsThenSample {
        /// Logit draws M.
        samples: NonZeroU16,
    },
}

/// Runs a model in a borrowed workspace, in any number format `N` ([`F32`] by default,
/// [`crate::numeric::Q8`] or [`crate::numeric::Q16`] for fixed-point files): one engine and
/// one runner for every model family and format. `CHUNK` is how many Monte Carlo samples share
/// one pass over the weight tables: more is faster and needs more RAM
/// ([`Plan::workspace_len`] of `Plan::new(&model, CHUNK)` words: f32 words for an f32 model,
/// u64 words for fixed point, plus about `CHUNK * 24` bytes of stack).
///
/// Results depend only on the model, the input, the mode and the generator's state, never on
/// `CHUNK`: sample `m` draws its noise from its own Xoshiro128++ stream, seeded by the `m`-th
/// `u64` of the caller's generator. The generator must be `Clone`: an early-exit policy that
/// reads the exits replays the seeds from a copy when the samples do not fit one chunk.
///
/// ```
/// use core::num::NonZeroU16;
/// use tinybayes::numeric::Q8;
/// use tinybayes::rand_core::SeedableRng;
/// use tinybayes::{Engine, Mode, Plan, QModel, QPrediction};
/// # let spec = tinybayes::writer::synthetic::mlp(7, &[16, 8, 3], 0.5);
/// # let raw_inputs: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 * 60; 16]).collect();
/// # let refs: Vec<&[u8]> = raw_inputs.iter().map(|v| v.as_slice()).collect();
/// # let q = tinybayes::fixed::quantize::quantize(&spec, tinybayes::format::Precision::Q8, &refs, Default::default()).unwrap();
/// # let buffer = q.to_buffer().unwrap();
/// let model = QModel::from_bytes(buffer.as_bytes())?;
/// let mut workspace = vec![0u64; Plan::new(&model, 8).workspace_len()];
/// let mut engine = Engine::<8, Q8>::new(&model, &mut workspace)?;
/// let mut rng = tinybayes::rand_xoshiro::Xoshiro128PlusPlus::seed_from_u64(1);
/// let samples = NonZeroU16::new(32).unwrap();
/// let p: QPrediction<3> = engine.predict_u8(&[128u8; 16], Mode::MonteCarlo { samples }, &mut rng)?;
/// assert_eq!(p.samples, 32);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine<'m, 'w, const CHUNK: usize, N: Numeric = F32> {
    model: &'m N::Model<'m>,
    plan: Plan,
    workspace: &'w mut [N::Word],
    /// f32: the normalised value of every raw byte, for [`Engine::predict_u8`] (1 KiB).
    bytes: N::ByteTable,
}

impl<'m, 'w, const CHUNK: usize, N: Numeric> Engine<'m, 'w, CHUNK, N> {
    /// Binds a model to a workspace; fails if the workspace is too small for `CHUNK` or the
    /// model is of another format than `N`.
    pub fn new(
        model: &'m N::Model<'m>,
        workspace: &'w mut [N::Word],
    ) -> Result<Self, InferenceError> {
        const { assert!(CHUNK > 0, "CHUNK must be at least 1") };
        N::check_model(model)?;
        let plan = Plan::build::<N>(model, CHUNK);
        let needed = plan.workspace_len();
        if workspace.len() < needed {
            return Err(InferenceError::WorkspaceTooSmall {
                needed,
                provided: workspace.len(),
            });
        }
        Ok(Self {
            model,
            plan,
            workspace,
            bytes: N::byte_table(model),
        })
    }

    /// The model this engine runs.
    pub fn model(&self) -> &'m N::Model<'m> {
        self.model
    }

    /// The workspace plan (layout and size) the engine runs with.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The engine's parts for one run, and the raw-byte table beside them (so that an input
    /// may borrow the table while the run borrows the workspace).
    fn parts(&mut self) -> (Job<'_, 'm, N>, &N::ByteTable) {
        let job = Job {
            model: self.model,
            plan: &self.plan,
            workspace: self.workspace,
        };
        (job, &self.bytes)
    }
}

/// What one run works on: the model, its plan and the workspace.
struct Job<'a, 'm, N: Numeric> {
    model: &'a N::Model<'m>,
    plan: &'a Plan,
    workspace: &'a mut [N::Word],
}

impl<N: Numeric> Job<'_, '_, N> {
    /// One prediction: a plain network through its one exit, an early-exit network through
    /// every block to its last exit (the policy's code is not needed for that).
    fn predict<X, const K: usize, const CHUNK: usize>(
        self,
        x: &X,
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<N::Prediction<K>, InferenceError>
    where
        N: Reads<X>,
        X: ?Sized,
    {
        run_plain::<N, X, _, K, CHUNK>(self.model, self.plan, self.workspace, x, mode, rng)
    }

    /// An early-exit network's answer with its depth, MACs and every exit's summary
    /// (`NotEarlyExit` for a plain network).
    fn exits<X, const K: usize, const CHUNK: usize>(
        self,
        x: &X,
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<Outcome<N, K>, InferenceError>
    where
        N: Reads<X>,
        X: ?Sized,
    {
        run_exits::<N, X, _, K, CHUNK>(self.model, self.plan, self.workspace, x, mode, halting, rng)
    }
}

impl<const CHUNK: usize> Engine<'_, '_, CHUNK, F32> {
    /// The penultimate features of an input (already normalised, as [`Self::predict`] takes
    /// it): the activations that a plain network's last layer reads, under the posterior
    /// mean weights, in the engine's workspace. What [`crate::adapt::LastLayer::update`]
    /// learns from. `UnsupportedLayout` for an early-exit network.
    pub fn features(&mut self, input: &[f32]) -> Result<&[f32], InferenceError> {
        let (job, _) = self.parts();
        features::<F32, _>(job.model, job.plan, job.workspace, input)
    }

    /// [`Self::features`] of raw f32 inputs, normalised as [`Self::predict_raw`] does.
    pub fn features_raw(&mut self, raw: &[f32]) -> Result<&[f32], InferenceError> {
        let model = self.model;
        let (pairs, plane) = model.norm_pairs();
        let (job, _) = self.parts();
        let x = ChannelNormalized::new(raw, pairs, plane);
        features::<F32, _>(job.model, job.plan, job.workspace, &x)
    }

    /// [`Self::features`] of raw 8-bit inputs, normalised as [`Self::predict_u8`] does.
    pub fn features_u8(&mut self, raw: &[u8]) -> Result<&[f32], InferenceError> {
        let model = self.model;
        let (job, bytes) = self.parts();
        if model.has_channel_norm() {
            let (pairs, plane) = model.norm_pairs();
            let x = ChannelNormalized::new(raw, pairs, plane);
            features::<F32, _>(job.model, job.plan, job.workspace, &x)
        } else {
            let x = NormalizedU8::new(raw, bytes);
            features::<F32, _>(job.model, job.plan, job.workspace, &x)
        }
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
        let (job, _) = self.parts();
        job.predict::<_, K, CHUNK>(input, mode, rng)
    }

    /// Predicts from raw 8-bit inputs (e.g. pixels), normalised on the fly with the model's
    /// input scale and offset, per channel when the file has a per-channel table
    /// ([`Model::channel_norm`](crate::Model::channel_norm)); no copy of the input is made.
    /// A model with one pair for every channel reads each byte through a 256-entry table,
    /// one with a per-channel table computes `p * scale_c + offset_c`: the same bits as
    /// [`Self::predict`] on the normalised values either way.
    pub fn predict_u8<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<Prediction<K>, InferenceError> {
        let model = self.model;
        let (job, bytes) = self.parts();
        if model.has_channel_norm() {
            let (pairs, plane) = model.norm_pairs();
            job.predict::<_, K, CHUNK>(&ChannelNormalized::new(raw, pairs, plane), mode, rng)
        } else {
            job.predict::<_, K, CHUNK>(&NormalizedU8::new(raw, bytes), mode, rng)
        }
    }

    /// Predicts from raw f32 inputs, in the units of the model's training data (a sensor
    /// window's readings, say), `model.input_len()` values in channel-major (C, H, W) order:
    /// each value is normalised as it is read with its channel's stored pair,
    /// `raw * scale_c + offset_c` ([`Model::channel_norm`](crate::Model::channel_norm)), with
    /// no copy of the input. The result has the bits of [`Self::predict`] on the values
    /// normalised that way, which is what `predict` takes ("already normalised"). Non-finite
    /// normalised values give `NonFiniteInput`.
    pub fn predict_raw<const K: usize>(
        &mut self,
        raw: &[f32],
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<Prediction<K>, InferenceError> {
        let model = self.model;
        let (pairs, plane) = model.norm_pairs();
        let (job, _) = self.parts();
        job.predict::<_, K, CHUNK>(&ChannelNormalized::new(raw, pairs, plane), mode, rng)
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
        let (job, _) = self.parts();
        job.exits::<_, K, CHUNK>(input, mode, halting, rng)
            .map(|o| exit_prediction(o, |p| p))
    }

    /// [`Self::predict_early_exit`] from raw 8-bit inputs.
    pub fn predict_u8_early_exit<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<ExitPrediction<K>, InferenceError> {
        let model = self.model;
        let (job, bytes) = self.parts();
        let outcome = if model.has_channel_norm() {
            let (pairs, plane) = model.norm_pairs();
            let input = ChannelNormalized::new(raw, pairs, plane);
            job.exits::<_, K, CHUNK>(&input, mode, halting, rng)
        } else {
            job.exits::<_, K, CHUNK>(&NormalizedU8::new(raw, bytes), mode, halting, rng)
        };
        outcome.map(|o| exit_prediction(o, |p| p))
    }

    /// [`Self::predict_early_exit`] from raw f32 inputs, normalised per channel as they are
    /// read (see [`Self::predict_raw`]).
    pub fn predict_raw_early_exit<const K: usize>(
        &mut self,
        raw: &[f32],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<ExitPrediction<K>, InferenceError> {
        let model = self.model;
        let (pairs, plane) = model.norm_pairs();
        let (job, _) = self.parts();
        job.exits::<_, K, CHUNK>(
            &ChannelNormalized::new(raw, pairs, plane),
            mode,
            halting,
            rng,
        )
        .map(|o| exit_prediction(o, |p| p))
    }
}

/// The public answer of a run, its prediction converted by `into`.
fn exit_prediction<N: Numeric, P, const K: usize>(
    o: Outcome<N, K>,
    into: impl FnOnce(N::Prediction<K>) -> P,
) -> ExitPrediction<K, P, N::Value> {
    ExitPrediction {
        prediction: into(o.prediction),
        exit: o.exit,
        depth: o.depth,
        macs: o.macs,
        exits: o.exits,
    }
}

impl<const CHUNK: usize, N: Numeric + FixedPoint> Engine<'_, '_, CHUNK, N> {
    /// Predicts from raw 8-bit inputs (`model.input_len()` values, channel-major), which the
    /// first layer reads directly; integer arithmetic only. `rng` is only read in
    /// [`Mode::MonteCarlo`]. A model of signed codes
    /// ([`QModel::input_coding`](crate::QModel::input_coding)) gives `WrongInputSign`: use
    /// [`Self::predict_i8`].
    pub fn predict_u8<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<QPrediction<K>, InferenceError> {
        let (job, _) = self.parts();
        job.predict::<_, K, CHUNK>(raw, mode, rng).map(N::into_q)
    }

    /// Predicts from signed 8-bit codes (`model.input_len()` values, channel-major), for a
    /// model that reads them ([`InputCoding::Signed`](crate::format::InputCoding)): code `q`
    /// stands for the raw value `q * step` of a sensor whose readings are signed (an
    /// accelerometer's axes), with the file's per-channel scales folded into the first layer;
    /// integer arithmetic only. [`InputCoding::signed_code`](crate::format::InputCoding::signed_code)
    /// turns raw values into codes. A model of unsigned bytes gives `WrongInputSign`.
    pub fn predict_i8<const K: usize>(
        &mut self,
        codes: &[i8],
        mode: Mode,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<QPrediction<K>, InferenceError> {
        let (job, _) = self.parts();
        job.predict::<_, K, CHUNK>(codes, mode, rng).map(N::into_q)
    }

    /// Runs a fixed-point early-exit model block by block from raw 8-bit inputs and stops as
    /// `halting` allows, as [`Engine::predict_early_exit`] does for f32 models; the policy
    /// decides in [`crate::UQ16`] (integer only: a prior or threshold given as `f32` in
    /// `halting` is converted once per prediction, the model's stored prior not at all).
    pub fn predict_u8_early_exit<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<QExitPrediction<K>, InferenceError> {
        let (job, _) = self.parts();
        job.exits::<_, K, CHUNK>(raw, mode, halting, rng)
            .map(|o| exit_prediction(o, N::into_q))
    }

    /// [`Self::predict_u8_early_exit`] from signed 8-bit codes (see [`Self::predict_i8`]).
    pub fn predict_i8_early_exit<const K: usize>(
        &mut self,
        codes: &[i8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut (impl RngCore + Clone),
    ) -> Result<QExitPrediction<K>, InferenceError> {
        let (job, _) = self.parts();
        job.exits::<_, K, CHUNK>(codes, mode, halting, rng)
            .map(|o| exit_prediction(o, N::into_q))
    }
}
