//! Helpers shared by the fixed-point integration tests: running a model of either format
//! with a seeded generator, and editing model files.
#![allow(dead_code)]

use core::num::NonZeroU16;

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::writer::{QLayerSpec, QModelSpec};
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::{self, Activation, Precision, CRC32, TRAILER_LEN};
use tinybayes::numeric::FixedPoint;
use tinybayes::writer::LayerOp;
use tinybayes::writer::{ModelBuffer, ModelSpec};
use tinybayes::{Engine, InferenceError, Mode, Model, ModelError, Prediction, Q16, Q8};

/// Monte Carlo with `samples` samples.
pub fn mc(samples: u16) -> Mode {
    Mode::MonteCarlo {
        samples: NonZeroU16::new(samples).unwrap(),
    }
}

/// What a fixed-point model reads: unsigned bytes or signed codes.
#[derive(Clone, Copy)]
pub enum FixedInput<'a> {
    /// `Engine::predict_u8`.
    Bytes(&'a [u8]),
    /// `Engine::predict_i8`.
    Codes(&'a [i8]),
}

/// One prediction of a q8 or q16 model with `CHUNK` samples per pass, the generator seeded
/// with `seed`, from either kind of input (the engine's error, if any).
pub fn try_run_fixed<const CHUNK: usize>(
    model: &QModel<'_>,
    input: FixedInput<'_>,
    mode: Mode,
    seed: u64,
) -> Result<QPrediction<8>, InferenceError> {
    fn typed<const CHUNK: usize, N: FixedPoint>(
        model: &QModel<'_>,
        input: FixedInput<'_>,
        mode: Mode,
        seed: u64,
    ) -> Result<QPrediction<8>, InferenceError> {
        let mut ws = vec![0u64; model.workspace_len(CHUNK)];
        let mut engine = Engine::<CHUNK, N>::new(model, &mut ws).unwrap();
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
        match input {
            FixedInput::Bytes(raw) => engine.predict_u8(raw, mode, &mut rng),
            FixedInput::Codes(codes) => engine.predict_i8(codes, mode, &mut rng),
        }
    }
    match model.precision() {
        Precision::Q16 => typed::<CHUNK, Q16>(model, input, mode, seed),
        _ => typed::<CHUNK, Q8>(model, input, mode, seed),
    }
}

/// [`try_run_fixed`] from raw bytes, which must succeed.
pub fn run_fixed<const CHUNK: usize>(
    model: &QModel<'_>,
    raw: &[u8],
    mode: Mode,
    seed: u64,
) -> QPrediction<8> {
    try_run_fixed::<CHUNK>(model, FixedInput::Bytes(raw), mode, seed).unwrap()
}

pub fn run_f32(spec: &ModelSpec, raw: &[u8], mode: Mode, seed: u64) -> Prediction<8> {
    let buffer = spec.to_buffer().unwrap();
    let model = Model::from_bytes(buffer.as_bytes()).unwrap();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    engine.predict_u8(raw, mode, &mut rng).unwrap()
}

/// The mean-weights prediction of `model` (written from `spec`) on `raw` has exactly the
/// probabilities and entropy of [`reference_logits`] through the Q16 softmax.
pub fn assert_mean_weights_match_reference(
    spec: &QModelSpec,
    model: &QModel<'_>,
    raw: &[u8],
    what: &str,
) {
    let got = run_fixed::<4>(model, raw, Mode::MeanWeights, 0);
    let logits = reference_logits(spec, raw);
    let mut p = vec![0u32; logits.len()];
    let h = tinybayes::fixed::softmax_q16(&logits, &mut p);
    let got_p: Vec<u32> = got.probabilities.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got_p, p, "{what}");
    assert_eq!(got.expected_entropy.to_bits(), h, "{what}");
}

/// Rewrites the CRC (and nothing else) so that structural checks are what gets exercised.
pub fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - TRAILER_LEN;
    let crc = CRC32.checksum(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the bytes are a valid fixed-point model.
pub fn parse_fixed(bytes: &[u8]) -> Result<(), ModelError> {
    let buffer = ModelBuffer::from_bytes(bytes);
    let direct = QModel::from_bytes(buffer.as_bytes()).map(|m| format!("{m:?}"));
    // The in-place entry point gives the same model or the same error.
    let mut slot = core::mem::MaybeUninit::uninit();
    let in_place = QModel::from_bytes_into(buffer.as_bytes(), &mut slot).map(|m| format!("{m:?}"));
    assert_eq!(direct, in_place, "from_bytes and from_bytes_into disagree");
    direct.map(|_| ())
}

/// Mean-weights logits by the documented formulas over the dense arrays, in i128, written
/// independently of the kernels: per output unit the sum over every kernel position inside
/// the input, max pooling as the window maximum, global average pooling as each channel's
/// rounded integer mean.
pub fn reference_logits(spec: &QModelSpec, raw: &[u8]) -> Vec<i32> {
    reference_exit_logits(spec, raw).pop().unwrap()
}

/// [`reference_logits`] of every exit, in order (a plain network's one exit is its last
/// layer): residual additions as `clamp(cur + (a m + 2^(S-1)) >> S, 0, act_max)`, an exit head
/// over the rounded integer mean of each channel.
pub fn reference_exit_logits(spec: &QModelSpec, raw: &[u8]) -> Vec<Vec<i32>> {
    let mut exits = Vec::new();
    let mut outputs: Vec<Vec<i128>> = Vec::new();
    let act_max: i128 = if spec.precision == Precision::Q8 {
        255
    } else {
        32767
    };
    let mut x: Vec<i128> = raw.iter().map(|&p| p as i128).collect();
    let mut shape = spec.input_shape;
    let finish = |a: i128, p: [i32; 3], l: &QLayerSpec| {
        let (shift, act) = (l.shift, l.activation);
        let z = a * p[0] as i128 + ((p[2] as i128) << l.bias_shift);
        let v = (z + (1i128 << (shift - 1))) >> shift;
        match act {
            Activation::Relu => v.clamp(0, act_max),
            Activation::Identity => v.clamp(i32::MIN as i128, i32::MAX as i128),
        }
    };
    for l in &spec.layers {
        let [c, h, w] = shape;
        let mut y = vec![0i128; l.outputs];
        match l.op {
            LayerOp::Linear => {
                for (j, out) in y.iter_mut().enumerate() {
                    let a: i128 = (0..l.inputs)
                        .map(|i| x[i] * l.theta[j * l.inputs + i] as i128)
                        .sum();
                    *out = finish(a, l.params[j], l);
                }
                shape = [l.outputs, 1, 1];
            }
            LayerOp::Conv2d {
                out_channels,
                kernel: [kh, kw],
                stride,
                padding,
            } => {
                let oh = format::window_output(h, kh, stride, padding).unwrap();
                let ow = format::window_output(w, kw, stride, padding).unwrap();
                for co in 0..out_channels {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut a = 0i128;
                            for ci in 0..c {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy * stride + ky) as i64 - padding as i64;
                                        let ix = (ox * stride + kx) as i64 - padding as i64;
                                        if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                            continue;
                                        }
                                        let xi = x[(ci * h + iy as usize) * w + ix as usize];
                                        let t = l.theta[((co * c + ci) * kh + ky) * kw + kx];
                                        a += xi * t as i128;
                                    }
                                }
                            }
                            y[(co * oh + oy) * ow + ox] = finish(a, l.params[co], l);
                        }
                    }
                }
                shape = [out_channels, oh, ow];
            }
            LayerOp::MaxPool { window, stride } => {
                let oh = format::window_output(h, window[0], stride, 0).unwrap();
                let ow = format::window_output(w, window[1], stride, 0).unwrap();
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut best = i128::MIN;
                            for ky in 0..window[0] {
                                for kx in 0..window[1] {
                                    let i = (ch * h + oy * stride + ky) * w + ox * stride + kx;
                                    best = best.max(x[i]);
                                }
                            }
                            y[(ch * oh + oy) * ow + ox] = best;
                        }
                    }
                }
                shape = [c, oh, ow];
            }
            LayerOp::GlobalAvgPool => {
                // Per channel the rounded integer mean, as an exit head pools.
                let area = (h * w) as i128;
                for (ch, out) in y.iter_mut().enumerate() {
                    let sum: i128 = x[ch * h * w..(ch + 1) * h * w].iter().sum();
                    *out = (sum + area / 2) / area;
                }
                shape = [c, 1, 1];
            }
            LayerOp::ResidualAdd { source } => {
                let m = l.params[0][0] as i128;
                let half = 1i128 << (l.shift - 1);
                for (i, out) in y.iter_mut().enumerate() {
                    let skip = (outputs[source][i] * m + half) >> l.shift;
                    *out = (x[i] + skip).clamp(0, act_max);
                }
            }
            LayerOp::ExitHead { .. } => {
                let area = (h * w) as i128;
                let pooled: Vec<i128> = (0..c)
                    .map(|ch| {
                        let sum: i128 = x[ch * h * w..(ch + 1) * h * w].iter().sum();
                        (sum + area / 2) / area
                    })
                    .collect();
                let logits = (0..l.outputs)
                    .map(|j| {
                        let a: i128 = (0..l.inputs)
                            .map(|i| pooled[i] * l.theta[j * l.inputs + i] as i128)
                            .sum();
                        finish(a, l.params[j], l) as i32
                    })
                    .collect();
                exits.push(logits);
                // The main path continues with the map the head read.
                outputs.push(x.clone());
                continue;
            }
        }
        outputs.push(y.clone());
        x = y;
    }
    if exits.is_empty() {
        exits.push(x.into_iter().map(|v| v as i32).collect());
    }
    exits
}
