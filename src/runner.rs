//! The runner: one prediction of any model the format describes (a plain layer sequence, or a
//! residual graph with exit heads under a halting policy), in the workspace a [`Plan`] lays
//! out.
//!
//! The skeleton, once for every model:
//! 1. the deterministic prefix (every layer in the mean-weights mode) runs once, one sample;
//! 2. the first Gaussian layer sees a deterministic input, so its pre-activation moments are
//!    computed once and only its noise is drawn per sample;
//! 3. chunks of samples run through the rest, each sample drawing from its own Xoshiro128++
//!    stream seeded by the caller's generator (sample `m` by its `m`-th `u64`), so results never
//!    depend on the chunk size;
//! 4. every exit's logits go into its posterior predictive, which the halting policy reads as
//!    soon as it is complete. A plain network has one implicit exit: its last layer.
//!
//! A policy that decides from what the exits say (the joint mode, a threshold) needs an
//! exit's predictive over all samples before it may go deeper. When the samples fit in one
//! chunk they advance together, exit by exit. Otherwise the runner makes one sweep over the
//! chunks per exit, replaying the seeds from a copy of the caller's generator and regenerating
//! each chunk's path from the input: every sample draws exactly what it would in a single
//! sweep, so the answer is bit-identical, and the workspace holds one chunk's maps whatever
//! the number of samples.

use core::ops::Range;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;

use crate::early_exit::{ExitPrediction, ExitSummary, Halting, HaltingState, MAX_EXITS};
use crate::error::InferenceError;
use crate::input::Input;
use crate::kernels::graph::{global_average_pool, residual_add};
use crate::kernels::{forward_mean, forward_moments, forward_samples, sample_from_moments};
use crate::model::{Layer, Model, Operation};
use crate::plan::{first_gaussian, held_source, Buffers, Plan};
use crate::predictive::{Prediction, PredictiveAccumulator};
use crate::Mode;

/// The input checks of every prediction: length, class capacity `k`, finite values.
pub(crate) fn check_input<X: Input + ?Sized>(
    model: &Model<'_>,
    x: &X,
    k: usize,
) -> Result<(), InferenceError> {
    if x.len() != model.input_len() {
        return Err(InferenceError::InputLength {
            expected: model.input_len(),
            found: x.len(),
        });
    }
    let classes = model.num_classes();
    if classes > k {
        return Err(InferenceError::ClassCapacity {
            classes,
            capacity: k,
        });
    }
    if !x.all_finite() {
        return Err(InferenceError::NonFiniteInput);
    }
    Ok(())
}

/// The halting policy and what it has been told.
struct Exits<'p, const K: usize> {
    state: HaltingState<'p>,
    count: usize,
    summaries: heapless::Vec<ExitSummary, MAX_EXITS>,
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

/// Adds a chunk's logits (unit-major, `s` samples) to a predictive, sample by sample.
fn add_chunk<const K: usize>(
    acc: &mut PredictiveAccumulator<K>,
    out: &[f32],
    classes: usize,
    s: usize,
) -> Result<(), InferenceError> {
    let mut logits = [0.0f32; K];
    for m in 0..s {
        for (k, z) in logits[..classes].iter_mut().enumerate() {
            *z = out[k * s + m];
        }
        if !acc.add_logits(&logits[..classes]) {
            return Err(InferenceError::NonFiniteLogits);
        }
    }
    Ok(())
}

/// The predictive of one deterministic output.
fn single<const K: usize>(out: &[f32], classes: usize) -> Result<Prediction<K>, InferenceError> {
    let mut acc = PredictiveAccumulator::<K>::new(classes);
    add_chunk(&mut acc, out, classes, 1)?;
    Ok(acc.finish())
}

/// Runs a chunk of `rngs.len()` samples through `layers[range]`, the chunk's activations of
/// the layer before in `buf.cur`. At every exit (exit index `e` counted from `first_exit`;
/// a network without exit heads has one, its last layer) `sink(e, logits)` receives the
/// chunk's logits and returns true to stop the chunk there. Returns the index of the last
/// layer run.
fn advance_chunk<const CHUNK: usize>(
    layers: &[Layer<'_>],
    range: Range<usize>,
    first_exit: usize,
    rngs: &mut [Xoshiro128PlusPlus],
    buf: &mut Buffers<'_>,
    mut sink: impl FnMut(usize, &[f32]) -> Result<bool, InferenceError>,
) -> Result<usize, InferenceError> {
    let s = rngs.len();
    let end = range.end;
    let implicit_exit = !layers
        .iter()
        .any(|l| matches!(l.operation(), Operation::ExitHead { .. }));
    let mut e = first_exit;
    let mut last = range.start.saturating_sub(1);
    for i in range {
        let layer = &layers[i];
        last = i;
        match layer.operation() {
            Operation::ExitHead { map, .. } => {
                let n = map.iter().product::<usize>();
                global_average_pool(map, &buf.cur[..n * s], s, buf.pooled);
                forward_samples::<CHUNK>(
                    layer,
                    &buf.pooled[..layer.inputs() * s],
                    rngs,
                    buf.next,
                    buf.scratch,
                );
                let stop = sink(e, &buf.next[..layer.outputs() * s])?;
                e += 1;
                if stop {
                    return Ok(i);
                }
                // The main path continues from the unchanged map.
                continue;
            }
            Operation::ResidualAdd { .. } => {
                let n = layer.outputs() * s;
                residual_add(layer.activation(), &mut buf.cur[..n], &buf.skip[..n]);
            }
            _ => {
                forward_samples::<CHUNK>(
                    layer,
                    &buf.cur[..layer.inputs() * s],
                    rngs,
                    buf.next,
                    buf.scratch,
                );
                buf.advance();
            }
        }
        if layer.is_residual_source() {
            let n = layer.outputs() * s;
            buf.skip[..n].copy_from_slice(&buf.cur[..n]);
        }
    }
    if implicit_exit && end == layers.len() && last + 1 == end {
        sink(e, &buf.cur[..layers[last].outputs() * s])?;
    }
    Ok(last)
}

/// Everything a chunk needs to start: the first Gaussian layer and its moments, the held skip.
struct Start<'l, 'a> {
    layer: &'l Layer<'a>,
    held_units: Option<usize>,
}

impl Start<'_, '_> {
    /// Seeds the chunk's streams from `seeds`, draws the first Gaussian layer's activations
    /// from its moments and spreads the held skip over the chunk.
    fn begin(
        &self,
        seeds: &mut impl RngCore,
        rngs: &mut [Xoshiro128PlusPlus],
        buf: &mut Buffers<'_>,
    ) {
        let s = rngs.len();
        for r in rngs.iter_mut() {
            *r = Xoshiro128PlusPlus::seed_from_u64(seeds.next_u64());
        }
        if let Some(n) = self.held_units {
            for (i, &v) in buf.held_skip[..n].iter().enumerate() {
                buf.skip[i * s..(i + 1) * s].fill(v);
            }
        }
        let units = self.layer.outputs();
        sample_from_moments(
            self.layer,
            &buf.stat_mean[..units],
            &buf.stat_std[..units],
            rngs,
            &mut buf.cur[..units * s],
        );
        if self.layer.is_residual_source() {
            buf.skip[..units * s].copy_from_slice(&buf.cur[..units * s]);
        }
    }
}

/// Runs `total` samples chunk by chunk through `layers[range]`, seeding each chunk's streams
/// from `seeds`; `sink(e, logits, s)` gets every exit's logits of each chunk of `s` samples.
/// Returns the index of the last layer run.
#[allow(clippy::too_many_arguments)]
fn sweep<const CHUNK: usize>(
    start: &Start<'_, '_>,
    layers: &[Layer<'_>],
    range: Range<usize>,
    first_exit: usize,
    total: usize,
    seeds: &mut impl RngCore,
    rngs: &mut [Xoshiro128PlusPlus; CHUNK],
    buf: &mut Buffers<'_>,
    mut sink: impl FnMut(usize, &[f32], usize) -> Result<(), InferenceError>,
) -> Result<usize, InferenceError> {
    let mut last_run = range.start.saturating_sub(1);
    let mut done = 0;
    while done < total {
        let s = CHUNK.min(total - done);
        let rngs = &mut rngs[..s];
        start.begin(seeds, rngs, buf);
        last_run =
            advance_chunk::<CHUNK>(layers, range.clone(), first_exit, rngs, buf, |e, out| {
                sink(e, out, s).map(|()| false)
            })?;
        done += s;
    }
    Ok(last_run)
}

/// One prediction. A plain network (no exit heads) answers from its last layer as its one
/// exit; an early-exit network answers as `halting` decides. The caller has checked that the
/// workspace fits `plan`.
pub(crate) fn run<X, R, const K: usize, const CHUNK: usize>(
    model: &Model<'_>,
    plan: &Plan,
    workspace: &mut [f32],
    x: &X,
    mode: Mode,
    halting: Halting<'_>,
    rng: &mut R,
) -> Result<ExitPrediction<K>, InferenceError>
where
    X: Input + ?Sized,
    R: RngCore + Clone,
{
    check_input(model, x, K)?;
    let classes = model.num_classes();
    let layers = model.layers();
    let plain = model.exit_count() == 0;
    // A plain network's last layer is its one exit.
    let count = model.exit_count().max(1);
    let mut priors = [0.0f32; MAX_EXITS];
    for (p, prior) in priors.iter_mut().zip(model.exit_priors()) {
        *p = prior;
    }
    let state = HaltingState::new(halting, &priors[..count], count, || {
        (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    })?;
    // The deepest exit the policy is known to reach before anything runs.
    let known_target = state.known_target();
    let mut exits = Exits::<K> {
        state,
        count,
        summaries: heapless::Vec::new(),
        candidate: None,
    };
    let Some(mut buf) = plan.split(workspace) else {
        return Err(InferenceError::WorkspaceTooSmall {
            needed: plan.workspace_len(),
            provided: workspace.len(),
        });
    };
    let total = match mode {
        Mode::MeanWeights => 1,
        Mode::MonteCarlo { samples } => samples.get() as usize,
    };
    let stochastic_from = match mode {
        Mode::MeanWeights => None,
        Mode::MonteCarlo { .. } => first_gaussian(layers),
    };
    let prefix_end = stochastic_from.unwrap_or(layers.len());
    let mut macs = 0usize;
    let mut e = 0;

    // --- 1. the deterministic prefix, one sample ---
    for (i, layer) in layers[..prefix_end].iter().enumerate() {
        macs += layer.macs();
        match layer.operation() {
            Operation::ExitHead { map, .. } => {
                let n = map.iter().product::<usize>();
                if i == 0 {
                    global_average_pool(map, x, 1, buf.pooled);
                } else {
                    global_average_pool(map, &buf.cur[..n], 1, buf.pooled);
                }
                forward_mean(layer, &buf.pooled[..layer.inputs()], buf.next);
                // A deterministic exit says the same for every sample.
                let stop = exits.conclude(e, single(&buf.next[..classes], classes)?);
                e += 1;
                if stop {
                    return exits.finish(macs);
                }
                continue;
            }
            Operation::ResidualAdd { .. } => {
                let n = layer.outputs();
                residual_add(layer.activation(), &mut buf.cur[..n], &buf.skip[..n]);
            }
            _ => {
                if i == 0 {
                    forward_mean(layer, x, buf.cur);
                } else {
                    forward_mean(layer, &buf.cur[..layer.inputs()], buf.next);
                    buf.advance();
                }
            }
        }
        if layer.is_residual_source() {
            let n = layer.outputs();
            buf.skip[..n].copy_from_slice(&buf.cur[..n]);
        }
    }
    let Some(first) = stochastic_from else {
        if plain {
            exits.conclude(0, single(&buf.cur[..classes], classes)?);
        }
        return exits.finish(macs);
    };

    // --- 2. the first Gaussian layer's moments, once ---
    let stochastic = &layers[first];
    if matches!(stochastic.operation(), Operation::ExitHead { .. }) {
        // A Gaussian head after a deterministic trunk would need the trunk spread over the
        // samples; no exporter writes that arrangement.
        return Err(InferenceError::UnsupportedLayout);
    }
    let held = held_source(layers, first).map(|src| layers[src].outputs());
    if let Some(n) = held {
        buf.held_skip[..n].copy_from_slice(&buf.skip[..n]);
    }
    if first == 0 {
        forward_moments(stochastic, x, buf.stat_mean, buf.stat_std);
    } else {
        let n = stochastic.inputs();
        forward_moments(stochastic, &buf.cur[..n], buf.stat_mean, buf.stat_std);
    }
    let start = Start {
        layer: stochastic,
        held_units: held,
    };
    let first_exit = e;
    let exit_layers = ExitLayers::new(layers);
    let mut rngs: [Xoshiro128PlusPlus; CHUNK] =
        core::array::from_fn(|_| Xoshiro128PlusPlus::from_seed([0x5a; 16]));
    let rest = first + 1;

    // --- 3 and 4. the chunks, then the exits ---
    let mut accs: [Option<PredictiveAccumulator<K>>; MAX_EXITS] = core::array::from_fn(|_| None);
    let last_run = if let Some(target) = known_target {
        // One sweep to the target exit, every exit on the way accumulated over the chunks.
        let end = exit_layers.layer_of(target) + 1;
        let last_run = sweep(
            &start,
            layers,
            rest..end,
            first_exit,
            total,
            rng,
            &mut rngs,
            &mut buf,
            |e, out, s| {
                let acc = accs[e].get_or_insert_with(|| PredictiveAccumulator::new(classes));
                add_chunk(acc, out, classes, s)
            },
        )?;
        for (e, acc) in accs
            .iter_mut()
            .enumerate()
            .take(target + 1)
            .skip(first_exit)
        {
            if let Some(acc) = acc.take() {
                if exits.conclude(e, acc.finish()) {
                    break;
                }
            }
        }
        last_run
    } else if total <= CHUNK {
        // The policy reads each exit as it comes: all samples advance together, one chunk.
        let rngs = &mut rngs[..total];
        start.begin(rng, rngs, &mut buf);
        advance_chunk::<CHUNK>(
            layers,
            rest..layers.len(),
            first_exit,
            rngs,
            &mut buf,
            |e, out| {
                let mut acc = PredictiveAccumulator::new(classes);
                add_chunk(&mut acc, out, classes, total)?;
                Ok(exits.conclude(e, acc.finish()))
            },
        )?
    } else {
        // More samples than a chunk holds: one sweep per exit, the seeds replayed from a copy
        // of the caller's generator, each chunk's path regenerated from the input.
        let origin = rng.clone();
        let mut last_run = first;
        for target in first_exit..count {
            let mut seeds = origin.clone();
            let end = exit_layers.layer_of(target) + 1;
            let mut acc = PredictiveAccumulator::<K>::new(classes);
            last_run = sweep(
                &start,
                layers,
                rest..end,
                first_exit,
                total,
                &mut seeds,
                &mut rngs,
                &mut buf,
                |e, out, s| {
                    if e == target {
                        add_chunk(&mut acc, out, classes, s)?;
                    }
                    Ok(())
                },
            )?;
            // The caller's generator moves on as if the seeds had been drawn once.
            *rng = seeds;
            if exits.conclude(target, acc.finish()) {
                break;
            }
        }
        last_run
    };
    macs += layers[first..=last_run]
        .iter()
        .map(Layer::macs)
        .sum::<usize>();
    exits.finish(macs)
}

/// The layer index of every exit head, in order.
struct ExitLayers {
    index: heapless::Vec<usize, MAX_EXITS>,
    last: usize,
}

impl ExitLayers {
    fn new(layers: &[Layer<'_>]) -> Self {
        let mut index = heapless::Vec::new();
        for (i, l) in layers.iter().enumerate() {
            if matches!(l.operation(), Operation::ExitHead { .. }) {
                // At most one exit per layer: the capacity is the layer count.
                let _ = index.push(i);
            }
        }
        Self {
            index,
            last: layers.len().saturating_sub(1),
        }
    }

    /// The layer of exit `e` (the last layer for a plain network's one exit).
    fn layer_of(&self, e: usize) -> usize {
        self.index.get(e).copied().unwrap_or(self.last)
    }
}
