//! The workspace plan: built once from a validated [`Model`] and a chunk size (the number of
//! Monte Carlo samples that share one pass over the weights), it owns the layout of the
//! caller's buffer. [`Plan::workspace_len`] is the one answer to "how much RAM", and the runner
//! splits the buffer exactly as the plan says, so the two cannot disagree.

use crate::fixed::QModel;
use crate::format::Posterior;
use crate::model::{Model, Operation};
use crate::numeric::seal::Kernels;
use crate::numeric::{LayerView, F32, Q16, Q8};

/// Where every buffer of one prediction lives in the workspace, for one model and chunk size.
///
/// Regions, in order, each in the format's own types (f32 for an f32 model; i64 moments,
/// i32 activations and u64 scratch for fixed point, every region 8-byte aligned):
/// - **moments**: pre-activation mean and standard deviation (fixed point: mean and noise
///   scale) of the first Gaussian layer, computed once per input (2 x its outputs);
/// - **current** and **next** activations: widest layer x chunk each;
/// - **skip**: the input of the open residual block, widest residual source x chunk;
/// - **held skip**: a block input computed before the first Gaussian layer and added after it
///   (kept across chunks; usually empty);
/// - **held input**: the deterministic input of a first stochastic layer with a Bernoulli
///   (MC dropout) mask, which every chunk masks anew (empty otherwise);
/// - **pooled**: an exit head's pooled map, widest head input x chunk;
/// - **scratch**: kernel scratch, the largest any layer needs (f32: a Gaussian layer's
///   pre-activation variances, and for one stored by rows its inputs squared, inputs x
///   chunk; fixed point: a layer's noise draws, or a first layer's by-input sums; a
///   Bernoulli layer's masked inputs, inputs x chunk).
///
/// An early-exit model's feature maps are kept for one chunk only: a halting policy that
/// needs every sample at an exit regenerates each chunk's path from the input and the
/// chunk's seeds (see [`crate::Engine::predict_early_exit`]), so the plan does not grow with
/// the number of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Plan {
    chunk: usize,
    /// Bytes of the format's workspace word.
    word: usize,
    /// Region lengths, in elements of their types.
    moments: usize,
    activations: usize,
    skip: usize,
    held_skip: usize,
    held_input: usize,
    pooled: usize,
    scratch: usize,
    /// Bytes of a moment, an activation and a scratch word.
    sizes: [usize; 3],
}

/// The workspace split into the plan's regions.
pub(crate) struct Buffers<'w, N: Kernels> {
    /// Mean and standard deviation of the first Gaussian layer's pre-activations.
    pub(crate) stat_mean: &'w mut [N::Moment],
    pub(crate) stat_std: &'w mut [N::Moment],
    /// The activations the next layer reads.
    pub(crate) cur: &'w mut [N::Act],
    /// Where the next layer writes (swapped with `cur` after it).
    pub(crate) next: &'w mut [N::Act],
    pub(crate) skip: &'w mut [N::Act],
    pub(crate) held_skip: &'w mut [N::Act],
    /// The deterministic input of a first stochastic layer with a Bernoulli mask, which
    /// every chunk masks anew.
    pub(crate) held_input: &'w mut [N::Act],
    pub(crate) pooled: &'w mut [N::Act],
    pub(crate) scratch: &'w mut [N::Scratch],
}

impl<N: Kernels> Buffers<'_, N> {
    /// After a layer that wrote `next`: it becomes the current activations.
    pub(crate) fn advance(&mut self) {
        core::mem::swap(&mut self.cur, &mut self.next);
    }
}

/// Index of the first stochastic layer (Gaussian weights or a Bernoulli dropout mask):
/// where a Monte Carlo pass starts drawing.
pub(crate) fn first_stochastic<L: LayerView>(layers: &[L]) -> Option<usize> {
    layers.iter().position(|l| l.posterior().is_stochastic())
}

/// The residual source before `first` whose addition comes after it, if any: its output is
/// computed once and added in every chunk.
pub(crate) fn held_source<L: LayerView>(layers: &[L], first: usize) -> Option<usize> {
    layers[..first]
        .iter()
        .rposition(|l| l.is_residual_source())
        .filter(|&src| {
            !layers[src + 1..first]
                .iter()
                .any(|l| matches!(l.operation(), Operation::ResidualAdd { .. }))
        })
}

/// A model a [`Plan`] can be made for: an f32 [`Model`] or a fixed-point [`QModel`].
pub trait Planned: sealed::Sealed {
    /// The plan of this model with `chunk` samples per pass.
    fn plan(&self, chunk: usize) -> Plan;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::model::Model<'_> {}
    impl Sealed for crate::fixed::QModel<'_> {}
}

impl Planned for Model<'_> {
    fn plan(&self, chunk: usize) -> Plan {
        Plan::build::<F32>(self, chunk)
    }
}

impl Planned for QModel<'_> {
    fn plan(&self, chunk: usize) -> Plan {
        // q8 and q16 lay out the same types.
        match self.precision() {
            crate::format::Precision::Q16 => Plan::build::<Q16>(self, chunk),
            _ => Plan::build::<Q8>(self, chunk),
        }
    }
}

// The fixed-point model's workspace size is the plan's answer (kept here, so that the plan
// depends on the models and not the other way round).
impl QModel<'_> {
    /// 64-bit words of workspace an [`crate::Engine`] needs for this model with
    /// `samples_per_pass` Monte Carlo samples per pass over the weights: the
    /// [`crate::Plan`]'s answer (the first stochastic layer's moments, two activation buffers
    /// of `widest layer x chunk` i32 words, and the noise draws of one layer).
    pub fn workspace_len(&self, samples_per_pass: usize) -> usize {
        Plan::new(self, samples_per_pass).workspace_len()
    }
    /// [`Self::workspace_len`] in bytes.
    pub fn workspace_bytes(&self, samples_per_pass: usize) -> usize {
        self.workspace_len(samples_per_pass) * 8
    }
}

/// `n` elements of `size` bytes, in words of `word` bytes, rounded up.
fn words(n: usize, size: usize, word: usize) -> usize {
    (n * size).div_ceil(word)
}

impl Plan {
    /// The plan of `model` (f32 or fixed point) with `samples_per_pass` Monte Carlo samples
    /// sharing each pass (the engine's `CHUNK`; 0 is taken as 1). The mean-weights mode fits
    /// in the same workspace.
    pub fn new(model: &impl Planned, samples_per_pass: usize) -> Self {
        model.plan(samples_per_pass)
    }

    /// The plan of a model of format `N`. Out of line: one copy per format (the Cortex-M0's
    /// flash).
    #[inline(never)]
    pub(crate) fn build<N: Kernels>(model: &N::Model<'_>, samples_per_pass: usize) -> Self {
        let chunk = samples_per_pass.max(1);
        let layers = N::layers(model);
        let width = layers.iter().map(LayerView::outputs).max().unwrap_or(0);
        let widest_source = layers
            .iter()
            .filter(|l| l.is_residual_source())
            .map(LayerView::outputs)
            .max()
            .unwrap_or(0);
        let first = first_stochastic(layers);
        let pooled = layers
            .iter()
            .filter(|l| matches!(l.operation(), Operation::ExitHead { .. }))
            .map(LayerView::inputs)
            .max()
            .unwrap_or(0);
        Self {
            chunk,
            word: core::mem::size_of::<N::Word>(),
            moments: 2 * first.map_or(0, |f| layers[f].outputs()),
            activations: width * chunk,
            skip: widest_source * chunk,
            held_skip: first
                .and_then(|f| held_source(layers, f))
                .map_or(0, |src| layers[src].outputs()),
            held_input: first
                .filter(|&f| layers[f].posterior() == Posterior::Bernoulli)
                .map_or(0, |f| layers[f].inputs()),
            pooled: pooled * chunk,
            scratch: layers
                .iter()
                .enumerate()
                .map(|(i, l)| N::scratch_len(l, chunk, Some(i) == first))
                .max()
                .unwrap_or(0),
            sizes: [
                core::mem::size_of::<N::Moment>(),
                core::mem::size_of::<N::Act>(),
                core::mem::size_of::<N::Scratch>(),
            ],
        }
    }

    /// Words of each region, in order: moments (two halves), current, next, skip, held skip,
    /// held input, pooled, scratch.
    fn region_words(&self) -> [usize; 9] {
        let [moment, act, scratch] = self.sizes;
        let w = self.word;
        let half = self.moments / 2;
        [
            words(half, moment, w),
            words(half, moment, w),
            words(self.activations, act, w),
            words(self.activations, act, w),
            words(self.skip, act, w),
            words(self.held_skip, act, w),
            words(self.held_input, act, w),
            words(self.pooled, act, w),
            words(self.scratch, scratch, w),
        ]
    }

    /// Samples that share one pass over the weights.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Words of workspace the engine needs: f32 words for an f32 model, u64 words for fixed
    /// point.
    pub fn workspace_len(&self) -> usize {
        self.region_words().iter().sum()
    }

    /// [`Self::workspace_len`] in bytes.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace_len() * self.word
    }

    /// Splits a workspace of at least [`Self::workspace_len`] words into its regions, or
    /// `None` if it is shorter or was planned for another format.
    pub(crate) fn split<'w, N: Kernels>(
        &self,
        workspace: &'w mut [N::Word],
    ) -> Option<Buffers<'w, N>> {
        if workspace.len() < self.workspace_len() || core::mem::size_of::<N::Word>() != self.word {
            return None;
        }
        let [m0, m1, c, n, sk, h, hi, p, sc] = self.region_words();
        let half = self.moments / 2;
        let (stat_mean, rest) = workspace.split_at_mut(m0);
        let (stat_std, rest) = rest.split_at_mut(m1);
        let (cur, rest) = rest.split_at_mut(c);
        let (next, rest) = rest.split_at_mut(n);
        let (skip, rest) = rest.split_at_mut(sk);
        let (held_skip, rest) = rest.split_at_mut(h);
        let (held_input, rest) = rest.split_at_mut(hi);
        let (pooled, rest) = rest.split_at_mut(p);
        let scratch = &mut rest[..sc];
        // Each region starts on a word boundary and holds whole elements of its type (the
        // word is at least as large and as aligned as every element type of the format).
        fn typed<W: bytemuck::Pod, T: bytemuck::Pod>(r: &mut [W], n: usize) -> &mut [T] {
            let all: &mut [T] = bytemuck::cast_slice_mut(r);
            &mut all[..n]
        }
        Some(Buffers {
            stat_mean: typed(stat_mean, half),
            stat_std: typed(stat_std, half),
            cur: typed(cur, self.activations),
            next: typed(next, self.activations),
            skip: typed(skip, self.skip),
            held_skip: typed(held_skip, self.held_skip),
            held_input: typed(held_input, self.held_input),
            pooled: typed(pooled, self.pooled),
            scratch: typed(scratch, self.scratch),
        })
    }
}
