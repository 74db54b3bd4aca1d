//! The workspace plan: built once from a validated [`Model`] and a chunk size (the number of
//! Monte Carlo samples that share one pass over the weights), it owns the layout of the
//! caller's buffer. [`Plan::workspace_len`] is the one answer to "how much RAM", and the runner
//! splits the buffer exactly as the plan says, so the two cannot disagree.

use crate::format::Posterior;
use crate::kernels::scratch_len;
use crate::model::{Layer, Model, Operation};

/// Where every buffer of one prediction lives in the workspace, for one model and chunk size.
///
/// Regions, in order (f32 words):
/// - **moments**: pre-activation mean and standard deviation of the first Gaussian layer,
///   computed once per input (2 x its outputs);
/// - **current** and **next** activations: widest layer x chunk each;
/// - **skip**: the input of the open residual block, widest residual source x chunk;
/// - **held skip**: a block input computed before the first Gaussian layer and added after it
///   (kept across chunks; usually empty);
/// - **pooled**: an exit head's pooled map, widest head input x chunk;
/// - **scratch**: kernel scratch, largest `scratch_len` over the layers.
///
/// An early-exit model's feature maps are kept for one chunk only: a halting policy that
/// needs every sample at an exit regenerates each chunk's path from the input and the
/// chunk's seeds (see [`crate::Engine::predict_early_exit`]), so the plan does not grow with
/// the number of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Plan {
    chunk: usize,
    moments: usize,
    activations: usize,
    skip: usize,
    held_skip: usize,
    pooled: usize,
    scratch: usize,
}

/// The workspace split into the plan's regions.
pub(crate) struct Buffers<'w> {
    /// Mean and standard deviation of the first Gaussian layer's pre-activations.
    pub(crate) stat_mean: &'w mut [f32],
    pub(crate) stat_std: &'w mut [f32],
    /// The activations the next layer reads.
    pub(crate) cur: &'w mut [f32],
    /// Where the next layer writes (swapped with `cur` after it).
    pub(crate) next: &'w mut [f32],
    pub(crate) skip: &'w mut [f32],
    pub(crate) held_skip: &'w mut [f32],
    pub(crate) pooled: &'w mut [f32],
    pub(crate) scratch: &'w mut [f32],
}

impl<'w> Buffers<'w> {
    /// After a layer that wrote `next`: it becomes the current activations.
    pub(crate) fn advance(&mut self) {
        core::mem::swap(&mut self.cur, &mut self.next);
    }
}

/// Index of the first layer with Gaussian weights: where a Monte Carlo pass starts drawing.
pub(crate) fn first_gaussian(layers: &[Layer<'_>]) -> Option<usize> {
    layers
        .iter()
        .position(|l| l.posterior() == Posterior::Gaussian)
}

/// The residual source before `first` whose addition comes after it, if any: its output is
/// computed once and added in every chunk.
pub(crate) fn held_source(layers: &[Layer<'_>], first: usize) -> Option<usize> {
    layers[..first]
        .iter()
        .rposition(|l| l.is_residual_source())
        .filter(|&src| {
            !layers[src + 1..first]
                .iter()
                .any(|l| matches!(l.operation(), Operation::ResidualAdd { .. }))
        })
}

impl Plan {
    /// The plan of `model` with `samples_per_pass` Monte Carlo samples sharing each pass (the
    /// engine's `CHUNK`; 0 is taken as 1). The mean-weights mode fits in the same workspace.
    pub fn new(model: &Model<'_>, samples_per_pass: usize) -> Self {
        let chunk = samples_per_pass.max(1);
        let layers = model.layers();
        let width = model.max_width();
        let widest_source = layers
            .iter()
            .filter(|l| l.is_residual_source())
            .map(Layer::outputs)
            .max()
            .unwrap_or(0);
        let first = first_gaussian(layers);
        let pooled = layers
            .iter()
            .filter(|l| matches!(l.operation(), Operation::ExitHead { .. }))
            .map(Layer::inputs)
            .max()
            .unwrap_or(0);
        Self {
            chunk,
            moments: 2 * first.map_or(0, |f| layers[f].outputs()),
            activations: width * chunk,
            skip: widest_source * chunk,
            held_skip: first
                .and_then(|f| held_source(layers, f))
                .map_or(0, |src| layers[src].outputs()),
            pooled: pooled * chunk,
            scratch: layers
                .iter()
                .map(|l| scratch_len(l, chunk))
                .max()
                .unwrap_or(0),
        }
    }

    /// Samples that share one pass over the weights.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// f32 words of workspace the engine needs.
    pub fn workspace_len(&self) -> usize {
        self.moments
            + 2 * self.activations
            + self.skip
            + self.held_skip
            + self.pooled
            + self.scratch
    }

    /// [`Self::workspace_len`] in bytes.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace_len() * core::mem::size_of::<f32>()
    }

    /// Splits a workspace of at least [`Self::workspace_len`] words into its regions, or
    /// `None` if it is shorter.
    pub(crate) fn split<'w>(&self, workspace: &'w mut [f32]) -> Option<Buffers<'w>> {
        if workspace.len() < self.workspace_len() {
            return None;
        }
        let half = self.moments / 2;
        let (stat_mean, rest) = workspace.split_at_mut(half);
        let (stat_std, rest) = rest.split_at_mut(half);
        let (cur, rest) = rest.split_at_mut(self.activations);
        let (next, rest) = rest.split_at_mut(self.activations);
        let (skip, rest) = rest.split_at_mut(self.skip);
        let (held_skip, rest) = rest.split_at_mut(self.held_skip);
        let (pooled, rest) = rest.split_at_mut(self.pooled);
        let scratch = &mut rest[..self.scratch];
        Some(Buffers {
            stat_mean,
            stat_std,
            cur,
            next,
            skip,
            held_skip,
            pooled,
            scratch,
        })
    }
}
