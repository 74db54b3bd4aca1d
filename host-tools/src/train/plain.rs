//! Layers of a `[[layers]]` architecture that the LeNets did not need: a deterministic
//! (point-weight) convolution with stride and padding, and max pooling over any
//! `kh x kw` window with any stride (1-D pooling over time series laid out `[C, T, 1]`).
//!
//! Activations are CBHW `[channels, batch, height, width]`, as everywhere in the trainer.

use ndarray::{Array1, Array2, Array4, ArrayView4, Axis};
use rayon::prelude::*;

use super::conv::{fold, out_hw, unfold, ConvGeom};
use super::layers;
use super::tensor::Real;

/// What [`plain_conv_backward`] needs from [`plain_conv_forward`].
#[derive(Debug)]
pub(crate) struct PlainConvCache<T> {
    /// The patch matrix `[C*kh*kw, B*Ho*Wo]` of the input.
    col: Array2<T>,
    /// The output `[O, B*Ho*Wo]` (after the ReLU, when there is one).
    out: Array2<T>,
    relu: bool,
    input_dim: (usize, usize, usize, usize),
    geom: ConvGeom,
}

/// Training forward of a deterministic convolution: `y = W * x + b` (then ReLU), CBHW in and
/// out, `theta` `[O, C, kh, kw]`.
pub(crate) fn plain_conv_forward<T: Real>(
    theta: &Array4<T>,
    bias: &Array1<T>,
    relu: bool,
    geom: ConvGeom,
    x: ArrayView4<'_, T>,
) -> (Array4<T>, PlainConvCache<T>) {
    let (_, _, kh, kw) = theta.dim();
    let input_dim = x.dim();
    let (ho, wo) = out_hw(theta, input_dim, geom);
    let (col, _) = unfold(x, kh, kw, geom, false);
    let mut out = layers::kernel_matrix(theta).dot(&col);
    out += &bias.view().insert_axis(Axis(1));
    if relu {
        out.par_mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
    }
    let o = out.nrows();
    let y = layers::standard(out.clone())
        .into_shape_with_order((o, input_dim.1, ho, wo))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    (
        y,
        PlainConvCache {
            col,
            out,
            relu,
            input_dim,
            geom,
        },
    )
}

/// Backward of [`plain_conv_forward`]: `g` is `dL/dy` in CBHW. Returns the gradients of
/// `theta` and `bias` (flat, in that order) and, when asked, `dL/dx` in CBHW.
pub(crate) fn plain_conv_backward<T: Real>(
    theta: &Array4<T>,
    cache: PlainConvCache<T>,
    g: Array4<T>,
    need_dx: bool,
) -> (Vec<Vec<T>>, Option<Array4<T>>) {
    let (o, b, ho, wo) = g.dim();
    let mut g = layers::standard4(g)
        .into_shape_with_order((o, b * ho * wo))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    if cache.relu {
        ndarray::Zip::from(&mut g)
            .and(&cache.out)
            .par_for_each(|d, &y| {
                if y <= T::zero() {
                    *d = T::zero();
                }
            });
    }
    let dtheta = g.dot(&cache.col.t());
    let dbias = g.sum_axis(Axis(1));
    let (_, _, kh, kw) = theta.dim();
    let dx = need_dx.then(|| {
        let dcol = layers::kernel_matrix(theta).t().dot(&g);
        fold(dcol.view(), cache.input_dim, kh, kw, cache.geom)
    });
    (vec![dtheta.into_raw_vec_and_offset().0, dbias.to_vec()], dx)
}

/// Output `(Ho, Wo)` of max pooling with `window` and `stride` over `h x w` maps (trailing
/// rows and columns that do not fill a window are dropped); `None` when a window does not fit.
pub(crate) fn pool_out(
    (h, w): (usize, usize),
    window: [usize; 2],
    stride: usize,
) -> Option<(usize, usize)> {
    let geom = ConvGeom { stride, padding: 0 };
    Some((geom.out_size(h, window[0])?, geom.out_size(w, window[1])?))
}

/// Max pooling of CBHW `x` over `window` (height, width) with `stride`. Returns the pooled
/// tensor and, per output, the index within its input plane of the value that won (the first
/// of equal values, scanning rows then columns).
pub(crate) fn maxpool_forward<T: Real>(
    x: ArrayView4<'_, T>,
    window: [usize; 2],
    stride: usize,
) -> (Array4<T>, Vec<u32>) {
    let (c, b, h, w) = x.dim();
    let (ho, wo) = pool_out((h, w), window, stride).unwrap_or((0, 0));
    let x = x.as_standard_layout();
    let xs = x
        .as_slice()
        .unwrap_or_else(|| unreachable!("standard layout"));
    let mut out = vec![T::zero(); c * b * ho * wo];
    let mut arg = vec![0u32; out.len()];
    if ho * wo > 0 {
        out.par_chunks_mut(ho * wo)
            .zip(arg.par_chunks_mut(ho * wo))
            .enumerate()
            .for_each(|(p, (o, a))| {
                let plane = &xs[p * h * w..(p + 1) * h * w];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut best = (oy * stride * w + ox * stride, T::neg_infinity());
                        for ky in 0..window[0] {
                            for kx in 0..window[1] {
                                let i = (oy * stride + ky) * w + ox * stride + kx;
                                // NaN wins, so that it propagates instead of hiding.
                                if plane[i] > best.1 || plane[i].is_nan() {
                                    best = (i, plane[i]);
                                }
                            }
                        }
                        o[oy * wo + ox] = best.1;
                        a[oy * wo + ox] = best.0 as u32;
                    }
                }
            });
    }
    let y = Array4::from_shape_vec((c, b, ho, wo), out)
        .unwrap_or_else(|_| unreachable!("sizes computed above"));
    (y, arg)
}

/// Backward of [`maxpool_forward`]: each output's gradient goes to the input that won its
/// window (summed where overlapping windows share a winner).
pub(crate) fn maxpool_backward<T: Real>(
    g: &Array4<T>,
    arg: &[u32],
    (c, b, h, w): (usize, usize, usize, usize),
) -> Array4<T> {
    let (_, _, ho, wo) = g.dim();
    let g = g.as_standard_layout();
    let gs = g
        .as_slice()
        .unwrap_or_else(|| unreachable!("standard layout"));
    let mut dx = vec![T::zero(); c * b * h * w];
    if ho * wo > 0 && h * w > 0 {
        dx.par_chunks_mut(h * w).enumerate().for_each(|(p, d)| {
            for q in p * ho * wo..(p + 1) * ho * wo {
                d[arg[q] as usize] += gs[q];
            }
        });
    }
    Array4::from_shape_vec((c, b, h, w), dx)
        .unwrap_or_else(|_| unreachable!("sizes computed above"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::conv::conv_eval;
    use ndarray::Array;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn random4(rng: &mut Xoshiro256PlusPlus, d: (usize, usize, usize, usize)) -> Array4<f64> {
        Array::from_shape_simple_fn(d, || rng.random_range(-1.0..1.0))
    }

    /// Loss `sum(y * r)` for a fixed random `r`, so `dL/dy = r`.
    #[test]
    fn plain_conv_gradients_match_finite_differences() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let geom = ConvGeom {
            stride: 2,
            padding: 1,
        };
        let x = random4(&mut rng, (2, 3, 7, 5));
        let mut theta = random4(&mut rng, (4, 2, 3, 2));
        let bias = Array1::from_shape_simple_fn(4, || rng.random_range(-0.5..0.5));
        let (y, cache) = plain_conv_forward(&theta, &bias, true, geom, x.view());
        // The forward is the evaluation convolution.
        let eval = conv_eval(&theta, &bias, true, geom, x.view());
        assert!((&y - &eval).iter().all(|d| d.abs() < 1e-12));
        let r = random4(&mut rng, y.dim());
        let loss = |theta: &Array4<f64>, x: &Array4<f64>| -> f64 {
            let (y, _) = plain_conv_forward(theta, &bias, true, geom, x.view());
            (&y * &r).sum()
        };
        let (grads, dx) = plain_conv_backward(&theta, cache, r.clone(), true);
        let dx = dx.unwrap();
        let h = 1e-6;
        for i in [0, 7, 19, 40] {
            let flat = theta.as_slice_mut().unwrap();
            let t0 = flat[i];
            flat[i] = t0 + h;
            let up = loss(&theta, &x);
            theta.as_slice_mut().unwrap()[i] = t0 - h;
            let down = loss(&theta, &x);
            theta.as_slice_mut().unwrap()[i] = t0;
            let numeric = (up - down) / (2.0 * h);
            assert!((numeric - grads[0][i]).abs() < 1e-6, "theta {i}");
        }
        let mut xp = x.clone();
        for i in [0, 11, 37, 100] {
            let x0 = xp.as_slice().unwrap()[i];
            xp.as_slice_mut().unwrap()[i] = x0 + h;
            let up = loss(&theta, &xp);
            xp.as_slice_mut().unwrap()[i] = x0 - h;
            let down = loss(&theta, &xp);
            xp.as_slice_mut().unwrap()[i] = x0;
            let numeric = (up - down) / (2.0 * h);
            assert!((numeric - dx.as_slice().unwrap()[i]).abs() < 1e-6, "x {i}");
        }
        // d/dbias = sum of r over the positions where the ReLU passed.
        let passed: f64 =
            ndarray::Zip::from(&y)
                .and(&r)
                .fold(0.0, |s, &yv, &rv| if yv > 0.0 { s + rv } else { s });
        let total: f64 = grads[1].iter().sum();
        assert!((total - passed).abs() < 1e-9);
    }

    #[test]
    fn pooling_takes_the_window_maximum_and_routes_gradients_to_it() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let x = random4(&mut rng, (2, 3, 9, 1));
        let (y, arg) = maxpool_forward(x.view(), [3, 1], 2);
        assert_eq!(y.dim(), (2, 3, 4, 1));
        for c in 0..2 {
            for b in 0..3 {
                for o in 0..4 {
                    let best = (0..3)
                        .map(|k| x[[c, b, 2 * o + k, 0]])
                        .fold(f64::NEG_INFINITY, f64::max);
                    assert_eq!(y[[c, b, o, 0]], best);
                }
            }
        }
        let g = random4(&mut rng, y.dim());
        let dx = maxpool_backward(&g, &arg, x.dim());
        // The gradient is conserved and lands only on window maxima.
        assert!((dx.sum() - g.sum()).abs() < 1e-12);
        for ((c, b, i, _), &d) in dx.indexed_iter() {
            if d != 0.0 {
                assert!(y
                    .index_axis(Axis(0), c)
                    .index_axis(Axis(0), b)
                    .iter()
                    .any(|&v| v == x[[c, b, i, 0]]));
            }
        }
        // 2x2 windows with stride 2 (LeNet-5's pooling): each output is the largest of its
        // four inputs; a NaN among them comes out.
        let mut x = random4(&mut rng, (3, 2, 6, 4));
        let (a, _) = maxpool_forward(x.view(), [2, 2], 2);
        for ((c, b, i, j), &v) in a.indexed_iter() {
            let four =
                [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(di, dj)| x[[c, b, 2 * i + di, 2 * j + dj]]);
            assert_eq!(v, four.into_iter().fold(f64::NEG_INFINITY, f64::max));
        }
        x[[1, 0, 3, 2]] = f64::NAN;
        let (a, _) = maxpool_forward(x.view(), [2, 2], 2);
        assert!(a[[1, 0, 1, 1]].is_nan());
        assert_eq!(pool_out((1, 5), [2, 1], 2), None);
    }
}
