//! What the trainer trains: a layer-sequence [`Network`] (LeNets) or an early-exit
//! [`ResNetEe`], behind one interface for parameters, KL, sparsity, loss and accuracy.

use ndarray::Array2;

use super::exits::{exit_loss_sum, ExitObjective};
use super::loss::softmax_cross_entropy_sum;
use super::network::{Network, Sparsity};
use super::resnet::ResNetEe;
use super::tensor::Real;

/// A trainable model.
#[derive(Clone, Debug, PartialEq)]
pub enum Model<T = f32> {
    /// A sequence of layers (`lenet300`, `lenet5`).
    Sequential(Network<T>),
    /// An early-exit residual network (`resnet-ee`), boxed (its struct is much larger than a
    /// layer list).
    ResNetEe(Box<ResNetEe<T>>),
}

impl<T: Real> Model<T> {
    /// The layer sequence, if this is one.
    pub fn as_network(&self) -> Option<&Network<T>> {
        match self {
            Self::Sequential(n) => Some(n),
            Self::ResNetEe(_) => None,
        }
    }

    /// The early-exit network, if this is one.
    pub fn as_resnet(&self) -> Option<&ResNetEe<T>> {
        match self {
            Self::ResNetEe(r) => Some(r),
            Self::Sequential(_) => None,
        }
    }

    /// Shape of one input `(channels, rows, cols)`.
    pub fn input_shape(&self) -> [usize; 3] {
        match self {
            Self::Sequential(n) => n.input_shape,
            Self::ResNetEe(r) => r.input_shape,
        }
    }

    /// Number of classes the model outputs (of its last weight layer).
    pub fn classes(&self) -> usize {
        match self {
            Self::Sequential(n) => n
                .layers
                .iter()
                .rev()
                .find_map(|l| match l {
                    super::TrainedLayer::Linear { theta, .. }
                    | super::TrainedLayer::DropoutLinear { theta, .. } => Some(theta.nrows()),
                    _ => None,
                })
                .unwrap_or(0),
            Self::ResNetEe(r) => r.classes(),
        }
    }

    /// Fraction of weights pruned, per weight layer and overall.
    pub fn sparsity(&self) -> Sparsity {
        match self {
            Self::Sequential(n) => n.sparsity(),
            Self::ResNetEe(r) => r.sparsity(),
        }
    }

    /// Sum of the KL approximation over all weights (nats).
    pub fn kl(&self) -> f64 {
        match self {
            Self::Sequential(n) => n.kl(),
            Self::ResNetEe(r) => r.kl(),
        }
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        match self {
            Self::Sequential(n) => n.num_params(),
            Self::ResNetEe(r) => r.num_params(),
        }
    }

    /// Accuracy of the deterministic pruned model on the rows of `x` and, for an early-exit
    /// network, of every exit: `(final output, per exit)`. The final output of an early-exit
    /// network is its last exit (every block run); a layer sequence has no per-exit list.
    pub fn accuracies(&self, x: &Array2<T>, labels: &[usize]) -> (f64, Vec<f64>) {
        match self {
            Self::Sequential(n) => (n.accuracy(x, labels), Vec::new()),
            Self::ResNetEe(r) => {
                let exits = r.exit_accuracies(x, labels);
                (exits.last().copied().unwrap_or(0.0), exits)
            }
        }
    }

    /// All parameter tensors in optimizer order.
    pub(crate) fn params(&self) -> Vec<&[T]> {
        match self {
            Self::Sequential(n) => n.params(),
            Self::ResNetEe(r) => r.params(),
        }
    }

    /// All parameter tensors in optimizer order, mutable.
    pub(crate) fn params_mut(&mut self) -> Vec<&mut [T]> {
        match self {
            Self::Sequential(n) => n.params_mut(),
            Self::ResNetEe(r) => r.params_mut(),
        }
    }

    /// Adds `scale * dKL/dparam` to `grads` and returns the total KL.
    pub(crate) fn add_kl_grad(&self, grads: &mut [Vec<T>], scale: T) -> f64 {
        match self {
            Self::Sequential(n) => n.add_kl_grad(grads, scale),
            Self::ResNetEe(r) => r.add_kl_grad(grads, scale),
        }
    }

    /// Adds the gradient of the weight decay `λ/2 Σ θ²` of the MC dropout layers to `grads`
    /// and returns the penalty (0 without such layers).
    pub(crate) fn add_weight_decay_grad(&self, grads: &mut [Vec<T>], lambda: T) -> f64 {
        match self {
            Self::Sequential(n) => n.add_weight_decay_grad(grads, lambda),
            Self::ResNetEe(_) => 0.0,
        }
    }

    /// Training forward and backward of one shard: the data term summed over its rows
    /// (cross-entropy, or the exit objective of an early-exit network) and its gradient divided
    /// by `normalizer`, in optimizer order.
    pub(crate) fn data_term_gradients(
        &self,
        x: Array2<T>,
        labels: &[usize],
        normalizer: usize,
        objective: ExitObjective,
        noise: &mut dyn FnMut(usize, &mut [T]),
    ) -> (f64, Vec<Vec<T>>) {
        match self {
            Self::Sequential(n) => {
                let (logits, tape) = n.forward_train(x, noise);
                let (ce, dlogits) = softmax_cross_entropy_sum(&logits, labels, normalizer);
                (ce, n.backward(tape, dlogits))
            }
            Self::ResNetEe(r) => {
                let (logits, tape) = r.forward_train(x, noise);
                let log_prior = r.prior.log_probabilities(r.depth());
                let (value, dlogits) =
                    exit_loss_sum(&logits, labels, &log_prior, objective, normalizer);
                (value, r.backward(tape, dlogits))
            }
        }
    }
}
