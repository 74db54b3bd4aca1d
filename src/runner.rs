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

use rand_core::RngCore;

use crate::early_exit::{ExitSummary, HaltValue, Halting, HaltingState, MAX_EXITS};
use crate::error::InferenceError;
use crate::format::Posterior;
use crate::model::Operation;
use crate::numeric::seal::{Kernels, Reads};
use crate::numeric::LayerView;
use crate::plan::{first_stochastic, held_source, Buffers, Plan};
use crate::Mode;

/// The halting policy and what it has been told.
struct Exits<'p, N: Kernels, const K: usize> {
    state: HaltingState<'p, N::Value>,
    count: usize,
    summaries: heapless::Vec<ExitSummary<N::Value>, MAX_EXITS>,
    /// The exit that answers so far, with its predictive.
    candidate: Option<(usize, N::Prediction<K>)>,
}

/// What one run answers: the answering exit's prediction (a plain network's last layer is its
/// one exit), where it stopped and what it spent.
pub(crate) struct Outcome<N: Kernels, const K: usize> {
    pub(crate) prediction: N::Prediction<K>,
    pub(crate) exit: usize,
    pub(crate) depth: usize,
    pub(crate) macs: usize,
    pub(crate) exits: heapless::Vec<ExitSummary<N::Value>, MAX_EXITS>,
}

impl<N: Kernels, const K: usize> Exits<'_, N, K> {
    /// Hands exit `e`'s finished predictive to the policy; returns true to stop.
    fn conclude(&mut self, e: usize, p: N::Prediction<K>) -> bool {
        let summary = N::summary(&p);
        let _ = self.summaries.push(summary);
        let stop = self.state.observe(e, self.count, &summary);
        if self.state.answer(e) == e {
            self.candidate = Some((e, p));
        }
        stop
    }

    fn finish(self, macs: usize) -> Result<Outcome<N, K>, InferenceError> {
        let (exit, prediction) = self.candidate.ok_or(InferenceError::NotEarlyExit)?;
        Ok(Outcome {
            prediction,
            exit,
            depth: self.summaries.len(),
            macs,
            exits: self.summaries,
        })
    }
}

/// Where a run's exits go: the one predictive of a plain network ([`Plain`]), or the halting
/// policy of an early-exit model ([`Policy`]). The skeleton is generic over it, so a plain
/// network's run carries no policy state on its stack.
trait Sink<N: Kernels, const K: usize> {
    /// What the run returns.
    type Output;
    /// The deepest exit known to be reached before anything runs.
    fn known_target(&self) -> Option<usize>;
    /// Hands exit `e`'s finished predictive over; returns true to stop.
    fn conclude(&mut self, e: usize, p: N::Prediction<K>) -> bool;
    /// Adds a chunk of exit `e`'s logits to its predictive (the known-target sweep).
    fn add(&mut self, e: usize, out: &[N::Act], s: usize) -> Result<(), InferenceError>;
    /// After the known-target sweep: concludes the accumulated exits `first..=target`.
    fn conclude_accumulated(&mut self, first: usize, target: usize);
    /// The answer, with the MACs spent.
    fn finish(self, macs: usize) -> Result<Self::Output, InferenceError>;
}

/// One predictive, of one exit known before the run: a plain network's last layer, or an
/// early-exit network's last exit when every block runs ([`Halting::All`] through
/// `predict`, without the policy's state and code).
struct Plain<N: Kernels, const K: usize> {
    classes: usize,
    /// The exit that answers (0 for a plain network).
    target: usize,
    acc: Option<N::Predictive<K>>,
    prediction: Option<N::Prediction<K>>,
}

impl<N: Kernels, const K: usize> Sink<N, K> for Plain<N, K> {
    type Output = N::Prediction<K>;
    fn known_target(&self) -> Option<usize> {
        Some(self.target)
    }
    fn conclude(&mut self, e: usize, p: N::Prediction<K>) -> bool {
        if e != self.target {
            return false;
        }
        self.prediction = Some(p);
        true
    }
    fn add(&mut self, e: usize, out: &[N::Act], s: usize) -> Result<(), InferenceError> {
        if e != self.target {
            return Ok(());
        }
        let classes = self.classes;
        let acc = self.acc.get_or_insert_with(|| N::predictive::<K>(classes));
        add_chunk::<N, K>(acc, out, classes, s)
    }
    fn conclude_accumulated(&mut self, _: usize, _: usize) {
        if let Some(acc) = self.acc.take() {
            self.prediction = Some(N::finish(acc));
        }
    }
    fn finish(self, _: usize) -> Result<N::Prediction<K>, InferenceError> {
        self.prediction.ok_or(InferenceError::NotEarlyExit)
    }
}

/// An early-exit network under a halting policy, with one predictive per exit for a sweep
/// that reaches several.
struct Policy<'p, N: Kernels, const K: usize> {
    classes: usize,
    exits: Exits<'p, N, K>,
    accs: [Option<N::Predictive<K>>; MAX_EXITS],
}

impl<N: Kernels, const K: usize> Sink<N, K> for Policy<'_, N, K> {
    type Output = Outcome<N, K>;
    fn known_target(&self) -> Option<usize> {
        self.exits.state.known_target()
    }
    fn conclude(&mut self, e: usize, p: N::Prediction<K>) -> bool {
        self.exits.conclude(e, p)
    }
    fn add(&mut self, e: usize, out: &[N::Act], s: usize) -> Result<(), InferenceError> {
        let classes = self.classes;
        match self.accs.get_mut(e) {
            Some(slot) => {
                let acc = slot.get_or_insert_with(|| N::predictive::<K>(classes));
                add_chunk::<N, K>(acc, out, classes, s)
            }
            None => Ok(()),
        }
    }
    fn conclude_accumulated(&mut self, first: usize, target: usize) {
        for e in first..=target.min(MAX_EXITS - 1) {
            if let Some(acc) = self.accs[e].take() {
                if self.exits.conclude(e, N::finish(acc)) {
                    break;
                }
            }
        }
    }
    fn finish(self, macs: usize) -> Result<Outcome<N, K>, InferenceError> {
        self.exits.finish(macs)
    }
}

/// Adds a chunk's logits (unit-major, `s` samples) to a predictive, sample by sample.
fn add_chunk<N: Kernels, const K: usize>(
    acc: &mut N::Predictive<K>,
    out: &[N::Act],
    classes: usize,
    s: usize,
) -> Result<(), InferenceError> {
    let mut logits = [N::Act::default(); K];
    for m in 0..s {
        for (k, z) in logits[..classes].iter_mut().enumerate() {
            *z = out[k * s + m];
        }
        if !N::add_logits(acc, &logits[..classes]) {
            return Err(InferenceError::NonFiniteLogits);
        }
    }
    Ok(())
}

/// The predictive of one deterministic output.
fn single<N: Kernels, const K: usize>(
    out: &[N::Act],
    classes: usize,
) -> Result<N::Prediction<K>, InferenceError> {
    let mut acc = N::predictive::<K>(classes);
    add_chunk::<N, K>(&mut acc, out, classes, 1)?;
    Ok(N::finish(acc))
}

/// Runs a chunk of `rngs.len()` samples through `layers[range]`, the chunk's activations of
/// the layer before in `buf.cur`. At every exit (exit index `e` counted from `first_exit`;
/// a network without exit heads has one, its last layer) `sink(e, logits)` receives the
/// chunk's logits and returns true to stop the chunk there. Returns the index of the last
/// layer run.
#[allow(clippy::too_many_arguments)]
fn advance_chunk<N: Kernels, const CHUNK: usize>(
    layers: &[N::Layer<'_>],
    range: Range<usize>,
    first_exit: usize,
    rngs: &mut [N::Stream],
    buf: &mut Buffers<'_, N>,
    mut sink: impl FnMut(usize, &[N::Act]) -> Result<bool, InferenceError>,
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
                N::pool_exit(map, &buf.cur[..n * s], s, buf.pooled);
                N::sampled::<CHUNK>(
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
                N::residual_add(layer, &mut buf.cur[..n], &buf.skip[..n]);
            }
            _ => {
                N::sampled::<CHUNK>(
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

/// Everything a chunk needs to start: the first stochastic layer and its moments (`None`
/// for a Bernoulli layer under Monte Carlo, which masks its held input in every chunk
/// instead), the held skip.
struct Start<'l, 'a, N: Kernels> {
    layer: &'l N::Layer<'a>,
    moments: Option<N::MomentsState>,
    held_units: Option<usize>,
}

impl<N: Kernels> Start<'_, '_, N> {
    /// Seeds the chunk's streams from `seeds`, draws the first stochastic layer's
    /// activations (from its moments, or from its masked held input) and spreads the held
    /// skip over the chunk. Out of line (one copy per format and chunk size, not one per
    /// caller: the Cortex-M0's flash).
    #[inline(never)]
    fn begin<const CHUNK: usize>(
        &self,
        seeds: &mut impl RngCore,
        rngs: &mut [N::Stream],
        buf: &mut Buffers<'_, N>,
    ) {
        let s = rngs.len();
        for r in rngs.iter_mut() {
            *r = N::stream(seeds.next_u64());
        }
        if let Some(n) = self.held_units {
            for (i, &v) in buf.held_skip[..n].iter().enumerate() {
                buf.skip[i * s..(i + 1) * s].fill(v);
            }
        }
        let units = self.layer.outputs();
        match &self.moments {
            Some(moments) => N::draw_first(
                self.layer,
                (&buf.stat_mean[..units], &buf.stat_std[..units]),
                moments,
                rngs,
                &mut buf.cur[..units * s],
            ),
            None => N::sampled_held::<CHUNK>(
                self.layer,
                &buf.held_input[..self.layer.inputs()],
                rngs,
                &mut buf.cur[..units * s],
                buf.scratch,
            ),
        }
        if self.layer.is_residual_source() {
            buf.skip[..units * s].copy_from_slice(&buf.cur[..units * s]);
        }
    }
}

/// Runs `total` samples chunk by chunk through `layers[range]`, seeding each chunk's streams
/// from `seeds`; `sink(e, logits, s)` gets every exit's logits of each chunk of `s` samples.
/// Returns the index of the last layer run.
#[allow(clippy::too_many_arguments)]
fn sweep<N: Kernels, const CHUNK: usize>(
    start: &Start<'_, '_, N>,
    layers: &[N::Layer<'_>],
    range: Range<usize>,
    first_exit: usize,
    total: usize,
    seeds: &mut impl RngCore,
    rngs: &mut [N::Stream; CHUNK],
    buf: &mut Buffers<'_, N>,
    mut sink: impl FnMut(usize, &[N::Act], usize) -> Result<(), InferenceError>,
) -> Result<usize, InferenceError> {
    let mut last_run = range.start.saturating_sub(1);
    let mut done = 0;
    while done < total {
        let s = CHUNK.min(total - done);
        let rngs = &mut rngs[..s];
        start.begin::<CHUNK>(seeds, rngs, buf);
        last_run =
            advance_chunk::<N, CHUNK>(layers, range.clone(), first_exit, rngs, buf, |e, out| {
                sink(e, out, s).map(|()| false)
            })?;
        done += s;
    }
    Ok(last_run)
}

/// One prediction through one exit, in any format: a plain network's last layer (its one
/// exit), or the last exit of an early-exit network with every block run. The caller has
/// checked that the workspace fits `plan`.
pub(crate) fn run_plain<N, X, R, const K: usize, const CHUNK: usize>(
    model: &N::Model<'_>,
    plan: &Plan,
    workspace: &mut [N::Word],
    x: &X,
    mode: Mode,
    rng: &mut R,
) -> Result<N::Prediction<K>, InferenceError>
where
    N: Kernels + Reads<X> + Reads<[<N as Kernels>::Act]>,
    X: ?Sized,
    R: RngCore + Clone,
{
    N::check_input(model, x, K)?;
    let sink = Plain::<N, K> {
        classes: N::classes(model),
        target: N::exit_count(model).saturating_sub(1),
        acc: None,
        prediction: None,
    };
    skeleton::<N, X, R, _, K, CHUNK>(model, plan, workspace, x, mode, rng, sink)
}

/// One prediction of an early-exit network, which answers as `halting` decides. Kept out of
/// line: the policy's state lives in its frame only.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_exits<N, X, R, const K: usize, const CHUNK: usize>(
    model: &N::Model<'_>,
    plan: &Plan,
    workspace: &mut [N::Word],
    x: &X,
    mode: Mode,
    halting: Halting<'_>,
    rng: &mut R,
) -> Result<Outcome<N, K>, InferenceError>
where
    N: Kernels + Reads<X> + Reads<[<N as Kernels>::Act]>,
    X: ?Sized,
    R: RngCore + Clone,
{
    let count = N::exit_count(model);
    if count == 0 {
        return Err(InferenceError::NotEarlyExit);
    }
    N::check_input(model, x, K)?;
    let mut priors = [N::Value::ZERO; MAX_EXITS];
    let count_priors = count.min(MAX_EXITS);
    N::exit_priors(model, &mut priors[..count_priors]);
    let state = HaltingState::new(halting, &priors[..count_priors], count, || {
        N::Value::uniform(rng.next_u32())
    })?;
    let sink = Policy::<N, K> {
        classes: N::classes(model),
        exits: Exits {
            state,
            count,
            summaries: heapless::Vec::new(),
            candidate: None,
        },
        accs: core::array::from_fn(|_| None),
    };
    skeleton::<N, X, R, _, K, CHUNK>(model, plan, workspace, x, mode, rng, sink)
}

/// One layer of a mean-weights pass that is not an exit head, one sample: layer `i` reads
/// the input `x` (`i == 0`) or the current activations, and leaves its output current (a
/// residual addition adds the open block's input in place); a residual source's output is
/// kept in `skip`. Inlined: the skeleton's deterministic prefix runs it as it did its own
/// loop body (the same instructions and stack as before it was shared).
#[inline(always)]
fn mean_step<N, X>(i: usize, layer: &N::Layer<'_>, x: &X, buf: &mut Buffers<'_, N>)
where
    N: Kernels + Reads<X> + Reads<[<N as Kernels>::Act]>,
    X: ?Sized,
{
    match layer.operation() {
        Operation::ResidualAdd { .. } => {
            let n = layer.outputs();
            N::residual_add(layer, &mut buf.cur[..n], &buf.skip[..n]);
        }
        _ if i == 0 => {
            <N as Reads<X>>::mean(
                layer,
                x,
                buf.cur,
                buf.scratch,
                (buf.stat_mean, buf.stat_std),
            );
        }
        _ => {
            <N as Reads<[N::Act]>>::mean(
                layer,
                &buf.cur[..layer.inputs()],
                buf.next,
                buf.scratch,
                (buf.stat_mean, buf.stat_std),
            );
            buf.advance();
        }
    }
    if layer.is_residual_source() {
        let n = layer.outputs();
        buf.skip[..n].copy_from_slice(&buf.cur[..n]);
    }
}

/// The input of a plain network's last layer under the posterior-mean weights (the
/// penultimate features), in the workspace: one mean-weights pass that stops before the
/// last layer. `UnsupportedLayout` for an early-exit network.
pub(crate) fn features<'w, N, X>(
    model: &N::Model<'_>,
    plan: &Plan,
    workspace: &'w mut [N::Word],
    x: &X,
) -> Result<&'w [N::Act], InferenceError>
where
    N: Kernels + Reads<X> + Reads<[<N as Kernels>::Act]>,
    X: ?Sized,
{
    let layers = N::layers(model);
    let Some((last, body)) = layers.split_last() else {
        return Err(InferenceError::UnsupportedLayout);
    };
    if N::exit_count(model) > 0 {
        return Err(InferenceError::UnsupportedLayout);
    }
    N::check_input(model, x, N::classes(model))?;
    let provided = workspace.len();
    let Some(mut buf) = plan.split::<N>(workspace) else {
        return Err(InferenceError::WorkspaceTooSmall {
            needed: plan.workspace_len(),
            provided,
        });
    };
    let n = last.inputs();
    if body.is_empty() {
        <N as Reads<X>>::hold(x, &mut buf.cur[..n]);
    }
    for (i, layer) in body.iter().enumerate() {
        mean_step::<N, X>(i, layer, x, &mut buf);
    }
    let cur: &'w mut [N::Act] = buf.cur;
    Ok(&cur[..n])
}

/// The one skeleton of every run, whatever the format and the exits.
#[allow(clippy::too_many_arguments)]
fn skeleton<N, X, R, S, const K: usize, const CHUNK: usize>(
    model: &N::Model<'_>,
    plan: &Plan,
    workspace: &mut [N::Word],
    x: &X,
    mode: Mode,
    rng: &mut R,
    mut sink: S,
) -> Result<S::Output, InferenceError>
where
    N: Kernels + Reads<X> + Reads<[<N as Kernels>::Act]>,
    X: ?Sized,
    R: RngCore + Clone,
    S: Sink<N, K>,
{
    let classes = N::classes(model);
    let layers = N::layers(model);
    // A network without exit heads has one implicit exit: its last layer.
    let plain = N::exit_count(model) == 0;
    let count = N::exit_count(model).max(1);
    let known_target = sink.known_target();
    let Some(mut buf) = plan.split::<N>(workspace) else {
        return Err(InferenceError::WorkspaceTooSmall {
            needed: plan.workspace_len(),
            provided: workspace.len(),
        });
    };
    // Samples (Monte Carlo), or logit draws after moment propagation (0: the probit).
    let total = match mode {
        Mode::MeanWeights | Mode::Moments => 1,
        Mode::MonteCarlo { samples } | Mode::MomentsThenSample { samples } => {
            samples.get() as usize
        }
    };
    let propagates = matches!(mode, Mode::Moments | Mode::MomentsThenSample { .. });
    if propagates && !N::PROPAGATES_MOMENTS {
        return Err(InferenceError::UnsupportedMode);
    }
    if propagates && plan.chunk() < 2 {
        return Err(InferenceError::ChunkTooSmall {
            needed: 2,
            chunk: plan.chunk(),
        });
    }
    let stochastic_from = match mode {
        Mode::MeanWeights => None,
        _ => first_stochastic(layers),
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
                    <N as Reads<X>>::pool_input(map, x, buf.pooled);
                } else {
                    N::pool_exit(map, &buf.cur[..n], 1, buf.pooled);
                }
                <N as Reads<[N::Act]>>::mean(
                    layer,
                    &buf.pooled[..layer.inputs()],
                    buf.next,
                    buf.scratch,
                    (buf.stat_mean, buf.stat_std),
                );
                // A deterministic exit says the same for every sample.
                let stop = sink.conclude(e, single::<N, K>(&buf.next[..classes], classes)?);
                e += 1;
                if stop {
                    return sink.finish(macs);
                }
                continue;
            }
            _ => mean_step::<N, X>(i, layer, x, &mut buf),
        }
    }
    let Some(first) = stochastic_from else {
        if plain {
            sink.conclude(0, single::<N, K>(&buf.cur[..classes], classes)?);
        }
        return sink.finish(macs);
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
    let n = stochastic.inputs();
    let moments = if stochastic.posterior() == Posterior::Bernoulli && !propagates {
        // Monte Carlo dropout: every sample masks the layer's input itself, kept here.
        if first == 0 {
            <N as Reads<X>>::hold(x, &mut buf.held_input[..n]);
        } else {
            buf.held_input[..n].copy_from_slice(&buf.cur[..n]);
        }
        None
    } else if first == 0 {
        Some(<N as Reads<X>>::moments(
            stochastic,
            x,
            (buf.stat_mean, buf.stat_std),
        ))
    } else {
        Some(<N as Reads<[N::Act]>>::moments(
            stochastic,
            &buf.cur[..n],
            (buf.stat_mean, buf.stat_std),
        ))
    };
    let start = Start::<N> {
        layer: stochastic,
        moments,
        held_units: held,
    };
    let first_exit = e;
    if propagates {
        let draws = match mode {
            Mode::MomentsThenSample { .. } => total,
            _ => 0,
        };
        let run = Propagation {
            first,
            first_exit,
            draws,
            classes,
        };
        let last_run = run.rest::<N, R, S, K>(&start, layers, rng, &mut buf, &mut sink)?;
        macs += layers[first..=last_run]
            .iter()
            .map(LayerView::macs)
            .sum::<usize>();
        return sink.finish(macs);
    }
    let exit_layers = ExitLayers::new(layers);
    let mut rngs: [N::Stream; CHUNK] = core::array::from_fn(|_| N::stream(0x5a5a_5a5a));
    let rest = first + 1;

    // --- 3 and 4. the chunks, then the exits ---
    let last_run = if let Some(target) = known_target {
        // One sweep to the target exit (a plain network's last layer), every exit on the way
        // accumulated over the chunks.
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
            |e, out, s| sink.add(e, out, s),
        )?;
        sink.conclude_accumulated(first_exit, target);
        last_run
    } else if total <= CHUNK {
        // The policy reads each exit as it comes: all samples advance together, one chunk.
        let rngs = &mut rngs[..total];
        start.begin::<CHUNK>(rng, rngs, &mut buf);
        advance_chunk::<N, CHUNK>(
            layers,
            rest..layers.len(),
            first_exit,
            rngs,
            &mut buf,
            |e, out| {
                let mut acc = N::predictive::<K>(classes);
                add_chunk::<N, K>(&mut acc, out, classes, total)?;
                Ok(sink.conclude(e, N::finish(acc)))
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
            let mut acc = N::predictive::<K>(classes);
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
                        add_chunk::<N, K>(&mut acc, out, classes, s)?;
                    }
                    Ok(())
                },
            )?;
            // The caller's generator moves on as if the seeds had been drawn once.
            *rng = seeds;
            if sink.conclude(target, N::finish(acc)) {
                break;
            }
        }
        last_run
    };
    macs += layers[first..=last_run]
        .iter()
        .map(LayerView::macs)
        .sum::<usize>();
    sink.finish(macs)
}

/// A moment-propagation run after its first Gaussian layer ([`Mode::Moments`] and
/// [`Mode::MomentsThenSample`]): every later layer once, on `[mean, variance]` pairs in the
/// activation buffers (the unit-major layout of a two-sample chunk).
struct Propagation {
    /// The first Gaussian layer.
    first: usize,
    /// Exits answered before it (deterministic heads).
    first_exit: usize,
    /// Logit draws per exit (0: the probit approximation).
    draws: usize,
    classes: usize,
}

impl Propagation {
    /// Runs the layers after the first Gaussian one and hands every exit's predictive to
    /// `sink` until it says stop; returns the index of the last layer run.
    fn rest<N: Kernels, R: RngCore, S: Sink<N, K>, const K: usize>(
        &self,
        start: &Start<'_, '_, N>,
        layers: &[N::Layer<'_>],
        rng: &mut R,
        buf: &mut Buffers<'_, N>,
        sink: &mut S,
    ) -> Result<usize, InferenceError> {
        let units = start.layer.outputs();
        if let Some(n) = start.held_units {
            for (i, &v) in buf.held_skip[..n].iter().enumerate() {
                N::moments_certain(v, &mut buf.skip[2 * i..2 * i + 2]);
            }
        }
        // Propagation always computes the first stochastic layer's moments.
        if let Some(state) = &start.moments {
            let moments = (&buf.stat_mean[..units], &buf.stat_std[..units]);
            N::moments_first(start.layer, moments, state, &mut buf.cur[..2 * units]);
        }
        if start.layer.is_residual_source() {
            buf.skip[..2 * units].copy_from_slice(&buf.cur[..2 * units]);
        }
        let implicit_exit = !layers
            .iter()
            .any(|l| matches!(l.operation(), Operation::ExitHead { .. }));
        let mut e = self.first_exit;
        let mut last = self.first;
        for (i, layer) in layers.iter().enumerate().skip(self.first + 1) {
            last = i;
            match layer.operation() {
                Operation::ExitHead { map, .. } => {
                    let n = map.iter().product::<usize>();
                    N::moments_pool_exit(map, &buf.cur[..2 * n], buf.pooled);
                    N::moments_layer(layer, &buf.pooled[..2 * layer.inputs()], buf.next);
                    let p = self.predictive::<N, K>(&buf.next[..2 * layer.outputs()], rng)?;
                    if sink.conclude(e, p) {
                        return Ok(i);
                    }
                    e += 1;
                    // The main path continues from the unchanged map.
                    continue;
                }
                Operation::ResidualAdd { .. } => {
                    let n = 2 * layer.outputs();
                    N::moments_residual(layer, &mut buf.cur[..n], &buf.skip[..n]);
                }
                _ => {
                    N::moments_layer(layer, &buf.cur[..2 * layer.inputs()], buf.next);
                    buf.advance();
                }
            }
            if layer.is_residual_source() {
                let n = 2 * layer.outputs();
                buf.skip[..n].copy_from_slice(&buf.cur[..n]);
            }
        }
        if implicit_exit {
            let p = self.predictive::<N, K>(&buf.cur[..2 * self.classes], rng)?;
            sink.conclude(e, p);
        }
        Ok(last)
    }

    /// The predictive of Gaussian logits given as `[mean, variance]` pairs: the probit
    /// approximation, or the softmax averaged over `draws` draws of the logits from one
    /// stream seeded by one `u64` of `rng`.
    fn predictive<N: Kernels, const K: usize>(
        &self,
        logits: &[N::Act],
        rng: &mut impl RngCore,
    ) -> Result<N::Prediction<K>, InferenceError> {
        let classes = self.classes;
        let mut z = [N::Act::default(); K];
        let z = &mut z[..classes];
        let mut acc = N::predictive::<K>(classes);
        if self.draws == 0 {
            N::moments_probit(logits, z);
            if !N::add_logits(&mut acc, z) {
                return Err(InferenceError::NonFiniteLogits);
            }
        } else {
            let mut stream = N::stream(rng.next_u64());
            for _ in 0..self.draws {
                N::moments_draw(logits, &mut stream, z);
                if !N::add_logits(&mut acc, z) {
                    return Err(InferenceError::NonFiniteLogits);
                }
            }
        }
        Ok(N::finish(acc))
    }
}

/// The layer index of every exit head, in order.
struct ExitLayers {
    index: heapless::Vec<usize, MAX_EXITS>,
    last: usize,
}

impl ExitLayers {
    fn new<L: LayerView>(layers: &[L]) -> Self {
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
