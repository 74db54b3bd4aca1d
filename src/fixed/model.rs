//! The fixed-point model reader: [`QModel::from_bytes`] validates a q8 or q16 flash table
//! (format version 3; convolutions and pooling 6; residual additions and exit heads 7)
//! once, without a single floating-point operation, so that the integer-only engine needs no
//! further checks.

use super::UQ16;
use crate::error::ModelError;
use crate::format::{
    quant_conv_payload_len, quant_payload_len, quant_record_layout, record, unpack_tap, Activation,
    LayerKind, Posterior, Precision, Storage, ALIGNMENT, HEADER_LEN, LAYER_RECORD_LEN, MAX_LAYERS,
};
use crate::model::{
    cast, conv_geometry, is_zero, pool_geometry, rec_payload_len, u16_at, u32_at, Envelope,
    Operation, Validate,
};

/// Largest q8 activation-square term: `255^2 >> 1` (see [`QModel`]).
pub(crate) const Q8_MAX_SQUARE: i64 = (255 * 255) >> 1;

/// Per line (output row, or input column for by-input storage) the number of weight records
/// of a sparse fixed-point layer.
#[derive(Clone, Copy, Debug)]
pub enum QCounts<'a> {
    /// Dense storage: every row has `inputs` records, without indices.
    Dense,
    /// One-byte counts and indices (the indexed dimension is at most 255).
    U8(&'a [u8]),
    /// Two-byte counts and indices.
    U16(&'a [u16]),
}

/// One validated fixed-point layer: linear, convolution (version 6), max pooling
/// (version 6), residual addition or exit head (version 7).
///
/// Per output row `j` (per output channel of a convolution) three i32 parameters `[mθ_j, mσ_j, b_j]` turn the integer sums into the
/// next activation: with `A = Σ a_i θ_i`, `V = Σ sq(a_i) σ²_i` (see [`QModel`]),
/// `z = A mθ_j + (b_j << B) + ((sqrt_q4(V) ε) mσ_j >> 12)` (`ε` a Q8 standard normal draw,
/// `B` the [`QLayer::bias_shift`]) and the
/// output is
/// `(z + 2^(S-1)) >> S`, clamped by the activation.
#[derive(Clone, Copy, Debug)]
pub struct QLayer<'a> {
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    pub(crate) activation: Activation,
    pub(crate) posterior: Posterior,
    pub(crate) storage: Storage,
    pub(crate) shift: u32,
    pub(crate) precision: Precision,
    pub(crate) operation: Operation,
    pub(crate) params: &'a [i32],
    pub(crate) counts: QCounts<'a>,
    /// Packed taps ([`crate::format::pack_tap`]) of a convolution, in record order.
    pub(crate) taps: &'a [u32],
    pub(crate) records: &'a [u8],
    pub(crate) record_len: usize,
    /// A later residual addition reads this layer's output.
    pub(crate) residual_source: bool,
    /// A residual addition's skip multiplier `m` (its shift is `shift`); 0 otherwise.
    pub(crate) skip_multiplier: i32,
    /// An exit head's prior probability of stopping there; 0 otherwise.
    pub(crate) exit_prior: UQ16,
    /// A weight layer's bias shift `B`: the bias enters the sums as `b << B` (version 7;
    /// 0 before).
    pub(crate) bias_shift: u32,
    /// A Bernoulli (MC dropout) layer's drop threshold ([`crate::format::drop_threshold`]);
    /// 0 (nothing dropped) for other layers.
    pub(crate) drop_threshold: u32,
}

impl<'a> QLayer<'a> {
    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Number of output units.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// What the layer computes.
    pub fn operation(&self) -> Operation {
        self.operation
    }
    /// The packed taps of a convolution ([`crate::format::unpack_tap`]), in record order;
    /// empty for other layers.
    pub fn taps(&self) -> &'a [u32] {
        self.taps
    }
    /// The non-linearity (ReLU on hidden layers, identity on the logits).
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// The posterior over the weights.
    pub fn posterior(&self) -> Posterior {
        self.posterior
    }
    /// How the weights are stored.
    pub fn storage(&self) -> Storage {
        self.storage
    }
    /// Whether a later residual addition reads this layer's output.
    pub fn is_residual_source(&self) -> bool {
        self.residual_source
    }
    /// A residual addition's rescale of its skip input `(m, S)`: the term added is
    /// `(a m + 2^(S-1)) >> S` for a skip activation `a`; `None` for other layers.
    pub fn skip_rescale(&self) -> Option<(i32, u32)> {
        matches!(self.operation, Operation::ResidualAdd { .. })
            .then_some((self.skip_multiplier, self.shift))
    }
    /// An exit head's prior probability `p(z)` of stopping there; `None` for other layers.
    pub fn exit_prior(&self) -> Option<UQ16> {
        matches!(self.operation, Operation::ExitHead { .. }).then_some(self.exit_prior)
    }
    /// The layer's kind as stored in the file.
    pub fn kind(&self) -> LayerKind {
        match self.operation {
            Operation::Conv2d(_) => return LayerKind::QuantConv2d,
            Operation::MaxPool(_) => return LayerKind::MaxPool,
            Operation::GlobalAvgPool { .. } => return LayerKind::GlobalAvgPool,
            Operation::ResidualAdd { .. } => return LayerKind::ResidualAdd,
            Operation::ExitHead { .. } => return LayerKind::ExitHead,
            _ => {}
        }
        match self.storage {
            Storage::Dense => LayerKind::QuantDenseLinear,
            Storage::Sparse => LayerKind::QuantSparseLinear,
            Storage::SparseByInput => LayerKind::QuantSparseLinearByInput,
        }
    }
    /// A Bernoulli (MC dropout) layer's drop threshold: a sample keeps an input when its
    /// uniform `u32` draw is at or above it ([`crate::format::drop_threshold`]); `None` for
    /// other posteriors. The row parameters of such a layer are `[mθ·q, mθ, b]`: the first
    /// (the second scaled by the keep probability) runs the mean network, the second the
    /// samples.
    pub fn drop_threshold(&self) -> Option<u32> {
        (self.posterior == Posterior::Bernoulli).then_some(self.drop_threshold)
    }
    /// Output shift `S` of the row multipliers.
    pub fn shift(&self) -> u32 {
        self.shift
    }
    /// Bias shift `B`: the row bias `b` enters the sums as `b << B` (0 before version 7).
    pub fn bias_shift(&self) -> u32 {
        self.bias_shift
    }
    /// Per row `[mθ, mσ, bias]`, `3 * outputs` values.
    pub fn row_params(&self) -> &'a [i32] {
        self.params
    }
    /// The weight counts per line.
    pub fn counts(&self) -> QCounts<'a> {
        self.counts
    }
    /// The weight records, `nnz * record_len` bytes ([`crate::format::quant_record_layout`]).
    pub fn records(&self) -> &'a [u8] {
        self.records
    }
    /// Bytes per weight record.
    pub fn record_len(&self) -> usize {
        self.record_len
    }
    /// Number of stored weights.
    pub fn nnz(&self) -> usize {
        self.records.len() / self.record_len
    }
    /// Multiply-accumulates of one mean-weights pass.
    pub fn macs(&self) -> usize {
        match self.operation {
            Operation::Conv2d(g) => self.nnz() * g.output[1] * g.output[2],
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => 0,
            _ => self.nnz(),
        }
    }
    /// Weights of the unpruned layer: `inputs * outputs` (linear), `out_channels *
    /// in_channels * kernel area` (convolution), 0 (pooling).
    pub fn dense_weights(&self) -> usize {
        match self.operation {
            Operation::Conv2d(g) => g.output[0] * g.input[0] * g.window[0] * g.window[1],
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => 0,
            _ => self.inputs * self.outputs,
        }
    }
    /// Bytes of the layer's payload in the file.
    pub fn payload_bytes(&self) -> usize {
        match self.operation {
            Operation::Conv2d(g) => {
                return quant_conv_payload_len(
                    self.posterior,
                    self.precision,
                    g.output[0],
                    self.nnz(),
                )
                .unwrap_or(0)
            }
            Operation::MaxPool(_)
            | Operation::GlobalAvgPool { .. }
            | Operation::ResidualAdd { .. } => return 0,
            _ => {}
        }
        quant_payload_len(
            self.storage,
            self.posterior,
            self.precision,
            self.inputs,
            self.outputs,
            self.nnz(),
            self.index_bytes(),
        )
        .unwrap_or(0)
    }
    /// Bytes per sparse count and index (0 when dense).
    pub fn index_bytes(&self) -> usize {
        match self.counts {
            QCounts::Dense => 0,
            QCounts::U8(_) => 1,
            QCounts::U16(_) => 2,
        }
    }
}

/// A validated fixed-point model (q8 or q16), borrowing its bytes.
///
/// Activations are unsigned integers after ReLU (at most 255 for q8, 32767 for q16); the
/// first layer reads raw 8-bit inputs (pixels) directly, their scale folded into its row
/// multipliers. The variance sums use `sq(a) = a^2 >> 1` for q8 (so that an activation and its
/// square share one 32-bit word) and `sq(a) = a^2` for q16. Accumulators: int32 mean and
/// variance for q8 (the reader checks that `max σ² * 32512 * inputs < 2^31`), int64 / uint64
/// for q16 (which cannot overflow for any layer the format allows). The logits are Q16.
#[derive(Clone, Debug)]
pub struct QModel<'a> {
    bytes: &'a [u8],
    precision: Precision,
    input_shape: [usize; 3],
    num_classes: usize,
    /// The header's input normalisation `[scale, offset]`, for reference.
    input_norm: [f32; 2],
    /// Version 9: `[scale, offset]` per input channel, for reference; empty without a table.
    channel_norm: &'a [[f32; 2]],
    /// Version 10: the step of a file that reads signed 8-bit codes.
    input_step: Option<f32>,
    trained: Option<crate::format::TrainedSize>,
    layers: heapless::Vec<QLayer<'a>, MAX_LAYERS>,
}

impl<'a> Validate<'a> for QModel<'a> {
    /// The checks of the file as a whole (envelope, precision).
    fn envelope(bytes: &'a [u8]) -> Result<Envelope, ModelError> {
        let envelope = Envelope::parse(bytes)?;
        if envelope.precision == Precision::F32 {
            return Err(ModelError::WrongPrecision {
                found: Precision::F32,
                expected: Precision::Q8,
            });
        }
        Ok(envelope)
    }

    /// The model of a checked envelope before its layers are read.
    fn without_layers(bytes: &'a [u8], envelope: &Envelope) -> Self {
        QModel {
            bytes,
            precision: envelope.precision,
            input_shape: envelope.input_shape,
            num_classes: envelope.classes as usize,
            // Reading the bits is no float operation.
            input_norm: [
                crate::model::f32_at(bytes, crate::format::header::INPUT_SCALE),
                crate::model::f32_at(bytes, crate::format::header::INPUT_OFFSET),
            ],
            // Checked by the envelope.
            channel_norm: crate::model::channel_norm_pairs(bytes, envelope).unwrap_or(&[]),
            input_step: envelope.input_step,
            trained: None,
            layers: heapless::Vec::new(),
        }
    }

    /// Reads and validates every layer into `self.layers`, in place.
    fn read_layers(&mut self, envelope: &Envelope) -> Result<(), ModelError> {
        let bytes = self.bytes;
        let precision = self.precision;
        let count = envelope.layer_count as usize;
        let layers = &mut self.layers;
        // The shape of every layer's output map (an exit head passes its input through).
        let mut shapes: heapless::Vec<[usize; 3], MAX_LAYERS> = heapless::Vec::new();
        let mut shape = envelope.input_shape;
        let mut cursor = envelope.payload_start;
        let mut last_residual = None;
        let kind_at = |index: usize| bytes[HEADER_LEN + index * LAYER_RECORD_LEN + record::KIND];
        for index in 0..count {
            let at = HEADER_LEN + index * LAYER_RECORD_LEN;
            let rec = &bytes[at..at + LAYER_RECORD_LEN];
            let cx = QContext {
                index,
                last: index + 1 == count,
                next_is_residual: index + 1 < count
                    && kind_at(index + 1) == LayerKind::ResidualAdd as u8,
                version: envelope.version,
                precision,
                shape,
                classes: envelope.classes as usize,
                payload_start: cursor,
                body_end: envelope.body_end,
                earlier: layers,
                earlier_shapes: &shapes,
                last_residual,
            };
            let layer = parse_qlayer(bytes, rec, &cx)?;
            shape = match layer.operation {
                Operation::Conv2d(g) | Operation::MaxPool(g) => g.output,
                Operation::GlobalAvgPool { map } => [map[0], 1, 1],
                Operation::ResidualAdd { .. } | Operation::ExitHead { .. } => shape,
                Operation::Linear => [layer.outputs, 1, 1],
            };
            if let Operation::ResidualAdd { source } = layer.operation {
                last_residual = Some(index);
                if let Some(src) = layers.get_mut(source) {
                    src.residual_source = true;
                }
            }
            cursor += rec_payload_len(rec);
            // Capacity is MAX_LAYERS and the envelope bounds the count by it.
            let pushed = layers.push(layer).is_ok() && shapes.push(shape).is_ok();
            if !pushed {
                return Err(ModelError::BadLayerCount {
                    count: envelope.layer_count,
                });
            }
        }
        if cursor != envelope.body_end {
            return Err(ModelError::PayloadOutOfBounds { layer: count - 1 });
        }
        // Signed codes feed the weight layers' signed multiplies only: a pooling layer compares
        // activation words, which order like their values for non-negative values alone.
        let first_weighted = matches!(
            layers.first().map(|l| l.operation),
            Some(Operation::Linear | Operation::Conv2d(_))
        );
        if self.input_step.is_some() && !first_weighted {
            return Err(ModelError::BadSignedInput);
        }
        check_exits(layers, shape, envelope.classes as usize)?;
        self.trained = envelope.trained_covering(layers.iter().map(|l| l.nnz()).sum())?;
        Ok(())
    }
}

impl<'a> QModel<'a> {
    /// Parses and validates a fixed-point model in place (the slice must be 4-byte aligned).
    /// An f32 model gives [`ModelError::WrongPrecision`].
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, ModelError> {
        Self::validate(bytes)
    }

    /// [`QModel::from_bytes`] into `slot`, building the layer table where it stays (see
    /// [`crate::Model::from_bytes_into`]: no second copy of the model on the stack). On error
    /// the slot holds no model.
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
    /// The size of the network as trained, before pruning (format version 5; `None` for
    /// older files or when the writer did not know it).
    pub fn trained_size(&self) -> Option<crate::format::TrainedSize> {
        self.trained
    }
    /// q8 or q16.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Input shape as (channels, height, width).
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }
    /// Number of raw 8-bit input values.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }
    /// What the first layer reads: unsigned bytes, or signed codes with their step (format
    /// version 10). Reading it needs no float operation.
    pub fn input_coding(&self) -> crate::format::InputCoding {
        match self.input_step {
            Some(step) => crate::format::InputCoding::Signed { step },
            None => crate::format::InputCoding::Unsigned,
        }
    }
    /// Number of classes predicted.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// Whether the file stores a per-channel input normalisation table (format version 9).
    pub fn has_channel_norm(&self) -> bool {
        !self.channel_norm.is_empty()
    }
    /// The f32 model's normalisation of input channel `channel`, kept for reference (the
    /// integer first layer has it folded into its weights and reads raw bytes): its pair from
    /// the per-channel table, or the header's pair when the file has none (or `channel` is
    /// out of range). Reading it needs no float operation.
    pub fn channel_norm(&self, channel: usize) -> crate::format::ChannelNorm {
        crate::model::norm_of(self.input_norm, self.channel_norm, channel)
    }
    /// [`QModel::channel_norm`] of every input channel, in channel order.
    pub fn channel_norms(&self) -> impl ExactSizeIterator<Item = crate::format::ChannelNorm> + '_ {
        (0..self.input_shape[0]).map(|c| self.channel_norm(c))
    }
    /// The validated layers, input first.
    pub fn layers(&self) -> &[QLayer<'a>] {
        &self.layers
    }
    /// Widest layer output, in units.
    pub fn max_width(&self) -> usize {
        self.layers.iter().map(|l| l.outputs).max().unwrap_or(0)
    }
    /// Number of exit heads (0 for a plain network).
    pub fn exit_count(&self) -> usize {
        self.exit_priors().count()
    }
    /// The prior probability of each exit, in order (empty for a plain network).
    pub fn exit_priors(&self) -> impl Iterator<Item = UQ16> + '_ {
        self.layers.iter().filter_map(QLayer::exit_prior)
    }
    /// Parameters of the stored layers with every weight present: weights and biases (one
    /// per output row, per output channel of a convolution).
    pub fn dense_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.dense_weights() + l.params.len() / 3)
            .sum()
    }
    /// Stored weights across layers.
    pub fn nnz(&self) -> usize {
        self.layers.iter().map(QLayer::nnz).sum()
    }
    /// Multiply-accumulates of one mean-weights pass.
    pub fn macs(&self) -> usize {
        self.layers.iter().map(QLayer::macs).sum()
    }
}

struct QContext<'l, 'a> {
    index: usize,
    last: bool,
    /// The next layer is a residual addition (this one then gives its raw, signed sums).
    next_is_residual: bool,
    version: u16,
    precision: Precision,
    /// The shape of the map this layer reads (channels, height, width).
    shape: [usize; 3],
    classes: usize,
    payload_start: usize,
    body_end: usize,
    /// The layers before this one, and the shape of each one's output.
    earlier: &'l [QLayer<'a>],
    earlier_shapes: &'l [[usize; 3]],
    /// The last residual addition before this layer.
    last_residual: Option<usize>,
}

/// After every layer: a network with exit heads ends with one and its priors form a
/// distribution over depth (within 66 units of 2^-16); one without ends with the logits and has no
/// residual addition.
fn check_exits(layers: &[QLayer<'_>], shape: [usize; 3], classes: usize) -> Result<(), ModelError> {
    let last = layers.len().saturating_sub(1);
    let has_exits = layers
        .iter()
        .any(|l| matches!(l.operation, Operation::ExitHead { .. }));
    let has_residuals = layers
        .iter()
        .any(|l| matches!(l.operation, Operation::ResidualAdd { .. }));
    if !has_exits {
        if has_residuals {
            return Err(ModelError::BadEarlyExit { layer: last });
        }
        if shape.iter().product::<usize>() != classes {
            return Err(ModelError::BadOutputLayer);
        }
        return Ok(());
    }
    if !matches!(
        layers.last().map(|l| l.operation),
        Some(Operation::ExitHead { .. })
    ) {
        return Err(ModelError::BadOutputLayer);
    }
    let priors: heapless::Vec<UQ16, MAX_LAYERS> =
        layers.iter().filter_map(QLayer::exit_prior).collect();
    if !<UQ16 as crate::early_exit::HaltValue>::sums_to_one(&priors) {
        return Err(ModelError::BadEarlyExit { layer: last });
    }
    Ok(())
}

/// Parses one layer record of a fixed-point file: a quantized linear layer or convolution,
/// a max-pooling layer (version 6), a residual addition or an exit head (version 7), a global
/// average pooling layer (version 10).
fn parse_qlayer<'a>(
    bytes: &'a [u8],
    rec: &[u8],
    cx: &QContext<'_, 'a>,
) -> Result<QLayer<'a>, ModelError> {
    let layer = cx.index;
    let code = |field: usize| ModelError::UnknownCode {
        layer,
        field,
        code: rec[field],
    };
    let kind =
        LayerKind::from_code(rec[record::KIND], cx.version).ok_or_else(|| code(record::KIND))?;
    let posterior = Posterior::from_code(rec[record::POSTERIOR])
        .filter(|&p| {
            p != Posterior::Bernoulli || cx.version >= crate::format::DROPOUT_FORMAT_VERSION
        })
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
    if inputs == 0
        || outputs == 0
        || inputs > crate::format::MAX_UNITS
        || outputs > crate::format::MAX_UNITS
    {
        return Err(ModelError::BadLayerSize { layer });
    }
    // An exit head reads the channels of its globally pooled map.
    let expected_inputs = if kind == LayerKind::ExitHead {
        cx.shape[0]
    } else {
        cx.shape.iter().product::<usize>()
    };
    if inputs != expected_inputs {
        return Err(ModelError::ShapeMismatch {
            layer,
            expected: expected_inputs,
            found: inputs,
        });
    }
    // Every weight layer but the last is ReLU (activations are unsigned), the last gives
    // the logits, and one before a residual addition gives its signed sums to it (the
    // addition applies the ReLU); pooling keeps the scale and has no activation of its own.
    let exits_allowed = cx.version >= crate::format::FIXED_EXIT_FORMAT_VERSION;
    let wanted_activation = if cx.last || (cx.next_is_residual && exits_allowed) {
        Activation::Identity
    } else {
        Activation::Relu
    };
    let head = Head {
        layer,
        inputs,
        outputs,
        posterior,
        activation,
    };
    let linear = matches!(
        kind,
        LayerKind::QuantDenseLinear
            | LayerKind::QuantSparseLinear
            | LayerKind::QuantSparseLinearByInput
    );
    if posterior == Posterior::Bernoulli && !linear {
        return Err(ModelError::BadDropout { layer });
    }
    // The integer kernels sample rows: a Bernoulli layer is not stored by input.
    if posterior == Posterior::Bernoulli && kind == LayerKind::QuantSparseLinearByInput {
        return Err(ModelError::QuantLayout { layer });
    }
    match kind {
        LayerKind::QuantDenseLinear
        | LayerKind::QuantSparseLinear
        | LayerKind::QuantSparseLinearByInput => {
            let bias_shift = if exits_allowed {
                if posterior == Posterior::Bernoulli {
                    reserved(record::QUANT_DROPOUT_RESERVED)?;
                } else {
                    reserved(record::QUANT_RESERVED_V7)?;
                }
                check_bias_shift(rec[record::QUANT_BIAS_SHIFT], layer)?
            } else {
                reserved(record::QUANT_RESERVED)?;
                0
            };
            if activation != wanted_activation {
                return Err(ModelError::QuantLayout { layer });
            }
            let linear = parse_linear(bytes, rec, cx, &head, kind)?;
            // Every u32 threshold is a drop probability in [0, 1): nothing more to check.
            let drop_threshold = match posterior {
                Posterior::Bernoulli => u32_at(rec, record::QUANT_DROP_THRESHOLD),
                _ => 0,
            };
            Ok(QLayer {
                bias_shift,
                drop_threshold,
                ..linear
            })
        }
        LayerKind::QuantConv2d => {
            let bias_shift = if exits_allowed {
                check_bias_shift(rec[record::QUANT_CONV_BIAS_SHIFT], layer)?
            } else {
                reserved(record::QUANT_CONV_RESERVED)?;
                0
            };
            if activation != wanted_activation {
                return Err(ModelError::QuantLayout { layer });
            }
            let conv = parse_conv(bytes, rec, cx, &head)?;
            Ok(QLayer { bias_shift, ..conv })
        }
        LayerKind::MaxPool if cx.version >= crate::format::FIXED_CONV_FORMAT_VERSION => {
            reserved(record::pool_reserved(cx.version))?;
            let geometry = pool_geometry(rec, cx.shape, posterior, activation, layer)?;
            if cx.last {
                return Err(ModelError::QuantLayout { layer });
            }
            check_outputs(&head, geometry.output)?;
            check_payload_len(rec, layer, Some(0))?;
            if u32_at(rec, record::NNZ) != 0 {
                return Err(ModelError::BadWeightCount { layer });
            }
            check_offset(rec, cx, 0)?;
            Ok(head.weightless(cx.precision, Operation::MaxPool(geometry)))
        }
        // As max pooling: the rounded integer mean of each channel keeps its input's scale.
        LayerKind::GlobalAvgPool => {
            reserved(record::GAP_RESERVED)?;
            crate::model::check_weightless(posterior, activation, layer)?;
            if cx.last {
                return Err(ModelError::QuantLayout { layer });
            }
            check_outputs(&head, [cx.shape[0], 1, 1])?;
            check_payload_len(rec, layer, Some(0))?;
            if u32_at(rec, record::NNZ) != 0 {
                return Err(ModelError::BadWeightCount { layer });
            }
            check_offset(rec, cx, 0)?;
            let op = Operation::GlobalAvgPool { map: cx.shape };
            Ok(head.weightless(cx.precision, op))
        }
        LayerKind::ResidualAdd if exits_allowed => parse_residual(rec, cx, &head),
        LayerKind::ExitHead if exits_allowed => {
            reserved(record::QUANT_EXIT_RESERVED)?;
            let bias_shift = check_bias_shift(rec[record::QUANT_BIAS_SHIFT], layer)?;
            let prior = u32_at(rec, record::QUANT_EXIT_PRIOR);
            let prior_ok = (1..=1 << 16).contains(&prior);
            if !prior_ok || outputs != cx.classes || activation != Activation::Identity {
                return Err(ModelError::BadEarlyExit { layer });
            }
            let linear = parse_linear(bytes, rec, cx, &head, LayerKind::QuantDenseLinear)?;
            Ok(QLayer {
                operation: Operation::ExitHead { map: cx.shape },
                exit_prior: UQ16(prior),
                bias_shift,
                ..linear
            })
        }
        _ => Err(code(record::KIND)),
    }
}

/// A residual addition (version 7): `y = relu(cur + rescaled skip)`, where `cur` holds the
/// signed sums of the layer before (an identity convolution or linear layer) and the skip is
/// the packed output of an earlier layer of the same shape, not before the previous addition.
fn parse_residual<'a>(
    rec: &[u8],
    cx: &QContext<'_, 'a>,
    head: &Head,
) -> Result<QLayer<'a>, ModelError> {
    let layer = head.layer;
    let bad = ModelError::BadEarlyExit { layer };
    let offset = HEADER_LEN + layer * LAYER_RECORD_LEN + record::QUANT_RESIDUAL_RESERVED.start;
    if !is_zero(&rec[record::QUANT_RESIDUAL_RESERVED]) {
        return Err(ModelError::ReservedNotZero { offset });
    }
    let source = u16_at(rec, record::RESIDUAL_SOURCE) as usize;
    let shift = rec[record::QUANT_RESIDUAL_SHIFT] as u32;
    let multiplier = u32_at(rec, record::QUANT_RESIDUAL_MULTIPLIER) as i32;
    // `a m + 2^(S-1)` stays in an i32 for every activation `a`.
    let rescale_ok = (1..=30).contains(&shift)
        && multiplier > 0
        && multiplier as i64 * cx.precision.activation_max() as i64 + (1i64 << (shift - 1))
            <= i32::MAX as i64;
    if !rescale_ok {
        return Err(ModelError::QuantLayout { layer });
    }
    // The layer before gives signed sums; the source gives packed activations.
    let before_ok = layer
        .checked_sub(1)
        .and_then(|p| cx.earlier.get(p))
        .is_some_and(|p| {
            matches!(p.operation, Operation::Linear | Operation::Conv2d(_))
                && p.activation == Activation::Identity
        });
    let source_ok = cx.earlier.get(source).is_some_and(|s| match s.operation {
        Operation::Linear | Operation::Conv2d(_) => s.activation == Activation::Relu,
        Operation::MaxPool(_) | Operation::GlobalAvgPool { .. } | Operation::ResidualAdd { .. } => {
            true
        }
        Operation::ExitHead { .. } => false,
    });
    let after_previous = cx.last_residual.is_none_or(|r| source >= r);
    let same_shape = cx.earlier_shapes.get(source) == Some(&cx.shape);
    let kind_ok = head.posterior == Posterior::Deterministic
        && head.activation == Activation::Relu
        && head.outputs == head.inputs;
    if !(before_ok && source_ok && after_previous && same_shape && kind_ok) {
        return Err(bad);
    }
    check_payload_len(rec, layer, Some(0))?;
    if u32_at(rec, record::NNZ) != 0 {
        return Err(ModelError::BadWeightCount { layer });
    }
    check_offset(rec, cx, 0)?;
    Ok(QLayer {
        shift,
        skip_multiplier: multiplier,
        ..head.weightless(cx.precision, Operation::ResidualAdd { source })
    })
}

/// The fields every fixed-point layer record has.
struct Head {
    layer: usize,
    inputs: usize,
    outputs: usize,
    posterior: Posterior,
    activation: Activation,
}

impl Head {
    /// A layer without weights (pooling, residual addition) with these fields.
    fn weightless<'a>(&self, precision: Precision, operation: Operation) -> QLayer<'a> {
        QLayer {
            inputs: self.inputs,
            outputs: self.outputs,
            activation: self.activation,
            posterior: self.posterior,
            storage: Storage::Dense,
            shift: 0,
            precision,
            operation,
            params: &[],
            counts: QCounts::Dense,
            taps: &[],
            records: &[],
            record_len: 1,
            residual_source: false,
            skip_multiplier: 0,
            exit_prior: UQ16(0),
            bias_shift: 0,
            drop_threshold: 0,
        }
    }
}

/// The output count must be the size of the map the layer produces.
fn check_outputs(head: &Head, shape: [usize; 3]) -> Result<(), ModelError> {
    let expected = shape.iter().product::<usize>();
    if head.outputs != expected {
        return Err(ModelError::ShapeMismatch {
            layer: head.layer,
            expected,
            found: head.outputs,
        });
    }
    Ok(())
}

/// The payload must start where the previous one ended, aligned, and end inside the body.
fn check_offset(rec: &[u8], cx: &QContext<'_, '_>, len: usize) -> Result<usize, ModelError> {
    let offset = u32_at(rec, record::PAYLOAD_OFFSET) as usize;
    if offset != cx.payload_start
        || offset % ALIGNMENT != 0
        || offset.checked_add(len).is_none_or(|e| e > cx.body_end)
    {
        return Err(ModelError::PayloadOutOfBounds { layer: cx.index });
    }
    Ok(offset)
}

/// The bias shift of a quantized layer (version 7): 0 to 31.
fn check_bias_shift(shift: u8, layer: usize) -> Result<u32, ModelError> {
    if shift <= 31 {
        Ok(shift as u32)
    } else {
        Err(ModelError::QuantLayout { layer })
    }
}

/// The output shift of a quantized layer: 1 to 62.
fn check_shift(shift: u32, layer: usize) -> Result<u32, ModelError> {
    if (1..=62).contains(&shift) {
        Ok(shift)
    } else {
        Err(ModelError::QuantLayout { layer })
    }
}

/// The payload length the record declares must be the one its fields imply.
fn check_payload_len(
    rec: &[u8],
    layer: usize,
    expected: Option<usize>,
) -> Result<usize, ModelError> {
    let found = rec_payload_len(rec);
    if expected != Some(found) {
        return Err(ModelError::PayloadLength {
            layer,
            expected: expected.unwrap_or(0),
            found,
        });
    }
    Ok(found)
}

/// The q8 variance sum is an i32: bound it for the largest activations over `fan_in`
/// stored weights.
fn check_q8_variance(
    precision: Precision,
    posterior: Posterior,
    records: &[u8],
    record_len: usize,
    sigma_at: usize,
    fan_in: usize,
    layer: usize,
) -> Result<(), ModelError> {
    if precision == Precision::Q8 && posterior == Posterior::Gaussian {
        let max = match record_len {
            2 => max_byte_at::<2>(records, sigma_at),
            3 => max_byte_at::<3>(records, sigma_at),
            4 => max_byte_at::<4>(records, sigma_at),
            _ => records
                .chunks_exact(record_len)
                .map(|r| r[sigma_at])
                .max()
                .unwrap_or(0),
        } as i64;
        if max * Q8_MAX_SQUARE * fan_in as i64 > i32::MAX as i64 {
            return Err(ModelError::QuantRange { layer });
        }
    }
    Ok(())
}

/// A quantized linear layer (dense, sparse rows, or sparse by input on the first layer).
fn parse_linear<'a>(
    bytes: &'a [u8],
    rec: &[u8],
    cx: &QContext<'_, 'a>,
    head: &Head,
    kind: LayerKind,
) -> Result<QLayer<'a>, ModelError> {
    let Head {
        layer,
        inputs,
        outputs,
        posterior,
        activation,
    } = *head;
    let code = |field: usize| ModelError::UnknownCode {
        layer,
        field,
        code: rec[field],
    };
    let storage = match kind {
        LayerKind::QuantDenseLinear => Storage::Dense,
        LayerKind::QuantSparseLinear => Storage::Sparse,
        _ => Storage::SparseByInput,
    };
    let shift = check_shift(rec[record::QUANT_SHIFT] as u32, layer)?;
    if storage == Storage::SparseByInput && layer != 0 {
        return Err(ModelError::QuantLayout { layer });
    }
    let index_bytes = rec[record::QUANT_INDEX_BYTES] as usize;
    let indexed = match storage {
        Storage::Dense => 0,
        Storage::Sparse => inputs,
        Storage::SparseByInput => outputs,
    };
    let index_ok = match (storage, index_bytes) {
        (Storage::Dense, 0) => true,
        (Storage::Dense, _) => false,
        (_, 1) => indexed <= 255,
        (_, 2) => true,
        _ => false,
    };
    if !index_ok {
        return Err(code(record::QUANT_INDEX_BYTES));
    }
    let nnz = u32_at(rec, record::NNZ) as usize;
    let dense = inputs * outputs;
    let nnz_ok = if storage == Storage::Dense {
        nnz == dense
    } else {
        nnz <= dense
    };
    if !nnz_ok {
        return Err(ModelError::BadWeightCount { layer });
    }
    let expected = quant_payload_len(
        storage,
        posterior,
        cx.precision,
        inputs,
        outputs,
        nnz,
        index_bytes,
    );
    let found = check_payload_len(rec, layer, expected)?;
    let offset = check_offset(rec, cx, found)?;

    let mut sections = Sections {
        bytes,
        at: offset,
        layer,
    };
    let params: &[i32] = sections.take(outputs * 12)?;
    let lines = if storage == Storage::Sparse {
        outputs
    } else {
        inputs
    };
    let counts = match index_bytes {
        0 => QCounts::Dense,
        1 => QCounts::U8(sections.take(lines)?),
        _ => QCounts::U16(sections.take(lines * 2)?),
    };
    let (record_len, _, sigma_at) = quant_record_layout(cx.precision, index_bytes, posterior);
    let records: &[u8] = sections.take(nnz * record_len)?;
    // Counts sum to nnz, indices increase within a line and stay below the indexed dimension.
    let index_of = |r: &[u8]| match index_bytes {
        1 => r[0] as usize,
        _ => u16::from_le_bytes([r[0], r[1]]) as usize,
    };
    let mut lines = LineCheck::new(records, record_len, layer);
    match counts {
        QCounts::Dense => lines.start = nnz,
        QCounts::U8(c) => c
            .iter()
            .try_for_each(|&n| lines.line(n as usize, |c| c < indexed, index_of))?,
        QCounts::U16(c) => c
            .iter()
            .try_for_each(|&n| lines.line(n as usize, |c| c < indexed, index_of))?,
    }
    lines.finish(nnz)?;
    check_q8_variance(
        cx.precision,
        posterior,
        records,
        record_len,
        sigma_at,
        inputs,
        layer,
    )?;
    Ok(QLayer {
        inputs,
        outputs,
        activation,
        posterior,
        storage,
        shift,
        precision: cx.precision,
        operation: Operation::Linear,
        params,
        counts,
        taps: &[],
        records,
        record_len,
        residual_source: false,
        skip_multiplier: 0,
        exit_prior: UQ16(0),
        bias_shift: 0,
        drop_threshold: 0,
    })
}

/// A quantized convolution (version 6): per output channel its taps, in increasing order.
fn parse_conv<'a>(
    bytes: &'a [u8],
    rec: &[u8],
    cx: &QContext<'_, 'a>,
    head: &Head,
) -> Result<QLayer<'a>, ModelError> {
    let Head {
        layer,
        inputs,
        outputs,
        posterior,
        activation,
    } = *head;
    let g = conv_geometry(rec, cx.shape, layer)?;
    let (out_channels, window) = (g.output[0], g.window);
    check_outputs(head, g.output)?;
    let shift = check_shift(rec[record::QUANT_CONV_SHIFT] as u32, layer)?;
    let nnz = u32_at(rec, record::NNZ) as usize;
    if nnz > out_channels * cx.shape[0] * window[0] * window[1] {
        return Err(ModelError::BadWeightCount { layer });
    }
    let expected = quant_conv_payload_len(posterior, cx.precision, out_channels, nnz);
    let found = check_payload_len(rec, layer, expected)?;
    let offset = check_offset(rec, cx, found)?;
    let mut sections = Sections {
        bytes,
        at: offset,
        layer,
    };
    let params: &[i32] = sections.take(out_channels * 12)?;
    let counts: &[u16] = sections.take(out_channels * 2)?;
    let taps: &[u32] = sections.take(nnz * 4)?;
    let (record_len, _, sigma_at) = quant_record_layout(cx.precision, 0, posterior);
    let records: &[u8] = sections.take(nnz * record_len)?;
    // Per channel: taps strictly increasing, each inside the kernel and the input channels.
    let tap_ok = |t: u32| {
        let (c, ky, kx) = unpack_tap(t);
        c < g.input[0] && ky < g.window[0] && kx < g.window[1]
    };
    let mut lines = LineCheck::new(bytemuck::cast_slice(taps), 4, layer);
    let tap_of = |r: &[u8]| u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
    counts
        .iter()
        .try_for_each(|&n| lines.line(n as usize, |t| tap_ok(t as u32), tap_of))?;
    lines.finish(nnz)?;
    let fan_in = counts.iter().copied().max().unwrap_or(0) as usize;
    check_q8_variance(
        cx.precision,
        posterior,
        records,
        record_len,
        sigma_at,
        fan_in,
        layer,
    )?;
    Ok(QLayer {
        inputs,
        outputs,
        activation,
        posterior,
        storage: Storage::Sparse,
        shift,
        precision: cx.precision,
        operation: Operation::Conv2d(g),
        params,
        counts: QCounts::U16(counts),
        taps,
        records,
        record_len,
        residual_source: false,
        skip_multiplier: 0,
        exit_prior: UQ16(0),
        bias_shift: 0,
        drop_threshold: 0,
    })
}

/// Checks the lines of a sparse layer in order: each line's entries are valid and strictly
/// increasing, and the counts add up to the stored weights.
struct LineCheck<'r> {
    records: &'r [u8],
    record_len: usize,
    layer: usize,
    start: usize,
}

impl<'r> LineCheck<'r> {
    fn new(records: &'r [u8], record_len: usize, layer: usize) -> Self {
        Self {
            records,
            record_len,
            layer,
            start: 0,
        }
    }

    /// The next line of `count` entries: `valid(key)` for each, the keys read by `key`
    /// strictly increasing.
    fn line(
        &mut self,
        count: usize,
        valid: impl Fn(usize) -> bool,
        key: impl Fn(&[u8]) -> usize,
    ) -> Result<(), ModelError> {
        if count == 0 {
            return Ok(());
        }
        let layer = self.layer;
        let end = self.start + count;
        let line = self
            .records
            .get(self.start * self.record_len..end * self.record_len)
            .ok_or(ModelError::BadRowPointers { layer })?;
        let mut previous = None;
        for (k, r) in line.chunks_exact(self.record_len).enumerate() {
            let c = key(r);
            if !valid(c) || previous.is_some_and(|p| p >= c) {
                return Err(ModelError::BadColumnIndex {
                    layer,
                    position: self.start + k,
                });
            }
            previous = Some(c);
        }
        self.start = end;
        Ok(())
    }

    /// Every stored weight belongs to a line.
    fn finish(&self, nnz: usize) -> Result<(), ModelError> {
        if self.start == nnz {
            Ok(())
        } else {
            Err(ModelError::BadRowPointers { layer: self.layer })
        }
    }
}

/// The largest byte at offset `at` of `L`-byte records.
fn max_byte_at<const L: usize>(records: &[u8], at: usize) -> u8 {
    // `at < L` (the caller's layout), stated for the bounds check to fold away.
    let at = at.min(L - 1);
    records.chunks_exact(L).fold(0, |m, r| m.max(r[at]))
}

/// Consecutive 4-byte-aligned sections of a payload, each followed by zero padding.
struct Sections<'a> {
    bytes: &'a [u8],
    at: usize,
    layer: usize,
}

impl<'a> Sections<'a> {
    fn take<T: bytemuck::AnyBitPattern>(&mut self, len: usize) -> Result<&'a [T], ModelError> {
        let values = cast(self.bytes, self.at, len, self.layer)?;
        let padded = len.next_multiple_of(ALIGNMENT);
        let pad = self
            .bytes
            .get(self.at + len..self.at + padded)
            .ok_or(ModelError::PayloadOutOfBounds { layer: self.layer })?;
        if !is_zero(pad) {
            return Err(ModelError::ReservedNotZero {
                offset: self.at + len,
            });
        }
        self.at += padded;
        Ok(values)
    }
}
