//! The early-exit residual network (`resnet-ee`): its exportable structure, initialisation,
//! deterministic (pruned) prediction at every exit, and the crate-internal training forward and
//! backward.
//!
//! Graph (CBHW activations inside, inputs as rows of `channels*rows*cols` pixels in `[0, 1]`):
//!
//! ```text
//! h_0 = relu(stem(x))                                   VD conv k x k, stride s, padding p
//! for l in 1..=L:
//!     a_l      = relu(blocks[l].conv_a(h_{l-1}))        VD conv 3x3, stride 1, padding 1
//!     f_l      = blocks[l].conv_b(a_l)                  VD conv 3x3, stride 1, padding 1, no ReLU
//!     h_l      = relu(f_l + h_{l-1})                    identity skip (Skip::Identity)
//!     logits_l = exits[l](gap(h_l))                     global average pool, then VD linear C->K
//!     p(y | x, z = l) = softmax(logits_l)
//! ```
//!
//! Every block keeps the channel count `C` and the spatial size of the stem output, so the skip
//! needs no projection. The default stem (see [`super::TrainConfig`]) is a 4x4 convolution with
//! stride 4 and no padding, which cuts a 28x28 image into 7x7 patches of 4x4 pixels: exit 1 then
//! already sees 20x20 pixels and exit 2 the whole image, so early exits can be accurate; with a
//! 3x3 stride-2 stem (14x14 maps) the first exits see 11x11 and 19x19 pixels, train far more
//! slowly and stay weak. No normalisation layers: the device runs exactly these weights. The prior over the depth `z` is [`ResNetEe::prior`] (see
//! [`super::exits`]).
//!
//! Parameter (optimizer and checkpoint) order, also the order of "weight layers" in
//! [`ResNetEe::sparsity`], noise streams and [`ResNetEe::weight_layers`]:
//! `stem, block1.conv_a, block1.conv_b, exit1, block2.conv_a, block2.conv_b, exit2, ...`, each
//! as `theta, log_sigma2, bias`.

use ndarray::{Array1, Array2, Array4, ArrayD, ArrayView4, Axis};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::arch::glorot;
use super::conv::{self, ConvGeom, StridedConvCache};
use super::exits::DepthPrior;
use super::layers::{self, VdCache, VdGrads};
use super::loss::softmax;
use super::network::{argmax, LayerSparsity, Sparsity};
use super::tensor::{mix_seed, Real};
use super::vd::{self, log_alpha};

/// A variational-dropout convolution with its geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VdConv<T = f32> {
    /// Posterior means, `(out_ch, in_ch, kh, kw)`; cross-correlation as in [`super::conv`].
    pub theta: Array4<T>,
    /// Posterior log variances, same shape as `theta`.
    pub log_sigma2: Array4<T>,
    /// Deterministic bias, `(out_ch,)`.
    pub bias: Array1<T>,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// ReLU applied to this convolution's own output (false for `conv_b`, whose ReLU comes
    /// after the residual addition).
    pub relu: bool,
}

/// A variational-dropout fully connected layer without activation (an exit head's classifier).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VdLinear<T = f32> {
    /// Posterior means, `(outputs, inputs)`.
    pub theta: Array2<T>,
    /// Posterior log variances, same shape as `theta`.
    pub log_sigma2: Array2<T>,
    /// Deterministic bias, `(outputs,)`.
    pub bias: Array1<T>,
}

/// How a residual block's input reaches its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// `h = relu(F(x) + x)`: input and output have the same shape.
    #[default]
    Identity,
}

/// One residual block `h = relu(conv_b(relu(conv_a(x))) + x)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResBlock<T = f32> {
    /// First convolution (ReLU on its output).
    pub conv_a: VdConv<T>,
    /// Second convolution (no ReLU of its own).
    pub conv_b: VdConv<T>,
    /// The skip connection.
    pub skip: Skip,
}

/// Shape choices of a [`ResNetEe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetSpec {
    /// Input `(channels, rows, cols)`.
    pub input_shape: [usize; 3],
    /// Channels `C` of the stem and every block.
    pub channels: usize,
    /// Residual blocks `L` (= exits).
    pub blocks: usize,
    /// Kernel size of the (square) stem convolution.
    pub stem_kernel: usize,
    /// Stride of the stem convolution.
    pub stem_stride: usize,
    /// Zero padding of the stem convolution.
    pub stem_padding: usize,
    /// Classes `K` of every exit.
    pub classes: usize,
}

/// An early-exit residual network of variational-dropout layers (see the module documentation
/// for the graph and the parameter order).
///
/// Structure for export: `stem` ([`VdConv`] with stride and padding), `blocks[l]`
/// (`conv_a`, `conv_b`, `skip`), `exits[l]` (global average pool then [`VdLinear`] `C -> K`,
/// softmax), `prior` (truncated geometric, strength `prior.lambda`), and `prune_threshold`
/// (a weight is pruned when its log alpha exceeds it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResNetEe<T = f32> {
    /// Shape of one input `(channels, rows, cols)`.
    pub input_shape: [usize; 3],
    /// Weights with log alpha above this are pruned.
    pub prune_threshold: f64,
    /// Stem convolution `in_ch -> C`, with ReLU.
    pub stem: VdConv<T>,
    /// Residual blocks, input to output.
    pub blocks: Vec<ResBlock<T>>,
    /// Exit head `l` (after block `l`): global average pool, then this linear layer.
    pub exits: Vec<VdLinear<T>>,
    /// Prior over the depth used in training (an exporter may choose another strength).
    pub prior: DepthPrior,
}

/// A [`ResNetEe`] whose parts do not fit together (see [`ResNetEe::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent resnet-ee network: {0}")]
pub struct ShapeError(
    /// What does not fit.
    pub String,
);

/// A weight layer of the network, borrowed (see [`ResNetEe::weight_layers`]).
#[derive(Clone, Copy, Debug)]
pub enum WeightLayer<'a, T> {
    /// A convolution (stem or inside a block).
    Conv(&'a VdConv<T>),
    /// An exit head's linear layer.
    Linear(&'a VdLinear<T>),
}

impl<'a, T: Real> WeightLayer<'a, T> {
    /// `(theta, log_sigma2, bias)` as flat slices.
    fn slices(self) -> [&'a [T]; 3] {
        let s = "parameters are kept in standard layout";
        match self {
            Self::Conv(c) => [
                c.theta.as_slice().expect(s),
                c.log_sigma2.as_slice().expect(s),
                c.bias.as_slice().expect(s),
            ],
            Self::Linear(l) => [
                l.theta.as_slice().expect(s),
                l.log_sigma2.as_slice().expect(s),
                l.bias.as_slice().expect(s),
            ],
        }
    }

    /// Element-wise log alpha of the weights, same shape as `theta`.
    pub fn log_alpha(&self) -> ArrayD<T> {
        match self {
            Self::Conv(c) => ndarray::Zip::from(&c.theta)
                .and(&c.log_sigma2)
                .map_collect(|&t, &l| log_alpha(t, l))
                .into_dyn(),
            Self::Linear(l) => ndarray::Zip::from(&l.theta)
                .and(&l.log_sigma2)
                .map_collect(|&t, &l| log_alpha(t, l))
                .into_dyn(),
        }
    }
}

impl<T: Real> VdConv<T> {
    fn geom(&self) -> ConvGeom {
        ConvGeom {
            stride: self.stride,
            padding: self.padding,
        }
    }

    fn slices_mut(&mut self) -> [&mut [T]; 3] {
        let s = "parameters are kept in standard layout";
        [
            self.theta.as_slice_mut().expect(s),
            self.log_sigma2.as_slice_mut().expect(s),
            self.bias.as_slice_mut().expect(s),
        ]
    }

    /// Mean weights with pruned entries zeroed.
    fn pruned(&self, threshold: T) -> Array4<T> {
        pruned_mean(&self.theta, &self.log_sigma2, threshold)
    }
}

impl<T: Real> VdLinear<T> {
    fn slices_mut(&mut self) -> [&mut [T]; 3] {
        let s = "parameters are kept in standard layout";
        [
            self.theta.as_slice_mut().expect(s),
            self.log_sigma2.as_slice_mut().expect(s),
            self.bias.as_slice_mut().expect(s),
        ]
    }
}

fn pruned_mean<T: Real, D: ndarray::Dimension>(
    theta: &ndarray::Array<T, D>,
    ls2: &ndarray::Array<T, D>,
    threshold: T,
) -> ndarray::Array<T, D> {
    ndarray::Zip::from(theta).and(ls2).map_collect(|&t, &l| {
        if log_alpha(t, l) > threshold {
            T::zero()
        } else {
            t
        }
    })
}

/// Glorot-uniform VD convolution `in_ch -> out_ch`, `k x k`.
fn init_conv<T: Real>(
    rng: &mut Xoshiro256PlusPlus,
    (in_ch, out_ch, k): (usize, usize, usize),
    geom: ConvGeom,
    relu: bool,
    init_log_sigma2: f64,
) -> VdConv<T> {
    let (fan_in, fan_out) = (in_ch * k * k, out_ch * k * k);
    VdConv {
        theta: Array4::from_shape_simple_fn((out_ch, in_ch, k, k), || glorot(rng, fan_in, fan_out)),
        log_sigma2: Array4::from_elem((out_ch, in_ch, k, k), T::from_f64(init_log_sigma2)),
        bias: Array1::zeros(out_ch),
        stride: geom.stride,
        padding: geom.padding,
        relu,
    }
}

/// What the backward pass needs from one block's training forward.
#[derive(Debug)]
struct BlockTape<T> {
    conv_a: StridedConvCache<T>,
    conv_b: StridedConvCache<T>,
    /// Block output `h_l` (its positive entries are where the final ReLU passed).
    out: Array4<T>,
    exit: VdCache<T>,
}

/// The training forward's record for [`ResNetEe::backward`].
#[derive(Debug)]
pub(crate) struct ResTape<T> {
    stem: StridedConvCache<T>,
    blocks: Vec<BlockTape<T>>,
}

impl<T: Real> ResNetEe<T> {
    /// A freshly initialised network (deterministic in `seed`): Glorot-uniform means, constant
    /// `init_log_sigma2`, zero biases; the stem as `spec` says, 3x3 kernels with stride 1 and
    /// padding 1 in the blocks.
    pub fn build(
        spec: &ResNetSpec,
        seed: u64,
        init_log_sigma2: f64,
        prune_threshold: f64,
        prior: DepthPrior,
    ) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[seed, 0x2e5e]));
        let c = spec.channels;
        let stem = init_conv(
            &mut rng,
            (spec.input_shape[0], c, spec.stem_kernel),
            ConvGeom {
                stride: spec.stem_stride,
                padding: spec.stem_padding,
            },
            true,
            init_log_sigma2,
        );
        let same = ConvGeom {
            stride: 1,
            padding: 1,
        };
        let mut blocks = Vec::with_capacity(spec.blocks);
        let mut exits = Vec::with_capacity(spec.blocks);
        for _ in 0..spec.blocks {
            blocks.push(ResBlock {
                conv_a: init_conv(&mut rng, (c, c, 3), same, true, init_log_sigma2),
                conv_b: init_conv(&mut rng, (c, c, 3), same, false, init_log_sigma2),
                skip: Skip::Identity,
            });
            exits.push(VdLinear {
                theta: Array2::from_shape_simple_fn((spec.classes, c), || {
                    glorot(&mut rng, c, spec.classes)
                }),
                log_sigma2: Array2::from_elem((spec.classes, c), T::from_f64(init_log_sigma2)),
                bias: Array1::zeros(spec.classes),
            });
        }
        Self {
            input_shape: spec.input_shape,
            prune_threshold,
            stem,
            blocks,
            exits,
            prior,
        }
    }

    /// Checks that the parts fit together: as many exits as blocks (at least one), the stem
    /// maps the input channels to `C` with a non-empty output, every block convolution is
    /// `C -> C` and keeps the spatial size, every exit is `C -> K` with the same `K`, every
    /// `log_sigma2` has its `theta`'s shape and every bias one entry per output, and the prior
    /// strength is in `[0, 1)`. A network built by [`Self::build`] or read from a checkpoint
    /// always passes; the forward passes may panic on one that does not.
    pub fn validate(&self) -> Result<(), ShapeError> {
        let err = |what: String| Err(ShapeError(what));
        if self.blocks.is_empty() || self.blocks.len() != self.exits.len() {
            return err(format!(
                "{} blocks and {} exits (need as many, at least one)",
                self.blocks.len(),
                self.exits.len()
            ));
        }
        DepthPrior::new(self.prior.lambda).map_err(|e| ShapeError(e.to_string()))?;
        let c = self.stem.theta.dim().0;
        if self.stem.theta.dim().1 != self.input_shape[0] {
            return err(format!(
                "stem takes {} channels, input has {}",
                self.stem.theta.dim().1,
                self.input_shape[0]
            ));
        }
        let (h, w) = self.feature_size();
        if h == 0 || w == 0 {
            return err("stem output is empty".into());
        }
        let mut convs = vec![("stem".to_string(), &self.stem)];
        for (l, b) in self.blocks.iter().enumerate() {
            for (name, conv) in [("conv_a", &b.conv_a), ("conv_b", &b.conv_b)] {
                let name = format!("block{}.{name}", l + 1);
                let (o, i, kh, kw) = conv.theta.dim();
                let g = conv.geom();
                if (o, i) != (c, c) || g.out_size(h, kh) != Some(h) || g.out_size(w, kw) != Some(w)
                {
                    return err(format!(
                        "{name} is {i}->{o} channels, {kh}x{kw}, stride {}, padding {}; \
                         a block needs {c}->{c} keeping {h}x{w}",
                        conv.stride, conv.padding
                    ));
                }
                convs.push((name, conv));
            }
        }
        for (name, conv) in convs {
            if conv.log_sigma2.dim() != conv.theta.dim() || conv.bias.len() != conv.theta.dim().0 {
                return err(format!("{name}: log_sigma2 or bias does not match theta"));
            }
        }
        let k = self.classes();
        for (l, e) in self.exits.iter().enumerate() {
            if e.theta.dim() != (k, c) || e.log_sigma2.dim() != (k, c) || e.bias.len() != k {
                return err(format!(
                    "exit{} is {:?} (log_sigma2 {:?}, bias {}); need ({k}, {c})",
                    l + 1,
                    e.theta.dim(),
                    e.log_sigma2.dim(),
                    e.bias.len()
                ));
            }
        }
        Ok(())
    }

    /// Number of exits (= residual blocks).
    pub fn depth(&self) -> usize {
        self.exits.len()
    }

    /// Classes of the exits.
    pub fn classes(&self) -> usize {
        self.exits.first().map_or(0, |e| e.theta.nrows())
    }

    /// Every weight layer in parameter order (see the module documentation).
    pub fn weight_layers(&self) -> Vec<WeightLayer<'_, T>> {
        let mut out = vec![WeightLayer::Conv(&self.stem)];
        for (b, e) in self.blocks.iter().zip(&self.exits) {
            out.push(WeightLayer::Conv(&b.conv_a));
            out.push(WeightLayer::Conv(&b.conv_b));
            out.push(WeightLayer::Linear(e));
        }
        out
    }

    /// Names of [`Self::weight_layers`]: `stem`, `block1.conv_a`, `block1.conv_b`, `exit1`, ...
    pub fn weight_layer_names(&self) -> Vec<String> {
        let mut out = vec!["stem".to_string()];
        for l in 1..=self.depth() {
            out.push(format!("block{l}.conv_a"));
            out.push(format!("block{l}.conv_b"));
            out.push(format!("exit{l}"));
        }
        out
    }

    /// All parameter tensors in optimizer order.
    pub(crate) fn params(&self) -> Vec<&[T]> {
        self.weight_layers()
            .into_iter()
            .flat_map(|w| w.slices())
            .collect()
    }

    /// All parameter tensors in optimizer order, mutable.
    pub(crate) fn params_mut(&mut self) -> Vec<&mut [T]> {
        let mut out: Vec<&mut [T]> = self.stem.slices_mut().into_iter().collect();
        for (b, e) in self.blocks.iter_mut().zip(self.exits.iter_mut()) {
            out.extend(b.conv_a.slices_mut());
            out.extend(b.conv_b.slices_mut());
            out.extend(e.slices_mut());
        }
        out
    }

    /// Number of trainable scalars (theta, log sigma^2 and biases).
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.len()).sum()
    }

    /// Fraction of weights pruned per weight layer (index into [`Self::weight_layers`]) and
    /// overall, at [`Self::prune_threshold`].
    pub fn sparsity(&self) -> Sparsity {
        let thr = T::from_f64(self.prune_threshold);
        let layers: Vec<LayerSparsity> = self
            .weight_layers()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let la = w.log_alpha();
                LayerSparsity {
                    layer: i,
                    pruned: la.iter().filter(|&&a| a > thr).count(),
                    total: la.len(),
                }
            })
            .collect();
        Sparsity {
            pruned: layers.iter().map(|l| l.pruned).sum(),
            total: layers.iter().map(|l| l.total).sum(),
            layers,
        }
    }

    /// Sum of the KL approximation over all weights (nats).
    pub fn kl(&self) -> f64 {
        self.weight_layers()
            .iter()
            .map(|w| {
                let [theta, ls2, _] = w.slices();
                vd::kl_sum(theta, ls2)
            })
            .sum()
    }

    /// Adds `scale * dKL/dparam` to `grads` (in optimizer order) and returns the total KL.
    pub(crate) fn add_kl_grad(&self, grads: &mut [Vec<T>], scale: T) -> f64 {
        let mut kl = 0.0;
        for (w, g) in self.weight_layers().iter().zip(grads.chunks_mut(3)) {
            let [theta, ls2, _] = w.slices();
            if let [gt, gl, _] = g {
                kl += vd::add_kl_grad(theta, ls2, gt, gl, scale);
            }
        }
        kl
    }

    /// Spatial size `(rows, cols)` of the stem output and every block.
    pub fn feature_size(&self) -> (usize, usize) {
        let [_, h, w] = self.input_shape;
        let g = self.stem.geom();
        let (_, _, kh, kw) = self.stem.theta.dim();
        (
            g.out_size(h, kh).unwrap_or(0),
            g.out_size(w, kw).unwrap_or(0),
        )
    }

    /// Dense multiply-accumulates of one image up to and including each exit (entry `l - 1`
    /// for exit `l`), counting every kernel tap (also those that read padding).
    pub fn dense_macs_per_exit(&self) -> Vec<u64> {
        let (h, w) = self.feature_size();
        let hw = (h * w) as u64;
        let mut total = self.stem.theta.len() as u64 * hw;
        let mut out = Vec::with_capacity(self.depth());
        for (b, e) in self.blocks.iter().zip(&self.exits) {
            total += (b.conv_a.theta.len() + b.conv_b.theta.len()) as u64 * hw;
            // The residual add and the pooling are additions; the exit is C*K MACs.
            out.push(total + e.theta.len() as u64);
        }
        out
    }

    /// Converts input rows `[B, C*H*W]` to CBHW.
    pub(crate) fn input_maps(&self, x: Array2<T>) -> Array4<T> {
        let [c, h, w] = self.input_shape;
        let b = x.nrows();
        let x = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b, c, h, w))
            .unwrap_or_else(|_| panic!("input rows must have {} features", c * h * w));
        x.permuted_axes([1, 0, 2, 3])
            .as_standard_layout()
            .into_owned()
    }

    /// Deterministic logits of every exit (`[B, K]` each, exit 1 first) for inputs `[B, C*H*W]`:
    /// mean weights, pruned at [`Self::prune_threshold`]. Processes the batch in chunks.
    ///
    /// # Panics
    /// If `x` does not have `channels*rows*cols` columns, or the network fails
    /// [`Self::validate`].
    pub fn exit_logits_deterministic(&self, x: &Array2<T>) -> Vec<Array2<T>> {
        const ROWS: usize = 500;
        let thr = T::from_f64(self.prune_threshold);
        let prune_lin = |e: &VdLinear<T>| pruned_mean(&e.theta, &e.log_sigma2, thr);
        let stem = self.stem.pruned(thr);
        let blocks: Vec<(Array4<T>, Array4<T>)> = self
            .blocks
            .iter()
            .map(|b| (b.conv_a.pruned(thr), b.conv_b.pruned(thr)))
            .collect();
        let exits: Vec<Array2<T>> = self.exits.iter().map(prune_lin).collect();
        let mut per_exit: Vec<Vec<Array2<T>>> = vec![Vec::new(); self.depth()];
        for chunk in x.axis_chunks_iter(Axis(0), ROWS) {
            let x = self.input_maps(chunk.to_owned());
            let mut h = conv::conv_eval(&stem, &self.stem.bias, true, self.stem.geom(), x.view());
            for (l, (block, (wa, wb))) in self.blocks.iter().zip(&blocks).enumerate() {
                let a =
                    conv::conv_eval(wa, &block.conv_a.bias, true, block.conv_a.geom(), h.view());
                let mut f =
                    conv::conv_eval(wb, &block.conv_b.bias, false, block.conv_b.geom(), a.view());
                residual_relu(&mut f, &h);
                h = f;
                let pooled = conv::global_avg_pool(h.view());
                per_exit[l].push(layers::linear_eval(
                    &exits[l],
                    &self.exits[l].bias,
                    false,
                    &pooled,
                ));
            }
        }
        per_exit
            .into_iter()
            .map(|chunks| {
                let views: Vec<_> = chunks.iter().map(|c| c.view()).collect();
                ndarray::concatenate(Axis(0), &views).unwrap_or_else(|_| Array2::zeros((0, 0)))
            })
            .collect()
    }

    /// Class probabilities of every exit (softmax of [`Self::exit_logits_deterministic`]).
    pub fn exit_probabilities(&self, x: &Array2<T>) -> Vec<Array2<T>> {
        self.exit_logits_deterministic(x)
            .iter()
            .map(softmax)
            .collect()
    }

    /// Accuracy of every exit's deterministic prediction on the rows of `x` (exit 1 first).
    pub fn exit_accuracies(&self, x: &Array2<T>, labels: &[usize]) -> Vec<f64> {
        if labels.is_empty() {
            return vec![0.0; self.depth()];
        }
        self.exit_logits_deterministic(x)
            .iter()
            .map(|logits| {
                let correct = logits
                    .axis_iter(Axis(0))
                    .zip(labels)
                    .filter(|(row, &y)| argmax(row.iter().map(|&v| v.as_f64())) == y)
                    .count();
                correct as f64 / labels.len() as f64
            })
            .collect()
    }

    /// Training forward with local reparameterization. `noise(layer, eps)` fills the standard
    /// normals of weight layer `layer` (index into [`Self::weight_layers`]). Returns the logits
    /// of every exit and the tape for [`Self::backward`].
    pub(crate) fn forward_train(
        &self,
        x: Array2<T>,
        noise: &mut dyn FnMut(usize, &mut [T]),
    ) -> (Vec<Array2<T>>, ResTape<T>) {
        let x = self.input_maps(x);
        let (mut h, stem) = vd_conv_train(&self.stem, x.view(), 0, noise);
        let mut tapes = Vec::with_capacity(self.depth());
        let mut logits = Vec::with_capacity(self.depth());
        for (l, (block, exit)) in self.blocks.iter().zip(&self.exits).enumerate() {
            let (a, conv_a) = vd_conv_train(&block.conv_a, h.view(), 1 + 3 * l, noise);
            let (mut f, conv_b) = vd_conv_train(&block.conv_b, a.view(), 2 + 3 * l, noise);
            residual_relu(&mut f, &h);
            h = f;
            let pooled = conv::global_avg_pool(h.view());
            let mut eps = Array2::zeros((pooled.nrows(), exit.theta.nrows()));
            noise(
                3 + 3 * l,
                eps.as_slice_mut()
                    .unwrap_or_else(|| unreachable!("fresh array")),
            );
            let (y, exit_cache) = layers::linear_forward(
                &exit.theta,
                &exit.log_sigma2,
                &exit.bias,
                false,
                pooled,
                eps,
            );
            logits.push(y);
            tapes.push(BlockTape {
                conv_a,
                conv_b,
                out: h.clone(),
                exit: exit_cache,
            });
        }
        (
            logits,
            ResTape {
                stem,
                blocks: tapes,
            },
        )
    }

    /// Backward pass: given `dL/dlogits` of every exit, returns the gradient of every parameter
    /// tensor in optimizer order (matching [`Self::params`]).
    pub(crate) fn backward(&self, tape: ResTape<T>, dlogits: Vec<Array2<T>>) -> Vec<Vec<T>> {
        let depth = self.depth();
        let ResTape {
            stem: stem_tape,
            blocks: block_tapes,
        } = tape;
        let stem_input = stem_tape.input_dim();
        let mut block_grads: Vec<Option<[VdGrads<T>; 3]>> = (0..depth).map(|_| None).collect();
        // Gradient reaching h_l from the blocks after it.
        let mut from_above: Option<Array4<T>> = None;
        let stages = self
            .blocks
            .iter()
            .zip(&self.exits)
            .zip(block_tapes)
            .zip(dlogits);
        for (l, (((block, exit), t), dl)) in stages.enumerate().rev() {
            let dim = t.out.dim();
            let (g_exit, dpool) = layers::linear_backward(&exit.theta, t.exit, dl, true);
            let dpool = dpool.unwrap_or_else(|| unreachable!("requested"));
            let mut dh = conv::global_avg_pool_backward(&dpool, dim);
            if let Some(g) = from_above.take() {
                dh += &g;
            }
            residual_relu_backward(&mut dh, &t.out);
            let (g_b, da) = conv::vd_conv_backward(&block.conv_b.theta, t.conv_b, dh.clone(), true);
            let da = da.unwrap_or_else(|| unreachable!("requested"));
            let (g_a, dx) = conv::vd_conv_backward(&block.conv_a.theta, t.conv_a, da, true);
            // Skip path plus the residual branch.
            dh += &dx.unwrap_or_else(|| unreachable!("requested"));
            from_above = Some(dh);
            block_grads[l] = Some([g_a, g_b, g_exit]);
        }
        let dstem = from_above.unwrap_or_else(|| {
            let (h, w) = self.feature_size();
            Array4::zeros((self.stem.theta.dim().0, stem_input.1, h, w))
        });
        let (g_stem, _) = conv::vd_conv_backward(&self.stem.theta, stem_tape, dstem, false);
        let mut out = vec![g_stem.theta, g_stem.log_sigma2, g_stem.bias];
        for grads in block_grads.into_iter().flatten() {
            for g in grads {
                out.extend([g.theta, g.log_sigma2, g.bias]);
            }
        }
        out
    }
}

/// `f = relu(f + skip)` in place.
pub(crate) fn residual_relu<T: Real>(f: &mut Array4<T>, skip: &Array4<T>) {
    ndarray::Zip::from(f).and(skip).par_for_each(|f, &s| {
        let v = *f + s;
        *f = if v < T::zero() { T::zero() } else { v };
    });
}

/// Backward of [`residual_relu`]: given `dL/dh` and the output `h`, leaves in `g` the gradient
/// reaching both addends, `dL/dh * [h > 0]`.
pub(crate) fn residual_relu_backward<T: Real>(g: &mut Array4<T>, out: &Array4<T>) {
    ndarray::Zip::from(g).and(out).par_for_each(|d, &o| {
        if o <= T::zero() {
            *d = T::zero();
        }
    });
}

/// Training forward of one VD convolution, drawing its noise from stream `layer`.
fn vd_conv_train<T: Real>(
    c: &VdConv<T>,
    x: ArrayView4<'_, T>,
    layer: usize,
    noise: &mut dyn FnMut(usize, &mut [T]),
) -> (Array4<T>, StridedConvCache<T>) {
    let (ho, wo) = conv::out_hw(&c.theta, x.dim(), c.geom());
    let mut eps = Array2::zeros((c.theta.dim().0, x.dim().1 * ho * wo));
    noise(
        layer,
        eps.as_slice_mut()
            .unwrap_or_else(|| unreachable!("fresh array")),
    );
    conv::vd_conv_forward(&c.theta, &c.log_sigma2, &c.bias, c.relu, c.geom(), x, eps)
}
