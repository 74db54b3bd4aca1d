//! The runner of graph models (residual additions, exit heads): layer by layer, the chunk of
//! samples through the network, each exit's posterior predictive handed to the halting
//! policy as soon as it is complete.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;

use crate::early_exit::{ExitPrediction, ExitSummary, Halting, HaltingState, MAX_EXITS};
use crate::engine::{check_input, Mode};
use crate::error::InferenceError;
use crate::format::Posterior;
use crate::input::Input;
use crate::kernels::graph::{global_average_pool, residual_add};
use crate::kernels::{forward_mean, forward_moments, forward_samples, sample_from_moments};
use crate::model::{Model, Operation};
use crate::predictive::{Prediction, PredictiveAccumulator};

/// Summaries of the exits computed so far.
type Summaries = heapless::Vec<ExitSummary, MAX_EXITS>;

/// The policy and what it has been told.
struct Exits<'p, const K: usize> {
    state: HaltingState<'p>,
    count: usize,
    summaries: Summaries,
    /// The exit that answers so far, with its predictive.
    candidate: Option<(usize, Prediction<K>)>,
}

impl<const K: usize> Exits<'_, K> {
    /// Hands exit `e`'s finished predictive to the policy; returns true to stop.
    fn conclude(&mut self, e: usize, p: Prediction<K>) -> bool {
        let summary = ExitSummary {
            class: p.class,
            confidence: p.confidence(),
            predictive_entropy: p.predictive_entropy,
            mutual_information: p.mutual_information,
        };
        let _ = self.summaries.push(summary);
        let stop = self.state.observe(e, self.count, &summary);
        if self.state.answer(e) == e {
            self.candidate = Some((e, p));
        }
        stop
    }

    fn finish(self, macs: usize) -> Result<ExitPrediction<K>, InferenceError> {
        let (exit, prediction) = self.candidate.ok_or(InferenceError::NotEarlyExit)?;
        Ok(ExitPrediction {
            prediction,
            exit,
            depth: self.summaries.len(),
            macs,
            exits: self.summaries,
        })
    }
}

/// One prediction of a graph model.
///
/// Deterministic layers before the first Gaussian one run once; the first Gaussian layer's
/// moments are computed once; then each chunk of samples runs through the rest. When the
/// policy can stop early all samples form one chunk, so an exit's predictive is complete when
/// the chunk reaches it; [`Halting::All`] accumulates every exit over the chunks and reports
/// them at the end.
///
/// Workspace (`Model::workspace_len`): moments (2 x widest layer), current and next
/// activations, residual skip and pooled map (widest layer x chunk each), the skip of a
/// residual source computed in the deterministic prefix (widest layer), kernel scratch.
pub(crate) fn run_graph<X: Input + ?Sized, const K: usize, const CHUNK: usize>(
    model: &Model<'_>,
    workspace: &mut [f32],
    x: &X,
    mode: Mode,
    halting: Halting<'_>,
    rng: &mut impl RngCore,
) -> Result<ExitPrediction<K>, InferenceError> {
    check_input(model, x, K)?;
    let classes = model.num_classes();
    let layers = model.layers();
    let count = model.exit_count();
    if count == 0 {
        return Err(InferenceError::NotEarlyExit);
    }
    let mut priors = [0.0f32; MAX_EXITS];
    for (p, prior) in priors.iter_mut().zip(model.exit_priors()) {
        *p = prior;
    }
    let state = HaltingState::new(halting, &priors[..count], count, || {
        (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    })?;
    let one_pass = !state.runs_everything();
    let mut exits = Exits::<K> {
        state,
        count,
        summaries: heapless::Vec::new(),
        candidate: None,
    };
    let total = match mode {
        Mode::MeanWeights => 1,
        Mode::MonteCarlo { samples } => samples.get() as usize,
    };
    if one_pass && total > CHUNK {
        return Err(InferenceError::ChunkTooSmall {
            samples: total,
            chunk: CHUNK,
        });
    }

    let width = model.max_width();
    let (stats, rest) = workspace.split_at_mut(2 * width);
    let (stat_mean, stat_std) = stats.split_at_mut(width);
    let (buf_a, rest) = rest.split_at_mut(width * CHUNK);
    let (buf_b, rest) = rest.split_at_mut(width * CHUNK);
    let (skip, rest) = rest.split_at_mut(width * CHUNK);
    let (prefix_skip, rest) = rest.split_at_mut(width);
    let (pooled, scratch) = rest.split_at_mut(width * CHUNK);
    let (mut cur, mut next) = (buf_a, buf_b);

    let stochastic_from = match mode {
        Mode::MeanWeights => None,
        Mode::MonteCarlo { .. } => layers
            .iter()
            .position(|l| l.posterior() == Posterior::Gaussian),
    };
    let prefix_end = stochastic_from.unwrap_or(layers.len());
    let mut macs = 0usize;
    let mut exit_index = 0;

    // --- the deterministic prefix (every layer in the mean-weights mode), one sample ---
    for (i, layer) in layers[..prefix_end].iter().enumerate() {
        match layer.operation() {
            Operation::ExitHead { map, .. } => {
                let n = map.iter().product::<usize>();
                if i == 0 {
                    global_average_pool(map, x, 1, pooled);
                } else {
                    global_average_pool(map, &cur[..n], 1, pooled);
                }
                forward_mean(layer, &pooled[..layer.inputs()], next);
                macs += layer.macs();
                let mut acc = PredictiveAccumulator::<K>::new(classes);
                if !acc.add_logits(&next[..classes]) {
                    return Err(InferenceError::NonFiniteLogits);
                }
                // A deterministic exit says the same for every sample.
                let stop = exits.conclude(exit_index, acc.finish());
                exit_index += 1;
                if stop {
                    return exits.finish(macs);
                }
                continue;
            }
            Operation::ResidualAdd { .. } => {
                let n = layer.outputs();
                residual_add(layer.activation(), &mut cur[..n], &prefix_skip[..n]);
            }
            _ => {
                if i == 0 {
                    forward_mean(layer, x, cur);
                } else {
                    forward_mean(layer, &cur[..layer.inputs()], next);
                    core::mem::swap(&mut cur, &mut next);
                }
                macs += layer.macs();
            }
        }
        if layer.is_residual_source() {
            prefix_skip[..layer.outputs()].copy_from_slice(&cur[..layer.outputs()]);
        }
    }
    let Some(first) = stochastic_from else {
        return exits.finish(macs);
    };
    let stochastic = &layers[first];
    if matches!(stochastic.operation(), Operation::ExitHead { .. }) {
        // A Gaussian head after a deterministic trunk would need the trunk spread over the
        // samples; no exporter writes that arrangement.
        return Err(InferenceError::UnsupportedLayout);
    }
    // A skip saved in the prefix whose residual addition comes later is spread over the
    // samples of each chunk.
    let pending_skip = layers[..first]
        .iter()
        .rposition(|l| l.is_residual_source())
        .filter(|&src| {
            !layers[src + 1..first]
                .iter()
                .any(|l| matches!(l.operation(), Operation::ResidualAdd { .. }))
        })
        .map(|src| layers[src].outputs());
    let units = stochastic.outputs();
    if first == 0 {
        forward_moments(stochastic, x, stat_mean, stat_std);
    } else {
        forward_moments(stochastic, &cur[..stochastic.inputs()], stat_mean, stat_std);
    }

    // --- the stochastic part, chunk by chunk ---
    let mut accs: [Option<PredictiveAccumulator<K>>; MAX_EXITS] = core::array::from_fn(|_| None);
    let mut rngs: [Xoshiro128PlusPlus; CHUNK] =
        core::array::from_fn(|_| Xoshiro128PlusPlus::from_seed([0x5a; 16]));
    let first_exit = exit_index;
    let mut chunk_macs = 0;
    let mut done = 0;
    'chunks: while done < total {
        let s = CHUNK.min(total - done);
        let rngs = &mut rngs[..s];
        for r in rngs.iter_mut() {
            *r = Xoshiro128PlusPlus::seed_from_u64(rng.next_u64());
        }
        if let Some(n) = pending_skip {
            for (i, &v) in prefix_skip[..n].iter().enumerate() {
                skip[i * s..(i + 1) * s].fill(v);
            }
        }
        sample_from_moments(
            stochastic,
            &stat_mean[..units],
            &stat_std[..units],
            rngs,
            &mut cur[..units * s],
        );
        chunk_macs = stochastic.macs();
        if stochastic.is_residual_source() {
            skip[..units * s].copy_from_slice(&cur[..units * s]);
        }
        let mut e = first_exit;
        for layer in &layers[first + 1..] {
            match layer.operation() {
                Operation::ExitHead { map, .. } => {
                    let n = map.iter().product::<usize>();
                    global_average_pool(map, &cur[..n * s], s, pooled);
                    forward_samples::<CHUNK>(
                        layer,
                        &pooled[..layer.inputs() * s],
                        rngs,
                        next,
                        scratch,
                    );
                    chunk_macs += layer.macs();
                    let acc =
                        accs[e].get_or_insert_with(|| PredictiveAccumulator::<K>::new(classes));
                    let mut logits = [0.0f32; K];
                    for m in 0..s {
                        for (k, z) in logits[..classes].iter_mut().enumerate() {
                            *z = next[k * s + m];
                        }
                        if !acc.add_logits(&logits[..classes]) {
                            return Err(InferenceError::NonFiniteLogits);
                        }
                    }
                    if one_pass {
                        // Every sample is in: this exit's predictive is complete.
                        if let Some(acc) = accs[e].take() {
                            if exits.conclude(e, acc.finish()) {
                                break 'chunks;
                            }
                        }
                    }
                    e += 1;
                    continue;
                }
                Operation::ResidualAdd { .. } => {
                    let n = layer.outputs() * s;
                    residual_add(layer.activation(), &mut cur[..n], &skip[..n]);
                }
                _ => {
                    forward_samples::<CHUNK>(
                        layer,
                        &cur[..layer.inputs() * s],
                        rngs,
                        next,
                        scratch,
                    );
                    core::mem::swap(&mut cur, &mut next);
                    chunk_macs += layer.macs();
                }
            }
            if layer.is_residual_source() {
                let n = layer.outputs() * s;
                skip[..n].copy_from_slice(&cur[..n]);
            }
        }
        done += s;
    }
    macs += chunk_macs;
    if !one_pass {
        // Every chunk is in: the exits in order (this policy runs everything).
        for (e, acc) in accs.iter_mut().enumerate().take(count).skip(first_exit) {
            if let Some(acc) = acc.take() {
                exits.conclude(e, acc.finish());
            }
        }
    }
    exits.finish(macs)
}
