//! Typed errors of the reader and of inference. Every failure names what was wrong and where.

use core::fmt;

/// Why a byte slice is not a valid model. Returned by [`crate::Model::from_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModelError {
    /// The slice is shorter than the smallest possible model (header plus trailer).
    TooShort {
        /// Length of the slice in bytes.
        len: usize,
    },
    /// The slice does not start at a 4-byte-aligned address (see `include_model!`).
    Misaligned,
    /// The file does not start with the magic bytes `TBYS`.
    BadMagic,
    /// The file was written in a format version this reader does not know.
    UnsupportedVersion {
        /// The version found in the header.
        found: u16,
    },
    /// The header length field is not the one of this version.
    BadHeaderLength {
        /// The value found.
        found: u16,
    },
    /// The length recorded in the header differs from the slice length (truncated or padded).
    LengthMismatch {
        /// Length recorded in the header.
        declared: u32,
        /// Length of the slice.
        actual: usize,
    },
    /// The CRC-32 trailer does not match the contents: the file is corrupted.
    CrcMismatch {
        /// CRC stored in the trailer.
        stored: u32,
        /// CRC computed over the contents.
        computed: u32,
    },
    /// A reserved field or flag is not zero.
    ReservedNotZero {
        /// Byte offset of the field in the file.
        offset: usize,
    },
    /// The trained size recorded in the header (format version 5) is inconsistent: weights
    /// without parameters, more weights than parameters, or fewer weights than the file stores.
    BadTrainedSize,
    /// The layer count is zero or above [`crate::format::MAX_LAYERS`].
    BadLayerCount {
        /// The count found.
        count: u16,
    },
    /// The number of classes is below 2 or above [`crate::format::MAX_CLASSES`].
    BadClassCount {
        /// The count found.
        count: u16,
    },
    /// An input dimension is zero.
    BadInputShape,
    /// The input normalisation (scale or offset) is not a finite number.
    BadInputNormalization,
    /// The layer table does not start right after the header.
    BadLayerTableOffset {
        /// Offset found.
        found: u32,
    },
    /// A layer record has an unknown storage, posterior or activation code.
    UnknownCode {
        /// Index of the layer.
        layer: usize,
        /// Byte offset of the code within the record.
        field: usize,
        /// The code found.
        code: u8,
    },
    /// A layer has zero units, or more than [`crate::format::MAX_UNITS`].
    BadLayerSize {
        /// Index of the layer.
        layer: usize,
    },
    /// A layer's inputs do not match the previous layer's outputs (or the model input).
    ShapeMismatch {
        /// Index of the layer.
        layer: usize,
        /// Inputs the layer must have.
        expected: usize,
        /// Inputs the layer declares.
        found: usize,
    },
    /// The last layer is not a linear layer with identity activation producing one logit
    /// per class.
    BadOutputLayer,
    /// A convolution or pooling window does not fit its input, has a zero size or stride,
    /// pads by a whole window, or a pooling layer (max or global average) declares weights
    /// noise or an activation.
    BadGeometry {
        /// Index of the layer.
        layer: usize,
    },
    /// The number of stored weights is impossible for the layer's shape and storage.
    BadWeightCount {
        /// Index of the layer.
        layer: usize,
    },
    /// A payload is not 4-byte aligned, overlaps another part of the file or lies outside it.
    PayloadOutOfBounds {
        /// Index of the layer.
        layer: usize,
    },
    /// A payload length differs from the one its shape implies.
    PayloadLength {
        /// Index of the layer.
        layer: usize,
        /// Length the shape implies (0 if it overflows).
        expected: usize,
        /// Length recorded.
        found: usize,
    },
    /// Sparse row pointers do not start at 0, decrease, or do not end at the weight count.
    BadRowPointers {
        /// Index of the layer.
        layer: usize,
    },
    /// A sparse column index is out of range, or indices within a row are not strictly increasing.
    BadColumnIndex {
        /// Index of the layer.
        layer: usize,
        /// Position of the offending index in the layer's index array.
        position: usize,
    },
    /// A weight, bias or variance is NaN or infinite.
    NonFinite {
        /// Index of the layer.
        layer: usize,
    },
    /// A variance is negative.
    NegativeVariance {
        /// Index of the layer.
        layer: usize,
    },
    /// The header's number format code is unknown, or is a fixed-point code in a file older
    /// than version 3.
    BadPrecision {
        /// The code found.
        code: u8,
    },
    /// The model's number format is not the one this reader runs: f32 models are read by
    /// [`crate::Model`], fixed-point (q8, q16) models by [`crate::fixed::QModel`].
    WrongPrecision {
        /// Precision of the file.
        found: crate::format::Precision,
        /// Precision this reader runs.
        expected: crate::format::Precision,
    },
    /// A residual addition names a layer that is not earlier, not after the previous residual
    /// addition, or whose output shape differs; or an exit head's prior is not a probability,
    /// the priors do not sum to 1, or an early-exit model does not end with an exit head.
    BadEarlyExit {
        /// Index of the layer.
        layer: usize,
    },
    /// A fixed-point layer breaks a rule of its format: a by-input layer that is not the
    /// first, a hidden layer without ReLU, or a shift out of range.
    QuantLayout {
        /// Index of the layer.
        layer: usize,
    },
    /// A fixed-point layer's σ² values are too large for the int32 variance accumulator of q8
    /// (`max σ² * 32512 * inputs` must stay below 2^31).
    QuantRange {
        /// Index of the layer.
        layer: usize,
    },
    /// A Bernoulli (MC dropout) layer's drop probability is not finite or not in `[0, 1)`,
    /// or the posterior is given to a layer that is not linear (format version 8).
    BadDropout {
        /// Index of the layer.
        layer: usize,
    },
    /// The header flags a per-channel input normalisation table
    /// ([`crate::format::FLAG_CHANNEL_NORM`]) in a file older than format version 9.
    ChannelNormVersion {
        /// The file's format version.
        version: u16,
    },
    /// The per-channel normalisation table does not fit between the layer table and the CRC
    /// trailer.
    ChannelNormTruncated,
    /// The per-channel normalisation table's count is not the model's input channels.
    ChannelNormLength {
        /// Pairs the table declares.
        found: u32,
        /// Input channels of the model.
        expected: usize,
    },
    /// A channel's normalisation scale or offset is NaN or infinite, or (f32 models) maps a
    /// raw 8-bit value to an infinity.
    ChannelNormNotFinite {
        /// The channel.
        channel: usize,
    },
    /// A channel's normalisation scale is zero (the channel would carry no information).
    ChannelNormZeroScale {
        /// The channel.
        channel: usize,
    },
    /// The header flags signed 8-bit inputs ([`crate::format::FLAG_SIGNED_INPUT`]) where they
    /// cannot be: a file older than format version 10, an f32 file, no per-channel table or
    /// a non-zero offset in it, a step that is not finite and positive, or a first layer that
    /// is neither linear nor a convolution.
    BadSignedInput,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ModelError::*;
        match *self {
            TooShort { len } => write!(f, "model is {len} bytes, too short to hold a header"),
            Misaligned => f.write_str("model bytes are not 4-byte aligned in memory"),
            BadMagic => f.write_str("not a tinybayes model (bad magic bytes)"),
            UnsupportedVersion { found } => write!(
                f,
                "model format version {found} is not supported (this build reads versions {} to {})",
                crate::format::MIN_FORMAT_VERSION,
                crate::format::FORMAT_VERSION
            ),
            BadHeaderLength { found } => write!(f, "header length {found} is invalid"),
            LengthMismatch { declared, actual } => write!(
                f,
                "model declares {declared} bytes but {actual} are present (truncated or padded file)"
            ),
            CrcMismatch { stored, computed } => write!(
                f,
                "CRC mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupted"
            ),
            ReservedNotZero { offset } => write!(f, "reserved field at byte {offset} is not zero"),
            BadTrainedSize => f.write_str(
                "the recorded trained network size is inconsistent (zero parameters, fewer parameters than weights, or fewer weights than stored)",
            ),
            BadLayerCount { count } => write!(f, "layer count {count} is out of range"),
            BadClassCount { count } => write!(f, "class count {count} is out of range"),
            BadInputShape => f.write_str("input shape has a zero dimension"),
            BadInputNormalization => f.write_str("input scale or offset is not finite"),
            BadLayerTableOffset { found } => write!(f, "layer table offset {found} is invalid"),
            UnknownCode { layer, field, code } => {
                write!(f, "layer {layer}: unknown code {code} in record byte {field}")
            }
            BadLayerSize { layer } => write!(f, "layer {layer}: unit count out of range"),
            ShapeMismatch { layer, expected, found } => {
                write!(f, "layer {layer}: expects {expected} inputs but declares {found}")
            }
            BadOutputLayer => f.write_str(
                "last layer must be linear and output one logit per class with identity activation",
            ),
            BadWeightCount { layer } => write!(f, "layer {layer}: impossible weight count"),
            BadGeometry { layer } => write!(
                f,
                "layer {layer}: convolution or pooling window does not fit its input, or a pooling layer has a posterior or an activation"
            ),
            PayloadOutOfBounds { layer } => {
                write!(f, "layer {layer}: payload misaligned, overlapping or out of the file")
            }
            PayloadLength { layer, expected, found } => write!(
                f,
                "layer {layer}: payload is {found} bytes, its shape needs {expected}"
            ),
            BadRowPointers { layer } => write!(f, "layer {layer}: invalid sparse row pointers"),
            BadColumnIndex { layer, position } => write!(
                f,
                "layer {layer}: sparse index {position} out of range or not increasing"
            ),
            NonFinite { layer } => write!(f, "layer {layer}: NaN or infinite parameter"),
            NegativeVariance { layer } => write!(f, "layer {layer}: negative variance"),
            BadPrecision { code } => write!(
                f,
                "unknown number format code {code} (q8 and q16 need format version 3)"
            ),
            WrongPrecision { found, expected } => write!(
                f,
                "this is a {} model, this reader runs {} models",
                found.name(),
                expected.name()
            ),
            BadEarlyExit { layer } => write!(
                f,
                "layer {layer}: invalid residual source, exit prior or exit layout"
            ),
            QuantLayout { layer } => write!(
                f,
                "layer {layer}: fixed-point layout not allowed (by-input storage after the first layer, a hidden layer without ReLU, or a shift outside 1..=62)"
            ),
            QuantRange { layer } => write!(
                f,
                "layer {layer}: fixed-point variances too large for the int32 accumulator"
            ),
            BadDropout { layer } => write!(
                f,
                "layer {layer}: dropout needs a linear layer and a drop probability in [0, 1)"
            ),
            ChannelNormVersion { version } => write!(
                f,
                "the per-channel input normalisation flag is set in a version {version} file (it needs version 9)"
            ),
            ChannelNormTruncated => f.write_str(
                "the per-channel input normalisation table runs past the end of the file",
            ),
            ChannelNormLength { found, expected } => write!(
                f,
                "the per-channel input normalisation table has {found} entries, the input has {expected} channels"
            ),
            ChannelNormNotFinite { channel } => write!(
                f,
                "input channel {channel}: normalisation scale or offset is not finite (or overflows on raw bytes)"
            ),
            ChannelNormZeroScale { channel } => {
                write!(f, "input channel {channel}: normalisation scale is zero")
            }
            BadSignedInput => f.write_str(
                "signed 8-bit input needs a fixed-point file of version 10 with a per-channel table of zero offsets, a finite positive step and a linear or convolution first layer",
            ),
        }
    }
}

impl core::error::Error for ModelError {}

/// Why an inference could not run. Returned by [`crate::Engine`] methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InferenceError {
    /// The input has the wrong number of values for the model.
    InputLength {
        /// Values the model takes.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// The input contains NaN or an infinity.
    NonFiniteInput,
    /// The workspace is smaller than the model needs ([`crate::Plan::workspace_len`]).
    WorkspaceTooSmall {
        /// Words needed (f32 words for an f32 model, u64 words for fixed point).
        needed: usize,
        /// Words given.
        provided: usize,
    },
    /// The result type holds fewer classes than the model predicts.
    ClassCapacity {
        /// Classes of the model.
        classes: usize,
        /// Capacity of the result type.
        capacity: usize,
    },
    /// Zero Monte Carlo samples were requested.
    ZeroSamples,
    /// A sample produced NaN or infinite logits (overflow on extreme inputs or weights).
    NonFiniteLogits,
    /// A halting prior has the wrong length, a non-positive or non-finite mass, does not sum
    /// to 1, or (for the exact joint mode) increases with depth; or a threshold is NaN, or a
    /// depth budget is 0.
    BadPrior,
    /// The model has no exit heads (early exit needs an early-exit model).
    NotEarlyExit,
    /// The first Gaussian layer of an early-exit model is an exit head (a deterministic trunk
    /// with Bayesian heads), which the early-exit runner does not support.
    UnsupportedLayout,
    /// The engine's chunk holds fewer samples than the mode needs ([`crate::Mode::Moments`]
    /// keeps a mean and a variance per unit where a chunk of two keeps two samples).
    ChunkTooSmall {
        /// Samples per pass the mode needs.
        needed: usize,
        /// The engine's `CHUNK`.
        chunk: usize,
    },
    /// The mode is not available in this number format (moment propagation runs on f32
    /// models only so far).
    UnsupportedMode,
    /// The model's number format is not the engine's (e.g. a q16 file given to an
    /// `Engine<_, Q8>`).
    WrongFormat {
        /// The model's precision.
        model: crate::format::Precision,
        /// The engine's.
        engine: crate::format::Precision,
    },
    /// The input's 8-bit type is not the one the fixed-point model reads: unsigned bytes
    /// given to a model of signed codes ([`crate::format::FLAG_SIGNED_INPUT`]) or the reverse.
    WrongInputSign {
        /// Whether the model reads signed codes.
        model_signed: bool,
    },
}

impl fmt::Display for InferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InferenceError::*;
        match *self {
            InputLength { expected, found } => {
                write!(f, "input has {found} values, the model takes {expected}")
            }
            NonFiniteInput => f.write_str("input contains NaN or infinity"),
            WorkspaceTooSmall { needed, provided } => write!(
                f,
                "workspace has {provided} words, this run needs {needed}"
            ),
            ClassCapacity { classes, capacity } => write!(
                f,
                "model predicts {classes} classes, the result holds at most {capacity}"
            ),
            ZeroSamples => f.write_str("at least one Monte Carlo sample is needed"),
            NonFiniteLogits => f.write_str("inference overflowed to NaN or infinity"),
            BadPrior => f.write_str(
                "the depth prior must have one positive mass per exit, sum to 1, and not increase (for the exact mode)",
            ),
            NotEarlyExit => f.write_str("the model has no exit heads"),
            ChunkTooSmall { needed, chunk } => write!(
                f,
                "this mode needs at least {needed} samples per pass, the engine has {chunk}"
            ),
            UnsupportedMode => {
                f.write_str("moment propagation is not available for fixed-point models yet")
            }
            WrongFormat { model, engine } => write!(
                f,
                "the model is {} but the engine runs {}",
                model.name(),
                engine.name()
            ),
            UnsupportedLayout => f.write_str(
                "Gaussian exit heads after a deterministic trunk are not supported by the early-exit runner",
            ),
            WrongInputSign { model_signed: true } => f.write_str(
                "the model reads signed 8-bit codes (predict_i8), not unsigned bytes",
            ),
            WrongInputSign { model_signed: false } => f.write_str(
                "the model reads unsigned bytes (predict_u8), not signed 8-bit codes",
            ),
        }
    }
}

impl core::error::Error for InferenceError {}
