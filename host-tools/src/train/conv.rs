//! Convolutions with stride and zero padding, for the residual network: the patch matrix
//! (im2col) and its adjoint, the variational-dropout training forward and backward, and the
//! deterministic evaluation forward.
//!
//! Activations are CBHW `[channels, batch, height, width]` as elsewhere in the trainer (see
//! [`super::tensor`]). With stride `s` and padding `p`, a `kh x kw` kernel produces
//!
//! ```text
//! Ho = (H + 2p - kh) / s + 1        Wo = (W + 2p - kw) / s + 1
//! y[o, b, i, j] = bias[o] + sum_{c,u,v} w[o, c, u, v] * x[c, b, s*i + u - p, s*j + v - p]
//! ```
//!
//! where input pixels outside the image read as zero (PyTorch's `Conv2d(padding=p, stride=s)`).
//! The variational-dropout maths (local reparameterization, its backward) is shared with the
//! 'valid' convolutions of the `layers` module: only the patch matrix differs.

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::layers::{self, VdCache, VdGrads};
use super::tensor::Real;

/// Stride and zero padding of a convolution (the same along both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvGeom {
    /// Step between neighbouring output positions, in input pixels (at least 1).
    pub stride: usize,
    /// Zero rows and columns added on every side of the input.
    pub padding: usize,
}

impl Default for ConvGeom {
    /// Stride 1, no padding: the 'valid' convolution of the LeNets.
    fn default() -> Self {
        Self::VALID
    }
}

impl ConvGeom {
    /// Stride 1, no padding: the 'valid' convolution of the LeNets.
    pub const VALID: ConvGeom = ConvGeom {
        stride: 1,
        padding: 0,
    };

    /// Output size along one axis for input size `input` and kernel size `kernel`; `None` when
    /// the padded input is smaller than the kernel or the stride is 0.
    pub fn out_size(self, input: usize, kernel: usize) -> Option<usize> {
        let padded = input + 2 * self.padding;
        if self.stride == 0 || kernel == 0 || padded < kernel {
            return None;
        }
        Some((padded - kernel) / self.stride + 1)
    }

    /// Output size, with 0 standing for an impossible geometry (callers check shapes first).
    fn out(self, input: usize, kernel: usize) -> usize {
        self.out_size(input, kernel).unwrap_or(0)
    }

    /// Range of output positions `o` whose input coordinate `o*stride + k - padding` lies in
    /// `0..input`, for kernel offset `k`.
    fn valid_range(self, input: usize, k: usize, out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if self.padding > k {
            (self.padding - k).div_ceil(s)
        } else {
            0
        };
        let hi = if input + self.padding > k {
            ((input + self.padding - k - 1) / s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Unfolds a CBHW tensor into the `[C*kh*kw, B*Ho*Wo]` patch matrix of a strided, padded
/// convolution, and optionally its element-wise square. Row `(c*kh + u)*kw + v`, column
/// `(b*Ho + i)*Wo + j` holds `x[c, b, s*i + u - p, s*j + v - p]` (0 outside the image).
pub(crate) fn unfold<T: Real>(
    x: ArrayView4<'_, T>,
    kh: usize,
    kw: usize,
    geom: ConvGeom,
    square: bool,
) -> (Array2<T>, Option<Array2<T>>) {
    let (c, b, h, w) = x.dim();
    let (ho, wo) = (geom.out(h, kh), geom.out(w, kw));
    let x = x.as_standard_layout();
    let xs = x
        .as_slice()
        .unwrap_or_else(|| unreachable!("standard layout"));
    let (rows, cols) = (c * kh * kw, b * ho * wo);
    let mut col = vec![T::zero(); rows * cols];
    let mut sq = vec![T::zero(); if square { rows * cols } else { 0 }];
    let s = geom.stride;
    let fill = |r: usize, row: &mut [T], sq_row: &mut [T]| {
        let (ci, u, v) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let (ylo, yhi) = geom.valid_range(h, u, ho);
        let (xlo, xhi) = geom.valid_range(w, v, wo);
        for bi in 0..b {
            for i in ylo..yhi {
                let iy = i * s + u - geom.padding;
                let src = ((ci * b + bi) * h + iy) * w;
                let dst = (bi * ho + i) * wo;
                let out = &mut row[dst + xlo..dst + xhi];
                if s == 1 {
                    let start = src + xlo + v - geom.padding;
                    out.copy_from_slice(&xs[start..start + (xhi - xlo)]);
                } else {
                    for (k, o) in out.iter_mut().enumerate() {
                        *o = xs[src + (xlo + k) * s + v - geom.padding];
                    }
                }
                if !sq_row.is_empty() {
                    for (q, &val) in sq_row[dst + xlo..dst + xhi].iter_mut().zip(out.iter()) {
                        *q = val * val;
                    }
                }
            }
        }
    };
    if cols > 0 {
        if square {
            col.par_chunks_mut(cols)
                .zip(sq.par_chunks_mut(cols))
                .enumerate()
                .for_each(|(r, (row, sq_row))| fill(r, row, sq_row));
        } else {
            col.par_chunks_mut(cols)
                .enumerate()
                .for_each(|(r, row)| fill(r, row, &mut []));
        }
    }
    let to_array = |v: Vec<T>| {
        Array2::from_shape_vec((rows, cols), v)
            .unwrap_or_else(|_| unreachable!("sizes computed above"))
    };
    (to_array(col), square.then(|| to_array(sq)))
}

/// Adjoint of [`unfold`]: adds every patch-matrix entry back onto the input pixel it was read
/// from (entries that read padding are dropped), giving a CBHW tensor `(c, b, h, w)`. Channels
/// run in parallel; within a channel the summation order is fixed.
pub(crate) fn fold<T: Real>(
    dcol: ArrayView2<'_, T>,
    (c, b, h, w): (usize, usize, usize, usize),
    kh: usize,
    kw: usize,
    geom: ConvGeom,
) -> Array4<T> {
    let (ho, wo) = (geom.out(h, kh), geom.out(w, kw));
    let dcol = dcol.as_standard_layout();
    let ds = dcol
        .as_slice()
        .unwrap_or_else(|| unreachable!("standard layout"));
    let cols = b * ho * wo;
    let plane = b * h * w;
    let s = geom.stride;
    let mut dx = vec![T::zero(); c * plane];
    if plane > 0 && cols > 0 {
        dx.par_chunks_mut(plane).enumerate().for_each(|(ci, dxc)| {
            for u in 0..kh {
                let (ylo, yhi) = geom.valid_range(h, u, ho);
                for v in 0..kw {
                    let (xlo, xhi) = geom.valid_range(w, v, wo);
                    let row = &ds[((ci * kh + u) * kw + v) * cols..][..cols];
                    for bi in 0..b {
                        for i in ylo..yhi {
                            let iy = i * s + u - geom.padding;
                            let dst = (bi * h + iy) * w;
                            let src = &row[(bi * ho + i) * wo + xlo..(bi * ho + i) * wo + xhi];
                            if s == 1 {
                                let start = dst + xlo + v - geom.padding;
                                for (d, &g) in dxc[start..start + src.len()].iter_mut().zip(src) {
                                    *d += g;
                                }
                            } else {
                                for (k, &g) in src.iter().enumerate() {
                                    dxc[dst + (xlo + k) * s + v - geom.padding] += g;
                                }
                            }
                        }
                    }
                }
            }
        });
    }
    Array4::from_shape_vec((c, b, h, w), dx)
        .unwrap_or_else(|_| unreachable!("sizes computed above"))
}

/// What [`vd_conv_backward`] needs from [`vd_conv_forward`].
#[derive(Debug)]
pub(crate) struct StridedConvCache<T> {
    vd: VdCache<T>,
    input_dim: (usize, usize, usize, usize),
    geom: ConvGeom,
}

impl<T> StridedConvCache<T> {
    /// Dims `(c, b, h, w)` of the input the forward pass saw.
    pub(crate) fn input_dim(&self) -> (usize, usize, usize, usize) {
        self.input_dim
    }
}

/// Output `(Ho, Wo)` of a conv with kernel `theta` on input dims `(c, b, h, w)`.
pub(crate) fn out_hw<T: Real>(
    theta: &Array4<T>,
    (_, _, h, w): (usize, usize, usize, usize),
    geom: ConvGeom,
) -> (usize, usize) {
    let (_, _, kh, kw) = theta.dim();
    (geom.out(h, kh), geom.out(w, kw))
}

/// Training forward of a VD convolution with stride and padding: `x` is CBHW `[C, B, H, W]`,
/// `theta`/`log_sigma2` `[O, C, kh, kw]`, `eps` `[O, B*Ho*Wo]` standard normals. Returns CBHW
/// `[O, B, Ho, Wo]`: `mean + sqrt(var + 1e-8) * eps` with `mean = conv(x, theta) + bias` and
/// `var = conv(x^2, exp(log_sigma2))`, then ReLU when `relu`.
pub(crate) fn vd_conv_forward<T: Real>(
    theta: &Array4<T>,
    log_sigma2: &Array4<T>,
    bias: &Array1<T>,
    relu: bool,
    geom: ConvGeom,
    x: ArrayView4<'_, T>,
    eps: Array2<T>,
) -> (Array4<T>, StridedConvCache<T>) {
    let (_, _, kh, kw) = theta.dim();
    let input_dim = x.dim();
    let (ho, wo) = out_hw(theta, input_dim, geom);
    let (col, col_sq) = unfold(x, kh, kw, geom, true);
    let col_sq = col_sq.unwrap_or_else(|| unreachable!("requested"));
    let (out, vd) = layers::vd_forward(
        layers::kernel_matrix(theta),
        layers::kernel_matrix(log_sigma2),
        bias.view(),
        relu,
        col,
        col_sq,
        eps,
        false,
    );
    let o = out.nrows();
    let out = layers::standard(out)
        .into_shape_with_order((o, input_dim.1, ho, wo))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    (
        out,
        StridedConvCache {
            vd,
            input_dim,
            geom,
        },
    )
}

/// Backward of [`vd_conv_forward`]: `g` is `dL/d out` in CBHW (before the ReLU mask, which the
/// cache applies). Returns the parameter gradients and, when asked, `dL/dx` in CBHW.
pub(crate) fn vd_conv_backward<T: Real>(
    theta: &Array4<T>,
    cache: StridedConvCache<T>,
    g: Array4<T>,
    need_dx: bool,
) -> (VdGrads<T>, Option<Array4<T>>) {
    let (o, b, ho, wo) = g.dim();
    let g = layers::standard4(g)
        .into_shape_with_order((o, b * ho * wo))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    let (_, _, kh, kw) = theta.dim();
    let StridedConvCache {
        vd,
        input_dim,
        geom,
    } = cache;
    let (grads, dcol) = layers::vd_backward(layers::kernel_matrix(theta), vd, g, need_dx, false);
    let dx = dcol.map(|d| fold(d.view(), input_dim, kh, kw, geom));
    (grads, dx)
}

/// Deterministic strided, padded convolution (with optional ReLU) for evaluation; CBHW in and
/// out.
pub(crate) fn conv_eval<T: Real>(
    w: &Array4<T>,
    bias: &Array1<T>,
    relu: bool,
    geom: ConvGeom,
    x: ArrayView4<'_, T>,
) -> Array4<T> {
    let (_, _, kh, kw) = w.dim();
    let input_dim = x.dim();
    let (ho, wo) = out_hw(w, input_dim, geom);
    let (col, _) = unfold(x, kh, kw, geom, false);
    let mut y = layers::kernel_matrix(w).dot(&col);
    y += &bias.view().insert_axis(Axis(1));
    if relu {
        y.par_mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
    }
    let o = y.nrows();
    layers::standard(y)
        .into_shape_with_order((o, input_dim.1, ho, wo))
        .unwrap_or_else(|_| unreachable!("standard layout"))
}

/// Global average pooling of CBHW `[C, B, H, W]` to rows `[B, C]`: the mean over space of every
/// channel of every image.
pub(crate) fn global_avg_pool<T: Real>(x: ArrayView4<'_, T>) -> Array2<T> {
    let (c, b, h, w) = x.dim();
    let inv = T::from_f64(1.0 / (h * w).max(1) as f64);
    let mut out = Array2::zeros((b, c));
    for ci in 0..c {
        for bi in 0..b {
            let plane = x.index_axis(Axis(0), ci);
            let plane = plane.index_axis(Axis(0), bi);
            out[[bi, ci]] = plane.sum() * inv;
        }
    }
    out
}

/// Backward of [`global_avg_pool`]: `dx[c, b, h, w] = g[b, c] / (H*W)`.
pub(crate) fn global_avg_pool_backward<T: Real>(
    g: &Array2<T>,
    (c, b, h, w): (usize, usize, usize, usize),
) -> Array4<T> {
    let inv = T::from_f64(1.0 / (h * w).max(1) as f64);
    Array4::from_shape_fn((c, b, h, w), |(ci, bi, _, _)| g[[bi, ci]] * inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    /// Direct loops over the definition in the module documentation.
    fn reference(x: &Array4<f64>, wt: &Array4<f64>, geom: ConvGeom) -> Array4<f64> {
        let (c, b, h, w) = x.dim();
        let (o, _, kh, kw) = wt.dim();
        let (ho, wo) = (geom.out_size(h, kh).unwrap(), geom.out_size(w, kw).unwrap());
        let p = geom.padding as isize;
        let s = geom.stride as isize;
        Array::from_shape_fn((o, b, ho, wo), |(oc, bi, i, j)| {
            let mut acc = 0.0;
            for ci in 0..c {
                for u in 0..kh {
                    for v in 0..kw {
                        let iy = i as isize * s + u as isize - p;
                        let ix = j as isize * s + v as isize - p;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            acc += wt[[oc, ci, u, v]] * x[[ci, bi, iy as usize, ix as usize]];
                        }
                    }
                }
            }
            acc
        })
    }

    #[test]
    fn strided_padded_conv_matches_direct_loops_and_fold_is_adjoint() {
        let geoms = [
            ConvGeom {
                stride: 1,
                padding: 1,
            },
            ConvGeom {
                stride: 2,
                padding: 1,
            },
            ConvGeom {
                stride: 2,
                padding: 0,
            },
            ConvGeom {
                stride: 3,
                padding: 2,
            },
            ConvGeom {
                stride: 1,
                padding: 0,
            },
        ];
        for (h, w) in [(7, 6), (8, 8), (5, 9)] {
            for geom in geoms {
                let (c, b, o, kh, kw) = (2, 3, 4, 3, 3);
                let x = Array::from_shape_fn((c, b, h, w), |(ci, bi, y, xx)| {
                    ((ci * 31 + bi * 17 + y * 7 + xx * 3) % 11) as f64 - 5.0
                });
                let wt = Array::from_shape_fn((o, c, kh, kw), |(a, b2, u, v)| {
                    ((a * 5 + b2 * 3 + u * 2 + v) % 7) as f64 - 3.0
                });
                let bias = Array1::zeros(o);
                let got = conv_eval(&wt, &bias, false, geom, x.view());
                assert_eq!(got, reference(&x, &wt, geom), "{geom:?} {h}x{w}");
                let (col, sq) = unfold(x.view(), kh, kw, geom, true);
                assert_eq!(sq.unwrap(), col.mapv(|v| v * v));
                // <unfold(x), y> == <x, fold(y)> for any y.
                let y =
                    Array::from_shape_fn(col.dim(), |(i, j)| ((i * 13 + j * 5) % 7) as f64 - 3.0);
                let lhs: f64 = (&col * &y).sum();
                let rhs: f64 = (&x * &fold(y.view(), (c, b, h, w), kh, kw, geom)).sum();
                assert!((lhs - rhs).abs() < 1e-9, "{geom:?}: {lhs} vs {rhs}");
            }
        }
        let g = ConvGeom {
            stride: 0,
            padding: 1,
        };
        assert_eq!(g.out_size(5, 3), None);
        let g = ConvGeom {
            stride: 1,
            padding: 0,
        };
        assert_eq!(g.out_size(2, 3), None);
        assert_eq!(g.out_size(3, 3), Some(1));
    }

    #[test]
    fn global_average_pool_means_every_plane() {
        let x = Array::from_shape_fn((2, 3, 2, 2), |(c, b, y, xx)| {
            (c * 100 + b * 10 + y * 2 + xx) as f64
        });
        let p = global_avg_pool(x.view());
        assert_eq!(p.dim(), (3, 2));
        assert_eq!(p[[1, 0]], 11.5);
        assert_eq!(p[[2, 1]], 121.5);
    }
}
