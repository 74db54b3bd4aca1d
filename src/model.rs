//! The zero-copy model reader: [`Model::from_bytes`] validates a flash table once, so that
//! inference needs no further checks and cannot index out of bounds.

use crate::error::ModelError;
use crate::format::{
    self, header, payload_len, record, Activation, Posterior, Storage, ALIGNMENT, HEADER_LEN,
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
}

/// One validated linear layer: `outputs = activation(W x + bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    inputs: usize,
    outputs: usize,
    activation: Activation,
    posterior: Posterior,
    bias: &'a [f32],
    weights: Weights<'a>,
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
    /// The (deterministic) bias, one per output.
    pub fn bias(&self) -> &'a [f32] {
        self.bias
    }
    /// The stored weights.
    pub fn weights(&self) -> Weights<'a> {
        self.weights
    }
    /// How the weights are stored.
    pub fn storage(&self) -> Storage {
        match self.weights {
            Weights::Dense { .. } => Storage::Dense,
            Weights::Sparse { .. } => Storage::Sparse,
        }
    }
    /// Number of stored weights (for a dense layer, `inputs * outputs`).
    pub fn nnz(&self) -> usize {
        match self.weights {
            Weights::Dense { values } | Weights::Sparse { values, .. } => {
                values.len() / self.posterior.words_per_weight()
            }
        }
    }
}

/// A validated model, borrowing its bytes (typically straight from flash).
#[derive(Clone, Debug)]
pub struct Model<'a> {
    bytes: &'a [u8],
    input_shape: [usize; 3],
    num_classes: usize,
    input_scale: f32,
    input_offset: f32,
    layers: heapless::Vec<Layer<'a>, MAX_LAYERS>,
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

fn f32_at(bytes: &[u8], offset: usize) -> f32 {
    f32::from_bits(u32_at(bytes, offset))
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Casts an aligned byte range to `T` values. Offsets were checked against the file length and
/// alignment before this is called, so the casts cannot fail; an error is still mapped to
/// `PayloadOutOfBounds` rather than panicking.
fn cast<T: bytemuck::AnyBitPattern>(
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

impl<'a> Model<'a> {
    /// Parses and validates a model in place. The slice must start at a 4-byte-aligned
    /// address (`include_model!` and [`crate::writer::ModelBuffer`] ensure it).
    ///
    /// Checks, in order: length, alignment, magic, version, declared length, CRC-32, reserved
    /// fields, header values, then every layer: codes, sizes, shapes chaining from the input to
    /// the classes, payload placement (contiguous, aligned, inside the file), payload lengths,
    /// sparse row pointers and column indices, finite parameters and non-negative variances.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, ModelError> {
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
        if version != format::FORMAT_VERSION {
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
        let computed = format::CRC32.checksum(&bytes[..body_end]);
        if stored != computed {
            return Err(ModelError::CrcMismatch { stored, computed });
        }
        if u16_at(bytes, header::FLAGS) != 0 {
            return Err(ModelError::ReservedNotZero {
                offset: header::FLAGS,
            });
        }
        if !is_zero(&bytes[header::RESERVED]) {
            return Err(ModelError::ReservedNotZero {
                offset: header::RESERVED.start,
            });
        }

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
        let input_scale = f32_at(bytes, header::INPUT_SCALE);
        let input_offset = f32_at(bytes, header::INPUT_OFFSET);
        // Raw 8-bit inputs are read as p * scale + offset: every one of the 256 values must be
        // finite, or `predict_u8` could feed infinities to the first layer.
        let normalized_finite =
            (0..=255u8).all(|p| (p as f32 * input_scale + input_offset).is_finite());
        if !input_scale.is_finite() || !input_offset.is_finite() || !normalized_finite {
            return Err(ModelError::BadInputNormalization);
        }
        let table = u32_at(bytes, header::LAYER_TABLE);
        if table as usize != HEADER_LEN {
            return Err(ModelError::BadLayerTableOffset { found: table });
        }
        let table_end = HEADER_LEN + layer_count as usize * LAYER_RECORD_LEN;
        if table_end > body_end {
            return Err(ModelError::BadLayerTableOffset { found: table });
        }

        let mut layers = heapless::Vec::new();
        let mut expected_inputs = input_shape[0] * input_shape[1] * input_shape[2];
        let mut cursor = table_end;
        for index in 0..layer_count as usize {
            let at = HEADER_LEN + index * LAYER_RECORD_LEN;
            let rec = &bytes[at..at + LAYER_RECORD_LEN];
            let layer = parse_layer(bytes, rec, index, expected_inputs, cursor, body_end)?;
            expected_inputs = layer.outputs;
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
        match layers.last() {
            Some(last)
                if last.outputs == classes as usize && last.activation == Activation::Identity => {}
            _ => return Err(ModelError::BadOutputLayer),
        }
        Ok(Model {
            bytes,
            input_shape,
            num_classes: classes as usize,
            input_scale,
            input_offset,
            layers,
        })
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
    /// Raw inputs `p` (e.g. 8-bit pixels) are normalised as `p * scale + offset`.
    pub fn input_normalization(&self) -> (f32, f32) {
        (self.input_scale, self.input_offset)
    }
    /// The validated layers, input first.
    pub fn layers(&self) -> &[Layer<'a>] {
        &self.layers
    }
    /// Widest layer output, in units.
    pub fn max_width(&self) -> usize {
        self.layers.iter().map(|l| l.outputs).max().unwrap_or(0)
    }
    /// Dense parameter count (weights of the unpruned shape, plus biases).
    pub fn dense_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.inputs * l.outputs + l.outputs)
            .sum()
    }
    /// Stored weights across layers.
    pub fn nnz(&self) -> usize {
        self.layers.iter().map(Layer::nnz).sum()
    }
    /// f32 words of workspace an [`crate::Engine`] needs to run this model with
    /// `samples_per_pass` Monte Carlo samples sharing each pass over the weights (the
    /// engine's `CHUNK`). The deterministic mode fits in the same buffer.
    pub fn workspace_len(&self, samples_per_pass: usize) -> usize {
        let width = self.max_width();
        2 * width + 2 * width * samples_per_pass.max(1)
    }
    /// [`Self::workspace_len`] in bytes.
    pub fn workspace_bytes(&self, samples_per_pass: usize) -> usize {
        self.workspace_len(samples_per_pass) * core::mem::size_of::<f32>()
    }
}

fn rec_payload_len(rec: &[u8]) -> usize {
    u32_at(rec, record::PAYLOAD_LEN) as usize
}

fn parse_layer<'a>(
    bytes: &'a [u8],
    rec: &[u8],
    layer: usize,
    expected_inputs: usize,
    payload_start: usize,
    body_end: usize,
) -> Result<Layer<'a>, ModelError> {
    let code = |field: usize| ModelError::UnknownCode {
        layer,
        field,
        code: rec[field],
    };
    let storage = Storage::from_code(rec[record::KIND]).ok_or_else(|| code(record::KIND))?;
    let posterior =
        Posterior::from_code(rec[record::POSTERIOR]).ok_or_else(|| code(record::POSTERIOR))?;
    let activation =
        Activation::from_code(rec[record::ACTIVATION]).ok_or_else(|| code(record::ACTIVATION))?;
    let record_offset = HEADER_LEN + layer * LAYER_RECORD_LEN;
    if rec[record::RESERVED_BYTE] != 0 {
        return Err(ModelError::ReservedNotZero {
            offset: record_offset + record::RESERVED_BYTE,
        });
    }
    if !is_zero(&rec[record::RESERVED]) {
        return Err(ModelError::ReservedNotZero {
            offset: record_offset + record::RESERVED.start,
        });
    }
    let inputs = u32_at(rec, record::INPUTS) as usize;
    let outputs = u32_at(rec, record::OUTPUTS) as usize;
    if inputs == 0 || outputs == 0 || inputs > MAX_UNITS || outputs > MAX_UNITS {
        return Err(ModelError::BadLayerSize { layer });
    }
    if inputs != expected_inputs {
        return Err(ModelError::ShapeMismatch {
            layer,
            expected: expected_inputs,
            found: inputs,
        });
    }
    let nnz = u32_at(rec, record::NNZ) as usize;
    let dense = inputs * outputs; // both <= 65535: fits in u32 and usize
    let nnz_ok = match storage {
        Storage::Dense => nnz == dense,
        Storage::Sparse => nnz <= dense,
    };
    if !nnz_ok {
        return Err(ModelError::BadWeightCount { layer });
    }
    let expected_len = payload_len(storage, posterior, inputs, outputs, nnz);
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
    if offset != payload_start || offset % ALIGNMENT != 0 || end.is_none_or(|e| e > body_end) {
        return Err(ModelError::PayloadOutOfBounds { layer });
    }

    let words = posterior.words_per_weight();
    let bias: &[f32] = cast(bytes, offset, outputs * 4, layer)?;
    let mut at = offset + outputs * 4;
    let weights = match storage {
        Storage::Dense => Weights::Dense {
            values: cast(bytes, at, dense * words * 4, layer)?,
        },
        Storage::Sparse => {
            let row_ptr: &[u32] = cast(bytes, at, (outputs + 1) * 4, layer)?;
            at += (outputs + 1) * 4;
            let cols: &[u16] = cast(bytes, at, nnz * 2, layer)?;
            let padded = (nnz * 2).next_multiple_of(ALIGNMENT);
            if !is_zero(&bytes[at + nnz * 2..at + padded]) {
                return Err(ModelError::ReservedNotZero {
                    offset: at + nnz * 2,
                });
            }
            at += padded;
            let values: &[f32] = cast(bytes, at, nnz * words * 4, layer)?;
            check_sparse_structure(row_ptr, cols, inputs, nnz, layer)?;
            Weights::Sparse {
                row_ptr,
                cols,
                values,
            }
        }
    };
    let values = match weights {
        Weights::Dense { values } | Weights::Sparse { values, .. } => values,
    };
    if !bias.iter().chain(values).all(|v| v.is_finite()) {
        return Err(ModelError::NonFinite { layer });
    }
    if posterior == Posterior::Gaussian && values.chunks_exact(2).any(|w| w[1] < 0.0) {
        return Err(ModelError::NegativeVariance { layer });
    }
    Ok(Layer {
        inputs,
        outputs,
        activation,
        posterior,
        bias,
        weights,
    })
}

fn check_sparse_structure(
    row_ptr: &[u32],
    cols: &[u16],
    inputs: usize,
    nnz: usize,
    layer: usize,
) -> Result<(), ModelError> {
    if row_ptr.first() != Some(&0) || row_ptr.last().map(|&e| e as usize) != Some(nnz) {
        return Err(ModelError::BadRowPointers { layer });
    }
    for pair in row_ptr.windows(2) {
        let (start, end) = (pair[0] as usize, pair[1] as usize);
        if start > end || end > nnz {
            return Err(ModelError::BadRowPointers { layer });
        }
        let row = &cols[start..end];
        for (i, &c) in row.iter().enumerate() {
            let increasing = i == 0 || row[i - 1] < c;
            if c as usize >= inputs || !increasing {
                return Err(ModelError::BadColumnIndex {
                    layer,
                    position: start + i,
                });
            }
        }
    }
    Ok(())
}
