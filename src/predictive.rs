//! The posterior predictive summary of one input: mean class probabilities and the
//! decomposition of uncertainty: predictive entropy = expected entropy (aleatoric) + mutual
//! information (epistemic). Natural logarithms throughout.

/// The answer for one input: the (Monte Carlo) posterior predictive and its uncertainty.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction<const K: usize> {
    /// Mean class probabilities p̄ = (1/M) Σ_m p(y | x, w_m); sums to 1.
    pub probabilities: heapless::Vec<f32, K>,
    /// The most probable class under p̄ (the first one on ties).
    pub class: usize,
    /// Predictive entropy H[p̄]: total uncertainty, in nats.
    pub predictive_entropy: f32,
    /// Expected entropy (1/M) Σ_m H\[p_m\]: aleatoric uncertainty, in nats.
    pub expected_entropy: f32,
    /// Mutual information H\[p̄\] - E\[H\[p_m\]\] (BALD): epistemic uncertainty, in nats. Clamped at
    /// zero: it is non-negative in exact arithmetic (Jensen), rounding can make it -1e-7.
    pub mutual_information: f32,
    /// Number of weight samples averaged (1 for the mean-weights mode).
    pub samples: usize,
}

impl<const K: usize> Prediction<K> {
    /// Probability of the predicted class.
    pub fn confidence(&self) -> f32 {
        self.probabilities.get(self.class).copied().unwrap_or(0.0)
    }
}

#[cfg(feature = "defmt")]
impl<const K: usize> defmt::Format for Prediction<K> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "class {} (p = {}), entropy {}, expected entropy {}, mutual information {}",
            self.class,
            self.confidence(),
            self.predictive_entropy,
            self.expected_entropy,
            self.mutual_information
        )
    }
}

/// Softmax of `logits` into `probs` (same length); returns the entropy of the result,
/// computed stably as `ln(Σ e^(z - z_max)) - Σ p (z - z_max)` with one logarithm.
pub(crate) fn softmax_with_entropy(logits: &[f32], probs: &mut [f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (p, &z) in probs.iter_mut().zip(logits) {
        *p = crate::exp::exp_nonpositive(z - max);
        sum += *p;
    }
    let mut weighted = 0.0f32;
    for (p, &z) in probs.iter_mut().zip(logits) {
        *p /= sum;
        // p = 0 contributes nothing; skipping it also avoids 0 * -inf when logits are more
        // than f32::MAX apart.
        if *p > 0.0 {
            weighted += *p * (z - max);
        }
    }
    (libm::logf(sum) - weighted).max(0.0)
}

/// Shannon entropy -Σ p ln p of a probability vector (terms with p = 0 contribute 0).
pub fn entropy(probs: &[f32]) -> f32 {
    let h: f32 = probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| -p * libm::logf(p))
        .sum();
    h.max(0.0)
}

/// Index of the largest value (the first on ties); 0 for an empty slice.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Accumulates per-sample softmax outputs into the predictive summary.
pub struct PredictiveAccumulator<const K: usize> {
    sum_probs: [f32; K],
    sum_entropy: f32,
    samples: usize,
    classes: usize,
}

impl<const K: usize> PredictiveAccumulator<K> {
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            sum_probs: [0.0; K],
            sum_entropy: 0.0,
            samples: 0,
            classes,
        }
    }

    /// Adds one sample's logits (`classes` values). Returns `false` if any is not finite.
    pub(crate) fn add_logits(&mut self, logits: &[f32]) -> bool {
        if !logits.iter().all(|z| z.is_finite()) {
            return false;
        }
        let mut probs = [0.0f32; K];
        let probs = &mut probs[..self.classes];
        self.sum_entropy += softmax_with_entropy(logits, probs);
        for (s, &p) in self.sum_probs.iter_mut().zip(probs.iter()) {
            *s += p;
        }
        self.samples += 1;
        true
    }

    pub(crate) fn finish(self) -> Prediction<K> {
        let n = self.samples.max(1) as f32;
        let mut probabilities = heapless::Vec::new();
        for &s in &self.sum_probs[..self.classes] {
            // classes <= K was checked by the engine; a full vector cannot happen.
            let _ = probabilities.push(s / n);
        }
        let predictive_entropy = entropy(&probabilities);
        // With one sample the two are the same quantity; report it once, exactly.
        let expected_entropy = if self.samples == 1 {
            predictive_entropy
        } else {
            self.sum_entropy / n
        };
        Prediction {
            class: argmax(&probabilities),
            probabilities,
            predictive_entropy,
            expected_entropy,
            mutual_information: (predictive_entropy - expected_entropy).max(0.0),
            samples: self.samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn softmax_entropy_matches_direct_formula() {
        // Independent computation in f64: p = e^z / Σ e^z, H = -Σ p ln p.
        let logits = [2.0f32, -1.0, 0.5, 7.0, -30.0];
        let mut probs = [0.0f32; 5];
        let h = softmax_with_entropy(&logits, &mut probs);
        let z: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let norm: f64 = z.iter().map(|v| v.exp()).sum();
        let p: Vec<f64> = z.iter().map(|v| v.exp() / norm).collect();
        let h_ref: f64 = p
            .iter()
            .map(|&q| if q > 0.0 { -q * q.ln() } else { 0.0 })
            .sum();
        for (a, b) in probs.iter().zip(&p) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        assert!((h as f64 - h_ref).abs() < 1e-5, "{h} vs {h_ref}");
        assert!((entropy(&probs) as f64 - h_ref).abs() < 1e-5);
    }

    #[test]
    fn entropy_bounds() {
        assert_eq!(entropy(&[1.0, 0.0, 0.0]), 0.0);
        let uniform = [0.25f32; 4];
        assert!((entropy(&uniform) - 4.0f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn mutual_information_of_disagreeing_confident_samples() {
        // Two samples, each certain of a different class: aleatoric 0, epistemic ln 2.
        let mut acc = PredictiveAccumulator::<2>::new(2);
        assert!(acc.add_logits(&[40.0, -40.0]));
        assert!(acc.add_logits(&[-40.0, 40.0]));
        let p = acc.finish();
        assert!(p.expected_entropy < 1e-6);
        assert!((p.mutual_information - 2.0f32.ln()).abs() < 1e-6);
        assert!((p.predictive_entropy - 2.0f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn non_finite_logits_are_refused() {
        let mut acc = PredictiveAccumulator::<2>::new(2);
        assert!(!acc.add_logits(&[f32::NAN, 0.0]));
        assert!(!acc.add_logits(&[f32::INFINITY, 0.0]));
    }
}
