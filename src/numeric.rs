//! Number formats: one sealed trait, [`Numeric`], implemented by [`F32`], [`Q8`] and [`Q16`],
//! so that one runner (the crate's `runner` module) and one [`crate::Engine`] serve all three.
//!
//! Each format fixes the types a prediction flows through and the kernels that compute them;
//! the control flow (the deterministic prefix, the first Gaussian layer's moments once, the
//! chunks of samples each seeded from the caller's generator, the predictive, the exits)
//! exists once, in the runner.
//!
//! | | [`F32`] | [`Q8`] | [`Q16`] |
//! |---|---|---|---|
//! | model | [`crate::Model`] | [`crate::QModel`] (q8 file) | [`crate::QModel`] (q16 file) |
//! | weight θ | f32 | i8 | i16 |
//! | activation | f32 | i32 word (`a^2 >> 1` high, `a` low) | i32 |
//! | accumulator | f32 | i32 | i64 |
//! | moment (first Gaussian layer) | f32 | i64 | i64 |
//! | logit | f32 | Q16 in i32 | Q16 in i32 |
//! | workspace word | f32 | u64 | u64 |
//! | prediction | [`crate::Prediction`] | [`crate::QPrediction`] | [`crate::QPrediction`] |
//! | per-sample noise stream | Xoshiro128++ + ziggurat | Xoshiro128++ + Q8 table | Xoshiro128++ + Q8 table |
//! | layers | every kind, early exit | every kind, early exit | every kind, early exit |
//! | halting decides in | f32 | [`UQ16`] (integers) | [`UQ16`] (integers) |
//!
//! The trait is sealed: its kernels are the crate's, and a new format is added here.

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;

use crate::early_exit::{ExitSummary, HaltValue};
use crate::error::InferenceError;
use crate::fixed::graph;
use crate::fixed::kernels::{
    draw_from_moments, draw_noise, input_words, mean_layer, moments_layer, narrow_moments,
    sampled_layer, Words,
};
use crate::fixed::noise::NormalQ8;
use crate::fixed::predictive::QAccumulator;
use crate::fixed::{QLayer, QModel, QPrediction, UQ16};
use crate::format::{Activation, Posterior, Precision, Storage};
use crate::input::Input;
use crate::kernels::graph::{global_average_pool, residual_add};
use crate::kernels::{
    forward_dropout, forward_mean, forward_moments, forward_samples, moments, sample_from_moments,
    scratch_len,
};
use crate::model::{Layer, Model, Operation};
use crate::predictive::{Prediction, PredictiveAccumulator};

/// What the runner needs to know of a layer, in any format.
pub trait LayerView {
    /// What the layer computes.
    fn operation(&self) -> Operation;
    /// Number of inputs.
    fn inputs(&self) -> usize;
    /// Number of output units.
    fn outputs(&self) -> usize;
    /// The non-linearity.
    fn activation(&self) -> Activation;
    /// The posterior over the weights.
    fn posterior(&self) -> Posterior;
    /// Multiply-accumulates of one mean-weights pass.
    fn macs(&self) -> usize;
    /// Weights of the unpruned layer.
    fn dense_weights(&self) -> usize;
    /// Whether a later residual addition reads this layer's output.
    fn is_residual_source(&self) -> bool;
}

impl LayerView for Layer<'_> {
    fn operation(&self) -> Operation {
        Layer::operation(self)
    }
    fn inputs(&self) -> usize {
        Layer::inputs(self)
    }
    fn outputs(&self) -> usize {
        Layer::outputs(self)
    }
    fn activation(&self) -> Activation {
        Layer::activation(self)
    }
    fn posterior(&self) -> Posterior {
        Layer::posterior(self)
    }
    fn macs(&self) -> usize {
        Layer::macs(self)
    }
    fn dense_weights(&self) -> usize {
        Layer::dense_weights(self)
    }
    fn is_residual_source(&self) -> bool {
        Layer::is_residual_source(self)
    }
}

impl LayerView for QLayer<'_> {
    fn operation(&self) -> Operation {
        QLayer::operation(self)
    }
    fn inputs(&self) -> usize {
        QLayer::inputs(self)
    }
    fn outputs(&self) -> usize {
        QLayer::outputs(self)
    }
    fn activation(&self) -> Activation {
        QLayer::activation(self)
    }
    fn posterior(&self) -> Posterior {
        QLayer::posterior(self)
    }
    fn macs(&self) -> usize {
        QLayer::macs(self)
    }
    fn dense_weights(&self) -> usize {
        QLayer::dense_weights(self)
    }
    fn is_residual_source(&self) -> bool {
        QLayer::is_residual_source(self)
    }
}

/// A number format the engine runs: [`F32`], [`Q8`] or [`Q16`] (sealed; see the module
/// documentation for what each one fixes).
pub trait Numeric: seal::Kernels + seal::Reads<[<Self as seal::Kernels>::Act]> {}

/// 32-bit floating point: every layer kind, early exit, every halting policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct F32;
/// 8-bit fixed point (q8 model files), integer only: every layer kind, early exit, every
/// halting policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q8;
/// 16-bit fixed point (q16 model files), integer only: every layer kind, early exit, every
/// halting policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q16;

impl Numeric for F32 {}
impl Numeric for Q8 {}
impl Numeric for Q16 {}

/// The fixed-point formats, [`Q8`] and [`Q16`] (sealed): integer only, raw 8-bit inputs
/// (unsigned bytes or signed codes, as the file says),
/// [`QModel`] files, u64 workspace words, [`QPrediction`] answers.
pub trait FixedPoint:
    Numeric
    + seal::Reads<[u8]>
    + seal::Reads<[i8]>
    + for<'a> seal::Kernels<Model<'a> = QModel<'a>, Word = u64, Value = UQ16>
{
    /// The prediction as [`QPrediction`] (it is one; this names it in generic code).
    #[doc(hidden)]
    fn into_q<const K: usize>(p: Self::Prediction<K>) -> QPrediction<K>;
}
impl FixedPoint for Q8 {
    fn into_q<const K: usize>(p: QPrediction<K>) -> QPrediction<K> {
        p
    }
}
impl FixedPoint for Q16 {
    fn into_q<const K: usize>(p: QPrediction<K>) -> QPrediction<K> {
        p
    }
}

pub(crate) mod seal {
    use super::*;

    /// The types and kernels of one format (sealed: nameable inside the crate only).
    pub trait Kernels: Sized + 'static {
        /// The validated model this format runs.
        type Model<'a>;
        /// One of its layers.
        type Layer<'a>: LayerView;
        /// Stored posterior mean θ.
        type Weight: Copy;
        /// Activation word between layers.
        type Act: Copy + Default + bytemuck::Pod;
        /// A row's mean accumulator.
        type Accumulator: Copy;
        /// The first Gaussian layer's pre-activation moments.
        type Moment: Copy + Default + bytemuck::Pod;
        /// Kernel scratch word.
        type Scratch: Copy + Default + bytemuck::Pod;
        /// Workspace word the caller provides.
        type Word: Copy + Default + bytemuck::Pod;
        /// One sample's noise stream.
        type Stream: Clone;
        /// What the first Gaussian layer's moments leave for the draws and the next layer.
        type MomentsState: Copy;
        /// The per-input table of the raw-byte entry point (f32: normalised values).
        type ByteTable;
        /// Running sums of the predictive.
        type Predictive<const K: usize>;
        /// The answer for one input.
        type Prediction<const K: usize>;
        /// The number type halting policies decide in (f32, or [`UQ16`] for fixed point).
        type Value: HaltValue;

        /// The model's layers.
        fn layers<'a>(model: &'a Self::Model<'_>) -> &'a [Self::Layer<'a>];
        /// Classes predicted.
        fn classes(model: &Self::Model<'_>) -> usize;
        /// Exit heads (0 for a plain network).
        fn exit_count(model: &Self::Model<'_>) -> usize;
        /// The depth prior stored with the exits, into `out`.
        fn exit_priors(model: &Self::Model<'_>, out: &mut [Self::Value]);
        /// Raw input values.
        fn input_len(model: &Self::Model<'_>) -> usize;
        /// Whether a model given to the engine is of this format.
        fn check_model(model: &Self::Model<'_>) -> Result<(), InferenceError>;
        /// The byte table of the raw-byte entry point.
        fn byte_table(model: &Self::Model<'_>) -> Self::ByteTable;
        /// Kernel scratch words of a layer for `chunk` samples.
        fn scratch_len(layer: &Self::Layer<'_>, chunk: usize, first_gaussian: bool) -> usize;

        /// A stream seeded from one `u64` of the caller's generator.
        fn stream(seed: u64) -> Self::Stream;
        /// Draws `s = streams.len()` samples of the first Gaussian layer from its moments
        /// (`out[j * s + m]`).
        fn draw_first(
            layer: &Self::Layer<'_>,
            moments: (&[Self::Moment], &[Self::Moment]),
            state: &Self::MomentsState,
            streams: &mut [Self::Stream],
            out: &mut [Self::Act],
        );
        /// A later layer for a chunk of samples (a Bernoulli layer masks its inputs first,
        /// [`crate::kernels::drop_inputs`]).
        fn sampled<const CHUNK: usize>(
            layer: &Self::Layer<'_>,
            x: &[Self::Act],
            streams: &mut [Self::Stream],
            out: &mut [Self::Act],
            scratch: &mut [Self::Scratch],
        );
        /// A first stochastic layer with a Bernoulli mask for a chunk of samples, from its
        /// deterministic input `held` (one value per input, masked per sample).
        fn sampled_held<const CHUNK: usize>(
            layer: &Self::Layer<'_>,
            held: &[Self::Act],
            streams: &mut [Self::Stream],
            out: &mut [Self::Act],
            scratch: &mut [Self::Scratch],
        );
        /// `cur += skip` (rescaled as the layer says), then the activation.
        fn residual_add(layer: &Self::Layer<'_>, cur: &mut [Self::Act], skip: &[Self::Act]);
        /// Global average pool of a chunk's `map` for an exit head.
        fn pool_exit(map: [usize; 3], x: &[Self::Act], s: usize, out: &mut [Self::Act]);

        /// An empty predictive over `classes` classes.
        fn predictive<const K: usize>(classes: usize) -> Self::Predictive<K>;
        /// Adds one sample's logits; false if they cannot be used (not finite).
        fn add_logits<const K: usize>(acc: &mut Self::Predictive<K>, logits: &[Self::Act]) -> bool;
        /// The predictive of the samples added.
        fn finish<const K: usize>(acc: Self::Predictive<K>) -> Self::Prediction<K>;
        /// What a halting policy reads of an exit's prediction.
        fn summary<const K: usize>(p: &Self::Prediction<K>) -> ExitSummary<Self::Value>;

        /// Whether the format runs moment propagation ([`crate::Mode::Moments`]); the
        /// `moments_*` kernels below do nothing where it does not.
        const PROPAGATES_MOMENTS: bool = false;
        /// The first Gaussian layer's output moments (`[mean, variance]` per unit, after
        /// its activation) from its pre-activation moments.
        fn moments_first(
            _layer: &Self::Layer<'_>,
            _moments: (&[Self::Moment], &[Self::Moment]),
            _state: &Self::MomentsState,
            _out: &mut [Self::Act],
        ) {
        }
        /// A deterministic input value as a moment pair (variance 0).
        fn moments_certain(_value: Self::Act, _out: &mut [Self::Act]) {}
        /// A later layer (weights, pooling) on moment pairs.
        fn moments_layer(_layer: &Self::Layer<'_>, _x: &[Self::Act], _out: &mut [Self::Act]) {}
        /// A residual addition on moment pairs.
        fn moments_residual(_layer: &Self::Layer<'_>, _cur: &mut [Self::Act], _skip: &[Self::Act]) {
        }
        /// The global average pool of a map of moment pairs.
        fn moments_pool_exit(_map: [usize; 3], _x: &[Self::Act], _out: &mut [Self::Act]) {}
        /// The probit logits of logit moment pairs, into `out` (one per class).
        fn moments_probit(_x: &[Self::Act], _out: &mut [Self::Act]) {}
        /// One draw of the logits from their moment pairs, into `out` (one per class).
        fn moments_draw(_x: &[Self::Act], _stream: &mut Self::Stream, _out: &mut [Self::Act]) {}
    }

    /// The first layer's kernels for an input of type `X`.
    pub trait Reads<X: ?Sized>: Kernels {
        /// Input checks: length, class capacity `k`, finite values.
        fn check_input(model: &Self::Model<'_>, x: &X, k: usize) -> Result<(), InferenceError>;
        /// One input, posterior-mean weights. `spare` is the moments region, free while the
        /// deterministic prefix runs (fixed point sums by-input layers there).
        fn mean(
            layer: &Self::Layer<'_>,
            x: &X,
            out: &mut [Self::Act],
            scratch: &mut [Self::Scratch],
            spare: (&mut [Self::Moment], &mut [Self::Moment]),
        );
        /// One input, Gaussian weights: the pre-activation moments of every unit.
        fn moments(
            layer: &Self::Layer<'_>,
            x: &X,
            moments: (&mut [Self::Moment], &mut [Self::Moment]),
        ) -> Self::MomentsState;
        /// Global average pool of the input itself (an exit head first in the network).
        fn pool_input(map: [usize; 3], x: &X, out: &mut [Self::Act]);
        /// The input as activation values, one per input (the deterministic input of a
        /// first stochastic layer with a Bernoulli mask, kept for every chunk).
        fn hold(x: &X, out: &mut [Self::Act]);
    }
}

use seal::{Kernels, Reads};

/// The input checks every f32 prediction makes: length, class capacity, finite values.
fn check_lengths(
    input_len: usize,
    found: usize,
    classes: usize,
    k: usize,
) -> Result<(), InferenceError> {
    if found != input_len {
        return Err(InferenceError::InputLength {
            expected: input_len,
            found,
        });
    }
    if classes > k {
        return Err(InferenceError::ClassCapacity {
            classes,
            capacity: k,
        });
    }
    Ok(())
}

impl Kernels for F32 {
    type Model<'a> = Model<'a>;
    type Layer<'a> = Layer<'a>;
    type Weight = f32;
    type Act = f32;
    type Accumulator = f32;
    type Moment = f32;
    type Scratch = f32;
    type Word = f32;
    type Stream = Xoshiro128PlusPlus;
    type MomentsState = ();
    type ByteTable = crate::input::ByteTable;
    type Predictive<const K: usize> = PredictiveAccumulator<K>;
    type Prediction<const K: usize> = Prediction<K>;
    type Value = f32;

    fn layers<'a>(model: &'a Model<'_>) -> &'a [Layer<'a>] {
        model.layers()
    }
    fn classes(model: &Model<'_>) -> usize {
        model.num_classes()
    }
    fn exit_count(model: &Model<'_>) -> usize {
        model.exit_count()
    }
    fn exit_priors(model: &Model<'_>, out: &mut [f32]) {
        for (p, prior) in out.iter_mut().zip(model.exit_priors()) {
            *p = prior;
        }
    }
    fn input_len(model: &Model<'_>) -> usize {
        model.input_len()
    }
    fn check_model(_: &Model<'_>) -> Result<(), InferenceError> {
        Ok(())
    }
    fn byte_table(model: &Model<'_>) -> crate::input::ByteTable {
        let (scale, offset) = model.input_normalization();
        crate::input::ByteTable::new(scale, offset)
    }
    fn scratch_len(layer: &Layer<'_>, chunk: usize, first_gaussian: bool) -> usize {
        scratch_len(layer, chunk, first_gaussian)
    }
    fn stream(seed: u64) -> Xoshiro128PlusPlus {
        Xoshiro128PlusPlus::seed_from_u64(seed)
    }
    fn draw_first(
        layer: &Layer<'_>,
        (mean, std): (&[f32], &[f32]),
        _: &(),
        streams: &mut [Xoshiro128PlusPlus],
        out: &mut [f32],
    ) {
        sample_from_moments(layer, mean, std, streams, out);
    }
    fn sampled<const CHUNK: usize>(
        layer: &Layer<'_>,
        x: &[f32],
        streams: &mut [Xoshiro128PlusPlus],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        if layer.posterior() == Posterior::Bernoulli {
            return forward_dropout::<CHUNK>(layer, x, false, streams, out, scratch);
        }
        forward_samples::<CHUNK>(layer, x, streams, out, scratch);
    }
    fn sampled_held<const CHUNK: usize>(
        layer: &Layer<'_>,
        held: &[f32],
        streams: &mut [Xoshiro128PlusPlus],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        forward_dropout::<CHUNK>(layer, held, true, streams, out, scratch);
    }
    fn residual_add(layer: &Layer<'_>, cur: &mut [f32], skip: &[f32]) {
        residual_add(layer.activation(), cur, skip);
    }
    fn pool_exit(map: [usize; 3], x: &[f32], s: usize, out: &mut [f32]) {
        global_average_pool(map, x, s, out);
    }
    fn predictive<const K: usize>(classes: usize) -> PredictiveAccumulator<K> {
        PredictiveAccumulator::new(classes)
    }
    fn add_logits<const K: usize>(acc: &mut PredictiveAccumulator<K>, logits: &[f32]) -> bool {
        acc.add_logits(logits)
    }
    fn finish<const K: usize>(acc: PredictiveAccumulator<K>) -> Prediction<K> {
        acc.finish()
    }
    fn summary<const K: usize>(p: &Prediction<K>) -> ExitSummary {
        ExitSummary {
            class: p.class,
            confidence: p.confidence(),
            predictive_entropy: p.predictive_entropy,
            mutual_information: p.mutual_information,
        }
    }

    const PROPAGATES_MOMENTS: bool = true;
    fn moments_first(layer: &Layer<'_>, (mean, std): (&[f32], &[f32]), _: &(), out: &mut [f32]) {
        moments::from_first(layer.activation(), mean, std, out);
    }
    fn moments_certain(value: f32, out: &mut [f32]) {
        if let Some([m, v]) = out.get_mut(..2) {
            *m = value;
            *v = 0.0;
        }
    }
    fn moments_layer(layer: &Layer<'_>, x: &[f32], out: &mut [f32]) {
        moments::propagate(layer, x, out);
    }
    fn moments_residual(layer: &Layer<'_>, cur: &mut [f32], skip: &[f32]) {
        moments::residual_add(layer.activation(), cur, skip);
    }
    fn moments_pool_exit(map: [usize; 3], x: &[f32], out: &mut [f32]) {
        moments::global_average_pool(map, x, out);
    }
    fn moments_probit(x: &[f32], out: &mut [f32]) {
        moments::probit_logits(x, out);
    }
    fn moments_draw(x: &[f32], stream: &mut Xoshiro128PlusPlus, out: &mut [f32]) {
        for (o, unit) in out.iter_mut().zip(x.chunks_exact(2)) {
            let sd = crate::arch::sqrtf(if unit[1] > 0.0 { unit[1] } else { 0.0 });
            *o = unit[0] + sd * crate::normal::standard_normal(stream);
        }
    }
}

impl<X: Input + ?Sized> Reads<X> for F32 {
    fn check_input(model: &Model<'_>, x: &X, k: usize) -> Result<(), InferenceError> {
        check_lengths(model.input_len(), x.len(), model.num_classes(), k)?;
        if !x.all_finite() {
            return Err(InferenceError::NonFiniteInput);
        }
        Ok(())
    }
    fn mean(layer: &Layer<'_>, x: &X, out: &mut [f32], _: &mut [f32], _: (&mut [f32], &mut [f32])) {
        if layer.posterior() == Posterior::Bernoulli {
            // The mean network: each input times its mask's expectation, the keep
            // probability (the stored weights carry the 1 / q of inverted dropout).
            let factor = layer.keep_probability();
            return forward_mean(layer, &crate::input::Scaled { x, factor }, out);
        }
        forward_mean(layer, x, out);
    }
    fn moments(layer: &Layer<'_>, x: &X, (mean, std): (&mut [f32], &mut [f32])) {
        forward_moments(layer, x, mean, std);
    }
    fn pool_input(map: [usize; 3], x: &X, out: &mut [f32]) {
        global_average_pool(map, x, 1, out);
    }
    fn hold(x: &X, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate().take(x.len()) {
            *o = x.value(i);
        }
    }
}

/// What the fixed-point first Gaussian layer's moments leave: the fractional bits of the
/// narrowed moments.
#[derive(Clone, Copy, Debug)]
pub struct FixedMoments {
    frac_bits: u32,
}

/// The scratch of a fixed-point layer (u64 words): the noise draws of a chunk (i16), the
/// by-input sums of a first layer (two i64 per output), or a Bernoulli layer's masked inputs
/// (i32 words).
fn fixed_scratch_len(layer: &QLayer<'_>, chunk: usize, first_gaussian: bool) -> usize {
    if layer.posterior() == Posterior::Bernoulli {
        // The masked input words, then a copy of the row parameters.
        return (layer.inputs() * chunk + 3 * layer.outputs()).div_ceil(2);
    }
    let eps = if layer.posterior() == Posterior::Gaussian {
        (layer.outputs() * chunk).div_ceil(4)
    } else {
        0
    };
    let by_input = if layer.storage() == Storage::SparseByInput && !first_gaussian {
        2 * layer.outputs()
    } else {
        0
    };
    eps.max(by_input)
}

/// The two i64 halves of a by-input layer's scratch.
fn by_input_scratch(scratch: &mut [u64], outputs: usize) -> (&mut [i64], &mut [i64]) {
    let words: &mut [i64] = bytemuck::cast_slice_mut(scratch);
    let n = outputs.min(words.len() / 2);
    let (a, rest) = words.split_at_mut(n);
    (a, &mut rest[..n])
}

/// A fixed-point Bernoulli layer for a chunk of samples: its input words (`shared`: one per
/// input) masked into the scratch with the integer threshold, then its rows as a
/// deterministic layer's (no noise) with the sampled weights' multiplier. The file's rows are
/// `[mθ·q, mθ, b]`, the mean network's multiplier first (so the mean-weights kernels read
/// them unchanged); a sample runs a copy with the two swapped, in the scratch. Out of line:
/// one copy for every chunk size and format (the Cortex-M0's flash).
#[inline(never)]
fn fixed_dropout(
    layer: &QLayer<'_>,
    x: &[i32],
    shared: bool,
    streams: &mut [NormalQ8],
    out: &mut [i32],
    scratch: &mut [u64],
) {
    let s = streams.len();
    let n = layer.inputs() * s;
    let words: &mut [i32] = bytemuck::cast_slice_mut(scratch);
    let rows = layer.row_params();
    if words.len() < n + rows.len() {
        return;
    }
    let (masked, rest) = words.split_at_mut(n);
    let sampled_rows = &mut rest[..rows.len()];
    for (copy, row) in sampled_rows.chunks_exact_mut(3).zip(rows.chunks_exact(3)) {
        copy.copy_from_slice(&[row[1], row[0], row[2]]);
    }
    let threshold = layer.drop_threshold().unwrap_or(0);
    crate::kernels::drop_inputs(threshold, x, shared, streams, NormalQ8::next_u32, masked);
    let sampled = QLayer {
        params: sampled_rows,
        ..*layer
    };
    sampled_layer(&sampled, masked, s, &[], out);
}

macro_rules! fixed_format {
    ($t:ty, $weight:ty, $acc:ty, $precision:expr) => {
        impl Kernels for $t {
            type Model<'a> = QModel<'a>;
            type Layer<'a> = QLayer<'a>;
            type Weight = $weight;
            type Act = i32;
            type Accumulator = $acc;
            type Moment = i64;
            type Scratch = u64;
            type Word = u64;
            type Stream = NormalQ8;
            type MomentsState = FixedMoments;
            type ByteTable = ();
            type Predictive<const K: usize> = QAccumulator<K>;
            type Prediction<const K: usize> = QPrediction<K>;
            type Value = UQ16;

            fn layers<'a>(model: &'a QModel<'_>) -> &'a [QLayer<'a>] {
                model.layers()
            }
            fn classes(model: &QModel<'_>) -> usize {
                model.num_classes()
            }
            fn exit_count(model: &QModel<'_>) -> usize {
                model.exit_count()
            }
            fn exit_priors(model: &QModel<'_>, out: &mut [UQ16]) {
                for (p, prior) in out.iter_mut().zip(model.exit_priors()) {
                    *p = prior;
                }
            }
            fn input_len(model: &QModel<'_>) -> usize {
                model.input_len()
            }
            fn check_model(model: &QModel<'_>) -> Result<(), InferenceError> {
                if model.precision() == $precision {
                    Ok(())
                } else {
                    Err(InferenceError::WrongFormat {
                        model: model.precision(),
                        engine: $precision,
                    })
                }
            }
            fn byte_table(_: &QModel<'_>) {}
            fn scratch_len(layer: &QLayer<'_>, chunk: usize, first_gaussian: bool) -> usize {
                fixed_scratch_len(layer, chunk, first_gaussian)
            }
            fn stream(seed: u64) -> NormalQ8 {
                NormalQ8::new(Xoshiro128PlusPlus::seed_from_u64(seed))
            }
            fn draw_first(
                layer: &QLayer<'_>,
                (base, scale): (&[i64], &[i64]),
                state: &FixedMoments,
                streams: &mut [NormalQ8],
                out: &mut [i32],
            ) {
                draw_from_moments(layer, (base, scale, state.frac_bits), streams, out);
            }
            fn sampled<const CHUNK: usize>(
                layer: &QLayer<'_>,
                x: &[i32],
                streams: &mut [NormalQ8],
                out: &mut [i32],
                scratch: &mut [u64],
            ) {
                if layer.posterior() == Posterior::Bernoulli {
                    return fixed_dropout(layer, x, false, streams, out, scratch);
                }
                let s = streams.len();
                let eps: &mut [i16] = bytemuck::cast_slice_mut(scratch);
                let units = layer.outputs();
                if layer.posterior() == Posterior::Gaussian {
                    draw_noise(units, streams, &mut eps[..units * s]);
                }
                sampled_layer(layer, x, s, eps, out);
            }
            fn sampled_held<const CHUNK: usize>(
                layer: &QLayer<'_>,
                held: &[i32],
                streams: &mut [NormalQ8],
                out: &mut [i32],
                scratch: &mut [u64],
            ) {
                fixed_dropout(layer, held, true, streams, out, scratch);
            }
            fn residual_add(layer: &QLayer<'_>, cur: &mut [i32], skip: &[i32]) {
                graph::residual_add(layer, cur, skip);
            }
            fn pool_exit(map: [usize; 3], x: &[i32], s: usize, out: &mut [i32]) {
                graph::global_average_pool($precision, map, x, s, out);
            }
            fn predictive<const K: usize>(classes: usize) -> QAccumulator<K> {
                QAccumulator::new(classes)
            }
            fn add_logits<const K: usize>(acc: &mut QAccumulator<K>, logits: &[i32]) -> bool {
                acc.add_logits(logits);
                true
            }
            fn finish<const K: usize>(acc: QAccumulator<K>) -> QPrediction<K> {
                acc.finish()
            }
            fn summary<const K: usize>(p: &QPrediction<K>) -> ExitSummary<UQ16> {
                ExitSummary {
                    class: p.class,
                    confidence: p.confidence(),
                    predictive_entropy: p.predictive_entropy,
                    mutual_information: p.mutual_information,
                }
            }
        }

        impl<X: Words + ?Sized> Reads<X> for $t {
            fn check_input(model: &QModel<'_>, x: &X, k: usize) -> Result<(), InferenceError> {
                let model_signed = matches!(
                    model.input_coding(),
                    crate::format::InputCoding::Signed { .. }
                );
                if X::SIGNED != model_signed {
                    return Err(InferenceError::WrongInputSign { model_signed });
                }
                check_lengths(model.input_len(), x.len(), model.num_classes(), k)
            }
            fn mean(
                layer: &QLayer<'_>,
                x: &X,
                out: &mut [i32],
                scratch: &mut [u64],
                (a, b): (&mut [i64], &mut [i64]),
            ) {
                let n = layer.outputs();
                if layer.storage() != Storage::SparseByInput || (a.len() >= n && b.len() >= n) {
                    mean_layer(layer, x, out, (a, b));
                } else {
                    mean_layer(layer, x, out, by_input_scratch(scratch, n));
                }
            }
            fn moments(
                layer: &QLayer<'_>,
                x: &X,
                (base, scale): (&mut [i64], &mut [i64]),
            ) -> FixedMoments {
                moments_layer(layer, x, base, scale);
                let units = layer.outputs();
                let frac_bits = narrow_moments(layer, &mut base[..units], &mut scale[..units]);
                FixedMoments { frac_bits }
            }
            fn pool_input(map: [usize; 3], x: &X, out: &mut [i32]) {
                graph::global_average_pool($precision, map, x, 1, out);
            }
            fn hold(x: &X, out: &mut [i32]) {
                input_words($precision, x, out);
            }
        }
    };
}

fixed_format!(Q8, i8, i32, Precision::Q8);
fixed_format!(Q16, i16, i64, Precision::Q16);
