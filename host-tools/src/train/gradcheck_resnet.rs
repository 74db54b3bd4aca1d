//! Finite-difference checks of the early-exit ResNet's backward passes, in `f64`: the strided,
//! padded VD convolution (parameters and input, mean and variance paths), global average
//! pooling, the residual addition with its ReLU, and the whole network end to end under both
//! exit objectives plus the KL term. The exit objectives alone are checked in
//! [`super::exits`]. As in [`super::gradcheck`], log variances are drawn around -2 so the
//! variance path carries real weight, and the noise is held fixed.

use ndarray::{Array1, Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::conv::{self, ConvGeom};
use super::exits::{exit_loss_sum, DepthPrior, ExitObjective};
use super::resnet::{residual_relu, residual_relu_backward, ResNetEe, ResNetSpec, VdConv};
use super::tensor::{mix_seed, Real};

const KL_SCALE: f64 = 0.01;
const H: f64 = 1e-5;

fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    f64::sample_normal(rng)
}

/// Fixed noise per stream, as in the trainer's callback.
fn noise(layer: usize, eps: &mut [f64]) {
    let mut r = rng(mix_seed(&[77, layer as u64]));
    eps.iter_mut().for_each(|e| *e = normal(&mut r));
}

/// `|a - n| / (1e-6 + max(|a|, |n|))`.
fn rel_err(a: f64, n: f64) -> f64 {
    (a - n).abs() / (1e-6 + a.abs().max(n.abs()))
}

fn random_conv(
    r: &mut Xoshiro256PlusPlus,
    c: usize,
    o: usize,
    geom: ConvGeom,
    relu: bool,
) -> VdConv<f64> {
    VdConv {
        theta: Array4::from_shape_simple_fn((o, c, 3, 3), || 0.6 * normal(r)),
        log_sigma2: Array4::from_shape_simple_fn((o, c, 3, 3), || r.random_range(-3.5..-0.5)),
        bias: Array1::from_shape_simple_fn(o, || 0.1 * normal(r)),
        stride: geom.stride,
        padding: geom.padding,
        relu,
    }
}

/// `sum(conv(x) * weights)` with the conv's fixed noise.
fn conv_objective(c: &VdConv<f64>, x: &Array4<f64>, weights: &Array4<f64>) -> f64 {
    let geom = ConvGeom {
        stride: c.stride,
        padding: c.padding,
    };
    let (ho, wo) = conv::out_hw(&c.theta, x.dim(), geom);
    let mut eps = Array2::zeros((c.theta.dim().0, x.dim().1 * ho * wo));
    noise(0, eps.as_slice_mut().unwrap());
    let (y, _) = conv::vd_conv_forward(
        &c.theta,
        &c.log_sigma2,
        &c.bias,
        c.relu,
        geom,
        x.view(),
        eps,
    );
    (&y * weights).sum()
}

#[test]
fn strided_padded_conv_gradients_match_finite_differences() {
    let geoms = [(1, 1), (2, 1), (2, 0), (1, 0)];
    for (gi, &(stride, padding)) in geoms.iter().enumerate() {
        for relu in [false, true] {
            let geom = ConvGeom { stride, padding };
            let mut r = rng(100 + gi as u64);
            let c = random_conv(&mut r, 2, 3, geom, relu);
            let x = Array4::from_shape_simple_fn((2, 2, 7, 6), || r.random_range(-1.0..1.0));
            let (ho, wo) = conv::out_hw(&c.theta, x.dim(), geom);
            let weights = Array4::from_shape_simple_fn((3, 2, ho, wo), || normal(&mut r));
            let mut eps = Array2::zeros((3, 2 * ho * wo));
            noise(0, eps.as_slice_mut().unwrap());
            let (_, cache) =
                conv::vd_conv_forward(&c.theta, &c.log_sigma2, &c.bias, relu, geom, x.view(), eps);
            let (grads, dx) = conv::vd_conv_backward(&c.theta, cache, weights.clone(), true);
            let dx = dx.unwrap();
            let mut worst = 0.0f64;
            let analytic = [&grads.theta, &grads.log_sigma2, &grads.bias];
            for (t, a) in analytic.iter().enumerate() {
                for (i, &a) in a.iter().enumerate() {
                    let f = |d: f64| {
                        let mut c2 = c.clone();
                        let s = match t {
                            0 => c2.theta.as_slice_mut().unwrap(),
                            1 => c2.log_sigma2.as_slice_mut().unwrap(),
                            _ => c2.bias.as_slice_mut().unwrap(),
                        };
                        s[i] += d;
                        conv_objective(&c2, &x, &weights)
                    };
                    worst = worst.max(rel_err(a, (f(H) - f(-H)) / (2.0 * H)));
                }
            }
            for (i, &a) in dx.iter().enumerate() {
                let f = |d: f64| {
                    let mut x2 = x.clone();
                    x2.as_slice_mut().unwrap()[i] += d;
                    conv_objective(&c, &x2, &weights)
                };
                worst = worst.max(rel_err(a, (f(H) - f(-H)) / (2.0 * H)));
            }
            eprintln!("stride {stride} padding {padding} relu {relu}: worst {worst:e}");
            assert!(
                worst < 1e-4,
                "stride {stride} padding {padding} relu {relu}: {worst}"
            );
        }
    }
}

#[test]
fn global_average_pool_gradient_matches_finite_differences() {
    let mut r = rng(5);
    let x = Array4::from_shape_simple_fn((3, 2, 4, 5), || normal(&mut r));
    let weights = Array2::from_shape_simple_fn((2, 3), || normal(&mut r));
    let f = |x: &Array4<f64>| (&conv::global_avg_pool(x.view()) * &weights).sum();
    let dx = conv::global_avg_pool_backward(&weights, x.dim());
    for (i, &a) in dx.iter().enumerate() {
        let mut p = x.clone();
        p.as_slice_mut().unwrap()[i] += H;
        let mut m = x.clone();
        m.as_slice_mut().unwrap()[i] -= H;
        let n = (f(&p) - f(&m)) / (2.0 * H);
        assert!(rel_err(a, n) < 1e-8, "{i}: {a} vs {n}");
    }
}

#[test]
fn residual_add_gradient_matches_finite_differences() {
    let mut r = rng(6);
    let f0 = Array4::from_shape_simple_fn((2, 2, 3, 3), || normal(&mut r));
    let skip = Array4::from_shape_simple_fn((2, 2, 3, 3), || normal(&mut r));
    let weights = Array4::from_shape_simple_fn((2, 2, 3, 3), || normal(&mut r));
    let objective = |f: &Array4<f64>, s: &Array4<f64>| {
        let mut out = f.clone();
        residual_relu(&mut out, s);
        (&out * &weights).sum()
    };
    let mut out = f0.clone();
    residual_relu(&mut out, &skip);
    assert!(out.iter().any(|&v| v == 0.0) && out.iter().any(|&v| v > 0.0));
    let mut g = weights.clone();
    residual_relu_backward(&mut g, &out);
    for i in 0..f0.len() {
        for which in 0..2 {
            let shifted = |d: f64| {
                let (mut f, mut s) = (f0.clone(), skip.clone());
                let t = if which == 0 { &mut f } else { &mut s };
                t.as_slice_mut().unwrap()[i] += d;
                objective(&f, &s)
            };
            let n = (shifted(H) - shifted(-H)) / (2.0 * H);
            let a = g.as_slice().unwrap()[i];
            assert!(rel_err(a, n) < 1e-8, "{i} {which}: {a} vs {n}");
        }
    }
}

/// A tiny early-exit network (1x7x7 inputs, 2 channels at 4x4, 3 blocks, 3 classes) with random
/// parameters.
fn tiny_resnet() -> ResNetEe<f64> {
    let spec = ResNetSpec {
        input_shape: [1, 7, 7],
        channels: 2,
        blocks: 3,
        stem_kernel: 3,
        stem_stride: 2,
        stem_padding: 1,
        classes: 3,
    };
    let mut net = ResNetEe::<f64>::build(&spec, 1, -10.0, 3.0, DepthPrior::new(0.3).unwrap());
    let mut r = rng(21);
    for (t, p) in net.params_mut().into_iter().enumerate() {
        for v in p.iter_mut() {
            *v = match t % 3 {
                0 => 0.7 * normal(&mut r),
                1 => r.random_range(-3.5..-0.5),
                _ => 0.1 * normal(&mut r),
            };
        }
    }
    net
}

fn tiny_inputs(b: usize) -> (Array2<f64>, Vec<usize>) {
    let mut r = rng(22);
    let x = Array2::from_shape_simple_fn((b, 49), || r.random_range(0.0..1.0));
    (x, (0..b).map(|i| i % 3).collect())
}

fn network_objective(net: &ResNetEe<f64>, x: &Array2<f64>, y: &[usize], obj: ExitObjective) -> f64 {
    let (logits, _) = net.forward_train(x.clone(), &mut noise);
    let log_prior = net.prior.log_probabilities(net.depth());
    exit_loss_sum(&logits, y, &log_prior, obj, y.len()).0 / y.len() as f64 + KL_SCALE * net.kl()
}

fn network_gradients(
    net: &ResNetEe<f64>,
    x: &Array2<f64>,
    y: &[usize],
    obj: ExitObjective,
) -> Vec<Vec<f64>> {
    let (logits, tape) = net.forward_train(x.clone(), &mut noise);
    let log_prior = net.prior.log_probabilities(net.depth());
    let (_, dlogits) = exit_loss_sum(&logits, y, &log_prior, obj, y.len());
    let mut grads = net.backward(tape, dlogits);
    net.add_kl_grad(&mut grads, KL_SCALE);
    grads
}

fn worst_network_error(
    net: &ResNetEe<f64>,
    x: &Array2<f64>,
    y: &[usize],
    obj: ExitObjective,
    grads: &[Vec<f64>],
) -> f64 {
    let sizes: Vec<usize> = net.params().iter().map(|p| p.len()).collect();
    assert_eq!(sizes, grads.iter().map(Vec::len).collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for (t, g) in grads.iter().enumerate() {
        for (i, &a) in g.iter().enumerate() {
            assert!(a.is_finite(), "tensor {t} index {i}");
            let shifted = |d: f64| {
                let mut n = net.clone();
                n.params_mut()[t][i] += d;
                network_objective(&n, x, y, obj)
            };
            worst = worst.max(rel_err(a, (shifted(H) - shifted(-H)) / (2.0 * H)));
        }
    }
    worst
}

#[test]
fn resnet_gradients_match_finite_differences() {
    let net = tiny_resnet();
    let (x, y) = tiny_inputs(3);
    for obj in [ExitObjective::Mixture, ExitObjective::Weighted] {
        let grads = network_gradients(&net, &x, &y, obj);
        let err = worst_network_error(&net, &x, &y, obj, &grads);
        eprintln!("{obj}: worst relative error {err:e}");
        assert!(err < 1e-4, "{obj}: worst relative error {err}");
    }
}

#[test]
fn resnet_gradient_check_detects_a_wrong_gradient() {
    let net = tiny_resnet();
    let (x, y) = tiny_inputs(2);
    let obj = ExitObjective::Mixture;
    let mut grads = network_gradients(&net, &x, &y, obj);
    // Scale the largest log-variance gradient of the stem (reached only through every block's
    // input gradient) by 0.9: the check must notice.
    let (i, _) = grads[1]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap();
    grads[1][i] *= 0.9;
    assert!(worst_network_error(&net, &x, &y, obj, &grads) > 1e-2);
}

/// Plain-loop NCHW reference of the deterministic pruned forward of one image: pins the graph and
/// layout documented on [`ResNetEe`] for exporters.
fn reference_exit_logits(net: &ResNetEe<f64>, image: &[f64]) -> Vec<Vec<f64>> {
    let thr = net.prune_threshold;
    let keep = |t: f64, l: f64| {
        if super::vd::log_alpha(t, l) > thr {
            0.0
        } else {
            t
        }
    };
    // (maps, channels, rows, cols)
    let conv = |c: &VdConv<f64>, m: &[f64], ch: usize, h: usize, w: usize, relu: bool| {
        let (o, _, kh, kw) = c.theta.dim();
        let (s, p) = (c.stride as isize, c.padding as isize);
        let ho = (h + 2 * c.padding - kh) / c.stride + 1;
        let wo = (w + 2 * c.padding - kw) / c.stride + 1;
        let mut out = vec![0.0; o * ho * wo];
        for oc in 0..o {
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = c.bias[oc];
                    for ic in 0..ch {
                        for u in 0..kh {
                            for v in 0..kw {
                                let iy = i as isize * s + u as isize - p;
                                let ix = j as isize * s + v as isize - p;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let wt =
                                    keep(c.theta[[oc, ic, u, v]], c.log_sigma2[[oc, ic, u, v]]);
                                acc += wt * m[(ic * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                    out[(oc * ho + i) * wo + j] = if relu { acc.max(0.0) } else { acc };
                }
            }
        }
        (out, o, ho, wo)
    };
    let [c0, h0, w0] = net.input_shape;
    let (mut h, ch, hh, ww) = conv(&net.stem, image, c0, h0, w0, true);
    let mut logits = Vec::new();
    for (block, exit) in net.blocks.iter().zip(&net.exits) {
        let (a, ..) = conv(&block.conv_a, &h, ch, hh, ww, true);
        let (f, ..) = conv(&block.conv_b, &a, ch, hh, ww, false);
        h = f.iter().zip(&h).map(|(f, x)| (f + x).max(0.0)).collect();
        let pooled: Vec<f64> = (0..ch)
            .map(|c| h[c * hh * ww..(c + 1) * hh * ww].iter().sum::<f64>() / (hh * ww) as f64)
            .collect();
        logits.push(
            (0..exit.theta.nrows())
                .map(|k| {
                    exit.bias[k]
                        + (0..ch)
                            .map(|c| keep(exit.theta[[k, c]], exit.log_sigma2[[k, c]]) * pooled[c])
                            .sum::<f64>()
                })
                .collect(),
        );
    }
    logits
}

#[test]
fn resnet_deterministic_forward_matches_nchw_reference() {
    let mut net = tiny_resnet();
    // Prune every third weight so the mask matters.
    for (t, p) in net.params_mut().into_iter().enumerate() {
        if t % 3 == 1 {
            p.iter_mut().step_by(3).for_each(|l| *l = 5.0);
        }
    }
    assert!(net.sparsity().fraction() > 0.2);
    let (x, _) = tiny_inputs(4);
    let got = net.exit_logits_deterministic(&x);
    assert_eq!(got.len(), 3);
    for (b, row) in x.outer_iter().enumerate() {
        let want = reference_exit_logits(&net, row.as_slice().unwrap());
        for (l, w) in want.iter().enumerate() {
            for (k, &v) in w.iter().enumerate() {
                assert!(
                    (got[l][[b, k]] - v).abs() < 1e-12,
                    "image {b} exit {l} class {k}"
                );
            }
        }
    }
    let probs = net.exit_probabilities(&x);
    assert!(probs
        .iter()
        .all(|p| p.outer_iter().all(|r| (r.sum() - 1.0).abs() < 1e-12)));
}

#[test]
fn default_resnet_is_small() {
    let config = crate::train::TrainConfig::for_arch(crate::train::Arch::ResnetEe);
    let model = config.build_model::<f32>().unwrap();
    let net = model.as_resnet().unwrap();
    assert_eq!((net.depth(), net.feature_size()), (4, (7, 7)));
    assert_eq!(net.weight_layers().len(), 13);
    assert_eq!(net.weight_layer_names()[12], "exit4");
    assert_eq!(net.sparsity().total, 32 * 16 + 4 * (2 * 9 * 32 * 32 + 320));
    // Stem 25,088 MACs, 903,168 per block, 320 per exit head.
    let macs = net.dense_macs_per_exit();
    let per_block = 2 * 9 * 32 * 32 * 49;
    let expect: Vec<u64> = (1..=4).map(|l| 512 * 49 + l * per_block + 320).collect();
    assert_eq!(macs, expect);
    let x = Array2::from_elem((2, 784), 0.5f32);
    let logits = net.exit_logits_deterministic(&x);
    assert!(logits.iter().all(|l| l.dim() == (2, 10)));
    assert_eq!(net.prior.probabilities(4).len(), 4);
    assert_eq!(net.validate(), Ok(()));
    assert_eq!(tiny_resnet().validate(), Ok(()));
    let mut bad = net.clone();
    bad.exits.pop();
    assert!(bad.validate().is_err());
    let mut bad = net.clone();
    bad.blocks[1].conv_b.stride = 2;
    assert!(bad.validate().unwrap_err().0.contains("block2.conv_b"));
    let mut bad = net.clone();
    bad.exits[2].bias = ndarray::Array1::zeros(9);
    assert!(bad.validate().unwrap_err().0.contains("exit3"));
    let mut bad = net.clone();
    bad.blocks[0].conv_a.log_sigma2 = ndarray::Array4::zeros((1, 1, 1, 1));
    assert!(bad.validate().is_err());
    let mut bad = net.clone();
    bad.prior.lambda = 1.0;
    assert!(bad.validate().is_err());
}
