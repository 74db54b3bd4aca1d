//! The two operations of residual early-exit networks that are not weight layers: the
//! residual addition that closes a block, and the global average pooling in front of an exit
//! head (also a layer of its own, `Operation::GlobalAvgPool`). Both work on one input or on a chunk of `s` samples laid out unit-major
//! (`x[i * s + m]`), the layout every kernel shares.

use super::activate;
use crate::format::Activation;
use crate::input::Input;

/// `x[i] = act(x[i] + skip[i])` over the first `skip.len()` values.
pub(crate) fn residual_add(activation: Activation, x: &mut [f32], skip: &[f32]) {
    for (v, &k) in x.iter_mut().zip(skip) {
        *v = activate(activation, *v + k);
    }
}

/// Global average pooling of a (channels, height, width) map for `s` samples:
/// `out[c * s + m] = mean over the map positions p of x[(c * area + p) * s + m]`, summed in
/// position order.
pub(crate) fn global_average_pool<X: Input + ?Sized>(
    map: [usize; 3],
    x: &X,
    s: usize,
    out: &mut [f32],
) {
    let area = map[1] * map[2];
    let inv = 1.0 / area as f32;
    for c in 0..map[0] {
        for m in 0..s {
            let mut sum = 0.0f32;
            for p in 0..area {
                sum += x.value((c * area + p) * s + m);
            }
            if let Some(o) = out.get_mut(c * s + m) {
                *o = sum * inv;
            }
        }
    }
}
