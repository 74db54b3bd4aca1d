//! Device simulation on the host: runs the core engine — the same `tinybayes::Engine` and
//! `predict_u8` on raw 8-bit pixels that the firmware runs — over a whole image set, in parallel.
//!
//! Results do not depend on the number of threads: image `i` draws its Monte Carlo noise from
//! its own generator, `Xoshiro128PlusPlus::seed_from_u64(seed.wrapping_add(i))`, and the engine's
//! results do not depend on its `CHUNK` either. Running image `i` on a device with that generator
//! gives the same prediction bit for bit.

use std::num::NonZeroU16;

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use rayon::prelude::*;
use tinybayes::digest::{DigestOutputs, OutputsDigest};
use tinybayes::early_exit::{Halting, QExitPrediction};
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::Precision;
use tinybayes::numeric::FixedPoint;
use tinybayes::{Engine, ExitPrediction, InferenceError, Mode, Model, Prediction};
use tinybayes::{Q16, Q8};

use crate::idx::IdxArray;

/// Monte Carlo samples sharing one pass over the weight tables (the engine's `CHUNK`). A host
/// speed setting only: predictions are the same for every value.
pub const CHUNK: usize = 8;

/// Largest number of Monte Carlo samples the engine accepts (`NonZeroU16`).
pub const MAX_SAMPLES: u32 = u16::MAX as u32;

/// Why a simulation could not run. Each message is one line meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    /// The images do not have the model's input shape (see [`image_fits`]).
    #[error(
        "images are {rows}x{cols} ({values} values) but the model's input is {}x{}x{} ({inputs} values)",
        shape[0],
        shape[1],
        shape[2]
    )]
    InputSize {
        /// Image height.
        rows: usize,
        /// Image width.
        cols: usize,
        /// `rows * cols`.
        values: usize,
        /// The model's input shape, channels x height x width.
        shape: [usize; 3],
        /// `model.input_len()`.
        inputs: usize,
    },
    /// The pixel buffer does not hold a whole number of `rows x cols` images.
    #[error("{len} pixel bytes are not a whole number of {rows}x{cols} images")]
    PartialImage {
        /// Bytes given.
        len: usize,
        /// Image height.
        rows: usize,
        /// Image width.
        cols: usize,
    },
    /// There are no images to run.
    #[error("{}", crate::idx::EMPTY_DATA_SET)]
    Empty,
    /// The engine refused one image (for example, its logits overflowed).
    #[error("image {index}: {error}")]
    Inference {
        /// Index of the image in the set.
        index: usize,
        /// The core's error (in the message, so not also `source()`).
        error: InferenceError,
    },
}

/// A borrowed set of 8-bit grey-scale images, `rows x cols` each, one after the other.
#[derive(Debug, Clone, Copy)]
pub struct Images<'a> {
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// The pixels, image after image, row-major.
    pub pixels: &'a [u8],
}

impl<'a> Images<'a> {
    /// Views a decoded rank-3 IDX array (`[n, rows, cols]`) as images. A rank other than 3 is
    /// read as one flat image per outer index (rows 1, cols = the rest).
    pub fn from_idx(array: &'a IdxArray) -> Self {
        let (rows, cols) = match array.dims.as_slice() {
            [_, r, c] => (*r, *c),
            [_, rest @ ..] => (1, rest.iter().product()),
            [] => (0, 0),
        };
        Images {
            rows,
            cols,
            pixels: &array.data,
        }
    }

    /// Values per image (`rows * cols`).
    pub fn values(&self) -> usize {
        self.rows.saturating_mul(self.cols)
    }

    /// Number of images (0 when an image has no pixels).
    pub fn len(&self) -> usize {
        self.pixels.len().checked_div(self.values()).unwrap_or(0)
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The prediction for one image: the fields of the core's [`Prediction`], heap-allocated.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePrediction {
    /// Mean class probabilities (length = the model's classes); sums to 1.
    pub probabilities: Vec<f32>,
    /// Most probable class (the first on ties).
    pub class: usize,
    /// Predictive entropy (total uncertainty), nats.
    pub predictive_entropy: f32,
    /// Expected entropy (aleatoric uncertainty), nats.
    pub expected_entropy: f32,
    /// Mutual information (epistemic uncertainty), nats.
    pub mutual_information: f32,
}

impl ImagePrediction {
    /// Probability of the predicted class (the top-1 probability).
    pub fn confidence(&self) -> f32 {
        self.probabilities.get(self.class).copied().unwrap_or(0.0)
    }
}

impl<const K: usize> From<Prediction<K>> for ImagePrediction {
    fn from(p: Prediction<K>) -> Self {
        ImagePrediction {
            probabilities: p.probabilities.to_vec(),
            class: p.class,
            predictive_entropy: p.predictive_entropy,
            expected_entropy: p.expected_entropy,
            mutual_information: p.mutual_information,
        }
    }
}

/// The inference mode for a `--samples` count: 0 is the posterior-mean network
/// ([`Mode::MeanWeights`]), 1..=65535 is a Monte Carlo average of that many samples.
/// Larger counts are refused with a one-line message.
pub fn mode_from_samples(samples: u64) -> Result<Mode, String> {
    if samples > u64::from(MAX_SAMPLES) {
        return Err(format!(
            "--samples must be between 0 (mean weights) and {MAX_SAMPLES}, got {samples}"
        ));
    }
    Ok(match NonZeroU16::new(samples as u16) {
        None => Mode::MeanWeights,
        Some(samples) => Mode::MonteCarlo { samples },
    })
}

/// Parses a `--samples` argument (text, so that a bad value gives a one-line error rather than
/// the argument parser's usage message) into a [`Mode`] with [`mode_from_samples`].
pub fn parse_samples(text: &str) -> Result<Mode, String> {
    let value: i128 = text.trim().parse().map_err(|_| {
        format!(
            "--samples must be a whole number from 0 (mean weights) to {MAX_SAMPLES}, got {text:?}"
        )
    })?;
    let value = u64::try_from(value).map_err(|_| {
        format!("--samples must be between 0 (mean weights) and {MAX_SAMPLES}, got {value}")
    })?;
    mode_from_samples(value)
}

/// A short description of a mode for reports: `"mean weights"`, `"Monte Carlo, 32 samples"`,
/// `"moment propagation (probit)"` or `"moment propagation, 32 logit draws"`.
pub fn describe_mode(mode: Mode) -> String {
    match mode {
        Mode::MeanWeights => "mean weights".to_string(),
        Mode::MonteCarlo { samples } => format!("Monte Carlo, {samples} samples"),
        Mode::Moments => "moment propagation (probit)".to_string(),
        Mode::MomentsThenSample { samples } => {
            format!("moment propagation, {samples} logit draws")
        }
    }
}

/// Whether grey-scale images of `rows x cols` (one channel) fit a model input of `shape`
/// (channels x height x width): the same height and width on a one-channel input. A flat input
/// (`1x1xN`, a perceptron's) takes any image of `N` values, and flat images (`rows == 1`: an
/// `[n, 1, N]` IDX file of vectors, which claims no 2-D layout) feed any input of their
/// length. Grey-scale images are one channel: a model of more channels takes only flat ones.
pub fn image_fits(shape: [usize; 3], rows: usize, cols: usize) -> bool {
    let [c, h, w] = shape;
    let values = rows.saturating_mul(cols);
    let inputs = c.saturating_mul(h).saturating_mul(w);
    if (c == 1 && h == 1) || rows == 1 {
        values == inputs
    } else {
        c == 1 && rows == h && cols == w
    }
}

/// Checks that `images` fit the model's input ([`image_fits`], whole images, at least one),
/// with the one-line errors of [`SimulateError`].
pub fn check_images(model: &Model<'_>, images: &Images<'_>) -> Result<(), SimulateError> {
    check_image_set(model.input_shape(), images)
}

/// [`check_images`] against a model input of `shape` (any precision).
pub fn check_image_set(shape: [usize; 3], images: &Images<'_>) -> Result<(), SimulateError> {
    let values = images.values();
    if !image_fits(shape, images.rows, images.cols) {
        return Err(SimulateError::InputSize {
            rows: images.rows,
            cols: images.cols,
            values,
            shape,
            inputs: shape.iter().product(),
        });
    }
    if images.pixels.len() % values != 0 {
        return Err(SimulateError::PartialImage {
            len: images.pixels.len(),
            rows: images.rows,
            cols: images.cols,
        });
    }
    if images.is_empty() {
        return Err(SimulateError::Empty);
    }
    Ok(())
}

/// The one parallel driver of every simulation: runs `predict(workspace, example, rng)` on
/// every example of `per` values of `values`, in parallel over examples (rayon), and returns
/// the results in example order. Example `i` gets the generator
/// `seed_from_u64(seed.wrapping_add(i))`; each worker has its own workspace from
/// `workspace()`. The engine's results do not depend on the thread count.
pub fn for_each_example<E, W, T>(
    values: &[E],
    per: usize,
    seed: u64,
    workspace: impl Fn() -> W + Sync + Send,
    predict: impl Fn(&mut W, &[E], &mut Xoshiro128PlusPlus) -> Result<T, InferenceError> + Sync + Send,
) -> Result<Vec<T>, SimulateError>
where
    E: Sync,
    W: Send,
    T: Send,
{
    if per == 0 || values.is_empty() {
        return Err(SimulateError::Empty);
    }
    // Progress on a terminal only (hidden otherwise, and with -q).
    let bar = crate::ui::image_bar(values.len() / per);
    let results = values
        .par_chunks_exact(per)
        .enumerate()
        .map_init(workspace, |workspace, (index, example)| {
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed.wrapping_add(index as u64));
            let result = predict(workspace, example, &mut rng)
                .map_err(|error| SimulateError::Inference { index, error });
            bar.inc(1);
            result
        })
        .collect();
    bar.finish_and_clear();
    results
}

/// The [`OutputsDigest`] of predictions in order: what `eval` and `predict` print as the
/// outputs CRC-32 and the firmware's parity binary computes on the device.
pub fn outputs_crc32<'a, P: DigestOutputs + 'a>(
    predictions: impl IntoIterator<Item = &'a P>,
) -> u32 {
    let mut digest = OutputsDigest::new();
    for p in predictions {
        digest.add(p);
    }
    digest.finalize()
}

/// A simulation's predictions and the digest of their outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulated {
    /// One prediction per image, in image order (fixed point converted to f32).
    pub predictions: Vec<ImagePrediction>,
    /// CRC-32 of every output bit in image order ([`outputs_crc32`]).
    pub outputs_crc32: u32,
}

/// An element type of examples for the f32 engine, and the entry points that read it: bytes
/// through `predict_u8`, f32 readings through `predict_raw`.
pub trait FloatFeed: Sync + Sized {
    /// One prediction of `x`.
    fn predict<const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C>,
        x: &[Self],
        mode: Mode,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<Prediction<K>, InferenceError>;
    /// One early-exit prediction of `x`.
    fn predict_early_exit<const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C>,
        x: &[Self],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<ExitPrediction<K>, InferenceError>;
}

impl FloatFeed for u8 {
    fn predict<const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C>,
        x: &[u8],
        mode: Mode,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<Prediction<K>, InferenceError> {
        engine.predict_u8(x, mode, rng)
    }
    fn predict_early_exit<const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C>,
        x: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<ExitPrediction<K>, InferenceError> {
        engine.predict_u8_early_exit(x, mode, halting, rng)
    }
}

impl FloatFeed for f32 {
    fn predict<const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C>,
        x: &[f32],
        mode: Mode,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<Prediction<K>, InferenceError> {
        engine.predict_raw(x, mode, rng)
    }
    fn predict_early_exit<const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C>,
        x: &[f32],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<ExitPrediction<K>, InferenceError> {
        engine.predict_raw_early_exit(x, mode, halting, rng)
    }
}

/// An element type of examples for the fixed-point engine, and the entry points that read
/// it: bytes through `predict_u8`, signed codes through `predict_i8`.
pub trait FixedFeed: Sync + Sized {
    /// One prediction of `x`.
    fn predict<N: FixedPoint, const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C, N>,
        x: &[Self],
        mode: Mode,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<QPrediction<K>, InferenceError>;
    /// One early-exit prediction of `x`.
    fn predict_early_exit<N: FixedPoint, const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C, N>,
        x: &[Self],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<QExitPrediction<K>, InferenceError>;
}

impl FixedFeed for u8 {
    fn predict<N: FixedPoint, const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C, N>,
        x: &[u8],
        mode: Mode,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<QPrediction<K>, InferenceError> {
        engine.predict_u8(x, mode, rng)
    }
    fn predict_early_exit<N: FixedPoint, const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C, N>,
        x: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<QExitPrediction<K>, InferenceError> {
        engine.predict_u8_early_exit(x, mode, halting, rng)
    }
}

impl FixedFeed for i8 {
    fn predict<N: FixedPoint, const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C, N>,
        x: &[i8],
        mode: Mode,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<QPrediction<K>, InferenceError> {
        engine.predict_i8(x, mode, rng)
    }
    fn predict_early_exit<N: FixedPoint, const C: usize, const K: usize>(
        engine: &mut Engine<'_, '_, C, N>,
        x: &[i8],
        mode: Mode,
        halting: Halting<'_>,
        rng: &mut Xoshiro128PlusPlus,
    ) -> Result<QExitPrediction<K>, InferenceError> {
        engine.predict_i8_early_exit(x, mode, halting, rng)
    }
}

/// Runs the f32 model on every image as the device would ([`for_each_example`]); each worker
/// has a workspace of `tinybayes::Plan::new(&model, CHUNK).workspace_len()` words.
pub fn simulate(
    model: &Model<'_>,
    images: &Images<'_>,
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    check_images(model, images)?;
    simulate_examples(model, images.pixels, mode, seed)
}

/// Runs the f32 model on raw f32 examples of `model.input_len()` values each (channel-major),
/// which the engine normalises with the model's stored per-channel normalisation
/// (`Engine::predict_raw`, format version 9; a model without a table applies its one input
/// pair to every channel). Example `i` draws its noise as in [`for_each_example`].
pub fn simulate_raw(
    model: &Model<'_>,
    values: &[f32],
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    simulate_examples(model, values, mode, seed)
}

/// The f32 engine over examples of `model.input_len()` values of `E` ([`for_each_example`]).
fn simulate_examples<E: FloatFeed>(
    model: &Model<'_>,
    values: &[E],
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    // The result capacity K is a compile-time constant in the core; pick the smallest that fits
    // (the class count is at most 1024, checked when the model was read).
    match model.num_classes() {
        0..=16 => run::<E, 16>(model, values, mode, seed),
        17..=128 => run::<E, 128>(model, values, mode, seed),
        _ => run::<E, { tinybayes::format::MAX_CLASSES }>(model, values, mode, seed),
    }
}

fn run<E: FloatFeed, const K: usize>(
    model: &Model<'_>,
    values: &[E],
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    let workspace_len = tinybayes::Plan::new(model, CHUNK).workspace_len();
    let outputs: Vec<Prediction<K>> = for_each_example(
        values,
        model.input_len(),
        seed,
        || vec![0.0f32; workspace_len],
        |workspace, x, rng| E::predict(&mut Engine::<CHUNK>::new(model, workspace)?, x, mode, rng),
    )?;
    Ok(Simulated {
        outputs_crc32: outputs_crc32(&outputs),
        predictions: outputs.into_iter().map(ImagePrediction::from).collect(),
    })
}

impl<const K: usize> From<&QPrediction<K>> for ImagePrediction {
    fn from(p: &QPrediction<K>) -> Self {
        ImagePrediction {
            probabilities: p.probabilities.iter().map(|v| v.to_f32()).collect(),
            class: p.class,
            predictive_entropy: p.predictive_entropy.to_f32(),
            expected_entropy: p.expected_entropy.to_f32(),
            mutual_information: p.mutual_information.to_f32(),
        }
    }
}

/// [`simulate`] for a fixed-point model: the integer engine over every image, with the same
/// per-image seeds.
pub fn simulate_fixed(
    model: &QModel<'_>,
    images: &Images<'_>,
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    check_image_set(model.input_shape(), images)?;
    simulate_fixed_examples(model, images.pixels, mode, seed)
}

/// The examples a simulation runs: raw bytes (images, or a sensor's unsigned codes), or f32
/// values in the data's own units.
#[derive(Clone, Copy, Debug)]
pub enum Examples<'a> {
    /// Bytes, `Engine::predict_u8`.
    Bytes(&'a Images<'a>),
    /// f32 values, channel-major, `model.input_len()` per example: `Engine::predict_raw` on
    /// an f32 model, the signed codes of the values on a fixed-point model that reads them.
    Raw(&'a [f32]),
}

/// The signed codes of raw values at the step of a fixed-point model that reads them
/// ([`tinybayes::format::InputCoding::signed_code`], what a device does with a reading);
/// a model of bytes gives `WrongInputSign`, a non-finite value `NonFiniteInput` naming its
/// example.
pub fn signed_codes(model: &QModel<'_>, values: &[f32]) -> Result<Vec<i8>, SimulateError> {
    let tinybayes::format::InputCoding::Signed { step } = model.input_coding() else {
        return Err(SimulateError::Inference {
            index: 0,
            error: InferenceError::WrongInputSign {
                model_signed: false,
            },
        });
    };
    let per = model.input_len().max(1);
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            tinybayes::format::InputCoding::signed_code(v, step).ok_or(SimulateError::Inference {
                index: i / per,
                error: InferenceError::NonFiniteInput,
            })
        })
        .collect()
}

/// [`simulate_raw`] for a fixed-point model that reads signed codes: each raw value becomes
/// its code ([`signed_codes`]), then the integer engine runs on the codes with the same
/// per-example seeds.
pub fn simulate_fixed_raw(
    model: &QModel<'_>,
    values: &[f32],
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    simulate_fixed_examples(model, &signed_codes(model, values)?, mode, seed)
}

/// The integer engine over examples of `model.input_len()` values of `E`.
fn simulate_fixed_examples<E: FixedFeed>(
    model: &QModel<'_>,
    values: &[E],
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    match (model.precision(), model.num_classes()) {
        (Precision::Q16, 0..=16) => run_fixed::<Q16, E, 16>(model, values, mode, seed),
        (Precision::Q16, 17..=128) => run_fixed::<Q16, E, 128>(model, values, mode, seed),
        (Precision::Q16, _) => {
            run_fixed::<Q16, E, { tinybayes::format::MAX_CLASSES }>(model, values, mode, seed)
        }
        (_, 0..=16) => run_fixed::<Q8, E, 16>(model, values, mode, seed),
        (_, 17..=128) => run_fixed::<Q8, E, 128>(model, values, mode, seed),
        _ => run_fixed::<Q8, E, { tinybayes::format::MAX_CLASSES }>(model, values, mode, seed),
    }
}

fn run_fixed<N: FixedPoint, E: FixedFeed, const K: usize>(
    model: &QModel<'_>,
    values: &[E],
    mode: Mode,
    seed: u64,
) -> Result<Simulated, SimulateError> {
    let workspace_len = model.workspace_len(CHUNK);
    let outputs: Vec<QPrediction<K>> = for_each_example(
        values,
        model.input_len(),
        seed,
        || vec![0u64; workspace_len],
        |workspace, x, rng| {
            E::predict(
                &mut Engine::<CHUNK, N>::new(model, workspace)?,
                x,
                mode,
                rng,
            )
        },
    )?;
    Ok(Simulated {
        outputs_crc32: outputs_crc32(&outputs),
        predictions: outputs.iter().map(ImagePrediction::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinybayes::writer::synthetic;

    fn model_bytes(widths: &[usize]) -> tinybayes::writer::ModelBuffer {
        synthetic::mlp(3, widths, 0.6).to_buffer().unwrap()
    }

    fn pixels(n: usize, values: usize) -> Vec<u8> {
        (0..n * values).map(|i| (i * 37 % 251) as u8).collect()
    }

    #[test]
    fn matches_sequential_engine_with_per_image_seeds() {
        let buffer = model_bytes(&[16, 8, 3]);
        let model = buffer.model().unwrap();
        let px = pixels(20, 16);
        let images = Images {
            rows: 4,
            cols: 4,
            pixels: &px,
        };
        let mode = mode_from_samples(5).unwrap();
        let got = simulate(&model, &images, mode, 99).unwrap().predictions;
        assert_eq!(got.len(), 20);
        // Independent sequential run with CHUNK = 1 (results must not depend on CHUNK).
        let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 1).workspace_len()];
        for (i, g) in got.iter().enumerate() {
            let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(99 + i as u64);
            let p: Prediction<3> = engine
                .predict_u8(&px[i * 16..(i + 1) * 16], mode, &mut rng)
                .unwrap();
            assert_eq!(*g, ImagePrediction::from(p), "image {i}");
            let sum: f32 = g.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
        // Different seeds give different Monte Carlo answers; the mean mode ignores the seed.
        let other = simulate(&model, &images, mode, 100).unwrap().predictions;
        assert_ne!(got, other);
        let m1 = simulate(&model, &images, Mode::MeanWeights, 1)
            .unwrap()
            .predictions;
        let m2 = simulate(&model, &images, Mode::MeanWeights, 2)
            .unwrap()
            .predictions;
        assert_eq!(m1, m2);
        assert!(m1.iter().all(|p| p.mutual_information == 0.0));
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let buffer = model_bytes(&[16, 8, 3]);
        let model = buffer.model().unwrap();
        let px = pixels(64, 16);
        let images = Images {
            rows: 4,
            cols: 4,
            pixels: &px,
        };
        let mode = mode_from_samples(9).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| simulate(&model, &images, mode, 5).unwrap());
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| simulate(&model, &images, mode, 5).unwrap());
        assert_eq!(one, many);
    }

    #[test]
    fn size_mismatch_is_one_clear_message() {
        let buffer = model_bytes(&[100, 8, 3]);
        let model = buffer.model().unwrap();
        let px = pixels(2, 784);
        let images = Images {
            rows: 28,
            cols: 28,
            pixels: &px,
        };
        let err = simulate(&model, &images, Mode::MeanWeights, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "images are 28x28 (784 values) but the model's input is 1x1x100 (100 values)"
        );
        // The same length in another shape is refused by a shaped input, not by a flat one.
        let mut spec = synthetic::mlp(3, &[784, 8, 3], 0.6);
        spec.input_shape = [1, 28, 28];
        let shaped = spec.to_buffer().unwrap();
        let tall = Images {
            rows: 14,
            cols: 56,
            pixels: &px,
        };
        assert_eq!(
            simulate(&shaped.model().unwrap(), &tall, Mode::MeanWeights, 0)
                .unwrap_err()
                .to_string(),
            "images are 14x56 (784 values) but the model's input is 1x28x28 (784 values)"
        );
        let flat = model_bytes(&[784, 8, 3]);
        assert!(simulate(&flat.model().unwrap(), &tall, Mode::MeanWeights, 0).is_ok());
        assert!(image_fits([1, 28, 28], 1, 784));
        assert!(!image_fits([3, 28, 28], 28, 84));
        assert!(image_fits([3, 28, 28], 1, 2352));
        let empty = Images {
            rows: 10,
            cols: 10,
            pixels: &[],
        };
        assert_eq!(
            simulate(&model, &empty, Mode::MeanWeights, 0),
            Err(SimulateError::Empty)
        );
        let partial = Images {
            rows: 10,
            cols: 10,
            pixels: &px[..150],
        };
        assert!(matches!(
            simulate(&model, &partial, Mode::MeanWeights, 0),
            Err(SimulateError::PartialImage { .. })
        ));
    }

    #[test]
    fn wide_class_counts_use_a_larger_capacity() {
        let buffer = model_bytes(&[6, 5, 200]);
        let model = buffer.model().unwrap();
        let px = pixels(3, 6);
        let images = Images {
            rows: 2,
            cols: 3,
            pixels: &px,
        };
        let got = simulate(&model, &images, mode_from_samples(2).unwrap(), 0)
            .unwrap()
            .predictions;
        assert!(got.iter().all(|p| p.probabilities.len() == 200));
    }

    #[test]
    fn samples_parsing() {
        assert_eq!(parse_samples("0"), Ok(Mode::MeanWeights));
        assert_eq!(
            parse_samples("65535"),
            Ok(Mode::MonteCarlo {
                samples: NonZeroU16::new(65535).unwrap()
            })
        );
        for bad in ["65536", "-1", "abc", "1.5", ""] {
            let err = parse_samples(bad).unwrap_err();
            assert!(err.starts_with("--samples must be"), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
        assert_eq!(describe_mode(Mode::MeanWeights), "mean weights");
        assert_eq!(
            describe_mode(mode_from_samples(32).unwrap()),
            "Monte Carlo, 32 samples"
        );
    }
}
