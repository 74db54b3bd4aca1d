//! The hottest f32 inner loops, each with one portable definition and, where measured to pay,
//! a hand-scheduled version per architecture that computes the same bits.
//!
//! - [`portable`]: safe Rust, run by the host and by cores without a hand-scheduled version.
//! - `arm_fpu` (hard-float Cortex-M: M4F, M7, M33): inline `asm!` loops that keep sums in
//!   FPU registers, load weight records in blocks and step pointers without per-weight index
//!   arithmetic or bounds checks. This module and its sub-modules hold the crate's only
//!   `unsafe` code; every block states its invariant and its measured gain.
//!
//! The loops read one [`Line`]: the indices and weight records of one row (or one column) of
//! a validated sparse layer. A `Line` is only made from the arrays of a
//! [`Layer`](crate::model::Layer), whose indices the model's validation proved to lie below the line's bound (`inputs` for a row, `outputs` for a
//! column), so a kernel checks its buffer against the bound once per line, not per weight.
//! Every kernel sums in the stored order with separate multiply and add roundings (the FPU's
//! `vmla.f32` is the unfused multiply-accumulate), so the host and the device agree bit for bit.

mod portable;

#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
mod arm_fpu;

#[cfg(all(target_arch = "arm", tb_arm_dsp))]
mod arm_dsp;
#[cfg(all(target_arch = "arm", tb_arm_dsp))]
use arm_dsp as native_dsp;
#[cfg(not(all(target_arch = "arm", tb_arm_dsp)))]
use portable as native_dsp;

#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
use arm_fpu as native;
#[cfg(not(all(target_arch = "arm", target_abi = "eabihf")))]
use portable as native;

use crate::model::{Geometry, Layer, Weights};

/// The stored weights of one row (or column) of a validated sparse layer: `indices[k]` and its
/// record `values[k * W..(k + 1) * W]` (θ first, then σ² for Gaussian records), every index
/// below `bound`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line<'a, const W: usize> {
    indices: &'a [u16],
    values: &'a [f32],
    bound: usize,
}

impl<'a, const W: usize> Line<'a, W> {
    /// A line of a validated layer's arrays (the layer's own slices, with its bound).
    #[inline(always)]
    pub(crate) fn from_validated(
        indices: &'a [u16],
        values: &'a [f32],
        bound: usize,
    ) -> Option<Self> {
        (values.len() == indices.len() * W).then_some(Self {
            indices,
            values,
            bound,
        })
    }

    /// The stored indices.
    pub(crate) fn indices(&self) -> &'a [u16] {
        self.indices
    }
    /// The weight records, `W` words each.
    pub(crate) fn values(&self) -> &'a [f32] {
        self.values
    }
    /// Every index is below this.
    pub(crate) fn bound(&self) -> usize {
        self.bound
    }
}

/// All lines of a validated sparse layer: its rows (compressed sparse rows, indices below
/// `inputs`) or its columns (compressed sparse columns, indices below `outputs`). Validation
/// proved the pointers non-decreasing and every index below the bound; [`Lines::of`] checks
/// the array lengths, so line `k` is `indices[pointers[k]..pointers[k + 1]]` with its records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lines<'a, const W: usize> {
    pointers: &'a [u32],
    indices: &'a [u16],
    values: &'a [f32],
    bound: usize,
}

impl<'a, const W: usize> Lines<'a, W> {
    /// The rows or columns of a sparse layer whose records are `W` words; `None` for other
    /// storage or record widths.
    #[inline(always)]
    pub(crate) fn of(layer: &Layer<'a>) -> Option<Self> {
        let (pointers, indices, values, bound) = match layer.weights() {
            Weights::Sparse {
                row_ptr,
                cols,
                values,
            } => (row_ptr, cols, values, layer.inputs()),
            Weights::SparseByInput {
                col_ptr,
                rows,
                values,
            } => (col_ptr, rows, values, layer.outputs()),
            Weights::Dense { .. } | Weights::Conv { .. } | Weights::None => return None,
        };
        let last = *pointers.last()? as usize;
        let fits = layer.posterior().words_per_weight() == W
            && last <= indices.len()
            && values.len() == indices.len() * W;
        fits.then_some(Self {
            pointers,
            indices,
            values,
            bound,
        })
    }

    /// Number of lines.
    #[inline(always)]
    pub(crate) fn count(&self) -> usize {
        self.pointers.len() - 1
    }

    /// Line `k` (`None` beyond the last).
    #[inline(always)]
    pub(crate) fn line(&self, k: usize) -> Option<Line<'a, W>> {
        let (start, end) = (
            *self.pointers.get(k)? as usize,
            *self.pointers.get(k + 1)? as usize,
        );
        self.span(start..end)
    }

    /// The stored weights `span` of the arrays, as a line (one line's span, from its pointers,
    /// for the sums to keep the sequential result); `None` if out of range.
    #[inline(always)]
    pub(crate) fn span(&self, span: core::ops::Range<usize>) -> Option<Line<'a, W>> {
        Line::from_validated(
            self.indices.get(span.clone())?,
            self.values.get(span.start * W..span.end * W)?,
            self.bound,
        )
    }
}

/// `out[j] = bias[j] + Σ_k x[c_k] · θ_k` over row `j`, for every row of `rows` (the
/// pre-activations of a sparse layer with mean weights).
#[inline(always)]
pub(crate) fn dot_rows<const W: usize>(
    rows: Lines<'_, W>,
    x: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    native::dot_rows(rows, x, bias, out)
}

/// [`scatter_span`] of a Gaussian column into the pre-activation moments:
/// `mean[r_k] += xv · θ_k` and `var[r_k] += xv² · σ²_k`.
#[inline(always)]
pub(crate) fn scatter_moments_span(
    lines: Lines<'_, 2>,
    span: core::ops::Range<usize>,
    xv: f32,
    moments: (&mut [f32], &mut [f32]),
) {
    native::scatter_moments_span(lines, span, xv, moments)
}

/// Every row's sums over all `s` samples of a unit-major chunk (`x[i * s + m]` is input `i` of
/// sample `m`, `squares[i * s + m]` its square from [`square_into`]):
/// `mean[j * s + m] = bias[j] + Σ_k θ_k x[c_k s + m]` and
/// `var[j * s + m] = Σ_k σ²_k squares[c_k s + m]` (Gaussian records, `W = 2`).
#[inline(always)]
pub(crate) fn accumulate_rows(
    rows: Lines<'_, 2>,
    x: (&[f32], &[f32]),
    s: usize,
    bias: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) {
    native::accumulate_rows(rows, x, s, bias, mean, var)
}

/// A 3x3 convolution with stride 1 and padding 1 on maps 7 wide and at least 4 high, mean
/// weights (θ, the first of each record of `words`), all output channels:
/// `out[co, oy, ox] = bias[co] + Σ θ x[ci, oy + ky - 1, ox + kx - 1]` over the channel's taps in
/// stored order (the order of the weight-stationary loop in `kernels::conv`), before the
/// activation. Returns `false`, having written nothing, where no hand-scheduled version runs
/// (every other geometry, and the portable build): the caller then runs its own loop, which
/// gives the same bits.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn conv3_mean(
    g: &Geometry,
    row_ptr: &[u32],
    taps: &[u32],
    values: &[f32],
    words: usize,
    x: &[f32],
    bias: &[f32],
    out: &mut [f32],
) -> bool {
    native::conv3_mean(g, row_ptr, taps, values, words, x, bias, out)
}

/// One output channel `co` of the convolution [`conv3_mean`] runs, Gaussian records
/// (θ, σ²), one sample: `mean[oy, ox] = bias + Σ θ x` and `var[oy, ox] = Σ σ² x²` (with
/// `x²` rounded before the multiply, `0.0` first) over the channel's taps in stored order, the
/// sums of the weight-stationary loop in `kernels::conv` (`forward_samples` with one sample per
/// pass). Returns `false`, having written nothing, where no hand-scheduled version runs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn conv3_moments(
    g: &Geometry,
    row_ptr: &[u32],
    taps: &[u32],
    values: &[f32],
    x: &[f32],
    co: usize,
    bias: f32,
    moments: (&mut [f32], &mut [f32]),
) -> bool {
    native::conv3_moments(g, row_ptr, taps, values, x, co, bias, moments)
}

/// `bias + Σ_k x[indices[k]] · θ_k`, in stored order. `x` must hold at least `line.bound()`
/// values (else the portable kernel runs and panics on the first index beyond `x`).
#[inline(always)]
pub(crate) fn dot<const W: usize>(line: Line<'_, W>, x: &[f32], bias: f32) -> f32 {
    native::dot(line, x, bias)
}

/// `out[indices[k]] += xv · θ_k` for the stored weights `span` of `lines` (one column, from its
/// pointers), in stored order; nothing if the span is out of range.
#[inline(always)]
pub(crate) fn scatter_span<const W: usize>(
    lines: Lines<'_, W>,
    span: core::ops::Range<usize>,
    xv: f32,
    out: &mut [f32],
) {
    native::scatter_span(lines, span, xv, out)
}

/// `squares[i] = x[i] * x[i]` (a chunk's inputs squared once, not once per weight).
#[inline(always)]
pub(crate) fn square_into(x: &[f32], squares: &mut [f32]) {
    native::square_into(x, squares)
}

/// `v = sqrt(v)` for every value, correctly rounded (see [`sqrtf`]).
#[inline(always)]
pub(crate) fn sqrt_in_place(values: &mut [f32]) {
    native::sqrt_in_place(values)
}

/// The records of one row of a validated q8 layer with Gaussian weights and one-byte indices:
/// `[index, θ, σ²]` per weight (`θ` an i8, `σ²` a u8), every index below `bound`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q8Row<'a> {
    records: &'a [u8],
    #[cfg_attr(not(all(target_arch = "arm", tb_arm_dsp)), allow(dead_code))]
    bound: usize,
}

impl<'a> Q8Row<'a> {
    /// A row of a validated layer's records (the layer's own bytes, with its input count as
    /// the bound); `None` unless the bytes are whole records.
    #[inline(always)]
    pub(crate) fn from_validated(records: &'a [u8], bound: usize) -> Option<Self> {
        (records.len() % 3 == 0).then_some(Self { records, bound })
    }
    /// The records, three bytes each.
    pub(crate) fn records(&self) -> &'a [u8] {
        self.records
    }
    /// Every index is below this.
    #[cfg_attr(not(all(target_arch = "arm", tb_arm_dsp)), allow(dead_code))]
    pub(crate) fn bound(&self) -> usize {
        self.bound
    }
}

/// The sums of four samples of one q8 row: `x[i * stride + m]` is the activation word of
/// input `i` in sample `m < 4` (`a` in its low half-word, `a² >> 1` in its high one);
/// `acc[m] = Σ a θ` and `var[m] = Σ (a² >> 1) σ²` over the row's records, wrapping.
#[inline(always)]
pub(crate) fn q8_row_sums4(row: Q8Row<'_>, x: &[i32], stride: usize) -> ([i32; 4], [i32; 4]) {
    native_dsp::q8_row_sums4(row, x, stride)
}

/// The columns of a validated q8 layer stored by input, with Gaussian weights and one-byte
/// output indices: `counts[i]` records `[j, θ, σ²]` for input `i`, one column after the other,
/// every output index `j` below `bound`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q8Columns<'a> {
    counts: &'a [u8],
    records: &'a [u8],
    #[cfg_attr(not(all(target_arch = "arm", tb_arm_dsp)), allow(dead_code))]
    bound: usize,
}

impl<'a> Q8Columns<'a> {
    /// The columns of a validated layer (its own counts and records, with its output count
    /// as the bound); `None` unless the records are whole.
    #[inline(always)]
    pub(crate) fn from_validated(
        counts: &'a [u8],
        records: &'a [u8],
        bound: usize,
    ) -> Option<Self> {
        (records.len() % 3 == 0).then_some(Self {
            counts,
            records,
            bound,
        })
    }
    /// Records per input.
    pub(crate) fn counts(&self) -> &'a [u8] {
        self.counts
    }
    /// The records, three bytes each, column after column.
    pub(crate) fn records(&self) -> &'a [u8] {
        self.records
    }
    /// Every output index is below this.
    #[cfg_attr(not(all(target_arch = "arm", tb_arm_dsp)), allow(dead_code))]
    pub(crate) fn bound(&self) -> usize {
        self.bound
    }
}

/// The mean sums of a q8 layer stored by input columns, for raw input bytes: for every input
/// `i` with `x[i] != 0`, `acc[j] += x[i] θ` over the column's records (a byte `a` is the low
/// half-word of its activation word), wrapping; a column whose records run past the end is
/// skipped. `acc` is not cleared.
#[inline(always)]
pub(crate) fn q8_scatter_bytes(columns: Q8Columns<'_>, x: &[u8], acc: &mut [i32]) {
    native_dsp::q8_scatter_bytes(columns, x, acc)
}

/// The mean sum of one q8 row for one input: `Σ a θ` over the row's records, `x[i]` the
/// activation word of input `i` (`a` in its low half-word), wrapping.
#[inline(always)]
pub(crate) fn q8_row_dot(row: Q8Row<'_>, x: &[i32]) -> i32 {
    native_dsp::q8_row_dot(row, x)
}

/// The precomputed taps of one output channel of a q8 convolution: per tap `[offset, weight]`,
/// the byte offset `4 k` of the tap's input word from the first word a window (or sample
/// group) reads, and its weight word: θ sign-extended for mean weights, or θ in the low
/// half-word and σ² in the high one. Every offset is a non-negative multiple of 4 below
/// `4 * reach`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q8Taps<'a> {
    pairs: &'a [[i32; 2]],
    #[cfg_attr(not(all(target_arch = "arm", tb_arm_dsp)), allow(dead_code))]
    reach: usize,
}

impl<'a> Q8Taps<'a> {
    /// The taps `pairs`; `None` if an offset is negative or not a multiple of 4.
    #[inline(always)]
    pub(crate) fn new(pairs: &'a [[i32; 2]]) -> Option<Self> {
        let mut reach = 0usize;
        for &[off, _] in pairs {
            if off < 0 || off % 4 != 0 {
                return None;
            }
            reach = reach.max(off as usize / 4 + 1);
        }
        Some(Self { pairs, reach })
    }
    /// `[byte offset, weight word]` per tap.
    pub(crate) fn pairs(&self) -> &'a [[i32; 2]] {
        self.pairs
    }
    /// Every tap reads a word below `first + reach`.
    #[cfg_attr(not(all(target_arch = "arm", tb_arm_dsp)), allow(dead_code))]
    pub(crate) fn reach(&self) -> usize {
        self.reach
    }
}

/// Mean weights at four output positions `step` words apart: `acc[k] = Σ a θ` over the taps,
/// `a` the low half-word of `x[at + k step + offset / 4]`, wrapping. Taps reading outside `x`
/// add nothing (the caller passes interior windows only).
#[inline(always)]
pub(crate) fn q8_tap_means4(taps: Q8Taps<'_>, x: &[i32], at: usize, step: usize) -> [i32; 4] {
    native_dsp::q8_tap_means4(taps, x, at, step)
}

/// Four samples of one output position: `acc[m] = Σ a θ` and `var[m] = Σ (a² >> 1) σ²` over
/// the taps, the word of sample `m` being `x[at + offset / 4 + m]` (`a` in its low half-word,
/// `a² >> 1` in its high one), wrapping. Taps reading outside `x` add nothing.
#[inline(always)]
pub(crate) fn q8_tap_sums4(taps: Q8Taps<'_>, x: &[i32], at: usize) -> ([i32; 4], [i32; 4]) {
    native_dsp::q8_tap_sums4(taps, x, at)
}

/// Correctly rounded square root (the FPU's `vsqrt.f32` on hard-float cores, `libm` elsewhere:
/// IEEE 754 requires both to round correctly, so they agree bit for bit).
#[inline(always)]
pub(crate) fn sqrtf(x: f32) -> f32 {
    native::sqrtf(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro128PlusPlus;
    use std::vec::Vec;

    /// A random sparse matrix of `rows x cols`, compressed by rows: pointers, indices and
    /// Gaussian records (θ, σ²), about a third of the weights present.
    fn random_rows(
        rng: &mut Xoshiro128PlusPlus,
        rows: usize,
        cols: usize,
    ) -> (Vec<u32>, Vec<u16>, Vec<f32>) {
        let (mut pointers, mut indices, mut values) = (std::vec![0u32], Vec::new(), Vec::new());
        for _ in 0..rows {
            for c in 0..cols {
                if rng.next_u32() % 3 == 0 {
                    indices.push(c as u16);
                    values.push(uniform(rng) - 0.5);
                    values.push(uniform(rng) * 0.1);
                }
            }
            pointers.push(indices.len() as u32);
        }
        (pointers, indices, values)
    }

    fn uniform(rng: &mut Xoshiro128PlusPlus) -> f32 {
        (rng.next_u32() >> 8) as f32 / 16_777_216.0
    }

    fn line<'a>(
        (pointers, indices, values): &'a (Vec<u32>, Vec<u16>, Vec<f32>),
        j: usize,
        bound: usize,
    ) -> Line<'a, 2> {
        let (start, end) = (pointers[j] as usize, pointers[j + 1] as usize);
        Line::from_validated(&indices[start..end], &values[2 * start..2 * end], bound).unwrap()
    }

    fn all_rows<'a>(
        (pointers, indices, values): &'a (Vec<u32>, Vec<u16>, Vec<f32>),
        bound: usize,
    ) -> Lines<'a, 2> {
        Lines {
            pointers,
            indices,
            values,
            bound,
        }
    }

    #[test]
    fn dot_matches_an_f64_reference() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(3);
        let (rows, cols) = (17, 40);
        let m = random_rows(&mut rng, rows, cols);
        let x: Vec<f32> = (0..cols).map(|_| uniform(&mut rng) * 2.0 - 1.0).collect();
        for j in 0..rows {
            let l = line(&m, j, cols);
            let exact: f64 = 0.25
                + l.indices()
                    .iter()
                    .zip(l.values().chunks_exact(2))
                    .map(|(&c, w)| f64::from(x[c as usize]) * f64::from(w[0]))
                    .sum::<f64>();
            let got = f64::from(dot(l, &x, 0.25));
            assert!((got - exact).abs() < 1e-5, "row {j}: {got} against {exact}");
        }
    }

    #[test]
    fn scatter_by_columns_gives_the_row_dots_bits() {
        // The same matrix compressed by columns: each output then receives its terms in
        // ascending input order, the order of its row's dot product.
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(5);
        let (rows, cols) = (23, 31);
        let m = random_rows(&mut rng, rows, cols);
        let x: Vec<f32> = (0..cols).map(|_| uniform(&mut rng) - 0.5).collect();
        let bias: Vec<f32> = (0..rows).map(|_| uniform(&mut rng) - 0.5).collect();
        let mut by_column: Vec<(Vec<u16>, Vec<f32>)> = std::vec![(Vec::new(), Vec::new()); cols];
        for j in 0..rows {
            let l = line(&m, j, cols);
            for (&c, w) in l.indices().iter().zip(l.values().chunks_exact(2)) {
                by_column[c as usize].0.push(j as u16);
                by_column[c as usize].1.extend_from_slice(w);
            }
        }
        let (mut pointers, mut indices, mut values) = (std::vec![0u32], Vec::new(), Vec::new());
        for (r, v) in &by_column {
            indices.extend_from_slice(r);
            values.extend_from_slice(v);
            pointers.push(indices.len() as u32);
        }
        let columns = Lines::<2> {
            pointers: &pointers,
            indices: &indices,
            values: &values,
            bound: rows,
        };
        let mut out = bias.clone();
        let (mut mean, mut var) = (bias.clone(), std::vec![0.0f32; rows]);
        for (i, pair) in pointers.windows(2).enumerate() {
            let span = pair[0] as usize..pair[1] as usize;
            scatter_span(columns, span.clone(), x[i], &mut out);
            scatter_moments_span(columns, span, x[i], (&mut mean, &mut var));
        }
        for j in 0..rows {
            // The variance sums x² σ² in the same order.
            let l = line(&m, j, cols);
            let mut v = 0.0f32;
            for (&c, w) in l.indices().iter().zip(l.values().chunks_exact(2)) {
                v += x[c as usize] * x[c as usize] * w[1];
            }
            assert_eq!(var[j].to_bits(), v.to_bits());
            assert_eq!(mean[j].to_bits(), out[j].to_bits());
        }
        for j in 0..rows {
            assert_eq!(
                out[j].to_bits(),
                dot(line(&m, j, cols), &x, bias[j]).to_bits()
            );
        }
    }

    #[test]
    fn accumulated_rows_give_each_samples_own_sums_for_any_chunk() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(7);
        let (rows, cols) = (9, 50);
        let m = random_rows(&mut rng, rows, cols);
        let lines = all_rows(&m, cols);
        let bias: Vec<f32> = (0..rows).map(|_| uniform(&mut rng) - 0.5).collect();
        // Blocks of 8 and 4 and the rest, as the hard-float kernels split them.
        for s in [1, 4, 6, 8, 13, 32] {
            // Unit-major chunk: x[i * s + k] is input i of sample k.
            let x: Vec<f32> = (0..cols * s)
                .map(|_| uniform(&mut rng) * 2.0 - 1.0)
                .collect();
            let (mut mean, mut var) = (std::vec![0.0f32; rows * s], std::vec![0.0f32; rows * s]);
            let mut squares = std::vec![0.0f32; x.len()];
            square_into(&x, &mut squares);
            accumulate_rows(lines, (&x, &squares), s, &bias, &mut mean, &mut var);
            for j in 0..rows {
                let l = line(&m, j, cols);
                for k in 0..s {
                    let sample: Vec<f32> = (0..cols).map(|i| x[i * s + k]).collect();
                    assert_eq!(
                        mean[j * s + k].to_bits(),
                        dot(l, &sample, bias[j]).to_bits()
                    );
                    let mut v = 0.0f32;
                    for (&c, w) in l.indices().iter().zip(l.values().chunks_exact(2)) {
                        let xv = sample[c as usize];
                        v += xv * xv * w[1];
                    }
                    assert_eq!(
                        var[j * s + k].to_bits(),
                        v.to_bits(),
                        "row {j}, sample {k} of {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn row_dots_are_each_rows_dot() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(11);
        let (rows, cols) = (12, 30);
        let m = random_rows(&mut rng, rows, cols);
        let lines = all_rows(&m, cols);
        let x: Vec<f32> = (0..cols).map(|_| uniform(&mut rng) - 0.5).collect();
        let bias: Vec<f32> = (0..rows).map(|_| uniform(&mut rng) - 0.5).collect();
        let mut out = std::vec![0.0f32; rows];
        dot_rows(lines, &x, &bias, &mut out);
        for j in 0..rows {
            assert_eq!(
                out[j].to_bits(),
                dot(line(&m, j, cols), &x, bias[j]).to_bits()
            );
        }
    }

    #[test]
    fn a_line_needs_one_record_per_index() {
        assert!(Line::<2>::from_validated(&[0, 1], &[0.0; 3], 2).is_none());
        assert!(Line::<1>::from_validated(&[0, 1], &[0.0; 2], 2).is_some());
    }

    /// The q8 row sums against an i64 computation from the activations themselves (not their
    /// packed words), for every group of four samples of chunks of 4, 8, 12 and 32.
    #[test]
    fn q8_row_sums_match_an_i64_reference() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(9);
        let inputs = 37;
        for stride in [4usize, 8, 12, 32] {
            let activations: Vec<i32> = (0..inputs * stride)
                .map(|_| (rng.next_u32() % 256) as i32)
                .collect();
            let words: Vec<i32> = activations
                .iter()
                .map(|&a| ((a * a) >> 1) << 16 | a)
                .collect();
            let mut records = Vec::new();
            for i in 0..inputs {
                if rng.next_u32() % 2 == 0 {
                    records.extend_from_slice(&[
                        i as u8,
                        rng.next_u32() as u8,
                        rng.next_u32() as u8,
                    ]);
                }
            }
            let row = Q8Row::from_validated(&records, inputs).unwrap();
            for g0 in (0..stride).step_by(4) {
                let (acc, var) = q8_row_sums4(row, &words[g0..], stride);
                for m in 0..4 {
                    let (mut a_ref, mut v_ref) = (0i64, 0i64);
                    for r in records.chunks_exact(3) {
                        let a = activations[r[0] as usize * stride + g0 + m] as i64;
                        a_ref += a * (r[1] as i8 as i64);
                        v_ref += ((a * a) >> 1) * r[2] as i64;
                    }
                    assert_eq!(acc[m] as i64, a_ref, "stride {stride} sample {}", g0 + m);
                    assert_eq!(var[m] as i64, v_ref, "stride {stride} sample {}", g0 + m);
                }
            }
        }
        assert!(Q8Row::from_validated(&[0, 1], 2).is_none());
    }

    /// The q8 mean kernels (a row's dot product over words, a by-input scatter over raw
    /// bytes) against i64 sums computed from the activations themselves.
    #[test]
    fn q8_mean_kernels_match_an_i64_reference() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(10);
        let (inputs, outputs) = (300usize, 81usize);
        // Raw bytes with blank runs, as an image has.
        let bytes: Vec<u8> = (0..inputs)
            .map(|i| {
                if (i / 7) % 3 == 0 {
                    0
                } else {
                    rng.next_u32() as u8
                }
            })
            .collect();
        let words: Vec<i32> = bytes
            .iter()
            .map(|&a| ((a as i32 * a as i32) >> 1) << 16 | a as i32)
            .collect();
        let mut counts = Vec::new();
        let mut records = Vec::new();
        let mut reference = std::vec![0i64; outputs];
        for &a in &bytes {
            let count = rng.next_u32() % 5;
            counts.push(count as u8);
            for _ in 0..count {
                let (j, theta) = (rng.next_u32() as usize % outputs, rng.next_u32() as u8);
                records.extend_from_slice(&[j as u8, theta, rng.next_u32() as u8]);
                reference[j] += a as i64 * (theta as i8 as i64);
            }
        }
        let columns = Q8Columns::from_validated(&counts, &records, outputs).unwrap();
        let mut acc = std::vec![0i32; outputs];
        q8_scatter_bytes(columns, &bytes, &mut acc);
        let got: Vec<i64> = acc.iter().map(|&a| a as i64).collect();
        assert_eq!(got, reference);
        // One row over the words: every third input, in order.
        let row_records: Vec<u8> = (0..inputs)
            .step_by(3)
            .flat_map(|i| [i as u8, rng.next_u32() as u8, 0])
            .collect();
        let row = Q8Row::from_validated(&row_records, inputs).unwrap();
        let expected: i64 = row_records
            .chunks_exact(3)
            .map(|r| bytes[r[0] as usize] as i64 * (r[1] as i8 as i64))
            .sum();
        assert_eq!(q8_row_dot(row, &words) as i64, expected);
        assert!(Q8Columns::from_validated(&counts, &records[1..], outputs).is_none());
    }

    /// The q8 tap sums (mean weights at four positions, and four samples of one position)
    /// against i64 sums of the activations themselves, reading past the end of `x` included.
    #[test]
    fn q8_tap_sums_match_an_i64_reference() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(11);
        let n = 300;
        let activations: Vec<i64> = (0..n).map(|_| (rng.next_u32() % 256) as i64).collect();
        let words: Vec<i32> = activations
            .iter()
            .map(|&a| (((a * a) >> 1) << 16 | a) as i32)
            .collect();
        let taps: Vec<(usize, i64, i64)> = (0..40)
            .map(|_| {
                let r = rng.next_u32();
                (
                    (r % 97) as usize,
                    (r >> 8) as i8 as i64,
                    (r >> 16) as u8 as i64,
                )
            })
            .collect();
        let means: Vec<[i32; 2]> = taps
            .iter()
            .map(|&(k, t, _)| [4 * k as i32, t as i32])
            .collect();
        let sampled: Vec<[i32; 2]> = taps
            .iter()
            .map(|&(k, t, v)| [4 * k as i32, (t as i32) & 0xffff | (v as i32) << 16])
            .collect();
        let (means, sampled) = (Q8Taps::new(&means).unwrap(), Q8Taps::new(&sampled).unwrap());
        let word = |i: usize| activations.get(i).copied();
        for at in [0usize, 1, 17, 150, 200, 260] {
            for step in [1usize, 2, 3] {
                let acc = q8_tap_means4(means, &words, at, step);
                for (k, &a) in acc.iter().enumerate() {
                    let expected: i64 = taps
                        .iter()
                        .filter_map(|&(o, t, _)| Some(word(at + o + k * step)? * t))
                        .sum();
                    assert_eq!(a as i64, expected, "at {at} step {step} position {k}");
                }
            }
            let (acc, var) = q8_tap_sums4(sampled, &words, at);
            for m in 0..4 {
                let (mut a_ref, mut v_ref) = (0i64, 0i64);
                for &(o, t, v) in &taps {
                    if at + o + 3 < n {
                        let a = activations[at + o + m];
                        a_ref += a * t;
                        v_ref += ((a * a) >> 1) * v;
                    }
                }
                assert_eq!((acc[m] as i64, var[m] as i64), (a_ref, v_ref), "at {at}");
            }
        }
        assert!(Q8Taps::new(&[[-4, 1]]).is_none());
        assert!(Q8Taps::new(&[[6, 1]]).is_none());
    }
}
