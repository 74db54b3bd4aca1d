//! The integer-only engine: runs a validated [`QModel`] on raw 8-bit inputs in a
//! caller-provided workspace, with the posterior mean weights or as a Monte Carlo posterior
//! predictive. No floating-point operation is executed (or linked) on this path.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;

use super::kernels::{
    draw_from_moments, draw_noise, mean_layer, moments_layer, narrow_moments, sampled_layer,
};
use super::model::QModel;
use super::noise::NormalQ8;
use super::predictive::{QAccumulator, QPrediction};
use crate::error::InferenceError;
use crate::format::Posterior;
use crate::Mode;

/// Units of the first stochastic layer whose "zero in every sample" flags are kept (on the
/// stack) so that the next layer skips their weights; wider layers track their first 256.
const MAX_DEAD_TRACKED: usize = 256;

/// Runs a fixed-point model in a borrowed workspace of 64-bit words
/// ([`QModel::workspace_len`]`(CHUNK)`). As with [`crate::Engine`], `CHUNK` Monte Carlo
/// samples share each pass over the weights, and results never depend on `CHUNK`: sample `m`
/// draws its noise from its own Xoshiro128++ stream seeded by the `m`-th `u64` of the caller's
/// generator.
pub struct QEngine<'m, 'w, const CHUNK: usize> {
    model: &'m QModel<'m>,
    workspace: &'w mut [u64],
}

impl<'m, 'w, const CHUNK: usize> QEngine<'m, 'w, CHUNK> {
    /// Binds a model to a workspace; fails if the workspace is too small for `CHUNK`.
    pub fn new(model: &'m QModel<'m>, workspace: &'w mut [u64]) -> Result<Self, InferenceError> {
        const { assert!(CHUNK > 0, "CHUNK must be at least 1") };
        let needed = model.workspace_len(CHUNK);
        if workspace.len() < needed {
            return Err(InferenceError::WorkspaceTooSmall {
                needed,
                provided: workspace.len(),
            });
        }
        Ok(Self { model, workspace })
    }

    /// The model this engine runs.
    pub fn model(&self) -> &'m QModel<'m> {
        self.model
    }

    /// Predicts from raw 8-bit inputs (`model.input_len()` values, channel-major), which the
    /// first layer reads directly. `rng` is only read in [`Mode::MonteCarlo`].
    pub fn predict_u8<const K: usize>(
        &mut self,
        raw: &[u8],
        mode: Mode,
        rng: &mut impl RngCore,
    ) -> Result<QPrediction<K>, InferenceError> {
        let model = self.model;
        let classes = model.num_classes();
        if raw.len() != model.input_len() {
            return Err(InferenceError::InputLength {
                expected: model.input_len(),
                found: raw.len(),
            });
        }
        if classes > K {
            return Err(InferenceError::ClassCapacity {
                classes,
                capacity: K,
            });
        }
        let layers = model.layers();
        let width = model.max_width();
        let (moments, rest) = self.workspace.split_at_mut(2 * width);
        let (base, scale) = moments.split_at_mut(width);
        let base: &mut [i64] = bytemuck::cast_slice_mut(base);
        let scale: &mut [i64] = bytemuck::cast_slice_mut(scale);
        let act_words = (width * CHUNK).div_ceil(2) * 2;
        let (acts, eps) = rest.split_at_mut(act_words);
        let acts: &mut [i32] = bytemuck::cast_slice_mut(acts);
        let (mut cur, mut next) = acts.split_at_mut(width * CHUNK);
        let eps: &mut [i16] = bytemuck::cast_slice_mut(eps);
        let mut acc = QAccumulator::<K>::new(classes);

        let stochastic_from = match mode {
            Mode::MeanWeights => None,
            Mode::MonteCarlo { .. } => layers
                .iter()
                .position(|l| l.posterior() == Posterior::Gaussian),
        };
        let prefix_end = stochastic_from.unwrap_or(layers.len());
        if prefix_end > 0 {
            mean_layer(&layers[0], raw, cur, (base, scale));
            for layer in &layers[1..prefix_end] {
                mean_layer(layer, &cur[..layer.inputs()], next, (base, scale));
                core::mem::swap(&mut cur, &mut next);
            }
        }
        let (Some(first), Mode::MonteCarlo { samples }) = (stochastic_from, mode) else {
            acc.add_logits(&cur[..classes]);
            return Ok(acc.finish());
        };

        let stochastic = &layers[first];
        let units = stochastic.outputs();
        if first == 0 {
            moments_layer(stochastic, raw, base, scale);
        } else {
            moments_layer(stochastic, &cur[..stochastic.inputs()], base, scale);
        }
        let frac_bits = narrow_moments(stochastic, &mut base[..units], &mut scale[..units]);
        // Units that no draw can switch on (scale -1): zero in every sample.
        let mut dead = [false; MAX_DEAD_TRACKED];
        for (d, &sc) in dead.iter_mut().zip(&scale[..units]) {
            *d = sc < 0;
        }
        let units_tracked = units.min(MAX_DEAD_TRACKED);
        let total = samples.get() as usize;
        let mut streams: [NormalQ8; CHUNK] =
            core::array::from_fn(|_| NormalQ8::new(Xoshiro128PlusPlus::from_seed([0x5a; 16])));
        let mut done = 0;
        while done < total {
            let s = CHUNK.min(total - done);
            let streams = &mut streams[..s];
            for st in streams.iter_mut() {
                *st = NormalQ8::new(Xoshiro128PlusPlus::seed_from_u64(rng.next_u64()));
            }
            draw_from_moments(
                stochastic,
                (&base[..units], &scale[..units], frac_bits),
                streams,
                &mut cur[..units * s],
            );
            for (n, layer) in layers[first + 1..].iter().enumerate() {
                if layer.posterior() == Posterior::Gaussian {
                    draw_noise(layer.outputs(), streams, &mut eps[..layer.outputs() * s]);
                }
                // The layer after the first stochastic one skips the inputs that are zero in
                // every sample.
                let dead_inputs: &[bool] = if n == 0 { &dead[..units_tracked] } else { &[] };
                sampled_layer(layer, &cur[..layer.inputs() * s], s, eps, dead_inputs, next);
                core::mem::swap(&mut cur, &mut next);
            }
            let mut logits = [0i32; K];
            for m in 0..s {
                for (k, z) in logits[..classes].iter_mut().enumerate() {
                    *z = cur[k * s + m];
                }
                acc.add_logits(&logits[..classes]);
            }
            done += s;
        }
        Ok(acc.finish())
    }
}
