//! The architectures the trainer knows: LeNet-300-100, LeNet-5-Caffe and the early-exit ResNet,
//! with their initialisation.
//!
//! - `lenet300`: VD linear 784-300-100-10, ReLU after the two hidden layers.
//! - `lenet5`: LeNet-5-Caffe: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, flatten
//!   (50*4*4 = 800), FC 500, FC 10. Caffe's LeNet has no non-linearity after the convolutions; we
//!   put a ReLU after each convolution and after FC 500, which trains faster and to a better
//!   optimum with variational dropout (the deployed network must do the same: see the `relu`
//!   flags in [`TrainedLayer`]).
//! - `resnet-ee`: early-exit residual network (stem conv, `L` residual blocks, an exit head after
//!   each), built from the configuration by [`super::TrainConfig::build_model`] as a
//!   [`super::resnet::ResNetEe`]; see that module for the graph.
//!
//! Weights start Glorot-uniform (`U(-b, b)`, `b = sqrt(6 / (fan_in + fan_out))`, the Lasagne
//! default used by the reference implementation), `log sigma^2` starts at a constant (-10), biases
//! at zero.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array1, Array2, Array4};
use rand::Rng;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::network::{Network, TrainedLayer};
use super::optim::LrSchedule;
use super::tensor::{mix_seed, Real};

/// Network architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// LeNet-300-100: fully connected 784-300-100-10.
    #[default]
    #[serde(rename = "lenet300", alias = "lenet-300-100")]
    Lenet300,
    /// LeNet-5-Caffe: two convolutions and two fully connected layers.
    #[serde(rename = "lenet5", alias = "lenet-5")]
    Lenet5,
    /// Early-exit ResNet: stem convolution, residual blocks, an exit head after every block
    /// (not a layer sequence: see [`super::resnet::ResNetEe`]).
    #[serde(rename = "resnet-ee", alias = "resnet_ee")]
    ResnetEe,
    /// A network of the configuration's `[[layers]]` list (see [`super::schema`]); its input
    /// shape and class count come from the data.
    #[serde(rename = "custom")]
    Custom,
}

/// An architecture name that is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?} (expected lenet300, lenet5, resnet-ee or custom)")]
pub struct UnknownArch(
    /// The name that was given.
    pub String,
);

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lenet300" | "lenet-300-100" | "lenet300100" => Ok(Arch::Lenet300),
            "lenet5" | "lenet-5" | "lenet5-caffe" => Ok(Arch::Lenet5),
            "resnet-ee" | "resnet_ee" | "resnetee" => Ok(Arch::ResnetEe),
            "custom" => Ok(Arch::Custom),
            _ => Err(UnknownArch(s.to_string())),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Arch {
    /// Canonical name (`"lenet300"`, `"lenet5"` or `"resnet-ee"`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Lenet300 => "lenet300",
            Arch::Lenet5 => "lenet5",
            Arch::ResnetEe => "resnet-ee",
            Arch::Custom => "custom",
        }
    }

    /// Whether the built-in architecture is a layer sequence ([`Network`]); `resnet-ee` is not
    /// (a `custom` one is whatever its list describes: see [`super::TrainConfig`]).
    pub fn is_sequential(self) -> bool {
        !matches!(self, Arch::ResnetEe)
    }

    /// Input shape `(channels, rows, cols)` of the built-in architectures: MNIST, `(1, 28,
    /// 28)` (a `custom` network takes the data's).
    pub fn input_shape(self) -> [usize; 3] {
        [1, 28, 28]
    }

    /// Learning-rate schedule of the published recipe.
    pub fn default_lr_schedule(self) -> LrSchedule {
        match self {
            Arch::Lenet300 => LrSchedule::ConstantThenLinear,
            Arch::Lenet5 | Arch::ResnetEe | Arch::Custom => LrSchedule::Linear,
        }
    }

    /// A freshly initialised layer-sequence network (deterministic in `seed`).
    ///
    /// `resnet-ee` is not a layer sequence and its shape comes from the configuration: for it
    /// this returns a network *without layers* (no parameters), so code that restores a
    /// checkpoint into it fails its size check instead of misreading the tensors. Build any
    /// architecture with [`super::TrainConfig::build_model`].
    pub fn build<T: Real>(
        self,
        seed: u64,
        init_log_sigma2: f64,
        prune_threshold: f64,
    ) -> Network<T> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[seed, 0x1417]));
        let layers = match self {
            Arch::Lenet300 => vec![
                vd_linear(&mut rng, 784, 300, true, init_log_sigma2),
                vd_linear(&mut rng, 300, 100, true, init_log_sigma2),
                vd_linear(&mut rng, 100, 10, false, init_log_sigma2),
            ],
            Arch::Lenet5 => vec![
                vd_conv(&mut rng, 1, 20, 5, init_log_sigma2),
                TrainedLayer::MaxPool2,
                vd_conv(&mut rng, 20, 50, 5, init_log_sigma2),
                TrainedLayer::MaxPool2,
                TrainedLayer::Flatten,
                vd_linear(&mut rng, 800, 500, true, init_log_sigma2),
                vd_linear(&mut rng, 500, 10, false, init_log_sigma2),
            ],
            Arch::ResnetEe | Arch::Custom => Vec::new(),
        };
        Network {
            arch: self,
            input_shape: self.input_shape(),
            prune_threshold,
            layers,
        }
    }
}

/// One Glorot-uniform draw `U(-b, b)`, `b = sqrt(6 / (fan_in + fan_out))`.
pub(crate) fn glorot<T: Real, R: Rng>(rng: &mut R, fan_in: usize, fan_out: usize) -> T {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    T::from_f64(rng.random_range(-bound..bound))
}

/// A VD linear layer `inputs -> outputs` with Glorot-uniform means.
pub(crate) fn vd_linear<T: Real, R: Rng>(
    rng: &mut R,
    inputs: usize,
    outputs: usize,
    relu: bool,
    init_log_sigma2: f64,
) -> TrainedLayer<T> {
    TrainedLayer::Linear {
        theta: Array2::from_shape_simple_fn((outputs, inputs), || glorot(rng, inputs, outputs)),
        log_sigma2: Array2::from_elem((outputs, inputs), T::from_f64(init_log_sigma2)),
        bias: Array1::zeros(outputs),
        relu,
    }
}

/// A VD `k x k` convolution `in_ch -> out_ch` with ReLU and Glorot-uniform means.
pub(crate) fn vd_conv<T: Real, R: Rng>(
    rng: &mut R,
    in_ch: usize,
    out_ch: usize,
    k: usize,
    init_log_sigma2: f64,
) -> TrainedLayer<T> {
    let (fan_in, fan_out) = (in_ch * k * k, out_ch * k * k);
    TrainedLayer::Conv2d {
        theta: Array4::from_shape_simple_fn((out_ch, in_ch, k, k), || glorot(rng, fan_in, fan_out)),
        log_sigma2: Array4::from_elem((out_ch, in_ch, k, k), T::from_f64(init_log_sigma2)),
        bias: Array1::zeros(out_ch),
        relu: true,
        geom: super::conv::ConvGeom::VALID,
    }
}
