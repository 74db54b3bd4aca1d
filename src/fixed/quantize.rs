//! The quantizer (feature `alloc`): turns an f32 [`ModelSpec`] of linear layers into a
//! fixed-point [`QModelSpec`], with activation scales calibrated on raw inputs.
//!
//! Per output row `j` of a layer with input scale `s_in` (the model's input scale for the
//! first layer, the previous layer's activation scale after) and output scale `s_out`:
//! - `sθ_j = max_i |θ_ij| / θ_max` and `θq = round(θ / sθ_j)` (θ_max = 127 or 32767);
//! - `s2_j = max_i σ²_ij / σ²_max` and `σ²q = round(σ² / s2_j)` (σ²_max = 255, or less when
//!   the layer's fan-in needs it to keep the q8 variance sum in an int32; 65535 for q16);
//! - `mθ = round(sθ_j s_in / s_out 2^S)`, `b = round(bias / s_out 2^S)`,
//!   `mσ = round(s_in sqrt(s2_j 2^SQ) / s_out 2^S)` with SQ = 1 for q8 (whose variance sums
//!   use `a^2 >> 1`) and 0 for q16; `S` is the largest shift that keeps all three in an i32.
//!
//! Activation scales: `s_out = c / act_max`, where `c` is the `clip_quantile` quantile of
//! the layer's f32 outputs over the calibration inputs, with the posterior mean and with
//! `mc_samples` Monte Carlo samples each (larger outputs saturate). The logits use Q16.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;

use super::writer::{QLayerSpec, QModelSpec};
use crate::format::{Activation, Precision, LOGIT_FRAC_BITS};
use crate::normal::standard_normal;
use crate::writer::{LayerOp, ModelSpec, StorageChoice};

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
    /// Only linear layers (ReLU hidden, identity last) have a fixed-point form so far.
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
}

impl fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantizeError::UnsupportedLayer { layer } => write!(
                f,
                "layer {layer} has no fixed-point form (only linear layers, ReLU hidden and identity last)"
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
        }
    }
}

impl core::error::Error for QuantizeError {}

/// Quantizes `spec` to `precision`, calibrating activation scales on `inputs` (raw 8-bit
/// inputs of the model's input length).
pub fn quantize(
    spec: &ModelSpec,
    precision: Precision,
    inputs: &[&[u8]],
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
    let n_layers = spec.layers.len();
    for (i, l) in spec.layers.iter().enumerate() {
        let act_ok = if i + 1 == n_layers {
            l.activation == Activation::Identity
        } else {
            l.activation == Activation::Relu
        };
        if l.op != LayerOp::Linear || !act_ok {
            return Err(QuantizeError::UnsupportedLayer { layer: i });
        }
    }
    let input_len: usize = spec.input_shape.iter().product();
    if inputs.is_empty() || inputs.iter().any(|x| x.len() != input_len) {
        return Err(QuantizeError::Calibration);
    }
    let clips = calibrate(spec, inputs, calibration);

    let mut layers = Vec::with_capacity(n_layers);
    let mut s_in = spec.input_scale as f64;
    for (index, l) in spec.layers.iter().enumerate() {
        let last = index + 1 == n_layers;
        let s_out = if last {
            1.0 / (1u64 << LOGIT_FRAC_BITS) as f64
        } else {
            clips[index].max(1e-6) / act_max
        };
        let s2_cap = match precision {
            Precision::Q8 => {
                let bound =
                    i32::MAX as f64 / (super::model::Q8_MAX_SQUARE as f64 * l.inputs as f64);
                bound.floor().min(255.0)
            }
            _ => 65535.0,
        };
        let mut theta = vec![0i32; l.theta.len()];
        let mut sigma2 = l.variance.as_ref().map(|v| vec![0u32; v.len()]);
        let mut real = Vec::with_capacity(l.outputs); // (mθ, mσ, b) before the shift
        for j in 0..l.outputs {
            let row = j * l.inputs..(j + 1) * l.inputs;
            let t_max = l.theta[row.clone()]
                .iter()
                .fold(0.0f64, |m, &t| m.max((t as f64).abs()));
            let s_theta = if t_max > 0.0 { t_max / theta_max } else { 1.0 };
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
                m_sigma = s_in * libm::sqrt(s2 * (1u64 << sq_shift) as f64) / s_out;
            }
            real.push([s_theta * s_in / s_out, m_sigma, l.bias[j] as f64 / s_out]);
        }
        let largest = real.iter().flatten().fold(0.0f64, |m, &v| m.max(v.abs()));
        if !largest.is_finite() {
            return Err(QuantizeError::Range { layer: index });
        }
        let limit = i32::MAX as f64;
        let shift = (1..=62u32)
            .rev()
            .find(|&s| largest * (1u64 << s) as f64 <= limit)
            .ok_or(QuantizeError::Range { layer: index })?;
        let scale = (1u64 << shift) as f64;
        let params = real
            .iter()
            .map(|r| r.map(|v| libm::round(v * scale) as i32))
            .collect();
        layers.push(QLayerSpec {
            inputs: l.inputs,
            outputs: l.outputs,
            activation: l.activation,
            shift,
            params,
            theta,
            sigma2,
            storage: match l.storage {
                StorageChoice::SparseByInput if index == 0 => StorageChoice::SparseByInput,
                StorageChoice::Dense => StorageChoice::Dense,
                _ => StorageChoice::Smallest,
            },
        });
        s_in = s_out;
    }
    Ok(QModelSpec {
        precision,
        input_shape: spec.input_shape,
        num_classes: spec.num_classes,
        input_scale: spec.input_scale,
        input_offset: spec.input_offset,
        layers,
    })
}

/// Per hidden layer, the `clip_quantile` quantile of its (post-ReLU) f32 outputs over the
/// calibration inputs, with mean weights and with sampled weights (local reparameterization).
fn calibrate(spec: &ModelSpec, inputs: &[&[u8]], c: Calibration) -> Vec<f64> {
    let hidden = spec.layers.len().saturating_sub(1);
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); hidden];
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(c.seed);
    for raw in inputs {
        let x0: Vec<f32> = raw.iter().map(|&p| p as f32 * spec.input_scale).collect();
        for pass in 0..=c.mc_samples {
            let mut x = x0.clone();
            for (index, l) in spec.layers[..hidden].iter().enumerate() {
                let mut y = vec![0.0f32; l.outputs];
                for (j, out) in y.iter_mut().enumerate() {
                    let row = j * l.inputs..(j + 1) * l.inputs;
                    let mut mean = l.bias[j];
                    let mut var = 0.0f32;
                    for (k, &xi) in row.zip(&x) {
                        mean += l.theta[k] * xi;
                        if let Some(v) = &l.variance {
                            var += v[k] * xi * xi;
                        }
                    }
                    let z = if pass > 0 {
                        mean + libm::sqrtf(var) * standard_normal(&mut rng)
                    } else {
                        mean
                    };
                    *out = z.max(0.0);
                }
                values[index].extend_from_slice(&y);
                x = y;
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
