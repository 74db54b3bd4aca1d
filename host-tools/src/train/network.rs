//! The trained network: public parameter layout for export, deterministic (pruned) prediction,
//! and the crate-internal training forward/backward over the whole layer stack.
//!
//! Layout conventions (what an exporter must know):
//! - input rows are images flattened as `(channel, row, col)`, pixels scaled to `[0, 1]`;
//! - `Linear` weights are `(outputs, inputs)`; `Conv2d` and `PlainConv` weights are `(out_ch,
//!   in_ch, kh, kw)` with the stride and zero padding of their `geom` (the LeNets': 'valid',
//!   stride 1), computing cross-correlation `y[o,i,j] = b[o] + sum w[o,c,u,v] * x[c, s*i+u-p,
//!   s*j+v-p]`;
//! - `relu: true` means ReLU is applied to that layer's output;
//! - `MaxPool2` is 2x2 max-pooling with stride 2, `MaxPool` any window and stride; `Flatten`
//!   turns `(C, H, W)` maps into a vector in `(c, h, w)` order (the NCHW convention);
//!   `GlobalAvgPool` turns them into the vector of the `C` channel means;
//! - a weight is pruned when its log alpha (see [`super::vd::log_alpha`]) exceeds
//!   [`Network::prune_threshold`].

use ndarray::{Array1, Array2, Array4, ArrayD, Axis};
use serde::{Deserialize, Serialize};

use super::arch::Arch;
use super::conv::{self as strided, ConvGeom, StridedConvCache};
use super::layers::{self, ConvCache, DropoutCache, VdCache, VdGrads};
use super::loss::softmax;
use super::plain::{self, PlainConvCache};
use super::tensor::{valid_out, Real};
use super::vd::{self, log_alpha};

/// One layer of a trained network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TrainedLayer<T = f32> {
    /// Variational-dropout fully connected layer.
    Linear {
        /// Posterior means, `(outputs, inputs)`.
        theta: Array2<T>,
        /// Posterior log variances, same shape as `theta`.
        log_sigma2: Array2<T>,
        /// Deterministic bias, `(outputs,)`.
        bias: Array1<T>,
        /// ReLU on the output.
        relu: bool,
    },
    /// Variational-dropout convolution.
    Conv2d {
        /// Posterior means, `(out_ch, in_ch, kh, kw)`.
        theta: Array4<T>,
        /// Posterior log variances, same shape as `theta`.
        log_sigma2: Array4<T>,
        /// Deterministic bias, `(out_ch,)`.
        bias: Array1<T>,
        /// ReLU on the output.
        relu: bool,
        /// Stride and zero padding (absent from older checkpoints: 'valid', stride 1).
        #[serde(default)]
        geom: ConvGeom,
    },
    /// Deterministic (point-weight) convolution, its prior the weight decay
    /// ([`super::TrainConfig::weight_decay`]): `posterior = "deterministic"` in a layer list.
    PlainConv {
        /// Weights, `(out_ch, in_ch, kh, kw)`.
        theta: Array4<T>,
        /// Bias, `(out_ch,)`.
        bias: Array1<T>,
        /// ReLU on the output.
        relu: bool,
        /// Stride and zero padding.
        geom: ConvGeom,
    },
    /// MC dropout fully connected layer: deterministic weights whose *inputs* are dropped
    /// with probability `p` while training (inverted dropout: a kept input is scaled by
    /// `1 / (1 - p)`, so evaluation uses the weights as they are).
    DropoutLinear {
        /// Weights, `(outputs, inputs)`.
        theta: Array2<T>,
        /// Bias, `(outputs,)`.
        bias: Array1<T>,
        /// ReLU on the output.
        relu: bool,
        /// Probability that an input is dropped, in `[0, 1)`.
        p: f64,
    },
    /// 2x2 max-pooling, stride 2.
    MaxPool2,
    /// Max pooling over `window` (height, width) with `stride` (trailing rows and columns
    /// that do not fill a window are dropped).
    MaxPool {
        /// Window (height, width).
        window: [usize; 2],
        /// Step between windows along both axes.
        stride: usize,
    },
    /// `(C, H, W)` feature maps to a `C*H*W` vector, channel-major.
    Flatten,
    /// Global average pooling: `(C, H, W)` feature maps to the vector of the `C` channel means
    /// (the pool of the exit heads, as a layer of its own).
    GlobalAvgPool,
}

/// Pruning statistics of one weight layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// Index of the layer in [`Network::layers`].
    pub layer: usize,
    /// Weights with log alpha above the threshold.
    pub pruned: usize,
    /// All weights of the layer (biases excluded).
    pub total: usize,
}

impl LayerSparsity {
    /// `pruned / total` (0 for an empty layer).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.pruned as f64 / self.total as f64
        }
    }
}

/// Pruning statistics of a whole network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sparsity {
    /// One entry per weight layer, in order.
    pub layers: Vec<LayerSparsity>,
    /// Pruned weights over all layers.
    pub pruned: usize,
    /// Weights over all layers.
    pub total: usize,
}

impl Sparsity {
    /// Overall fraction of weights pruned.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.pruned as f64 / self.total as f64
        }
    }
}

impl<T: Real> TrainedLayer<T> {
    /// Element-wise log alpha of the weights (same shape as `theta`); `None` for layers without
    /// weights.
    pub fn log_alpha(&self) -> Option<ArrayD<T>> {
        let (theta, ls2) = self.weights()?;
        Some(
            ndarray::Zip::from(&theta)
                .and(&ls2)
                .map_collect(|&t, &l| log_alpha(t, l)),
        )
    }

    /// `(theta, log_sigma2)` as dynamic-rank arrays, for layers that have weights.
    fn weights(&self) -> Option<(ArrayD<T>, ArrayD<T>)> {
        match self {
            Self::Linear {
                theta, log_sigma2, ..
            } => Some((theta.clone().into_dyn(), log_sigma2.clone().into_dyn())),
            Self::Conv2d {
                theta, log_sigma2, ..
            } => Some((theta.clone().into_dyn(), log_sigma2.clone().into_dyn())),
            // Deterministic weights: no variance, so no log alpha and no pruning.
            Self::DropoutLinear { .. }
            | Self::PlainConv { .. }
            | Self::MaxPool2
            | Self::MaxPool { .. }
            | Self::Flatten
            | Self::GlobalAvgPool => None,
        }
    }

    /// Parameter tensors in optimizer order (`theta`, `log_sigma2`, `bias`), as flat slices.
    pub(crate) fn param_slices(&self) -> Vec<&[T]> {
        let s = "parameters are kept in standard layout";
        match self {
            Self::Linear {
                theta,
                log_sigma2,
                bias,
                ..
            } => vec![
                theta.as_slice().expect(s),
                log_sigma2.as_slice().expect(s),
                bias.as_slice().expect(s),
            ],
            Self::Conv2d {
                theta,
                log_sigma2,
                bias,
                ..
            } => vec![
                theta.as_slice().expect(s),
                log_sigma2.as_slice().expect(s),
                bias.as_slice().expect(s),
            ],
            Self::DropoutLinear { theta, bias, .. } => {
                vec![theta.as_slice().expect(s), bias.as_slice().expect(s)]
            }
            Self::PlainConv { theta, bias, .. } => {
                vec![theta.as_slice().expect(s), bias.as_slice().expect(s)]
            }
            Self::MaxPool2 | Self::MaxPool { .. } | Self::Flatten | Self::GlobalAvgPool => vec![],
        }
    }

    /// Mutable version of [`Self::param_slices`].
    pub(crate) fn param_slices_mut(&mut self) -> Vec<&mut [T]> {
        let s = "parameters are kept in standard layout";
        match self {
            Self::Linear {
                theta,
                log_sigma2,
                bias,
                ..
            } => vec![
                theta.as_slice_mut().expect(s),
                log_sigma2.as_slice_mut().expect(s),
                bias.as_slice_mut().expect(s),
            ],
            Self::Conv2d {
                theta,
                log_sigma2,
                bias,
                ..
            } => vec![
                theta.as_slice_mut().expect(s),
                log_sigma2.as_slice_mut().expect(s),
                bias.as_slice_mut().expect(s),
            ],
            Self::DropoutLinear { theta, bias, .. } => {
                vec![
                    theta.as_slice_mut().expect(s),
                    bias.as_slice_mut().expect(s),
                ]
            }
            Self::PlainConv { theta, bias, .. } => {
                vec![
                    theta.as_slice_mut().expect(s),
                    bias.as_slice_mut().expect(s),
                ]
            }
            Self::MaxPool2 | Self::MaxPool { .. } | Self::Flatten | Self::GlobalAvgPool => vec![],
        }
    }
}

/// Mean weights with pruned entries (log alpha above `threshold`) set to zero.
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

/// Activations between layers: row-per-example vectors, or CBHW feature maps.
#[derive(Debug)]
enum Act<T> {
    Flat(Array2<T>),
    Maps(Array4<T>),
}

impl<T: Real> Act<T> {
    fn flat(self, what: &str) -> Array2<T> {
        match self {
            Act::Flat(a) => a,
            Act::Maps(_) => panic!("{what} needs vector input: insert Flatten before it"),
        }
    }
    fn maps(self, what: &str) -> Array4<T> {
        match self {
            Act::Maps(a) => a,
            Act::Flat(_) => panic!("{what} needs feature-map input"),
        }
    }
}

/// What the backward pass needs from each layer's training forward.
#[derive(Debug)]
pub(crate) enum Step<T> {
    Linear(VdCache<T>),
    Dropout(DropoutCache<T>),
    Conv(ConvCache<T>),
    StridedConv(StridedConvCache<T>),
    PlainConv(PlainConvCache<T>),
    WindowPool {
        arg: Vec<u32>,
        dim: (usize, usize, usize, usize),
    },
    Flatten {
        dim: (usize, usize, usize, usize),
    },
    Gap {
        dim: (usize, usize, usize, usize),
    },
}

/// A network of variational-dropout layers: what the trainer produces and the exporter reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network<T = f32> {
    /// Which architecture this is.
    pub arch: Arch,
    /// Shape of one input `(channels, rows, cols)`; inputs are rows of `channels*rows*cols`.
    pub input_shape: [usize; 3],
    /// Weights with log alpha above this are pruned (3.0 in the paper).
    pub prune_threshold: f64,
    /// The layers, input to output.
    pub layers: Vec<TrainedLayer<T>>,
}

impl<T: Real> Network<T> {
    /// Log alpha of every layer's weights (`None` for layers without weights), in layer order.
    pub fn log_alpha(&self) -> Vec<Option<ArrayD<T>>> {
        self.layers.iter().map(TrainedLayer::log_alpha).collect()
    }

    /// Fraction of weights pruned, per weight layer and overall, at [`Self::prune_threshold`].
    pub fn sparsity(&self) -> Sparsity {
        let thr = T::from_f64(self.prune_threshold);
        let layers: Vec<LayerSparsity> = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let la = l.log_alpha()?;
                Some(LayerSparsity {
                    layer: i,
                    pruned: la.iter().filter(|&&a| a > thr).count(),
                    total: la.len(),
                })
            })
            .collect();
        Sparsity {
            pruned: layers.iter().map(|l| l.pruned).sum(),
            total: layers.iter().map(|l| l.total).sum(),
            layers,
        }
    }

    /// Number of trainable scalars (theta, log sigma^2 and biases).
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.len()).sum()
    }

    /// Sum of the KL approximation over all weights (nats).
    pub fn kl(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| match l.param_slices().as_slice() {
                [theta, ls2, _] => vd::kl_sum(theta, ls2),
                _ => 0.0,
            })
            .sum()
    }

    /// Deterministic logits `[B, classes]` for inputs `[B, features]`: mean weights, pruned at
    /// [`Self::prune_threshold`]. Processes the batch in chunks to bound memory.
    ///
    /// # Panics
    /// If `x` does not have `channels*rows*cols` columns or the layer shapes do not chain (a
    /// network built by [`Arch::build`] or restored from a checkpoint always chains).
    pub fn logits_deterministic(&self, x: &Array2<T>) -> Array2<T> {
        const ROWS: usize = 500;
        let thr = T::from_f64(self.prune_threshold);
        let pruned: Vec<TrainedLayer<T>> = self
            .layers
            .iter()
            .map(|l| match l {
                TrainedLayer::Linear {
                    theta,
                    log_sigma2,
                    bias,
                    relu,
                } => TrainedLayer::Linear {
                    theta: pruned_mean(theta, log_sigma2, thr),
                    log_sigma2: Array2::zeros((0, 0)),
                    bias: bias.clone(),
                    relu: *relu,
                },
                TrainedLayer::Conv2d {
                    theta,
                    log_sigma2,
                    bias,
                    relu,
                    geom,
                } => TrainedLayer::Conv2d {
                    theta: pruned_mean(theta, log_sigma2, thr),
                    log_sigma2: Array4::zeros((0, 0, 0, 0)),
                    bias: bias.clone(),
                    relu: *relu,
                    geom: *geom,
                },
                other => other.clone(),
            })
            .collect();
        let chunks: Vec<Array2<T>> = x
            .axis_chunks_iter(Axis(0), ROWS)
            .map(|chunk| {
                let mut act = self.input(chunk.to_owned());
                for layer in &pruned {
                    act = match (layer, act) {
                        (
                            TrainedLayer::Linear {
                                theta, bias, relu, ..
                            },
                            a,
                        ) => Act::Flat(layers::linear_eval(theta, bias, *relu, &a.flat("Linear"))),
                        // Inverted dropout: the expectation of the masked, rescaled input is
                        // the input itself.
                        (
                            TrainedLayer::DropoutLinear {
                                theta, bias, relu, ..
                            },
                            a,
                        ) => Act::Flat(layers::linear_eval(
                            theta,
                            bias,
                            *relu,
                            &a.flat("DropoutLinear"),
                        )),
                        (
                            TrainedLayer::Conv2d {
                                theta,
                                bias,
                                relu,
                                geom,
                                ..
                            },
                            a,
                        ) if *geom == ConvGeom::VALID => Act::Maps(layers::conv_eval(
                            theta,
                            bias,
                            *relu,
                            a.maps("Conv2d").view(),
                        )),
                        (
                            TrainedLayer::Conv2d {
                                theta,
                                bias,
                                relu,
                                geom,
                                ..
                            }
                            | TrainedLayer::PlainConv {
                                theta,
                                bias,
                                relu,
                                geom,
                            },
                            a,
                        ) => Act::Maps(strided::conv_eval(
                            theta,
                            bias,
                            *relu,
                            *geom,
                            a.maps("Conv2d").view(),
                        )),
                        (TrainedLayer::MaxPool2, a) => Act::Maps(
                            plain::maxpool_forward(a.maps("MaxPool2").view(), [2, 2], 2).0,
                        ),
                        (TrainedLayer::MaxPool { window, stride }, a) => Act::Maps(
                            plain::maxpool_forward(a.maps("MaxPool").view(), *window, *stride).0,
                        ),
                        (TrainedLayer::Flatten, a) => {
                            Act::Flat(layers::flatten_forward(a.maps("Flatten")))
                        }
                        (TrainedLayer::GlobalAvgPool, a) => {
                            Act::Flat(strided::global_avg_pool(a.maps("GlobalAvgPool").view()))
                        }
                    };
                }
                act.flat("network output")
            })
            .collect();
        let views: Vec<_> = chunks.iter().map(|c| c.view()).collect();
        ndarray::concatenate(Axis(0), &views).unwrap_or_else(|_| Array2::zeros((0, 0)))
    }

    /// Class probabilities `[B, classes]` of the deterministic pruned network (see
    /// [`Self::logits_deterministic`]).
    pub fn predict_deterministic(&self, x: &Array2<T>) -> Array2<T> {
        softmax(&self.logits_deterministic(x))
    }

    /// Fraction of rows of `x` whose deterministic prediction equals the label.
    pub fn accuracy(&self, x: &Array2<T>, labels: &[usize]) -> f64 {
        if labels.is_empty() {
            return 0.0;
        }
        let logits = self.logits_deterministic(x);
        let correct = logits
            .axis_iter(Axis(0))
            .zip(labels)
            .filter(|(row, &y)| argmax(row.iter().map(|&v| Real::as_f64(v))) == y)
            .count();
        correct as f64 / labels.len() as f64
    }

    /// Converts input rows `[B, C*H*W]` to the first layer's activation.
    fn input(&self, x: Array2<T>) -> Act<T> {
        match self.layers.first() {
            Some(
                TrainedLayer::Conv2d { .. }
                | TrainedLayer::PlainConv { .. }
                | TrainedLayer::MaxPool2
                | TrainedLayer::MaxPool { .. }
                | TrainedLayer::Flatten
                | TrainedLayer::GlobalAvgPool,
            ) => {
                let [c, h, w] = self.input_shape;
                let b = x.nrows();
                let x = x
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((b, c, h, w))
                    .expect("input rows must have channels*rows*cols features");
                Act::Maps(
                    x.permuted_axes([1, 0, 2, 3])
                        .as_standard_layout()
                        .into_owned(),
                )
            }
            _ => Act::Flat(x),
        }
    }

    /// All parameter tensors in optimizer order.
    pub(crate) fn params(&self) -> Vec<&[T]> {
        self.layers.iter().flat_map(|l| l.param_slices()).collect()
    }

    /// All parameter tensors in optimizer order, mutable.
    pub(crate) fn params_mut(&mut self) -> Vec<&mut [T]> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.param_slices_mut())
            .collect()
    }

    /// Training forward with local reparameterization. `noise(layer, eps)` fills the standard
    /// normals of layer `layer` (one per output unit per example). Returns logits and the tape for
    /// [`Self::backward`].
    pub(crate) fn forward_train(
        &self,
        x: Array2<T>,
        noise: &mut dyn FnMut(usize, &mut [T]),
    ) -> (Array2<T>, Vec<Step<T>>) {
        let mut tape = Vec::with_capacity(self.layers.len());
        let mut act = self.input(x);
        for (i, layer) in self.layers.iter().enumerate() {
            act = match layer {
                TrainedLayer::Linear {
                    theta,
                    log_sigma2,
                    bias,
                    relu,
                } => {
                    let x = act.flat("Linear");
                    let mut eps = Array2::zeros((x.nrows(), theta.nrows()));
                    noise(
                        i,
                        eps.as_slice_mut()
                            .unwrap_or_else(|| unreachable!("fresh array")),
                    );
                    let (y, cache) = layers::linear_forward(theta, log_sigma2, bias, *relu, x, eps);
                    tape.push(Step::Linear(cache));
                    Act::Flat(y)
                }
                TrainedLayer::Conv2d {
                    theta,
                    log_sigma2,
                    bias,
                    relu,
                    geom,
                } => {
                    let x = act.maps("Conv2d");
                    let (o, _, kh, kw) = theta.dim();
                    let (_, b, h, w) = x.dim();
                    let (ho, wo) = if *geom == ConvGeom::VALID {
                        (valid_out(h, kh), valid_out(w, kw))
                    } else {
                        strided::out_hw(theta, x.dim(), *geom)
                    };
                    let mut eps = Array2::zeros((o, b * ho * wo));
                    noise(
                        i,
                        eps.as_slice_mut()
                            .unwrap_or_else(|| unreachable!("fresh array")),
                    );
                    // The LeNets' 'valid' convolutions keep their own kernel (and their
                    // trained results bit for bit).
                    if *geom == ConvGeom::VALID {
                        let (y, cache) =
                            layers::conv_forward(theta, log_sigma2, bias, *relu, x.view(), eps);
                        tape.push(Step::Conv(cache));
                        Act::Maps(y)
                    } else {
                        let (y, cache) = strided::vd_conv_forward(
                            theta,
                            log_sigma2,
                            bias,
                            *relu,
                            *geom,
                            x.view(),
                            eps,
                        );
                        tape.push(Step::StridedConv(cache));
                        Act::Maps(y)
                    }
                }
                TrainedLayer::PlainConv {
                    theta,
                    bias,
                    relu,
                    geom,
                } => {
                    let x = act.maps("PlainConv");
                    let (y, cache) = plain::plain_conv_forward(theta, bias, *relu, *geom, x.view());
                    tape.push(Step::PlainConv(cache));
                    Act::Maps(y)
                }
                TrainedLayer::DropoutLinear {
                    theta,
                    bias,
                    relu,
                    p,
                } => {
                    let x = act.flat("DropoutLinear");
                    // The mask comes from the layer's standard normals: an input is kept when
                    // its draw is at or above the p-quantile, with probability 1 - p.
                    let mut eps = Array2::zeros(x.dim());
                    noise(
                        i,
                        eps.as_slice_mut()
                            .unwrap_or_else(|| unreachable!("fresh array")),
                    );
                    let (y, cache) =
                        layers::dropout_linear_forward(theta, bias, *relu, *p, x, &eps);
                    tape.push(Step::Dropout(cache));
                    Act::Flat(y)
                }
                TrainedLayer::MaxPool2 => {
                    let x = act.maps("MaxPool2");
                    let dim = x.dim();
                    let (y, arg) = plain::maxpool_forward(x.view(), [2, 2], 2);
                    tape.push(Step::WindowPool { arg, dim });
                    Act::Maps(y)
                }
                TrainedLayer::MaxPool { window, stride } => {
                    let x = act.maps("MaxPool");
                    let dim = x.dim();
                    let (y, arg) = plain::maxpool_forward(x.view(), *window, *stride);
                    tape.push(Step::WindowPool { arg, dim });
                    Act::Maps(y)
                }
                TrainedLayer::Flatten => {
                    let x = act.maps("Flatten");
                    let dim = x.dim();
                    tape.push(Step::Flatten { dim });
                    Act::Flat(layers::flatten_forward(x))
                }
                // The exit heads' pool (`conv::global_avg_pool`), rows `[B, C]`.
                TrainedLayer::GlobalAvgPool => {
                    let x = act.maps("GlobalAvgPool");
                    tape.push(Step::Gap { dim: x.dim() });
                    Act::Flat(strided::global_avg_pool(x.view()))
                }
            };
        }
        (act.flat("network output"), tape)
    }

    /// Backward pass: given `dL/dlogits`, returns the gradient of every parameter tensor in
    /// optimizer order (flat, matching [`Self::params`]). Stops at the first weight layer (the
    /// input gradient is never needed).
    pub(crate) fn backward(&self, tape: Vec<Step<T>>, dlogits: Array2<T>) -> Vec<Vec<T>> {
        let first_weighted = self
            .layers
            .iter()
            .position(|l| !l.param_slices().is_empty())
            .unwrap_or(self.layers.len());
        let mut per_layer: Vec<Option<Vec<Vec<T>>>> =
            (0..self.layers.len()).map(|_| None).collect();
        let vd = |g: VdGrads<T>| vec![g.theta, g.log_sigma2, g.bias];
        let mut g = Some(Act::Flat(dlogits));
        for (i, (layer, step)) in self.layers.iter().zip(tape).enumerate().rev() {
            let Some(gi) = g.take() else { break };
            let need_dx = i > first_weighted;
            g = match (layer, step) {
                (TrainedLayer::Linear { theta, .. }, Step::Linear(cache)) => {
                    let (grads, dx) =
                        layers::linear_backward(theta, cache, gi.flat("Linear"), need_dx);
                    per_layer[i] = Some(vd(grads));
                    dx.map(Act::Flat)
                }
                (TrainedLayer::DropoutLinear { theta, .. }, Step::Dropout(cache)) => {
                    let (grads, dx) = layers::dropout_linear_backward(
                        theta,
                        cache,
                        gi.flat("DropoutLinear"),
                        need_dx,
                    );
                    per_layer[i] = Some(grads);
                    dx.map(Act::Flat)
                }
                (TrainedLayer::Conv2d { theta, .. }, Step::Conv(cache)) => {
                    let (grads, dx) =
                        layers::conv_backward(theta, cache, gi.maps("Conv2d"), need_dx);
                    per_layer[i] = Some(vd(grads));
                    dx.map(Act::Maps)
                }
                (TrainedLayer::Conv2d { theta, .. }, Step::StridedConv(cache)) => {
                    let (grads, dx) =
                        strided::vd_conv_backward(theta, cache, gi.maps("Conv2d"), need_dx);
                    per_layer[i] = Some(vd(grads));
                    dx.map(Act::Maps)
                }
                (TrainedLayer::PlainConv { theta, .. }, Step::PlainConv(cache)) => {
                    let (grads, dx) =
                        plain::plain_conv_backward(theta, cache, gi.maps("PlainConv"), need_dx);
                    per_layer[i] = Some(grads);
                    dx.map(Act::Maps)
                }
                (TrainedLayer::MaxPool2, Step::WindowPool { arg, dim }) => Some(Act::Maps(
                    plain::maxpool_backward(&gi.maps("MaxPool2"), &arg, dim),
                )),
                (TrainedLayer::MaxPool { .. }, Step::WindowPool { arg, dim }) => Some(Act::Maps(
                    plain::maxpool_backward(&gi.maps("MaxPool"), &arg, dim),
                )),
                (TrainedLayer::Flatten, Step::Flatten { dim }) => {
                    Some(Act::Maps(layers::flatten_backward(gi.flat("Flatten"), dim)))
                }
                (TrainedLayer::GlobalAvgPool, Step::Gap { dim }) => Some(Act::Maps(
                    strided::global_avg_pool_backward(&gi.flat("GlobalAvgPool"), dim),
                )),
                _ => unreachable!("tape recorded by forward_train on the same network"),
            };
            if i <= first_weighted {
                break;
            }
        }
        per_layer.into_iter().flatten().flatten().collect()
    }

    /// Adds `scale * dKL/dparam` to `grads` (in optimizer order) and returns the total KL.
    pub(crate) fn add_kl_grad(&self, grads: &mut [Vec<T>], scale: T) -> f64 {
        let mut kl = 0.0;
        let mut k = 0;
        for layer in &self.layers {
            let params = layer.param_slices();
            if let (TrainedLayer::Linear { .. } | TrainedLayer::Conv2d { .. }, [theta, ls2, _]) =
                (layer, params.as_slice())
            {
                let (gt, rest) = grads[k..].split_at_mut(1);
                kl += vd::add_kl_grad(theta, ls2, &mut gt[0], &mut rest[0], scale);
            }
            k += params.len();
        }
        kl
    }

    /// The network with every linear layer turned into an MC dropout layer
    /// ([`TrainedLayer::DropoutLinear`]) with the means as its weights, the `k`-th weight
    /// layer dropping its inputs with probability `ps[k]` (layers beyond `ps` get 0).
    pub fn with_dropout(self, ps: &[f64]) -> Self {
        let mut k = 0;
        let layers = self
            .layers
            .into_iter()
            .map(|l| match l {
                TrainedLayer::Linear {
                    theta, bias, relu, ..
                } => {
                    let p = ps.get(k).copied().unwrap_or(0.0);
                    k += 1;
                    TrainedLayer::DropoutLinear {
                        theta,
                        bias,
                        relu,
                        p,
                    }
                }
                other => other,
            })
            .collect();
        Self { layers, ..self }
    }

    /// Adds the gradient of the weight decay `λ/2 Σ θ²` over the weights of the MC dropout and
    /// deterministic layers (biases excluded) to `grads` (optimizer order) and returns the
    /// penalty.
    pub(crate) fn add_weight_decay_grad(&self, grads: &mut [Vec<T>], lambda: T) -> f64 {
        let mut penalty = 0.0;
        let mut k = 0;
        for layer in &self.layers {
            let params = layer.param_slices();
            let theta = match layer {
                TrainedLayer::DropoutLinear { theta, .. } => theta.as_slice(),
                TrainedLayer::PlainConv { theta, .. } => theta.as_slice(),
                _ => None,
            };
            if let Some(theta) = theta {
                for (g, &t) in grads[k].iter_mut().zip(theta) {
                    *g += lambda * t;
                    penalty += 0.5 * (lambda * t * t).as_f64();
                }
            }
            k += params.len();
        }
        penalty
    }
}

/// Index of the largest value (first on ties; NaN never wins; 0 when nothing beats -inf).
pub(crate) fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}
