//! Softmax and softmax cross-entropy with its gradient.

use ndarray::{Array2, Axis};

use super::tensor::Real;

/// Row-wise softmax of `[B, K]` logits (max-shifted, so it never overflows).
pub fn softmax<T: Real>(logits: &Array2<T>) -> Array2<T> {
    let mut p = logits.clone();
    for mut row in p.axis_iter_mut(Axis(0)) {
        let max = row
            .iter()
            .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
        row.mapv_inplace(|v| (v - max).exp());
        let sum: T = row.iter().copied().sum();
        row.mapv_inplace(|v| v / sum);
    }
    p
}

/// Mean cross-entropy `-(1/B) sum_b log softmax(logits_b)[y_b]` and its gradient with respect to
/// the logits, `(softmax - onehot) / B`. Labels must be below `K` (the trainer validates them).
pub fn softmax_cross_entropy<T: Real>(logits: &Array2<T>, labels: &[usize]) -> (f64, Array2<T>) {
    let b = logits.nrows().max(1);
    let (sum, grad) = softmax_cross_entropy_sum(logits, labels, b);
    (sum / b as f64, grad)
}

/// Summed cross-entropy over the rows of `logits` and its gradient divided by `normalizer` (the
/// size of the whole mini-batch when `logits` is one shard of it).
pub fn softmax_cross_entropy_sum<T: Real>(
    logits: &Array2<T>,
    labels: &[usize],
    normalizer: usize,
) -> (f64, Array2<T>) {
    let mut grad = Array2::zeros(logits.dim());
    let mut total = 0.0f64;
    let inv_b = T::from_f64(1.0 / normalizer.max(1) as f64);
    for ((row, mut g), &y) in logits
        .axis_iter(Axis(0))
        .zip(grad.axis_iter_mut(Axis(0)))
        .zip(labels)
    {
        let max = row
            .iter()
            .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
        let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
        let log_z = max + sum.ln();
        total += (log_z - row[y]).as_f64();
        for (gk, &v) in g.iter_mut().zip(row.iter()) {
            *gk = (v - log_z).exp() * inv_b;
        }
        g[y] -= inv_b;
    }
    (total, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn cross_entropy_value_and_gradient() {
        let logits = array![[1.0f64, 2.0, 0.5], [-1.0, 0.0, 3.0]];
        let labels = [1usize, 0];
        let (ce, g) = softmax_cross_entropy(&logits, &labels);
        let p = softmax(&logits);
        let expect = -(p[[0, 1]].ln() + p[[1, 0]].ln()) / 2.0;
        assert!((ce - expect).abs() < 1e-12);
        let h = 1e-6;
        for i in 0..2 {
            for j in 0..3 {
                let mut a = logits.clone();
                a[[i, j]] += h;
                let mut b = logits.clone();
                b[[i, j]] -= h;
                let n = (softmax_cross_entropy(&a, &labels).0
                    - softmax_cross_entropy(&b, &labels).0)
                    / (2.0 * h);
                assert!(
                    (n - g[[i, j]]).abs() < 1e-8,
                    "{i},{j}: {n} vs {}",
                    g[[i, j]]
                );
            }
        }
        // Huge logits do not overflow.
        let (ce, _) = softmax_cross_entropy(&array![[1000.0f32, 0.0]], &[0]);
        assert!(ce.is_finite() && ce < 1e-6);
    }
}
