//! The zero-copy model reader: [`Model::from_bytes`] validates a flash table once, so that
//! inference needs no further checks and cannot index out of bounds.

use crate::error::ModelError;
use crate::format::{
    self, conv_payload_len, header, payload_len, record, unpack_tap, window_output, Activation,
    ChannelNorm, LayerKind, Posterior, Precision, Storage, TrainedSize, ALIGNMENT, HEADER_LEN,
    LAYER_RECORD_LEN, MAX_CLASSES, MAX_LAYERS, MAX_UNITS, TRAILER_LEN,
};

#[cfg(target_endian = "big")]
compile_error!("tinybayes reads model tables in place and needs a little-endian target");

/// How a layer's weights are laid out in flash, borrowed from the model bytes.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// Row-major `outputs x inputs` weight records.
    Dense {
        /// `outputs * inputs * words_per_weight` f32 values.
        values: &'a [f32],
    },
    /// Compressed sparse rows.
    Sparse {
        /// `outputs + 1` offsets into `cols`; row `j` is `row_ptr[j]..row_ptr[j + 1]`.
        row_ptr: &'a [u32],
        /// Input index of every stored weight, strictly increasing within a row.
        cols: &'a [u16],
        /// `nnz * words_per_weight` f32 values, in the order of `cols`.
        values: &'a [f32],
    },
    /// Compressed sparse columns (per input).
    SparseByInput {
        /// `inputs + 1` offsets into `rows`; input `i` is `col_ptr[i]..col_ptr[i + 1]`.
        col_ptr: &'a [u32],
        /// Output index of every stored weight, strictly increasing within a column.
        rows: &'a [u16],
        /// `nnz * words_per_weight` f32 values, in the order of `rows`.
        values: &'a [f32],
    },
    /// Convolution taps, per output channel.
    Conv {
        /// `out_channels + 1` offsets into `taps`.
        row_ptr: &'a [u32],
        /// Packed taps (`format::pack_tap`), strictly increasing within a channel.
        taps: &'a [u32],
        /// `nnz * words_per_weight` f32 values, in the order of `taps`.
        values: &'a [f32],
    },
    /// No weights (pooling).
    None,
}

/// Input and output geometry of a convolution or a pooling layer (channel-major maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Geometry {
    /// Input (channels, height, width).
    pub input: [usize; 3],
    /// Output (channels, height, width).
    pub output: [usize; 3],
    /// Window (height, width): the kernel or the pooling window.
    pub window: [usize; 2],
    /// Stride along both axes.
    pub stride: usize,
    /// Zero padding on every side (convolutions only; 0 for pooling).
    pub padding: usize,
}

/// What a layer computes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Operation {
    /// `y = activation(W x + b)` over the flattened input.
    Linear,
    /// `y = activation(conv(x, W) + b)`, sparse taps.
    Conv2d(Geometry),
    /// Per-channel maximum over each window.
    MaxPool(Geometry),
    /// Per-channel mean over the whole map (format version 10): a `[C, H, W]` map of shape
    /// `map` becomes `[C, 1, 1]`. No parameters, no activation.
    GlobalAvgPool {
        /// Shape (channels, height, width) of the map pooled.
        map: [usize; 3],
    },
    /// `y = activation(x + output of layer source)`: closes a residual block.
    ResidualAdd {
        /// Index of the earlier layer whose output (the block input) is added.
        source: usize,
    },
    /// An exit: `logits = W gap(x) + b` over the current map of shape `map` (channels,
    /// height, width); the main path continues with `x` unchanged. Its prior probability
    /// `p(z)` is a parameter of the layer ([`Layer::exit_prior`]).
    ExitHead {
        /// Shape of the map the head pools.
        map: [usize; 3],
    },
}

/// One validated layer: linear, convolution or pooling.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    inputs: usize,
    outputs: usize,
    activation: Activation,
    posterior: Posterior,
    operation: Operation,
    bias: &'a [f32],
    weights: Weights<'a>,
    /// A later residual addition reads this layer's output.
    residual_source: bool,
    /// An exit head's prior probability of stopping there (0 for other layers).
    exit_prior: f32,
    /// A Bernoulli layer's probability that an input is dropped (0 for other layers).
    drop_probability: f32,
}

impl<'a> Layer<'a> {
    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Number of output units.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// The non-linearity applied to the outputs.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// The posterior over the weights.
    pub fn posterior(&self) -> Posterior {
        self.posterior
    }
    /// What the layer computes, with its geometry.
    pub fn operation(&self) -> Operation {
        self.operation
    }
    /// The layer's kind as stored in the file.
    pub fn kind(&self) -> LayerKind {
        match (self.operation, self.weights) {
            (Operation::Conv2d(_), _) => LayerKind::Conv2d,
            (Operation::MaxPool(_), _) => LayerKind::MaxPool,
            (Operation::GlobalAvgPool { .. }, _) => LayerKind::GlobalAvgPool,
            (Operation::ResidualAdd { .. }, _) => LayerKind::ResidualAdd,
            (Operation::ExitHead { .. }, _) => LayerKind::ExitHead,
            (Operation::Linear, Weights::Dense { .. }) => LayerKind::DenseLinear,
            (Operation::Linear, Weights::SparseByInput { .. }) => LayerKind::SparseLinearByInput,
            (Operation::Linear, _) => LayerKind::SparseLinear,
        }
    }
    /// The (deterministic) bias: one per output of a linear layer, one per output channel of a
    /// convolution, none for pooling.
    pub fn bias(&self) -> &'a [f32] {
        self.bias
    }
    /// The stored weights.
    pub fn weights(&self) -> Weights<'a> {
        self.weights
    }
    /// How the weights are stored: convolutions store sparse tap lists; pooling has no
    /// weights and reports `Dense`.
    pub fn storage(&self) -> Storage {
        match self.weights {
            Weights::Dense { .. } | Weights::None => Storage::Dense,
            Weights::Sparse { .. } | Weights::Conv { .. } => Storage::Sparse,
            Weights::SparseByInput { .. } => Storage::SparseByInput,
        }
    }
    /// Number of stored weights (dense linear: `inputs * outputs`; convolution: taps).
    pub fn nnz(&self) -> usize {
        match self.weights {
            Weights::Dense { values }
            | Weights::Sparse { values, .. }
            | Weights::SparseByInput { values, .. }
            | Weights::Conv { values, .. } => values.len() / self.posterior.words_per_weight(),
            Weights::None => 0,
        }
    }
    /// Weights of the unpruned layer: `inputs * outputs` (linear, exit head), `out_channels *
    /// in_channels * kernel area` (convolution), 0 (pooling, residual addition).
    pub fn dense_weights(&self) -> usize {
        match self.operation {
            Operation::Linear | Operation::ExitHead { .. } => self.inputs * self.outputs,
            Operation::Conv2d(g) => g.output[0] * g.input[0] * g.window[0] * g.window[1],
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => 0,
        }
    }
    /// Whether a later residual addition reads this layer's output.
    pub fn is_residual_source(&self) -> bool {
        self.residual_source
    }
    /// An exit head's prior probability `p(z)` of stopping there; `None` for other layers.
    pub fn exit_prior(&self) -> Option<f32> {
        matches!(self.operation, Operation::ExitHead { .. }).then_some(self.exit_prior)
    }
    /// A Bernoulli (MC dropout) layer's probability `p` that each input is dropped in a
    /// sample; `None` for other posteriors.
    pub fn drop_probability(&self) -> Option<f32> {
        (self.posterior == Posterior::Bernoulli).then_some(self.drop_probability)
    }
    /// The probability `q = 1 - p` that an input is kept (1 for layers without dropout): the
    /// factor of the mean network's inputs.
    pub fn keep_probability(&self) -> f32 {
        1.0 - self.drop_probability
    }
    /// The drop threshold of the layer's drop probability ([`format::drop_threshold`]; 0,
    /// nothing dropped, for layers without dropout).
    pub fn drop_threshold(&self) -> u32 {
        format::drop_threshold(self.drop_probability)
    }
    /// Bytes of the layer's payload in the model file (as `format` defines it per kind).
    pub fn payload_bytes(&self) -> usize {
        match self.operation {
            Operation::Linear | Operation::ExitHead { .. } => payload_len(
                self.storage(),
                self.posterior,
                self.inputs,
                self.outputs,
                self.nnz(),
            ),
            Operation::Conv2d(g) => conv_payload_len(self.posterior, g.output[0], self.nnz()),
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => Some(0),
        }
        // A validated layer's payload fits in the file, so the sum cannot overflow.
        .unwrap_or(0)
    }
    /// Multiply-accumulates of one mean-weights pass over the stored weights (an exit head:
    /// its linear layer; pooling and additions count none).
    pub fn macs(&self) -> usize {
        match self.operation {
            Operation::Linear | Operation::ExitHead { .. } => self.nnz(),
            Operation::Conv2d(g) => self.nnz() * g.output[1] * g.output[2],
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => 0,
        }
    }
}

/// A validated model, borrowing its bytes (typically straight from flash).
#[derive(Clone, Debug)]
pub struct Model<'a> {
    bytes: &'a [u8],
    input_shape: [usize; 3],
    num_classes: usize,
    /// The header's pair `[scale, offset]` (the identity when there is a per-channel table).
    input_norm: [[f32; 2]; 1],
    /// Version 9: `[scale, offset]` per input channel; empty without a table.
    channel_norm: &'a [[f32; 2]],
    trained: Option<TrainedSize>,
    layers: heapless::Vec<Layer<'a>, MAX_LAYERS>,
}

pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

pub(crate) fn f32_at(bytes: &[u8], offset: usize) -> f32 {
    f32::from_bits(u32_at(bytes, offset))
}

pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Casts an aligned byte range to `T` values. Offsets were checked against the file length and
/// alignment before this is called, so the casts cannot fail; an error is still mapped to
/// `PayloadOutOfBounds` rather than panicking.
pub(crate) fn cast<T: bytemuck::AnyBitPattern>(
    bytes: &[u8],
    start: usize,
    len: usize,
    layer: usize,
) -> Result<&[T], ModelError> {
    let raw = bytes
        .get(start..start + len)
        .ok_or(ModelError::PayloadOutOfBounds { layer })?;
    bytemuck::try_cast_slice(raw).map_err(|_| ModelError::PayloadOutOfBounds { layer })
}

/// The parts of a model file every precision shares, checked without any floating-point
/// operation (so fixed-point builds link no soft-float code): length, alignment, magic,
/// version, declared length, CRC-32, reserved fields, precision, counts and input shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Envelope {
    pub version: u16,
    pub precision: Precision,
    pub layer_count: u16,
    pub classes: u16,
    pub input_shape: [usize; 3],
    /// The trained network's size (version 5, when recorded).
    pub trained: Option<TrainedSize>,
    /// Offset of the CRC trailer (end of the payloads).
    pub body_end: usize,
    /// Offset of the first payload byte (end of the layer table, or of the per-channel
    /// normalisation table that follows it).
    pub payload_start: usize,
    /// Offset of the per-channel normalisation pairs (version 9, flagged), validated: as many
    /// as input channels, finite, non-zero scales.
    pub channel_norm: Option<usize>,
    /// The input step of a signed-input file (version 10, [`format::FLAG_SIGNED_INPUT`]),
    /// validated: finite and positive.
    pub input_step: Option<f32>,
}

/// The input step of a file flagged [`format::FLAG_SIGNED_INPUT`], checked without any
/// floating-point operation: version 10 or later, a fixed-point file with a per-channel
/// table, a finite positive step.
fn signed_input_step(
    bytes: &[u8],
    version: u16,
    precision: Precision,
    has_channel_norm: bool,
) -> Result<f32, ModelError> {
    let bits = u32_at(bytes, header::INPUT_STEP);
    let positive = bits >> 31 == 0 && bits != 0;
    if version < format::SIGNED_INPUT_FORMAT_VERSION
        || precision == Precision::F32
        || !has_channel_norm
        || !finite_bits(bits)
        || !positive
    {
        return Err(ModelError::BadSignedInput);
    }
    Ok(f32::from_bits(bits))
}

/// Channel `channel`'s pair from `table`, or `global` (no table, or out of range).
pub(crate) fn norm_of(global: [f32; 2], table: &[[f32; 2]], channel: usize) -> ChannelNorm {
    let [scale, offset] = table.get(channel).copied().unwrap_or(global);
    ChannelNorm { scale, offset }
}

/// Whether the f32 with these bits is finite (no float operation).
const fn finite_bits(bits: u32) -> bool {
    (bits >> 23) & 0xff != 0xff
}

/// Checks the per-channel normalisation table at `start` (format version 9) without any
/// floating-point operation, and returns the offset where it ends. The header's own pair must
/// then be the identity (scale 1, offset 0), so every file has one encoding; with
/// `zero_offsets` (a signed-input file) every offset must be zero.
fn parse_channel_norm(
    bytes: &[u8],
    start: usize,
    body_end: usize,
    channels: usize,
    zero_offsets: bool,
) -> Result<usize, ModelError> {
    if start + 4 > body_end {
        return Err(ModelError::ChannelNormTruncated);
    }
    let found = u32_at(bytes, start);
    if found as usize != channels {
        return Err(ModelError::ChannelNormLength {
            found,
            expected: channels,
        });
    }
    // At most 65535 channels: no overflow.
    let end = start + 4 + 8 * channels;
    if end > body_end {
        return Err(ModelError::ChannelNormTruncated);
    }
    // The bits of channel `c`'s (scale, offset).
    let pair = |c: usize| {
        let at = start + 4 + 8 * c;
        (u32_at(bytes, at), u32_at(bytes, at + 4))
    };
    for channel in 0..channels {
        let (scale, offset) = pair(channel);
        if !finite_bits(scale) || !finite_bits(offset) {
            return Err(ModelError::ChannelNormNotFinite { channel });
        }
        if scale & 0x7fff_ffff == 0 {
            return Err(ModelError::ChannelNormZeroScale { channel });
        }
    }
    let identity = format::ChannelNorm::IDENTITY;
    if u32_at(bytes, header::INPUT_SCALE) != identity.scale.to_bits()
        || u32_at(bytes, header::INPUT_OFFSET) != identity.offset.to_bits()
    {
        return Err(ModelError::BadInputNormalization);
    }
    // A signed-input file's folded first layer reads codes at scale `step * scale_c`: no
    // offsets (either sign of zero).
    if zero_offsets && (0..channels).any(|c| pair(c).1 & 0x7fff_ffff != 0) {
        return Err(ModelError::BadSignedInput);
    }
    Ok(end)
}

/// The per-channel normalisation pairs of a validated file (`[scale, offset]` per channel,
/// empty when the file has no table).
pub(crate) fn channel_norm_pairs<'a>(
    bytes: &'a [u8],
    envelope: &Envelope,
) -> Result<&'a [[f32; 2]], ModelError> {
    match envelope.channel_norm {
        Some(at) => {
            let raw = bytes
                .get(at..at + 8 * envelope.input_shape[0])
                .ok_or(ModelError::ChannelNormTruncated)?;
            bytemuck::try_cast_slice(raw).map_err(|_| ModelError::ChannelNormTruncated)
        }
        None => Ok(&[]),
    }
}

impl Envelope {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        let len = bytes.len();
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(ModelError::TooShort { len });
        }
        if (bytes.as_ptr() as usize) % ALIGNMENT != 0 {
            return Err(ModelError::Misaligned);
        }
        if bytes[header::MAGIC..header::MAGIC + 4] != format::MAGIC {
            return Err(ModelError::BadMagic);
        }
        let version = u16_at(bytes, header::VERSION);
        if !(format::MIN_FORMAT_VERSION..=format::FORMAT_VERSION).contains(&version) {
            return Err(ModelError::UnsupportedVersion { found: version });
        }
        let header_len = u16_at(bytes, header::HEADER_LEN);
        if header_len as usize != HEADER_LEN {
            return Err(ModelError::BadHeaderLength { found: header_len });
        }
        let declared = u32_at(bytes, header::FILE_LEN);
        if declared as usize != len {
            return Err(ModelError::LengthMismatch {
                declared,
                actual: len,
            });
        }
        let body_end = len - TRAILER_LEN;
        let stored = u32_at(bytes, body_end);
        let computed = format::crc32(&bytes[..body_end]);
        if stored != computed {
            return Err(ModelError::CrcMismatch { stored, computed });
        }
        // Before version 3 the precision byte was part of a zero flags field.
        let precision_code = bytes[header::PRECISION];
        let precision = match Precision::from_code(precision_code) {
            Some(p) if version >= 3 || p == Precision::F32 => p,
            _ => {
                return Err(ModelError::BadPrecision {
                    code: precision_code,
                })
            }
        };
        let flags = bytes[header::FLAGS];
        if flags & !(format::FLAG_CHANNEL_NORM | format::FLAG_SIGNED_INPUT) != 0 {
            return Err(ModelError::ReservedNotZero {
                offset: header::FLAGS,
            });
        }
        let has_channel_norm = flags & format::FLAG_CHANNEL_NORM != 0;
        if has_channel_norm && version < format::CHANNEL_NORM_FORMAT_VERSION {
            return Err(ModelError::ChannelNormVersion { version });
        }
        let input_step = if flags & format::FLAG_SIGNED_INPUT != 0 {
            Some(signed_input_step(
                bytes,
                version,
                precision,
                has_channel_norm,
            )?)
        } else {
            None
        };
        // Version 5 records the trained network's size in the first 8 reserved bytes; version
        // 10 the input step of a signed-input file in the last 4.
        let reserved = if input_step.is_some() {
            header::RESERVED_V5.start..header::RESERVED_V5.start
        } else if version >= format::TRAINED_SIZE_FORMAT_VERSION {
            header::RESERVED_V5
        } else {
            header::RESERVED
        };
        if !is_zero(&bytes[reserved.clone()]) {
            return Err(ModelError::ReservedNotZero {
                offset: reserved.start,
            });
        }
        let trained = if version >= format::TRAINED_SIZE_FORMAT_VERSION {
            let size = TrainedSize {
                dense_weights: u32_at(bytes, header::TRAINED_WEIGHTS),
                dense_params: u32_at(bytes, header::TRAINED_PARAMS),
            };
            match (size.dense_weights, size.dense_params) {
                (0, 0) => None,
                (w, p) if w > 0 && w <= p => Some(size),
                _ => return Err(ModelError::BadTrainedSize),
            }
        } else {
            None
        };
        let layer_count = u16_at(bytes, header::LAYER_COUNT);
        if layer_count == 0 || layer_count as usize > MAX_LAYERS {
            return Err(ModelError::BadLayerCount { count: layer_count });
        }
        let classes = u16_at(bytes, header::NUM_CLASSES);
        if classes < 2 || classes as usize > MAX_CLASSES {
            return Err(ModelError::BadClassCount { count: classes });
        }
        let input_shape = [
            u16_at(bytes, header::INPUT_CHANNELS) as usize,
            u16_at(bytes, header::INPUT_HEIGHT) as usize,
            u16_at(bytes, header::INPUT_WIDTH) as usize,
        ];
        if input_shape.contains(&0) {
            return Err(ModelError::BadInputShape);
        }
        let table = u32_at(bytes, header::LAYER_TABLE);
        if table as usize != HEADER_LEN {
            return Err(ModelError::BadLayerTableOffset { found: table });
        }
        let table_end = HEADER_LEN + layer_count as usize * LAYER_RECORD_LEN;
        if table_end > body_end {
            return Err(ModelError::BadLayerTableOffset { found: table });
        }
        let (channel_norm, payload_start) = if has_channel_norm {
            let zero_offsets = input_step.is_some();
            let end = parse_channel_norm(bytes, table_end, body_end, input_shape[0], zero_offsets)?;
            (Some(table_end + 4), end)
        } else {
            (None, table_end)
        };
        Ok(Envelope {
            version,
            precision,
            layer_count,
            classes,
            input_shape,
            trained,
            body_end,
            payload_start,
            channel_norm,
            input_step,
        })
    }

    /// The recorded trained size, checked against the weights the file stores: a network
    /// cannot have been trained with fewer weights than survive its pruning.
    pub(crate) fn trained_covering(
        &self,
        stored: usize,
    ) -> Result<Option<TrainedSize>, ModelError> {
        match self.trained {
            Some(t) if (t.dense_weights as usize) < stored => Err(ModelError::BadTrainedSize),
            t => Ok(t),
        }
    }
}

/// The steps of validation that both model types ([`Model`], [`crate::QModel`]) take, so
/// that their two entry points (`from_bytes`, returning the model, and `from_bytes_into`,
/// building it in the caller's slot) are written once.
pub(crate) trait Validate<'a>: Sized {
    /// The checks of the file as a whole.
    fn envelope(bytes: &'a [u8]) -> Result<Envelope, ModelError>;
    /// The model of a checked envelope before its layers are read.
    fn without_layers(bytes: &'a [u8], envelope: &Envelope) -> Self;
    /// Reads and validates every layer, in place.
    fn read_layers(&mut self, envelope: &Envelope) -> Result<(), ModelError>;

    /// The validated model, returned.
    fn validate(bytes: &'a [u8]) -> Result<Self, ModelError> {
        let envelope = Self::envelope(bytes)?;
        let mut model = Self::without_layers(bytes, &envelope);
        model.read_layers(&envelope)?;
        Ok(model)
    }

    /// The validated model, built in `slot` (its layer table never on the stack).
    fn validate_into<'s>(
        bytes: &'a [u8],
        slot: &'s mut core::mem::MaybeUninit<Self>,
    ) -> Result<&'s mut Self, ModelError> {
        let envelope = Self::envelope(bytes)?;
        let model = slot.write(Self::without_layers(bytes, &envelope));
        model.read_layers(&envelope)?;
        Ok(model)
    }
}

impl<'a> Validate<'a> for Model<'a> {
    /// The checks of the file as a whole (envelope, precision, input normalization).
    fn envelope(bytes: &'a [u8]) -> Result<Envelope, ModelError> {
        let envelope = Envelope::parse(bytes)?;
        if envelope.precision != Precision::F32 {
            return Err(ModelError::WrongPrecision {
                found: envelope.precision,
                expected: Precision::F32,
            });
        }
        let input_scale = f32_at(bytes, header::INPUT_SCALE);
        let input_offset = f32_at(bytes, header::INPUT_OFFSET);
        // Raw 8-bit inputs are read as p * scale + offset: every one of the 256 values must be
        // finite, or `predict_u8` could feed infinities to the first layer.
        let bytes_finite =
            |scale: f32, offset: f32| (0..=255u8).all(|p| (p as f32 * scale + offset).is_finite());
        if !input_scale.is_finite()
            || !input_offset.is_finite()
            || !bytes_finite(input_scale, input_offset)
        {
            return Err(ModelError::BadInputNormalization);
        }
        // The same for every channel of a per-channel table (its pairs are finite already).
        let pairs = channel_norm_pairs(bytes, &envelope)?;
        if let Some(channel) = pairs.iter().position(|&[s, o]| !bytes_finite(s, o)) {
            return Err(ModelError::ChannelNormNotFinite { channel });
        }
        Ok(envelope)
    }

    /// The model of a checked envelope before its layers are read.
    fn without_layers(bytes: &'a [u8], envelope: &Envelope) -> Self {
        Model {
            bytes,
            input_shape: envelope.input_shape,
            num_classes: envelope.classes as usize,
            input_norm: [[
                f32_at(bytes, header::INPUT_SCALE),
                f32_at(bytes, header::INPUT_OFFSET),
            ]],
            // Checked by `envelope`.
            channel_norm: channel_norm_pairs(bytes, envelope).unwrap_or(&[]),
            trained: None,
            layers: heapless::Vec::new(),
        }
    }

    /// Reads and validates every layer into `self.layers`, in place.
    fn read_layers(&mut self, envelope: &Envelope) -> Result<(), ModelError> {
        let bytes = self.bytes;
        let &Envelope {
            version,
            layer_count,
            classes,
            input_shape,
            body_end,
            payload_start,
            ..
        } = envelope;
        let layers = &mut self.layers;
        let mut outputs: heapless::Vec<[usize; 3], MAX_LAYERS> = heapless::Vec::new();
        let mut shape = input_shape;
        let mut cursor = payload_start;
        let mut last_residual = None;
        for index in 0..layer_count as usize {
            let at = HEADER_LEN + index * LAYER_RECORD_LEN;
            let rec = &bytes[at..at + LAYER_RECORD_LEN];
            let context = LayerContext {
                index,
                version,
                shape,
                payload_start: cursor,
                body_end,
                classes: classes as usize,
                earlier_outputs: &outputs,
                last_residual,
            };
            let (layer, next_shape) = parse_layer(bytes, rec, &context)?;
            if let Operation::ResidualAdd { source } = layer.operation {
                last_residual = Some(index);
                match layers.get_mut(source) {
                    // An exit head passes the map through: name the layer that made it.
                    Some(src) if !matches!(src.operation, Operation::ExitHead { .. }) => {
                        src.residual_source = true;
                    }
                    _ => return Err(ModelError::BadEarlyExit { layer: index }),
                }
            }
            shape = next_shape;
            let _ = outputs.push(next_shape);
            cursor += rec_payload_len(rec);
            // Capacity is MAX_LAYERS and layer_count <= MAX_LAYERS, so this cannot fail.
            layers
                .push(layer)
                .map_err(|_| ModelError::BadLayerCount { count: layer_count })?;
        }
        if cursor != body_end {
            return Err(ModelError::PayloadOutOfBounds {
                layer: layer_count as usize - 1,
            });
        }
        let has_exits = layers
            .iter()
            .any(|l| matches!(l.operation, Operation::ExitHead { .. }));
        match layers.last() {
            Some(last)
                if last.outputs == classes as usize
                    && last.activation == Activation::Identity
                    && (last.operation == Operation::Linear && !has_exits
                        || matches!(last.operation, Operation::ExitHead { .. })) => {}
            _ => return Err(ModelError::BadOutputLayer),
        }
        let has_residuals = layers
            .iter()
            .any(|l| matches!(l.operation, Operation::ResidualAdd { .. }));
        if has_residuals && !has_exits {
            // Residual networks run through the early-exit runner, which needs exits.
            return Err(ModelError::BadEarlyExit {
                layer: layer_count as usize - 1,
            });
        }
        if has_exits {
            // The exits' priors form a distribution over depth.
            let total: f32 = layers.iter().filter_map(Layer::exit_prior).sum();
            if !(0.999..=1.001).contains(&total) {
                return Err(ModelError::BadEarlyExit {
                    layer: layer_count as usize - 1,
                });
            }
        }
        let stored = layers.iter().map(Layer::nnz).sum();
        self.trained = envelope.trained_covering(stored)?;
        Ok(())
    }
}

impl<'a> Model<'a> {
    /// Parses and validates a model in place. The slice must start at a 4-byte-aligned
    /// address (`include_model!` and `writer::ModelBuffer` (feature `alloc`) ensure it).
    ///
    /// Checks, in order: length, alignment, magic, version, declared length, CRC-32, reserved
    /// fields, header values, then every layer: codes, sizes, shapes chaining from the input to
    /// the classes, payload placement (contiguous, aligned, inside the file), payload lengths,
    /// sparse row pointers and column indices, finite parameters and non-negative variances.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, ModelError> {
        Self::validate(bytes)
    }

    /// [`Model::from_bytes`] into `slot`, building the layer table (kilobytes: `MAX_LAYERS`
    /// entries) where it stays instead of on the stack and then moving it: validation then
    /// needs the parser's frames (about 2 KB on the Cortex-M0) rather than those plus a
    /// second copy of the model, which matters on a device with 16 KB of RAM (the C API
    /// validates this way). On error the slot holds no model.
    pub fn from_bytes_into<'s>(
        bytes: &'a [u8],
        slot: &'s mut core::mem::MaybeUninit<Self>,
    ) -> Result<&'s mut Self, ModelError> {
        Self::validate_into(bytes, slot)
    }

    /// The model bytes this view borrows.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Input shape as (channels, height, width).
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }
    /// Number of input values (channels x height x width).
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }
    /// Number of classes predicted.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// The header's input normalisation `(scale, offset)`: raw inputs `p` (e.g. 8-bit pixels)
    /// are normalised as `p * scale + offset` in every channel, unless the file has a
    /// per-channel table ([`Model::has_channel_norm`]), when this is the identity `(1, 0)`
    /// and [`Model::channel_norm`] gives each channel's pair.
    pub fn input_normalization(&self) -> (f32, f32) {
        let [[scale, offset]] = self.input_norm;
        (scale, offset)
    }
    /// Whether the file stores a per-channel input normalisation table (format version 9).
    pub fn has_channel_norm(&self) -> bool {
        !self.channel_norm.is_empty()
    }
    /// The normalisation of input channel `channel`: its pair from the per-channel table, or
    /// the header's pair when the file has none (or `channel` is out of range).
    pub fn channel_norm(&self, channel: usize) -> ChannelNorm {
        norm_of(self.input_norm[0], self.channel_norm, channel)
    }
    /// The normalisation of every input channel, in channel order (one item per channel).
    pub fn channel_norms(&self) -> impl ExactSizeIterator<Item = ChannelNorm> + '_ {
        (0..self.input_shape[0]).map(|c| self.channel_norm(c))
    }
    /// The pairs `[scale, offset]` the engine applies and the number of consecutive input
    /// values each covers: the table and `H * W`, or the header's one pair and the whole
    /// input.
    pub(crate) fn norm_pairs(&self) -> (&[[f32; 2]], usize) {
        if self.channel_norm.is_empty() {
            (&self.input_norm, self.input_len())
        } else {
            (self.channel_norm, self.input_shape[1] * self.input_shape[2])
        }
    }
    /// The validated layers, input first.
    pub fn layers(&self) -> &[Layer<'a>] {
        &self.layers
    }
    /// Widest layer output, in units.
    pub fn max_width(&self) -> usize {
        self.layers.iter().map(|l| l.outputs).max().unwrap_or(0)
    }
    /// Number of exit heads (0 for a plain network).
    pub fn exit_count(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l.operation, Operation::ExitHead { .. }))
            .count()
    }
    /// The prior probability of each exit, in order (empty for a plain network).
    pub fn exit_priors(&self) -> impl Iterator<Item = f32> + '_ {
        self.layers.iter().filter_map(Layer::exit_prior)
    }
    /// Whether the model has residual additions or exit heads (it then runs through the
    /// early-exit runner).
    pub fn is_graph(&self) -> bool {
        self.layers.iter().any(|l| {
            matches!(
                l.operation,
                Operation::ExitHead { .. } | Operation::ResidualAdd { .. }
            )
        })
    }
    /// This network with its last layer replaced by the layers of `head`, a model of linear
    /// layers whose input is the last layer's input (shape `[F, 1, 1]`, identity
    /// normalisation) and whose classes are this model's: what [`crate::adapt`] writes after
    /// a Bayesian update of the last layer. Both stay where they are (typically this model in
    /// flash, the head in RAM); the composed model borrows both, and [`Self::as_bytes`] is
    /// this model's. Refused (`HeadMismatch`) for an early-exit network, a last layer that is
    /// not linear, a head of other shapes or with other layers, or more than
    /// [`crate::format::MAX_LAYERS`] layers in all.
    pub fn with_head(&self, head: &Model<'a>) -> Result<Self, crate::adapt::AdaptError> {
        let mismatch = crate::adapt::AdaptError::HeadMismatch;
        let (last, body) = self.layers.split_last().ok_or(mismatch)?;
        let identity = head.channel_norm.is_empty() && head.input_norm == [[1.0, 0.0]];
        if self.is_graph()
            || last.operation != Operation::Linear
            || head.input_len() != last.inputs
            || head.num_classes != self.num_classes
            || !identity
            || head.layers.iter().any(|l| l.operation != Operation::Linear)
        {
            return Err(mismatch);
        }
        let mut layers = heapless::Vec::new();
        for l in body.iter().chain(head.layers.iter()) {
            layers.push(*l).map_err(|_| mismatch)?;
        }
        Ok(Model {
            layers,
            ..self.clone()
        })
    }
    /// The size of the network as trained, before pruning and the removal of dead units
    /// (format version 5; `None` for older files or when the writer did not know it).
    pub fn trained_size(&self) -> Option<TrainedSize> {
        self.trained
    }
    /// Dense parameter count of the stored (compacted) layers: weights of their unpruned
    /// shapes plus biases. [`Model::trained_size`] gives the network as trained.
    pub fn dense_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.dense_weights() + l.bias.len())
            .sum()
    }
    /// Stored weights across layers.
    pub fn nnz(&self) -> usize {
        self.layers.iter().map(Layer::nnz).sum()
    }
    /// Multiply-accumulates of one mean-weights pass.
    pub fn macs(&self) -> usize {
        self.layers.iter().map(Layer::macs).sum()
    }
}

pub(crate) fn rec_payload_len(rec: &[u8]) -> usize {
    u32_at(rec, record::PAYLOAD_LEN) as usize
}

/// Where a layer record sits and what it must accept.
struct LayerContext<'c> {
    index: usize,
    version: u16,
    /// Shape (channels, height, width) of the layer's input.
    shape: [usize; 3],
    payload_start: usize,
    body_end: usize,
    /// Classes of the model (the outputs of exit heads).
    classes: usize,
    /// Output shapes of the layers before this one.
    earlier_outputs: &'c [[usize; 3]],
    /// Index of the last residual addition before this layer.
    last_residual: Option<usize>,
}

/// Validates one layer record and its payload; returns the layer and its output shape.
fn parse_layer<'a>(
    bytes: &'a [u8],
    rec: &[u8],
    cx: &LayerContext<'_>,
) -> Result<(Layer<'a>, [usize; 3]), ModelError> {
    let layer = cx.index;
    let code = |field: usize| ModelError::UnknownCode {
        layer,
        field,
        code: rec[field],
    };
    let kind =
        LayerKind::from_code(rec[record::KIND], cx.version).ok_or_else(|| code(record::KIND))?;
    let posterior = Posterior::from_code(rec[record::POSTERIOR])
        .filter(|&p| p != Posterior::Bernoulli || cx.version >= format::DROPOUT_FORMAT_VERSION)
        .ok_or_else(|| code(record::POSTERIOR))?;
    let activation =
        Activation::from_code(rec[record::ACTIVATION]).ok_or_else(|| code(record::ACTIVATION))?;
    let record_offset = HEADER_LEN + layer * LAYER_RECORD_LEN;
    let reserved = |range: core::ops::Range<usize>| -> Result<(), ModelError> {
        if is_zero(&rec[range.clone()]) {
            Ok(())
        } else {
            Err(ModelError::ReservedNotZero {
                offset: record_offset + range.start,
            })
        }
    };
    reserved(record::RESERVED_BYTE..record::RESERVED_BYTE + 1)?;
    let inputs = u32_at(rec, record::INPUTS) as usize;
    let outputs = u32_at(rec, record::OUTPUTS) as usize;
    if inputs == 0 || outputs == 0 || inputs > MAX_UNITS || outputs > MAX_UNITS {
        return Err(ModelError::BadLayerSize { layer });
    }
    // An exit head's linear layer reads the pooled map: one input per channel.
    let expected_inputs = if kind == LayerKind::ExitHead {
        cx.shape[0]
    } else {
        cx.shape[0] * cx.shape[1] * cx.shape[2]
    };
    if inputs != expected_inputs {
        return Err(ModelError::ShapeMismatch {
            layer,
            expected: expected_inputs,
            found: inputs,
        });
    }
    let nnz = u32_at(rec, record::NNZ) as usize;

    let mut exit_prior = 0.0;
    let linear = matches!(
        kind,
        LayerKind::DenseLinear | LayerKind::SparseLinear | LayerKind::SparseLinearByInput
    );
    // MC dropout: linear layers only, with a drop probability in [0, 1).
    let mut drop_probability = 0.0;
    if posterior == Posterior::Bernoulli {
        let p = f32_at(rec, record::DROPOUT_P);
        if !(linear && p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(ModelError::BadDropout { layer });
        }
        reserved(record::DROPOUT_RESERVED)?;
        drop_probability = p;
    }
    // Geometry, output shape, dense weight count and payload length, per kind.
    let (operation, out_shape, dense, expected_len) = match kind {
        LayerKind::DenseLinear | LayerKind::SparseLinear | LayerKind::SparseLinearByInput => {
            if posterior != Posterior::Bernoulli {
                reserved(record::RESERVED)?;
            }
            let storage = match kind {
                LayerKind::DenseLinear => Storage::Dense,
                LayerKind::SparseLinear => Storage::Sparse,
                _ => Storage::SparseByInput,
            };
            let dense = inputs * outputs; // both <= 65535: fits in u32 and usize
            let len = payload_len(storage, posterior, inputs, outputs, nnz);
            (Operation::Linear, [outputs, 1, 1], dense, len)
        }
        LayerKind::Conv2d => {
            reserved(record::CONV_RESERVED)?;
            let geometry = conv_geometry(rec, cx.shape, layer)?;
            let (out_channels, window) = (geometry.output[0], geometry.window);
            let dense = out_channels * cx.shape[0] * window[0] * window[1];
            let len = conv_payload_len(posterior, out_channels, nnz);
            (Operation::Conv2d(geometry), geometry.output, dense, len)
        }
        LayerKind::QuantDenseLinear
        | LayerKind::QuantSparseLinear
        | LayerKind::QuantSparseLinearByInput
        | LayerKind::QuantConv2d => return Err(code(record::KIND)),
        LayerKind::MaxPool => {
            reserved(record::pool_reserved(cx.version))?;
            let geometry = pool_geometry(rec, cx.shape, posterior, activation, layer)?;
            (Operation::MaxPool(geometry), geometry.output, 0, Some(0))
        }
        LayerKind::GlobalAvgPool => {
            reserved(record::GAP_RESERVED)?;
            check_weightless(posterior, activation, layer)?;
            let op = Operation::GlobalAvgPool { map: cx.shape };
            (op, [cx.shape[0], 1, 1], 0, Some(0))
        }
        LayerKind::ResidualAdd => {
            reserved(record::RESIDUAL_RESERVED)?;
            let source = u16_at(rec, record::RESIDUAL_SOURCE) as usize;
            // The source is an earlier layer, not before the previous residual addition (blocks do
            // not overlap), with the shape of the current map.
            let after_previous = cx.last_residual.is_none_or(|r| source >= r);
            let same_shape = cx.earlier_outputs.get(source) == Some(&cx.shape);
            if source >= layer || !after_previous || !same_shape {
                return Err(ModelError::BadEarlyExit { layer });
            }
            if posterior != Posterior::Deterministic {
                return Err(ModelError::BadEarlyExit { layer });
            }
            (Operation::ResidualAdd { source }, cx.shape, 0, Some(0))
        }
        LayerKind::ExitHead => {
            reserved(record::EXIT_RESERVED)?;
            let prior = f32_at(rec, record::EXIT_PRIOR);
            let prior_ok = prior.is_finite() && prior > 0.0 && prior <= 1.0;
            if !prior_ok || outputs != cx.classes || activation != Activation::Identity {
                return Err(ModelError::BadEarlyExit { layer });
            }
            let dense = inputs * outputs;
            let len = payload_len(Storage::Dense, posterior, inputs, outputs, dense);
            exit_prior = prior;
            let op = Operation::ExitHead { map: cx.shape };
            // The main path continues with the same map.
            (op, cx.shape, dense, len)
        }
    };
    let flow_outputs = if kind == LayerKind::ExitHead {
        out_shape.iter().product::<usize>()
    } else {
        outputs
    };
    if out_shape[0] * out_shape[1] * out_shape[2] != flow_outputs {
        return Err(ModelError::ShapeMismatch {
            layer,
            expected: out_shape[0] * out_shape[1] * out_shape[2],
            found: outputs,
        });
    }
    let nnz_ok = match kind {
        LayerKind::DenseLinear | LayerKind::ExitHead => nnz == dense,
        _ => nnz <= dense,
    };
    if !nnz_ok {
        return Err(ModelError::BadWeightCount { layer });
    }
    let found_len = u32_at(rec, record::PAYLOAD_LEN) as usize;
    if expected_len != Some(found_len) {
        return Err(ModelError::PayloadLength {
            layer,
            expected: expected_len.unwrap_or(0),
            found: found_len,
        });
    }
    let offset = u32_at(rec, record::PAYLOAD_OFFSET) as usize;
    let end = offset.checked_add(found_len);
    if offset != cx.payload_start || offset % ALIGNMENT != 0 || end.is_none_or(|e| e > cx.body_end)
    {
        return Err(ModelError::PayloadOutOfBounds { layer });
    }

    let words = posterior.words_per_weight();
    let bias_len = match operation {
        Operation::Linear | Operation::ExitHead { .. } => outputs,
        Operation::Conv2d(g) => g.output[0],
        Operation::MaxPool(_) | Operation::GlobalAvgPool { .. } | Operation::ResidualAdd { .. } => {
            0
        }
    };
    let bias: &[f32] = cast(bytes, offset, bias_len * 4, layer)?;
    let mut at = offset + bias_len * 4;
    let weights = match (kind, operation) {
        (LayerKind::DenseLinear | LayerKind::ExitHead, _) => Weights::Dense {
            values: cast(bytes, at, dense * words * 4, layer)?,
        },
        (LayerKind::SparseLinear, _) => {
            let (row_ptr, cols, values) =
                compressed(bytes, at, outputs, inputs, nnz, words, layer)?;
            Weights::Sparse {
                row_ptr,
                cols,
                values,
            }
        }
        (LayerKind::SparseLinearByInput, _) => {
            let (col_ptr, rows, values) =
                compressed(bytes, at, inputs, outputs, nnz, words, layer)?;
            Weights::SparseByInput {
                col_ptr,
                rows,
                values,
            }
        }
        (LayerKind::Conv2d, Operation::Conv2d(g)) => {
            let row_ptr: &[u32] = cast(bytes, at, (g.output[0] + 1) * 4, layer)?;
            at += (g.output[0] + 1) * 4;
            let taps: &[u32] = cast(bytes, at, nnz * 4, layer)?;
            at += nnz * 4;
            let values: &[f32] = cast(bytes, at, nnz * words * 4, layer)?;
            check_rows(row_ptr, nnz, layer)?;
            let tap_ok = |t: u32| {
                let (c, ky, kx) = unpack_tap(t);
                c < g.input[0] && ky < g.window[0] && kx < g.window[1]
            };
            check_sparse_columns(row_ptr, taps, tap_ok, layer)?;
            Weights::Conv {
                row_ptr,
                taps,
                values,
            }
        }
        _ => Weights::None,
    };
    let values: &[f32] = match weights {
        Weights::Dense { values }
        | Weights::Sparse { values, .. }
        | Weights::SparseByInput { values, .. }
        | Weights::Conv { values, .. } => values,
        Weights::None => &[],
    };
    let gaussian = posterior == Posterior::Gaussian;
    let (finite, negative_variance) = if gaussian {
        check_gaussian_records(values)
    } else {
        (all_finite(values), false)
    };
    if !all_finite(bias) || !finite {
        return Err(ModelError::NonFinite { layer });
    }
    if negative_variance {
        return Err(ModelError::NegativeVariance { layer });
    }
    let layer = Layer {
        inputs,
        outputs,
        activation,
        posterior,
        operation,
        bias,
        weights,
        residual_source: false,
        exit_prior,
        drop_probability,
    };
    Ok((layer, out_shape))
}

/// An f32's exponent field.
const EXPONENT: u32 = 0x7F80_0000;
/// One in the exponent field's lowest bit.
const EXPONENT_ONE: u32 = 0x0080_0000;

/// A value's exponent field plus one: its sign bit is set exactly when the value is infinite
/// or NaN (then the field is all ones and the carry reaches the sign bit); the other bits
/// are below it, so an OR over many values keeps the answer in its sign bit.
fn exponent_carry(v: f32) -> u32 {
    (v.to_bits() & EXPONENT) + EXPONENT_ONE
}

/// Whether every value is finite, by its bits. No early exit: validation reads every weight
/// of a model that passes (three integer instructions per value instead of a float
/// comparison and a branch each). Out of line, so the loop gets the registers.
#[inline(never)]
pub(crate) fn all_finite(values: &[f32]) -> bool {
    values.iter().fold(0, |acc, &v| acc | exponent_carry(v)) & 0x8000_0000 == 0
}

/// One pass over a Gaussian layer's `[mean, variance]` records: (every value finite, some
/// variance below zero). As unsigned bits, `-0.0` (`0x8000_0000`) and the non-negative
/// values are at most `0x8000_0000`; a negative finite number is above it (a NaN is
/// reported as not finite first).
#[inline(never)]
fn check_gaussian_records(records: &[f32]) -> (bool, bool) {
    let (carries, largest) = records
        .chunks_exact(2)
        .fold((0, 0), |(carries, largest), w| {
            let carries = carries | exponent_carry(w[0]) | exponent_carry(w[1]);
            (carries, largest.max(w[1].to_bits()))
        });
    (carries & 0x8000_0000 == 0, largest > 0x8000_0000)
}

/// Pointers, indices and weight records of a compressed sparse payload.
type Compressed<'a> = (&'a [u32], &'a [u16], &'a [f32]);

/// Parses a compressed sparse payload after the bias: `lines + 1` pointers, `nnz` u16
/// indices (each below `index_limit`, strictly increasing within a line) zero-padded to 4 bytes,
/// then `nnz` weight records of `words` f32. Rows by output and columns by input share it.
fn compressed(
    bytes: &[u8],
    mut at: usize,
    lines: usize,
    index_limit: usize,
    nnz: usize,
    words: usize,
    layer: usize,
) -> Result<Compressed<'_>, ModelError> {
    let pointers: &[u32] = cast(bytes, at, (lines + 1) * 4, layer)?;
    at += (lines + 1) * 4;
    let indices: &[u16] = cast(bytes, at, nnz * 2, layer)?;
    let padded = (nnz * 2).next_multiple_of(ALIGNMENT);
    if !is_zero(&bytes[at + nnz * 2..at + padded]) {
        return Err(ModelError::ReservedNotZero {
            offset: at + nnz * 2,
        });
    }
    at += padded;
    let values: &[f32] = cast(bytes, at, nnz * words * 4, layer)?;
    check_rows(pointers, nnz, layer)?;
    check_sparse_indices(pointers, indices, index_limit, layer)?;
    Ok((pointers, indices, values))
}

/// Geometry of a window operation over an input shape; `None` if the window does not fit,
/// has a zero dimension or stride, or pads by a whole window or more.
/// The geometry a convolution's record gives (output channels, kernel, stride, padding in
/// bytes 24..30) over an input of `shape`; `BadGeometry` if the kernel does not fit.
pub(crate) fn conv_geometry(
    rec: &[u8],
    shape: [usize; 3],
    layer: usize,
) -> Result<Geometry, ModelError> {
    let out_channels = u16_at(rec, record::CONV_OUT_CHANNELS) as usize;
    let window = [
        rec[record::CONV_KERNEL_H] as usize,
        rec[record::CONV_KERNEL_W] as usize,
    ];
    let stride = rec[record::CONV_STRIDE] as usize;
    let padding = rec[record::CONV_PADDING] as usize;
    window_geometry(shape, out_channels, window, stride, padding)
        .ok_or(ModelError::BadGeometry { layer })
}

/// The geometry a max-pooling record gives (window size and stride in bytes 24..26, the
/// window's width in byte 26 when not square) over an input of `shape`; `BadGeometry` if the window does not fit or the layer is not
/// deterministic with an identity activation (pooling has neither weights nor activation).
pub(crate) fn pool_geometry(
    rec: &[u8],
    shape: [usize; 3],
    posterior: Posterior,
    activation: Activation,
    layer: usize,
) -> Result<Geometry, ModelError> {
    let size = rec[record::POOL_SIZE] as usize;
    // Zero (a square window) in every file before version 9, whose byte 26 is reserved.
    let width = match rec[record::POOL_WIDTH] {
        0 => size,
        w => w as usize,
    };
    let stride = rec[record::POOL_STRIDE] as usize;
    let geometry = window_geometry(shape, shape[0], [size, width], stride, 0)
        .ok_or(ModelError::BadGeometry { layer })?;
    if posterior != Posterior::Deterministic || activation != Activation::Identity {
        return Err(ModelError::BadGeometry { layer });
    }
    Ok(geometry)
}

/// A global average pooling layer has neither weights nor an activation of its own: it must
/// be deterministic with the identity (`BadGeometry` otherwise, as for max pooling).
pub(crate) fn check_weightless(
    posterior: Posterior,
    activation: Activation,
    layer: usize,
) -> Result<(), ModelError> {
    if posterior != Posterior::Deterministic || activation != Activation::Identity {
        return Err(ModelError::BadGeometry { layer });
    }
    Ok(())
}

fn window_geometry(
    input: [usize; 3],
    out_channels: usize,
    window: [usize; 2],
    stride: usize,
    padding: usize,
) -> Option<Geometry> {
    if out_channels == 0 || padding >= window[0] || padding >= window[1] {
        return None;
    }
    let height = window_output(input[1], window[0], stride, padding)?;
    let width = window_output(input[2], window[1], stride, padding)?;
    Some(Geometry {
        input,
        output: [out_channels, height, width],
        window,
        stride,
        padding,
    })
}

/// Row pointers start at 0, never decrease and end at `nnz`.
pub(crate) fn check_rows(row_ptr: &[u32], nnz: usize, layer: usize) -> Result<(), ModelError> {
    let monotonic = row_ptr.windows(2).all(|p| p[0] <= p[1]);
    if row_ptr.first() != Some(&0) || row_ptr.last().map(|&e| e as usize) != Some(nnz) || !monotonic
    {
        return Err(ModelError::BadRowPointers { layer });
    }
    Ok(())
}

/// Within every line of a compressed payload (`pointers` checked by [`check_rows`]),
/// indices are strictly increasing and below `limit`. A line that increases needs only its
/// last index compared with the limit, and the order is tested without an early exit (a
/// compare and a flag per index); a failure is located by [`check_sparse_columns`], so the
/// error is the same.
fn check_sparse_indices(
    pointers: &[u32],
    indices: &[u16],
    limit: usize,
    layer: usize,
) -> Result<(), ModelError> {
    let mut bad = false;
    for pair in pointers.windows(2) {
        let Some(line) = indices.get(pair[0] as usize..pair[1] as usize) else {
            return Err(ModelError::BadRowPointers { layer });
        };
        if let Some((&last, _)) = line.split_last() {
            let unordered = line.windows(2).fold(false, |u, w| u | (w[0] >= w[1]));
            bad |= unordered | (usize::from(last) >= limit);
        }
    }
    if bad {
        check_sparse_columns(pointers, indices, |c| usize::from(c) < limit, layer)?;
    }
    Ok(())
}

/// Within every row, indices are strictly increasing and each passes `in_range`.
pub(crate) fn check_sparse_columns<T: Copy + PartialOrd>(
    row_ptr: &[u32],
    indices: &[T],
    in_range: impl Fn(T) -> bool,
    layer: usize,
) -> Result<(), ModelError> {
    for pair in row_ptr.windows(2) {
        let (start, end) = (pair[0] as usize, pair[1] as usize);
        let row = &indices[start..end];
        for (i, &c) in row.iter().enumerate() {
            if !in_range(c) || (i > 0 && row[i - 1] >= c) {
                return Err(ModelError::BadColumnIndex {
                    layer,
                    position: start + i,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{all_finite, check_gaussian_records, check_sparse_columns, check_sparse_indices};

    /// Special and ordinary values, including both zeros, subnormals and every class of
    /// non-finite value.
    const SPECIAL: [f32; 14] = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1.0e-45,
        -1.0e-45,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
    ];

    #[test]
    fn bit_checks_agree_with_float_comparisons() {
        for &a in &SPECIAL {
            for &b in &SPECIAL {
                let pair = [a, b];
                assert_eq!(all_finite(&pair), a.is_finite() && b.is_finite(), "{a} {b}");
                let (finite, negative) = check_gaussian_records(&pair);
                assert_eq!(finite, a.is_finite() && b.is_finite(), "{a} {b}");
                if finite {
                    assert_eq!(negative, b < 0.0, "{a} {b}");
                }
            }
        }
        // Many records: a single bad one anywhere is seen.
        let mut records = [0.5f32; 64];
        assert_eq!(check_gaussian_records(&records), (true, false));
        records[37] = -2.0;
        assert_eq!(check_gaussian_records(&records), (true, true));
        records[36] = f32::NAN;
        assert!(!check_gaussian_records(&records).0);
    }

    #[test]
    fn sparse_index_check_agrees_with_the_exact_scan() {
        let pointers = [0u32, 3, 3, 5];
        let cases: [[u16; 5]; 5] = [
            [0, 2, 9, 1, 4],
            [0, 2, 10, 1, 4],
            [0, 2, 2, 1, 4],
            [3, 2, 9, 1, 4],
            [0, 2, 9, 4, 4],
        ];
        for indices in &cases {
            let fast = check_sparse_indices(&pointers, indices, 10, 1);
            let exact = check_sparse_columns(&pointers, indices, |c| c < 10, 1);
            assert_eq!(fast, exact, "{indices:?}");
        }
        assert!(check_sparse_indices(&pointers, &cases[0], 10, 1).is_ok());
        assert!(check_sparse_indices(&pointers, &cases[1], 10, 1).is_err());
    }
}
