//! Scalar trait and the tensor kernels the layers share: im2col / col2im for 'valid' stride-1
//! convolutions, and chunked data-parallel element-wise helpers.
//!
//! Spatial activations use the layout `[channels, batch, height, width]` ("CBHW"): with it the
//! im2col matrix of a whole batch is `[C*kh*kw, B*Ho*Wo]`, one matrix product gives the output of
//! every image at once, and that output `[O, B*Ho*Wo]` already is the next layer's CBHW input.
//!
//! Every parallel helper splits work into chunks whose boundaries do not depend on the number of
//! threads and reduces partial results in chunk order, so results are bit-identical from run to
//! run.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, NdFloat};
use rand::Rng;
use rand::SeedableRng;
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Floating-point element type of the trainer: `f32` for training, `f64` for gradient checks.
pub trait Real: NdFloat + Default + std::iter::Sum + Serialize + DeserializeOwned {
    /// Converts from `f64` (rounding to nearest).
    fn from_f64(v: f64) -> Self;
    /// Widens to `f64`.
    fn as_f64(self) -> f64;
    /// Draws one standard-normal variate.
    fn sample_normal<R: Rng + ?Sized>(rng: &mut R) -> Self;
    /// `e^x` for hot loops: vectorisable polynomial for `f32` (see [`super::fastmath`]), `std`
    /// for `f64` (so gradient checks in `f64` test the exact maths).
    fn fast_exp(self) -> Self;
    /// `ln x` for positive normal `x` in hot loops, like [`Real::fast_exp`].
    fn fast_ln(self) -> Self;
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        f64::from(self)
    }
    fn sample_normal<R: Rng + ?Sized>(rng: &mut R) -> Self {
        rng.sample(StandardNormal)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        super::fastmath::exp_f32(self)
    }
    #[inline(always)]
    fn fast_ln(self) -> Self {
        super::fastmath::ln_f32(self)
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn sample_normal<R: Rng + ?Sized>(rng: &mut R) -> Self {
        rng.sample(StandardNormal)
    }
    fn fast_exp(self) -> Self {
        self.exp()
    }
    fn fast_ln(self) -> Self {
        self.ln()
    }
}

/// Elements per work item of the parallel helpers (fixed, so results never depend on threads).
pub(crate) const CHUNK: usize = 1 << 14;

/// Mixes several words into one well-spread 64-bit seed (SplitMix64 finaliser per word).
pub(crate) fn mix_seed(words: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &w in words {
        let mut z = h ^ w.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

/// Fills `out` with standard normals. Chunk `i` is drawn from its own generator seeded with
/// `(seed, i)`, so the result depends only on `seed` and `out.len()`, and chunks run in parallel.
pub(crate) fn fill_normal<T: Real>(out: &mut [T], seed: u64) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[seed, i as u64]));
            for v in chunk {
                *v = T::sample_normal(&mut rng);
            }
        });
}

/// `out[i] = f(a[i])`, in parallel chunks.
pub(crate) fn par_map<T: Real>(a: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(o, a)| o.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a)));
    out
}

/// Output size of a 'valid' (no padding, stride 1) convolution along one axis.
pub(crate) fn valid_out(input: usize, kernel: usize) -> usize {
    (input + 1).saturating_sub(kernel)
}

/// Unfolds a CBHW tensor into the `[C*kh*kw, B*Ho*Wo]` patch matrix of a 'valid' stride-1
/// convolution. Row `(c*kh + ky)*kw + kx` holds, for every image `b` and output position
/// `(oy, ox)` (column `(b*Ho + oy)*Wo + ox`), the input pixel `x[c, b, oy+ky, ox+kx]`.
pub(crate) fn im2col<T: Real>(x: ArrayView4<'_, T>, kh: usize, kw: usize) -> Array2<T> {
    unfold(x, kh, kw, false).0
}

/// [`im2col`] and its element-wise square, built in one pass.
pub(crate) fn im2col_with_square<T: Real>(
    x: ArrayView4<'_, T>,
    kh: usize,
    kw: usize,
) -> (Array2<T>, Array2<T>) {
    let (col, sq) = unfold(x, kh, kw, true);
    (col, sq.unwrap_or_else(|| unreachable!("requested")))
}

fn unfold<T: Real>(
    x: ArrayView4<'_, T>,
    kh: usize,
    kw: usize,
    square: bool,
) -> (Array2<T>, Option<Array2<T>>) {
    let (c, b, h, w) = x.dim();
    let (ho, wo) = (valid_out(h, kh), valid_out(w, kw));
    let x = x.as_standard_layout();
    let xs = x
        .as_slice()
        .unwrap_or_else(|| unreachable!("standard layout"));
    let cols = b * ho * wo;
    let rows = c * kh * kw;
    let mut col = vec![T::zero(); rows * cols];
    let mut sq = vec![T::zero(); if square { rows * cols } else { 0 }];
    let fill = |r: usize, row: &mut [T], sq_row: &mut [T]| {
        let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
        for bi in 0..b {
            for oy in 0..ho {
                let src = ((ci * b + bi) * h + oy + ky) * w + kx;
                let dst = (bi * ho + oy) * wo;
                row[dst..dst + wo].copy_from_slice(&xs[src..src + wo]);
                if !sq_row.is_empty() {
                    for (q, &v) in sq_row[dst..dst + wo].iter_mut().zip(&xs[src..src + wo]) {
                        *q = v * v;
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
    let shape = (rows, cols);
    let to_array = |v: Vec<T>| {
        Array2::from_shape_vec(shape, v).unwrap_or_else(|_| unreachable!("sizes computed above"))
    };
    (to_array(col), square.then(|| to_array(sq)))
}

/// Adjoint of [`im2col`]: sums every patch-matrix entry back onto the input pixel it was copied
/// from, giving a CBHW tensor of shape `(c, b, h, w)`. Channels are processed in parallel; within
/// a channel the summation order is fixed.
pub(crate) fn col2im<T: Real>(
    dcol: ArrayView2<'_, T>,
    (c, b, h, w): (usize, usize, usize, usize),
    kh: usize,
    kw: usize,
) -> Array4<T> {
    let (ho, wo) = (valid_out(h, kh), valid_out(w, kw));
    let dcol = dcol.as_standard_layout();
    let ds = dcol
        .as_slice()
        .unwrap_or_else(|| unreachable!("standard layout"));
    let cols = b * ho * wo;
    let plane = b * h * w;
    let mut dx = vec![T::zero(); c * plane];
    if plane > 0 {
        dx.par_chunks_mut(plane).enumerate().for_each(|(ci, dxc)| {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &ds[((ci * kh + ky) * kw + kx) * cols..][..cols];
                    for bi in 0..b {
                        for oy in 0..ho {
                            let dst = (bi * h + oy + ky) * w + kx;
                            let src = (bi * ho + oy) * wo;
                            for (d, &s) in dxc[dst..dst + wo].iter_mut().zip(&row[src..src + wo]) {
                                *d += s;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn im2col_matches_direct_convolution_and_col2im_is_its_adjoint() {
        let (c, b, h, w, kh, kw) = (2, 3, 5, 4, 3, 2);
        let x = Array::from_shape_fn((c, b, h, w), |(ci, bi, y, xx)| {
            ((ci * 31 + bi * 17 + y * 7 + xx * 3) % 11) as f64 - 5.0
        });
        let col = im2col(x.view(), kh, kw);
        let (ho, wo) = (h - kh + 1, w - kw + 1);
        assert_eq!(col.dim(), (c * kh * kw, b * ho * wo));
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    for bi in 0..b {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let r = (ci * kh + ky) * kw + kx;
                                let q = (bi * ho + oy) * wo + ox;
                                assert_eq!(col[[r, q]], x[[ci, bi, oy + ky, ox + kx]]);
                            }
                        }
                    }
                }
            }
        }
        // <im2col(x), y> == <x, col2im(y)> for any y.
        let y = Array::from_shape_fn(col.dim(), |(i, j)| ((i * 13 + j * 5) % 7) as f64 - 3.0);
        let lhs: f64 = (&col * &y).sum();
        let rhs: f64 = (&x * &col2im(y.view(), (c, b, h, w), kh, kw)).sum();
        assert!((lhs - rhs).abs() < 1e-9, "{lhs} vs {rhs}");
    }

    #[test]
    fn normals_are_reproducible_and_standard() {
        let mut a = vec![0f32; 50_000];
        let mut b = vec![0f32; 50_000];
        fill_normal(&mut a, 42);
        fill_normal(&mut b, 42);
        assert_eq!(a, b);
        fill_normal(&mut b, 43);
        assert_ne!(a, b);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
    }
}
