//! Max pooling per channel over `s` samples laid out unit-major (`x[i * s + m]`); `s = 1` for
//! a single input.

use crate::input::Input;
use crate::model::Geometry;

/// `out[(c, oy, ox) * s + m] = max over the window of x[(c, iy, ix) * s + m]`.
pub(super) fn forward<X: Input + ?Sized>(g: &Geometry, x: &X, s: usize, out: &mut [f32]) {
    max_pool_by(g, s, f32::NEG_INFINITY, f32::max, |i| x.value(i), out);
}

/// Max pooling of any value type: `out[(c, oy, ox) * s + m]` is the largest of `value(i)`
/// over the window's inputs `i = (c, iy, ix) * s + m`, by `max`, from `lowest` (the f32
/// kernel and the fixed-point one, on activation words, share it).
#[inline(always)]
pub(crate) fn max_pool_by<T: Copy>(
    g: &Geometry,
    s: usize,
    lowest: T,
    max: impl Fn(T, T) -> T,
    value: impl Fn(usize) -> T,
    out: &mut [T],
) {
    let [channels, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    let mut o = 0;
    for c in 0..channels {
        for oy in 0..out_h {
            for ox in 0..out_w {
                for m in 0..s {
                    let mut best = lowest;
                    for ky in 0..g.window[0] {
                        let row = (c * in_h + oy * g.stride + ky) * in_w + ox * g.stride;
                        for kx in 0..g.window[1] {
                            best = max(best, value((row + kx) * s + m));
                        }
                    }
                    if let Some(v) = out.get_mut(o * s + m) {
                        *v = best;
                    }
                }
                o += 1;
            }
        }
    }
}
