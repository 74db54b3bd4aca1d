//! Layout of the flash table, format versions 1 to 10 (`docs/FORMAT.md` is the specification).
//!
//! Everything is little-endian. The file starts with a [`HEADER_LEN`]-byte header, then
//! `layer_count` layer records of [`LAYER_RECORD_LEN`] bytes, then (version 9, when the header
//! flag [`FLAG_CHANNEL_NORM`] is set) the per-channel input normalisation table, then the
//! layer payloads (each at a 4-byte-aligned offset), and ends with a CRC-32 (ISO-HDLC, as
//! zlib) of every byte before it.

/// The four bytes every model file starts with.
pub const MAGIC: [u8; 4] = *b"TBYS";
/// The newest format version this crate reads and writes (2 adds convolutions and pooling,
/// 3 adds fixed-point models: header byte 22 and the quantized kinds, 4
/// adds residual additions and exit heads for early-exit networks, 5 records the size of the
/// network as trained: [`TrainedSize`], 6 adds fixed-point convolutions and pooling, 7
/// fixed-point residual additions, exit heads and bias shifts, 8 the Bernoulli (MC dropout)
/// posterior, 9 the per-channel input normalisation table: [`ChannelNorm`], and non-square pooling
/// windows, 10 the global average pooling layer: [`LayerKind::GlobalAvgPool`], and fixed-point
/// files that read signed 8-bit inputs: [`FLAG_SIGNED_INPUT`]).
pub const FORMAT_VERSION: u16 = 10;
/// The version of files with a global average pooling layer ([`LayerKind::GlobalAvgPool`],
/// f32 or fixed point).
pub const GAP_FORMAT_VERSION: u16 = 10;
/// The version of fixed-point files that read signed 8-bit inputs ([`FLAG_SIGNED_INPUT`]).
pub const SIGNED_INPUT_FORMAT_VERSION: u16 = 10;
/// Header flag (byte 23, bit 1; format version 10, fixed-point files only): the first layer
/// reads signed 8-bit codes `q` (-128..=127) whose raw value, in the units of the training
/// data, is `q * step`; the step is the f32 at header bytes 44..48 (finite, positive). Such a
/// file has a per-channel normalisation table ([`FLAG_CHANNEL_NORM`]) with zero offsets, and
/// its first layer is a linear layer or a convolution. Without the flag, the first layer reads
/// unsigned bytes (0..=255), as in every older version.
pub const FLAG_SIGNED_INPUT: u8 = 0x02;
/// The version of files with a per-channel input normalisation table ([`FLAG_CHANNEL_NORM`]).
pub const CHANNEL_NORM_FORMAT_VERSION: u16 = 9;
/// Header flag (byte 23, bit 0; format version 9): the file stores a per-channel input
/// normalisation table right after the layer table. Every other flag bit is reserved (zero).
pub const FLAG_CHANNEL_NORM: u8 = 0x01;
/// The version of files with a Bernoulli (MC dropout) layer ([`Posterior::Bernoulli`]).
pub const DROPOUT_FORMAT_VERSION: u16 = 8;
/// The version of files with a non-square pooling window (record byte 26, `record::POOL_WIDTH`):
/// 1-D pooling over time series laid out `[C, T, 1]`.
pub const POOL_WINDOW_FORMAT_VERSION: u16 = 9;
/// The version of fixed-point files with residual additions, exit heads or a non-zero bias
/// shift.
pub const FIXED_EXIT_FORMAT_VERSION: u16 = 7;
/// The version of fixed-point files with convolutions or pooling.
pub const FIXED_CONV_FORMAT_VERSION: u16 = 6;
/// The version of files that record the trained network's size ([`TrainedSize`], header bytes
/// 36..44).
pub const TRAINED_SIZE_FORMAT_VERSION: u16 = 5;
/// The version of fixed-point files.
pub const FIXED_FORMAT_VERSION: u16 = 3;
/// The version of files with residual additions or exit heads.
pub const EARLY_EXIT_FORMAT_VERSION: u16 = 4;
/// The version of files with convolutions or pooling (f32 models are written in the oldest
/// version that holds their layers: 1 or 2).
pub const CONV_FORMAT_VERSION: u16 = 2;
/// The oldest format version this crate reads (linear layers only).
pub const MIN_FORMAT_VERSION: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 48;
/// Size of one layer record in bytes.
pub const LAYER_RECORD_LEN: usize = 32;
/// Size of the CRC trailer in bytes.
pub const TRAILER_LEN: usize = 4;
/// Alignment, in bytes, of the file start and of every payload.
pub const ALIGNMENT: usize = 4;
/// Most layers a model may have.
pub const MAX_LAYERS: usize = 32;
/// Most units a layer may have on either side (column indices are `u16`).
pub const MAX_UNITS: usize = u16::MAX as usize;
/// Most classes a model may predict.
pub const MAX_CLASSES: usize = 1024;

/// The CRC used over the file: CRC-32/ISO-HDLC (the zlib / PNG / Ethernet CRC).
pub const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// [`CRC32`] of `bytes`, computed four bytes at a time (what validation and the writers use;
/// the same value as `CRC32.checksum(bytes)`).
pub use crate::checksum::crc32;

/// Byte offsets of the header fields.
pub(crate) mod header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const HEADER_LEN: usize = 6;
    pub const FILE_LEN: usize = 8;
    pub const LAYER_COUNT: usize = 12;
    pub const NUM_CLASSES: usize = 14;
    pub const INPUT_CHANNELS: usize = 16;
    pub const INPUT_HEIGHT: usize = 18;
    pub const INPUT_WIDTH: usize = 20;
    /// Number format ([`super::Precision`] code, version 3; zero before).
    pub const PRECISION: usize = 22;
    /// Flags byte: [`super::FLAG_CHANNEL_NORM`] (version 9), [`super::FLAG_SIGNED_INPUT`]
    /// (version 10); every other bit reserved (zero).
    pub const FLAGS: usize = 23;
    pub const INPUT_SCALE: usize = 24;
    pub const INPUT_OFFSET: usize = 28;
    pub const LAYER_TABLE: usize = 32;
    /// Reserved (zero) before version 5.
    pub const RESERVED: core::ops::Range<usize> = 36..48;
    /// Version 5: dense weights of the network as trained (u32, 0 = not recorded).
    pub const TRAINED_WEIGHTS: usize = 36;
    /// Version 5: dense parameters (weights and biases) of the network as trained (u32).
    pub const TRAINED_PARAMS: usize = 40;
    /// Reserved (zero) from version 5, except in signed-input files (below).
    pub const RESERVED_V5: core::ops::Range<usize> = 44..48;
    /// Version 10, files flagged [`super::FLAG_SIGNED_INPUT`]: the input step (f32), the raw
    /// value of one signed input code.
    pub const INPUT_STEP: usize = 44;
}

/// The size of a network as it was trained, before pruning and the removal of dead units
/// (format version 5, header bytes 36..44). The layers of a file describe the compacted
/// network; this is what its pruning is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrainedSize {
    /// Weights of the trained architecture with every weight present (no biases).
    pub dense_weights: u32,
    /// Parameters of the trained architecture: its weights and biases (at least
    /// `dense_weights`).
    pub dense_params: u32,
}

/// The normalisation of one input channel (format version 9): a raw value `p` of channel `c`
/// is fed to the network as `p * scale + offset` (f32 arithmetic, in that order, not fused).
/// Files without a per-channel table apply the header's one pair to every channel.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChannelNorm {
    /// Multiplies the raw value (finite, non-zero).
    pub scale: f32,
    /// Added after scaling (finite).
    pub offset: f32,
}

impl ChannelNorm {
    /// The normalisation that leaves values unchanged (scale 1, offset 0): the header's pair
    /// in a file with a per-channel table.
    pub const IDENTITY: ChannelNorm = ChannelNorm {
        scale: 1.0,
        offset: 0.0,
    };

    /// The normalised value of raw value `raw`: `raw * scale + offset`.
    #[inline(always)]
    pub fn apply(self, raw: f32) -> f32 {
        raw * self.scale + self.offset
    }

    /// Whether two pairs have the same bits (so normalise every value to the same bits).
    pub fn same_bits(self, other: ChannelNorm) -> bool {
        self.scale.to_bits() == other.scale.to_bits()
            && self.offset.to_bits() == other.offset.to_bits()
    }
}

/// The one pair every channel of `norms` shares (bit for bit), or `None` when they differ or
/// `norms` is empty. Writers store such a table as the header's global pair (no version 9).
pub fn uniform_norm(norms: &[ChannelNorm]) -> Option<ChannelNorm> {
    let first = *norms.first()?;
    norms.iter().all(|n| n.same_bits(first)).then_some(first)
}

/// Size in bytes of the per-channel normalisation table of `channels` input channels (format
/// version 9): a u32 channel count, then `(scale, offset)` f32 pairs; `None` on overflow.
pub const fn channel_norm_table_len(channels: usize) -> Option<usize> {
    match channels.checked_mul(8) {
        Some(pairs) => pairs.checked_add(4),
        None => None,
    }
}

/// Byte offsets of the fields of a layer record.
pub(crate) mod record {
    pub const KIND: usize = 0;
    pub const POSTERIOR: usize = 1;
    pub const ACTIVATION: usize = 2;
    pub const RESERVED_BYTE: usize = 3;
    pub const INPUTS: usize = 4;
    pub const OUTPUTS: usize = 8;
    pub const NNZ: usize = 12;
    pub const PAYLOAD_OFFSET: usize = 16;
    pub const PAYLOAD_LEN: usize = 20;
    /// Linear layers: bytes 24..32 are reserved.
    pub const RESERVED: core::ops::Range<usize> = 24..32;
    /// Convolution: output channels (u16).
    pub const CONV_OUT_CHANNELS: usize = 24;
    /// Convolution: kernel height (u8).
    pub const CONV_KERNEL_H: usize = 26;
    /// Convolution: kernel width (u8).
    pub const CONV_KERNEL_W: usize = 27;
    /// Convolution: stride (u8).
    pub const CONV_STRIDE: usize = 28;
    /// Convolution: zero padding on every side (u8).
    pub const CONV_PADDING: usize = 29;
    /// Convolution: reserved.
    pub const CONV_RESERVED: core::ops::Range<usize> = 30..32;
    /// Pooling: window size (u8): the window's height, and its width unless
    /// [`POOL_WIDTH`] says otherwise.
    pub const POOL_SIZE: usize = 24;
    /// Pooling: stride (u8).
    pub const POOL_STRIDE: usize = 25;
    /// Pooling: reserved before format version 9.
    pub const POOL_RESERVED: core::ops::Range<usize> = 26..32;
    /// Pooling, format version 9: the window's width (u8) when it differs from its height
    /// ([`POOL_SIZE`]); 0 means a square window, as in every older file.
    pub const POOL_WIDTH: usize = 26;
    /// Pooling, format version 9: reserved.
    pub const POOL_RESERVED_V9: core::ops::Range<usize> = 27..32;

    /// The reserved bytes of a pooling record in a file of format `version`.
    pub const fn pool_reserved(version: u16) -> core::ops::Range<usize> {
        if version >= super::POOL_WINDOW_FORMAT_VERSION {
            POOL_RESERVED_V9
        } else {
            POOL_RESERVED
        }
    }
    /// Global average pooling (version 10): bytes 24..32 are reserved.
    pub const GAP_RESERVED: core::ops::Range<usize> = 24..32;
    /// Residual addition: index of the earlier layer whose output is added (u16).
    pub const RESIDUAL_SOURCE: usize = 24;
    /// Residual addition: reserved.
    pub const RESIDUAL_RESERVED: core::ops::Range<usize> = 26..32;
    /// Exit head: prior probability `p(z = this exit)` (f32).
    pub const EXIT_PRIOR: usize = 24;
    /// Exit head: reserved.
    pub const EXIT_RESERVED: core::ops::Range<usize> = 28..32;
    /// Quantized linear: output shift `S` of the row multipliers (u8, 1 to 62).
    pub const QUANT_SHIFT: usize = 24;
    /// Quantized linear: bytes per sparse count and index (u8: 1 or 2; 0 when dense).
    pub const QUANT_INDEX_BYTES: usize = 25;
    /// Quantized linear: reserved (versions 3 to 6).
    pub const QUANT_RESERVED: core::ops::Range<usize> = 26..32;
    /// Quantized linear and exit head (version 7): bias shift `B` (u8, 0 to 31): the row's
    /// bias enters the sum as `b << B`.
    pub const QUANT_BIAS_SHIFT: usize = 26;
    /// Quantized linear: reserved (version 7).
    pub const QUANT_RESERVED_V7: core::ops::Range<usize> = 27..32;
    /// f32 linear layer with a Bernoulli posterior (version 8): the probability `p` that an
    /// input is dropped (f32, finite, `0 <= p < 1`); bytes 28..32 stay reserved.
    pub const DROPOUT_P: usize = 24;
    /// f32 Bernoulli linear layer: reserved.
    pub const DROPOUT_RESERVED: core::ops::Range<usize> = 28..32;
    /// Quantized Bernoulli linear layer (version 8): the drop threshold (u32,
    /// [`super::drop_threshold`]); bytes 24..27 as a quantized linear layer, 27 reserved.
    pub const QUANT_DROP_THRESHOLD: usize = 28;
    /// Quantized Bernoulli linear layer: reserved.
    pub const QUANT_DROPOUT_RESERVED: core::ops::Range<usize> = 27..28;
    /// Quantized convolution: output shift `S` (u8, 1 to 62); bytes 24..30 as a convolution.
    pub const QUANT_CONV_SHIFT: usize = 30;
    /// Quantized convolution: reserved (versions 6; version 7: the bias shift).
    pub const QUANT_CONV_RESERVED: core::ops::Range<usize> = 31..32;
    /// Quantized convolution (version 7): bias shift `B` (u8, 0 to 31).
    pub const QUANT_CONV_BIAS_SHIFT: usize = 31;
    /// Fixed-point residual addition (version 7): shift `S` of the skip's rescale (u8, 1 to
    /// 30); byte 24 is the source as in f32 files.
    pub const QUANT_RESIDUAL_SHIFT: usize = 26;
    /// Fixed-point residual addition: reserved.
    pub const QUANT_RESIDUAL_RESERVED: core::ops::Range<usize> = 27..28;
    /// Fixed-point residual addition: multiplier `m` of the skip's rescale (i32, positive),
    /// `skip term = (a m + 2^(S-1)) >> S`.
    pub const QUANT_RESIDUAL_MULTIPLIER: usize = 28;
    /// Fixed-point exit head (version 7): bytes 24 to 26 as a quantized linear layer
    /// (shift, index bytes 0: dense, bias shift), then reserved.
    pub const QUANT_EXIT_RESERVED: core::ops::Range<usize> = 27..28;
    /// Fixed-point exit head: prior probability of exiting here, unsigned Q16 (u32, 1 to
    /// 65536).
    pub const QUANT_EXIT_PRIOR: usize = 28;
}

/// What the first layer of a fixed-point model reads (header flag [`FLAG_SIGNED_INPUT`]).
/// Either way the file's per-channel normalisation is folded into the first layer, so the
/// integer path never normalises.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InputCoding {
    /// Unsigned bytes `p` (0..=255), each the raw value itself (pixels, or a sensor's
    /// unsigned codes): `Engine::predict_u8`.
    Unsigned,
    /// Signed 8-bit codes `q` (-127..=127 from [`InputCoding::signed_code`]), raw value
    /// `q * step`: `Engine::predict_i8`.
    Signed {
        /// The raw value of one code, in the units of the training data (finite, positive).
        step: f32,
    },
}

impl InputCoding {
    /// The signed code of raw value `raw` at `step`: `raw / step` rounded to the nearest
    /// integer (halves away from zero) and clamped to -127..=127; `None` for a non-finite
    /// `raw` (or a quotient that is not finite).
    pub fn signed_code(raw: f32, step: f32) -> Option<i8> {
        let q = raw / step;
        if !q.is_finite() {
            return None;
        }
        Some(libm::roundf(q).clamp(-127.0, 127.0) as i8)
    }
}

/// Number format of a model's parameters and activations (header byte 22; format version 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Precision {
    /// f32 parameters and activations (the only precision before format version 3).
    F32 = 0,
    /// int8 θ and unsigned 8-bit σ² with per-row scales; 8-bit activations; int32
    /// accumulators.
    Q8 = 1,
    /// int16 θ and unsigned 16-bit σ²; 15-bit activations; int64 accumulators.
    Q16 = 2,
}

impl Precision {
    /// The name used on the command line and in reports: `f32`, `q8` or `q16`.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Q8 => "q8",
            Precision::Q16 => "q16",
        }
    }

    /// Bytes per stored θ or σ² value.
    pub const fn value_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Q8 => 1,
            Precision::Q16 => 2,
        }
    }

    /// Largest activation value of a fixed-point format (activations are unsigned after
    /// ReLU): 255 for q8, 32767 for q16; 0 for f32.
    pub const fn activation_max(self) -> i32 {
        match self {
            Precision::F32 => 0,
            Precision::Q8 => 255,
            Precision::Q16 => 32767,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Precision::F32),
            1 => Some(Precision::Q8),
            2 => Some(Precision::Q16),
            _ => None,
        }
    }
}

/// Fractional bits of the logits a fixed-point model's last layer produces (Q16: a logit of
/// 1.0 is 65536).
pub const LOGIT_FRAC_BITS: u32 = 16;

/// Byte layout of one fixed-point weight record: `(record length, θ offset, σ² offset)`.
///
/// A record holds the weight's index (sparse storage: `index_bytes` bytes, 0 when dense), then
/// θ aligned to its width, then σ² (Gaussian layers). q8 sparse Gaussian records are 3 bytes
/// `[index, θ, σ²]`; q16 ones 6 bytes `[index, (pad), θ lo, θ hi, σ² lo, σ² hi]`.
pub const fn quant_record_layout(
    precision: Precision,
    index_bytes: usize,
    posterior: Posterior,
) -> (usize, usize, usize) {
    let width = precision.value_bytes();
    let theta = index_bytes.div_ceil(width) * width;
    let sigma = theta + width;
    let len = match posterior {
        Posterior::Deterministic | Posterior::Bernoulli => sigma,
        Posterior::Gaussian => sigma + width,
    };
    (len, theta, sigma)
}

/// Payload size in bytes of a quantized linear layer (format version 3); `None` on overflow.
///
/// Row parameters `[outputs]` of three i32 (θ multiplier, σ multiplier, bias); then, if
/// sparse, per line (output row, or input column for by-input storage) the count of its
/// weights, `index_bytes` wide; then `nnz` weight records ([`quant_record_layout`]). Each
/// section starts 4-byte aligned (zero padding).
pub fn quant_payload_len(
    storage: Storage,
    posterior: Posterior,
    precision: Precision,
    inputs: usize,
    outputs: usize,
    nnz: usize,
    index_bytes: usize,
) -> Option<usize> {
    let params = outputs.checked_mul(12)?;
    let counts = match storage {
        Storage::Dense => 0,
        Storage::Sparse => align_up(outputs.checked_mul(index_bytes)?)?,
        Storage::SparseByInput => align_up(inputs.checked_mul(index_bytes)?)?,
    };
    let (record, _, _) = quant_record_layout(precision, index_bytes, posterior);
    let records = align_up(nnz.checked_mul(record)?)?;
    params.checked_add(counts)?.checked_add(records)
}

/// Payload size in bytes of a quantized convolution (format version 6); `None` on overflow.
///
/// Per output channel three i32 (θ multiplier, σ multiplier, bias); per output channel the
/// u16 count of its taps; `nnz` packed taps (u32, [`pack_tap`]) in channel order; then `nnz`
/// weight records without index ([`quant_record_layout`] with `index_bytes = 0`). Each
/// section starts 4-byte aligned (zero padding).
pub fn quant_conv_payload_len(
    posterior: Posterior,
    precision: Precision,
    out_channels: usize,
    nnz: usize,
) -> Option<usize> {
    let params = out_channels.checked_mul(12)?;
    let counts = align_up(out_channels.checked_mul(2)?)?;
    let taps = nnz.checked_mul(4)?;
    let (record, _, _) = quant_record_layout(precision, 0, posterior);
    let records = align_up(nnz.checked_mul(record)?)?;
    params
        .checked_add(counts)?
        .checked_add(taps)?
        .checked_add(records)
}

/// What a layer computes and how its weights are stored (byte 0 of a layer record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LayerKind {
    /// Linear layer, dense weights (version 1).
    DenseLinear = 1,
    /// Linear layer, compressed sparse rows (version 1).
    SparseLinear = 2,
    /// 2-D convolution, per output channel the list of surviving taps (version 2).
    Conv2d = 3,
    /// 2-D max pooling per channel (version 2).
    MaxPool = 4,
    /// Linear layer, compressed sparse columns: per input, its surviving outgoing weights
    /// (version 2). Chosen for first layers, so zero inputs (blank pixels) are skipped whole.
    SparseLinearByInput = 5,
    /// Fixed-point linear layer, dense (version 3, q8/q16 models only).
    QuantDenseLinear = 6,
    /// Fixed-point linear layer, per output row the counts and indices of its weights
    /// (version 3, q8/q16 models only).
    QuantSparseLinear = 7,
    /// Fixed-point linear layer, per input column (version 3, q8/q16 models only; first
    /// layer only).
    QuantSparseLinearByInput = 8,
    /// Residual addition: adds an earlier layer's output (the block input) to the current
    /// activations, then applies the activation (version 4). No payload.
    ResidualAdd = 9,
    /// Exit head: global average pooling of the current map, then a dense linear layer to the
    /// class logits, with the prior probability of exiting here (version 4). The main path
    /// continues unchanged.
    ExitHead = 10,
    /// Fixed-point 2-D convolution: per output channel the count of its surviving taps, the
    /// packed taps and their weight records (version 6, q8/q16 models only).
    QuantConv2d = 11,
    /// Global average pooling: each channel of a `[C, H, W]` map becomes its mean, a `[C, 1,
    /// 1]` map (version 10, f32 and q8/q16 models). No parameters, no payload.
    GlobalAvgPool = 12,
}

impl LayerKind {
    /// A short name for reports: `linear-dense`, `linear-sparse`, `linear-sparse-by-input`,
    /// `conv2d`, `maxpool`, `global-avgpool`, and the fixed-point and early-exit kinds'.
    pub const fn name(self) -> &'static str {
        match self {
            LayerKind::DenseLinear => "linear-dense",
            LayerKind::SparseLinear => "linear-sparse",
            LayerKind::SparseLinearByInput => "linear-sparse-by-input",
            LayerKind::Conv2d => "conv2d",
            LayerKind::MaxPool => "maxpool",
            LayerKind::QuantDenseLinear => "qlinear-dense",
            LayerKind::QuantSparseLinear => "qlinear-sparse",
            LayerKind::QuantSparseLinearByInput => "qlinear-sparse-by-input",
            LayerKind::ResidualAdd => "residual-add",
            LayerKind::ExitHead => "exit-head",
            LayerKind::QuantConv2d => "qconv2d",
            LayerKind::GlobalAvgPool => "global-avgpool",
        }
    }

    pub(crate) fn from_code(code: u8, version: u16) -> Option<Self> {
        match (code, version) {
            (1, _) => Some(LayerKind::DenseLinear),
            (2, _) => Some(LayerKind::SparseLinear),
            (3, 2..) => Some(LayerKind::Conv2d),
            (4, 2..) => Some(LayerKind::MaxPool),
            (5, 2..) => Some(LayerKind::SparseLinearByInput),
            (6, 3..) => Some(LayerKind::QuantDenseLinear),
            (7, 3..) => Some(LayerKind::QuantSparseLinear),
            (8, 3..) => Some(LayerKind::QuantSparseLinearByInput),
            (9, 4..) => Some(LayerKind::ResidualAdd),
            (10, 4..) => Some(LayerKind::ExitHead),
            (11, 6..) => Some(LayerKind::QuantConv2d),
            (12, GAP_FORMAT_VERSION..) => Some(LayerKind::GlobalAvgPool),
            _ => None,
        }
    }
}

/// Packs a convolution tap: input channel, kernel row, kernel column.
pub const fn pack_tap(channel: usize, ky: usize, kx: usize) -> u32 {
    ((channel as u32) << 16) | ((ky as u32) << 8) | kx as u32
}

/// Unpacks a convolution tap into (input channel, kernel row, kernel column).
pub const fn unpack_tap(tap: u32) -> (usize, usize, usize) {
    (
        (tap >> 16) as usize,
        ((tap >> 8) & 0xff) as usize,
        (tap & 0xff) as usize,
    )
}

/// Output size of a convolution or pooling window along one axis; `None` if the window does
/// not fit.
pub const fn window_output(
    input: usize,
    window: usize,
    stride: usize,
    padding: usize,
) -> Option<usize> {
    let padded = input + 2 * padding;
    if window == 0 || stride == 0 || padded < window {
        None
    } else {
        Some((padded - window) / stride + 1)
    }
}

/// How a layer's weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Storage {
    /// Row-major `outputs x inputs` matrix of weight records.
    Dense = 1,
    /// Compressed sparse rows: per output unit, the sorted input indices of its surviving weights.
    Sparse = 2,
    /// Compressed sparse columns: per input, the sorted output indices of its surviving weights.
    SparseByInput = 5,
}

/// The posterior over a layer's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Posterior {
    /// Point weights: one f32 (theta) per weight.
    Deterministic = 0,
    /// Factorised Gaussian N(theta, sigma^2): two f32 (theta, sigma^2) per weight.
    Gaussian = 1,
    /// MC dropout (format version 8; linear layers): point weights θ, one per weight, and a
    /// Bernoulli mask over the layer's *inputs*: each input is kept with probability
    /// `q = 1 - p` in every Monte Carlo sample, independently. The stored θ already carry the
    /// `1 / q` scale of inverted dropout, so a sample multiplies by 0 or 1 only and the mean
    /// network is `q θ`.
    Bernoulli = 2,
}

impl Posterior {
    /// Number of f32 words stored per weight.
    pub const fn words_per_weight(self) -> usize {
        match self {
            Posterior::Deterministic | Posterior::Bernoulli => 1,
            Posterior::Gaussian => 2,
        }
    }

    /// The name used in reports: `deterministic`, `gaussian` or `bernoulli`.
    pub const fn name(self) -> &'static str {
        match self {
            Posterior::Deterministic => "deterministic",
            Posterior::Gaussian => "gaussian",
            Posterior::Bernoulli => "bernoulli",
        }
    }

    /// Whether a Monte Carlo sample draws something in a layer with this posterior (noise
    /// or a mask).
    pub const fn is_stochastic(self) -> bool {
        !matches!(self, Posterior::Deterministic)
    }
}

/// The drop threshold of a drop probability `p` in `[0, 1)`: `floor(p · 2^32)`. A sample
/// keeps an input when its uniform `u32` draw is at or above the threshold, with probability
/// `1 - threshold / 2^32` (`p` exactly when `p · 2^32` is an integer, as it is for every `p`
/// of at least `2^-9`). The f32 and fixed-point engines compare the same draws with it.
pub fn drop_threshold(p: f32) -> u32 {
    // p · 2^32 is exact in f32 (a power-of-two scale), below 2^32 for p < 1; the cast
    // truncates (and saturates, for out-of-range values that validation rejects first).
    (p * 4_294_967_296.0) as u32
}

/// The non-linearity applied to a layer's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activation {
    /// No non-linearity (required on the last layer, whose outputs are the logits).
    Identity = 0,
    /// max(0, x).
    Relu = 1,
}

impl Posterior {
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Posterior::Deterministic),
            1 => Some(Posterior::Gaussian),
            2 => Some(Posterior::Bernoulli),
            _ => None,
        }
    }
}

impl Activation {
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Activation::Identity),
            1 => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// Rounds `n` up to a multiple of [`ALIGNMENT`]; `None` on overflow.
pub(crate) const fn align_up(n: usize) -> Option<usize> {
    match n.checked_add(ALIGNMENT - 1) {
        Some(v) => Some(v / ALIGNMENT * ALIGNMENT),
        None => None,
    }
}

/// Payload size in bytes of a convolution: bias `[out_channels]` f32, row pointers
/// `[out_channels + 1]` u32, taps `[nnz]` u32, then `nnz` weight records.
pub fn conv_payload_len(posterior: Posterior, out_channels: usize, nnz: usize) -> Option<usize> {
    let bias = out_channels.checked_mul(4)?;
    let row_ptr = out_channels.checked_add(1)?.checked_mul(4)?;
    let taps = nnz.checked_mul(4)?;
    let values = nnz.checked_mul(4 * posterior.words_per_weight())?;
    bias.checked_add(row_ptr)?
        .checked_add(taps)?
        .checked_add(values)
}

/// Payload size in bytes of a linear layer, from its shape; `None` if it overflows `usize`.
///
/// Dense: bias `[outputs]` f32, then `outputs * inputs` weight records.
/// Sparse: bias, row pointers `[outputs + 1]` u32, column indices `[nnz]` u16 padded to 4
/// bytes, then `nnz` weight records. Sparse by input: the same with column pointers
/// `[inputs + 1]` and row indices.
pub fn payload_len(
    storage: Storage,
    posterior: Posterior,
    inputs: usize,
    outputs: usize,
    nnz: usize,
) -> Option<usize> {
    let bias = outputs.checked_mul(4)?;
    let record = 4 * posterior.words_per_weight();
    match storage {
        Storage::Dense => bias.checked_add(inputs.checked_mul(outputs)?.checked_mul(record)?),
        Storage::Sparse | Storage::SparseByInput => {
            let lines = if storage == Storage::Sparse {
                outputs
            } else {
                inputs
            };
            let pointers = lines.checked_add(1)?.checked_mul(4)?;
            let indices = align_up(nnz.checked_mul(2)?)?;
            let values = nnz.checked_mul(record)?;
            bias.checked_add(pointers)?
                .checked_add(indices)?
                .checked_add(values)
        }
    }
}
