//! Layer kernels (f32). [`forward_mean`], [`forward_moments`] and [`forward_samples`] dispatch
//! on the layer's operation to the linear, convolution and pooling kernels; all of them keep a
//! fixed summation order (bias first, then weights in stored order) so the host and the device
//! compute the same bits.

mod by_input;
mod conv;
pub(crate) mod graph;
mod linear;
pub(crate) mod moments;
mod pool;
pub(crate) use pool::max_pool_by;

use rand_xoshiro::Xoshiro128PlusPlus;

use crate::format::{Activation, Posterior};
use crate::input::Input;
use crate::model::{Layer, Operation};
use crate::normal::standard_normal;

#[inline(always)]
pub(crate) fn activate(activation: Activation, v: f32) -> f32 {
    match activation {
        Activation::Identity => v,
        Activation::Relu => {
            if v > 0.0 {
                v
            } else {
                0.0
            }
        }
    }
}

/// One input, posterior-mean weights: `out[..layer.outputs()]`.
pub(crate) fn forward_mean<X: Input + ?Sized>(layer: &Layer<'_>, x: &X, out: &mut [f32]) {
    match layer.operation() {
        // An exit head's caller passes the pooled map: its linear layer is what runs here.
        Operation::Linear | Operation::ExitHead { .. } => linear::forward_mean(layer, x, out),
        Operation::Conv2d(_) => conv::forward_mean(layer, x, out),
        Operation::MaxPool(g) => pool::forward(&g, x, 1, out),
        // The exit heads' pool, on its own.
        Operation::GlobalAvgPool { map } => graph::global_average_pool(map, x, 1, out),
        // Residual additions read two buffers: the engine runs them (`graph::residual_add`).
        Operation::ResidualAdd { .. } => {}
    }
}

/// One input, Gaussian weights: pre-activation `mean` and `std` of every output unit.
pub(crate) fn forward_moments<X: Input + ?Sized>(
    layer: &Layer<'_>,
    x: &X,
    mean: &mut [f32],
    std: &mut [f32],
) {
    match layer.operation() {
        Operation::Linear | Operation::ExitHead { .. } => {
            linear::forward_moments(layer, x, mean, std)
        }
        Operation::Conv2d(_) => conv::forward_moments(layer, x, mean, std),
        // Pooling and additions have no weights: never the first stochastic layer.
        Operation::MaxPool(_) | Operation::GlobalAvgPool { .. } | Operation::ResidualAdd { .. } => {
        }
    }
}

/// A chunk of `rngs.len()` samples, unit-major. `scratch` must hold
/// [`scratch_len`]`(layer, chunk)` words.
pub(crate) fn forward_samples<const CHUNK: usize>(
    layer: &Layer<'_>,
    x: &[f32],
    rngs: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    match layer.operation() {
        Operation::Linear | Operation::ExitHead { .. } => {
            linear::forward_samples::<CHUNK>(layer, x, rngs, out, scratch)
        }
        Operation::Conv2d(_) => conv::forward_samples(layer, x, rngs, out, scratch),
        Operation::MaxPool(g) => pool::forward(&g, x, rngs.len(), out),
        // Per sample, like max pooling: the chunk's samples are pooled side by side.
        Operation::GlobalAvgPool { map } => graph::global_average_pool(map, x, rngs.len(), out),
        Operation::ResidualAdd { .. } => {}
    }
}

/// A Bernoulli layer for a chunk of samples (see [`drop_inputs`]): dense rows run sample by
/// sample over the inputs each sample keeps (a dropped input costs nothing), other storage
/// masks the chunk's inputs into `scratch` and runs its rows as a deterministic layer's (a
/// by-input layer then skips, per sample, every input that is dropped or zero). `x` holds the
/// chunk's inputs, or with `shared` one value per input.
pub(crate) fn forward_dropout<const CHUNK: usize>(
    layer: &Layer<'_>,
    x: &[f32],
    shared: bool,
    streams: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    if let crate::model::Weights::Dense { .. } = layer.weights() {
        let kept: &mut [u32] = bytemuck::cast_slice_mut(scratch);
        return linear::forward_dropout_dense(layer, x, shared, streams, out, kept);
    }
    let n = layer.inputs() * streams.len();
    if scratch.len() < n {
        return;
    }
    let (masked, rest) = scratch.split_at_mut(n);
    let threshold = layer.drop_threshold();
    let next = rand_core::RngCore::next_u32;
    drop_inputs(threshold, x, shared, streams, next, masked);
    forward_samples::<CHUNK>(layer, masked, streams, out, rest);
}

/// Scratch words a layer needs for a chunk of `chunk` samples: the pre-activation variances
/// of a Gaussian linear layer (and, stored by rows and run per sample, not as the first
/// Gaussian layer, its inputs squared), or of one output channel of a convolution; a
/// Bernoulli layer's masked inputs.
pub(crate) fn scratch_len(layer: &Layer<'_>, chunk: usize, first_gaussian: bool) -> usize {
    if layer.posterior() == Posterior::Bernoulli {
        // A chunk of its masked inputs (`drop_inputs`); its rows then need nothing more.
        return layer.inputs() * chunk;
    }
    match layer.operation() {
        Operation::Conv2d(g) => g.output[1] * g.output[2] * chunk,
        Operation::Linear | Operation::ExitHead { .. }
            if layer.posterior() == Posterior::Gaussian =>
        {
            let squares = match layer.weights() {
                crate::model::Weights::Sparse { .. } if !first_gaussian => layer.inputs() * chunk,
                _ => 0,
            };
            layer.outputs() * chunk + squares
        }
        Operation::Linear
        | Operation::ExitHead { .. }
        | Operation::MaxPool(_)
        | Operation::GlobalAvgPool { .. }
        | Operation::ResidualAdd { .. } => 0,
    }
}

/// MC dropout: the inputs of a Bernoulli layer for a chunk of `s = streams.len()` samples,
/// each input kept or dropped per sample: `out[i * s + m]` is sample `m`'s input `i` when it
/// keeps it, zero otherwise. Sample `m` draws one `u32` per input, in input order, from its
/// own stream (`draw(&mut streams[m])`), and keeps the input when the draw is at or above
/// `threshold` ([`crate::format::drop_threshold`]): with probability `1 - p`, independently
/// of the other inputs and samples, and of the chunk size. `x` holds the chunk's inputs
/// unit-major (`x[i * s + m]`), or with `shared` one value per input that every sample reads
/// (the deterministic input of a first stochastic layer). Every format draws the same way, so
/// an f32 and a fixed-point model given the same seeds drop the same inputs.
pub(crate) fn drop_inputs<A: Copy + Default, R>(
    threshold: u32,
    x: &[A],
    shared: bool,
    streams: &mut [R],
    mut draw: impl FnMut(&mut R) -> u32,
    out: &mut [A],
) {
    let s = streams.len();
    if s == 0 {
        return;
    }
    let inputs = out.len() / s;
    let stride = if shared { 1 } else { s };
    for (m, stream) in streams.iter_mut().enumerate() {
        let offset = if shared { 0 } else { m };
        for i in 0..inputs {
            let kept = draw(stream) >= threshold;
            let value = match x.get(i * stride + offset) {
                Some(&v) if kept => v,
                _ => A::default(),
            };
            out[i * s + m] = value;
        }
    }
}

/// Draws `s` samples of a layer's activations from precomputed pre-activation moments:
/// `out[j * s + m] = act(mean[j] + std[j] * eps)`, one normal draw from `rngs[m]` per unit
/// (Gaussian layers only).
pub(crate) fn sample_from_moments(
    layer: &Layer<'_>,
    mean: &[f32],
    std: &[f32],
    rngs: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
) {
    let s = rngs.len();
    let act = layer.activation();
    if layer.posterior() != Posterior::Gaussian {
        for (&mu, unit) in mean.iter().zip(out.chunks_exact_mut(s)) {
            unit.fill(activate(act, mu));
        }
        return;
    }
    match act {
        Activation::Relu => draw_from_moments::<true>(mean, std, rngs, out),
        Activation::Identity => draw_from_moments::<false>(mean, std, rngs, out),
    }
}

/// Sample-major, so each sample's generator stays in registers across the units; every
/// stream still draws for its units in ascending order, as in every other kernel.
#[inline(always)]
fn draw_from_moments<const RELU: bool>(
    mean: &[f32],
    std: &[f32],
    rngs: &mut [Xoshiro128PlusPlus],
    out: &mut [f32],
) {
    let s = rngs.len();
    for (m, rng) in rngs.iter_mut().enumerate() {
        let mut local = rng.clone();
        // A plain index stepped by `s`: the loop test is the bounds check, and the generator
        // keeps its registers (an iterator adaptor here spilled it to the stack).
        let mut k = m;
        for (&mu, &sd) in mean.iter().zip(std) {
            if k >= out.len() {
                break;
            }
            out[k] = draw::<RELU>(mu, sd, &mut local);
            k += s;
        }
        *rng = local;
    }
}

/// Standard deviations below zero beyond which a ReLU unit is taken as off without a draw:
/// N(0, 1) exceeds 9 with probability 1.1e-19, far below what f32 probabilities resolve.
const INACTIVE_SIGMAS: f32 = 9.0;

/// `act(mean + sd * eps)` with `eps ~ N(0, 1)` from `rng`; a ReLU unit whose mean lies more
/// than 9 standard deviations below zero (probability of being on below 1.1e-19) is 0 without
/// a draw. Results stay deterministic: the host and the device skip the same draws.
#[inline(always)]
fn draw<const RELU: bool>(mean: f32, sd: f32, rng: &mut Xoshiro128PlusPlus) -> f32 {
    if RELU && mean < -INACTIVE_SIGMAS * sd {
        return 0.0;
    }
    let v = mean + sd * standard_normal(rng);
    if RELU && v <= 0.0 {
        0.0
    } else {
        v
    }
}

/// Finishes a chunk of pre-activations: with Gaussian weights adds the noise (see
/// [`add_noise_and_activate`]), otherwise only applies the activation.
pub(crate) fn finish_chunk(
    layer: &Layer<'_>,
    pre: &mut [f32],
    var: &mut [f32],
    rngs: &mut [Xoshiro128PlusPlus],
) {
    if layer.posterior() == Posterior::Gaussian {
        add_noise_and_activate(layer.activation(), pre, var, rngs);
    } else {
        for p in pre.iter_mut() {
            *p = activate(layer.activation(), *p);
        }
    }
}

/// Adds `sqrt(var) * eps` to every pre-activation of a chunk and applies the activation:
/// `pre[j * s + m] = act(pre[j * s + m] + sqrt(var[j * s + m]) * eps)`, sample-major (each
/// sample's generator stays in registers; its units draw in ascending order). The square roots
/// are taken first, in place, over the whole chunk (`var` then holds standard deviations).
pub(crate) fn add_noise_and_activate(
    activation: Activation,
    pre: &mut [f32],
    var: &mut [f32],
    rngs: &mut [Xoshiro128PlusPlus],
) {
    crate::arch::sqrt_in_place(var);
    match activation {
        Activation::Relu => add_noise::<true>(pre, var, rngs),
        Activation::Identity => add_noise::<false>(pre, var, rngs),
    }
}

#[inline(always)]
fn add_noise<const RELU: bool>(pre: &mut [f32], std: &[f32], rngs: &mut [Xoshiro128PlusPlus]) {
    let s = rngs.len();
    for (m, rng) in rngs.iter_mut().enumerate() {
        let mut local = rng.clone();
        let n = pre.len().min(std.len());
        let (pre, std) = (&mut pre[..n], &std[..n]);
        // A plain index stepped by `s` (see `draw_from_moments`).
        let mut k = m;
        while k < n {
            pre[k] = draw::<RELU>(pre[k], std[k], &mut local);
            k += s;
        }
        *rng = local;
    }
}

#[cfg(test)]
mod tests {
    use super::drop_inputs;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro128PlusPlus;
    use std::vec;

    /// Over many inputs and samples the kept fraction is `1 - p` within five binomial
    /// standard deviations, kept inputs keep their values, and every sample draws the same
    /// whether the input is shared or given per sample.
    #[test]
    fn masks_keep_inputs_at_the_rate_and_per_sample_streams() {
        for p in [0.0f32, 0.1, 0.5, 0.8] {
            let threshold = crate::format::drop_threshold(p);
            let (inputs, s) = (1000, 8);
            let shared: vec::Vec<f32> = (0..inputs).map(|i| 1.0 + i as f32).collect();
            let chunk: vec::Vec<f32> = shared
                .iter()
                .flat_map(|&v| core::iter::repeat_n(v, s))
                .collect();
            let mut streams: vec::Vec<Xoshiro128PlusPlus> = (0..s)
                .map(|m| Xoshiro128PlusPlus::seed_from_u64(m as u64))
                .collect();
            let mut again = streams.clone();
            let (mut a, mut b) = (vec![0.0f32; inputs * s], vec![0.0f32; inputs * s]);
            drop_inputs(
                threshold,
                &shared,
                true,
                &mut streams,
                RngCore::next_u32,
                &mut a,
            );
            drop_inputs(
                threshold,
                &chunk,
                false,
                &mut again,
                RngCore::next_u32,
                &mut b,
            );
            assert_eq!(a, b);
            let kept = a.iter().filter(|&&v| v != 0.0).count() as f64;
            let n = (inputs * s) as f64;
            let q = 1.0 - p as f64;
            let sd = (n * q * (1.0 - q)).sqrt();
            assert!(
                (kept - n * q).abs() <= 5.0 * sd,
                "p {p}: kept {kept} of {n}"
            );
            for (k, &v) in a.iter().enumerate() {
                assert!(v == 0.0 || v == shared[k / s]);
            }
            // Sample m's masks come from stream m alone: its first draw decides input 0.
            let mut first = Xoshiro128PlusPlus::seed_from_u64(3);
            assert_eq!(a[3] != 0.0, first.next_u32() >= threshold);
        }
    }
}
