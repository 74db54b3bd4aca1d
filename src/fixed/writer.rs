//! Writing fixed-point models (feature `alloc`): the quantized counterpart of
//! [`crate::writer::ModelSpec`]. The host's quantizer fills a [`QModelSpec`] with integer
//! parameters; every file written is read back by [`QModel::from_bytes`] before it is
//! returned.

use alloc::vec::Vec;

use super::model::QModel;
use crate::format::{
    self, quant_payload_len, quant_record_layout, record, Activation, LayerKind, Posterior,
    Precision, Storage, HEADER_LEN, LAYER_RECORD_LEN, TRAILER_LEN,
};
use crate::writer::{header_bytes, write_sizes, Header, ModelBuffer, StorageChoice, WriteError};

/// One fixed-point linear layer to write, with dense integer arrays (pruned weights are 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QLayerSpec {
    /// Number of inputs.
    pub inputs: usize,
    /// Number of outputs.
    pub outputs: usize,
    /// ReLU on hidden layers, identity on the last (logits).
    pub activation: Activation,
    /// Output shift `S` (1 to 62).
    pub shift: u32,
    /// Per output row `[mθ, mσ, bias]`.
    pub params: Vec<[i32; 3]>,
    /// θ, row-major `outputs x inputs`, each within the precision's range (i8 or i16).
    pub theta: Vec<i32>,
    /// σ², same layout, each within u8 or u16; `None` for a deterministic layer.
    pub sigma2: Option<Vec<u32>>,
    /// Storage (`Smallest` picks between dense and sparse rows).
    pub storage: StorageChoice,
}

/// A whole fixed-point model to write.
#[derive(Clone, Debug, PartialEq)]
pub struct QModelSpec {
    /// q8 or q16.
    pub precision: Precision,
    /// Input shape (channels, height, width) of raw 8-bit inputs.
    pub input_shape: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// The f32 model's input normalisation, kept in the header for reference (the integer
    /// path folds it into the first layer).
    pub input_scale: f32,
    /// See `input_scale`.
    pub input_offset: f32,
    /// Layers, input first.
    pub layers: Vec<QLayerSpec>,
    /// The network as trained, before pruning (format version 5 when recorded; see
    /// [`crate::writer::ModelSpec::trained`]).
    pub trained: Option<crate::format::TrainedSize>,
}

impl QLayerSpec {
    fn stored(&self, k: usize) -> bool {
        self.theta[k] != 0 || self.sigma2.as_ref().is_some_and(|s| s[k] != 0)
    }

    /// Number of weights stored sparsely.
    pub fn nnz(&self) -> usize {
        (0..self.theta.len()).filter(|&k| self.stored(k)).count()
    }

    fn posterior(&self) -> Posterior {
        if self.sigma2.is_some() {
            Posterior::Gaussian
        } else {
            Posterior::Deterministic
        }
    }

    /// Index width for sparse storage: one byte when the indexed dimension is at most 255.
    fn index_bytes(&self, storage: Storage) -> usize {
        let indexed = match storage {
            Storage::Dense => return 0,
            Storage::Sparse => self.inputs,
            Storage::SparseByInput => self.outputs,
        };
        if indexed <= 255 {
            1
        } else {
            2
        }
    }

    /// The storage the writer will use.
    pub fn resolved_storage(&self, precision: Precision) -> Storage {
        match self.storage {
            StorageChoice::Dense => Storage::Dense,
            StorageChoice::Sparse => Storage::Sparse,
            StorageChoice::SparseByInput => Storage::SparseByInput,
            StorageChoice::Smallest => {
                let len = |st: Storage, nnz: usize| {
                    let (i, o, p) = (self.inputs, self.outputs, self.posterior());
                    quant_payload_len(st, p, precision, i, o, nnz, self.index_bytes(st))
                };
                let dense = len(Storage::Dense, self.inputs * self.outputs);
                if len(Storage::Sparse, self.nnz()) < dense {
                    Storage::Sparse
                } else {
                    Storage::Dense
                }
            }
        }
    }
}

impl QModelSpec {
    /// Serialises the spec and validates the result.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        Ok(self.to_buffer()?.as_bytes().to_vec())
    }

    /// Serialises the spec into an aligned buffer and validates it with [`QModel`].
    pub fn to_buffer(&self) -> Result<ModelBuffer, WriteError> {
        if self.precision == Precision::F32 {
            return Err(WriteError::TooLarge("f32 precision in a fixed-point spec"));
        }
        let table_end = HEADER_LEN + self.layers.len() * LAYER_RECORD_LEN;
        let mut payloads = Vec::new();
        let mut records = Vec::new();
        for (index, l) in self.layers.iter().enumerate() {
            let n = l.inputs * l.outputs;
            let shapes_ok = l.params.len() == l.outputs
                && l.theta.len() == n
                && l.sigma2.as_ref().is_none_or(|s| s.len() == n);
            if !shapes_ok {
                return Err(WriteError::BadParameterLength { layer: index });
            }
            let (lo, hi, s2_max) = match self.precision {
                Precision::Q16 => (i16::MIN as i32, i16::MAX as i32, u16::MAX as u32),
                _ => (i8::MIN as i32, i8::MAX as i32, u8::MAX as u32),
            };
            if l.theta.iter().any(|&t| t < lo || t > hi) {
                return Err(WriteError::TooLarge("a quantized θ"));
            }
            if l.sigma2
                .as_ref()
                .is_some_and(|s| s.iter().any(|&v| v > s2_max))
            {
                return Err(WriteError::TooLarge("a quantized σ²"));
            }
            let storage = l.resolved_storage(self.precision);
            let index_bytes = l.index_bytes(storage);
            let start = payloads.len();
            for p in &l.params {
                for v in p {
                    payloads.extend_from_slice(&v.to_le_bytes());
                }
            }
            // Weight positions (row-major k = j * inputs + i) in stored order.
            let order: Vec<usize> = match storage {
                Storage::Dense => (0..n).collect(),
                Storage::Sparse => (0..n).filter(|&k| l.stored(k)).collect(),
                Storage::SparseByInput => (0..l.inputs)
                    .flat_map(|i| (0..l.outputs).map(move |j| j * l.inputs + i))
                    .filter(|&k| l.stored(k))
                    .collect(),
            };
            // Sparse rows: line = output j, index = input i; by input the reverse.
            let by_rows = storage == Storage::Sparse;
            let other = |k: usize| if by_rows { k % l.inputs } else { k / l.inputs };
            if storage != Storage::Dense {
                let lines = if by_rows { l.outputs } else { l.inputs };
                let line_of = |k: usize| if by_rows { k / l.inputs } else { k % l.inputs };
                let mut counts = alloc::vec![0usize; lines];
                for &k in &order {
                    counts[line_of(k)] += 1;
                }
                push_ints(&mut payloads, counts.into_iter(), index_bytes);
            }
            // One record per weight: index, θ (aligned to its width), σ².
            let width = self.precision.value_bytes();
            let (record_len, theta_at, sigma_at) =
                quant_record_layout(self.precision, index_bytes, l.posterior());
            let records_start = payloads.len();
            for &k in &order {
                let mut record = [0u8; 8];
                record[..index_bytes]
                    .copy_from_slice(&(other(k) as u64).to_le_bytes()[..index_bytes]);
                record[theta_at..theta_at + width]
                    .copy_from_slice(&(l.theta[k] as u32).to_le_bytes()[..width]);
                if let Some(s2) = &l.sigma2 {
                    record[sigma_at..sigma_at + width]
                        .copy_from_slice(&s2[k].to_le_bytes()[..width]);
                }
                payloads.extend_from_slice(&record[..record_len]);
            }
            let padded = (payloads.len() - records_start).next_multiple_of(4);
            payloads.resize(records_start + padded, 0);
            let nnz = order.len();
            let len = payloads.len() - start;
            debug_assert_eq!(
                Some(len),
                quant_payload_len(
                    storage,
                    l.posterior(),
                    self.precision,
                    l.inputs,
                    l.outputs,
                    nnz,
                    index_bytes
                )
            );
            let kind = match storage {
                Storage::Dense => LayerKind::QuantDenseLinear,
                Storage::Sparse => LayerKind::QuantSparseLinear,
                Storage::SparseByInput => LayerKind::QuantSparseLinearByInput,
            };
            let mut rec = [0u8; LAYER_RECORD_LEN];
            rec[record::KIND] = kind as u8;
            rec[record::POSTERIOR] = l.posterior() as u8;
            rec[record::ACTIVATION] = l.activation as u8;
            rec[record::QUANT_SHIFT] =
                u8::try_from(l.shift).map_err(|_| WriteError::TooLarge("shift"))?;
            rec[record::QUANT_INDEX_BYTES] = index_bytes as u8;
            write_sizes(&mut rec, l.inputs, l.outputs, nnz, table_end + start, len)?;
            records.extend_from_slice(&rec);
        }
        let file_len = table_end + payloads.len() + TRAILER_LEN;
        let mut out = header_bytes(&Header {
            version: if self.trained.is_some() {
                format::TRAINED_SIZE_FORMAT_VERSION
            } else {
                format::FIXED_FORMAT_VERSION
            },
            precision: self.precision,
            trained: self.trained,
            layer_count: self.layers.len(),
            num_classes: self.num_classes,
            input_shape: self.input_shape,
            input_scale: self.input_scale,
            input_offset: self.input_offset,
            file_len,
        })?;
        out.extend_from_slice(&records);
        out.extend_from_slice(&payloads);
        let crc = format::CRC32.checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let buffer = ModelBuffer::from_bytes(&out);
        QModel::from_bytes(buffer.as_bytes())?;
        Ok(buffer)
    }
}

/// Appends little-endian integers of `width` bytes (values are truncated to the width: the
/// reader checks ranges that matter), then zero padding to 4 bytes.
fn push_ints(out: &mut Vec<u8>, values: impl Iterator<Item = usize>, width: usize) {
    let start = out.len();
    for v in values {
        out.extend_from_slice(&(v as u64).to_le_bytes()[..width]);
    }
    let padded = (out.len() - start).next_multiple_of(4);
    out.resize(start + padded, 0);
}
