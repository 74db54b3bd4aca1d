//! The model a command runs: an f32 or fixed-point model file, optionally quantized on the fly
//! (`--precision q8` on an f32 file) exactly as `export --precision q8` would, so that `eval`
//! and `predict` simulate the device's integer path bit for bit.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tinybayes::fixed::quantize::{quantize, quantize_signed, Calibration};
use tinybayes::fixed::QModel;
use tinybayes::format::{InputCoding, Precision};
use tinybayes::model::Operation;
use tinybayes::numeric::LayerView;
use tinybayes::writer::{ModelBuffer, ModelSpec};
use tinybayes::{Mode, Model, ModelError};

use crate::halting::{simulate_early_exit, HaltingArgs, HaltingSpec};
use crate::idx::load_images;
use crate::metrics::LayerSparsity;
use crate::report::ModelReport;
use crate::simulate::{simulate, simulate_fixed, Examples, ImagePrediction, Images};

/// Calibration images used when none are counted explicitly.
pub const DEFAULT_CALIBRATION_COUNT: usize = 1000;

/// Parses `f32`, `q8` or `q16`.
pub fn parse_precision(text: &str) -> Result<Precision, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(Precision::F32),
        "q8" => Ok(Precision::Q8),
        "q16" => Ok(Precision::Q16),
        _ => Err(format!("precision must be f32, q8 or q16, got {text:?}")),
    }
}

/// Number format options shared by `export`, `eval` and `predict`.
#[derive(Args, Debug, Clone, Default)]
pub struct PrecisionArgs {
    /// Number format: f32, q8 or q16 [default: the model file's]. q8/q16 on an f32 model
    /// quantizes it first (needs --calibration-images).
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// IDX images whose first --calibration-count calibrate the activation scales when
    /// quantizing (use the training images).
    #[arg(long, value_name = "IDX")]
    pub calibration_images: Option<PathBuf>,
    /// Data file (.npz, .npy or .csv) whose first --calibration-count training examples
    /// calibrate the activation scales instead of --calibration-images; each example's shape
    /// must be the model's input. Byte data gives a model that reads bytes; f32 data one that
    /// reads signed 8-bit codes of the values (see --input-step; the model's normalisation
    /// must then have zero offsets: train with normalize = "scale").
    #[arg(long, value_name = "FILE", conflicts_with = "calibration_images")]
    pub calibration_data: Option<PathBuf>,
    /// Quantizing from f32 data: the raw value of one signed input code (the device feeds
    /// round(value / step), clamped to -127..=127) [default: the largest |value| of the
    /// calibration examples / 127].
    #[arg(long, value_parser = parse_input_step, value_name = "STEP", allow_negative_numbers = true)]
    pub input_step: Option<f32>,
    /// Number of calibration images, at most the images in the file [default: 1000, or every
    /// image of a smaller file, with a warning].
    #[arg(long, allow_negative_numbers = true)]
    pub calibration_count: Option<usize>,
    /// Quantile of each layer's calibration activations mapped to the largest integer, in
    /// (0, 1]; 1 keeps the largest value seen (more headroom, coarser steps) [default: 0.9999].
    #[arg(long, value_parser = parse_clip_quantile, value_name = "Q", allow_negative_numbers = true)]
    pub clip_quantile: Option<f64>,
}

/// Parses `--input-step`: a finite positive number.
fn parse_input_step(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!(
            "--input-step must be a finite positive number, got {text:?}"
        )),
    }
}

/// Parses `--clip-quantile`: a number in (0, 1].
fn parse_clip_quantile(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(q) if q > 0.0 && q <= 1.0 => Ok(q),
        _ => Err(format!(
            "--clip-quantile must be a number in (0, 1], got {text:?}"
        )),
    }
}

impl PrecisionArgs {
    /// Warns (one line on stderr) when calibration options were given but nothing is
    /// quantized, so they would otherwise be ignored without a word.
    pub fn warn_if_unused(&self) {
        let given = self.calibration_images.is_some()
            || self.calibration_data.is_some()
            || self.calibration_count.is_some()
            || self.clip_quantile.is_some()
            || self.input_step.is_some();
        if given {
            crate::ui::warn(
                "--calibration-images/--calibration-data, --calibration-count, --clip-quantile and --input-step are ignored: \
                 they calibrate quantizing an f32 model to --precision q8 or q16 only",
            );
        }
    }
}

/// A loaded model of either precision, validated once when loaded (its bytes stay in memory
/// until the command exits).
#[derive(Debug, Clone)]
pub enum Runner {
    /// An f32 model (boxed: the validated view holds its layer table).
    F32(Box<Model<'static>>),
    /// A q8 or q16 model.
    Fixed(Box<QModel<'static>>),
}

/// What a simulation returns.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// One prediction per image.
    pub predictions: Vec<ImagePrediction>,
    /// The CRC-32 of every output bit in image order (`tinybayes::digest`; the device
    /// parity check).
    pub outputs_crc32: u32,
    /// For early-exit models, where each image stopped.
    pub early_exit: Option<EarlyExitRun>,
}

/// The early-exit side of a simulation.
#[derive(Debug, Clone)]
pub struct EarlyExitRun {
    /// The policy run.
    pub spec: HaltingSpec,
    /// Exits of the model.
    pub exits: usize,
    /// Per image: the answering exit (0-based).
    pub answer: Vec<usize>,
    /// Per image: blocks run.
    pub depth: Vec<usize>,
    /// Per image: MACs per weight sample.
    pub macs: Vec<usize>,
    /// MACs per weight sample of running every block.
    pub full_macs: usize,
    /// Per image: the largest predictive entropy of the exits computed.
    pub largest_predictive_entropy: Vec<f32>,
    /// Per image: the largest mutual information of the exits computed.
    pub largest_mutual_information: Vec<f32>,
}

/// Cumulative MACs of the *unpruned* architecture through each exit (every kernel tap, as the
/// early-exit literature counts them), for comparison with [`macs_through_exits`].
pub fn dense_macs_through_exits<L: LayerView>(layers: &[L]) -> Vec<usize> {
    through_exits(layers, |l| match l.operation() {
        Operation::Conv2d(g) => l.dense_weights() * g.output[1] * g.output[2],
        _ => l.dense_weights(),
    })
}

/// Cumulative MACs (per weight sample) of a graph model through each exit.
pub fn macs_through_exits<L: LayerView>(layers: &[L]) -> Vec<usize> {
    through_exits(layers, L::macs)
}

/// The running sum of `cost` over the layers, at each exit head.
fn through_exits<L: LayerView>(layers: &[L], cost: impl Fn(&L) -> usize) -> Vec<usize> {
    let mut total = 0;
    let mut out = Vec::new();
    for l in layers {
        total += cost(l);
        if matches!(l.operation(), Operation::ExitHead { .. }) {
            out.push(total);
        }
    }
    out
}

/// Reads a model file of any precision.
pub fn read_any_model(path: &Path) -> Result<Runner> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    Runner::from_buffer(ModelBuffer::from_bytes(&bytes))
        .with_context(|| format!("{} is not a valid model", path.display()))
}

/// Reads the first `count` images of an IDX file for calibration, checking they fit a model
/// input of `shape`. An explicit count above the images in the file is an error; without one,
/// a file of fewer than [`DEFAULT_CALIBRATION_COUNT`] images is used whole, with a warning.
pub fn calibration_images(
    path: &Path,
    count: Option<usize>,
    shape: [usize; 3],
) -> Result<Vec<Vec<u8>>> {
    if count == Some(0) {
        bail!("--calibration-count must be at least 1");
    }
    let array = load_images(path)?;
    let images = Images::from_idx(&array);
    crate::simulate::check_image_set(shape, &images)
        .with_context(|| format!("calibration images {}", path.display()))?;
    let available = images.len();
    let count = match count {
        Some(c) if c > available => bail!(
            "--calibration-count {c} is more than the {available} images in {}",
            path.display()
        ),
        Some(c) => c,
        None if available < DEFAULT_CALIBRATION_COUNT => {
            crate::ui::warn(format!(
                "calibrating on all {available} images of {} (fewer than the default \
                 --calibration-count {DEFAULT_CALIBRATION_COUNT})",
                path.display()
            ));
            available
        }
        None => DEFAULT_CALIBRATION_COUNT,
    };
    let values = images.values();
    Ok(images
        .pixels
        .chunks_exact(values)
        .take(count)
        .map(<[u8]>::to_vec)
        .collect())
}

/// Calibration examples, as the quantized model will read them.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibrationSet {
    /// Raw bytes: a model that reads unsigned bytes.
    Bytes(Vec<Vec<u8>>),
    /// f32 values in the data's units: a model that reads signed codes of them.
    Readings(Vec<Vec<f32>>),
}

/// The first `count` training examples of a data file (`--calibration-data`), checked
/// against the model's input `shape`.
pub fn calibration_data(
    path: &Path,
    count: Option<usize>,
    shape: [usize; 3],
) -> Result<CalibrationSet> {
    if count == Some(0) {
        bail!("--calibration-count must be at least 1");
    }
    let file = crate::data::load(path, &crate::data::DataKeys::default(), None)?;
    let samples = &file.train.samples;
    samples
        .check_shape(shape)
        .map_err(|e| anyhow!("calibration data {}: {e}", path.display()))?;
    let available = samples.len();
    let count = match count {
        Some(c) if c > available => bail!(
            "--calibration-count {c} is more than the {available} examples in {}",
            path.display()
        ),
        Some(c) => c,
        None => available.min(DEFAULT_CALIBRATION_COUNT),
    };
    let per = samples.features();
    Ok(match &samples.values {
        crate::data::Values::U8(bytes) => CalibrationSet::Bytes(
            bytes
                .chunks_exact(per)
                .take(count)
                .map(<[u8]>::to_vec)
                .collect(),
        ),
        crate::data::Values::F32(values) => CalibrationSet::Readings(
            values
                .chunks_exact(per)
                .take(count)
                .map(<[f32]>::to_vec)
                .collect(),
        ),
    })
}

/// The signed-code step of f32 calibration examples: the largest magnitude over 127, so
/// that every calibration value has a code.
pub fn default_input_step(examples: &[Vec<f32>]) -> Result<f32> {
    let largest = examples
        .iter()
        .flatten()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let step = largest / 127.0;
    if !(step.is_finite() && step > 0.0) {
        bail!("the calibration examples are all zero (or not finite): give --input-step");
    }
    Ok(step)
}

/// Quantizes an f32 spec with the calibration images of `args` (which must be given): a
/// model of bytes from byte data, a model of signed codes from f32 data.
pub fn quantize_spec(
    spec: &ModelSpec,
    precision: Precision,
    args: &PrecisionArgs,
) -> Result<ModelBuffer> {
    let set = match (&args.calibration_images, &args.calibration_data) {
        (Some(path), _) => CalibrationSet::Bytes(calibration_images(
            path,
            args.calibration_count,
            spec.input_shape,
        )?),
        (None, Some(path)) => calibration_data(path, args.calibration_count, spec.input_shape)?,
        (None, None) => bail!(
            "--precision {} needs --calibration-images or --calibration-data (the training \
             data) to calibrate activations",
            precision.name()
        ),
    };
    let mut calibration = Calibration::default();
    if let Some(q) = args.clip_quantile {
        calibration.clip_quantile = q;
    }
    let cannot = |e: tinybayes::fixed::quantize::QuantizeError| {
        anyhow!("cannot quantize to {}: {e}", precision.name())
    };
    let q = match set {
        CalibrationSet::Bytes(_) if args.input_step.is_some() => bail!(
            "--input-step applies to f32 calibration data (a model of signed codes); these \
             calibration examples are bytes, which the model reads as they are"
        ),
        CalibrationSet::Bytes(images) => {
            let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
            quantize(spec, precision, &refs, calibration).map_err(cannot)?
        }
        CalibrationSet::Readings(examples) => {
            let step = match args.input_step {
                Some(step) => step,
                None => default_input_step(&examples)?,
            };
            let codes = examples
                .iter()
                .map(|x| {
                    x.iter()
                        .map(|&v| InputCoding::signed_code(v, step))
                        .collect::<Option<Vec<i8>>>()
                })
                .collect::<Option<Vec<Vec<i8>>>>()
                .ok_or_else(|| anyhow!("a calibration value is not finite"))?;
            let refs: Vec<&[i8]> = codes.iter().map(Vec::as_slice).collect();
            crate::ui::detail(format!(
                "signed input codes: step {step} (raw units per code)"
            ));
            quantize_signed(spec, precision, &refs, step, calibration).map_err(cannot)?
        }
    };
    Ok(q.to_buffer()?)
}

/// Loads `path` and brings it to the requested precision: a fixed-point file runs as it is
/// (asking for another precision is an error), an f32 file runs as f32 or is quantized.
pub fn load_runner(path: &Path, args: &PrecisionArgs) -> Result<Runner> {
    let runner = read_any_model(path)?;
    match (&runner, args.precision) {
        (_, None) | (Runner::F32(_), Some(Precision::F32)) => {
            args.warn_if_unused();
            Ok(runner)
        }
        (Runner::Fixed(_), Some(p)) if p == runner.precision() => {
            args.warn_if_unused();
            Ok(runner)
        }
        (Runner::Fixed(_), Some(p)) => bail!(
            "{} is a {} model and cannot run as {} (export the run again with --precision {})",
            path.display(),
            runner.precision().name(),
            p.name(),
            p.name()
        ),
        (Runner::F32(model), Some(p)) => {
            let spec = ModelSpec::from_model(model);
            Runner::from_buffer(quantize_spec(&spec, p, args)?)
        }
    }
}

impl Runner {
    /// Validates a model of either precision, once.
    pub fn from_buffer(buffer: ModelBuffer) -> Result<Self> {
        let bytes = buffer.leak();
        match Model::from_bytes(bytes) {
            Ok(m) => Ok(Runner::F32(Box::new(m))),
            Err(ModelError::WrongPrecision { .. }) => {
                Ok(Runner::Fixed(Box::new(QModel::from_bytes(bytes)?)))
            }
            Err(e) => Err(anyhow!(e)),
        }
    }
    /// The bytes of the model.
    pub fn bytes(&self) -> &'static [u8] {
        match self {
            Runner::F32(m) => m.as_bytes(),
            Runner::Fixed(m) => m.as_bytes(),
        }
    }
    /// The model's number format.
    pub fn precision(&self) -> Precision {
        match self {
            Runner::F32(_) => Precision::F32,
            Runner::Fixed(m) => m.precision(),
        }
    }
    /// Classes predicted.
    pub fn num_classes(&self) -> usize {
        match self {
            Runner::F32(m) => m.num_classes(),
            Runner::Fixed(m) => m.num_classes(),
        }
    }
    /// Input shape, channels x height x width.
    pub fn input_shape(&self) -> [usize; 3] {
        match self {
            Runner::F32(m) => m.input_shape(),
            Runner::Fixed(m) => m.input_shape(),
        }
    }
    /// Number of raw input values.
    pub fn input_len(&self) -> usize {
        match self {
            Runner::F32(m) => m.input_len(),
            Runner::Fixed(m) => m.input_len(),
        }
    }
    /// Exits of an early-exit model (0 otherwise).
    pub fn exit_count(&self) -> usize {
        match self {
            Runner::F32(m) => m.exit_count(),
            Runner::Fixed(m) => m.exit_count(),
        }
    }

    /// [`macs_through_exits`] of the model.
    pub fn macs_through_exits(&self) -> Vec<usize> {
        match self {
            Runner::F32(m) => macs_through_exits(m.layers()),
            Runner::Fixed(m) => macs_through_exits(m.layers()),
        }
    }

    /// [`dense_macs_through_exits`] of the model.
    pub fn dense_macs_through_exits(&self) -> Vec<usize> {
        match self {
            Runner::F32(m) => dense_macs_through_exits(m.layers()),
            Runner::Fixed(m) => dense_macs_through_exits(m.layers()),
        }
    }

    /// Runs every example as the device would; early-exit models stop as `halting` says.
    /// Bytes run through `predict_u8`; f32 values in the data's units through the f32
    /// engine's raw entry point (which applies the model's stored per-channel normalisation)
    /// or, on a fixed-point model of signed codes, as the codes of the values at its step
    /// (`predict_i8`).
    pub fn simulate(
        &self,
        examples: Examples<'_>,
        mode: Mode,
        seed: u64,
        halting: &HaltingArgs,
    ) -> Result<Simulation> {
        let exits = self.exit_count();
        let asked = halting.halting.is_some()
            || halting.prior_lambda.is_some()
            || halting.threshold.is_some()
            || halting.mi_below.is_some();
        if exits == 0 && asked {
            bail!(
                "--halting, --prior-lambda, --threshold and --mi-below apply to early-exit \
                 models only"
            );
        }
        if let (Examples::Raw(_), Runner::Fixed(model)) = (examples, self) {
            if model.input_coding() == InputCoding::Unsigned {
                bail!(
                    "this {} model reads unsigned bytes; f32 data runs on its f32 model, or on a \
                     {} model exported from f32 data (signed codes)",
                    self.precision().name(),
                    self.precision().name()
                );
            }
        }
        if exits > 0 {
            let spec = halting.resolve(exits)?;
            let (results, outputs_crc32) = simulate_early_exit(self, examples, mode, seed, &spec)?;
            let full_macs = self.macs_through_exits().last().copied().unwrap_or(0);
            let run = EarlyExitRun {
                spec,
                exits,
                answer: results.iter().map(|r| r.exit).collect(),
                depth: results.iter().map(|r| r.depth).collect(),
                macs: results.iter().map(|r| r.macs).collect(),
                full_macs,
                largest_predictive_entropy: results
                    .iter()
                    .map(|r| r.largest_predictive_entropy)
                    .collect(),
                largest_mutual_information: results
                    .iter()
                    .map(|r| r.largest_mutual_information)
                    .collect(),
            };
            return Ok(Simulation {
                predictions: results.into_iter().map(|r| r.prediction).collect(),
                outputs_crc32,
                early_exit: Some(run),
            });
        }
        let s = match (self, examples) {
            (Runner::F32(m), Examples::Bytes(images)) => simulate(m, images, mode, seed)?,
            (Runner::Fixed(m), Examples::Bytes(images)) => simulate_fixed(m, images, mode, seed)?,
            (Runner::F32(m), Examples::Raw(values)) => {
                crate::simulate::simulate_raw(m, values, mode, seed)?
            }
            (Runner::Fixed(m), Examples::Raw(values)) => {
                crate::simulate::simulate_fixed_raw(m, values, mode, seed)?
            }
        };
        Ok(Simulation {
            predictions: s.predictions,
            outputs_crc32: s.outputs_crc32,
            early_exit: None,
        })
    }

    /// The f32 model, if this is one.
    pub fn float_model(&self) -> Option<&Model<'static>> {
        match self {
            Runner::F32(m) => Some(m),
            Runner::Fixed(_) => None,
        }
    }
    /// Per-layer sparsity.
    pub fn sparsity(&self) -> Vec<LayerSparsity> {
        match self {
            Runner::F32(m) => crate::metrics::layer_sparsity(m),
            Runner::Fixed(m) => m
                .layers()
                .iter()
                .enumerate()
                .map(|(layer, l)| {
                    let dense_weights = l.dense_weights();
                    LayerSparsity {
                        layer,
                        kind: l.kind().name(),
                        inputs: l.inputs(),
                        outputs: l.outputs(),
                        nnz: l.nnz(),
                        dense_weights,
                        sparsity: (dense_weights > 0)
                            .then(|| 1.0 - l.nnz() as f64 / dense_weights as f64),
                    }
                })
                .collect(),
        }
    }
    /// The per-layer report.
    pub fn report(&self, samples: usize, chunk: Option<usize>) -> ModelReport {
        match self {
            Runner::F32(m) => ModelReport::new(m, samples, chunk),
            Runner::Fixed(m) => ModelReport::new_fixed(m, samples, chunk),
        }
    }
}
