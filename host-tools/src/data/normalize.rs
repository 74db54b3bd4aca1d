//! Per-channel input normalisation, fitted on the training split: `normalised = raw * scale +
//! offset` with one `(scale, offset)` per input channel.
//!
//! Modes (config `normalize = "..."`):
//!
//! - `standardize` (the default for f32 data): mean 0 and variance 1 per channel, over every
//!   example and position of the training split;
//! - `scale`: divides by the channel's largest `|x|`, so zero stays zero (which fixed point
//!   needs) and values land in `[-1, 1]`;
//! - `unit` (the default for bytes): onto `[0, 1]`; for bytes that is the byte range, `x / 255`
//!   with offset 0 whatever the data (the MNIST recipe), for f32 data the channel's minimum and
//!   maximum over the training split;
//! - `none`: scale 1, offset 0.
//!
//! A constant channel (no spread) gets scale 1, so nothing is divided by zero. Statistics are
//! accumulated in f64.

use serde::{Deserialize, Serialize};

use super::{Samples, Values};

/// How the normalisation is chosen (config key `normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizeMode {
    /// Mean 0, variance 1 per channel.
    Standardize,
    /// Divide by the channel's largest absolute value.
    Scale,
    /// Onto `[0, 1]` (bytes: `x / 255`; f32: the channel's min..max).
    Unit,
    /// No normalisation.
    None,
}

impl NormalizeMode {
    /// The default for data of these values: `unit` for bytes, `standardize` for f32.
    pub fn default_for(values: &Values) -> Self {
        match values {
            Values::U8(_) => NormalizeMode::Unit,
            Values::F32(_) => NormalizeMode::Standardize,
        }
    }

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            NormalizeMode::Standardize => "standardize",
            NormalizeMode::Scale => "scale",
            NormalizeMode::Unit => "unit",
            NormalizeMode::None => "none",
        }
    }
}

/// A fitted per-channel normalisation: `normalised = raw * scale[c] + offset[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// The mode it was fitted with.
    pub mode: NormalizeMode,
    /// Whether the raw values are bytes (then `unit` is exactly `x / 255`).
    pub bytes: bool,
    /// Scale of each channel.
    pub scale: Vec<f32>,
    /// Offset of each channel.
    pub offset: Vec<f32>,
}

impl Normalization {
    /// Fits `mode` to `samples` (the training split), one `(scale, offset)` per channel.
    pub fn fit(mode: NormalizeMode, samples: &Samples) -> Self {
        let channels = samples.shape[0];
        let bytes = matches!(samples.values, Values::U8(_));
        let mut scale = vec![1.0f32; channels];
        let mut offset = vec![0.0f32; channels];
        for c in 0..channels {
            let (s, o) = match mode {
                NormalizeMode::None => (1.0, 0.0),
                NormalizeMode::Unit if bytes => (1.0 / 255.0, 0.0),
                _ => {
                    let st = ChannelStats::of(samples, c);
                    match mode {
                        NormalizeMode::Standardize => {
                            let sd = st.variance().sqrt();
                            if sd > 0.0 && sd.is_finite() {
                                (1.0 / sd, -st.mean() / sd)
                            } else {
                                (1.0, -st.mean())
                            }
                        }
                        NormalizeMode::Scale => {
                            let m = st.min.abs().max(st.max.abs());
                            if m > 0.0 && m.is_finite() {
                                (1.0 / m, 0.0)
                            } else {
                                (1.0, 0.0)
                            }
                        }
                        _ => {
                            let range = st.max - st.min;
                            if range > 0.0 && range.is_finite() {
                                (1.0 / range, -st.min / range)
                            } else {
                                (1.0, -st.min)
                            }
                        }
                    }
                }
            };
            // A spread too small for f32 (its inverse overflows) is treated as none.
            let (s, o) = if (s as f32).is_finite() && (o as f32).is_finite() && s != 0.0 {
                (s as f32, o as f32)
            } else {
                (1.0, 0.0)
            };
            scale[c] = s;
            offset[c] = o;
        }
        Normalization {
            mode,
            bytes,
            scale,
            offset,
        }
    }

    /// The byte `unit` normalisation (`x / 255`) of `channels` channels: what a run started
    /// before normalisations were stored trained on.
    pub fn byte_unit(channels: usize) -> Self {
        Normalization {
            mode: NormalizeMode::Unit,
            bytes: true,
            scale: vec![1.0 / 255.0; channels],
            offset: vec![0.0; channels],
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// True when this is the byte `unit` mode, applied as `x / 255` exactly as the trainer
    /// always has (so MNIST training is unchanged); the engine multiplies by the stored
    /// `1/255`, which differs by at most an ulp.
    pub fn is_byte_unit(&self) -> bool {
        self.bytes && self.mode == NormalizeMode::Unit
    }

    /// Checks that it fits samples of `shape` and dtype (a stored normalisation against new
    /// data), in one line.
    pub fn check_fits(&self, samples: &Samples) -> Result<(), String> {
        let bytes = matches!(samples.values, Values::U8(_));
        if self.channels() != samples.shape[0] || self.offset.len() != self.channels() {
            return Err(format!(
                "the stored normalisation has {} channels but the data has {}",
                self.channels(),
                samples.shape[0]
            ));
        }
        if self.bytes != bytes {
            return Err(format!(
                "the stored normalisation is for {} data but the data is {}",
                if self.bytes { "u8" } else { "f32" },
                samples.values.dtype()
            ));
        }
        Ok(())
    }

    /// The normalised values of `samples` (same order), with the channel of each value
    /// taken from its position. Expects [`Self::check_fits`] to hold (missing channels use
    /// scale 1, offset 0).
    pub fn apply(&self, samples: &Samples) -> Vec<f32> {
        let [c, h, w] = samples.shape;
        let plane = (h * w).max(1);
        let per = (c * plane).max(1);
        let coeff = |i: usize| {
            let ch = (i % per) / plane;
            (
                self.scale.get(ch).copied().unwrap_or(1.0),
                self.offset.get(ch).copied().unwrap_or(0.0),
            )
        };
        match &samples.values {
            Values::U8(v) if self.is_byte_unit() => {
                v.iter().map(|&p| f32::from(p) / 255.0).collect()
            }
            Values::U8(v) => v
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let (s, o) = coeff(i);
                    f32::from(p) * s + o
                })
                .collect(),
            Values::F32(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let (s, o) = coeff(i);
                    x * s + o
                })
                .collect(),
        }
    }

    /// The per-channel table a model file stores (format version 9,
    /// `tinybayes::writer::ModelSpec::channel_norm`): the one place the trainer's
    /// normalisation meets the engine's. A table whose channels all share one pair is written
    /// as the header's single pair (the byte `unit` mode: `1/255`, as before).
    pub fn channel_norms(&self) -> Vec<tinybayes::format::ChannelNorm> {
        self.scale
            .iter()
            .zip(&self.offset)
            .map(|(&scale, &offset)| tinybayes::format::ChannelNorm { scale, offset })
            .collect()
    }

    /// One line for the CLI: the mode and each channel's scale and offset.
    pub fn describe(&self) -> String {
        let per: Vec<String> = self
            .scale
            .iter()
            .zip(&self.offset)
            .map(|(s, o)| format!("x*{s:.6}{o:+.6}"))
            .collect();
        format!("{} ({})", self.mode.name(), per.join(", "))
    }
}

/// Statistics of one channel over every example and position, in f64.
struct ChannelStats {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

impl ChannelStats {
    fn of(samples: &Samples, channel: usize) -> Self {
        let [c, h, w] = samples.shape;
        let plane = h * w;
        let per = c * plane;
        let mut st = ChannelStats {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        };
        let mut eat = |x: f64| {
            st.count += 1;
            st.sum += x;
            st.sum_sq += x * x;
            st.min = st.min.min(x);
            st.max = st.max.max(x);
        };
        for n in 0..samples.len() {
            let start = n * per + channel * plane;
            match &samples.values {
                Values::U8(v) => v[start..start + plane]
                    .iter()
                    .for_each(|&p| eat(f64::from(p))),
                Values::F32(v) => v[start..start + plane]
                    .iter()
                    .for_each(|&x| eat(f64::from(x))),
            }
        }
        if st.count == 0 {
            st.min = 0.0;
            st.max = 0.0;
        }
        st
    }

    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    fn variance(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let m = self.mean();
        (self.sum_sq / self.count as f64 - m * m).max(0.0)
    }
}
