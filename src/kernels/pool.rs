//! Max pooling per channel over `s` samples laid out unit-major (`x[i * s + m]`); `s = 1` for
//! a single input.

use crate::input::Input;
use crate::model::Geometry;

/// `out[(c, oy, ox) * s + m] = max over the window of x[(c, iy, ix) * s + m]`.
pub(super) fn forward<X: Input + ?Sized>(g: &Geometry, x: &X, s: usize, out: &mut [f32]) {
    let [channels, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    let mut o = 0;
    for c in 0..channels {
        for oy in 0..out_h {
            for ox in 0..out_w {
                for m in 0..s {
                    let mut best = f32::NEG_INFINITY;
                    for ky in 0..g.window[0] {
                        let row = (c * in_h + oy * g.stride + ky) * in_w + ox * g.stride;
                        for kx in 0..g.window[1] {
                            best = best.max(x.value((row + kx) * s + m));
                        }
                    }
                    out[o * s + m] = best;
                }
                o += 1;
            }
        }
    }
}
