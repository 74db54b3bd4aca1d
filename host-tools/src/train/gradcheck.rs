//! Finite-difference checks of every hand-written backward pass, in `f64`.
//!
//! The objective checked is the trainer's: `CE(forward_train(x, eps)) + c * KL`, with the noise
//! `eps` held fixed, so the checks cover linear and conv layers (mean and variance paths), ReLU,
//! max-pooling, global average pooling, flatten, softmax cross-entropy and the KL term with its clip. Log variances are
//! drawn around -2 so the variance path carries real weight (at the -10 initialisation an error
//! there would hide below the tolerance).

use ndarray::{Array1, Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::arch::Arch;
use super::loss::softmax_cross_entropy;
use super::network::{Network, TrainedLayer};
use super::tensor::{mix_seed, Real};

const KL_SCALE: f64 = 0.01;

fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    f64::sample_normal(rng)
}

fn linear(rng: &mut Xoshiro256PlusPlus, i: usize, o: usize, relu: bool) -> TrainedLayer<f64> {
    TrainedLayer::Linear {
        theta: Array2::from_shape_simple_fn((o, i), || 0.6 * normal(rng)),
        log_sigma2: Array2::from_shape_simple_fn((o, i), || rng.random_range(-3.5..-0.5)),
        bias: Array1::from_shape_simple_fn(o, || 0.1 * normal(rng)),
        relu,
    }
}

fn conv(rng: &mut Xoshiro256PlusPlus, c: usize, o: usize, k: usize) -> TrainedLayer<f64> {
    TrainedLayer::Conv2d {
        theta: Array4::from_shape_simple_fn((o, c, k, k), || 0.6 * normal(rng)),
        log_sigma2: Array4::from_shape_simple_fn((o, c, k, k), || rng.random_range(-3.5..-0.5)),
        bias: Array1::from_shape_simple_fn(o, || 0.1 * normal(rng)),
        relu: true,
        geom: crate::train::conv::ConvGeom::VALID,
    }
}

fn mlp() -> Network<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    Network {
        arch: Arch::Lenet300,
        input_shape: [1, 1, 5],
        prune_threshold: 3.0,
        layers: vec![
            linear(&mut rng, 5, 4, true),
            linear(&mut rng, 4, 4, true),
            linear(&mut rng, 4, 3, false),
        ],
    }
}

/// The MLP as an MC dropout network: deterministic weights, inputs dropped with
/// probability 0.2 / 0.5 / 0.3 (the masks come from the fixed noise).
fn dropout_mlp() -> Network<f64> {
    mlp().with_dropout(&[0.2, 0.5, 0.3])
}

fn convnet() -> Network<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
    Network {
        arch: Arch::Lenet5,
        input_shape: [2, 8, 8],
        prune_threshold: 3.0,
        layers: vec![
            conv(&mut rng, 2, 3, 3),
            TrainedLayer::MaxPool2,
            conv(&mut rng, 3, 4, 2),
            TrainedLayer::Flatten,
            linear(&mut rng, 16, 5, true),
            linear(&mut rng, 5, 3, false),
        ],
    }
}

/// conv -> ReLU -> global average pool -> linear over a non-square `[2, 6, 5]` input: the
/// pool's backward is all that carries the loss back to the convolution.
fn gap_net() -> Network<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(14);
    Network {
        arch: Arch::Custom,
        input_shape: [2, 6, 5],
        prune_threshold: 3.0,
        layers: vec![
            conv(&mut rng, 2, 3, 3),
            TrainedLayer::GlobalAvgPool,
            linear(&mut rng, 3, 3, false),
        ],
    }
}

fn inputs(net: &Network<f64>, b: usize) -> (Array2<f64>, Vec<usize>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
    let [c, h, w] = net.input_shape;
    let x = Array2::from_shape_simple_fn((b, c * h * w), || rng.random_range(0.0..1.0));
    let y = (0..b).map(|i| i % 3).collect();
    (x, y)
}

/// Fixed noise: depends only on the layer index, so every forward pass sees the same `eps`.
fn noise(layer: usize, eps: &mut [f64]) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[99, layer as u64]));
    eps.iter_mut().for_each(|e| *e = normal(&mut rng));
}

/// Weight decay of the MC dropout layers in the checked objective.
const WEIGHT_DECAY: f64 = 0.03;

fn objective(net: &Network<f64>, x: &Array2<f64>, y: &[usize]) -> f64 {
    let (logits, _) = net.forward_train(x.clone(), &mut noise);
    let mut unused: Vec<Vec<f64>> = net.params().iter().map(|p| vec![0.0; p.len()]).collect();
    let decay = net.add_weight_decay_grad(&mut unused, WEIGHT_DECAY);
    softmax_cross_entropy(&logits, y).0 + KL_SCALE * net.kl() + decay
}

fn analytic(net: &Network<f64>, x: &Array2<f64>, y: &[usize]) -> Vec<Vec<f64>> {
    let (logits, tape) = net.forward_train(x.clone(), &mut noise);
    let (_, dlogits) = softmax_cross_entropy(&logits, y);
    let mut grads = net.backward(tape, dlogits);
    net.add_kl_grad(&mut grads, KL_SCALE);
    net.add_weight_decay_grad(&mut grads, WEIGHT_DECAY);
    grads
}

/// Largest `|analytic - numeric| / (1e-6 + max(|analytic|, |numeric|))` over all parameters.
fn worst_error(net: &Network<f64>, x: &Array2<f64>, y: &[usize], grads: &[Vec<f64>]) -> f64 {
    let h = 1e-5;
    let mut worst = 0.0f64;
    let sizes: Vec<usize> = net.params().iter().map(|p| p.len()).collect();
    assert_eq!(sizes, grads.iter().map(Vec::len).collect::<Vec<_>>());
    for (t, tensor_grads) in grads.iter().enumerate() {
        for (i, &a) in tensor_grads.iter().enumerate() {
            let mut plus = net.clone();
            plus.params_mut()[t][i] += h;
            let mut minus = net.clone();
            minus.params_mut()[t][i] -= h;
            let numeric = (objective(&plus, x, y) - objective(&minus, x, y)) / (2.0 * h);
            let err = (a - numeric).abs() / (1e-6 + a.abs().max(numeric.abs()));
            assert!(a.is_finite(), "tensor {t} index {i}");
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let net = mlp();
    let (x, y) = inputs(&net, 4);
    let grads = analytic(&net, &x, &y);
    let err = worst_error(&net, &x, &y, &grads);
    eprintln!("worst relative error {err:e}");
    assert!(err < 1e-4, "worst relative error {err}");
}

#[test]
fn dropout_gradients_match_finite_differences() {
    // The mask (fixed with the noise) drops inputs and rescales the kept ones: the backward
    // pass must route the gradient through the same mask and scale, and the weight decay
    // adds λθ.
    let net = dropout_mlp();
    let (x, y) = inputs(&net, 4);
    let grads = analytic(&net, &x, &y);
    // Two tensors (θ, bias) per layer: no variances.
    assert_eq!(grads.len(), 6);
    let err = worst_error(&net, &x, &y, &grads);
    eprintln!("worst relative error {err:e}");
    assert!(err < 1e-4, "worst relative error {err}");
    // The masks drop something: the first layer's forward differs from the mask-free one.
    let (masked, _) = net.forward_train(x.clone(), &mut noise);
    let plain = net.logits_deterministic(&x);
    assert!((&masked - &plain).mapv(f64::abs).sum() > 1e-3);
}

#[test]
fn dropout_masks_keep_inputs_at_the_configured_rate() {
    // The mask of a layer keeps an input when its normal draw is at or above the
    // p-quantile: over many draws the kept fraction is 1 - p within a binomial bound.
    use super::layers::normal_quantile;
    for p in [0.1f64, 0.5, 0.8] {
        let z = normal_quantile(p);
        let n = 200_000;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let kept = (0..n).filter(|_| normal(&mut rng) >= z).count() as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((kept - (1.0 - p)).abs() < 5.0 * sd, "p {p}: kept {kept}");
    }
    assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
    assert!(normal_quantile(0.5).abs() < 1e-12);
}

/// A `[[layers]]`-style network over a `[2, 9, 1]` time series: a strided, padded VD
/// convolution, a deterministic convolution, a `[2, 1]` max pool, an MC dropout layer.
fn time_series_net() -> Network<f64> {
    use crate::train::conv::ConvGeom;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    let TrainedLayer::Conv2d {
        theta,
        log_sigma2,
        bias,
        ..
    } = conv(&mut rng, 2, 3, 3)
    else {
        unreachable!()
    };
    // Stride 2 and padding 1 over the time axis need a [3, 1] kernel.
    let strided = TrainedLayer::Conv2d {
        theta: theta.slice(ndarray::s![.., .., .., 0..1]).to_owned(),
        log_sigma2: log_sigma2.slice(ndarray::s![.., .., .., 0..1]).to_owned(),
        bias,
        relu: true,
        geom: ConvGeom {
            stride: 2,
            padding: 1,
        },
    };
    let TrainedLayer::Conv2d { theta, bias, .. } = conv(&mut rng, 3, 4, 2) else {
        unreachable!()
    };
    let plain = TrainedLayer::PlainConv {
        theta: theta.slice(ndarray::s![.., .., .., 0..1]).to_owned(),
        bias,
        relu: true,
        geom: ConvGeom::VALID,
    };
    let TrainedLayer::Linear {
        theta, bias, relu, ..
    } = linear(&mut rng, 8, 5, true)
    else {
        unreachable!()
    };
    Network {
        arch: Arch::Custom,
        input_shape: [2, 9, 1],
        prune_threshold: 3.0,
        layers: vec![
            strided,
            plain,
            // 9 -> conv (stride 2, padding 1) 5 -> conv 4 -> pool 2: 4 channels x 2 steps.
            TrainedLayer::MaxPool {
                window: [2, 1],
                stride: 2,
            },
            TrainedLayer::Flatten,
            TrainedLayer::DropoutLinear {
                theta,
                bias,
                relu,
                p: 0.25,
            },
            linear(&mut rng, 5, 3, false),
        ],
    }
}

#[test]
fn layer_list_gradients_match_finite_differences() {
    let net = time_series_net();
    let (x, y) = inputs(&net, 3);
    let grads = analytic(&net, &x, &y);
    // θ, log σ², bias; θ, bias; θ, bias; θ, log σ², bias.
    assert_eq!(grads.len(), 10);
    let err = worst_error(&net, &x, &y, &grads);
    eprintln!("worst relative error {err:e}");
    assert!(err < 1e-4, "worst relative error {err}");
    // A padded stride-2 convolution too (over an 8x8 image).
    let mut net = convnet();
    if let TrainedLayer::Conv2d { geom, .. } = &mut net.layers[0] {
        *geom = crate::train::conv::ConvGeom {
            stride: 2,
            padding: 1,
        };
    }
    // 8x8 -> 4x4 -> pool 2x2 -> conv 2 -> 1x1: the linear layer reads 4 values.
    let TrainedLayer::Linear { theta, .. } = &net.layers[4] else {
        unreachable!()
    };
    let theta = theta.slice(ndarray::s![.., 0..4]).to_owned();
    if let TrainedLayer::Linear {
        theta: t,
        log_sigma2,
        ..
    } = &mut net.layers[4]
    {
        *log_sigma2 = log_sigma2.slice(ndarray::s![.., 0..4]).to_owned();
        *t = theta;
    }
    let (x, y) = inputs(&net, 2);
    let grads = analytic(&net, &x, &y);
    let err = worst_error(&net, &x, &y, &grads);
    assert!(err < 1e-4, "padded: worst relative error {err}");
}

#[test]
fn gap_gradients_match_finite_differences() {
    let net = gap_net();
    let (x, y) = inputs(&net, 3);
    let grads = analytic(&net, &x, &y);
    // θ, log σ², bias of the convolution and of the linear layer.
    assert_eq!(grads.len(), 6);
    let err = worst_error(&net, &x, &y, &grads);
    eprintln!("worst relative error {err:e}");
    assert!(err < 1e-4, "worst relative error {err}");
    // The check notices a pool backward that forgets the 1 / (H W) (here: 10% of one
    // gradient of the convolution's means, which only the pool's backward reaches).
    let mut wrong = grads.clone();
    let (i, _) = wrong[0]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap();
    wrong[0][i] *= 0.9;
    assert!(worst_error(&net, &x, &y, &wrong) > 1e-2);
}

#[test]
fn conv_gradients_match_finite_differences() {
    let net = convnet();
    let (x, y) = inputs(&net, 3);
    let grads = analytic(&net, &x, &y);
    let err = worst_error(&net, &x, &y, &grads);
    eprintln!("worst relative error {err:e}");
    assert!(err < 1e-4, "worst relative error {err}");
}

#[test]
fn gradient_check_detects_a_wrong_gradient() {
    let net = convnet();
    let (x, y) = inputs(&net, 2);
    let mut grads = analytic(&net, &x, &y);
    // Drop 10% of one log-variance gradient of the first conv (the variance path of the layer
    // whose input gradient is never computed): the check must notice.
    let (i, _) = grads[1]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap();
    grads[1][i] *= 0.9;
    assert!(worst_error(&net, &x, &y, &grads) > 1e-2);
}

#[test]
fn variance_path_carries_gradient() {
    // With the CE only (no KL), log sigma^2 must still receive gradient through the noise.
    let net = mlp();
    let (x, y) = inputs(&net, 4);
    let (logits, tape) = net.forward_train(x, &mut noise);
    let (_, d) = softmax_cross_entropy(&logits, &y);
    let grads = net.backward(tape, d);
    let norm: f64 = grads[1].iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "{norm}");
}

/// Direct NCHW reference of the deterministic pruned forward, written with plain loops: pins the
/// layout conventions documented on [`Network`] (weight order, flatten order, pooling).
fn reference_logits(net: &Network<f64>, x: &Array2<f64>) -> Array2<f64> {
    let thr = net.prune_threshold;
    let keep = |t: f64, l: f64| {
        if super::vd::log_alpha(t, l) > thr {
            0.0
        } else {
            t
        }
    };
    let rows: Vec<Vec<f64>> = x
        .outer_iter()
        .map(|row| {
            let [c0, h0, w0] = net.input_shape;
            let mut maps = Some((row.to_vec(), c0, h0, w0));
            let mut vec = Vec::new();
            for layer in &net.layers {
                match layer {
                    TrainedLayer::Conv2d {
                        theta,
                        log_sigma2,
                        bias,
                        relu,
                        geom,
                    } => {
                        assert_eq!(*geom, crate::train::conv::ConvGeom::VALID);
                        let (m, c, h, w) = maps.take().unwrap();
                        let (o, _, kh, kw) = theta.dim();
                        let (ho, wo) = (h - kh + 1, w - kw + 1);
                        let mut out = vec![0.0; o * ho * wo];
                        for oc in 0..o {
                            for i in 0..ho {
                                for j in 0..wo {
                                    let mut s = bias[oc];
                                    for ic in 0..c {
                                        for u in 0..kh {
                                            for v in 0..kw {
                                                let wt = keep(
                                                    theta[[oc, ic, u, v]],
                                                    log_sigma2[[oc, ic, u, v]],
                                                );
                                                s += wt * m[(ic * h + i + u) * w + j + v];
                                            }
                                        }
                                    }
                                    out[(oc * ho + i) * wo + j] =
                                        if *relu { s.max(0.0) } else { s };
                                }
                            }
                        }
                        maps = Some((out, o, ho, wo));
                    }
                    TrainedLayer::MaxPool2 => {
                        let (m, c, h, w) = maps.take().unwrap();
                        let (ho, wo) = (h / 2, w / 2);
                        let mut out = vec![0.0; c * ho * wo];
                        for ch in 0..c {
                            for i in 0..ho {
                                for j in 0..wo {
                                    let at = |a: usize, b: usize| {
                                        m[(ch * h + 2 * i + a) * w + 2 * j + b]
                                    };
                                    out[(ch * ho + i) * wo + j] =
                                        at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                                }
                            }
                        }
                        maps = Some((out, c, ho, wo));
                    }
                    TrainedLayer::Flatten => vec = maps.take().unwrap().0,
                    TrainedLayer::GlobalAvgPool => {
                        let (m, c, h, w) = maps.take().unwrap();
                        vec = (0..c)
                            .map(|ch| {
                                m[ch * h * w..(ch + 1) * h * w].iter().sum::<f64>() / (h * w) as f64
                            })
                            .collect();
                    }
                    TrainedLayer::DropoutLinear {
                        theta, bias, relu, ..
                    } => {
                        if let Some((m, ..)) = maps.take() {
                            vec = m;
                        }
                        // The deterministic network: inverted dropout's expectation.
                        vec = (0..theta.nrows())
                            .map(|o| {
                                let s: f64 = bias[o]
                                    + (0..theta.ncols())
                                        .map(|i| theta[[o, i]] * vec[i])
                                        .sum::<f64>();
                                if *relu {
                                    s.max(0.0)
                                } else {
                                    s
                                }
                            })
                            .collect();
                    }
                    TrainedLayer::PlainConv { .. } | TrainedLayer::MaxPool { .. } => {
                        unimplemented!("the reference covers the LeNet layers")
                    }
                    TrainedLayer::Linear {
                        theta,
                        log_sigma2,
                        bias,
                        relu,
                    } => {
                        if let Some((m, ..)) = maps.take() {
                            vec = m;
                        }
                        vec = (0..theta.nrows())
                            .map(|o| {
                                let s: f64 = bias[o]
                                    + (0..theta.ncols())
                                        .map(|i| keep(theta[[o, i]], log_sigma2[[o, i]]) * vec[i])
                                        .sum::<f64>();
                                if *relu {
                                    s.max(0.0)
                                } else {
                                    s
                                }
                            })
                            .collect();
                    }
                }
            }
            vec
        })
        .collect();
    let k = rows[0].len();
    Array2::from_shape_vec((rows.len(), k), rows.concat()).unwrap()
}

#[test]
fn deterministic_forward_matches_nchw_reference() {
    for mut net in [convnet(), mlp(), dropout_mlp(), gap_net()] {
        // Prune a good share of weights so the mask matters.
        for layer in &mut net.layers {
            if let TrainedLayer::Conv2d { log_sigma2, .. } = layer {
                log_sigma2.iter_mut().step_by(3).for_each(|l| *l = 5.0);
            }
            if let TrainedLayer::Linear { log_sigma2, .. } = layer {
                log_sigma2.iter_mut().step_by(3).for_each(|l| *l = 5.0);
            }
        }
        // (MC dropout layers have no variances, so nothing to prune.)
        let sparsity = net.sparsity();
        assert!(sparsity.total == 0 || sparsity.fraction() > 0.2);
        let (x, _) = inputs(&net, 3);
        let got = net.logits_deterministic(&x);
        let want = reference_logits(&net, &x);
        let diff = (&got - &want).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        assert!(diff < 1e-12, "max difference {diff}");
        let p = net.predict_deterministic(&x);
        for row in p.outer_iter() {
            assert!((row.sum() - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn lenet_shapes_chain() {
    for arch in [Arch::Lenet300, Arch::Lenet5] {
        let net = arch.build::<f32>(1, -10.0, 3.0);
        let x = Array2::from_elem((3, 784), 0.5f32);
        assert_eq!(net.predict_deterministic(&x).dim(), (3, 10));
        // A few near-zero initial means are already above the threshold (|theta| < ~1.5e-3).
        assert!(net.sparsity().fraction() < 0.05);
        let weights: usize = net.sparsity().layers.iter().map(|l| l.total).sum();
        let expect = match arch {
            Arch::Lenet300 => 784 * 300 + 300 * 100 + 100 * 10,
            Arch::Lenet5 => 500 + 25_000 + 400_000 + 5_000,
            Arch::ResnetEe | Arch::Custom => unreachable!("not a built-in layer sequence"),
        };
        assert_eq!(weights, expect);
        assert_eq!(
            net.log_alpha().iter().flatten().count(),
            net.sparsity().layers.len()
        );
    }
}
