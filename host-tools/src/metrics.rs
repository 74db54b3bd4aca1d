//! Classification and calibration metrics of a set of predictions against labels, and how the
//! uncertainty of correct predictions differs from that of wrong ones.
//!
//! All sums are accumulated in `f64`. Definitions (N images, K classes, `p` the mean predictive
//! probabilities of an image, `y` its label, `ŷ = argmax p` its predicted class):
//!
//! - **accuracy**: fraction of images with `ŷ = y`;
//! - **NLL**: mean of `-ln max(p_y, PROBABILITY_FLOOR)`; the floor (1e-12) keeps one
//!   confidently wrong image from making the mean infinite (it then costs 12 ln 10 ≈ 27.6 nats);
//! - **Brier score**: mean over images of `Σ_k (p_k - [k = y])²` (ranges over 0..=2);
//! - **ECE**: the top-1 probability `c = p_ŷ` is put into one of [`ECE_BINS`] equal-width bins,
//!   bin `b` holding `b/15 <= c < (b+1)/15` and the last bin also `c = 1`; then
//!   `ECE = Σ_bins |bin| / N · |accuracy(bin) - mean confidence(bin)|` (empty bins add 0);
//! - **AUROC** of an uncertainty score for telling wrong predictions from correct ones: the
//!   probability that a random wrong prediction scores higher than a random correct one, ties
//!   counting one half (the Mann–Whitney U statistic divided by the number of pairs).

use serde::Serialize;

use crate::simulate::ImagePrediction;

/// Number of equal-width confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Smallest probability the NLL takes the logarithm of.
pub const PROBABILITY_FLOOR: f64 = 1e-12;

/// Why metrics could not be computed. One line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Predictions and labels differ in number.
    #[error("{predictions} predictions but {labels} labels")]
    CountMismatch {
        /// Predictions given.
        predictions: usize,
        /// Labels given.
        labels: usize,
    },
    /// There is nothing to evaluate.
    #[error("no predictions to evaluate")]
    Empty,
    /// A label is not one of the prediction's classes.
    #[error("label {label} of image {index} is not below the model's {classes} classes")]
    LabelOutOfRange {
        /// Image index.
        index: usize,
        /// The label.
        label: usize,
        /// Classes of the prediction.
        classes: usize,
    },
}

/// One bin of the reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge of the bin (included).
    pub lower: f64,
    /// Upper edge (excluded, except 1.0 in the last bin).
    pub upper: f64,
    /// Images whose top-1 probability falls in the bin.
    pub count: usize,
    /// Of those, correctly classified.
    pub correct: usize,
    /// `correct / count`; `None` for an empty bin.
    pub accuracy: Option<f64>,
    /// Mean top-1 probability in the bin; `None` for an empty bin.
    pub confidence: Option<f64>,
}

/// Mean and median of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (the mean of the two middle values for an even count).
    pub median: f64,
}

/// Uncertainty of one group of predictions (the correct ones, or the wrong ones).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupUncertainty {
    /// Predictions in the group.
    pub count: usize,
    /// Predictive entropy (total uncertainty), nats; `None` for an empty group.
    pub predictive_entropy: Option<Summary>,
    /// Expected entropy (aleatoric), nats; `None` for an empty group.
    pub expected_entropy: Option<Summary>,
    /// Mutual information (epistemic), nats; `None` for an empty group.
    pub mutual_information: Option<Summary>,
}

/// How uncertainty separates wrong predictions from correct ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UncertaintySplit {
    /// The correctly classified images.
    pub correct: GroupUncertainty,
    /// The misclassified images.
    pub wrong: GroupUncertainty,
    /// AUROC of predictive entropy for flagging wrong predictions (0.5 = no better than chance);
    /// `None` unless both groups are non-empty.
    pub auroc_predictive_entropy: Option<f64>,
    /// AUROC of mutual information for flagging wrong predictions; `None` unless both groups
    /// are non-empty.
    pub auroc_mutual_information: Option<f64>,
}

/// Every metric of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Images evaluated.
    pub count: usize,
    /// Images classified correctly.
    pub correct: usize,
    /// `correct / count`.
    pub accuracy: f64,
    /// Mean negative log-likelihood of the labels, nats (probabilities floored at
    /// [`PROBABILITY_FLOOR`]).
    pub nll: f64,
    /// Mean Brier score (sum over classes, 0..=2).
    pub brier: f64,
    /// Expected calibration error over [`ECE_BINS`] bins, 0..=1.
    pub ece: f64,
    /// The bins of the reliability diagram, lowest confidence first.
    pub reliability: Vec<ReliabilityBin>,
    /// Uncertainty of correct vs wrong predictions.
    pub uncertainty: UncertaintySplit,
}

/// A proposed "unsure" threshold on one score and what it flags on the evaluated set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdProposal {
    /// The threshold (nats for mutual information; a probability for confidence).
    pub threshold: f64,
    /// Share of the wrong predictions it flags.
    pub wrong_flagged: f64,
    /// Share of the correct predictions it flags (false alarms).
    pub correct_flagged: f64,
}

/// "Unsure" thresholds proposed from labelled (validation) data: each flags at least `share`
/// of the wrong predictions by itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// The share of wrong predictions each threshold is chosen to flag.
    pub share: f64,
    /// Unsure when the mutual information exceeds this.
    pub mutual_information: Option<ThresholdProposal>,
    /// Unsure when the top probability is below this.
    pub confidence: Option<ThresholdProposal>,
}

/// Proposes thresholds that flag at least `share` (in (0, 1]) of the wrong predictions: the
/// largest mutual information `t` with `#{wrong: MI > t} >= share * #wrong`, and the smallest
/// confidence `c` with `#{wrong: confidence < c} >= share * #wrong`. `None` when nothing is
/// wrong.
pub fn propose_thresholds(
    predictions: &[ImagePrediction],
    hits: &[bool],
    share: f64,
) -> Thresholds {
    let score = |f: fn(&ImagePrediction) -> f64, want: bool| -> Vec<f64> {
        let mut v: Vec<f64> = predictions
            .iter()
            .zip(hits)
            .filter(|(_, &h)| h == want)
            .map(|(p, _)| f(p))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let mi = |p: &ImagePrediction| f64::from(p.mutual_information);
    let conf = |p: &ImagePrediction| f64::from(p.confidence());
    let (wrong_mi, right_mi) = (score(mi, false), score(mi, true));
    let (wrong_c, right_c) = (score(conf, false), score(conf, true));
    let n = wrong_mi.len();
    let need = ((share * n as f64).ceil() as usize).clamp(1, n.max(1));
    let share_of = |v: &[f64], flagged: &dyn Fn(f64) -> bool| -> f64 {
        if v.is_empty() {
            0.0
        } else {
            v.iter().filter(|&&x| flagged(x)).count() as f64 / v.len() as f64
        }
    };
    let mutual_information = (n > 0).then(|| {
        // `need` wrong ones strictly above t: just below the need-th largest value.
        let t = wrong_mi[n - need];
        let t = if t > 0.0 { t * (1.0 - 1e-9) } else { 0.0 };
        ThresholdProposal {
            threshold: t,
            wrong_flagged: share_of(&wrong_mi, &|x| x > t),
            correct_flagged: share_of(&right_mi, &|x| x > t),
        }
    });
    let confidence = (n > 0).then(|| {
        // `need` wrong ones strictly below c: just above the need-th smallest value.
        let c = wrong_c[need - 1] * (1.0 + 1e-9) + 1e-12;
        ThresholdProposal {
            threshold: c,
            wrong_flagged: share_of(&wrong_c, &|x| x < c),
            correct_flagged: share_of(&right_c, &|x| x < c),
        }
    });
    Thresholds {
        share,
        mutual_information,
        confidence,
    }
}

/// How well uncertainty tells out-of-distribution images (no labels needed) from the test set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutOfDistribution {
    /// Uncertainty over the test set (every image, correct or not).
    pub test: GroupUncertainty,
    /// Uncertainty over the out-of-distribution images.
    pub ood: GroupUncertainty,
    /// AUROC of predictive entropy for flagging out-of-distribution images among both sets
    /// (positives: out of distribution); `None` if either set is empty.
    pub auroc_predictive_entropy: Option<f64>,
    /// AUROC of mutual information for the same task.
    pub auroc_mutual_information: Option<f64>,
}

/// Compares the uncertainty of `ood` predictions with that of `test` predictions.
pub fn out_of_distribution(test: &[ImagePrediction], ood: &[ImagePrediction]) -> OutOfDistribution {
    let all = |p: &[ImagePrediction]| group(p, &vec![true; p.len()], true);
    let scores = |p: &[ImagePrediction], f: fn(&ImagePrediction) -> f32| -> Vec<f64> {
        p.iter().map(|p| f64::from(f(p))).collect()
    };
    let pe = |p: &ImagePrediction| p.predictive_entropy;
    let mi = |p: &ImagePrediction| p.mutual_information;
    OutOfDistribution {
        test: all(test),
        ood: all(ood),
        auroc_predictive_entropy: auroc(&scores(ood, pe), &scores(test, pe)),
        auroc_mutual_information: auroc(&scores(ood, mi), &scores(test, mi)),
    }
}

/// Computes every metric of `predictions` against `labels` (one per prediction).
pub fn evaluate(
    predictions: &[ImagePrediction],
    labels: &[usize],
) -> Result<Metrics, MetricsError> {
    if predictions.len() != labels.len() {
        return Err(MetricsError::CountMismatch {
            predictions: predictions.len(),
            labels: labels.len(),
        });
    }
    if predictions.is_empty() {
        return Err(MetricsError::Empty);
    }
    for (index, (p, &label)) in predictions.iter().zip(labels).enumerate() {
        if label >= p.probabilities.len() {
            return Err(MetricsError::LabelOutOfRange {
                index,
                label,
                classes: p.probabilities.len(),
            });
        }
    }
    let n = predictions.len();
    let hits: Vec<bool> = predictions
        .iter()
        .zip(labels)
        .map(|(p, &y)| p.class == y)
        .collect();
    let correct = hits.iter().filter(|&&h| h).count();
    let nll = predictions
        .iter()
        .zip(labels)
        .map(|(p, &y)| nll_term(&p.probabilities, y))
        .sum::<f64>()
        / n as f64;
    let brier = predictions
        .iter()
        .zip(labels)
        .map(|(p, &y)| brier_term(&p.probabilities, y))
        .sum::<f64>()
        / n as f64;
    let confidences: Vec<f64> = predictions
        .iter()
        .map(|p| f64::from(p.confidence()))
        .collect();
    let reliability = reliability_bins(&confidences, &hits);
    let ece = expected_calibration_error(&reliability);
    Ok(Metrics {
        count: n,
        correct,
        accuracy: correct as f64 / n as f64,
        nll,
        brier,
        ece,
        reliability,
        uncertainty: uncertainty_split(predictions, &hits),
    })
}

/// `-ln max(p[label], PROBABILITY_FLOOR)` for one image.
pub fn nll_term(probabilities: &[f32], label: usize) -> f64 {
    let p = probabilities.get(label).map_or(0.0, |&p| f64::from(p));
    -p.max(PROBABILITY_FLOOR).ln()
}

/// `Σ_k (p_k - [k = label])²` for one image.
pub fn brier_term(probabilities: &[f32], label: usize) -> f64 {
    probabilities
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            let target = if k == label { 1.0 } else { 0.0 };
            (f64::from(p) - target).powi(2)
        })
        .sum()
}

/// The bin (0..ECE_BINS) of a top-1 probability: `floor(c · 15)`, with 1.0 (and anything
/// rounding above) in the last bin and anything below 0 (or NaN) in the first.
pub fn bin_index(confidence: f64) -> usize {
    let b = (confidence * ECE_BINS as f64).floor();
    if b.is_nan() || b < 0.0 {
        0
    } else {
        (b as usize).min(ECE_BINS - 1)
    }
}

/// The reliability bins of top-1 probabilities `confidences` whose predictions were `correct`
/// (same length; extra entries of the longer slice are ignored).
pub fn reliability_bins(confidences: &[f64], correct: &[bool]) -> Vec<ReliabilityBin> {
    let mut count = [0usize; ECE_BINS];
    let mut hits = [0usize; ECE_BINS];
    let mut conf_sum = [0.0f64; ECE_BINS];
    for (&c, &ok) in confidences.iter().zip(correct) {
        let b = bin_index(c);
        count[b] += 1;
        hits[b] += usize::from(ok);
        conf_sum[b] += c;
    }
    (0..ECE_BINS)
        .map(|b| {
            let n = count[b];
            ReliabilityBin {
                lower: b as f64 / ECE_BINS as f64,
                upper: (b + 1) as f64 / ECE_BINS as f64,
                count: n,
                correct: hits[b],
                accuracy: (n > 0).then(|| hits[b] as f64 / n as f64),
                confidence: (n > 0).then(|| conf_sum[b] / n as f64),
            }
        })
        .collect()
}

/// `Σ_bins |bin| / N · |accuracy - confidence|` over the bins (empty bins contribute 0);
/// 0 when every bin is empty.
pub fn expected_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    bins.iter()
        .filter_map(|b| {
            let (acc, conf) = (b.accuracy?, b.confidence?);
            Some(b.count as f64 / total as f64 * (acc - conf).abs())
        })
        .sum()
}

/// Mean and median of `values`; `None` when empty.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    Some(Summary { mean, median })
}

/// AUROC of a score for telling `positives` (here: wrong predictions) from `negatives`
/// (correct ones): `P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`, from average ranks in O(n log n).
/// `None` when either side is empty.
pub fn auroc(positives: &[f64], negatives: &[f64]) -> Option<f64> {
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = positives
        .iter()
        .map(|&s| (s, true))
        .chain(negatives.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        let tied_positives = all[i..=j].iter().filter(|e| e.1).count();
        rank_sum += avg_rank * tied_positives as f64;
        i = j + 1;
    }
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    let u = rank_sum - np * (np + 1.0) / 2.0;
    Some(u / (np * nn))
}

fn group(predictions: &[ImagePrediction], hits: &[bool], want: bool) -> GroupUncertainty {
    let pick = |f: fn(&ImagePrediction) -> f32| -> Vec<f64> {
        predictions
            .iter()
            .zip(hits)
            .filter(|(_, &h)| h == want)
            .map(|(p, _)| f64::from(f(p)))
            .collect()
    };
    let pe = pick(|p| p.predictive_entropy);
    GroupUncertainty {
        count: pe.len(),
        predictive_entropy: summarize(&pe),
        expected_entropy: summarize(&pick(|p| p.expected_entropy)),
        mutual_information: summarize(&pick(|p| p.mutual_information)),
    }
}

/// Uncertainty statistics of correct vs wrong predictions (`hits[i]` = image i correct).
pub fn uncertainty_split(predictions: &[ImagePrediction], hits: &[bool]) -> UncertaintySplit {
    let scores = |f: fn(&ImagePrediction) -> f32, want: bool| -> Vec<f64> {
        predictions
            .iter()
            .zip(hits)
            .filter(|(_, &h)| h == want)
            .map(|(p, _)| f64::from(f(p)))
            .collect()
    };
    let pe = |p: &ImagePrediction| p.predictive_entropy;
    let mi = |p: &ImagePrediction| p.mutual_information;
    UncertaintySplit {
        correct: group(predictions, hits, true),
        wrong: group(predictions, hits, false),
        auroc_predictive_entropy: auroc(&scores(pe, false), &scores(pe, true)),
        auroc_mutual_information: auroc(&scores(mi, false), &scores(mi, true)),
    }
}

/// How much of one layer was pruned, from the model file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSparsity {
    /// Index of the layer, input first.
    pub layer: usize,
    /// `linear-dense`, `linear-sparse`, `conv2d` or `maxpool`.
    pub kind: &'static str,
    /// Inputs of the layer (values).
    pub inputs: usize,
    /// Outputs of the layer (values).
    pub outputs: usize,
    /// Weights stored.
    pub nnz: usize,
    /// Weights of the unpruned layer: `inputs * outputs` for a linear layer, out channels ×
    /// in channels × kernel area for a convolution, 0 for pooling.
    pub dense_weights: usize,
    /// Fraction of weights pruned, `1 - nnz / dense_weights` (for a linear layer
    /// `1 - nnz / (inputs * outputs)`); `None` for a layer without weights (pooling).
    pub sparsity: Option<f64>,
}

/// The sparsity of every layer of a model, input first.
pub fn layer_sparsity(model: &tinybayes::Model<'_>) -> Vec<LayerSparsity> {
    model
        .layers()
        .iter()
        .enumerate()
        .map(|(layer, l)| {
            let dense_weights = l.dense_weights();
            LayerSparsity {
                layer,
                kind: l.kind().name(),
                inputs: l.inputs(),
                outputs: l.outputs(),
                nnz: l.nnz(),
                dense_weights,
                sparsity: (dense_weights > 0).then(|| 1.0 - l.nnz() as f64 / dense_weights as f64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn proposed_thresholds_flag_the_share_of_wrong_answers_asked_for() {
        let pred = |class: usize, p: f32, mi: f32| ImagePrediction {
            probabilities: vec![p, 1.0 - p],
            class,
            predictive_entropy: 0.0,
            expected_entropy: 0.0,
            mutual_information: mi,
        };
        // Ten wrong answers with MI 0.01..0.10 and confidence 0.55..1.0, ten right ones.
        let mut ps = Vec::new();
        let mut hits = Vec::new();
        for k in 0..10 {
            ps.push(pred(0, 0.55 + 0.05 * k as f32, 0.01 * (k + 1) as f32));
            hits.push(false);
            ps.push(pred(0, 0.99, 0.001 * k as f32));
            hits.push(true);
        }
        let t = propose_thresholds(&ps, &hits, 0.8);
        let mi = t.mutual_information.unwrap();
        assert!((mi.wrong_flagged - 0.8).abs() < 1e-9, "{mi:?}");
        assert!(mi.threshold > 0.02 && mi.threshold < 0.03, "{mi:?}");
        assert_eq!(mi.correct_flagged, 0.0);
        let c = t.confidence.unwrap();
        assert!((c.wrong_flagged - 0.8).abs() < 1e-9, "{c:?}");
        assert!(c.threshold > 0.89 && c.threshold < 0.95, "{c:?}");
        // Nothing wrong: nothing to propose.
        let none = propose_thresholds(&ps[1..2], &hits[1..2], 0.8);
        assert!(none.mutual_information.is_none() && none.confidence.is_none());
    }

    use super::*;

    fn pred(probabilities: &[f32], pe: f32, ee: f32, mi: f32) -> ImagePrediction {
        ImagePrediction {
            probabilities: probabilities.to_vec(),
            class: tinybayes::predictive::argmax(probabilities),
            predictive_entropy: pe,
            expected_entropy: ee,
            mutual_information: mi,
        }
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }

    /// Four images, hand-computed (see the comments for each number).
    #[test]
    fn accuracy_nll_brier_ece_by_hand() {
        let preds = [
            pred(&[0.7, 0.2, 0.1], 0.0, 0.0, 0.0), // label 0: right, conf 0.70, bin 10
            pred(&[0.55, 0.45, 0.0], 0.0, 0.0, 0.0), // label 1: wrong, conf 0.55, bin 8
            pred(&[0.0, 0.0, 1.0], 0.0, 0.0, 0.0), // label 2: right, conf 1.00, bin 14
            pred(&[1.0, 0.0, 0.0], 0.0, 0.0, 0.0), // label 1: wrong, conf 1.00, bin 14
        ];
        let m = evaluate(&preds, &[0, 1, 2, 1]).unwrap();
        assert_eq!((m.count, m.correct), (4, 2));
        close(m.accuracy, 0.5, 1e-12);
        // NLL: (-ln 0.7 - ln 0.45 - ln 1 - ln 1e-12) / 4
        //    = (0.356675 + 0.798508 + 0 + 27.631021) / 4 = 7.196551
        close(m.nll, 7.196551, 1e-5);
        // Brier: (0.09+0.04+0.01) + (0.3025+0.3025+0) + 0 + (1+1+0) = 2.745, / 4
        close(m.brier, 0.68625, 1e-6);
        // ECE: bin 8: 1/4·|0-0.55| = 0.1375; bin 10: 1/4·|1-0.7| = 0.075;
        //      bin 14: 2/4·|0.5-1.0| = 0.25; total 0.4625.
        close(m.ece, 0.4625, 1e-6);
        assert_eq!(m.reliability.len(), ECE_BINS);
        let counts: Vec<usize> = m.reliability.iter().map(|b| b.count).collect();
        assert_eq!(counts, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 2]);
        assert_eq!(m.reliability[14].correct, 1);
        assert_eq!(m.reliability[14].accuracy, Some(0.5));
        close(m.reliability[14].confidence.unwrap(), 1.0, 1e-12);
        assert_eq!(m.reliability[0].accuracy, None);
        assert_eq!(m.reliability[0].confidence, None);
        close(m.reliability[14].upper, 1.0, 1e-12);
        close(m.reliability[8].lower, 8.0 / 15.0, 1e-12);
    }

    #[test]
    fn ece_edges() {
        // Exactly 1.0 goes in the last bin, 0 in the first, bin edges to the upper bin.
        assert_eq!(bin_index(1.0), ECE_BINS - 1);
        assert_eq!(bin_index(0.0), 0);
        assert_eq!(bin_index(1.0 / 15.0 + 1e-12), 1);
        assert_eq!(bin_index(0.5), 7);
        assert_eq!(bin_index(f64::NAN), 0);
        assert_eq!(bin_index(1.5), ECE_BINS - 1);
        // Perfectly calibrated bin: conf 0.75 with 3 of 4 right gives 0.
        let bins = reliability_bins(&[0.75; 4], &[true, true, false, true]);
        close(expected_calibration_error(&bins), 0.0, 1e-12);
        // All bins empty: 0, not NaN.
        assert_eq!(expected_calibration_error(&reliability_bins(&[], &[])), 0.0);
        // Always right at confidence 0.4: ECE = 0.6; always wrong at 1.0: ECE = 1 (the maximum).
        close(
            expected_calibration_error(&reliability_bins(&[0.4; 3], &[true; 3])),
            0.6,
            1e-12,
        );
        close(
            expected_calibration_error(&reliability_bins(&[1.0; 2], &[false; 2])),
            1.0,
            1e-12,
        );
    }

    #[test]
    fn uncertainty_groups_and_auroc_by_hand() {
        // Correct: entropies 0.1, 0.3, 0.2; MI 0, 0, 0.1. Wrong: entropies 0.5, 0.25; MI 0, 0.2.
        let right = [0.9f32, 0.1];
        let wrong = [0.1f32, 0.9];
        let preds = [
            pred(&right, 0.1, 0.1, 0.0),
            pred(&wrong, 0.5, 0.4, 0.0),
            pred(&right, 0.3, 0.2, 0.0),
            pred(&wrong, 0.25, 0.05, 0.2),
            pred(&right, 0.2, 0.1, 0.1),
        ];
        let m = evaluate(&preds, &[0; 5]).unwrap();
        let u = &m.uncertainty;
        assert_eq!((u.correct.count, u.wrong.count), (3, 2));
        let c_pe = u.correct.predictive_entropy.unwrap();
        close(c_pe.mean, 0.2, 1e-7);
        close(c_pe.median, 0.2, 1e-7);
        let w_pe = u.wrong.predictive_entropy.unwrap();
        close(w_pe.mean, 0.375, 1e-7);
        close(w_pe.median, 0.375, 1e-7);
        let w_ee = u.wrong.expected_entropy.unwrap();
        close(w_ee.mean, 0.225, 1e-7);
        let c_mi = u.correct.mutual_information.unwrap();
        close(c_mi.mean, 0.1 / 3.0, 1e-7);
        close(c_mi.median, 0.0, 1e-12);
        // Entropy: 0.5 beats all 3 correct, 0.25 beats 0.1 and 0.2: 5 of 6 pairs.
        close(u.auroc_predictive_entropy.unwrap(), 5.0 / 6.0, 1e-7);
        // MI: 0 vs {0, 0, 0.1} = 0.5 + 0.5 + 0; 0.2 beats all 3: (1 + 3) / 6.
        close(u.auroc_mutual_information.unwrap(), 4.0 / 6.0, 1e-7);
    }

    #[test]
    fn auroc_closed_forms_and_brute_force() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), Some(0.0));
        assert_eq!(auroc(&[1.0; 3], &[1.0; 5]), Some(0.5));
        assert_eq!(auroc(&[], &[1.0]), None);
        assert_eq!(auroc(&[1.0], &[]), None);
        // Against the O(n²) pair count on a pseudo-random sample with many ties.
        let pos: Vec<f64> = (0..37).map(|i| ((i * 17) % 11) as f64).collect();
        let neg: Vec<f64> = (0..23).map(|i| ((i * 5) % 7) as f64).collect();
        let mut pairs = 0.0;
        for &p in &pos {
            for &q in &neg {
                pairs += if p > q {
                    1.0
                } else if p == q {
                    0.5
                } else {
                    0.0
                };
            }
        }
        close(auroc(&pos, &neg).unwrap(), pairs / (37.0 * 23.0), 1e-12);
    }

    #[test]
    fn summaries() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.median), (3.0, 3.0));
        let s = summarize(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!((s.mean, s.median), (4.5, 3.5));
    }

    #[test]
    fn groups_can_be_empty() {
        let preds = [pred(&[0.9, 0.1], 0.3, 0.3, 0.0)];
        let m = evaluate(&preds, &[0]).unwrap();
        assert_eq!(m.uncertainty.wrong.count, 0);
        assert_eq!(m.uncertainty.wrong.predictive_entropy, None);
        assert_eq!(m.uncertainty.auroc_predictive_entropy, None);
        // -ln 0.9 and (0.01 + 0.01)
        close(m.nll, 0.105361, 1e-6);
        close(m.brier, 0.02, 1e-7);
    }

    #[test]
    fn sparsity_of_layers() {
        // A sparse layer keeps exactly the non-zero weights of the spec (counted here from the
        // spec, independently of the file); a dense layer stores every weight: 0 pruned.
        use tinybayes::writer::StorageChoice;
        let mut spec = tinybayes::writer::synthetic::mlp(1, &[8, 4, 2], 0.25);
        spec.layers[0].storage = StorageChoice::Sparse;
        spec.layers[1].storage = StorageChoice::Dense;
        let nnz0 = spec.layers[0].theta.iter().filter(|t| **t != 0.0).count();
        assert!(nnz0 > 0 && nnz0 < 32);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let s = layer_sparsity(&model);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].inputs, s[0].outputs, s[0].dense_weights), (8, 4, 32));
        assert_eq!((s[0].nnz, s[0].kind), (nnz0, "linear-sparse"));
        close(s[0].sparsity.unwrap(), 1.0 - nnz0 as f64 / 32.0, 1e-12);
        assert_eq!((s[1].nnz, s[1].dense_weights), (8, 8));
        assert_eq!((s[1].kind, s[1].sparsity), ("linear-dense", Some(0.0)));
    }

    #[test]
    fn sparsity_of_convolution_and_pooling() {
        use tinybayes::format::Activation;
        use tinybayes::writer::{LayerOp, LayerSpec, ModelSpec, StorageChoice};
        // Conv 1 -> 2 channels, 3x3 kernel over 1x4x4: 18 dense weights, every third pruned.
        let theta: Vec<f32> = (0..18)
            .map(|i| if i % 3 == 0 { 0.0 } else { 0.1 * i as f32 })
            .collect();
        let conv = LayerSpec {
            op: LayerOp::Conv2d {
                out_channels: 2,
                kernel: [3, 3],
                stride: 1,
                padding: 0,
            },
            inputs: 16,
            outputs: 8,
            activation: Activation::Relu,
            bias: vec![0.0; 2],
            variance: Some(theta.iter().map(|t| t * t).collect()),
            theta,
            storage: StorageChoice::Sparse,
            dropout: None,
        };
        let pool = LayerSpec::max_pool([2, 2, 2], 2, 2).unwrap();
        let mut linear = tinybayes::writer::synthetic::mlp(1, &[2, 3], 1.0).layers[0].clone();
        linear.storage = StorageChoice::Dense;
        let spec = ModelSpec {
            input_shape: [1, 4, 4],
            num_classes: 3,
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            layers: vec![conv, pool, linear],
            trained: None,
            channel_norm: None,
        };
        let buffer = spec.to_buffer().unwrap();
        let s = layer_sparsity(&buffer.model().unwrap());
        assert_eq!(
            (s[0].kind, s[0].nnz, s[0].dense_weights),
            ("conv2d", 12, 18)
        );
        close(s[0].sparsity.unwrap(), 1.0 / 3.0, 1e-12);
        assert_eq!(
            (s[1].kind, s[1].dense_weights, s[1].sparsity),
            ("maxpool", 0, None)
        );
        assert_eq!((s[2].kind, s[2].sparsity), ("linear-dense", Some(0.0)));
    }

    #[test]
    fn bad_inputs() {
        let preds = [pred(&[0.5, 0.5], 0.0, 0.0, 0.0)];
        assert_eq!(
            evaluate(&preds, &[0, 1]),
            Err(MetricsError::CountMismatch {
                predictions: 1,
                labels: 2
            })
        );
        assert_eq!(evaluate(&[], &[]), Err(MetricsError::Empty));
        assert!(matches!(
            evaluate(&preds, &[2]),
            Err(MetricsError::LabelOutOfRange { label: 2, .. })
        ));
    }
}
