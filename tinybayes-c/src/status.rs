//! `tb_status`: what a call did. One code per kind of failure: the C API's own argument
//! checks (1-99), every [`ModelError`] kind (100-199) and every [`InferenceError`] kind
//! (200-299). The numbers are part of the ABI: new kinds are appended, none is renumbered.

use core::ffi::{c_char, CStr};

use tinybayes::{InferenceError, ModelError};

/// What a call did: `TB_STATUS_OK` (0), or why it failed (one code per kind of failure).
/// `tb_status_name` names it. Codes 1-99: the arguments of the call; 100-199: the model file
/// did not validate; 200-299: the inference could not run.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TbStatus {
    /// Success.
    Ok = 0,
    /// A pointer argument is NULL.
    NullPointer = 1,
    /// A buffer (workspace, input) does not have the alignment its type needs.
    Misaligned = 2,
    /// A length is larger than the address space allows (its end would wrap).
    LengthOverflow = 3,
    /// The result struct was not prepared by `tb_result_init` of this header's version
    /// (its `version` or `size` field differs).
    ResultVersion = 4,
    /// An enumerated argument (mode kind, halting kind, uncertainty measure) has no meaning,
    /// or a sample count is above 65535.
    BadArgument = 5,
    /// The chunk is not one this library was built with (features `chunk-1`, `chunk-2`,
    /// `chunk-4`, `chunk-8`; the default build has 8).
    UnsupportedChunk = 6,
    /// The model's number format was left out of this build of the library (cargo features
    /// `f32`, `q8`, `q16`).
    FormatNotBuilt = 7,
    /// The engine struct was not initialised by `tb_engine_init`, or was copied or moved
    /// since (it holds its own address).
    NotInitialized = 8,
    /// f32 inputs were given to a fixed-point model (they read raw 8-bit inputs only).
    InputType = 9,
    /// The model is shorter than the smallest possible model (header plus trailer).
    ModelTooShort = 100,
    /// The model bytes do not start at a 4-byte-aligned address.
    ModelMisaligned = 101,
    /// The bytes do not start with the magic `TBYS`: not a tinybayes model.
    ModelBadMagic = 102,
    /// The file was written in a format version this library does not know.
    ModelUnsupportedVersion = 103,
    /// The header length field is not the one of its version.
    ModelBadHeaderLength = 104,
    /// The length recorded in the header differs from the given length (truncated or padded).
    ModelLengthMismatch = 105,
    /// The CRC-32 trailer does not match the contents: the file is corrupted.
    ModelCrcMismatch = 106,
    /// A reserved field or flag is not zero.
    ModelReservedNotZero = 107,
    /// The trained size recorded in the header is inconsistent.
    ModelBadTrainedSize = 108,
    /// The layer count is zero or above the format's limit.
    ModelBadLayerCount = 109,
    /// The number of classes is below 2 or above the format's limit.
    ModelBadClassCount = 110,
    /// An input dimension is zero.
    ModelBadInputShape = 111,
    /// The input scale or offset is not finite.
    ModelBadInputNormalization = 112,
    /// The layer table offset is wrong.
    ModelBadLayerTableOffset = 113,
    /// A layer has an unknown kind, activation, posterior or storage code.
    ModelUnknownCode = 114,
    /// A layer has zero or too many units.
    ModelBadLayerSize = 115,
    /// A layer's input size does not match the previous layer's output.
    ModelShapeMismatch = 116,
    /// The last layer is not a linear layer onto the classes.
    ModelBadOutputLayer = 117,
    /// A convolution or pooling layer's geometry is inconsistent.
    ModelBadGeometry = 118,
    /// A layer stores more weights than it has connections.
    ModelBadWeightCount = 119,
    /// A layer's payload lies outside the file or overlaps another.
    ModelPayloadOutOfBounds = 120,
    /// A layer's payload length does not match its weight count.
    ModelPayloadLength = 121,
    /// Sparse row pointers are not non-decreasing or do not end at the weight count.
    ModelBadRowPointers = 122,
    /// A sparse column index is out of range or not strictly increasing.
    ModelBadColumnIndex = 123,
    /// A parameter is NaN or infinite.
    ModelNonFinite = 124,
    /// A weight variance is negative.
    ModelNegativeVariance = 125,
    /// The header's precision code is unknown.
    ModelBadPrecision = 126,
    /// The file's precision is not the one the reader expected.
    ModelWrongPrecision = 127,
    /// The early-exit structure (residual sources, exit heads, priors) is inconsistent.
    ModelBadEarlyExit = 128,
    /// A fixed-point layer's quantisation layout is inconsistent.
    ModelQuantLayout = 129,
    /// A fixed-point parameter (scale, shift) is out of its range.
    ModelQuantRange = 130,
    /// A dropout layer's drop probability is not in [0, 1), or dropout is on a layer that is
    /// not linear.
    ModelBadDropout = 131,
    /// The per-channel input normalisation flag is set in a file older than format version 9.
    ModelChannelNormVersion = 132,
    /// The per-channel input normalisation table runs past the end of the file.
    ModelChannelNormTruncated = 133,
    /// The per-channel input normalisation table's count is not the input's channels.
    ModelChannelNormLength = 134,
    /// A channel's normalisation scale or offset is not finite (or overflows on raw bytes).
    ModelChannelNormNotFinite = 135,
    /// A channel's normalisation scale is zero.
    ModelChannelNormZeroScale = 136,
    /// The signed-input flag is set where it cannot be (format version 10: fixed point, a
    /// table of zero offsets, a finite positive step, a linear or convolution first layer).
    ModelBadSignedInput = 137,
    /// The input has the wrong number of values for the model.
    InputLength = 200,
    /// The input contains NaN or an infinity.
    NonFiniteInput = 201,
    /// The workspace is smaller than `tb_workspace_size` says the model needs.
    WorkspaceTooSmall = 202,
    /// The model predicts more classes than `TB_MAX_CLASSES`.
    ClassCapacity = 203,
    /// Zero Monte Carlo samples were requested.
    ZeroSamples = 204,
    /// A sample produced NaN or infinite logits.
    NonFiniteLogits = 205,
    /// A halting prior or threshold is invalid (wrong length, not a distribution,
    /// increasing for the joint mode, NaN threshold, zero depth).
    BadPrior = 206,
    /// Early exit was asked of a model without exit heads.
    NotEarlyExit = 207,
    /// The early-exit model's layout is one the early-exit runner does not support.
    UnsupportedLayout = 208,
    /// The chunk holds fewer samples than the mode needs (moment propagation needs 2).
    ChunkTooSmall = 209,
    /// The mode is not available for this number format (moments: f32 models only).
    UnsupportedMode = 210,
    /// The model's number format is not the engine's.
    WrongFormat = 211,
    /// The model reads signed 8-bit codes (format version 10); the C API's prediction
    /// functions take unsigned bytes.
    WrongInputSign = 212,
}

impl TbStatus {
    /// The code's name and meaning, as `tb_status_name` returns it.
    pub const fn message(self) -> &'static CStr {
        use TbStatus::*;
        match self {
            Ok => c"TB_STATUS_OK: success",
            NullPointer => c"TB_STATUS_NULL_POINTER: a pointer argument is NULL",
            Misaligned => c"TB_STATUS_MISALIGNED: a buffer is not aligned for its type",
            LengthOverflow => c"TB_STATUS_LENGTH_OVERFLOW: a length runs past the address space",
            ResultVersion => {
                c"TB_STATUS_RESULT_VERSION: the result struct was not prepared by tb_result_init of this version"
            }
            BadArgument => {
                c"TB_STATUS_BAD_ARGUMENT: an unknown mode, halting or measure, or over 65535 samples"
            }
            UnsupportedChunk => c"TB_STATUS_UNSUPPORTED_CHUNK: this build has no engine for that chunk (features chunk-1/2/4/8)",
            FormatNotBuilt => {
                c"TB_STATUS_FORMAT_NOT_BUILT: this library was built without the model's number format"
            }
            NotInitialized => {
                c"TB_STATUS_NOT_INITIALIZED: the engine was not set up by tb_engine_init, or was moved since"
            }
            InputType => {
                c"TB_STATUS_INPUT_TYPE: a fixed-point model takes raw 8-bit inputs (tb_predict_u8)"
            }
            ModelTooShort => c"TB_STATUS_MODEL_TOO_SHORT: the model is shorter than a header",
            ModelMisaligned => {
                c"TB_STATUS_MODEL_MISALIGNED: the model bytes must start at a 4-byte-aligned address"
            }
            ModelBadMagic => c"TB_STATUS_MODEL_BAD_MAGIC: not a tinybayes model (magic TBYS)",
            ModelUnsupportedVersion => {
                c"TB_STATUS_MODEL_UNSUPPORTED_VERSION: a format version this library does not know"
            }
            ModelBadHeaderLength => c"TB_STATUS_MODEL_BAD_HEADER_LENGTH: wrong header length",
            ModelLengthMismatch => {
                c"TB_STATUS_MODEL_LENGTH_MISMATCH: the given length differs from the header's (truncated?)"
            }
            ModelCrcMismatch => {
                c"TB_STATUS_MODEL_CRC_MISMATCH: the CRC-32 does not match: the model is corrupted"
            }
            ModelReservedNotZero => c"TB_STATUS_MODEL_RESERVED_NOT_ZERO: a reserved field is set",
            ModelBadTrainedSize => {
                c"TB_STATUS_MODEL_BAD_TRAINED_SIZE: the recorded trained size is inconsistent"
            }
            ModelBadLayerCount => c"TB_STATUS_MODEL_BAD_LAYER_COUNT: no layers or too many",
            ModelBadClassCount => c"TB_STATUS_MODEL_BAD_CLASS_COUNT: fewer than 2 classes or too many",
            ModelBadInputShape => c"TB_STATUS_MODEL_BAD_INPUT_SHAPE: an input dimension is zero",
            ModelBadInputNormalization => {
                c"TB_STATUS_MODEL_BAD_INPUT_NORMALIZATION: the input scale or offset is not finite"
            }
            ModelBadLayerTableOffset => {
                c"TB_STATUS_MODEL_BAD_LAYER_TABLE_OFFSET: the layer table is misplaced"
            }
            ModelUnknownCode => c"TB_STATUS_MODEL_UNKNOWN_CODE: a layer has an unknown code",
            ModelBadLayerSize => c"TB_STATUS_MODEL_BAD_LAYER_SIZE: a layer has zero or too many units",
            ModelShapeMismatch => {
                c"TB_STATUS_MODEL_SHAPE_MISMATCH: a layer's inputs do not match the previous outputs"
            }
            ModelBadOutputLayer => {
                c"TB_STATUS_MODEL_BAD_OUTPUT_LAYER: the last layer is not a linear layer onto the classes"
            }
            ModelBadGeometry => {
                c"TB_STATUS_MODEL_BAD_GEOMETRY: a convolution or pooling geometry is inconsistent"
            }
            ModelBadWeightCount => {
                c"TB_STATUS_MODEL_BAD_WEIGHT_COUNT: more weights than connections"
            }
            ModelPayloadOutOfBounds => {
                c"TB_STATUS_MODEL_PAYLOAD_OUT_OF_BOUNDS: a payload lies outside the file"
            }
            ModelPayloadLength => {
                c"TB_STATUS_MODEL_PAYLOAD_LENGTH: a payload length does not match its weights"
            }
            ModelBadRowPointers => c"TB_STATUS_MODEL_BAD_ROW_POINTERS: invalid sparse row pointers",
            ModelBadColumnIndex => c"TB_STATUS_MODEL_BAD_COLUMN_INDEX: invalid sparse column index",
            ModelNonFinite => c"TB_STATUS_MODEL_NON_FINITE: a parameter is NaN or infinite",
            ModelNegativeVariance => c"TB_STATUS_MODEL_NEGATIVE_VARIANCE: a variance is negative",
            ModelBadPrecision => c"TB_STATUS_MODEL_BAD_PRECISION: unknown precision code",
            ModelWrongPrecision => {
                c"TB_STATUS_MODEL_WRONG_PRECISION: the file's precision is not the expected one"
            }
            ModelBadEarlyExit => {
                c"TB_STATUS_MODEL_BAD_EARLY_EXIT: inconsistent residual sources, exits or priors"
            }
            ModelQuantLayout => {
                c"TB_STATUS_MODEL_QUANT_LAYOUT: inconsistent fixed-point layout"
            }
            ModelQuantRange => {
                c"TB_STATUS_MODEL_QUANT_RANGE: a fixed-point scale or shift is out of range"
            }
            ModelBadDropout => {
                c"TB_STATUS_MODEL_BAD_DROPOUT: a drop probability outside [0, 1) or not on a linear layer"
            }
            ModelChannelNormVersion => {
                c"TB_STATUS_MODEL_CHANNEL_NORM_VERSION: the per-channel normalisation flag needs format version 9"
            }
            ModelChannelNormTruncated => {
                c"TB_STATUS_MODEL_CHANNEL_NORM_TRUNCATED: the per-channel normalisation table runs past the file"
            }
            ModelChannelNormLength => {
                c"TB_STATUS_MODEL_CHANNEL_NORM_LENGTH: the per-channel normalisation table does not match the input channels"
            }
            ModelChannelNormNotFinite => {
                c"TB_STATUS_MODEL_CHANNEL_NORM_NOT_FINITE: a channel's normalisation is not finite"
            }
            ModelChannelNormZeroScale => {
                c"TB_STATUS_MODEL_CHANNEL_NORM_ZERO_SCALE: a channel's normalisation scale is zero"
            }
            ModelBadSignedInput => {
                c"TB_STATUS_MODEL_BAD_SIGNED_INPUT: the signed-input flag is set in a file that cannot have it"
            }
            InputLength => c"TB_STATUS_INPUT_LENGTH: the input has the wrong number of values",
            NonFiniteInput => c"TB_STATUS_NON_FINITE_INPUT: the input contains NaN or infinity",
            WorkspaceTooSmall => {
                c"TB_STATUS_WORKSPACE_TOO_SMALL: the workspace is smaller than tb_workspace_size says"
            }
            ClassCapacity => {
                c"TB_STATUS_CLASS_CAPACITY: the model has more classes than TB_MAX_CLASSES"
            }
            ZeroSamples => c"TB_STATUS_ZERO_SAMPLES: zero Monte Carlo samples requested",
            NonFiniteLogits => c"TB_STATUS_NON_FINITE_LOGITS: a sample overflowed to NaN or infinity",
            BadPrior => c"TB_STATUS_BAD_PRIOR: invalid halting prior, threshold or depth",
            NotEarlyExit => c"TB_STATUS_NOT_EARLY_EXIT: the model has no exit heads",
            UnsupportedLayout => {
                c"TB_STATUS_UNSUPPORTED_LAYOUT: an early-exit layout the runner does not support"
            }
            ChunkTooSmall => {
                c"TB_STATUS_CHUNK_TOO_SMALL: the mode needs a larger chunk (moments: 2)"
            }
            UnsupportedMode => {
                c"TB_STATUS_UNSUPPORTED_MODE: the mode is not available for this number format"
            }
            WrongFormat => c"TB_STATUS_WRONG_FORMAT: the model's format is not the engine's",
            WrongInputSign => {
                c"TB_STATUS_WRONG_INPUT_SIGN: the model reads signed 8-bit codes, the C API unsigned bytes"
            }
        }
    }

    /// Every code, in order (for tests and for a caller's table).
    pub const ALL: [TbStatus; 61] = {
        use TbStatus::*;
        [
            Ok,
            NullPointer,
            Misaligned,
            LengthOverflow,
            ResultVersion,
            BadArgument,
            UnsupportedChunk,
            FormatNotBuilt,
            NotInitialized,
            InputType,
            ModelTooShort,
            ModelMisaligned,
            ModelBadMagic,
            ModelUnsupportedVersion,
            ModelBadHeaderLength,
            ModelLengthMismatch,
            ModelCrcMismatch,
            ModelReservedNotZero,
            ModelBadTrainedSize,
            ModelBadLayerCount,
            ModelBadClassCount,
            ModelBadInputShape,
            ModelBadInputNormalization,
            ModelBadLayerTableOffset,
            ModelUnknownCode,
            ModelBadLayerSize,
            ModelShapeMismatch,
            ModelBadOutputLayer,
            ModelBadGeometry,
            ModelBadWeightCount,
            ModelPayloadOutOfBounds,
            ModelPayloadLength,
            ModelBadRowPointers,
            ModelBadColumnIndex,
            ModelNonFinite,
            ModelNegativeVariance,
            ModelBadPrecision,
            ModelWrongPrecision,
            ModelBadEarlyExit,
            ModelQuantLayout,
            ModelQuantRange,
            ModelBadDropout,
            ModelChannelNormVersion,
            ModelChannelNormTruncated,
            ModelChannelNormLength,
            ModelChannelNormNotFinite,
            ModelChannelNormZeroScale,
            ModelBadSignedInput,
            InputLength,
            NonFiniteInput,
            WorkspaceTooSmall,
            ClassCapacity,
            ZeroSamples,
            NonFiniteLogits,
            BadPrior,
            NotEarlyExit,
            UnsupportedLayout,
            ChunkTooSmall,
            UnsupportedMode,
            WrongFormat,
            WrongInputSign,
        ]
    };
}

impl From<ModelError> for TbStatus {
    fn from(e: ModelError) -> Self {
        use ModelError as E;
        use TbStatus::*;
        match e {
            E::TooShort { .. } => ModelTooShort,
            E::Misaligned => ModelMisaligned,
            E::BadMagic => ModelBadMagic,
            E::UnsupportedVersion { .. } => ModelUnsupportedVersion,
            E::BadHeaderLength { .. } => ModelBadHeaderLength,
            E::LengthMismatch { .. } => ModelLengthMismatch,
            E::CrcMismatch { .. } => ModelCrcMismatch,
            E::ReservedNotZero { .. } => ModelReservedNotZero,
            E::BadTrainedSize => ModelBadTrainedSize,
            E::BadLayerCount { .. } => ModelBadLayerCount,
            E::BadClassCount { .. } => ModelBadClassCount,
            E::BadInputShape => ModelBadInputShape,
            E::BadInputNormalization => ModelBadInputNormalization,
            E::BadLayerTableOffset { .. } => ModelBadLayerTableOffset,
            E::UnknownCode { .. } => ModelUnknownCode,
            E::BadLayerSize { .. } => ModelBadLayerSize,
            E::ShapeMismatch { .. } => ModelShapeMismatch,
            E::BadOutputLayer => ModelBadOutputLayer,
            E::BadGeometry { .. } => ModelBadGeometry,
            E::BadWeightCount { .. } => ModelBadWeightCount,
            E::PayloadOutOfBounds { .. } => ModelPayloadOutOfBounds,
            E::PayloadLength { .. } => ModelPayloadLength,
            E::BadRowPointers { .. } => ModelBadRowPointers,
            E::BadColumnIndex { .. } => ModelBadColumnIndex,
            E::NonFinite { .. } => ModelNonFinite,
            E::NegativeVariance { .. } => ModelNegativeVariance,
            E::BadPrecision { .. } => ModelBadPrecision,
            E::WrongPrecision { .. } => ModelWrongPrecision,
            E::BadEarlyExit { .. } => ModelBadEarlyExit,
            E::QuantLayout { .. } => ModelQuantLayout,
            E::QuantRange { .. } => ModelQuantRange,
            E::BadDropout { .. } => ModelBadDropout,
            E::ChannelNormVersion { .. } => ModelChannelNormVersion,
            E::ChannelNormTruncated => ModelChannelNormTruncated,
            E::ChannelNormLength { .. } => ModelChannelNormLength,
            E::ChannelNormNotFinite { .. } => ModelChannelNormNotFinite,
            E::ChannelNormZeroScale { .. } => ModelChannelNormZeroScale,
            E::BadSignedInput => ModelBadSignedInput,
        }
    }
}

impl From<InferenceError> for TbStatus {
    fn from(e: InferenceError) -> Self {
        use InferenceError as E;
        use TbStatus::*;
        match e {
            E::InputLength { .. } => InputLength,
            E::NonFiniteInput => NonFiniteInput,
            E::WorkspaceTooSmall { .. } => WorkspaceTooSmall,
            E::ClassCapacity { .. } => ClassCapacity,
            E::ZeroSamples => ZeroSamples,
            E::NonFiniteLogits => NonFiniteLogits,
            E::BadPrior => BadPrior,
            E::NotEarlyExit => NotEarlyExit,
            E::UnsupportedLayout => UnsupportedLayout,
            E::ChunkTooSmall { .. } => ChunkTooSmall,
            E::UnsupportedMode => UnsupportedMode,
            E::WrongFormat { .. } => WrongFormat,
            E::WrongInputSign { .. } => WrongInputSign,
        }
    }
}

/// The name and meaning of a status code, as a static NUL-terminated string (e.g.
/// `"TB_STATUS_MODEL_CRC_MISMATCH: the CRC-32 does not match: the model is corrupted"`); an
/// unknown code gives `"TB_STATUS_UNKNOWN: not a tb_status code"`. Never NULL.
#[no_mangle]
pub extern "C" fn tb_status_name(status: i32) -> *const c_char {
    TbStatus::ALL
        .iter()
        .find(|s| **s as i32 == status)
        .map_or(c"TB_STATUS_UNKNOWN: not a tb_status code", |s| s.message())
        .as_ptr()
}

/// A call's outcome as the C functions return it.
pub(crate) fn status_of(result: Result<(), TbStatus>) -> TbStatus {
    match result {
        Ok(()) => TbStatus::Ok,
        Err(status) => status,
    }
}
