//! The model writer (feature `alloc`): the one definition of the format that host tools use,
//! so the reader and the writer cannot drift. Every file written is read back and validated
//! by [`Model::from_bytes`] before it is returned.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::error::ModelError;
use crate::format::{
    self, conv_payload_len, header, pack_tap, payload_len, record, window_output, Activation,
    ChannelNorm, LayerKind, Posterior, Storage, TrainedSize, HEADER_LEN, LAYER_RECORD_LEN,
    TRAILER_LEN,
};
use crate::model::Model;

/// How the writer stores a layer's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageChoice {
    /// Always dense.
    Dense,
    /// Always compressed sparse rows.
    Sparse,
    /// Compressed sparse columns (per input; format version 2): for first layers fed with
    /// raw images, whose zero pixels are then skipped whole. Costs `4 * (inputs + 1)` bytes of
    /// column pointers instead of `4 * (outputs + 1)` of row pointers.
    SparseByInput,
    /// Whichever takes fewer bytes (sparse wins below roughly 2/3 density for Gaussian layers).
    Smallest,
}

/// What a layer computes (format version 2 adds convolutions and pooling, 4 residual
/// additions and exit heads, 10 global average pooling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerOp {
    /// Linear layer over the flattened input; θ is `outputs x inputs`.
    Linear,
    /// 2-D convolution; θ is `[out_channels][in_channels][kernel_h][kernel_w]`, the bias has
    /// one value per output channel. Always stored as sparse tap lists.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel (height, width), each at most 255.
        kernel: [usize; 2],
        /// Stride, 1 to 255.
        stride: usize,
        /// Zero padding on every side, less than the kernel size.
        padding: usize,
    },
    /// Per-channel max pooling over `window[0] x window[1]` windows (height x width); no
    /// parameters. A non-square window needs format version 9.
    MaxPool {
        /// Window (height, width).
        window: [usize; 2],
        /// Stride.
        stride: usize,
    },
    /// Per-channel mean over the whole map: `[C, H, W]` becomes `[C, 1, 1]`, `inputs = C H W`,
    /// `outputs = C`; no parameters, identity activation. Format version 10.
    GlobalAvgPool,
    /// Adds the output of layer `source` (an earlier layer, after the previous residual
    /// addition, with the current shape) and applies the activation; no parameters.
    /// `inputs = outputs` = the current map's size. Format version 4.
    ResidualAdd {
        /// Index of the layer whose output is added.
        source: usize,
    },
    /// An exit head: global average pooling of the current map, then a dense linear layer to
    /// the classes; θ is `classes x channels`, one bias per class, identity activation.
    /// `inputs` = channels, `outputs` = classes; the main path continues unchanged. Format
    /// version 4.
    ExitHead {
        /// Prior probability of exiting here; the exits' priors sum to 1.
        prior: f32,
    },
}

/// One layer to write, with dense parameter arrays (pruned weights are zero).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// What the layer computes.
    pub op: LayerOp,
    /// Number of inputs (flattened: channels x height x width).
    pub inputs: usize,
    /// Number of outputs (flattened).
    pub outputs: usize,
    /// Non-linearity after the layer (identity on the last layer).
    pub activation: Activation,
    /// Bias: `outputs` values (linear), `out_channels` (convolution), none (pooling).
    pub bias: Vec<f32>,
    /// Posterior means θ (layout per [`LayerOp`]); pruned weights are 0.
    pub theta: Vec<f32>,
    /// Posterior variances σ², same shape; `None` for a deterministic layer. A weight is
    /// stored when its θ or σ² is non-zero.
    pub variance: Option<Vec<f32>>,
    /// Storage to use (linear layers; convolutions always store tap lists).
    pub storage: StorageChoice,
    /// MC dropout (linear layers, format version 8): the probability `p` in `[0, 1)` that
    /// each input of the layer is dropped in a Monte Carlo sample, written as a Bernoulli
    /// posterior. `theta` are then the weights a sample applies to its kept inputs, the
    /// trained weights already divided by the keep probability `1 - p` (inverted dropout
    /// folded in); `variance` must be `None`. `None` for every other layer.
    pub dropout: Option<f32>,
}

impl LayerSpec {
    /// A parameterless max-pooling layer with a `window` (height, width) over an input of
    /// `shape` (channels, height, width); `None` if the window does not fit.
    pub fn max_pool(shape: [usize; 3], window: [usize; 2], stride: usize) -> Option<Self> {
        let h = window_output(shape[1], window[0], stride, 0)?;
        let w = window_output(shape[2], window[1], stride, 0)?;
        Some(LayerSpec {
            op: LayerOp::MaxPool { window, stride },
            inputs: shape.iter().product(),
            outputs: shape[0] * h * w,
            activation: Activation::Identity,
            bias: Vec::new(),
            theta: Vec::new(),
            variance: None,
            storage: StorageChoice::Dense,
            dropout: None,
        })
    }

    /// A parameterless global average pooling layer over an input of `shape` (channels,
    /// height, width): one output per channel.
    pub fn global_avg_pool(shape: [usize; 3]) -> Self {
        LayerSpec {
            op: LayerOp::GlobalAvgPool,
            inputs: shape.iter().product(),
            outputs: shape[0],
            activation: Activation::Identity,
            bias: Vec::new(),
            theta: Vec::new(),
            variance: None,
            storage: StorageChoice::Dense,
            dropout: None,
        }
    }

    /// The posterior the file will record: Bernoulli with a drop probability, Gaussian with
    /// variances, else deterministic.
    pub fn posterior(&self) -> Posterior {
        match (self.dropout, &self.variance) {
            (Some(_), _) => Posterior::Bernoulli,
            (None, Some(_)) => Posterior::Gaussian,
            (None, None) => Posterior::Deterministic,
        }
    }

    fn is_stored(&self, index: usize) -> bool {
        self.theta[index] != 0.0 || self.variance.as_ref().is_some_and(|v| v[index] != 0.0)
    }

    /// Number of weights that would be stored sparsely.
    pub fn nnz(&self) -> usize {
        (0..self.theta.len()).filter(|&i| self.is_stored(i)).count()
    }

    /// The storage the writer will use (convolutions: sparse tap lists; pooling: none, reported
    /// as dense).
    pub fn resolved_storage(&self) -> Storage {
        match self.op {
            LayerOp::Conv2d { .. } => return Storage::Sparse,
            LayerOp::MaxPool { .. }
            | LayerOp::GlobalAvgPool
            | LayerOp::ResidualAdd { .. }
            | LayerOp::ExitHead { .. } => return Storage::Dense,
            LayerOp::Linear => {}
        }
        match self.storage {
            StorageChoice::Dense => Storage::Dense,
            StorageChoice::Sparse => Storage::Sparse,
            StorageChoice::SparseByInput => Storage::SparseByInput,
            StorageChoice::Smallest => {
                let p = self.posterior();
                let (i, o) = (self.inputs, self.outputs);
                let sparse = payload_len(Storage::Sparse, p, i, o, self.nnz());
                let dense = payload_len(Storage::Dense, p, i, o, i * o);
                if sparse < dense {
                    Storage::Sparse
                } else {
                    Storage::Dense
                }
            }
        }
    }
}

/// A whole model to write.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Input shape (channels, height, width).
    pub input_shape: [usize; 3],
    /// Number of classes (outputs of the last layer).
    pub num_classes: usize,
    /// Raw inputs `p` are normalised as `p * input_scale + input_offset` (every channel;
    /// ignored when `channel_norm` is given).
    pub input_scale: f32,
    /// See `input_scale`.
    pub input_offset: f32,
    /// Layers, input first.
    pub layers: Vec<LayerSpec>,
    /// The network as trained, before pruning and dead-unit removal (the exporter knows it):
    /// recorded in the header, which makes the file format version 5. `None` writes the
    /// oldest version that holds the layers.
    pub trained: Option<TrainedSize>,
    /// Per-input-channel normalisation (one pair per input channel, channel order), as the
    /// trainer computed it on the training split: raw value `p` of channel `c` is fed as
    /// `p * scale_c + offset_c`. Given, it replaces `input_scale` and `input_offset`: a table
    /// whose pairs all have the same bits is written as the header's one pair (the file's
    /// version is unchanged), any other as the format version 9 table. `None` writes
    /// `input_scale` and `input_offset`.
    pub channel_norm: Option<Vec<ChannelNorm>>,
}

/// Why a spec could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// A field does not fit the format (too large for its on-disk integer).
    TooLarge(&'static str),
    /// A layer's parameter vectors do not match its shape.
    BadParameterLength {
        /// Index of the layer.
        layer: usize,
    },
    /// The written bytes do not validate (shapes not chaining, non-finite values, ...).
    Invalid(ModelError),
    /// A layer kind the target number format cannot hold.
    Unsupported {
        /// Index of the layer.
        layer: usize,
        /// What is not supported.
        what: &'static str,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::TooLarge(what) => write!(f, "{what} is too large for the model format"),
            WriteError::BadParameterLength { layer } => {
                write!(f, "layer {layer}: parameter vectors do not match its shape")
            }
            WriteError::Invalid(e) => write!(f, "model would be invalid: {e}"),
            WriteError::Unsupported { layer, what } => {
                write!(f, "layer {layer}: {what} are not supported")
            }
        }
    }
}

impl core::error::Error for WriteError {}

impl From<ModelError> for WriteError {
    fn from(e: ModelError) -> Self {
        WriteError::Invalid(e)
    }
}

pub(crate) fn to_u16(v: usize, what: &'static str) -> Result<u16, WriteError> {
    u16::try_from(v).map_err(|_| WriteError::TooLarge(what))
}

pub(crate) fn to_u32(v: usize, what: &'static str) -> Result<u32, WriteError> {
    u32::try_from(v).map_err(|_| WriteError::TooLarge(what))
}

fn push_f32s(out: &mut Vec<u8>, values: impl IntoIterator<Item = f32>) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

impl ModelSpec {
    /// Serialises the spec and validates the result.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        Ok(self.to_buffer()?.as_bytes().to_vec())
    }

    /// Serialises the spec into an aligned buffer and validates it.
    pub fn to_buffer(&self) -> Result<ModelBuffer, WriteError> {
        let geometries = self.geometries()?;
        let norm = InputNorm::resolve(
            self.input_scale,
            self.input_offset,
            self.channel_norm.as_deref(),
            self.input_shape[0],
        )?;
        // Where the payloads start: after the layer table and the normalisation table.
        let table_end = HEADER_LEN + self.layers.len() * LAYER_RECORD_LEN + norm.table_len();
        let mut payloads = Vec::new();
        let mut records = Vec::new();
        let mut version = format::MIN_FORMAT_VERSION;
        for (l, geometry) in self.layers.iter().zip(&geometries) {
            let posterior = l.posterior();
            let start = payloads.len();
            push_f32s(&mut payloads, l.bias.iter().copied());
            let mut rec = [0u8; LAYER_RECORD_LEN];
            let (kind, nnz) = match l.op {
                LayerOp::Linear => match l.resolved_storage() {
                    Storage::Dense => {
                        write_records(&mut payloads, l, 0..l.theta.len());
                        (LayerKind::DenseLinear, l.theta.len())
                    }
                    Storage::Sparse => (LayerKind::SparseLinear, write_sparse(&mut payloads, l)?),
                    Storage::SparseByInput => {
                        version = version.max(format::CONV_FORMAT_VERSION);
                        (
                            LayerKind::SparseLinearByInput,
                            write_by_input(&mut payloads, l)?,
                        )
                    }
                },
                LayerOp::Conv2d { kernel, .. } => {
                    version = version.max(format::CONV_FORMAT_VERSION);
                    write_conv_record(&mut rec, l.op)?;
                    (
                        LayerKind::Conv2d,
                        write_taps(&mut payloads, l, geometry[0], kernel)?,
                    )
                }
                LayerOp::MaxPool { window, stride } => {
                    version = version.max(format::CONV_FORMAT_VERSION);
                    write_pool_record(&mut rec, window, stride, &mut version)?;
                    (LayerKind::MaxPool, 0)
                }
                LayerOp::GlobalAvgPool => {
                    version = version.max(format::GAP_FORMAT_VERSION);
                    (LayerKind::GlobalAvgPool, 0)
                }
                LayerOp::ResidualAdd { source } => {
                    version = version.max(format::EARLY_EXIT_FORMAT_VERSION);
                    rec[record::RESIDUAL_SOURCE..record::RESIDUAL_SOURCE + 2]
                        .copy_from_slice(&to_u16(source, "residual source")?.to_le_bytes());
                    (LayerKind::ResidualAdd, 0)
                }
                LayerOp::ExitHead { prior } => {
                    version = version.max(format::EARLY_EXIT_FORMAT_VERSION);
                    rec[record::EXIT_PRIOR..record::EXIT_PRIOR + 4]
                        .copy_from_slice(&prior.to_le_bytes());
                    write_records(&mut payloads, l, 0..l.theta.len());
                    (LayerKind::ExitHead, l.theta.len())
                }
            };
            let len = payloads.len() - start;
            debug_assert!(
                !matches!(l.op, LayerOp::Linear)
                    || Some(len)
                        == payload_len(l.resolved_storage(), posterior, l.inputs, l.outputs, nnz)
            );
            debug_assert!(
                !matches!(l.op, LayerOp::Conv2d { .. })
                    || Some(len) == conv_payload_len(posterior, l.bias.len(), nnz)
            );
            if let Some(p) = l.dropout {
                // The reader rejects a probability outside [0, 1) and dropout on a layer
                // that is not linear (`BadDropout`).
                version = version.max(format::DROPOUT_FORMAT_VERSION);
                rec[record::DROPOUT_P..record::DROPOUT_P + 4].copy_from_slice(&p.to_le_bytes());
                if l.variance.is_some() {
                    return Err(WriteError::Unsupported {
                        layer: records.len() / LAYER_RECORD_LEN,
                        what: "variances beside dropout",
                    });
                }
            }
            rec[record::KIND] = kind as u8;
            rec[record::POSTERIOR] = posterior as u8;
            rec[record::ACTIVATION] = l.activation as u8;
            write_sizes(&mut rec, l.inputs, l.outputs, nnz, table_end + start, len)?;
            records.extend_from_slice(&rec);
        }

        if self.trained.is_some() {
            version = version.max(format::TRAINED_SIZE_FORMAT_VERSION);
        }
        let file_len = table_end + payloads.len() + TRAILER_LEN;
        let mut out = header_bytes(&Header {
            version,
            precision: format::Precision::F32,
            trained: self.trained,
            layer_count: self.layers.len(),
            num_classes: self.num_classes,
            input_shape: self.input_shape,
            norm,
            file_len,
            input_step: None,
        })?;
        out.extend_from_slice(&records);
        norm.write_table(&mut out);
        out.extend_from_slice(&payloads);
        let crc = format::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());

        let buffer = ModelBuffer::from_bytes(&out);
        Model::from_bytes(buffer.as_bytes())?;
        Ok(buffer)
    }
}

impl ModelSpec {
    /// The spec of a validated f32 model, with dense parameter arrays (weights the file does
    /// not store are zero) and the storage the file uses: writing it gives the same layers.
    /// For re-exporting a model file in another number format.
    pub fn from_model(model: &Model<'_>) -> Self {
        let layers = model.layers().iter().map(LayerSpec::from_layer).collect();
        let (input_scale, input_offset) = model.input_normalization();
        ModelSpec {
            input_shape: model.input_shape(),
            num_classes: model.num_classes(),
            input_scale,
            input_offset,
            layers,
            trained: model.trained_size(),
            channel_norm: model
                .has_channel_norm()
                .then(|| model.channel_norms().collect()),
        }
    }
}

impl LayerSpec {
    /// The spec of one validated f32 layer (see [`ModelSpec::from_model`]).
    fn from_layer(layer: &crate::model::Layer<'_>) -> Self {
        use crate::model::{Operation, Weights};
        let (inputs, outputs) = (layer.inputs(), layer.outputs());
        let words = layer.posterior().words_per_weight();
        let dense = layer.dense_weights();
        let mut theta = vec![0.0f32; dense];
        let mut variance = (words == 2).then(|| vec![0.0f32; dense]);
        // Stores weight record `r` (θ, then σ² when Gaussian) at flat index `at`.
        let mut put = |at: usize, r: &[f32]| {
            theta[at] = r[0];
            if let Some(v) = variance.as_mut() {
                v[at] = r[1];
            }
        };
        let mut storage = StorageChoice::Dense;
        match layer.weights() {
            Weights::Dense { values } => {
                for (at, r) in values.chunks_exact(words).enumerate() {
                    put(at, r);
                }
            }
            Weights::Sparse {
                row_ptr,
                cols,
                values,
            } => {
                storage = StorageChoice::Sparse;
                for (j, b) in row_ptr.windows(2).enumerate() {
                    for k in b[0] as usize..b[1] as usize {
                        put(j * inputs + cols[k] as usize, &values[k * words..]);
                    }
                }
            }
            Weights::SparseByInput {
                col_ptr,
                rows,
                values,
            } => {
                storage = StorageChoice::SparseByInput;
                for (i, b) in col_ptr.windows(2).enumerate() {
                    for k in b[0] as usize..b[1] as usize {
                        put(rows[k] as usize * inputs + i, &values[k * words..]);
                    }
                }
            }
            Weights::Conv {
                row_ptr,
                taps,
                values,
            } => {
                storage = StorageChoice::Sparse;
                if let Operation::Conv2d(g) = layer.operation() {
                    let [kh, kw] = g.window;
                    let per_channel = g.input[0] * kh * kw;
                    for (co, b) in row_ptr.windows(2).enumerate() {
                        for k in b[0] as usize..b[1] as usize {
                            let (ci, ky, kx) = format::unpack_tap(taps[k]);
                            let at = co * per_channel + (ci * kh + ky) * kw + kx;
                            put(at, &values[k * words..]);
                        }
                    }
                }
            }
            Weights::None => {}
        }
        let op = match layer.operation() {
            Operation::Linear => LayerOp::Linear,
            Operation::Conv2d(g) => LayerOp::Conv2d {
                out_channels: g.output[0],
                kernel: g.window,
                stride: g.stride,
                padding: g.padding,
            },
            Operation::MaxPool(g) => LayerOp::MaxPool {
                window: g.window,
                stride: g.stride,
            },
            Operation::GlobalAvgPool { .. } => LayerOp::GlobalAvgPool,
            Operation::ResidualAdd { source } => LayerOp::ResidualAdd { source },
            Operation::ExitHead { .. } => LayerOp::ExitHead {
                prior: layer.exit_prior().unwrap_or(0.0),
            },
        };
        LayerSpec {
            op,
            inputs,
            outputs,
            activation: layer.activation(),
            bias: layer.bias().to_vec(),
            theta,
            variance,
            storage,
            dropout: layer.drop_probability(),
        }
    }
}

/// Writes the u32 size fields every layer record has: inputs, outputs, stored weights,
/// payload offset and payload length.
pub(crate) fn write_sizes(
    rec: &mut [u8; LAYER_RECORD_LEN],
    inputs: usize,
    outputs: usize,
    nnz: usize,
    payload_offset: usize,
    payload_len: usize,
) -> Result<(), WriteError> {
    let fields = [
        (record::INPUTS, to_u32(inputs, "layer inputs")?),
        (record::OUTPUTS, to_u32(outputs, "layer outputs")?),
        (record::NNZ, to_u32(nnz, "weight count")?),
        (
            record::PAYLOAD_OFFSET,
            to_u32(payload_offset, "payload offset")?,
        ),
        (record::PAYLOAD_LEN, to_u32(payload_len, "payload length")?),
    ];
    for (at, v) in fields {
        rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// How a file to write normalises its inputs: the header's pair, and the per-channel table
/// (format version 9) when the channels differ.
#[derive(Clone, Copy)]
pub(crate) struct InputNorm<'a> {
    pub scale: f32,
    pub offset: f32,
    pub table: Option<&'a [ChannelNorm]>,
}

impl<'a> InputNorm<'a> {
    /// A spec's normalisation as stored: `channel_norm` (when given) must have one pair per
    /// input channel; all pairs equal (bit for bit) go to the header, else the table does
    /// and the header holds the identity.
    pub fn resolve(
        input_scale: f32,
        input_offset: f32,
        channel_norm: Option<&'a [ChannelNorm]>,
        channels: usize,
    ) -> Result<Self, WriteError> {
        let Some(table) = channel_norm else {
            return Ok(InputNorm {
                scale: input_scale,
                offset: input_offset,
                table: None,
            });
        };
        let stored = Self::table(table, channels)?;
        Ok(match format::uniform_norm(table) {
            Some(n) => InputNorm {
                scale: n.scale,
                offset: n.offset,
                table: None,
            },
            None => stored,
        })
    }

    /// `table` stored as a table even when its pairs are equal (a signed-input file needs
    /// one), with the identity in the header; it must have one pair per input channel.
    pub fn table(table: &'a [ChannelNorm], channels: usize) -> Result<Self, WriteError> {
        if table.len() != channels {
            return Err(WriteError::Invalid(ModelError::ChannelNormLength {
                found: u32::try_from(table.len()).unwrap_or(u32::MAX),
                expected: channels,
            }));
        }
        Ok(InputNorm {
            scale: ChannelNorm::IDENTITY.scale,
            offset: ChannelNorm::IDENTITY.offset,
            table: Some(table),
        })
    }

    /// Bytes of the table in the file (0 without one).
    pub fn table_len(&self) -> usize {
        self.table
            .and_then(|t| format::channel_norm_table_len(t.len()))
            .unwrap_or(0)
    }

    /// Appends the table (count, then the pairs), if any.
    pub fn write_table(&self, out: &mut Vec<u8>) {
        if let Some(t) = self.table {
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            push_f32s(out, t.iter().flat_map(|n| [n.scale, n.offset]));
        }
    }

    /// The oldest format version that holds this normalisation, at least `version`.
    pub fn version(&self, version: u16) -> u16 {
        if self.table.is_some() {
            version.max(format::CHANNEL_NORM_FORMAT_VERSION)
        } else {
            version
        }
    }
}

/// Writes a pooling record's window and stride (bytes 24..27); a non-square window raises
/// `version` to [`format::POOL_WINDOW_FORMAT_VERSION`] (a square one leaves byte 26 zero, as
/// every older file has it).
pub(crate) fn write_pool_record(
    rec: &mut [u8],
    window: [usize; 2],
    stride: usize,
    version: &mut u16,
) -> Result<(), WriteError> {
    rec[record::POOL_SIZE] = to_u8(window[0], "pool window height")?;
    rec[record::POOL_STRIDE] = to_u8(stride, "pool stride")?;
    if window[1] != window[0] {
        rec[record::POOL_WIDTH] = to_u8(window[1], "pool window width")?;
        if window[1] == 0 {
            return Err(WriteError::TooLarge("pool window width"));
        }
        *version = (*version).max(format::POOL_WINDOW_FORMAT_VERSION);
    }
    Ok(())
}

/// The header fields of a file to write.
pub(crate) struct Header<'a> {
    pub version: u16,
    pub precision: format::Precision,
    pub layer_count: usize,
    pub num_classes: usize,
    pub input_shape: [usize; 3],
    pub norm: InputNorm<'a>,
    pub trained: Option<TrainedSize>,
    pub file_len: usize,
    /// The input step of a fixed-point file that reads signed codes (version 10).
    pub input_step: Option<f32>,
}

/// Serialises a header ([`HEADER_LEN`] bytes).
pub(crate) fn header_bytes(h: &Header) -> Result<Vec<u8>, WriteError> {
    let mut out = vec![0u8; HEADER_LEN];
    out[header::MAGIC..header::MAGIC + 4].copy_from_slice(&format::MAGIC);
    let u16_fields = [
        (header::VERSION, {
            let version = h.norm.version(h.version);
            match h.input_step {
                Some(_) => version.max(format::SIGNED_INPUT_FORMAT_VERSION),
                None => version,
            }
        }),
        (header::HEADER_LEN, HEADER_LEN as u16),
        (header::LAYER_COUNT, to_u16(h.layer_count, "layer count")?),
        (header::NUM_CLASSES, to_u16(h.num_classes, "class count")?),
        (
            header::INPUT_CHANNELS,
            to_u16(h.input_shape[0], "input channels")?,
        ),
        (
            header::INPUT_HEIGHT,
            to_u16(h.input_shape[1], "input height")?,
        ),
        (
            header::INPUT_WIDTH,
            to_u16(h.input_shape[2], "input width")?,
        ),
    ];
    for (at, v) in u16_fields {
        out[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    out[header::PRECISION] = h.precision as u8;
    out[header::FILE_LEN..header::FILE_LEN + 4]
        .copy_from_slice(&to_u32(h.file_len, "model size")?.to_le_bytes());
    if h.norm.table.is_some() {
        out[header::FLAGS] = format::FLAG_CHANNEL_NORM;
    }
    if let Some(step) = h.input_step {
        out[header::FLAGS] |= format::FLAG_SIGNED_INPUT;
        out[header::INPUT_STEP..header::INPUT_STEP + 4].copy_from_slice(&step.to_le_bytes());
    }
    out[header::INPUT_SCALE..header::INPUT_SCALE + 4].copy_from_slice(&h.norm.scale.to_le_bytes());
    out[header::INPUT_OFFSET..header::INPUT_OFFSET + 4]
        .copy_from_slice(&h.norm.offset.to_le_bytes());
    out[header::LAYER_TABLE..header::LAYER_TABLE + 4]
        .copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    if let Some(t) = h.trained {
        out[header::TRAINED_WEIGHTS..header::TRAINED_WEIGHTS + 4]
            .copy_from_slice(&t.dense_weights.to_le_bytes());
        out[header::TRAINED_PARAMS..header::TRAINED_PARAMS + 4]
            .copy_from_slice(&t.dense_params.to_le_bytes());
    }
    Ok(out)
}

impl ModelSpec {
    /// Checks every layer's parameter lengths against the shapes flowing from the input, and
    /// returns each layer's input shape (channels, height, width).
    fn geometries(&self) -> Result<Vec<[usize; 3]>, WriteError> {
        let mut shape = self.input_shape;
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (index, l) in self.layers.iter().enumerate() {
            let bad = WriteError::BadParameterLength { layer: index };
            let inputs = shape[0] * shape[1] * shape[2];
            let (weights, bias, next) = match l.op {
                LayerOp::Linear => (
                    l.inputs.checked_mul(l.outputs),
                    l.outputs,
                    [l.outputs, 1, 1],
                ),
                LayerOp::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                } => {
                    let h =
                        window_output(shape[1], kernel[0], stride, padding).ok_or(bad.clone())?;
                    let w =
                        window_output(shape[2], kernel[1], stride, padding).ok_or(bad.clone())?;
                    let taps = out_channels
                        .checked_mul(shape[0])
                        .and_then(|n| n.checked_mul(kernel[0] * kernel[1]));
                    (taps, out_channels, [out_channels, h, w])
                }
                LayerOp::MaxPool { window, stride } => {
                    let h = window_output(shape[1], window[0], stride, 0).ok_or(bad.clone())?;
                    let w = window_output(shape[2], window[1], stride, 0).ok_or(bad.clone())?;
                    (Some(0), 0, [shape[0], h, w])
                }
                LayerOp::GlobalAvgPool => (Some(0), 0, [shape[0], 1, 1]),
                LayerOp::ResidualAdd { .. } => (Some(0), 0, shape),
                LayerOp::ExitHead { .. } => {
                    if l.inputs != shape[0] || l.outputs != self.num_classes {
                        return Err(bad);
                    }
                    (Some(shape[0] * l.outputs), l.outputs, shape)
                }
            };
            let bad_variance = l
                .variance
                .as_ref()
                .is_some_and(|v| Some(v.len()) != weights);
            let linear = l.op == LayerOp::Linear;
            let exit = matches!(l.op, LayerOp::ExitHead { .. });
            if Some(l.theta.len()) != weights
                || l.bias.len() != bias
                || bad_variance
                || (!linear && !exit && (l.inputs != inputs || l.outputs != next.iter().product()))
            {
                return Err(bad);
            }
            shapes.push(shape);
            shape = if linear { [l.outputs, 1, 1] } else { next };
        }
        Ok(shapes)
    }
}

/// Writes a convolution's geometry into its record (bytes 24..30): output channels, kernel,
/// stride, padding. Other layers are left as they are.
pub(crate) fn write_conv_record(
    rec: &mut [u8; LAYER_RECORD_LEN],
    op: LayerOp,
) -> Result<(), WriteError> {
    if let LayerOp::Conv2d {
        out_channels,
        kernel,
        stride,
        padding,
    } = op
    {
        rec[record::CONV_OUT_CHANNELS..record::CONV_OUT_CHANNELS + 2]
            .copy_from_slice(&to_u16(out_channels, "output channels")?.to_le_bytes());
        rec[record::CONV_KERNEL_H] = to_u8(kernel[0], "kernel height")?;
        rec[record::CONV_KERNEL_W] = to_u8(kernel[1], "kernel width")?;
        rec[record::CONV_STRIDE] = to_u8(stride, "stride")?;
        rec[record::CONV_PADDING] = to_u8(padding, "padding")?;
    }
    Ok(())
}

/// Appends row pointers, packed taps and weight records of a convolution; returns nnz.
fn write_taps(
    out: &mut Vec<u8>,
    l: &LayerSpec,
    in_channels: usize,
    kernel: [usize; 2],
) -> Result<usize, WriteError> {
    let per_channel = in_channels * kernel[0] * kernel[1];
    let out_channels = l.bias.len();
    let mut row_ptr = vec![0u32];
    let mut kept = Vec::new();
    for co in 0..out_channels {
        kept.extend((co * per_channel..(co + 1) * per_channel).filter(|&i| l.is_stored(i)));
        row_ptr.push(to_u32(kept.len(), "weight count")?);
    }
    for p in &row_ptr {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let area = kernel[0] * kernel[1];
    for &i in &kept {
        let local = i % per_channel;
        let tap = pack_tap(local / area, local % area / kernel[1], local % kernel[1]);
        out.extend_from_slice(&tap.to_le_bytes());
    }
    write_records(out, l, kept.iter().copied());
    Ok(kept.len())
}

pub(crate) fn to_u8(v: usize, what: &'static str) -> Result<u8, WriteError> {
    u8::try_from(v).map_err(|_| WriteError::TooLarge(what))
}

/// Appends the weight records (θ, or θ and σ²) of the given flat indices.
fn write_records(out: &mut Vec<u8>, l: &LayerSpec, indices: impl Iterator<Item = usize>) {
    for i in indices {
        push_f32s(out, [l.theta[i]]);
        if let Some(var) = &l.variance {
            push_f32s(out, [var[i]]);
        }
    }
}

/// Appends column pointers, padded row indices and weight records (by input); returns nnz.
fn write_by_input(out: &mut Vec<u8>, l: &LayerSpec) -> Result<usize, WriteError> {
    let columns = (0..l.inputs).map(|i| (0..l.outputs).map(move |j| (j * l.inputs + i, j)));
    write_compressed(out, l, columns, "layer outputs")
}

/// Appends row pointers, padded column indices and weight records; returns nnz.
fn write_sparse(out: &mut Vec<u8>, l: &LayerSpec) -> Result<usize, WriteError> {
    let rows = (0..l.outputs).map(|j| (0..l.inputs).map(move |i| (j * l.inputs + i, i)));
    write_compressed(out, l, rows, "layer inputs")
}

/// Appends a compressed sparse payload (after the bias): pointers, u16 indices padded to 4
/// bytes, weight records. `lines` yields, per row or column, `(flat weight index, stored index)`
/// pairs in order; only stored weights are kept. Returns nnz.
fn write_compressed<L, I>(
    out: &mut Vec<u8>,
    l: &LayerSpec,
    lines: L,
    what: &'static str,
) -> Result<usize, WriteError>
where
    L: Iterator<Item = I>,
    I: Iterator<Item = (usize, usize)>,
{
    let mut pointers = vec![0u32];
    let mut kept = Vec::new();
    for line in lines {
        kept.extend(line.filter(|&(k, _)| l.is_stored(k)));
        pointers.push(to_u32(kept.len(), "weight count")?);
    }
    for p in &pointers {
        out.extend_from_slice(&p.to_le_bytes());
    }
    for &(_, index) in &kept {
        out.extend_from_slice(&to_u16(index, what)?.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(format::ALIGNMENT), 0);
    write_records(out, l, kept.iter().map(|&(k, _)| k));
    Ok(kept.len())
}

/// Model bytes in a 4-byte-aligned heap buffer, as [`Model::from_bytes`] requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelBuffer {
    words: Vec<u32>,
    len: usize,
}

impl ModelBuffer {
    /// Copies bytes (e.g. read from a file) into an aligned buffer. Does not validate.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self {
            words,
            len: bytes.len(),
        }
    }

    /// The bytes, 4-byte aligned.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u32, u8>(&self.words)[..self.len]
    }

    /// Parses and validates the model.
    pub fn model(&self) -> Result<Model<'_>, ModelError> {
        Model::from_bytes(self.as_bytes())
    }

    /// The bytes, aligned, for the rest of the program: for a program that keeps its model
    /// until it exits (a command-line tool) and holds the validated view beside them. The
    /// memory is never freed.
    pub fn leak(self) -> &'static [u8] {
        let len = self.len;
        let words: &'static [u32] = alloc::boxed::Box::leak(self.words.into_boxed_slice());
        &bytemuck::cast_slice::<u32, u8>(words)[..len]
    }
}

/// Seeded random models, for tests, benchmarks and the demo before a trained model exists.
pub mod synthetic {
    use super::*;
    use crate::normal::standard_normal;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro128PlusPlus;

    /// A random early-exit residual network with Gaussian posteriors on a `1 x side x side`
    /// input: a 3x3 stem convolution to `channels` (ReLU), then `blocks` residual blocks
    /// (3x3 convolution, ReLU, 3x3 convolution, addition of the block input, ReLU), each
    /// followed by an exit head (global average pooling, linear to `classes`) with prior
    /// `priors[b]`. Weights are He-initialised (θ ~ N(0, 2 / fan_in)), scaled by 0.5 in the
    /// second convolution of each block, σ² = 0.25 θ²; exit heads are scaled up by `sharpness`
    /// so that exits are confident to various degrees.
    pub fn resnet_ee(
        seed: u64,
        side: usize,
        channels: usize,
        classes: usize,
        priors: &[f32],
        sharpness: f32,
    ) -> ModelSpec {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
        let mut gauss = |n: usize, sd: f32| -> (Vec<f32>, Vec<f32>) {
            let theta: Vec<f32> = (0..n).map(|_| sd * standard_normal(&mut rng)).collect();
            let var = theta.iter().map(|t| 0.25 * t * t).collect();
            (theta, var)
        };
        let conv = |cin: usize, theta: Vec<f32>, var: Vec<f32>, act: Activation| LayerSpec {
            op: LayerOp::Conv2d {
                out_channels: channels,
                kernel: [3, 3],
                stride: 1,
                padding: 1,
            },
            inputs: cin * side * side,
            outputs: channels * side * side,
            activation: act,
            bias: vec![0.0; channels],
            theta,
            variance: Some(var),
            storage: StorageChoice::Sparse,
            dropout: None,
        };
        let map = channels * side * side;
        let mut layers = Vec::new();
        let (t, v) = gauss(channels * 9, libm::sqrtf(2.0 / 9.0));
        layers.push(conv(1, t, v, Activation::Relu));
        let mut block_input = 0;
        for &prior in priors {
            let sd = libm::sqrtf(2.0 / (9.0 * channels as f32));
            let (t, v) = gauss(channels * channels * 9, sd);
            layers.push(conv(channels, t, v, Activation::Relu));
            let (t, v) = gauss(channels * channels * 9, 0.5 * sd);
            layers.push(conv(channels, t, v, Activation::Identity));
            layers.push(LayerSpec {
                op: LayerOp::ResidualAdd {
                    source: block_input,
                },
                inputs: map,
                outputs: map,
                activation: Activation::Relu,
                bias: Vec::new(),
                theta: Vec::new(),
                variance: None,
                storage: StorageChoice::Dense,
                dropout: None,
            });
            block_input = layers.len() - 1;
            let (t, v) = gauss(classes * channels, sharpness / libm::sqrtf(channels as f32));
            let bias = gauss(classes, 0.5).0;
            layers.push(LayerSpec {
                op: LayerOp::ExitHead { prior },
                inputs: channels,
                outputs: classes,
                activation: Activation::Identity,
                bias,
                theta: t,
                variance: Some(v),
                storage: StorageChoice::Dense,
                dropout: None,
            });
        }
        ModelSpec {
            input_shape: [1, side, side],
            num_classes: classes,
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            layers,
            trained: None,
            channel_norm: None,
        }
    }

    /// A random multilayer perceptron with Gaussian posteriors: `widths[0]` inputs, ReLU
    /// hidden layers, `widths[last]` classes. Each weight survives with probability `density`;
    /// survivors have θ ~ N(0, 2 / (fan_in · density)) (He initialisation over the surviving
    /// inputs) and σ² = 0.25 θ² (α = 0.25). Storage is [`StorageChoice::Smallest`].
    pub fn mlp(seed: u64, widths: &[usize], density: f32) -> ModelSpec {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
        let mut layers = Vec::new();
        for (index, pair) in widths.windows(2).enumerate() {
            let (inputs, outputs) = (pair[0], pair[1]);
            let scale = libm::sqrtf(2.0 / (inputs as f32 * density.max(1e-6)));
            let mut theta = vec![0.0f32; inputs * outputs];
            for t in theta.iter_mut() {
                let keep = (rng.next_u32() >> 8) as f32 / 16_777_216.0 < density;
                let w = standard_normal(&mut rng) * scale;
                if keep {
                    *t = w;
                }
            }
            let variance = theta.iter().map(|t| 0.25 * t * t).collect();
            let bias = (0..outputs)
                .map(|_| 0.01 * standard_normal(&mut rng))
                .collect();
            let last = index + 2 == widths.len();
            layers.push(LayerSpec {
                op: LayerOp::Linear,
                inputs,
                outputs,
                activation: if last {
                    Activation::Identity
                } else {
                    Activation::Relu
                },
                bias,
                theta,
                variance: Some(variance),
                storage: StorageChoice::Smallest,
                dropout: None,
            });
        }
        ModelSpec {
            input_shape: [1, 1, widths.first().copied().unwrap_or(0)],
            num_classes: widths.last().copied().unwrap_or(0),
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            layers,
            trained: None,
            channel_norm: None,
        }
    }
}
