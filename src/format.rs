//! Layout of the flash table, format version 1 (`docs/FORMAT.md` is the specification).
//!
//! Everything is little-endian. The file starts with a [`HEADER_LEN`]-byte header, then
//! `layer_count` layer records of [`LAYER_RECORD_LEN`] bytes, then the layer payloads (each at
//! a 4-byte-aligned offset), and ends with a CRC-32 (ISO-HDLC, as zlib) of every byte before it.

/// The four bytes every model file starts with.
pub const MAGIC: [u8; 4] = *b"TBYS";
/// The format version this crate writes.
pub const FORMAT_VERSION: u16 = 1;
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
    pub const FLAGS: usize = 22;
    pub const INPUT_SCALE: usize = 24;
    pub const INPUT_OFFSET: usize = 28;
    pub const LAYER_TABLE: usize = 32;
    pub const RESERVED: core::ops::Range<usize> = 36..48;
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
    pub const RESERVED: core::ops::Range<usize> = 24..32;
}

/// How a layer's weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Storage {
    /// Row-major `outputs x inputs` matrix of weight records.
    Dense = 1,
    /// Compressed sparse rows: per output unit, the sorted input indices of its surviving weights.
    Sparse = 2,
}

/// The posterior over a layer's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Posterior {
    /// Point weights: one f32 (theta) per weight.
    Deterministic = 0,
    /// Factorised Gaussian N(theta, sigma^2): two f32 (theta, sigma^2) per weight.
    Gaussian = 1,
}

impl Posterior {
    /// Number of f32 words stored per weight.
    pub const fn words_per_weight(self) -> usize {
        match self {
            Posterior::Deterministic => 1,
            Posterior::Gaussian => 2,
        }
    }
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

impl Storage {
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Storage::Dense),
            2 => Some(Storage::Sparse),
            _ => None,
        }
    }
}

impl Posterior {
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Posterior::Deterministic),
            1 => Some(Posterior::Gaussian),
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

/// Payload size in bytes of a layer, from its shape; `None` if it overflows `usize`.
///
/// Dense: bias `[outputs]` f32, then `outputs * inputs` weight records.
/// Sparse: bias, row pointers `[outputs + 1]` u32, column indices `[nnz]` u16 padded to 4
/// bytes, then `nnz` weight records.
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
        Storage::Sparse => {
            let row_ptr = outputs.checked_add(1)?.checked_mul(4)?;
            let cols = align_up(nnz.checked_mul(2)?)?;
            let values = nnz.checked_mul(record)?;
            bias.checked_add(row_ptr)?
                .checked_add(cols)?
                .checked_add(values)
        }
    }
}
