//! Writing fixed-point models (feature `alloc`): the quantized counterpart of
//! [`crate::writer::ModelSpec`]. The host's quantizer fills a [`QModelSpec`] with integer
//! parameters; every file written is read back by [`QModel::from_bytes`] before it is
//! returned.

use alloc::vec::Vec;

use super::model::QModel;
use crate::error::ModelError;
use crate::format::{
    self, pack_tap, quant_conv_payload_len, quant_payload_len, quant_record_layout, record,
    window_output, Activation, LayerKind, Posterior, Precision, Storage, HEADER_LEN,
    LAYER_RECORD_LEN, TRAILER_LEN,
};
use crate::writer::{
    header_bytes, to_u8, write_conv_record, write_sizes, Header, InputNorm, LayerOp, ModelBuffer,
    StorageChoice, WriteError,
};

/// One fixed-point layer to write, with dense integer arrays (pruned weights are 0).
#[derive(Clone, Debug, PartialEq)]
pub struct QLayerSpec {
    /// What the layer computes: linear, a convolution, max pooling (version 6), a residual
    /// addition or an exit head (version 7), global average pooling (version 10). Pooling
    /// has no parameters (`params`, `theta` empty, `sigma2` `None`, shift 0).
    pub op: LayerOp,
    /// Number of inputs.
    pub inputs: usize,
    /// Number of outputs.
    pub outputs: usize,
    /// ReLU on hidden layers, identity on the last (logits).
    pub activation: Activation,
    /// Output shift `S` (1 to 62); for a residual addition the shift of its skip's rescale
    /// (1 to 30).
    pub shift: u32,
    /// Bias shift `B` (0 to 31): the bias enters the sums as `b << B` (format version 7 when
    /// not 0); 0 for layers without weights.
    pub bias_shift: u32,
    /// Per output row (per output channel of a convolution) `[mθ, mσ, bias]`; a residual
    /// addition has one `[m, 0, 0]`, the multiplier of its skip's rescale.
    pub params: Vec<[i32; 3]>,
    /// θ, row-major `outputs x inputs` (a convolution:
    /// `[out_channels][in_channels][kernel_h][kernel_w]`), each within the precision's range
    /// (i8 or i16).
    pub theta: Vec<i32>,
    /// σ², same layout, each within u8 or u16; `None` for a deterministic layer.
    pub sigma2: Option<Vec<u32>>,
    /// Storage of a linear layer (`Smallest` picks between dense and sparse rows).
    pub storage: StorageChoice,
    /// MC dropout (linear layers, format version 8): the drop threshold
    /// ([`crate::format::drop_threshold`]) of a Bernoulli posterior, whose rows then hold
    /// `[mθ·q, mθ, bias]` (the mean network's multiplier first, the samples' second);
    /// `None` otherwise.
    pub drop_threshold: Option<u32>,
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
    /// The f32 model's per-input-channel normalisation, kept for reference as
    /// [`crate::writer::ModelSpec::channel_norm`] is stored (the quantizer folds the scales
    /// into the first layer, which reads raw bytes). Given, it replaces `input_scale` and
    /// `input_offset`.
    pub channel_norm: Option<Vec<crate::format::ChannelNorm>>,
    /// `Some(step)`: the first layer reads signed 8-bit codes `q`, raw value `q * step`
    /// (format version 10, [`crate::format::FLAG_SIGNED_INPUT`]; needs `channel_norm`, with
    /// zero offsets, which the quantizer folds with the step). `None`: unsigned bytes.
    pub input_step: Option<f32>,
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
        match (self.drop_threshold, &self.sigma2) {
            (Some(_), _) => Posterior::Bernoulli,
            (None, Some(_)) => Posterior::Gaussian,
            (None, None) => Posterior::Deterministic,
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
        let norm = match (self.input_step, self.channel_norm.as_deref()) {
            (Some(_), Some(table)) => InputNorm::table(table, self.input_shape[0])?,
            (Some(_), None) => return Err(WriteError::Invalid(ModelError::BadSignedInput)),
            (None, table) => InputNorm::resolve(
                self.input_scale,
                self.input_offset,
                table,
                self.input_shape[0],
            )?,
        };
        // Where the payloads start: after the layer table and the normalisation table.
        let table_end = HEADER_LEN + self.layers.len() * LAYER_RECORD_LEN + norm.table_len();
        let mut payloads = Vec::new();
        let mut records = Vec::new();
        let mut version = if self.trained.is_some() {
            format::TRAINED_SIZE_FORMAT_VERSION
        } else {
            format::FIXED_FORMAT_VERSION
        };
        let mut shape = self.input_shape;
        for (index, l) in self.layers.iter().enumerate() {
            let bad = WriteError::BadParameterLength { layer: index };
            self.check_ranges(l)?;
            if l.bias_shift > 0 {
                version = version.max(format::FIXED_EXIT_FORMAT_VERSION);
            }
            let start = payloads.len();
            let mut rec = [0u8; LAYER_RECORD_LEN];
            let nnz = match l.op {
                LayerOp::Linear => {
                    let n = l.inputs * l.outputs;
                    let shapes_ok = l.params.len() == l.outputs
                        && l.theta.len() == n
                        && l.sigma2.as_ref().is_none_or(|s| s.len() == n);
                    if !shapes_ok {
                        return Err(bad);
                    }
                    shape = [l.outputs, 1, 1];
                    self.write_linear(l, &mut rec, &mut payloads)?
                }
                LayerOp::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                } => {
                    version = version.max(format::FIXED_CONV_FORMAT_VERSION);
                    let h =
                        window_output(shape[1], kernel[0], stride, padding).ok_or(bad.clone())?;
                    let w =
                        window_output(shape[2], kernel[1], stride, padding).ok_or(bad.clone())?;
                    let n = out_channels * shape[0] * kernel[0] * kernel[1];
                    let shapes_ok = l.params.len() == out_channels
                        && l.theta.len() == n
                        && l.sigma2.as_ref().is_none_or(|s| s.len() == n);
                    if !shapes_ok {
                        return Err(bad);
                    }
                    write_conv_record(&mut rec, l.op)?;
                    rec[record::KIND] = LayerKind::QuantConv2d as u8;
                    rec[record::QUANT_CONV_SHIFT] = to_u8(l.shift as usize, "shift")?;
                    rec[record::QUANT_CONV_BIAS_SHIFT] =
                        to_u8(l.bias_shift as usize, "bias shift")?;
                    let nnz = self.write_conv(l, shape[0], kernel, &mut payloads)?;
                    shape = [out_channels, h, w];
                    nnz
                }
                LayerOp::MaxPool { window, stride } => {
                    version = version.max(format::FIXED_CONV_FORMAT_VERSION);
                    let h = window_output(shape[1], window[0], stride, 0).ok_or(bad.clone())?;
                    let w = window_output(shape[2], window[1], stride, 0).ok_or(bad.clone())?;
                    if !l.params.is_empty() || !l.theta.is_empty() || l.sigma2.is_some() {
                        return Err(bad);
                    }
                    rec[record::KIND] = LayerKind::MaxPool as u8;
                    crate::writer::write_pool_record(&mut rec, window, stride, &mut version)?;
                    shape = [shape[0], h, w];
                    0
                }
                LayerOp::GlobalAvgPool => {
                    version = version.max(format::GAP_FORMAT_VERSION);
                    let weightless =
                        l.params.is_empty() && l.theta.is_empty() && l.sigma2.is_none();
                    if !weightless || l.inputs != shape.iter().product::<usize>() {
                        return Err(bad);
                    }
                    rec[record::KIND] = LayerKind::GlobalAvgPool as u8;
                    shape = [shape[0], 1, 1];
                    0
                }
                LayerOp::ResidualAdd { source } => {
                    version = version.max(format::FIXED_EXIT_FORMAT_VERSION);
                    let [[multiplier, 0, 0]] = l.params[..] else {
                        return Err(bad);
                    };
                    if !l.theta.is_empty() || l.sigma2.is_some() {
                        return Err(bad);
                    }
                    rec[record::KIND] = LayerKind::ResidualAdd as u8;
                    let source = u16::try_from(source)
                        .map_err(|_| WriteError::TooLarge("a residual source"))?;
                    rec[record::RESIDUAL_SOURCE..record::RESIDUAL_SOURCE + 2]
                        .copy_from_slice(&source.to_le_bytes());
                    rec[record::QUANT_RESIDUAL_SHIFT] = to_u8(l.shift as usize, "shift")?;
                    rec[record::QUANT_RESIDUAL_MULTIPLIER..record::QUANT_RESIDUAL_MULTIPLIER + 4]
                        .copy_from_slice(&multiplier.to_le_bytes());
                    0
                }
                LayerOp::ExitHead { prior } => {
                    version = version.max(format::FIXED_EXIT_FORMAT_VERSION);
                    let n = l.inputs * l.outputs;
                    let shapes_ok = l.params.len() == l.outputs
                        && l.theta.len() == n
                        && l.sigma2.as_ref().is_none_or(|s| s.len() == n)
                        && l.storage == StorageChoice::Dense
                        && l.inputs == shape[0];
                    if !shapes_ok {
                        return Err(bad);
                    }
                    let nnz = self.write_linear(l, &mut rec, &mut payloads)?;
                    rec[record::KIND] = LayerKind::ExitHead as u8;
                    // Q16, rounded: the reader checks 1..=65536 and the sum over exits.
                    let q = libm::round(prior as f64 * 65536.0).clamp(0.0, 65536.0) as u32;
                    rec[record::QUANT_EXIT_PRIOR..record::QUANT_EXIT_PRIOR + 4]
                        .copy_from_slice(&q.to_le_bytes());
                    nnz
                }
            };
            if let Some(threshold) = l.drop_threshold {
                // The reader accepts dropout on linear layers only (`BadDropout`).
                version = version.max(format::DROPOUT_FORMAT_VERSION);
                if l.sigma2.is_some() {
                    return Err(bad);
                }
                rec[record::QUANT_DROP_THRESHOLD..record::QUANT_DROP_THRESHOLD + 4]
                    .copy_from_slice(&threshold.to_le_bytes());
            }
            rec[record::POSTERIOR] = l.posterior() as u8;
            rec[record::ACTIVATION] = l.activation as u8;
            let len = payloads.len() - start;
            write_sizes(&mut rec, l.inputs, l.outputs, nnz, table_end + start, len)?;
            records.extend_from_slice(&rec);
        }
        let file_len = table_end + payloads.len() + TRAILER_LEN;
        let mut out = header_bytes(&Header {
            version,
            precision: self.precision,
            trained: self.trained,
            layer_count: self.layers.len(),
            num_classes: self.num_classes,
            input_shape: self.input_shape,
            norm,
            file_len,
            input_step: self.input_step,
        })?;
        out.extend_from_slice(&records);
        norm.write_table(&mut out);
        out.extend_from_slice(&payloads);
        let crc = format::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let buffer = ModelBuffer::from_bytes(&out);
        QModel::from_bytes(buffer.as_bytes())?;
        Ok(buffer)
    }
}

impl QModelSpec {
    /// θ and σ² within the precision's ranges.
    fn check_ranges(&self, l: &QLayerSpec) -> Result<(), WriteError> {
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
        Ok(())
    }

    /// Appends the row parameters `[mθ, mσ, bias]`.
    fn write_params(l: &QLayerSpec, payloads: &mut Vec<u8>) {
        for p in &l.params {
            for v in p {
                payloads.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// Appends one record per weight of `order` (index `index_of(k)` on `index_bytes`
    /// bytes, θ aligned to its width, σ²), then padding to 4 bytes.
    fn write_records(
        &self,
        l: &QLayerSpec,
        order: &[usize],
        index_bytes: usize,
        index_of: impl Fn(usize) -> usize,
        payloads: &mut Vec<u8>,
    ) {
        let width = self.precision.value_bytes();
        let (record_len, theta_at, sigma_at) =
            quant_record_layout(self.precision, index_bytes, l.posterior());
        let records_start = payloads.len();
        for &k in order {
            let mut record = [0u8; 8];
            record[..index_bytes]
                .copy_from_slice(&(index_of(k) as u64).to_le_bytes()[..index_bytes]);
            record[theta_at..theta_at + width]
                .copy_from_slice(&(l.theta[k] as u32).to_le_bytes()[..width]);
            if let Some(s2) = &l.sigma2 {
                record[sigma_at..sigma_at + width].copy_from_slice(&s2[k].to_le_bytes()[..width]);
            }
            payloads.extend_from_slice(&record[..record_len]);
        }
        let padded = (payloads.len() - records_start).next_multiple_of(4);
        payloads.resize(records_start + padded, 0);
    }

    /// Appends a linear layer's payload and fills its record's kind, shift and index width;
    /// returns the weights stored.
    fn write_linear(
        &self,
        l: &QLayerSpec,
        rec: &mut [u8; LAYER_RECORD_LEN],
        payloads: &mut Vec<u8>,
    ) -> Result<usize, WriteError> {
        let n = l.inputs * l.outputs;
        let storage = l.resolved_storage(self.precision);
        let index_bytes = l.index_bytes(storage);
        let start = payloads.len();
        Self::write_params(l, payloads);
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
        if storage != Storage::Dense {
            let lines = if by_rows { l.outputs } else { l.inputs };
            let line_of = |k: usize| if by_rows { k / l.inputs } else { k % l.inputs };
            let mut counts = alloc::vec![0usize; lines];
            for &k in &order {
                counts[line_of(k)] += 1;
            }
            push_ints(payloads, counts.into_iter(), index_bytes);
        }
        let other = |k: usize| if by_rows { k % l.inputs } else { k / l.inputs };
        self.write_records(l, &order, index_bytes, other, payloads);
        let nnz = order.len();
        debug_assert_eq!(
            Some(payloads.len() - start),
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
        rec[record::KIND] = match storage {
            Storage::Dense => LayerKind::QuantDenseLinear,
            Storage::Sparse => LayerKind::QuantSparseLinear,
            Storage::SparseByInput => LayerKind::QuantSparseLinearByInput,
        } as u8;
        rec[record::QUANT_SHIFT] = to_u8(l.shift as usize, "shift")?;
        rec[record::QUANT_INDEX_BYTES] = index_bytes as u8;
        rec[record::QUANT_BIAS_SHIFT] = to_u8(l.bias_shift as usize, "bias shift")?;
        Ok(nnz)
    }

    /// Appends a convolution's payload (parameters, per-channel tap counts, packed taps,
    /// records); returns the taps stored.
    fn write_conv(
        &self,
        l: &QLayerSpec,
        in_channels: usize,
        kernel: [usize; 2],
        payloads: &mut Vec<u8>,
    ) -> Result<usize, WriteError> {
        let start = payloads.len();
        Self::write_params(l, payloads);
        let per_channel = in_channels * kernel[0] * kernel[1];
        let order: Vec<usize> = (0..l.theta.len()).filter(|&k| l.stored(k)).collect();
        let mut counts = alloc::vec![0usize; l.params.len()];
        for &k in &order {
            counts[k / per_channel] += 1;
        }
        if counts.iter().any(|&c| c > u16::MAX as usize) {
            return Err(WriteError::TooLarge("taps of one output channel"));
        }
        push_ints(payloads, counts.into_iter(), 2);
        let area = kernel[0] * kernel[1];
        for &k in &order {
            let local = k % per_channel;
            let tap = pack_tap(local / area, local % area / kernel[1], local % kernel[1]);
            payloads.extend_from_slice(&tap.to_le_bytes());
        }
        self.write_records(l, &order, 0, |_| 0, payloads);
        debug_assert_eq!(
            Some(payloads.len() - start),
            quant_conv_payload_len(l.posterior(), self.precision, l.params.len(), order.len())
        );
        Ok(order.len())
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
