//! Forward and hand-written backward passes of the layers: variational-dropout linear and conv2d
//! layers (local reparameterization, optional fused ReLU), 2x2 max-pooling and flatten.
//!
//! Training-time forward of a VD layer with input `x` and `sigma^2 = exp(log_sigma2)`:
//!
//! ```text
//! mean = x . theta^T + b      var = x^2 . sigma^2^T      out = mean + sqrt(var + 1e-8) * eps
//! ```
//!
//! Backward, with `g = dL/d out` (after the ReLU mask) and `k = 0.5 * eps / sqrt(var + 1e-8)`:
//!
//! ```text
//! dtheta = g^T . x      db = sum_batch g      dsigma^2 = (g*k)^T . x^2     dlog_sigma2 = dsigma^2 * sigma^2
//! dx = g . theta + 2 x * ((g*k) . sigma^2)
//! ```
//!
//! Convolutions are the same maths on the im2col patch matrix (see [`super::tensor`]).

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, Zip};

use super::tensor::{col2im, im2col, im2col_with_square, par_map, valid_out, Real};

/// Added to the pre-activation variance before the square root.
pub const VAR_EPS: f64 = 1e-8;

/// What the backward pass of a VD layer needs from its forward pass.
#[derive(Debug)]
pub(crate) struct VdCache<T> {
    /// Layer input as a matrix: `[B, I]` for linear, the patch matrix `[C*kh*kw, B*Ho*Wo]` for conv.
    x: Array2<T>,
    /// `x` squared element-wise.
    x_sq: Array2<T>,
    /// `exp(log_sigma2)` as a matrix `[O, I]`.
    sigma2: Array2<T>,
    /// `0.5 * eps / sqrt(var + 1e-8)`, shaped like the output matrix.
    k: Array2<T>,
    /// Where the ReLU passed its input (`None` without ReLU), shaped like the output matrix.
    active: Option<Array2<bool>>,
}

/// Gradients of one VD layer, in the layout of its parameters.
#[derive(Debug)]
pub(crate) struct VdGrads<T> {
    pub theta: Vec<T>,
    pub log_sigma2: Vec<T>,
    pub bias: Vec<T>,
}

/// Shared core of linear and conv forward. `w`/`ls2` are `[O, I]`. `linear` selects the
/// orientation: `x` is `[B, I]` and the output `[B, O]` (linear), or `x` is the patch matrix
/// `[I, N]` and the output `[O, N]` (conv). `x_sq` is `x` squared.
#[allow(clippy::too_many_arguments)]
pub(super) fn vd_forward<T: Real>(
    w: ArrayView2<'_, T>,
    ls2: ArrayView2<'_, T>,
    bias: ArrayView1<'_, T>,
    relu: bool,
    x: Array2<T>,
    x_sq: Array2<T>,
    mut eps: Array2<T>,
    linear: bool,
) -> (Array2<T>, VdCache<T>) {
    let sigma2 = Array2::from_shape_vec(
        ls2.dim(),
        par_map(
            ls2.as_standard_layout().as_slice().unwrap_or(&[]),
            T::fast_exp,
        ),
    )
    .unwrap_or_else(|_| unreachable!("same shape"));
    let (mut mean, var) = if linear {
        (x.dot(&w.t()), x_sq.dot(&sigma2.t()))
    } else {
        (w.dot(&x), sigma2.dot(&x_sq))
    };
    let dim = mean.dim();
    let column = bias.insert_axis(Axis(1));
    let bias = if linear {
        bias.broadcast(dim)
    } else {
        column.broadcast(dim)
    }
    .unwrap_or_else(|| unreachable!("bias has one entry per output"));
    let var_eps = T::from_f64(VAR_EPS);
    let half = T::from_f64(0.5);
    // One pass: bias, noise, the backward factor k, and the ReLU (NaN passes through).
    let step = move |m: &mut T, v: T, e: &mut T, b: T| -> bool {
        let s = (v + var_eps).sqrt();
        let y = *m + b + s * *e;
        *e = half * *e / s;
        let off = relu && y < T::zero();
        *m = if off { T::zero() } else { y };
        !off
    };
    let active = if relu {
        Some(
            Zip::from(&mut mean)
                .and(&var)
                .and(&mut eps)
                .and(&bias)
                .par_map_collect(|m, &v, e, &b| step(m, v, e, b)),
        )
    } else {
        Zip::from(&mut mean)
            .and(&var)
            .and(&mut eps)
            .and(&bias)
            .par_for_each(|m, &v, e, &b| {
                step(m, v, e, b);
            });
        None
    };
    (
        mean,
        VdCache {
            x,
            x_sq,
            sigma2,
            k: eps,
            active,
        },
    )
}

/// Shared core of linear and conv backward; returns the gradients and, when asked, `dL/dx` in the
/// same orientation as the cached `x`.
pub(super) fn vd_backward<T: Real>(
    w: ArrayView2<'_, T>,
    cache: VdCache<T>,
    mut g: Array2<T>,
    need_dx: bool,
    linear: bool,
) -> (VdGrads<T>, Option<Array2<T>>) {
    // One pass: ReLU mask on g, and gk = g * k (the gradient reaching the variance).
    let gk = match &cache.active {
        Some(active) => Zip::from(&mut g)
            .and(&cache.k)
            .and(active)
            .par_map_collect(|g, &k, &a| {
                if !a {
                    *g = T::zero();
                }
                *g * k
            }),
        None => Zip::from(&g).and(&cache.k).par_map_collect(|&g, &k| g * k),
    };
    let two = T::from_f64(2.0);
    let (dw, dsig, db, dx) = if linear {
        let dw = g.t().dot(&cache.x);
        let dsig = gk.t().dot(&cache.x_sq);
        let db = g.sum_axis(Axis(0));
        let dx = need_dx.then(|| {
            let mut dx = g.dot(&w);
            let v = gk.dot(&cache.sigma2);
            Zip::from(&mut dx)
                .and(&v)
                .and(&cache.x)
                .par_for_each(|d, &v, &x| *d += two * x * v);
            dx
        });
        (dw, dsig, db, dx)
    } else {
        let dw = g.dot(&cache.x.t());
        let dsig = gk.dot(&cache.x_sq.t());
        let db = g.sum_axis(Axis(1));
        let dx = need_dx.then(|| {
            let mut dx = w.t().dot(&g);
            let v = cache.sigma2.t().dot(&gk);
            Zip::from(&mut dx)
                .and(&v)
                .and(&cache.x)
                .par_for_each(|d, &v, &x| *d += two * x * v);
            dx
        });
        (dw, dsig, db, dx)
    };
    let mut dls2 = dsig;
    Zip::from(&mut dls2)
        .and(&cache.sigma2)
        .par_for_each(|d, &s| *d *= s);
    (
        VdGrads {
            theta: into_vec(dw),
            log_sigma2: into_vec(dls2),
            bias: db.to_vec(),
        },
        dx,
    )
}

/// `a` in row-major layout (a matrix product of two column-major operands comes out
/// column-major; reshaping needs row-major).
pub(super) fn standard<T: Real>(a: Array2<T>) -> Array2<T> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

pub(super) fn standard4<T: Real>(a: Array4<T>) -> Array4<T> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

fn into_vec<T: Real>(a: Array2<T>) -> Vec<T> {
    if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    }
}

/// Training forward of a VD linear layer: `x` is `[B, I]`, `theta`/`log_sigma2` are `[O, I]`,
/// `eps` is `[B, O]` standard normals. Returns `[B, O]`.
pub(crate) fn linear_forward<T: Real>(
    theta: &Array2<T>,
    log_sigma2: &Array2<T>,
    bias: &Array1<T>,
    relu: bool,
    x: Array2<T>,
    eps: Array2<T>,
) -> (Array2<T>, VdCache<T>) {
    let x_sq = x.mapv(|v| v * v);
    vd_forward(
        theta.view(),
        log_sigma2.view(),
        bias.view(),
        relu,
        x,
        x_sq,
        eps,
        true,
    )
}

/// Backward of [`linear_forward`]: `g` is `dL/d out` `[B, O]`.
pub(crate) fn linear_backward<T: Real>(
    theta: &Array2<T>,
    cache: VdCache<T>,
    g: Array2<T>,
    need_dx: bool,
) -> (VdGrads<T>, Option<Array2<T>>) {
    vd_backward(theta.view(), cache, g, need_dx, true)
}

/// `[O, C, kh, kw]` viewed as the `[O, C*kh*kw]` matrix that multiplies the patch matrix.
pub(super) fn kernel_matrix<T: Real>(a: &Array4<T>) -> ArrayView2<'_, T> {
    let (o, c, kh, kw) = a.dim();
    a.view()
        .into_shape_with_order((o, c * kh * kw))
        .unwrap_or_else(|_| unreachable!("parameters are kept in standard layout"))
}

/// What [`conv_backward`] needs besides the VD cache.
#[derive(Debug)]
pub(crate) struct ConvCache<T> {
    vd: VdCache<T>,
    input_dim: (usize, usize, usize, usize),
}

/// Training forward of a VD 'valid' stride-1 convolution. `x` is CBHW `[C, B, H, W]`, `theta`
/// `[O, C, kh, kw]`, `eps` `[O, B*Ho*Wo]`. Returns CBHW `[O, B, Ho, Wo]`.
pub(crate) fn conv_forward<T: Real>(
    theta: &Array4<T>,
    log_sigma2: &Array4<T>,
    bias: &Array1<T>,
    relu: bool,
    x: ArrayView4<'_, T>,
    eps: Array2<T>,
) -> (Array4<T>, ConvCache<T>) {
    let (_, _, kh, kw) = theta.dim();
    let input_dim = x.dim();
    let (_, b, h, w) = input_dim;
    let (col, col_sq) = im2col_with_square(x, kh, kw);
    let (out, vd) = vd_forward(
        kernel_matrix(theta),
        kernel_matrix(log_sigma2),
        bias.view(),
        relu,
        col,
        col_sq,
        eps,
        false,
    );
    let o = out.nrows();
    let out = standard(out)
        .into_shape_with_order((o, b, valid_out(h, kh), valid_out(w, kw)))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    (out, ConvCache { vd, input_dim })
}

/// Backward of [`conv_forward`]: `g` is `dL/d out` in CBHW. Returns gradients and, when asked,
/// `dL/dx` in CBHW.
pub(crate) fn conv_backward<T: Real>(
    theta: &Array4<T>,
    cache: ConvCache<T>,
    g: Array4<T>,
    need_dx: bool,
) -> (VdGrads<T>, Option<Array4<T>>) {
    let (o, b, ho, wo) = g.dim();
    let g = standard4(g)
        .into_shape_with_order((o, b * ho * wo))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    let (_, _, kh, kw) = theta.dim();
    let input_dim = cache.input_dim;
    let (grads, dcol) = vd_backward(kernel_matrix(theta), cache.vd, g, need_dx, false);
    let dx = dcol.map(|d| col2im(d.view(), input_dim, kh, kw));
    (grads, dx)
}

/// The standard normal quantile `z` with `Φ(z) = p` (bisection on `erfc` to f64 precision;
/// `-inf` for `p = 0`): a standard normal draw is at or above it with probability `1 - p`.
pub(crate) fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let cdf = |z: f64| 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// What the backward pass of an MC dropout linear layer needs from its forward pass.
#[derive(Debug)]
pub(crate) struct DropoutCache<T> {
    /// The layer's input after the mask and the `1 / (1 - p)` scale, `[B, I]`.
    x: Array2<T>,
    /// The mask times the scale (0 or `1 / (1 - p)`), `[B, I]`.
    factor: Array2<T>,
    /// Where the ReLU passed its input (`None` without ReLU), `[B, O]`.
    active: Option<Array2<bool>>,
}

/// Training forward of an MC dropout linear layer: each input is kept where its standard
/// normal draw in `eps` (`[B, I]`) is at or above the `p`-quantile (probability `1 - p`) and
/// then scaled by `1 / (1 - p)`; `y = x' . theta^T + b` with an optional ReLU. Returns `[B, O]`.
pub(crate) fn dropout_linear_forward<T: Real>(
    theta: &Array2<T>,
    bias: &Array1<T>,
    relu: bool,
    p: f64,
    x: Array2<T>,
    eps: &Array2<T>,
) -> (Array2<T>, DropoutCache<T>) {
    let threshold = T::from_f64(normal_quantile(p));
    let scale = T::from_f64(1.0 / (1.0 - p));
    let factor = eps.mapv(|e| if e >= threshold { scale } else { T::zero() });
    let x = x * &factor;
    let mut y = x.dot(&theta.t());
    y += &bias
        .broadcast(y.dim())
        .unwrap_or_else(|| unreachable!("bias has O entries"));
    let active = relu.then(|| {
        Zip::from(&mut y).par_map_collect(|v| {
            let on = *v >= T::zero();
            if !on {
                *v = T::zero();
            }
            on
        })
    });
    (y, DropoutCache { x, factor, active })
}

/// Backward of [`dropout_linear_forward`]: `g` is `dL/d out` `[B, O]`. Returns the gradients
/// `[dtheta, dbias]` and, when asked, `dL/dx = (g . theta) * factor`.
pub(crate) fn dropout_linear_backward<T: Real>(
    theta: &Array2<T>,
    cache: DropoutCache<T>,
    mut g: Array2<T>,
    need_dx: bool,
) -> (Vec<Vec<T>>, Option<Array2<T>>) {
    if let Some(active) = &cache.active {
        Zip::from(&mut g).and(active).par_for_each(|g, &a| {
            if !a {
                *g = T::zero();
            }
        });
    }
    let dw = g.t().dot(&cache.x);
    let db = g.sum_axis(Axis(0));
    let dx = need_dx.then(|| g.dot(theta) * &cache.factor);
    (vec![into_vec(dw), db.to_vec()], dx)
}

/// Deterministic linear layer `x . w^T + b` (with optional ReLU) for evaluation.
pub(crate) fn linear_eval<T: Real>(
    w: &Array2<T>,
    bias: &Array1<T>,
    relu: bool,
    x: &Array2<T>,
) -> Array2<T> {
    let mut y = x.dot(&w.t());
    y += &bias
        .broadcast(y.dim())
        .unwrap_or_else(|| unreachable!("bias has O entries"));
    if relu {
        y.mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
    }
    y
}

/// Deterministic 'valid' convolution (with optional ReLU) for evaluation; CBHW in and out.
pub(crate) fn conv_eval<T: Real>(
    w: &Array4<T>,
    bias: &Array1<T>,
    relu: bool,
    x: ArrayView4<'_, T>,
) -> Array4<T> {
    let (_, _, kh, kw) = w.dim();
    let (_, b, h, wd) = x.dim();
    let col = im2col(x, kh, kw);
    let mut y = kernel_matrix(w).dot(&col);
    y += &bias.view().insert_axis(Axis(1));
    if relu {
        y.par_mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
    }
    let o = y.nrows();
    standard(y)
        .into_shape_with_order((o, b, valid_out(h, kh), valid_out(wd, kw)))
        .unwrap_or_else(|_| unreachable!("standard layout"))
}

/// CBHW `[C, B, H, W]` to `[B, C*H*W]` in channel-major (`c, h, w`) feature order, the same order
/// as flattening an NCHW tensor.
pub(crate) fn flatten_forward<T: Real>(x: Array4<T>) -> Array2<T> {
    let (c, b, h, w) = x.dim();
    let x = x.permuted_axes([1, 0, 2, 3]);
    let x = x.as_standard_layout().into_owned();
    x.into_shape_with_order((b, c * h * w))
        .unwrap_or_else(|_| unreachable!("standard layout"))
}

/// Backward of [`flatten_forward`].
pub(crate) fn flatten_backward<T: Real>(
    g: Array2<T>,
    (c, b, h, w): (usize, usize, usize, usize),
) -> Array4<T> {
    let g = standard(g)
        .into_shape_with_order((b, c, h, w))
        .unwrap_or_else(|_| unreachable!("standard layout"));
    g.permuted_axes([1, 0, 2, 3])
        .as_standard_layout()
        .into_owned()
}
