//! The posterior predictive summary in fixed point: softmax, entropies and mutual
//! information from Q16 logits, with integer arithmetic only.
//!
//! Per sample `m`, with `d_k = z_k - max z` (Q16): `e_k = exp_neg_q15(-d_k)` (Q15),
//! `S = Σ e_k`, `p_k = round(e_k 2^16 / S)` (Q16) and the entropy in its logit form
//! `H_m = ln(S / 2^15) - Σ p_k d_k` (one logarithm per sample). The predictive is
//! `p̄_k = round(Σ_m p_k / M)`, `H[p̄] = -Σ p̄_k ln p̄_k`, the expected entropy `(1/M) Σ H_m`
//! and the mutual information `max(0, H[p̄] - E[H])`.
//!
//! Error bounds (tested against f64 on random logits): every probability within 2^-14 (four
//! units of Q16; the Q15 exponentials dominate) of the exact softmax and every entropy within 0.002 nats of the exact value
//! of the same logits.

use super::math::{exp_neg_q15, ln_q16, n_ln2_q16};

/// An unsigned fixed-point number with 16 fractional bits (1.0 is 65536): probabilities and
/// entropies in nats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UQ16(pub u32);

impl UQ16 {
    /// 1.0.
    pub const ONE: UQ16 = UQ16(1 << 16);

    /// The raw bits.
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// The value as f32 (for display and host-side metrics; the device path never calls it).
    pub fn to_f32(self) -> f32 {
        self.0 as f32 / 65536.0
    }

    /// The value in thousandths, rounded (for integer-only display: `p = 0.873` is 873).
    pub const fn to_milli(self) -> u32 {
        ((self.0 as u64 * 1000 + (1 << 15)) >> 16) as u32
    }
}

/// The fixed-point answer for one input: the Monte Carlo posterior predictive and its
/// uncertainty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QPrediction<const K: usize> {
    /// Mean class probabilities p̄ (Q16; they sum to 1 within rounding).
    pub probabilities: heapless::Vec<UQ16, K>,
    /// The most probable class under p̄ (the first one on ties).
    pub class: usize,
    /// Predictive entropy H[p̄] in nats (total uncertainty).
    pub predictive_entropy: UQ16,
    /// Expected entropy (1/M) Σ H\[p_m\] in nats (aleatoric).
    pub expected_entropy: UQ16,
    /// Mutual information H\[p̄\] - E\[H\[p_m\]\] in nats (epistemic), clamped at zero.
    pub mutual_information: UQ16,
    /// Number of weight samples averaged (1 for the mean-weights mode).
    pub samples: usize,
}

impl<const K: usize> QPrediction<K> {
    /// Probability of the predicted class.
    pub fn confidence(&self) -> UQ16 {
        self.probabilities
            .get(self.class)
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(feature = "defmt")]
impl<const K: usize> defmt::Format for QPrediction<K> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "class {} (p = {}/1000), entropy {}/1000, expected entropy {}/1000, mutual information {}/1000 nats",
            self.class,
            self.confidence().to_milli(),
            self.predictive_entropy.to_milli(),
            self.expected_entropy.to_milli(),
            self.mutual_information.to_milli()
        )
    }
}

/// Softmax of Q16 logits into Q16 probabilities; returns the entropy of the result in Q16
/// nats.
pub fn softmax_q16(logits: &[i32], probs: &mut [u32]) -> u32 {
    let max = logits.iter().copied().max().unwrap_or(0);
    let mut sum = 0u32;
    for (p, &z) in probs.iter_mut().zip(logits) {
        let d = (max as i64 - z as i64).min(u32::MAX as i64) as u32;
        *p = exp_neg_q15(d);
        sum += *p;
    }
    // sum >= 32768 (the largest logit contributes e^0) and <= 1024 * 32768.
    let mut weighted = 0i64;
    for (p, &z) in probs.iter_mut().zip(logits) {
        *p = ((*p << 16) + sum / 2) / sum;
        weighted += *p as i64 * (max as i64 - z as i64);
    }
    // H = ln(S / 2^15) + Σ p (max - z); Q16 throughout.
    let h = ln_q16(sum) as i64 - n_ln2_q16(15) + ((weighted + (1 << 15)) >> 16);
    h.clamp(0, u32::MAX as i64) as u32
}

/// -Σ p ln p of Q16 probabilities, in Q16 nats.
pub fn entropy_q16(probs: &[u32]) -> u32 {
    let mut h = 0i64;
    for &p in probs {
        if p > 0 {
            // ln(p / 2^16) = ln p - 16 ln 2 <= 0.
            let ln = ln_q16(p) as i64 - n_ln2_q16(16);
            h -= p as i64 * ln;
        }
    }
    ((h + (1 << 15)) >> 16).clamp(0, u32::MAX as i64) as u32
}

/// Running sums of the per-sample softmax and entropy.
pub struct QAccumulator<const K: usize> {
    classes: usize,
    sum_p: [u32; K],
    sum_h: u64,
    samples: u32,
}

impl<const K: usize> QAccumulator<K> {
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            classes,
            sum_p: [0; K],
            sum_h: 0,
            samples: 0,
        }
    }

    /// Adds one sample's Q16 logits (`classes` values).
    pub(crate) fn add_logits(&mut self, logits: &[i32]) {
        let mut p = [0u32; K];
        let h = softmax_q16(&logits[..self.classes], &mut p[..self.classes]);
        for (s, &v) in self.sum_p.iter_mut().zip(&p[..self.classes]) {
            *s += v;
        }
        self.sum_h += h as u64;
        self.samples += 1;
    }

    pub(crate) fn finish(self) -> QPrediction<K> {
        let m = self.samples.max(1);
        let mut probabilities = heapless::Vec::new();
        let mut raw = [0u32; K];
        for (r, &s) in raw.iter_mut().zip(&self.sum_p[..self.classes]) {
            *r = ((s as u64 + m as u64 / 2) / m as u64) as u32;
        }
        let mut class = 0;
        for (k, &p) in raw[..self.classes].iter().enumerate() {
            if p > raw[class] {
                class = k;
            }
            // capacity K >= classes (checked by the engine)
            let _ = probabilities.push(UQ16(p));
        }
        let predictive = entropy_q16(&raw[..self.classes]);
        let expected = ((self.sum_h + m as u64 / 2) / m as u64) as u32;
        QPrediction {
            probabilities,
            class,
            predictive_entropy: UQ16(predictive),
            expected_entropy: UQ16(expected),
            mutual_information: UQ16(predictive.saturating_sub(expected)),
            samples: self.samples as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};

    fn exact_softmax(logits: &[f64]) -> (std::vec::Vec<f64>, f64) {
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let e: std::vec::Vec<f64> = logits.iter().map(|z| libm::exp(z - max)).collect();
        let s: f64 = e.iter().sum();
        let p: std::vec::Vec<f64> = e.iter().map(|v| v / s).collect();
        let h = -p
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|v| v * libm::log(*v))
            .sum::<f64>();
        (p, h)
    }

    #[test]
    fn softmax_and_entropy_match_f64_within_the_documented_bounds() {
        let mut rng = rand_xoshiro::Xoshiro128PlusPlus::seed_from_u64(9);
        let mut worst_p = 0.0f64;
        let mut worst_h = 0.0f64;
        for trial in 0..5000 {
            let k = 2 + (trial % 9);
            let spread = [0.5, 3.0, 10.0, 40.0][trial % 4];
            let logits: std::vec::Vec<i32> = (0..k)
                .map(|_| {
                    let u = (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0;
                    (u * spread * 65536.0) as i32
                })
                .collect();
            let real: std::vec::Vec<f64> = logits.iter().map(|&z| z as f64 / 65536.0).collect();
            let (p, h) = exact_softmax(&real);
            let mut q = [0u32; 16];
            let hq = softmax_q16(&logits, &mut q[..k]);
            for (a, b) in q[..k].iter().zip(&p) {
                worst_p = worst_p.max((*a as f64 / 65536.0 - b).abs());
            }
            worst_h = worst_h.max((hq as f64 / 65536.0 - h).abs());
            // The entropy of the rounded probabilities, computed directly, agrees too.
            let he = entropy_q16(&q[..k]) as f64 / 65536.0;
            worst_h = worst_h.max((he - h).abs());
        }
        assert!(worst_p <= 4.0 / 65536.0, "probability error {worst_p}");
        assert!(worst_h <= 0.002, "entropy error {worst_h}");
    }

    #[test]
    fn predictive_of_identical_samples_has_zero_mutual_information() {
        let mut acc = QAccumulator::<3>::new(3);
        for _ in 0..8 {
            acc.add_logits(&[65536, 0, -65536]);
        }
        let p = acc.finish();
        assert_eq!(p.class, 0, "{p:?}");
        assert_eq!(p.mutual_information, UQ16(0), "{p:?}");
        // Two computations of the same entropy (from p̄, and in logit form) agree to rounding.
        assert!(
            p.predictive_entropy.0.abs_diff(p.expected_entropy.0) <= 4,
            "{p:?}"
        );
    }

    #[test]
    fn disagreeing_samples_have_mutual_information_near_ln2() {
        // Two confident samples that disagree: p̄ = (1/2, 1/2), H[p̄] = ln 2, E[H] ~ 0.
        let mut acc = QAccumulator::<2>::new(2);
        acc.add_logits(&[20 << 16, 0]);
        acc.add_logits(&[0, 20 << 16]);
        let p = acc.finish();
        let mi = p.mutual_information.to_f32();
        assert!((mi - core::f32::consts::LN_2).abs() < 1e-3, "MI {mi}");
    }
}
