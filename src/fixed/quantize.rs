//! The quantizer (feature `alloc`): turns an f32 [`ModelSpec`] of any layer kind (linear
//! layers, convolutions, max and global average pooling, residual additions, exit heads) into a fixed-point
//! [`QModelSpec`], with activation scales calibrated on raw inputs.
//!
//! Per output row `j` (per output channel of a convolution, over its taps) of a layer with
//! input scale `s_in` (the model's input scale for the first layer, the previous layer's
//! activation scale after) and output scale `s_out`:
//! - `sθ_j = max_i |θ_ij| / θ_max` and `θq = round(θ / sθ_j)` (θ_max = 127 or 32767);
//! - `s2_j = max_i σ²_ij / σ²_max` and `σ²q = round(σ² / s2_j)` (σ²_max = 255, or less when
//!   the layer's fan-in needs it to keep the q8 variance sum in an int32; 65535 for q16);
//! - `mθ = round(sθ_j s_in / s_out 2^S)`, `b = round(bias / s_out 2^(S-B))`,
//!   `mσ = round(s_in sqrt(s2_j 2^SQ) / s_out 2^S)` with SQ = 1 for q8 (whose variance sums
//!   use `a^2 >> 1`) and 0 for q16; `S` is the largest shift that keeps all three in an i32,
//!   unless the bias is what bounds it: then `S` grows until the multipliers fill their i32
//!   and the bias shift `B` keeps the bias in an i32 (see `row_shifts`).
//!
//! Activation scales: `s_out = c / act_max`, where `c` is the `clip_quantile` quantile of
//! the layer's f32 outputs over the calibration inputs, with the posterior mean and with
//! `mc_samples` Monte Carlo samples each (larger outputs saturate); a layer that is zero on
//! every calibration input keeps its input's scale. The logits use Q16. In a residual graph
//! the identity layer before an addition gives its sums in the addition's scale, the skip is
//! rescaled by an integer `m / 2^S` from its source's scale, and exit heads read the map's
//! scale.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;

use super::writer::{QLayerSpec, QModelSpec};
use crate::format::window_output;
use crate::format::{self, Activation, ChannelNorm, Precision, LOGIT_FRAC_BITS};
use crate::normal::standard_normal;
use crate::writer::{LayerOp, LayerSpec, ModelSpec, StorageChoice};

/// Calibration settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Quantile of the activations mapped to the largest integer (e.g. 0.9999).
    pub clip_quantile: f64,
    /// Monte Carlo samples per calibration input (besides the mean-weights pass).
    pub mc_samples: usize,
    /// Seed of the calibration noise.
    pub seed: u64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            clip_quantile: 0.9999,
            mc_samples: 4,
            seed: 0x7b,
        }
    }
}

/// Why a model cannot be quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantizeError {
    /// Linear layers and convolutions (ReLU hidden; identity last or before a residual
    /// addition), max and global average pooling (not last), residual additions (ReLU, after an identity layer)
    /// and exit heads have a fixed-point form; other arrangements do not.
    UnsupportedLayer {
        /// Index of the layer.
        layer: usize,
    },
    /// The input offset must be 0 (raw inputs are read unshifted) and the scale positive.
    InputNormalization,
    /// The calibration set is empty or its inputs have the wrong length.
    Calibration,
    /// A row's parameters cannot be represented (non-finite, or no shift fits them).
    Range {
        /// Index of the layer.
        layer: usize,
    },
    /// The precision is not a fixed-point one.
    Precision,
    /// A per-channel input normalisation has a non-zero offset. Only scales fold into the
    /// integer first layer, which reads raw bytes: an offset would move zero bytes off zero
    /// (breaking the zero skipping of by-input first layers), shift padded and unpadded
    /// convolution positions differently, be masked per sample by input dropout, and need
    /// the cross term `2 s o Σ σ² p` in the variance sum, which the kernels do not keep.
    ChannelOffsets {
        /// The first channel with a non-zero offset.
        channel: usize,
    },
    /// The per-channel normalisation does not have one pair per input channel.
    ChannelNormLength,
}

impl fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantizeError::UnsupportedLayer { layer } => write!(
                f,
                "layer {layer} has no fixed-point form (linear and convolution layers are ReLU, or identity when last or before a residual addition; max and global average pooling are not last; a residual addition is ReLU after an identity layer)"
            ),
            QuantizeError::InputNormalization => {
                f.write_str("fixed point needs an input offset of 0 and a positive input scale")
            }
            QuantizeError::Calibration => {
                f.write_str("calibration inputs are missing or have the wrong length")
            }
            QuantizeError::Range { layer } => {
                write!(f, "layer {layer}: parameters out of the fixed-point range")
            }
            QuantizeError::Precision => f.write_str("precision must be q8 or q16"),
            QuantizeError::ChannelOffsets { channel } => write!(
                f,
                "input channel {channel} has a non-zero normalisation offset: fixed point needs zero input offsets (only per-channel scales fold into the first layer); train with normalize = \"scale\""
            ),
            QuantizeError::ChannelNormLength => f.write_str(
                "the per-channel input normalisation needs one pair per input channel",
            ),
        }
    }
}

impl core::error::Error for QuantizeError {}

/// The shape each layer of `spec` reads, or the first layer without a fixed-point form:
/// linear layers and convolutions (ReLU hidden; identity last, or before a residual
/// addition), max and global average pooling (not last), residual additions (ReLU, after an identity layer) and
/// exit heads.
fn layer_shapes(spec: &ModelSpec) -> Result<Vec<[usize; 3]>, QuantizeError> {
    let n_layers = spec.layers.len();
    let mut shape = spec.input_shape;
    let mut shapes = Vec::with_capacity(n_layers);
    for (i, l) in spec.layers.iter().enumerate() {
        let last = i + 1 == n_layers;
        let next_is_residual = matches!(
            spec.layers.get(i + 1).map(|n| n.op),
            Some(LayerOp::ResidualAdd { .. })
        );
        let weighted_activation = if last || next_is_residual {
            Activation::Identity
        } else {
            Activation::Relu
        };
        let unsupported = || QuantizeError::UnsupportedLayer { layer: i };
        shapes.push(shape);
        shape = match l.op {
            LayerOp::Linear if l.activation == weighted_activation => [l.outputs, 1, 1],
            LayerOp::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
            } if l.activation == weighted_activation => {
                let h =
                    window_output(shape[1], kernel[0], stride, padding).ok_or_else(unsupported)?;
                let w =
                    window_output(shape[2], kernel[1], stride, padding).ok_or_else(unsupported)?;
                [out_channels, h, w]
            }
            LayerOp::MaxPool { window, stride } if !last => {
                let h = window_output(shape[1], window[0], stride, 0).ok_or_else(unsupported)?;
                let w = window_output(shape[2], window[1], stride, 0).ok_or_else(unsupported)?;
                [shape[0], h, w]
            }
            LayerOp::GlobalAvgPool if !last => [shape[0], 1, 1],
            LayerOp::ResidualAdd { .. } if l.activation == Activation::Relu && i > 0 => {
                let before = &spec.layers[i - 1];
                let weighted = matches!(before.op, LayerOp::Linear | LayerOp::Conv2d { .. });
                if !weighted || before.activation != Activation::Identity {
                    return Err(unsupported());
                }
                shape
            }
            LayerOp::ExitHead { .. } if l.activation == Activation::Identity => shape,
            _ => return Err(unsupported()),
        };
    }
    Ok(shapes)
}

/// The output lines of a weight layer (output rows, or output channels of a convolution)
/// and the weights of each line (consecutive in the dense θ): the fan-in that bounds its
/// sums.
fn lines(l: &LayerSpec, shape: [usize; 3]) -> (usize, usize) {
    match l.op {
        LayerOp::Conv2d {
            out_channels,
            kernel,
            ..
        } => (out_channels, shape[0] * kernel[0] * kernel[1]),
        _ => (l.outputs, l.inputs),
    }
}

/// Quantizes `spec` to `precision`, calibrating activation scales on `inputs` (raw 8-bit
/// inputs of the model's input length). Linear layers, convolutions, max and global average
/// pooling have a fixed-point form; pooling keeps its input's scale.
pub fn quantize(
    spec: &ModelSpec,
    precision: Precision,
    inputs: &[&[u8]],
    calibration: Calibration,
) -> Result<QModelSpec, QuantizeError> {
    match spec.channel_norm.as_deref() {
        Some(table) => quantize_channel_norm(spec, table, precision, inputs, calibration),
        None => quantize_inputs(spec, precision, inputs, calibration),
    }
}

/// [`quantize`] for a model whose device input is signed: the quantized first layer reads
/// signed 8-bit codes `q` (format version 10, [`crate::format::InputCoding::Signed`]) whose
/// raw value, in the units of the f32 model's input (before its normalisation), is
/// `q * step`. The spec's normalisation (per channel, or the header pair) must have zero
/// offsets; each channel's `step * scale_c` folds into the first layer, which must be a linear
/// layer or a convolution. `codes` are the calibration inputs as codes
/// ([`crate::format::InputCoding::signed_code`] of raw values).
pub fn quantize_signed(
    spec: &ModelSpec,
    precision: Precision,
    codes: &[&[i8]],
    step: f32,
    calibration: Calibration,
) -> Result<QModelSpec, QuantizeError> {
    if !(step.is_finite() && step > 0.0) {
        return Err(QuantizeError::InputNormalization);
    }
    let channels = spec.input_shape[0];
    let table = match spec.channel_norm.as_deref() {
        Some(table) if table.len() != channels => return Err(QuantizeError::ChannelNormLength),
        Some(table) => table.to_vec(),
        None => vec![
            ChannelNorm {
                scale: spec.input_scale,
                offset: spec.input_offset,
            };
            channels
        ],
    };
    let scales = code_scales(&table, step)?;
    let mut folded = spec.clone();
    fold_input_scales(&mut folded, &scales)?;
    let mut q = quantize_inputs(&folded, precision, codes, calibration)?;
    q.channel_norm = Some(table);
    q.input_step = Some(step);
    Ok(q)
}

/// An element type of calibration inputs: what the quantized first layer reads (sealed by
/// being private).
trait Code: Copy + Into<f32> {
    /// The largest magnitude of a value: what bounds the first layer's sums.
    const MAGNITUDE: f64;
}

impl Code for u8 {
    const MAGNITUDE: f64 = 255.0;
}

impl Code for i8 {
    const MAGNITUDE: f64 = 128.0;
}

/// The scale of one signed code in each channel's normalised units, `step * scale_c`: the
/// table's offsets must be zero (a code of 0 is the value 0) and the products finite and
/// non-zero.
fn code_scales(table: &[ChannelNorm], step: f32) -> Result<Vec<f32>, QuantizeError> {
    if let Some(channel) = table.iter().position(|n| n.offset != 0.0) {
        return Err(QuantizeError::ChannelOffsets { channel });
    }
    let scales: Vec<f32> = table.iter().map(|n| n.scale * step).collect();
    if scales.iter().any(|s| !s.is_finite() || *s == 0.0) {
        return Err(QuantizeError::InputNormalization);
    }
    Ok(scales)
}

/// The quantization of a spec whose normalisation is the header's pair (no per-channel
/// table), calibrated on `inputs`.
fn quantize_inputs<T: Code>(
    spec: &ModelSpec,
    precision: Precision,
    inputs: &[&[T]],
    calibration: Calibration,
) -> Result<QModelSpec, QuantizeError> {
    let (theta_max, act_max, sq_shift) = match precision {
        Precision::Q8 => (127.0, 255.0, 1),
        Precision::Q16 => (32767.0, 32767.0, 0),
        Precision::F32 => return Err(QuantizeError::Precision),
    };
    let scale_ok = spec.input_scale.is_finite() && spec.input_scale > 0.0;
    if spec.input_offset != 0.0 || !scale_ok {
        return Err(QuantizeError::InputNormalization);
    }
    let shapes = layer_shapes(spec)?;
    let n_layers = spec.layers.len();
    let input_len: usize = spec.input_shape.iter().product();
    if inputs.is_empty() || inputs.iter().any(|x| x.len() != input_len) {
        return Err(QuantizeError::Calibration);
    }
    let clips = calibrate(spec, &shapes, inputs, calibration);
    let format = Format {
        precision,
        theta_max,
        sq_shift,
    };

    let logit_scale = 1.0 / (1u64 << LOGIT_FRAC_BITS) as f64;
    let mut layers = Vec::with_capacity(n_layers);
    // The scale of each layer's output map (an exit head passes its input's through).
    let mut scales = Vec::with_capacity(n_layers);
    let mut s_in = spec.input_scale as f64;
    for (index, l) in spec.layers.iter().enumerate() {
        let last = index + 1 == n_layers;
        // The largest input magnitude: a raw byte or code for the first layer, else an
        // activation.
        let a_max = if index == 0 { T::MAGNITUDE } else { act_max };
        let q = match l.op {
            // Pooling keeps its input's scale: the maximum, or the rounded mean, of
            // activations in that scale.
            LayerOp::MaxPool { .. } | LayerOp::GlobalAvgPool => QLayerSpec {
                op: l.op,
                inputs: l.inputs,
                outputs: l.outputs,
                activation: Activation::Identity,
                shift: 0,
                bias_shift: 0,
                params: Vec::new(),
                theta: Vec::new(),
                sigma2: None,
                storage: StorageChoice::Dense,
                drop_threshold: None,
            },
            LayerOp::ResidualAdd { source } => {
                let s_out = output_scale(clips[index], act_max, s_in);
                let (multiplier, shift) = skip_rescale(scales[source] / s_out, act_max)
                    .ok_or(QuantizeError::Range { layer: index })?;
                s_in = s_out;
                QLayerSpec {
                    op: l.op,
                    inputs: l.inputs,
                    outputs: l.outputs,
                    activation: Activation::Relu,
                    shift,
                    bias_shift: 0,
                    params: vec![[multiplier, 0, 0]],
                    theta: Vec::new(),
                    sigma2: None,
                    storage: StorageChoice::Dense,
                    drop_threshold: None,
                }
            }
            LayerOp::ExitHead { .. } => {
                let mut q = format.weights(l, index, shapes[index], (s_in, a_max), logit_scale)?;
                q.storage = StorageChoice::Dense;
                q
            }
            LayerOp::Linear | LayerOp::Conv2d { .. } => {
                // An identity layer before a residual addition gives its sums in the
                // addition's scale.
                let s_out = match spec.layers.get(index + 1).map(|n| n.op) {
                    _ if last => logit_scale,
                    Some(LayerOp::ResidualAdd { .. }) => {
                        output_scale(clips[index + 1], act_max, s_in)
                    }
                    _ => output_scale(clips[index], act_max, s_in),
                };
                let mut q = format.weights(l, index, shapes[index], (s_in, a_max), s_out)?;
                // A Bernoulli layer runs per sample by rows (the integer kernels sample rows
                // only), even first.
                q.storage = match l.storage {
                    StorageChoice::SparseByInput if index == 0 && l.dropout.is_none() => {
                        StorageChoice::SparseByInput
                    }
                    StorageChoice::Dense => StorageChoice::Dense,
                    _ => StorageChoice::Smallest,
                };
                s_in = s_out;
                q
            }
        };
        layers.push(q);
        scales.push(s_in);
    }
    Ok(QModelSpec {
        precision,
        input_shape: spec.input_shape,
        num_classes: spec.num_classes,
        input_scale: spec.input_scale,
        input_offset: spec.input_offset,
        layers,
        trained: spec.trained,
        channel_norm: None,
        input_step: None,
    })
}

/// [`quantize`] of a spec with a per-channel normalisation table. One pair for every channel
/// is the global normalisation. Otherwise the offsets must be zero, and each channel's scale
/// `s_c` folds into the first layer exactly: its weights on channel `c` become `θ s_c` and
/// their variances `σ² s_c²`, since `θ (s_c p) = (θ s_c) p` and
/// `σ² (s_c p)² = (σ² s_c²) p²`; the folded network reads raw bytes at scale 1 and is
/// quantized as any other. The result keeps the table for reference.
fn quantize_channel_norm(
    spec: &ModelSpec,
    table: &[ChannelNorm],
    precision: Precision,
    inputs: &[&[u8]],
    calibration: Calibration,
) -> Result<QModelSpec, QuantizeError> {
    if table.len() != spec.input_shape[0] {
        return Err(QuantizeError::ChannelNormLength);
    }
    let mut folded = spec.clone();
    folded.channel_norm = None;
    if let Some(n) = format::uniform_norm(table) {
        folded.input_scale = n.scale;
        folded.input_offset = n.offset;
        return quantize_inputs(&folded, precision, inputs, calibration);
    }
    let scales = code_scales(table, 1.0)?;
    fold_input_scales(&mut folded, &scales)?;
    let mut q = quantize_inputs(&folded, precision, inputs, calibration)?;
    q.channel_norm = Some(table.to_vec());
    Ok(q)
}

/// Folds a per-channel scale of the input into the first layer of `folded` (which must be
/// linear or a convolution): its weights on channel `c` become `θ s_c` and their variances
/// `σ² s_c²`, since `θ (s_c p) = (θ s_c) p` and `σ² (s_c p)² = (σ² s_c²) p²`; the result
/// reads raw values at scale 1, without a normalisation table.
fn fold_input_scales(folded: &mut ModelSpec, scales: &[f32]) -> Result<(), QuantizeError> {
    let [channels, height, width] = folded.input_shape;
    if scales.len() != channels {
        return Err(QuantizeError::ChannelNormLength);
    }
    folded.channel_norm = None;
    folded.input_scale = 1.0;
    folded.input_offset = 0.0;
    let first = folded
        .layers
        .first_mut()
        .ok_or(QuantizeError::UnsupportedLayer { layer: 0 })?;
    // The input channel each weight of the first layer reads.
    // Linear: θ is `[outputs][inputs]`, input `i` in channel `i / (H W)`; convolution: θ is
    // `[out][in][kh][kw]`.
    let (row, per_channel) = match first.op {
        LayerOp::Linear => (first.inputs, height * width),
        LayerOp::Conv2d { kernel, .. } => (channels * kernel[0] * kernel[1], kernel[0] * kernel[1]),
        _ => return Err(QuantizeError::UnsupportedLayer { layer: 0 }),
    };
    let channel_of = |k: usize| (k % row) / per_channel;
    for (k, t) in first.theta.iter_mut().enumerate() {
        *t *= scales[channel_of(k)];
    }
    if let Some(variance) = first.variance.as_mut() {
        for (k, v) in variance.iter_mut().enumerate() {
            let s = scales[channel_of(k)];
            *v *= s * s;
        }
    }
    Ok(())
}

/// The ranges of a fixed-point format.
struct Format {
    precision: Precision,
    theta_max: f64,
    /// Bits the variance sums drop from the squared activations (1 for q8).
    sq_shift: u32,
}

impl Format {
    /// A weight layer (linear, convolution or exit head) quantized between the scales
    /// `s_in` and `s_out` (see the module documentation); its storage is left for the caller.
    fn weights(
        &self,
        l: &LayerSpec,
        index: usize,
        shape: [usize; 3],
        (s_in, a_in_max): (f64, f64),
        s_out: f64,
    ) -> Result<QLayerSpec, QuantizeError> {
        let (n_lines, fan_in) = lines(l, shape);
        let s2_cap = match self.precision {
            Precision::Q8 => {
                let bound = i32::MAX as f64 / (super::model::Q8_MAX_SQUARE as f64 * fan_in as f64);
                bound.floor().min(255.0)
            }
            _ => 65535.0,
        };
        let mut theta = vec![0i32; l.theta.len()];
        let mut sigma2 = l.variance.as_ref().map(|v| vec![0u32; v.len()]);
        let mut real = Vec::with_capacity(n_lines); // (mθ, mσ, b) before the shift
        for j in 0..n_lines {
            let row = j * fan_in..(j + 1) * fan_in;
            let t_max = l.theta[row.clone()]
                .iter()
                .fold(0.0f64, |m, &t| m.max((t as f64).abs()));
            let s_theta = if t_max > 0.0 {
                t_max / self.theta_max
            } else {
                1.0
            };
            for k in row.clone() {
                theta[k] = libm::round(l.theta[k] as f64 / s_theta) as i32;
            }
            let mut m_sigma = 0.0;
            if let (Some(v), Some(q)) = (&l.variance, sigma2.as_mut()) {
                let v_max = v[row.clone()].iter().fold(0.0f64, |m, &x| m.max(x as f64));
                let s2 = if v_max > 0.0 { v_max / s2_cap } else { 1.0 };
                for k in row.clone() {
                    q[k] = libm::round(v[k] as f64 / s2) as u32;
                }
                m_sigma = s_in * libm::sqrt(s2 * (1u64 << self.sq_shift) as f64) / s_out;
            }
            // A Bernoulli layer has no σ: its rows are `[mθ·q, mθ, b]`, the mean network's
            // multiplier (the keep probability times the sampled weights') first, where the
            // mean-weights kernels read it; the samples use the second.
            let m_theta = s_theta * s_in / s_out;
            let first = match l.dropout {
                Some(p) => {
                    m_sigma = m_theta;
                    (1.0 - p as f64) * m_theta
                }
                None => m_theta,
            };
            real.push([first, m_sigma, l.bias[j] as f64 / s_out]);
        }
        let (shift, bias_shift) = row_shifts(&real, &theta, sigma2.as_deref(), fan_in, a_in_max)
            .ok_or(QuantizeError::Range { layer: index })?;
        let scale = (1u64 << shift) as f64;
        let bias_scale = scale / (1u64 << bias_shift) as f64;
        let params = real
            .iter()
            .map(|&[m_theta, m_sigma, b]| {
                [
                    libm::round(m_theta * scale) as i32,
                    libm::round(m_sigma * scale) as i32,
                    libm::round(b * bias_scale) as i32,
                ]
            })
            .collect();
        Ok(QLayerSpec {
            op: l.op,
            inputs: l.inputs,
            outputs: l.outputs,
            activation: l.activation,
            shift,
            bias_shift,
            params,
            theta,
            sigma2,
            storage: l.storage,
            drop_threshold: l.dropout.map(crate::format::drop_threshold),
        })
    }
}

/// The output shift `S` and bias shift `B` of a layer from its rows' real `[mθ, mσ, b]`
/// (before the shift) and integer weights, `None` if no shift fits.
///
/// `S` is the largest shift that keeps `mθ 2^S`, `mσ 2^S` and `b 2^S` in an i32 (the rule of
/// every file before version 7). Where the bias is what bounds it (q16: a bias of thousands
/// of units of the 15-bit output scale, or of Q16 logits, against a θ multiplier far below 1;
/// q8 first layers), `S` grows
/// until the multipliers fill their i32 or the largest pre-activation any input can give
/// (`|b| + mθ Σ|θ| a_max + 6 mσ a_max sqrt(Σσ²)`, times 2^S) reaches 2^61, and the bias is
/// stored as `b 2^(S-B)` with the smallest `B` that keeps it in an i32.
fn row_shifts(
    real: &[[f64; 3]],
    theta: &[i32],
    sigma2: Option<&[u32]>,
    fan_in: usize,
    a_max: f64,
) -> Option<(u32, u32)> {
    let limit = i32::MAX as f64;
    let largest_of = |f: &dyn Fn(&[f64; 3]) -> f64| real.iter().map(f).fold(0.0f64, f64::max);
    let all = largest_of(&|r| r[0].abs().max(r[1].abs()).max(r[2].abs()));
    let multipliers = largest_of(&|r| r[0].abs().max(r[1].abs()));
    if !all.is_finite() {
        return None;
    }
    let fits = |v: f64| (1..=62u32).rev().find(|&s| v * (1u64 << s) as f64 <= limit);
    let shift = fits(all)?;
    let weights_shift = fits(multipliers).unwrap_or(shift);
    if weights_shift <= shift {
        return Some((shift, 0));
    }
    let z_max = real
        .iter()
        .enumerate()
        .map(|(j, &[m_theta, m_sigma, b])| {
            let row = j * fan_in..(j + 1) * fan_in;
            let theta_sum: f64 = theta[row.clone()].iter().map(|&t| t.abs() as f64).sum();
            let sigma_sum: f64 = sigma2.map_or(0.0, |s| s[row].iter().map(|&v| v as f64).sum());
            // A Bernoulli layer's second multiplier (no σ² then) is its samples'.
            let m_max = if sigma2.is_none() {
                m_theta.abs().max(m_sigma.abs())
            } else {
                m_theta.abs()
            };
            b.abs() + m_max * theta_sum * a_max + 6.0 * m_sigma * a_max * sigma_sum.sqrt()
        })
        .fold(0.0f64, f64::max);
    let z_shift = (1..=62u32)
        .rev()
        .find(|&s| z_max * (1u64 << s) as f64 <= (1u64 << 61) as f64)
        .unwrap_or(1);
    let shift = shift.max(weights_shift.min(z_shift));
    let biases = largest_of(&|r| r[2].abs()) * (1u64 << shift) as f64;
    let bias_shift = (0..=31u32).find(|&b| libm::round(biases / (1u64 << b) as f64) <= limit)?;
    Some((shift, bias_shift))
}

/// The activation scale of a layer whose calibrated outputs reach `clip`: `clip / act_max`,
/// or `fallback` (its input's scale) for a layer that is zero on every calibration input
/// (pruned so far that nothing survives the ReLU), whose scale then only has to keep its
/// parameters in range.
fn output_scale(clip: f64, act_max: f64, fallback: f64) -> f64 {
    if clip > 1e-6 {
        clip / act_max
    } else {
        fallback
    }
}

/// The integer rescale `(m, S)` of a residual addition's skip, `m / 2^S ≈ ratio` (the skip's
/// scale over the addition's), with the largest shift (1 to 30) that keeps
/// `act_max m + 2^(S-1)` in an i32; `None` if none does (or the ratio is not finite and
/// positive).
fn skip_rescale(ratio: f64, act_max: f64) -> Option<(i32, u32)> {
    if !(ratio.is_finite() && ratio > 0.0) {
        return None;
    }
    (1..=30u32).rev().find_map(|shift| {
        let m = libm::round(ratio * (1u64 << shift) as f64);
        let fits = m >= 1.0 && act_max * m + (1u64 << (shift - 1)) as f64 <= i32::MAX as f64;
        fits.then_some((m as i32, shift))
    })
}

/// One hidden layer in f32 for calibration, on the dense spec: `y = act(mean + sqrt(var) ε)`
/// per output unit in order, one `ε` drawn per unit when `noise` is given (local
/// reparameterization, as the engine samples); max pooling takes the window maximum, global
/// average pooling each channel's mean.
fn calibration_layer(
    l: &LayerSpec,
    shape: [usize; 3],
    x: &[f32],
    mut noise: Option<&mut Xoshiro128PlusPlus>,
) -> Vec<f32> {
    // MC dropout: a sample masks the inputs (each kept with probability 1 - p), the
    // mean network scales them by 1 - p.
    let masked: Vec<f32>;
    let x = match l.dropout {
        Some(p) => {
            let threshold = crate::format::drop_threshold(p);
            masked = match noise.as_deref_mut() {
                Some(rng) => x
                    .iter()
                    .map(|&v| {
                        let keep = rand_core::RngCore::next_u32(rng) >= threshold;
                        if keep {
                            v
                        } else {
                            0.0
                        }
                    })
                    .collect(),
                None => x.iter().map(|&v| v * (1.0 - p)).collect(),
            };
            &masked[..]
        }
        None => x,
    };
    let mut y = vec![0.0f32; l.outputs];
    let relu = l.activation == Activation::Relu;
    let mut unit = |out: &mut f32, mean: f32, var: f32| {
        let z = match noise.as_deref_mut() {
            Some(rng) => mean + libm::sqrtf(var) * standard_normal(rng),
            None => mean,
        };
        *out = if relu { z.max(0.0) } else { z };
    };
    match l.op {
        LayerOp::Linear => {
            for (j, out) in y.iter_mut().enumerate() {
                let row = j * l.inputs..(j + 1) * l.inputs;
                let mut mean = l.bias[j];
                let mut var = 0.0f32;
                for (k, &xi) in row.zip(x) {
                    mean += l.theta[k] * xi;
                    if let Some(v) = &l.variance {
                        var += v[k] * xi * xi;
                    }
                }
                unit(out, mean, var);
            }
        }
        LayerOp::Conv2d {
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
        } => {
            let [ci, ih, iw] = shape;
            let oh = window_output(ih, kh, stride, padding).unwrap_or(0);
            let ow = window_output(iw, kw, stride, padding).unwrap_or(0);
            let per_channel = ci * kh * kw;
            for co in 0..out_channels {
                // The channel's stored taps (pruned ones are zero in θ and σ²).
                let taps: Vec<(usize, usize, usize, f32, f32)> = (0..per_channel)
                    .filter_map(|t| {
                        let k = co * per_channel + t;
                        let v = l.variance.as_ref().map_or(0.0, |v| v[k]);
                        let (c, ky, kx) = (t / (kh * kw), t / kw % kh, t % kw);
                        (l.theta[k] != 0.0 || v != 0.0).then_some((c, ky, kx, l.theta[k], v))
                    })
                    .collect();
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut mean, mut var) = (l.bias[co], 0.0f32);
                        for &(c, ky, kx, theta, v) in &taps {
                            let iy = (oy * stride + ky) as isize - padding as isize;
                            let ix = (ox * stride + kx) as isize - padding as isize;
                            if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                continue;
                            }
                            let xi = x[(c * ih + iy as usize) * iw + ix as usize];
                            mean += theta * xi;
                            var += v * xi * xi;
                        }
                        unit(&mut y[(co * oh + oy) * ow + ox], mean, var);
                    }
                }
            }
        }
        LayerOp::MaxPool { window, stride } => {
            let [c, ih, iw] = shape;
            let oh = window_output(ih, window[0], stride, 0).unwrap_or(0);
            let ow = window_output(iw, window[1], stride, 0).unwrap_or(0);
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = f32::NEG_INFINITY;
                        for ky in 0..window[0] {
                            for kx in 0..window[1] {
                                let i = (ch * ih + oy * stride + ky) * iw + ox * stride + kx;
                                best = best.max(x[i]);
                            }
                        }
                        y[(ch * oh + oy) * ow + ox] = best;
                    }
                }
            }
        }
        LayerOp::GlobalAvgPool => {
            let area = shape[1] * shape[2];
            for (ch, out) in y.iter_mut().enumerate() {
                let sum: f32 = x[ch * area..(ch + 1) * area].iter().sum();
                *out = sum / area as f32;
            }
        }
        LayerOp::ResidualAdd { .. } | LayerOp::ExitHead { .. } => {}
    }
    y
}

/// Per layer, the `clip_quantile` quantile of its (post-ReLU) f32 outputs over the
/// calibration inputs, with mean weights and with sampled weights (local reparameterization),
/// for the layers whose output scale it sets: ReLU layers and residual additions. 0 for the
/// others (pooling and exit heads keep their input's scale, an identity layer before a
/// residual addition takes the addition's, the logits are Q16).
fn calibrate<T: Code>(
    spec: &ModelSpec,
    shapes: &[[usize; 3]],
    inputs: &[&[T]],
    c: Calibration,
) -> Vec<f64> {
    let n = spec.layers.len();
    let plain_logits = matches!(
        spec.layers.last().map(|l| l.op),
        Some(LayerOp::Linear | LayerOp::Conv2d { .. })
    );
    let run = if plain_logits { n - 1 } else { n };
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(c.seed);
    for raw in inputs {
        for pass in 0..=c.mc_samples {
            let mut x: Vec<f32> = raw.iter().map(|&p| p.into() * spec.input_scale).collect();
            // Every layer's output, for the residual additions that read them.
            let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(run);
            for (index, l) in spec.layers[..run].iter().enumerate() {
                let y = match l.op {
                    LayerOp::ResidualAdd { source } => {
                        let skip = &outputs[source];
                        x.iter().zip(skip).map(|(a, b)| (a + b).max(0.0)).collect()
                    }
                    // The main path continues with the map the head read.
                    LayerOp::ExitHead { .. } => x.clone(),
                    LayerOp::MaxPool { .. } | LayerOp::GlobalAvgPool => {
                        calibration_layer(l, shapes[index], &x, None)
                    }
                    _ => {
                        let noise = (pass > 0).then_some(&mut rng);
                        calibration_layer(l, shapes[index], &x, noise)
                    }
                };
                let sets_scale = match l.op {
                    LayerOp::ResidualAdd { .. } => true,
                    LayerOp::Linear | LayerOp::Conv2d { .. } => l.activation == Activation::Relu,
                    _ => false,
                };
                if sets_scale {
                    values[index].extend_from_slice(&y);
                }
                x = y.clone();
                outputs.push(y);
            }
        }
    }
    values
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.total_cmp(b));
            let at = ((v.len() as f64 - 1.0) * c.clip_quantile) as usize;
            v.get(at).copied().unwrap_or(0.0) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The fixed-point noise against f32's, one Gaussian layer kind at a time: the standard
    //! deviation of each unit's pre-activation noise, drawn by the integer kernels, against
    //! the exact f32 value `sqrt(Σ σ² x²)` for the same input.

    use super::*;
    use crate::fixed::kernels::{
        draw_from_moments, draw_noise, mean_layer, moments_layer, narrow_moments, sampled_layer,
    };
    use crate::fixed::noise::NormalQ8;
    use crate::fixed::QModel;
    use crate::writer::synthetic;

    const WIDTHS: [usize; 4] = [96, 48, 32, 10];

    /// A network whose variances span the range variational dropout gives
    /// (σ² = α θ² with log α uniform in [-6, 2.5]), and sparse raw inputs.
    fn vd_spec(storage: StorageChoice) -> (ModelSpec, Vec<Vec<u8>>) {
        let mut spec = synthetic::mlp(5, &WIDTHS, 0.6);
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(17);
        for l in &mut spec.layers {
            let v = l.variance.as_mut().unwrap();
            for (s, &t) in v.iter_mut().zip(&l.theta) {
                let u = (rand_core::RngCore::next_u32(&mut rng) >> 8) as f32 / 16_777_216.0;
                *s = libm::expf(-6.0 + 8.5 * u) * t * t;
            }
            l.storage = storage;
        }
        let inputs = (0..32)
            .map(|_| {
                (0..WIDTHS[0])
                    .map(|_| {
                        let r = rand_core::RngCore::next_u32(&mut rng);
                        if r % 3 == 0 {
                            0
                        } else {
                            (r >> 24) as u8
                        }
                    })
                    .collect()
            })
            .collect();
        (spec, inputs)
    }

    /// A small convolutional network with the same variances: a padded 3x3 convolution on
    /// 8x8 inputs, 2x2 max pooling, a padded stride-2 convolution, a linear layer.
    fn vd_conv_spec() -> (ModelSpec, Vec<Vec<u8>>) {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(23);
        let mut uniform = || (rand_core::RngCore::next_u32(&mut rng) >> 8) as f32 / 16_777_216.0;
        let mut gaussian_weights = |n: usize, sd: f32| -> (Vec<f32>, Vec<f32>) {
            let theta: Vec<f32> = (0..n).map(|_| sd * (2.0 * uniform() - 1.0) * 1.7).collect();
            let var = theta
                .iter()
                .map(|t| libm::expf(-6.0 + 8.5 * uniform()) * t * t)
                .collect();
            (theta, var)
        };
        let conv =
            |cin: usize, cout: usize, side: usize, stride: usize, w: (Vec<f32>, Vec<f32>)| {
                let out = window_output(side, 3, stride, 1).unwrap();
                LayerSpec {
                    op: LayerOp::Conv2d {
                        out_channels: cout,
                        kernel: [3, 3],
                        stride,
                        padding: 1,
                    },
                    inputs: cin * side * side,
                    outputs: cout * out * out,
                    activation: Activation::Relu,
                    bias: vec![0.05; cout],
                    theta: w.0,
                    variance: Some(w.1),
                    storage: StorageChoice::Sparse,
                    dropout: None,
                }
            };
        let c1 = conv(1, 3, 8, 1, gaussian_weights(27, 0.5));
        let pool = LayerSpec::max_pool([3, 8, 8], [2, 2], 2).unwrap();
        let c2 = conv(3, 4, 4, 2, gaussian_weights(108, 0.3));
        let (theta, variance) = gaussian_weights(160, 0.35);
        let linear = LayerSpec {
            op: LayerOp::Linear,
            inputs: 16,
            outputs: 10,
            activation: Activation::Identity,
            bias: vec![0.0; 10],
            theta,
            variance: Some(variance),
            storage: StorageChoice::Dense,
            dropout: None,
        };
        let spec = ModelSpec {
            input_shape: [1, 8, 8],
            num_classes: 10,
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            layers: vec![c1, pool, c2, linear],
            trained: None,
            channel_norm: None,
        };
        let inputs = (0..32)
            .map(|_| {
                (0..64)
                    .map(|_| {
                        let r = rand_core::RngCore::next_u32(&mut rng);
                        if r % 3 == 0 {
                            0
                        } else {
                            (r >> 24) as u8
                        }
                    })
                    .collect()
            })
            .collect();
        (spec, inputs)
    }

    /// Sample standard deviation of each unit's output over `n` draws of layer `l` given its
    /// integer input `a` (activation words of the previous layer, or raw bytes), the layer
    /// run with an identity activation so that the pre-activation is seen unclamped.
    /// With `moments`, the layer runs as the first stochastic layer does (moments once, then
    /// draws); else as a later layer (sums per sample, pre-drawn noise).
    fn fixed_std(
        layer: &crate::fixed::QLayer<'_>,
        raw: Option<&[u8]>,
        a: &[i32],
        moments: bool,
        n: usize,
    ) -> Vec<f64> {
        let layer = crate::fixed::QLayer {
            activation: Activation::Identity,
            ..*layer
        };
        const S: usize = 64;
        let units = layer.outputs;
        let (mut sum, mut sum2) = (vec![0.0f64; units], vec![0.0f64; units]);
        let mut out = vec![0i32; units * S];
        let (mut base, mut scale) = (
            vec![0i64; units.max(layer.inputs)],
            vec![0i64; units.max(layer.inputs)],
        );
        if let Some(raw) = raw {
            moments_layer(&layer, raw, &mut base, &mut scale);
        } else {
            moments_layer(&layer, a, &mut base, &mut scale);
        }
        let frac_bits = narrow_moments(&layer, &mut base[..units], &mut scale[..units]);
        let x: Vec<i32> = a.iter().flat_map(|&w| [w; S]).collect();
        let mut eps = vec![0i16; units * S];
        for pass in 0..n / S {
            let mut streams: Vec<NormalQ8> = (0..S)
                .map(|m| NormalQ8::new(Xoshiro128PlusPlus::seed_from_u64((pass * S + m) as u64)))
                .collect();
            if moments {
                draw_from_moments(
                    &layer,
                    (&base[..units], &scale[..units], frac_bits),
                    &mut streams,
                    &mut out,
                );
            } else {
                draw_noise(units, &mut streams, &mut eps);
                sampled_layer(&layer, &x, S, &eps, &mut out);
            }
            for j in 0..units {
                for &y in &out[j * S..(j + 1) * S] {
                    sum[j] += y as f64;
                    sum2[j] += (y as f64) * (y as f64);
                }
            }
        }
        let count = (n / S * S) as f64;
        (0..units)
            .map(|j| {
                let mean = sum[j] / count;
                libm::sqrt((sum2[j] / count - mean * mean).max(0.0))
            })
            .collect()
    }

    #[test]
    fn fixed_point_noise_has_the_f32_standard_deviation_in_every_gaussian_layer() {
        let mut failures = Vec::new();
        let cases = [
            ("dense", vd_spec(StorageChoice::Dense)),
            ("sparse", vd_spec(StorageChoice::Smallest)),
            ("by input", vd_spec(StorageChoice::SparseByInput)),
            ("convolutions", vd_conv_spec()),
        ];
        for (storage, (spec, inputs)) in &cases {
            for precision in [Precision::Q8, Precision::Q16] {
                let f32_buffer = spec.to_buffer().unwrap();
                let f32_model = crate::Model::from_bytes(f32_buffer.as_bytes()).unwrap();
                let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
                let cal = Calibration::default();
                let q = quantize(spec, precision, &refs, cal).unwrap();
                let buffer = q.to_buffer().unwrap();
                let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
                let act_max = if precision == Precision::Q8 {
                    255.0
                } else {
                    32767.0
                };
                let clips = calibrate(spec, &layer_shapes(spec).unwrap(), &refs, cal);
                let raw = refs[3];
                // The integer input of each layer: the mean-weights activations before it.
                let mut a: Vec<i32> = raw.iter().map(|&p| p as i32).collect();
                let mut s_in = spec.input_scale as f64;
                for (index, layer) in model.layers().iter().enumerate() {
                    let last = index + 1 == model.layers().len();
                    if layer.posterior() != crate::format::Posterior::Gaussian {
                        // Pooling: no noise, and the scale carries over.
                        let mut next = vec![0i32; layer.outputs];
                        mean_layer(layer, a.as_slice(), &mut next, (&mut [], &mut []));
                        a = next;
                        continue;
                    }
                    let s_out = if last {
                        1.0 / (1u64 << LOGIT_FRAC_BITS) as f64
                    } else {
                        clips[index].max(1e-6) / act_max
                    };
                    // The real input values the fixed-point layer sees.
                    let real: Vec<f64> = a
                        .iter()
                        .map(|&w| {
                            let v = if index == 0 || precision == Precision::Q16 {
                                w
                            } else {
                                w & 0xffff
                            };
                            v as f64 * s_in
                        })
                        .collect();
                    // The exact noise std of every unit: the f32 kernel's, on the same input.
                    let real32: Vec<f32> = real.iter().map(|&v| v as f32).collect();
                    let units = layer.outputs;
                    let (mut m32, mut s32) = (vec![0.0f32; units], vec![0.0f32; units]);
                    crate::kernels::forward_moments(
                        &f32_model.layers()[index],
                        real32.as_slice(),
                        &mut m32,
                        &mut s32,
                    );
                    let want: Vec<f64> = s32.iter().map(|&v| v as f64 / s_out).collect();
                    let paths: &[bool] = if index == 0 { &[true] } else { &[true, false] };
                    for &moments in paths {
                        let got = if index == 0 {
                            fixed_std(layer, Some(raw), &[], true, 8192)
                        } else {
                            fixed_std(layer, None, &a, moments, 8192)
                        };
                        let (sw, sg): (f64, f64) = want
                            .iter()
                            .zip(&got)
                            .fold((0.0, 0.0), |(x, y), (w, g)| (x + w * w, y + g * g));
                        let ratio = libm::sqrt(sg / sw);
                        let what = std::format!(
                            "{storage} {precision:?} layer {index} ({}): {ratio:.4}",
                            if moments { "first stochastic" } else { "later" }
                        );
                        std::println!("{what}");
                        if (ratio - 1.0).abs() >= 0.03 {
                            failures.push(what);
                        }
                    }
                    // Next layer's input.
                    let mut next = vec![0i32; layer.outputs];
                    let (mut s1, mut s2) = (vec![0i64; 256], vec![0i64; 256]);
                    if index == 0 {
                        mean_layer(layer, raw, &mut next, (&mut s1, &mut s2));
                    } else {
                        mean_layer(layer, a.as_slice(), &mut next, (&mut s1, &mut s2));
                    }
                    a = next;
                    s_in = s_out;
                }
            }
        }
        assert!(
            failures.is_empty(),
            "fixed/f32 noise std ratios off by 3% or more: {failures:?}"
        );
    }
}
