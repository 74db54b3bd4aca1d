//! Property tests (proptest) of the reader and the engine on hostile bytes: random byte
//! strings, and valid models mutated byte-, bit-, field- and length-wise, with the original CRC
//! and with the CRC (and declared length) recomputed so that the structural checks are what
//! gets exercised. Whatever `Model::from_bytes` accepts must honour every promise the engine
//! relies on and must run in both modes without panicking. Random valid specs round-trip
//! through the writer and the reader exactly.
//!
//! No failure-persistence files are written (`failure_persistence: None`); a failing case is
//! printed with its minimal input by proptest.

use core::num::NonZeroU16;
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tinybayes::format::{
    payload_len, Activation, Posterior, Storage, CRC32, HEADER_LEN, LAYER_RECORD_LEN, MAGIC,
    MAX_CLASSES, MAX_UNITS, TRAILER_LEN,
};
use tinybayes::model::Operation;
use tinybayes::writer::{synthetic, LayerOp, LayerSpec, ModelBuffer, ModelSpec, StorageChoice};
use tinybayes::{Engine, InferenceError, Layer, Mode, Model, ModelError, Prediction, Weights};

/// Monte Carlo samples per pass; 1..8 samples are requested, so some runs take two passes.
const CHUNK: usize = 4;
/// Result capacity: every class count a valid model can have.
const K: usize = MAX_CLASSES;

/// Header field offsets (docs/FORMAT.md; `tinybayes::format::header` is `pub(crate)`).
const FILE_LEN: usize = 8;
const LAYER_COUNT: usize = 12;
/// Header fields a field mutation may hit: (offset, width in bytes).
const HEADER_FIELDS: [(usize, usize); 13] = [
    (4, 2),  // version
    (6, 2),  // header length
    (8, 4),  // file length
    (12, 2), // layer count
    (14, 2), // classes
    (16, 2), // input channels
    (18, 2), // input height
    (20, 2), // input width
    (22, 2), // flags
    (24, 4), // input scale
    (28, 4), // input offset
    (32, 4), // layer table offset
    (36, 4), // reserved
];
/// Layer record fields (docs/FORMAT.md; `tinybayes::format::record` is `pub(crate)`):
/// kind, posterior, activation, reserved byte (u8); inputs, outputs, nnz, payload offset,
/// payload length, reserved (u32).
const RECORD_FIELDS: [(usize, usize); 10] = [
    (0, 1),
    (1, 1),
    (2, 1),
    (3, 1),
    (4, 4),
    (8, 4),
    (12, 4),
    (16, 4),
    (20, 4),
    (24, 4),
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn mc(samples: u16) -> Mode {
    Mode::MonteCarlo {
        samples: NonZeroU16::new(samples).unwrap(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Random valid specs
// ---------------------------------------------------------------------------------------------

/// The shape of one layer to generate; its parameters come from a seeded generator.
#[derive(Clone, Debug)]
struct LayerPlan {
    outputs: usize,
    gaussian: bool,
    storage: StorageChoice,
    density: f64,
    relu: bool,
}

fn storage_choice() -> impl Strategy<Value = StorageChoice> {
    prop_oneof![
        Just(StorageChoice::Dense),
        Just(StorageChoice::Sparse),
        Just(StorageChoice::SparseByInput),
        Just(StorageChoice::Smallest),
    ]
}

fn layer_plan() -> impl Strategy<Value = LayerPlan> {
    (
        1usize..=40,
        any::<bool>(),
        storage_choice(),
        prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0],
        any::<bool>(),
    )
        .prop_map(|(outputs, gaussian, storage, density, relu)| LayerPlan {
            outputs,
            gaussian,
            storage,
            density,
            relu,
        })
}

/// A uniform f64 in [0, 1).
fn unit(rng: &mut Xoshiro256PlusPlus) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Random valid specs: 1 to 4 layers of 1 to 40 units (2 to 40 classes), any storage choice,
/// deterministic or Gaussian layers, any density, random finite parameters.
fn spec_strategy() -> impl Strategy<Value = ModelSpec> {
    (
        1usize..=40,
        prop::collection::vec(layer_plan(), 1..=4),
        2usize..=40,
        0usize..3,
        any::<u64>(),
    )
        .prop_map(|(input, mut plans, classes, shape, seed)| {
            plans.last_mut().unwrap().outputs = classes;
            plans.last_mut().unwrap().relu = false;
            build_spec(input, &plans, shape, seed)
        })
}

fn build_spec(input: usize, plans: &[LayerPlan], shape: usize, seed: u64) -> ModelSpec {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut layers = Vec::new();
    let mut inputs = input;
    for plan in plans {
        let n = inputs * plan.outputs;
        let mut theta = vec![0.0f32; n];
        let mut variance = vec![0.0f32; n];
        for (t, v) in theta.iter_mut().zip(variance.iter_mut()) {
            if unit(&mut rng) >= plan.density {
                continue; // pruned
            }
            // Mostly ordinary values, sometimes a zero mean (kept by its variance) or an
            // extreme one.
            *t = match rng.next_u32() % 16 {
                0 => 0.0,
                1 => (unit(&mut rng) as f32 - 0.5) * 2e30,
                _ => (unit(&mut rng) as f32 - 0.5) * 4.0,
            };
            *v = match rng.next_u32() % 8 {
                0 => 0.0,
                _ => unit(&mut rng) as f32 + f32::MIN_POSITIVE,
            };
            if *t == 0.0 && *v == 0.0 {
                *v = 0.5;
            }
        }
        let bias = (0..plan.outputs)
            .map(|_| (unit(&mut rng) as f32 - 0.5) * 2.0)
            .collect();
        layers.push(LayerSpec {
            op: LayerOp::Linear,
            inputs,
            outputs: plan.outputs,
            activation: if plan.relu {
                Activation::Relu
            } else {
                Activation::Identity
            },
            bias,
            theta,
            variance: plan.gaussian.then_some(variance),
            storage: plan.storage,
            dropout: None,
        });
        inputs = plan.outputs;
    }
    // Some factorisation of the input width into (channels, height, width).
    let c = (1..=input)
        .rev()
        .find(|c| input % c == 0 && *c <= 3)
        .unwrap();
    let input_shape = match shape {
        0 => [1, 1, input],
        1 => [input, 1, 1],
        _ => [c, 1, input / c],
    };
    ModelSpec {
        input_shape,
        num_classes: plans.last().unwrap().outputs,
        input_scale: (unit(&mut rng) as f32) / 64.0,
        input_offset: unit(&mut rng) as f32 - 0.5,
        layers,
        trained: None,
        channel_norm: None,
    }
}

/// The dense (theta, variance) matrices of a layer as the reader sees it (variance 0 for a
/// deterministic layer, 0 for pruned weights).
fn dense_params(layer: &Layer<'_>) -> (Vec<f32>, Vec<f32>) {
    let (i, o) = (layer.inputs(), layer.outputs());
    let w = layer.posterior().words_per_weight();
    let mut theta = vec![0.0f32; i * o];
    let mut var = vec![0.0f32; i * o];
    let mut put = |index: usize, rec: &[f32]| {
        theta[index] = rec[0];
        if w == 2 {
            var[index] = rec[1];
        }
    };
    match layer.weights() {
        Weights::Dense { values } => {
            for (k, rec) in values.chunks_exact(w).enumerate() {
                put(k, rec);
            }
        }
        Weights::Sparse {
            row_ptr,
            cols,
            values,
        } => {
            for j in 0..o {
                for p in row_ptr[j] as usize..row_ptr[j + 1] as usize {
                    put(j * i + cols[p] as usize, &values[p * w..(p + 1) * w]);
                }
            }
        }
        Weights::SparseByInput {
            col_ptr,
            rows,
            values,
        } => {
            for c in 0..i {
                for p in col_ptr[c] as usize..col_ptr[c + 1] as usize {
                    put(rows[p] as usize * i + c, &values[p * w..(p + 1) * w]);
                }
            }
        }
        // Round-trip specs are linear only.
        Weights::Conv { .. } | Weights::None => {
            unreachable!("linear spec read back as {:?}", layer.kind())
        }
    }
    (theta, var)
}

// ---------------------------------------------------------------------------------------------
// What an accepted model must satisfy, and what the engine must do with it
// ---------------------------------------------------------------------------------------------

/// The promises of a validated model that the kernels rely on (no bounds checks at inference).
fn check_model_invariants(model: &Model<'_>) -> Result<(), TestCaseError> {
    let layers = model.layers();
    prop_assert!(!layers.is_empty());
    prop_assert!(model.input_shape().iter().all(|&d| d > 0));
    let (scale, offset) = model.input_normalization();
    prop_assert!(scale.is_finite() && offset.is_finite());
    prop_assert!((2..=MAX_CLASSES).contains(&model.num_classes()));
    let mut expected_inputs = model.input_len();
    for (index, layer) in layers.iter().enumerate() {
        let (i, o) = (layer.inputs(), layer.outputs());
        if let Operation::ExitHead { map, .. } = layer.operation() {
            // An exit head pools the map (one input per channel) and passes it on.
            prop_assert_eq!(i, map[0]);
            prop_assert_eq!(map.iter().product::<usize>(), expected_inputs);
        } else {
            prop_assert_eq!(i, expected_inputs, "layer {} does not chain", index);
        }
        prop_assert!(o > 0 && o <= MAX_UNITS && i <= MAX_UNITS);
        let bias_len = match layer.operation() {
            Operation::Linear | Operation::ExitHead { .. } => o,
            Operation::Conv2d(g) => g.output[0],
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => 0,
        };
        if let Operation::GlobalAvgPool { map } = layer.operation() {
            // One output per channel of the map it reads.
            prop_assert_eq!(map.iter().product::<usize>(), i);
            prop_assert_eq!(o, map[0]);
        }
        prop_assert_eq!(layer.bias().len(), bias_len);
        prop_assert!(layer.bias().iter().all(|b| b.is_finite()));
        let w = layer.posterior().words_per_weight();
        let values = match layer.weights() {
            Weights::Dense { values } => {
                prop_assert_eq!(values.len(), i * o * w);
                values
            }
            Weights::Sparse {
                row_ptr,
                cols,
                values,
            } => {
                prop_assert_eq!(row_ptr.len(), o + 1);
                prop_assert_eq!(row_ptr[0], 0);
                prop_assert_eq!(*row_ptr.last().unwrap() as usize, cols.len());
                prop_assert_eq!(values.len(), cols.len() * w);
                for r in row_ptr.windows(2) {
                    prop_assert!(r[0] <= r[1]);
                    let row = &cols[r[0] as usize..r[1] as usize];
                    prop_assert!(row.iter().all(|&c| (c as usize) < i));
                    prop_assert!(row.windows(2).all(|p| p[0] < p[1]));
                }
                values
            }
            Weights::SparseByInput {
                col_ptr,
                rows,
                values,
            } => {
                prop_assert_eq!(col_ptr.len(), i + 1);
                prop_assert_eq!(col_ptr[0], 0);
                prop_assert_eq!(*col_ptr.last().unwrap() as usize, rows.len());
                prop_assert_eq!(values.len(), rows.len() * w);
                for r in col_ptr.windows(2) {
                    prop_assert!(r[0] <= r[1]);
                    let column = &rows[r[0] as usize..r[1] as usize];
                    prop_assert!(column.windows(2).all(|p| p[0] < p[1]));
                    prop_assert!(column.iter().all(|&r| (r as usize) < o));
                }
                values
            }
            Weights::Conv {
                row_ptr,
                taps,
                values,
            } => {
                let Operation::Conv2d(g) = layer.operation() else {
                    return Err(TestCaseError::fail("conv weights on a non-conv layer"));
                };
                prop_assert_eq!(row_ptr.len(), g.output[0] + 1);
                prop_assert_eq!(row_ptr[0], 0);
                prop_assert_eq!(*row_ptr.last().unwrap() as usize, taps.len());
                prop_assert_eq!(values.len(), taps.len() * w);
                for r in row_ptr.windows(2) {
                    prop_assert!(r[0] <= r[1]);
                    let row = &taps[r[0] as usize..r[1] as usize];
                    prop_assert!(row.windows(2).all(|p| p[0] < p[1]));
                    for &t in row {
                        let (c, ky, kx) = tinybayes::format::unpack_tap(t);
                        prop_assert!(c < g.input[0] && ky < g.window[0] && kx < g.window[1]);
                    }
                }
                values
            }
            Weights::None => &[],
        };
        prop_assert!(values.iter().all(|v| v.is_finite()));
        if layer.posterior() == Posterior::Gaussian {
            prop_assert!(values.chunks_exact(2).all(|rec| rec[1] >= 0.0));
        }
        if !matches!(layer.operation(), Operation::ExitHead { .. }) {
            expected_inputs = o;
        }
    }
    let last = layers.last().unwrap();
    prop_assert_eq!(last.outputs(), model.num_classes());
    prop_assert_eq!(last.activation(), Activation::Identity);
    let width = layers.iter().map(|l| l.outputs()).max().unwrap();
    prop_assert_eq!(model.max_width(), width);
    // Documented layout (`Plan`): moments (2 x the first Gaussian layer's outputs), two
    // activation buffers (widest x chunk) and a scratch for the variances of a Gaussian
    // linear layer (with its inputs squared if stored by rows and not the first Gaussian
    // layer, whose moments are computed once) or of one convolution channel
    // (these models have no residual or exit).
    let moments = layers
        .iter()
        .find(|l| l.posterior() == Posterior::Gaussian)
        .map_or(0, |l| 2 * l.outputs());
    let first_gaussian = layers
        .iter()
        .position(|l| l.posterior() == Posterior::Gaussian);
    let scratch = layers
        .iter()
        .enumerate()
        .map(|(i, l)| match l.operation() {
            Operation::Linear if l.posterior() == Posterior::Gaussian => {
                let squares = match l.weights() {
                    Weights::Sparse { .. } if Some(i) != first_gaussian => l.inputs(),
                    _ => 0,
                };
                (l.outputs() + squares) * CHUNK
            }
            Operation::Conv2d(g) => g.output[1] * g.output[2] * CHUNK,
            _ => 0,
        })
        .max()
        .unwrap();
    prop_assert_eq!(
        tinybayes::Plan::new(model, CHUNK).workspace_len(),
        moments + 2 * width * CHUNK + scratch
    );
    Ok(())
}

/// Checks one engine result: either a typed error that the inputs make possible
/// (`NonFiniteLogits`; `NonFiniteInput` only if `non_finite_input`, i.e. u8 inputs whose
/// normalisation overflows), or a proper probability distribution.
fn check_prediction(
    model: &Model<'_>,
    result: Result<Prediction<K>, InferenceError>,
    samples: usize,
    non_finite_input: bool,
) -> Result<(), TestCaseError> {
    let p = match result {
        Ok(p) => p,
        Err(InferenceError::NonFiniteLogits) => return Ok(()),
        Err(InferenceError::NonFiniteInput) if non_finite_input => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
    };
    let classes = model.num_classes();
    prop_assert_eq!(p.probabilities.len(), classes);
    for &q in &p.probabilities {
        prop_assert!(
            q.is_finite() && (0.0..=1.0).contains(&q),
            "probability {}",
            q
        );
    }
    let sum: f32 = p.probabilities.iter().sum();
    prop_assert!((sum - 1.0).abs() <= 1e-4, "probabilities sum to {}", sum);
    prop_assert!(p.mutual_information.is_finite() && p.mutual_information >= 0.0);
    prop_assert!(p.predictive_entropy.is_finite() && p.predictive_entropy >= 0.0);
    prop_assert!(p.predictive_entropy <= (classes as f32).ln() + 1e-4);
    prop_assert!(p.expected_entropy.is_finite() && p.expected_entropy >= 0.0);
    prop_assert!(p.class < classes);
    prop_assert!(p
        .probabilities
        .iter()
        .all(|&q| q <= p.probabilities[p.class]));
    prop_assert_eq!(p.samples, samples);
    if samples == 1 {
        prop_assert_eq!(p.mutual_information, 0.0);
        prop_assert_eq!(p.expected_entropy, p.predictive_entropy);
    }
    Ok(())
}

/// Runs an accepted model in both modes on random finite f32 inputs and random u8 inputs, with
/// a workspace of exactly `workspace_len(CHUNK)` words.
fn exercise_engine(model: &Model<'_>, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let n = model.input_len();
    let gaussian = model
        .layers()
        .iter()
        .any(|l| l.posterior() == Posterior::Gaussian);
    let x: Vec<f32> = (0..n)
        .map(|_| match rng.next_u32() % 32 {
            0 => 0.0,
            1 => f32::MAX * (unit(&mut rng) as f32 - 0.5),
            _ => (unit(&mut rng) as f32 - 0.5) * 8.0,
        })
        .collect();
    let raw: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
    let (scale, offset) = model.input_normalization();
    let raw_overflows = raw
        .iter()
        .any(|&p| !(p as f32 * scale + offset).is_finite());
    let m = 1 + (rng.next_u32() % 8) as u16;
    let mut ws = vec![0.0f32; tinybayes::Plan::new(model, CHUNK).workspace_len()];
    let mut engine = match Engine::<CHUNK>::new(model, &mut ws) {
        Ok(engine) => engine,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "exact workspace refused: {e:?}"
            )))
        }
    };
    for (mode, samples) in [
        (Mode::MeanWeights, 1),
        (mc(m), if gaussian { m as usize } else { 1 }),
    ] {
        let r = engine.predict::<K>(&x, mode, &mut rng);
        check_prediction(model, r, samples, false)?;
        let r = engine.predict_u8::<K>(&raw, mode, &mut rng);
        check_prediction(model, r, samples, raw_overflows)?;
    }
    Ok(())
}

/// Parses `bytes` from an aligned copy; if accepted, checks the model and runs the engine.
fn parse_and_run(bytes: &[u8], seed: u64) -> Result<Result<(), ModelError>, TestCaseError> {
    let buffer = ModelBuffer::from_bytes(bytes);
    let result = match Model::from_bytes(buffer.as_bytes()) {
        Ok(model) => {
            check_model_invariants(&model)?;
            exercise_engine(&model, seed)?;
            Ok(())
        }
        Err(e) => Err(e),
    };
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// Fixed valid models to mutate, covering sparse/dense and deterministic/Gaussian layers.
static BASES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut deterministic = synthetic::mlp(5, &[10, 7, 6, 3], 0.4);
    for (i, l) in deterministic.layers.iter_mut().enumerate() {
        l.variance = None;
        l.storage = if i % 2 == 0 {
            StorageChoice::Sparse
        } else {
            StorageChoice::Dense
        };
    }
    vec![
        synthetic::mlp(7, &[16, 8, 3], 0.5).to_bytes().unwrap(),
        synthetic::mlp(11, &[12, 10, 6, 4], 1.0).to_bytes().unwrap(),
        deterministic.to_bytes().unwrap(),
        synthetic::mlp(3, &[2, 2], 1.0).to_bytes().unwrap(),
        gap_base(),
    ]
});

/// A Gaussian 3x3 convolution on a `[2, 5, 4]` input, ReLU, a global average pool (format
/// version 10) and a Gaussian linear layer to 3 classes.
fn gap_base() -> Vec<u8> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(19);
    let mut w = |n: usize| -> Vec<f32> { (0..n).map(|_| unit(&mut rng) as f32 - 0.5).collect() };
    let conv_theta = w(4 * 2 * 9);
    let linear_theta = w(3 * 4);
    let conv = LayerSpec {
        op: LayerOp::Conv2d {
            out_channels: 4,
            kernel: [3, 3],
            stride: 1,
            padding: 1,
        },
        inputs: 40,
        outputs: 80,
        activation: Activation::Relu,
        bias: vec![0.1, -0.1, 0.0, 0.2],
        variance: Some(conv_theta.iter().map(|t| 0.2 * t * t).collect()),
        theta: conv_theta,
        storage: StorageChoice::Sparse,
        dropout: None,
    };
    let linear = LayerSpec {
        op: LayerOp::Linear,
        inputs: 4,
        outputs: 3,
        activation: Activation::Identity,
        bias: vec![0.0; 3],
        variance: Some(linear_theta.iter().map(|t| 0.2 * t * t).collect()),
        theta: linear_theta,
        storage: StorageChoice::Dense,
        dropout: None,
    };
    ModelSpec {
        input_shape: [2, 5, 4],
        num_classes: 3,
        input_scale: 1.0 / 255.0,
        input_offset: 0.0,
        layers: vec![conv, LayerSpec::global_avg_pool([4, 5, 4]), linear],
        trained: None,
        channel_norm: None,
    }
    .to_bytes()
    .unwrap()
}

/// Values worth writing into a field or payload word.
#[derive(Clone, Debug)]
enum Value {
    /// The current value plus a small signed delta.
    Nudge(i8),
    /// A fixed interesting value.
    Fixed(u32),
    /// Any value.
    Any(u32),
}

fn value() -> impl Strategy<Value = Value> {
    let fixed = prop::sample::select(vec![
        0u32,
        1,
        2,
        3,
        4,
        0xff,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffc,
        0xffff_ffff,
        f32::NAN.to_bits(),
        f32::INFINITY.to_bits(),
        f32::NEG_INFINITY.to_bits(),
        (-1.0f32).to_bits(),
        (-0.0f32).to_bits(),
        3.0e38f32.to_bits(),
        (-3.0e38f32).to_bits(),
        f32::MIN_POSITIVE.to_bits(),
    ]);
    prop_oneof![
        any::<i8>().prop_map(Value::Nudge),
        fixed.prop_map(Value::Fixed),
        any::<u32>().prop_map(Value::Any),
    ]
}

/// One edit of a model file.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite one byte.
    Byte(Index, u8),
    /// Flip one bit.
    Flip(Index, u8),
    /// Keep only a prefix.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to `n` bytes.
    Remove(Index, usize),
    /// Set a header field.
    Header(Index, Value),
    /// Set a field of a layer record.
    Record(Index, Index, Value),
    /// Set an aligned word after the layer table (payload contents).
    Word(Index, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        3 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Header(i, v)),
        4 => (any::<Index>(), any::<Index>(), value())
            .prop_map(|(l, f, v)| Mutation::Record(l, f, v)),
        4 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Word(i, v)),
    ]
}

/// Writes the low `width` bytes of `value` (relative to the current field value) at `at`, if
/// the field lies inside `b`.
fn set_field(b: &mut [u8], at: usize, width: usize, value: &Value) {
    if at + width > b.len() {
        return;
    }
    let mut cur = [0u8; 4];
    cur[..width].copy_from_slice(&b[at..at + width]);
    let v = match *value {
        Value::Nudge(d) => u32::from_le_bytes(cur).wrapping_add(d as i32 as u32),
        Value::Fixed(v) | Value::Any(v) => v,
    };
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let len = b.len();
    match m {
        Mutation::Byte(i, v) if len > 0 => b[i.index(len)] = *v,
        Mutation::Flip(i, bit) if len > 0 => b[i.index(len)] ^= 1 << bit,
        Mutation::Truncate(i) => b.truncate(i.index(len + 1)),
        Mutation::Insert(i, v) => {
            let at = i.index(len + 1);
            b.splice(at..at, v.iter().copied());
        }
        Mutation::Remove(i, n) if len > 0 => {
            let at = i.index(len);
            b.drain(at..(at + n).min(len));
        }
        Mutation::Header(i, v) => {
            let (at, width) = HEADER_FIELDS[i.index(HEADER_FIELDS.len())];
            set_field(b, at, width, v);
        }
        Mutation::Record(l, f, v) if len >= HEADER_LEN => {
            let count = u16::from_le_bytes([b[LAYER_COUNT], b[LAYER_COUNT + 1]]).clamp(1, 32);
            let layer = l.index(count as usize);
            let (field, width) = RECORD_FIELDS[f.index(RECORD_FIELDS.len())];
            set_field(b, HEADER_LEN + layer * LAYER_RECORD_LEN + field, width, v);
        }
        Mutation::Word(i, v) if len >= HEADER_LEN + LAYER_RECORD_LEN + 8 => {
            let words = (len - HEADER_LEN - LAYER_RECORD_LEN) / 4;
            let at = HEADER_LEN + LAYER_RECORD_LEN + 4 * i.index(words);
            set_field(b, at, 4, v);
        }
        _ => {}
    }
}

/// What to fix up after mutating.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seal {
    /// Nothing: the original CRC (and declared length) stay.
    Keep,
    /// Recompute the CRC trailer.
    Crc,
    /// Set the declared length to the actual one, then recompute the CRC.
    LengthAndCrc,
}

fn seal(b: &mut [u8], how: Seal) {
    if how == Seal::LengthAndCrc && b.len() >= FILE_LEN + 4 {
        let len = b.len() as u32;
        b[FILE_LEN..FILE_LEN + 4].copy_from_slice(&len.to_le_bytes());
    }
    if how != Seal::Keep && b.len() >= TRAILER_LEN {
        let body = b.len() - TRAILER_LEN;
        let crc = CRC32.checksum(&b[..body]);
        b[body..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn seal_strategy() -> impl Strategy<Value = Seal> {
    prop_oneof![
        1 => Just(Seal::Keep),
        2 => Just(Seal::Crc),
        2 => Just(Seal::LengthAndCrc),
    ]
}

/// A layer record with small random values, for [`random_plausible_files_never_panic`]; the
/// flags make it consistent with its neighbours most of the time, so that the checks after
/// the first few are reached too.
#[derive(Clone, Debug)]
struct RawRecord {
    kind: u8,
    posterior: u8,
    activation: u8,
    inputs: u32,
    outputs: u32,
    nnz: usize,
    /// Take the inputs from the previous layer's outputs (or the input shape).
    chain: bool,
    /// Use a weight count the shape allows (all weights if dense, at most all if sparse).
    possible_nnz: bool,
    /// Place the payload right after the previous one (else at `offset`).
    contiguous: bool,
    offset: usize,
    /// Declare the length the shape implies (else `len`).
    implied_len: bool,
    len: usize,
}

fn code(max: u8) -> impl Strategy<Value = u8> {
    prop_oneof![9 => 0..=max, 1 => any::<u8>()]
}

fn raw_record() -> impl Strategy<Value = RawRecord> {
    (
        (1u8..=2, code(1), code(1), prop::bool::weighted(0.05)),
        (
            0u32..9,
            prop_oneof![19 => 1u32..9, 1 => Just(0u32)],
            0usize..70,
        ),
        (prop::bool::weighted(0.9), prop::bool::weighted(0.8)),
        (prop::bool::weighted(0.9), 0usize..2048),
        (prop::bool::weighted(0.9), 0usize..1024),
    )
        .prop_map(
            |(
                (kind, posterior, activation, bad_kind),
                (inputs, outputs, nnz),
                (chain, possible_nnz),
                (contiguous, offset),
                (implied_len, len),
            )| RawRecord {
                kind: if bad_kind { kind.wrapping_mul(3) } else { kind },
                posterior,
                activation,
                inputs,
                outputs,
                nnz,
                chain,
                possible_nnz,
                contiguous,
                offset,
                implied_len,
                len,
            },
        )
}

/// Header values for [`plausible_file`]: classes, input shape, whether to declare one layer
/// too many, whether to make the classes match the last layer.
fn plausible_header() -> impl Strategy<Value = (u16, [u16; 3], bool, bool)> {
    let dim = || prop_oneof![19 => 1u16..4, 1 => Just(0u16)];
    (
        0u16..6,
        [dim(), dim(), dim()],
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.8),
    )
}

/// Payload words: small integers (row pointers, index pairs), finite floats, or anything.
fn payload_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..16,
        (0u32..8, 0u32..8).prop_map(|(a, b)| a | (b << 16)),
        (-4.0f32..4.0).prop_map(f32::to_bits),
        any::<u32>(),
    ]
}

/// Builds a sealed file from the pieces of [`random_plausible_files_never_panic`].
fn plausible_file(
    header: (u16, [u16; 3], bool, bool),
    records: &[RawRecord],
    words: &[u32],
    exact: bool,
) -> Vec<u8> {
    let (classes, shape, lie_about_count, classes_match) = header;
    let count = if lie_about_count {
        records.len() as u16 + 1
    } else {
        records.len() as u16
    };
    let mut b = vec![0u8; HEADER_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&1u16.to_le_bytes());
    b[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    b[LAYER_COUNT..LAYER_COUNT + 2].copy_from_slice(&count.to_le_bytes());
    let last_outputs = records.last().map_or(0, |r| r.outputs as u16);
    let classes = if classes_match { last_outputs } else { classes };
    b[14..16].copy_from_slice(&classes.to_le_bytes());
    for (d, dim) in shape.iter().enumerate() {
        b[16 + 2 * d..18 + 2 * d].copy_from_slice(&dim.to_le_bytes());
    }
    b[24..28].copy_from_slice(&1.0f32.to_le_bytes());
    b[32..36].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    let table_end = HEADER_LEN + records.len() * LAYER_RECORD_LEN;
    let mut cursor = table_end;
    let mut previous = shape.iter().map(|&d| d as u32).product::<u32>();
    for r in records {
        let inputs = if r.chain { previous } else { r.inputs };
        let nnz = match (r.possible_nnz, r.kind) {
            (true, 1) => (inputs * r.outputs) as usize,
            (true, _) => r.nnz.min((inputs * r.outputs) as usize),
            (false, _) => r.nnz,
        };
        previous = r.outputs;
        let mut rec = [0u8; LAYER_RECORD_LEN];
        rec[..3].copy_from_slice(&[r.kind, r.posterior, r.activation]);
        let implied = match (r.kind, r.posterior) {
            (1 | 2, 0 | 1) => {
                let storage = if r.kind == 1 {
                    Storage::Dense
                } else {
                    Storage::Sparse
                };
                let posterior = if r.posterior == 0 {
                    Posterior::Deterministic
                } else {
                    Posterior::Gaussian
                };
                payload_len(storage, posterior, inputs as usize, r.outputs as usize, nnz)
            }
            _ => None,
        };
        let len = if r.implied_len {
            implied.unwrap_or(r.len)
        } else {
            r.len
        };
        let offset = if r.contiguous { cursor } else { r.offset };
        cursor += len;
        for (at, v) in [
            (4, inputs),
            (8, r.outputs),
            (12, nnz as u32),
            (16, offset as u32),
            (20, len as u32),
        ] {
            rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&rec);
    }
    let payload_bytes = if exact {
        cursor - table_end
    } else {
        4 * words.len()
    };
    for i in 0..payload_bytes / 4 {
        let w = if words.is_empty() {
            0
        } else {
            words[i % words.len()]
        };
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&[0; TRAILER_LEN]);
    seal(&mut b, Seal::LengthAndCrc);
    b
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    /// Random byte strings (aligned copies) never make the reader panic: anything shorter than
    /// header + trailer is `TooShort`, anything without the magic is `BadMagic`.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let buffer = ModelBuffer::from_bytes(&bytes);
        let got = Model::from_bytes(buffer.as_bytes()).map(|_| ());
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            prop_assert_eq!(got, Err(ModelError::TooShort { len: bytes.len() }));
        } else if bytes[..4] != MAGIC {
            prop_assert_eq!(got, Err(ModelError::BadMagic));
        } else {
            prop_assert!(got.is_err());
        }
    }

    /// Plausible-looking files built from scratch: valid magic, version, header length,
    /// declared length and CRC; small random header values; records with small random codes,
    /// sizes and weight counts, payloads placed back to back (or not) with the implied lengths
    /// (or not), filled with small integers, finite floats or random words. Reaches every
    /// structural check; never a panic, and whatever is accepted is a sound model that runs.
    #[test]
    fn random_plausible_files_never_panic(
        header in plausible_header(),
        records in prop::collection::vec(raw_record(), 1..4),
        words in prop::collection::vec(payload_word(), 0..512),
        exact in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let b = plausible_file(header, &records, &words, exact);
        let got = parse_and_run(&b, seed)?;
        let framing = matches!(
            got,
            Err(ModelError::CrcMismatch { .. }
                | ModelError::LengthMismatch { .. }
                | ModelError::BadMagic
                | ModelError::TooShort { .. })
        );
        prop_assert!(!framing, "refused by a framing check: {:?}", got);
    }

    /// Mutated fixed models, with the original CRC or a recomputed one (and declared length):
    /// the reader never panics; with the original CRC any changed file is refused; whatever
    /// is accepted is a sound model that runs in both modes, on f32 and u8 inputs.
    #[test]
    fn mutated_models_never_panic(
        base in 0..BASES.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
        how in seal_strategy(),
        seed in any::<u64>(),
    ) {
        let original = &BASES[base];
        let mut b = original.clone();
        for m in &mutations {
            apply(&mut b, m);
        }
        seal(&mut b, how);
        let got = parse_and_run(&b, seed)?;
        if how == Seal::Keep && b != *original {
            prop_assert!(got.is_err(), "a changed file passed the original CRC");
        }
        if b == *original {
            prop_assert_eq!(got, Ok(()));
        }
    }

    /// Random valid specs, then mutated the same way: same properties, over many layouts.
    #[test]
    fn mutated_random_models_never_panic(
        spec in spec_strategy(),
        mutations in prop::collection::vec(mutation(), 1..4),
        how in seal_strategy(),
        seed in any::<u64>(),
    ) {
        let original = spec.to_bytes().unwrap();
        let mut b = original.clone();
        for m in &mutations {
            apply(&mut b, m);
        }
        seal(&mut b, how);
        let got = parse_and_run(&b, seed)?;
        if how == Seal::Keep && b != original {
            prop_assert!(got.is_err(), "a changed file passed the original CRC");
        }
    }

    /// Random valid specs round-trip: the writer's file validates, and the reader reports the
    /// shapes, codes, storage, weight counts, biases and parameters the writer was given, at
    /// the file length the format implies; the model then runs.
    #[test]
    fn random_specs_round_trip(spec in spec_strategy(), seed in any::<u64>()) {
        let buffer = spec.to_buffer().expect("valid spec");
        let bytes = buffer.as_bytes();
        let model = buffer.model().expect("the writer's output validates");
        check_model_invariants(&model)?;
        prop_assert_eq!(model.input_shape(), spec.input_shape);
        prop_assert_eq!(model.num_classes(), spec.num_classes);
        let (scale, offset) = model.input_normalization();
        prop_assert_eq!(scale.to_bits(), spec.input_scale.to_bits());
        prop_assert_eq!(offset.to_bits(), spec.input_offset.to_bits());
        prop_assert_eq!(model.layers().len(), spec.layers.len());
        let mut file_len = HEADER_LEN + spec.layers.len() * LAYER_RECORD_LEN + TRAILER_LEN;
        for (index, (layer, l)) in model.layers().iter().zip(&spec.layers).enumerate() {
            prop_assert_eq!(layer.inputs(), l.inputs, "layer {}", index);
            prop_assert_eq!(layer.outputs(), l.outputs);
            prop_assert_eq!(layer.activation(), l.activation);
            let posterior = if l.variance.is_some() {
                Posterior::Gaussian
            } else {
                Posterior::Deterministic
            };
            prop_assert_eq!(layer.posterior(), posterior);
            let storage = l.resolved_storage();
            prop_assert_eq!(layer.storage(), storage);
            match l.storage {
                StorageChoice::Dense => prop_assert_eq!(storage, Storage::Dense),
                StorageChoice::Sparse => prop_assert_eq!(storage, Storage::Sparse),
                StorageChoice::SparseByInput => prop_assert_eq!(storage, Storage::SparseByInput),
                StorageChoice::Smallest => {}
            }
            // Weights stored: every one when dense; when sparse, those with a non-zero mean
            // or variance (counted here, independently of the writer).
            let n = l.inputs * l.outputs;
            let kept = (0..n)
                .filter(|&k| {
                    l.theta[k] != 0.0 || l.variance.as_ref().is_some_and(|v| v[k] != 0.0)
                })
                .count();
            let nnz = if storage == Storage::Dense { n } else { kept };
            prop_assert_eq!(layer.nnz(), nnz);
            let len = payload_len(storage, posterior, l.inputs, l.outputs, nnz).unwrap();
            if l.storage == StorageChoice::Smallest {
                let other = match storage {
                    Storage::Dense => payload_len(Storage::Sparse, posterior, l.inputs, l.outputs, kept),
                    Storage::Sparse | Storage::SparseByInput => {
                        payload_len(Storage::Dense, posterior, l.inputs, l.outputs, n)
                    }
                };
                prop_assert!(len <= other.unwrap(), "Smallest chose the larger storage");
            }
            file_len += len;
            let bias: Vec<u32> = layer.bias().iter().map(|b| b.to_bits()).collect();
            let expected: Vec<u32> = l.bias.iter().map(|b| b.to_bits()).collect();
            prop_assert_eq!(bias, expected);
            let (theta, var) = dense_params(layer);
            prop_assert_eq!(&theta, &l.theta);
            let zeros = vec![0.0f32; n];
            prop_assert_eq!(&var, l.variance.as_ref().unwrap_or(&zeros));
        }
        prop_assert_eq!(bytes.len(), file_len);
        prop_assert_eq!(u32_at(bytes, FILE_LEN) as usize, file_len);
        exercise_engine(&model, seed)?;
    }
}
