//! Integer kernels of the early-exit graph: the residual addition and the global average pool
//! an exit head reads (also a layer of its own, `Operation::GlobalAvgPool`). Both work on a chunk of `s` samples laid out unit-major
//! (`x[i * s + m]`), like every fixed-point kernel.

use super::kernels::{Format, Words, Q16, Q8};
use super::model::QLayer;
use crate::format::Precision;

/// `cur = relu(cur + (a_skip m + 2^(S-1)) >> S)`, packed: `cur` holds the signed sums of the
/// identity layer before (in this addition's output scale), `skip` the packed activations of
/// the block input, rescaled by the addition's `(m, S)` ([`QLayer::skip_rescale`]). The reader
/// bounds `m` so that `a m + 2^(S-1)` fits an i32.
pub(crate) fn residual_add(layer: &QLayer<'_>, cur: &mut [i32], skip: &[i32]) {
    let (m, shift) = layer.skip_rescale().unwrap_or((0, 1));
    match layer.precision {
        Precision::Q16 => add_typed::<Q16>(m, shift, cur, skip),
        _ => add_typed::<Q8>(m, shift, cur, skip),
    }
}

#[inline(never)]
fn add_typed<F: Format>(m: i32, shift: u32, cur: &mut [i32], skip: &[i32]) {
    let half = 1i32 << (shift - 1);
    for (c, &w) in cur.iter_mut().zip(skip) {
        let rescaled = (F::value(w).wrapping_mul(m).wrapping_add(half)) >> shift;
        *c = F::pack(c.saturating_add(rescaled).clamp(0, F::ACT_MAX));
    }
}

/// The global average pool of a chunk's `map` (channels, height, width) for an exit head:
/// per channel and sample the rounded integer mean of the activations, packed
/// (`out[c * s + m]`). The mean of values in `0..=ACT_MAX` stays in range, and its sum in an
/// i32 (a map holds at most 65,535 values).
pub(crate) fn global_average_pool<X: Words + ?Sized>(
    precision: Precision,
    map: [usize; 3],
    x: &X,
    s: usize,
    out: &mut [i32],
) {
    match precision {
        Precision::Q16 => pool_typed::<Q16, X>(map, x, s, out),
        _ => pool_typed::<Q8, X>(map, x, s, out),
    }
}

#[inline(never)]
fn pool_typed<F: Format, X: Words + ?Sized>(map: [usize; 3], x: &X, s: usize, out: &mut [i32]) {
    let area = map[1] * map[2];
    if area == 0 {
        return;
    }
    let n = x.len();
    for (c, outs) in out.chunks_exact_mut(s).take(map[0]).enumerate() {
        for (m, o) in outs.iter_mut().enumerate() {
            let mut sum = 0i32;
            for p in 0..area {
                let i = (c * area + p) * s + m;
                if i < n {
                    sum = sum.wrapping_add(F::value(x.word::<F>(i)));
                }
            }
            *o = F::pack((sum + (area / 2) as i32) / area as i32);
        }
    }
}
