//! Integer kernels of fixed-point convolutions and max pooling (format version 6), in the
//! three forms of every fixed-point layer: one input with the posterior-mean weights
//! ([`mean`]), one input with Gaussian weights as the first stochastic layer
//! ([`moments`]), and a chunk of `s` samples laid out unit-major, `x[i * s + m]`
//! ([`sampled`]).
//!
//! A convolution is a linear layer whose rows are (output channel, position) pairs sharing
//! their channel's taps and row parameters: per output unit, `A = Σ a θ` and `V = Σ sq(a) σ²`
//! over the channel's taps that fall inside the input (zero padding contributes nothing),
//! in stored tap order, then the same output step as a linear row (`kernels::LineFinish`,
//! `kernels::unit_moments`). Output-stationary: a unit's sums stay in registers while its
//! channel's taps stream past, so no scratch is needed beyond the noise draws.
//!
//! All arithmetic is integer and wraps on overflow, exactly as the linear kernels, so the
//! host and every core compute the same bits.

use super::kernels::{
    finish, layout, params, unit_moments, Format, LineFinish, NoIndex, Words, GROUP, Q16, Q8,
};
use super::model::{QCounts, QLayer};
use crate::arch::{q8_tap_means4, q8_tap_sums4, Q8Taps};
use crate::format::{unpack_tap, Posterior, Precision};
use crate::model::Geometry;

/// Runs `body::<F, GAUSS>` with the layer's format and posterior.
macro_rules! dispatch_conv {
    ($layer:expr, $body:ident $(:: <$x:ty>)? ( $($arg:expr),* )) => {{
        let gaussian = $layer.posterior == Posterior::Gaussian;
        match ($layer.precision, gaussian) {
            (Precision::Q16, true) => $body::<Q16, true $(, $x)?>($($arg),*),
            (Precision::Q16, false) => $body::<Q16, false $(, $x)?>($($arg),*),
            (_, true) => $body::<Q8, true $(, $x)?>($($arg),*),
            (_, false) => $body::<Q8, false $(, $x)?>($($arg),*),
        }
    }};
}

/// Calls `f(channel, taps, records)` for every output channel, with its taps and their
/// weight records.
#[inline(always)]
fn for_each_channel(layer: &QLayer<'_>, mut f: impl FnMut(usize, &[u32], &[u8])) {
    let QCounts::U16(counts) = layer.counts else {
        return;
    };
    let len = layer.record_len;
    let mut start = 0usize;
    for (co, &n) in counts.iter().enumerate() {
        let end = start + n as usize;
        if let (Some(taps), Some(records)) = (
            layer.taps.get(start..end),
            layer.records.get(start * len..end * len),
        ) {
            f(co, taps, records);
        }
        start = end;
    }
}

/// The input a tap reads at output position `(oy, ox)`; `None` in the zero padding.
#[inline(always)]
fn tap_input(g: &Geometry, tap: u32, oy: usize, ox: usize) -> Option<usize> {
    let (c, ky, kx) = unpack_tap(tap);
    let iy = (oy * g.stride + ky).checked_sub(g.padding)?;
    let ix = (ox * g.stride + kx).checked_sub(g.padding)?;
    if iy >= g.input[1] || ix >= g.input[2] {
        return None;
    }
    Some((c * g.input[1] + iy) * g.input[2] + ix)
}

/// The input index of the window's first element at output position `(oy, ox)` when the
/// whole kernel lies inside the input (every position but a border of width `padding`); then
/// a tap reads `origin + (c * in_h + ky) * in_w + kx` without a bounds check.
#[inline(always)]
fn window_origin(g: &Geometry, oy: usize, ox: usize) -> Option<usize> {
    let [_, in_h, in_w] = g.input;
    let (y0, x0) = (oy * g.stride, ox * g.stride);
    let inside = y0 >= g.padding
        && x0 >= g.padding
        && y0 + g.window[0] <= in_h + g.padding
        && x0 + g.window[1] <= in_w + g.padding;
    inside.then(|| (y0 - g.padding) * in_w + (x0 - g.padding))
}

/// The input a tap reads at `(oy, ox)`, the window's origin there given (interior) or not
/// (border: checked); `None` in the zero padding.
#[inline(always)]
fn tap_input_at(
    g: &Geometry,
    origin: Option<usize>,
    tap: u32,
    oy: usize,
    ox: usize,
) -> Option<usize> {
    match origin {
        Some(o) => {
            let (c, ky, kx) = unpack_tap(tap);
            Some(o + (c * g.input[1] + ky) * g.input[2] + kx)
        }
        None => tap_input(g, tap, oy, ox),
    }
}

/// The sums `(A, V)` of one output unit at `(oy, ox)` for one input (`V = 0` unless
/// `with_var` on a Gaussian layer).
#[inline(always)]
fn unit_sums<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    g: &Geometry,
    taps: &[u32],
    records: &[u8],
    x: &X,
    (oy, ox): (usize, usize),
    with_var: bool,
) -> (i64, u64) {
    let (len, at_theta, at_sigma) = layout::<F, NoIndex, GAUSS>();
    let (mut a, mut v) = (F::Acc::default(), F::Var::default());
    let origin = window_origin(g, oy, ox);
    for (&tap, r) in taps.iter().zip(records.chunks_exact(len)) {
        let Some(i) = tap_input_at(g, origin, tap, oy, ox) else {
            continue;
        };
        let w = x.word::<F>(i);
        a = F::mac(a, w, F::theta(r, at_theta));
        if GAUSS && with_var {
            v = F::var_mac(v, w, F::sigma2(r, at_sigma));
        }
    }
    (F::acc_i64(a), F::var_u64(v))
}

/// Calls `f(channel, unit, A, V)` for every output unit of one input, in unit order (`V = 0`
/// unless `with_var`).
#[inline(always)]
fn for_each_unit<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    with_var: bool,
    mut f: impl FnMut(usize, usize, i64, u64),
) {
    let [_, out_h, out_w] = g.output;
    for_each_channel(layer, |co, taps, records| {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let (a, v) = unit_sums::<F, GAUSS, X>(g, taps, records, x, (oy, ox), with_var);
                f(co, (co * out_h + oy) * out_w + ox, a, v);
            }
        }
    });
}

/// Mean weights, one input: `out[(co, oy, ox)]` is the output word of that unit.
#[inline(never)]
pub(crate) fn mean<X: Words + ?Sized>(layer: &QLayer<'_>, g: &Geometry, x: &X, out: &mut [i32]) {
    // The precomputed tap walks, except on ARMv6-M, whose flash they would not fit beside
    // the rest (`tb_flash_lean`: the generic loop gives the same sums).
    if let (Precision::Q8, Some(words), false) = (layer.precision, x.words(), cfg!(tb_flash_lean)) {
        match layer.posterior {
            Posterior::Gaussian => mean_q8::<true>(layer, g, words, out),
            _ => mean_q8::<false>(layer, g, words, out),
        }
        return;
    }
    dispatch_conv!(layer, mean_typed::<X>(layer, g, x, out))
}

/// Largest tap count of a channel given to the precomputed tap walks (larger channels take
/// the generic loop); the table lives on the stack, 8 bytes per tap.
const MAX_TAPS: usize = 128;

/// The output columns `lo..hi` whose windows lie inside the input along x (for a row inside
/// along y, `window_origin` is `Some` exactly there).
fn interior_columns(g: &Geometry) -> (usize, usize) {
    let [_, _, in_w] = g.input;
    let out_w = g.output[2];
    let stride = g.stride.max(1);
    let hi = match (in_w + g.padding).checked_sub(g.window[1]) {
        Some(d) => (d / stride + 1).min(out_w),
        None => 0,
    };
    (g.padding.div_ceil(stride).min(hi), hi)
}

/// The taps of one channel kept at one window case, as `Q8Taps` pairs (the byte offset of
/// the tap's input times `scale`, the words per input, and its weight word: `SAMPLED`, θ in
/// the low half-word and σ² in the high one, else θ sign-extended): those with `ky` in `key[0]..key[1]` and `kx` in `key[2]..key[3]`, the
/// taps reading inside the input at every output position of that case (the others read the
/// zero padding and add nothing). Offsets are taken from the smallest kept one, `base` words
/// from the window's first input, so they are all non-negative.
struct Clipped {
    key: Option<[usize; 4]>,
    base: usize,
    len: usize,
    reach_ok: bool,
    buf: [[i32; 2]; MAX_TAPS],
}

impl Clipped {
    const fn new() -> Self {
        Self {
            key: None,
            base: 0,
            len: 0,
            reach_ok: false,
            buf: [[0i32; 2]; MAX_TAPS],
        }
    }

    /// Builds the table of `key` unless it is the one held; `false` if the channel has more
    /// than `MAX_TAPS` taps or an offset does not fit.
    fn prepare<const GAUSS: bool, const SAMPLED: bool>(
        &mut self,
        g: &Geometry,
        taps: &[u32],
        records: &[u8],
        scale: usize,
        key: [usize; 4],
    ) -> bool {
        if self.key == Some(key) {
            return self.reach_ok;
        }
        self.key = Some(key);
        self.reach_ok = false;
        let (len, at_theta, at_sigma) = layout::<Q8, NoIndex, GAUSS>();
        if taps.len() > MAX_TAPS {
            return false;
        }
        let [_, in_h, in_w] = g.input;
        let (mut n, mut base) = (0usize, usize::MAX);
        for (&tap, r) in taps.iter().zip(records.chunks_exact(len)) {
            let (c, ky, kx) = unpack_tap(tap);
            if ky < key[0] || ky >= key[1] || kx < key[2] || kx >= key[3] {
                continue;
            }
            let theta = Q8::theta(r, at_theta) as i32;
            let weight = match (SAMPLED, GAUSS) {
                (false, _) => theta,
                (true, false) => theta & 0xffff,
                (true, true) => theta & 0xffff | (Q8::sigma2(r, at_sigma) as i32) << 16,
            };
            let rel = (c * in_h + ky) * in_w + kx;
            base = base.min(rel);
            let Some(pair) = self.buf.get_mut(n) else {
                return false;
            };
            // The word offset for now, scaled below.
            *pair = [rel as i32, weight];
            if rel > i32::MAX as usize {
                return false;
            }
            n += 1;
        }
        let base = if n == 0 { 0 } else { base };
        for pair in self.buf.iter_mut().take(n) {
            let Some(off) = (pair[0] as usize - base)
                .checked_mul(scale * 4)
                .and_then(|o| i32::try_from(o).ok())
            else {
                return false;
            };
            pair[0] = off;
        }
        (self.base, self.len, self.reach_ok) = (base, n, true);
        true
    }

    /// The held table and the input word its offsets start from at the window whose first
    /// input (maybe in the padding) is `origin` (signed); `None` if not prepared, or if it
    /// is empty (every tap in the padding: sums 0).
    fn view(&self, origin: isize) -> Option<(Q8Taps<'_>, usize)> {
        placed(self.table(), origin)
    }

    /// The held table and `base`; `None` if not prepared or empty.
    fn table(&self) -> Option<(Q8Taps<'_>, usize)> {
        if !self.reach_ok || self.len == 0 {
            return None;
        }
        Some((Q8Taps::new(self.buf.get(..self.len)?)?, self.base))
    }
}

/// A table and its `base` placed at the window whose first input is `origin` (see
/// [`Clipped::view`]).
fn placed(table: Option<(Q8Taps<'_>, usize)>, origin: isize) -> Option<(Q8Taps<'_>, usize)> {
    let (t, base) = table?;
    Some((t, usize::try_from(origin + base as isize).ok()?))
}

/// The kept `ky` (`y`) or `kx` range of the windows starting at `start` along an axis of
/// `size` inputs, window `window` and padding `pad`.
fn kept(start: usize, size: usize, window: usize, pad: usize) -> (usize, usize) {
    (
        pad.saturating_sub(start),
        window.min((size + pad).saturating_sub(start)),
    )
}

/// The signed input index of the first element of the window at `(oy, ox)`.
fn signed_origin(g: &Geometry, oy: usize, ox: usize) -> isize {
    let p = g.padding as isize;
    (((oy * g.stride) as isize) - p) * g.input[2] as isize + ((ox * g.stride) as isize - p)
}

/// The key of the table of the window at `(oy, ox)`.
fn clip_key(g: &Geometry, oy: usize, ox: usize) -> [usize; 4] {
    let (ya, yb) = kept(oy * g.stride, g.input[1], g.window[0], g.padding);
    let (xa, xb) = kept(ox * g.stride, g.input[2], g.window[1], g.padding);
    [ya, yb, xa, xb]
}

/// The q8 mean sum of one position through a table: its taps at `at + offset / 4`.
#[inline(always)]
fn walk_mean1(t: Q8Taps<'_>, x: &[i32], at: usize) -> i32 {
    let mut a = 0i32;
    for &[off, theta] in t.pairs() {
        if let Some(&w) = x.get(at + (off as usize >> 2)) {
            a = Q8::mac(a, w, theta as i8);
        }
    }
    a
}

/// Mean weights in q8 on an input of words, every window through precomputed taps clipped to
/// its case (border windows drop the taps reading the padding): a row's interior columns
/// share one table, four positions at a time (`arch::q8_tap_means4`) and its last ones one
/// at a time, border columns one at a time with their own. The same sums as [`mean_typed`]
/// (wrapping sums of the same taps, in another order).
fn mean_q8<const GAUSS: bool>(layer: &QLayer<'_>, g: &Geometry, x: &[i32], out: &mut [i32]) {
    let [_, out_h, out_w] = g.output;
    let (lo, hi) = interior_columns(g);
    let mut slots = [Clipped::new(), Clipped::new(), Clipped::new()];
    let mut full = Clipped::new();
    let full_key = [0, g.window[0], 0, g.window[1]];
    for_each_channel(layer, |co, taps, records| {
        let (m_theta, _, bias) = params(layer, co);
        let word = |a: i32| {
            let z = (a as i64).wrapping_mul(m_theta).wrapping_add(bias);
            finish::<Q8>(z, layer.shift, layer.activation)
        };
        for slot in slots.iter_mut() {
            slot.key = None;
        }
        // The interior windows' table, its `Q8Taps` made once per channel.
        full.key = None;
        let full_ok = full.prepare::<GAUSS, false>(g, taps, records, 1, full_key);
        let full_table = full.table();
        for oy in 0..out_h {
            let row = (co * out_h + oy) * out_w;
            let mut ox = 0;
            while ox < out_w {
                let (key, origin) = (clip_key(g, oy, ox), signed_origin(g, oy, ox));
                let (end, view) = if full_ok && ox >= lo && ox < hi && key == full_key {
                    (hi, placed(full_table, origin))
                } else {
                    let (slot, end) = match ox {
                        _ if ox < lo => (&mut slots[0], ox + 1),
                        _ if ox < hi => (&mut slots[1], hi),
                        _ => (&mut slots[2], ox + 1),
                    };
                    if !slot.prepare::<GAUSS, false>(g, taps, records, 1, key) {
                        let (a, _) =
                            unit_sums::<Q8, GAUSS, [i32]>(g, taps, records, x, (oy, ox), false);
                        if let Some(w) = out.get_mut(row + ox) {
                            *w = word(a as i32);
                        }
                        ox += 1;
                        continue;
                    }
                    (end, slot.view(origin))
                };
                // The positions `ox..end` share the table, `stride` words apart.
                let start = ox;
                while ox < end {
                    let at = |p: usize| view.map(|(t, at)| (t, at + (p - start) * g.stride));
                    if ox + 4 <= end {
                        let sums = match at(ox) {
                            Some((t, at)) => q8_tap_means4(t, x, at, g.stride),
                            None => [0; 4],
                        };
                        if let Some(outs) = out.get_mut(row + ox..row + ox + 4) {
                            for (w, &a) in outs.iter_mut().zip(&sums) {
                                *w = word(a);
                            }
                        }
                        ox += 4;
                    } else {
                        let a = at(ox).map_or(0, |(t, at)| walk_mean1(t, x, at));
                        if let Some(w) = out.get_mut(row + ox) {
                            *w = word(a);
                        }
                        ox += 1;
                    }
                }
            }
        }
    });
}

#[inline(never)]
fn mean_typed<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    out: &mut [i32],
) {
    for_each_unit::<F, GAUSS, X>(layer, g, x, false, |co, u, a, _| {
        let (m_theta, _, bias) = params(layer, co);
        let z = a.wrapping_mul(m_theta).wrapping_add(bias);
        if let Some(o) = out.get_mut(u) {
            *o = finish::<F>(z, layer.shift, layer.activation);
        }
    });
}

/// Gaussian weights, one input: `base[u]`, `scale[u]` of every output unit `u`, as
/// `kernels::moments_layer` defines them.
#[inline(never)]
pub(crate) fn moments<X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    dispatch_conv!(layer, moments_typed::<X>(layer, g, x, base, scale))
}

#[inline(never)]
fn moments_typed<F: Format, const GAUSS: bool, X: Words + ?Sized>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &X,
    base: &mut [i64],
    scale: &mut [i64],
) {
    for_each_unit::<F, GAUSS, X>(layer, g, x, true, |co, u, a, v| {
        if let (Some(b), Some(sc)) = (base.get_mut(u), scale.get_mut(u)) {
            (*b, *sc) = unit_moments(layer, co, a, v);
        }
    });
}

/// A chunk of `s` samples: `x[i * s + m]` is input `i` of sample `m`, `eps[u * s + m]` the
/// noise of output unit `u` (Gaussian layers); writes `out[u * s + m]`.
#[inline(never)]
pub(crate) fn sampled(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    if layer.precision == Precision::Q8 && !cfg!(tb_flash_lean) {
        match layer.posterior {
            Posterior::Gaussian => sampled_q8::<true>(layer, g, x, s, eps, out),
            _ => sampled_q8::<false>(layer, g, x, s, eps, out),
        }
        return;
    }
    dispatch_conv!(layer, sampled_typed(layer, g, x, s, eps, out))
}

/// Sample groups of q8 layers, every window through precomputed taps clipped to its case
/// (border windows drop the taps reading the padding): four samples at a time
/// (`arch::q8_tap_sums4`), a chunk's last samples through the same table. The same sums as
/// [`sampled_typed`] (wrapping sums of the same taps, in another order).
#[inline(never)]
fn sampled_q8<const GAUSS: bool>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    const N: usize = 4;
    let [_, out_h, out_w] = g.output;
    let (lo, hi) = interior_columns(g);
    let mut slots = [Clipped::new(), Clipped::new(), Clipped::new()];
    let mut full = Clipped::new();
    let full_key = [0, g.window[0], 0, g.window[1]];
    for_each_channel(layer, |co, taps, records| {
        let finish = LineFinish::new(layer, co);
        for slot in slots.iter_mut() {
            slot.key = None;
        }
        // The interior windows' table, its `Q8Taps` made once per channel.
        full.key = None;
        let full_ok = full.prepare::<GAUSS, true>(g, taps, records, s, full_key);
        let full_table = full.table();
        for oy in 0..out_h {
            let mut ox = 0;
            while ox < out_w {
                let (key, origin) = (clip_key(g, oy, ox), signed_origin(g, oy, ox));
                let (end, fast, view) = if full_ok && ox >= lo && ox < hi && key == full_key {
                    (hi, true, placed(full_table, origin))
                } else {
                    let (slot, end) = match ox {
                        _ if ox < lo => (&mut slots[0], ox + 1),
                        _ if ox < hi => (&mut slots[1], hi),
                        _ => (&mut slots[2], ox + 1),
                    };
                    let fast = slot.prepare::<GAUSS, true>(g, taps, records, s, key);
                    (end, fast, slot.view(origin))
                };
                // The positions `ox..end` share the table, `stride` input words apart.
                let start = ox;
                for ox in start..end {
                    let u = (co * out_h + oy) * out_w + ox;
                    let view = view.map(|(t, at)| (t, at + (ox - start) * g.stride));
                    let origin = window_origin(g, oy, ox);
                    let mut g0 = 0;
                    while g0 < s {
                        let n = N.min(s - g0);
                        let (acc, var) = match view {
                            Some((t, at)) if n == N => q8_tap_sums4(t, x, at * s + g0),
                            Some((t, at)) => tail_sums(t, x, at * s + g0, n),
                            None if fast => ([0; N], [0; N]),
                            None => {
                                slow_sums::<GAUSS>(g, taps, records, x, (origin, oy, ox), s, g0)
                            }
                        };
                        let at = u * s + g0;
                        if let Some(outs) = out.get_mut(at..at + n) {
                            let eps = eps.get(at..at + n).unwrap_or(&[]);
                            finish.group::<Q8, GAUSS, N>((&acc, &var), eps, outs);
                        }
                        g0 += n;
                    }
                }
                ox = end;
            }
        }
    });
}

/// The sums of a chunk's last `n < 4` samples of one position through a table (see
/// `arch::q8_tap_sums4`).
#[inline(always)]
fn tail_sums(t: Q8Taps<'_>, x: &[i32], at: usize, n: usize) -> ([i32; 4], [i32; 4]) {
    let (mut acc, mut var) = ([0i32; 4], [0i32; 4]);
    for &[off, weight] in t.pairs() {
        let first = at + (off as usize >> 2);
        let Some(xs) = x.get(first..first + n) else {
            continue;
        };
        let (theta, sigma2) = (weight as i16 as i32, weight >> 16);
        for (m, &w) in xs.iter().enumerate().take(4) {
            acc[m] = acc[m].wrapping_add((w as i16 as i32) * theta);
            var[m] = var[m].wrapping_add((w >> 16) * sigma2);
        }
    }
    (acc, var)
}

/// The sums of up to four samples of one position tap by tap (channels too large for a
/// table), as [`sampled_typed`].
fn slow_sums<const GAUSS: bool>(
    g: &Geometry,
    taps: &[u32],
    records: &[u8],
    x: &[i32],
    (origin, oy, ox): (Option<usize>, usize, usize),
    s: usize,
    g0: usize,
) -> ([i32; 4], [i32; 4]) {
    let (len, at_theta, at_sigma) = layout::<Q8, NoIndex, GAUSS>();
    let n = 4.min(s - g0);
    let (mut acc, mut var) = ([0i32; 4], [0i32; 4]);
    for (&tap, r) in taps.iter().zip(records.chunks_exact(len)) {
        let Some(i) = tap_input_at(g, origin, tap, oy, ox) else {
            continue;
        };
        let Some(xs) = x.get(i * s + g0..i * s + g0 + n) else {
            continue;
        };
        let t = Q8::theta(r, at_theta);
        for (m, &w) in xs.iter().enumerate().take(4) {
            acc[m] = Q8::mac(acc[m], w, t);
            if GAUSS {
                var[m] = Q8::var_mac(var[m], w, Q8::sigma2(r, at_sigma));
            }
        }
    }
    (acc, var)
}

#[inline(never)]
fn sampled_typed<F: Format, const GAUSS: bool>(
    layer: &QLayer<'_>,
    g: &Geometry,
    x: &[i32],
    s: usize,
    eps: &[i16],
    out: &mut [i32],
) {
    let (len, at_theta, at_sigma) = layout::<F, NoIndex, GAUSS>();
    let [_, out_h, out_w] = g.output;
    for_each_channel(layer, |co, taps, records| {
        let finish = LineFinish::new(layer, co);
        for oy in 0..out_h {
            for ox in 0..out_w {
                let u = (co * out_h + oy) * out_w + ox;
                let origin = window_origin(g, oy, ox);
                let mut g0 = 0;
                while g0 < s {
                    let n = GROUP.min(s - g0);
                    let mut acc = [F::Acc::default(); GROUP];
                    let mut var = [F::Var::default(); GROUP];
                    for (&tap, r) in taps.iter().zip(records.chunks_exact(len)) {
                        let Some(i) = tap_input_at(g, origin, tap, oy, ox) else {
                            continue;
                        };
                        let Some(xs) = x.get(i * s + g0..i * s + g0 + n) else {
                            continue;
                        };
                        let t = F::theta(r, at_theta);
                        for (m, &w) in xs.iter().enumerate().take(GROUP) {
                            acc[m] = F::mac(acc[m], w, t);
                            if GAUSS {
                                var[m] = F::var_mac(var[m], w, F::sigma2(r, at_sigma));
                            }
                        }
                    }
                    let at = u * s + g0;
                    if let Some(outs) = out.get_mut(at..at + n) {
                        let eps = eps.get(at..at + n).unwrap_or(&[]);
                        finish.group::<F, GAUSS, GROUP>((&acc, &var), eps, outs);
                    }
                    g0 += n;
                }
            }
        }
    });
}

/// Max pooling of `s` samples (`s = 1` for one input): `out[(c, oy, ox) * s + m]` is the
/// largest word of the window. Activations are non-negative and their words grow with them
/// (the q8 word holds `a^2 >> 1` above `a`), so the largest word is the word of the largest
/// activation.
#[inline(never)]
pub(crate) fn max_pool<X: Words + ?Sized>(
    precision: Precision,
    g: &Geometry,
    x: &X,
    s: usize,
    out: &mut [i32],
) {
    match precision {
        Precision::Q16 => pool_typed::<Q16, X>(g, x, s, out),
        _ => pool_typed::<Q8, X>(g, x, s, out),
    }
}

#[inline(never)]
fn pool_typed<F: Format, X: Words + ?Sized>(g: &Geometry, x: &X, s: usize, out: &mut [i32]) {
    let n = x.len();
    let word = |i: usize| if i < n { x.word::<F>(i) } else { i32::MIN };
    crate::kernels::max_pool_by(g, s, i32::MIN, i32::max, word, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::UQ16;
    use crate::format::{pack_tap, Activation, Storage};
    use crate::model::Operation;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro128PlusPlus;
    use std::vec::Vec;

    /// The clipped tap walks (`mean_q8`, `sampled_q8`) against the tap-by-tap loops
    /// (`mean_typed`, `sampled_typed`, which check every tap's input position on their own),
    /// bit for bit: random sparse 3x3 and 5x5 q8 kernels, padding 0 to 2, stride 1 and 2,
    /// chunks of 1 to 9 samples, Gaussian and point weights.
    #[test]
    fn clipped_tap_walks_match_the_tap_by_tap_loops() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(11);
        let mut cases = 0;
        for trial in 0..60 {
            let (cin, cout) = (1 + trial % 3, 1 + trial % 4);
            let k = [3, 5][trial % 2];
            let (stride, padding) = (1 + (trial / 2) % 2, (trial / 4) % 3);
            let side = 5 + trial % 7;
            let Some(out) = crate::format::window_output(side, k, stride, padding) else {
                continue;
            };
            let g = Geometry {
                input: [cin, side, side],
                output: [cout, out, out],
                window: [k, k],
                stride,
                padding,
            };
            let (mut taps, mut records, mut counts, mut params) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..cout {
                let mut n = 0u16;
                for c in 0..cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            if rng.next_u32() % 3 != 0 {
                                taps.push(pack_tap(c, ky, kx));
                                records.push(rng.next_u32() as u8);
                                records.push(rng.next_u32() as u8);
                                n += 1;
                            }
                        }
                    }
                }
                counts.push(n);
                params.extend([
                    1 + (rng.next_u32() % 300) as i32,
                    1 + (rng.next_u32() % 300) as i32,
                ]);
                params.push((rng.next_u32() % 4000) as i32 - 2000);
            }
            let gauss = trial % 5 != 0;
            let layer = QLayer {
                inputs: cin * side * side,
                outputs: cout * out * out,
                activation: Activation::Relu,
                posterior: if gauss {
                    Posterior::Gaussian
                } else {
                    Posterior::Deterministic
                },
                storage: Storage::Sparse,
                shift: 10,
                precision: Precision::Q8,
                operation: Operation::Conv2d(g),
                params: &params,
                counts: QCounts::U16(&counts),
                taps: &taps,
                records: &records,
                record_len: if gauss { 2 } else { 1 },
                residual_source: false,
                skip_multiplier: 0,
                exit_prior: UQ16(0),
                bias_shift: 0,
                drop_threshold: 0,
            };
            let units = layer.outputs;
            let x1: Vec<i32> = (0..layer.inputs).map(|_| rng.next_u32() as i32).collect();
            let (mut got, mut want) = (std::vec![0; units], std::vec![0; units]);
            if gauss {
                mean_q8::<true>(&layer, &g, &x1, &mut got);
                mean_typed::<Q8, true, [i32]>(&layer, &g, &x1[..], &mut want);
            } else {
                mean_q8::<false>(&layer, &g, &x1, &mut got);
                mean_typed::<Q8, false, [i32]>(&layer, &g, &x1[..], &mut want);
            }
            assert_eq!(got, want, "mean, trial {trial}");
            for s in 1..10 {
                let x: Vec<i32> = (0..layer.inputs * s)
                    .map(|_| rng.next_u32() as i32)
                    .collect();
                let eps: Vec<i16> = (0..units * s).map(|_| rng.next_u32() as i16).collect();
                let (mut got, mut want) = (std::vec![0; units * s], std::vec![0; units * s]);
                if gauss {
                    sampled_q8::<true>(&layer, &g, &x, s, &eps, &mut got);
                    sampled_typed::<Q8, true>(&layer, &g, &x, s, &eps, &mut want);
                } else {
                    sampled_q8::<false>(&layer, &g, &x, s, &eps, &mut got);
                    sampled_typed::<Q8, false>(&layer, &g, &x, s, &eps, &mut want);
                }
                assert_eq!(got, want, "sampled, trial {trial}, s {s}");
                cases += 1;
            }
        }
        assert!(cases > 300);
    }
}
