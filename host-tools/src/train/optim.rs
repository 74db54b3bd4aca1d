//! Adam and the learning-rate / KL-weight schedules.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::tensor::CHUNK;

/// Learning-rate schedule over epochs `0..E` (the rate is constant within an epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr` throughout.
    Constant,
    /// `lr` for the first half (`epoch < E/2`), then linear decay
    /// `lr * (E - epoch) / (E - E/2)`, reaching 0 after the last epoch (LeNet-300-100 recipe).
    ConstantThenLinear,
    /// `lr * (E - epoch) / E` (LeNet-5 recipe).
    Linear,
}

impl LrSchedule {
    /// Learning rate of `epoch` (0-based) out of `epochs`.
    pub fn lr(self, base: f64, epoch: usize, epochs: usize) -> f64 {
        let (e, n) = (epoch as f64, epochs.max(1) as f64);
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Linear => base * ((n - e) / n).clamp(0.0, 1.0),
            LrSchedule::ConstantThenLinear => {
                let half = (epochs / 2) as f64;
                if e < half {
                    base
                } else {
                    base * ((n - e) / (n - half)).clamp(0.0, 1.0)
                }
            }
        }
    }
}

/// KL weight of `epoch`: 0 before `start`, 1 from `end` on, linear in between.
pub fn kl_weight(epoch: usize, start: f64, end: f64) -> f64 {
    let e = epoch as f64;
    if e >= end {
        1.0
    } else if e <= start {
        0.0
    } else {
        (e - start) / (end - start)
    }
}

/// Adam (Kingma and Ba 2015) with bias correction, over a list of flat parameter tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    /// Decay of the first-moment estimate (0.9).
    pub beta1: f64,
    /// Decay of the second-moment estimate (0.999).
    pub beta2: f64,
    /// Added to the root of the second moment (1e-8).
    pub eps: f64,
    /// Steps taken so far.
    pub step: u64,
    /// First moments, one vector per parameter tensor.
    pub m: Vec<Vec<f32>>,
    /// Second moments, one vector per parameter tensor.
    pub v: Vec<Vec<f32>>,
}

impl Adam {
    /// Zeroed state for tensors of the given sizes, with the standard hyper-parameters.
    pub fn new(sizes: &[usize]) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// Applies one update with learning rate `lr` and returns whether every updated parameter is
    /// finite. `params` and `grads` must match the sizes given to [`Adam::new`].
    pub fn update(&mut self, params: &mut [&mut [f32]], grads: &[Vec<f32>], lr: f64) -> bool {
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        // Fold both bias corrections into the step size and epsilon:
        // p -= lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)
        //    = p - a * m / (sqrt(v) + eps*sqrt(1-b2^t)),  a = lr*sqrt(1-b2^t)/(1-b1^t)
        let c2 = (1.0 - self.beta2.powf(t)).sqrt();
        let a = (lr * c2 / (1.0 - self.beta1.powf(t))) as f32;
        let eps = (self.eps * c2) as f32;
        let mut finite = true;
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            let ok: Vec<bool> = p
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .map(|(((p, g), m), v)| {
                    let mut ok = true;
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *p -= a * *m / (v.sqrt() + eps);
                        ok &= p.is_finite();
                    }
                    ok
                })
                .collect();
            finite &= ok.iter().all(|&o| o);
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = LrSchedule::ConstantThenLinear;
        assert_eq!(s.lr(1e-3, 0, 200), 1e-3);
        assert_eq!(s.lr(1e-3, 99, 200), 1e-3);
        assert!((s.lr(1e-3, 150, 200) - 0.5e-3).abs() < 1e-15);
        assert!((s.lr(1e-3, 199, 200) - 1e-5).abs() < 1e-15);
        let l = LrSchedule::Linear;
        assert_eq!(l.lr(1e-3, 0, 200), 1e-3);
        assert!((l.lr(1e-3, 100, 200) - 0.5e-3).abs() < 1e-15);
        assert_eq!(LrSchedule::Constant.lr(2.0, 7, 8), 2.0);
        assert_eq!(kl_weight(4, 5.0, 20.0), 0.0);
        assert_eq!(kl_weight(5, 5.0, 20.0), 0.0);
        assert!((kl_weight(11, 5.0, 20.0) - 0.4).abs() < 1e-12);
        assert_eq!(kl_weight(20, 5.0, 20.0), 1.0);
        assert_eq!(kl_weight(1, 0.0, 0.0), 1.0);
    }

    #[test]
    fn adam_matches_textbook_update() {
        // Two steps on one scalar, compared with the uncorrected textbook formulas.
        let mut adam = Adam::new(&[1]);
        let mut p = [1.0f32];
        let (lr, g1, g2) = (0.1f64, 0.5f64, -0.25f64);
        assert!(adam.update(&mut [&mut p[..]], &[vec![g1 as f32]], lr));
        assert!(adam.update(&mut [&mut p[..]], &[vec![g2 as f32]], lr));
        let (mut x, mut m, mut v) = (1.0f64, 0.0, 0.0);
        for (t, g) in [(1, g1), (2, g2)] {
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = v / (1.0 - 0.999f64.powi(t));
            x -= lr * mh / (vh.sqrt() + 1e-8);
        }
        assert!((f64::from(p[0]) - x).abs() < 1e-6, "{} vs {x}", p[0]);
        assert!(!adam.update(&mut [&mut p[..]], &[vec![f32::NAN]], lr));
    }
}
