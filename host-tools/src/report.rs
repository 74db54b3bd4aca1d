//! The per-layer report of a model (what `export` prints and `inspect` reads back).

use serde::Serialize;
use tinybayes::fixed::QModel;
use tinybayes::format::{Activation, ChannelNorm, TrainedSize};
use tinybayes::Model;

/// One layer of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerReport {
    /// `linear-sparse` or `linear-dense`.
    pub kind: String,
    /// `gaussian` or `deterministic`.
    pub posterior: String,
    /// `relu` or `identity`.
    pub activation: String,
    /// Inputs.
    pub inputs: usize,
    /// Outputs.
    pub outputs: usize,
    /// Stored (surviving) weights.
    pub nnz: usize,
    /// Weights of the dense shape (inputs x outputs).
    pub dense_weights: usize,
    /// Fraction of the dense weights not stored.
    pub sparsity: f64,
    /// Bytes of the layer's payload in the model file.
    pub flash_bytes: usize,
}

/// The input normalisation of one channel: raw value `p` is fed as `p * scale + offset`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct ChannelNormReport {
    /// Multiplies the raw value.
    pub scale: f32,
    /// Added after scaling.
    pub offset: f32,
}

impl From<ChannelNorm> for ChannelNormReport {
    fn from(n: ChannelNorm) -> Self {
        ChannelNormReport {
            scale: n.scale,
            offset: n.offset,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelReport {
    /// Number format: `f32`, `q8` or `q16`.
    pub precision: &'static str,
    /// Input shape (channels, height, width).
    pub input_shape: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// Whether the file stores a per-channel input normalisation table (format version 9).
    pub per_channel_norm: bool,
    /// The input normalisation of every channel, in channel order (without a per-channel
    /// table, the header's one pair repeated; fixed-point models: kept for reference, folded
    /// into the first layer).
    pub input_norm: Vec<ChannelNormReport>,
    /// Fixed-point models that read signed 8-bit codes (format version 10): the raw value of
    /// one code; `None` for models that read bytes (and f32 models).
    pub input_step: Option<f32>,
    /// Layers, input first.
    pub layers: Vec<LayerReport>,
    /// Parameters of the dense network (weights and biases).
    pub dense_params: usize,
    /// Stored weights.
    pub nnz: usize,
    /// Fraction of the stored layers' dense weights that are not stored (pruning against the
    /// compacted network, whose dead units were removed).
    pub pruned_of_exported: f64,
    /// Weights of the network as trained, before pruning and dead-unit removal (format
    /// version 5; `null` when the file does not record it).
    pub trained_dense_weights: Option<usize>,
    /// Parameters (weights and biases) of the network as trained (`null` when not recorded).
    pub trained_dense_params: Option<usize>,
    /// Fraction of the trained network's weights that are not stored (`null` when not
    /// recorded).
    pub pruned_of_trained: Option<f64>,
    /// Model file size in bytes (what goes to flash).
    pub flash_bytes: usize,
    /// Monte Carlo samples per prediction the RAM figure is for.
    pub ram_samples: usize,
    /// Samples that share one pass over the weights (the engine's `CHUNK`).
    pub ram_chunk: usize,
    /// Workspace bytes for `ram_samples` samples, `ram_chunk` per pass.
    pub ram_bytes: usize,
    /// Workspace bytes of the deterministic (mean weights) mode.
    pub ram_bytes_deterministic: usize,
}

/// Checks the sample count a RAM figure is asked for: 1 to 65,535, what the engine runs (a
/// larger count is refused, not clamped). `flag` names the option in the message.
pub fn check_report_samples(flag: &str, samples: usize) -> anyhow::Result<()> {
    let max = crate::simulate::MAX_SAMPLES as usize;
    if !(1..=max).contains(&samples) {
        anyhow::bail!("{flag} must be 1 to {max} (the engine's limit), got {samples}");
    }
    Ok(())
}

/// Samples per pass a report assumes when not told: up to 8 for a plain network (the
/// firmware's choice), 1 for an early-exit network, whose feature maps dominate its RAM and
/// whose halting policies regenerate chunks instead of keeping every sample alive.
pub fn default_chunk(early_exit: bool, samples: usize) -> usize {
    if early_exit {
        1
    } else {
        samples.clamp(1, 8)
    }
}

/// The pruning figures of a report: against the stored layers and against the trained network.
struct Pruning {
    of_exported: f64,
    trained_weights: Option<usize>,
    trained_params: Option<usize>,
    of_trained: Option<f64>,
}

impl Pruning {
    fn new(layers: &[LayerReport], nnz: usize, trained: Option<TrainedSize>) -> Self {
        let fraction = |dense: usize| {
            if dense > 0 {
                1.0 - nnz as f64 / dense as f64
            } else {
                0.0
            }
        };
        let trained_weights = trained.map(|t| t.dense_weights as usize);
        Pruning {
            of_exported: fraction(layers.iter().map(|l| l.dense_weights).sum()),
            trained_weights,
            trained_params: trained.map(|t| t.dense_params as usize),
            of_trained: trained_weights.map(fraction),
        }
    }
}

impl ModelReport {
    /// Builds the report of a validated model; RAM is given for `samples` Monte Carlo samples
    /// per prediction, `chunk` of them per pass (`None`: [`default_chunk`]).
    pub fn new(model: &Model<'_>, samples: usize, chunk: Option<usize>) -> Self {
        let chunk = chunk.unwrap_or_else(|| default_chunk(model.exit_count() > 0, samples));
        let layers: Vec<LayerReport> = model
            .layers()
            .iter()
            .map(|l| {
                let dense = l.dense_weights();
                LayerReport {
                    kind: l.kind().name().into(),
                    posterior: match l.drop_probability() {
                        Some(p) => format!("bernoulli (p {p})"),
                        None => l.posterior().name().into(),
                    },
                    activation: match l.activation() {
                        Activation::Relu => "relu",
                        Activation::Identity => "identity",
                    }
                    .into(),
                    inputs: l.inputs(),
                    outputs: l.outputs(),
                    nnz: l.nnz(),
                    dense_weights: dense,
                    sparsity: if dense > 0 {
                        1.0 - l.nnz() as f64 / dense as f64
                    } else {
                        0.0
                    },
                    flash_bytes: l.payload_bytes(),
                }
            })
            .collect();
        let pruning = Pruning::new(&layers, model.nnz(), model.trained_size());
        ModelReport {
            precision: "f32",
            input_shape: model.input_shape(),
            classes: model.num_classes(),
            per_channel_norm: model.has_channel_norm(),
            input_norm: model.channel_norms().map(Into::into).collect(),
            input_step: None,
            layers,
            dense_params: model.dense_params(),
            nnz: model.nnz(),
            pruned_of_exported: pruning.of_exported,
            trained_dense_weights: pruning.trained_weights,
            trained_dense_params: pruning.trained_params,
            pruned_of_trained: pruning.of_trained,
            flash_bytes: model.as_bytes().len(),
            ram_samples: samples,
            ram_chunk: chunk,
            ram_bytes: tinybayes::Plan::new(model, chunk).workspace_bytes(),
            ram_bytes_deterministic: tinybayes::Plan::new(model, 0).workspace_bytes(),
        }
    }

    /// The report of a fixed-point (q8, q16) model.
    pub fn new_fixed(model: &QModel<'_>, samples: usize, chunk: Option<usize>) -> Self {
        let chunk = chunk.unwrap_or_else(|| default_chunk(false, samples));
        let layers: Vec<LayerReport> = model
            .layers()
            .iter()
            .map(|l| {
                let dense = l.dense_weights();
                LayerReport {
                    kind: l.kind().name().into(),
                    posterior: l.posterior().name().into(),
                    activation: match l.activation() {
                        Activation::Relu => "relu",
                        Activation::Identity => "identity",
                    }
                    .into(),
                    inputs: l.inputs(),
                    outputs: l.outputs(),
                    nnz: l.nnz(),
                    dense_weights: dense,
                    sparsity: if dense > 0 {
                        1.0 - l.nnz() as f64 / dense as f64
                    } else {
                        0.0
                    },
                    flash_bytes: l.payload_bytes(),
                }
            })
            .collect();
        let pruning = Pruning::new(&layers, model.nnz(), model.trained_size());
        ModelReport {
            precision: model.precision().name(),
            input_shape: model.input_shape(),
            classes: model.num_classes(),
            per_channel_norm: model.has_channel_norm(),
            input_norm: model.channel_norms().map(Into::into).collect(),
            input_step: match model.input_coding() {
                tinybayes::format::InputCoding::Signed { step } => Some(step),
                tinybayes::format::InputCoding::Unsigned => None,
            },
            dense_params: model.dense_params(),
            layers,
            nnz: model.nnz(),
            pruned_of_exported: pruning.of_exported,
            trained_dense_weights: pruning.trained_weights,
            trained_dense_params: pruning.trained_params,
            pruned_of_trained: pruning.of_trained,
            flash_bytes: model.as_bytes().len(),
            ram_samples: samples,
            ram_chunk: chunk,
            ram_bytes: model.workspace_bytes(chunk),
            ram_bytes_deterministic: model.workspace_bytes(0),
        }
    }

    /// The input normalisation lines of the table: one line for a model with one pair, else
    /// a line per channel.
    fn norm_lines(&self) -> String {
        let reference = if self.precision == "f32" {
            ""
        } else {
            " (folded into the first layer)"
        };
        let lines = match (self.per_channel_norm, self.input_norm.first()) {
            (false, Some(n)) => format!(
                "input normalisation: p * {} + {} in every channel{reference}\n",
                n.scale, n.offset
            ),
            (true, _) => {
                let mut s = format!("input normalisation per channel{reference}:\n");
                for (c, n) in self.input_norm.iter().enumerate() {
                    s += &format!("  channel {c}: p * {} + {}\n", n.scale, n.offset);
                }
                s
            }
            (false, None) => String::new(),
        };
        match self.input_step {
            Some(step) => format!(
                "input: signed 8-bit codes q, raw value p = q * {step} (predict_i8)\n{lines}"
            ),
            None => lines,
        }
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{} model, input {}x{}x{}, {} classes\n{:<3} {:<23} {:<13} {:>7} {:>7} {:>9} {:>9} {:>9} {:>11}\n",
            self.precision,
            self.input_shape[0],
            self.input_shape[1],
            self.input_shape[2],
            self.classes,
            "#",
            "kind",
            "posterior",
            "inputs",
            "outputs",
            "dense",
            "stored",
            "sparsity",
            "flash B"
        );
        for (i, l) in self.layers.iter().enumerate() {
            s += &format!(
                "{:<3} {:<23} {:<13} {:>7} {:>7} {:>9} {:>9} {:>8.2}% {:>11}\n",
                i,
                l.kind,
                l.posterior,
                l.inputs,
                l.outputs,
                l.dense_weights,
                l.nnz,
                100.0 * l.sparsity,
                l.flash_bytes
            );
        }
        s += &self.norm_lines();
        let dense_weights: usize = self.layers.iter().map(|l| l.dense_weights).sum();
        s += &match (self.trained_dense_weights, self.trained_dense_params, self.pruned_of_trained) {
            (Some(weights), Some(params), Some(pruned)) => format!(
                "trained: {weights} weights ({params} parameters), {:.2}% of them pruned, {:.1}x fewer\n",
                100.0 * pruned,
                weights as f64 / self.nnz.max(1) as f64,
            ),
            _ => "trained: size not recorded (format version 4 or older, or not exported from a \
                  training run)\n"
                .to_string(),
        };
        s += &format!(
            "total: {} dense parameters, {} weights stored ({:.2}% of the stored layers' {} \
             weights pruned, {:.1}x fewer), {} bytes of flash, RAM {} bytes for {} samples, {} \
             per pass ({} bytes deterministic)\n",
            self.dense_params,
            self.nnz,
            100.0 * self.pruned_of_exported,
            dense_weights,
            dense_weights as f64 / self.nnz.max(1) as f64,
            self.flash_bytes,
            self.ram_bytes,
            self.ram_samples,
            self.ram_chunk,
            self.ram_bytes_deterministic
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::ModelReport;
    use tinybayes::format::ChannelNorm;
    use tinybayes::writer::synthetic;

    /// `inspect` shows one line for a model with one pair, and every channel's pair for a
    /// per-channel table (from the file, in the JSON too).
    #[test]
    fn the_report_shows_the_input_normalisation() {
        let mut spec = synthetic::mlp(1, &[12, 6, 3], 0.5);
        let global = spec.to_buffer().unwrap();
        let report = ModelReport::new(&global.model().unwrap(), 8, None);
        assert!(!report.per_channel_norm);
        let table = report.to_table();
        assert!(
            table.contains("input normalisation: p * 0.003921569 + 0 in every channel"),
            "{table}"
        );
        spec.input_shape = [3, 2, 2];
        spec.channel_norm = Some(vec![
            ChannelNorm {
                scale: 0.5,
                offset: -1.0,
            },
            ChannelNorm {
                scale: 0.25,
                offset: 0.0,
            },
            ChannelNorm {
                scale: 2.0,
                offset: 3.5,
            },
        ]);
        let per_channel = spec.to_buffer().unwrap();
        let report = ModelReport::new(&per_channel.model().unwrap(), 8, None);
        assert!(report.per_channel_norm);
        assert_eq!(report.input_norm.len(), 3);
        let table = report.to_table();
        for line in [
            "input normalisation per channel:",
            "  channel 0: p * 0.5 + -1",
            "  channel 1: p * 0.25 + 0",
            "  channel 2: p * 2 + 3.5",
        ] {
            assert!(table.contains(line), "{line:?} not in {table}");
        }
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.contains(r#""input_norm":[{"scale":0.5,"offset":-1.0}"#),
            "{json}"
        );
    }
}
