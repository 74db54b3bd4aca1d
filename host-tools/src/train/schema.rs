//! Architectures from a config file: the `[[layers]]` list of a training TOML.
//!
//! Each entry has a `kind` and that kind's parameters:
//!
//! | kind | keys | what it is |
//! |---|---|---|
//! | `linear` | `outputs` (the last layer's defaults to the class count), `relu` (default: true except the last layer), `posterior`, `p` | fully connected; a map input is flattened channel-major |
//! | `conv` | `outputs` (channels), `kernel = k` or `[kh, kw]`, `stride` (1), `padding` (0, on every side), `relu` (true), `posterior` | 2-D convolution; over a time series `[C, T]` (laid out `[C, T, 1]`) `kernel = k` means `[k, 1]`: a 1-D convolution over time |
//! | `pool` | `kernel` (2; over `[C, T, 1]` maps `k` means `[k, 1]`), `stride` (the window's height) | max pooling |
//! | `flatten` | | maps to a vector (implicit before a `linear`) |
//! | `gap` | | global average pooling: each channel's mean, `[C, H, W]` maps to a vector of `C` |
//! | `residual`, `exit` | | the early-exit ResNet: see below |
//!
//! `posterior` is `"vd"` (sparse variational dropout, the default), `"dropout"` (MC
//! dropout of the layer's inputs with probability `p`; linear layers) or `"deterministic"`
//! (point weights; their prior is the weight decay). Every layer may have a `name` (used by
//! `tinybayes import` to find its tensors; default `layers.<index>`).
//!
//! Early-exit networks are written as a stem `conv`, then per block two `conv`s (3x3, padding
//! 1, the stem's channels), a `residual` and an `exit`; this is the graph
//! [`super::resnet::ResNetEe`] trains, and other arrangements of `residual`/`exit` are refused
//! with the pattern they must follow.

use std::fmt;

use ndarray::{Array1, Array2, Array4};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::arch::{glorot, vd_linear, Arch};
use super::conv::ConvGeom;
use super::network::{Network, TrainedLayer};
use super::plain::pool_out;
use super::resnet::ResNetSpec;
use super::tensor::{mix_seed, Real};

/// Most entries of a `[[layers]]` list (the model format holds 32 layers).
pub const MAX_LAYER_ENTRIES: usize = tinybayes::format::MAX_LAYERS;
/// Largest `outputs` of a layer (units or channels).
pub const MAX_OUTPUTS: usize = tinybayes::format::MAX_UNITS;
/// Largest kernel or window side (a byte in the model format).
pub const MAX_KERNEL: usize = 255;
/// Most weights of a `[[layers]]` network (16,777,216): with the variances, gradients and
/// Adam moments the trainer holds about 8 floats per weight.
pub const MAX_WEIGHTS: usize = 1 << 24;

/// What a layer entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Fully connected.
    Linear,
    /// Convolution.
    Conv,
    /// Max pooling.
    Pool,
    /// Maps to a vector.
    Flatten,
    /// Global average pooling: the mean of each channel's map (`[C, H, W]` to a vector of
    /// `C`).
    Gap,
    /// Closes a residual block of the early-exit ResNet.
    Residual,
    /// An exit head (global average pool and a linear layer to the classes).
    Exit,
}

/// The weight posterior of a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosteriorKind {
    /// Sparse variational dropout: a factorised Gaussian per weight, pruned at export.
    #[default]
    Vd,
    /// MC dropout of the layer's inputs (probability `p`), deterministic weights.
    Dropout,
    /// Point weights (no weight uncertainty).
    Deterministic,
}

/// A kernel or window size: `k` or `[kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Kernel {
    /// One number: square over images, `[k, 1]` over time series (`[C, T, 1]` maps).
    Side(usize),
    /// Height and width.
    Shape([usize; 2]),
}

impl Kernel {
    /// The (height, width) over maps of `width` columns (1 for a time series).
    pub fn shape(self, width: usize) -> [usize; 2] {
        match self {
            Kernel::Side(k) if width == 1 => [k, 1],
            Kernel::Side(k) => [k, k],
            Kernel::Shape(s) => s,
        }
    }
}

/// One `[[layers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// What the layer is.
    pub kind: LayerKind,
    /// Name of the layer (its tensors in `tinybayes import`); default `layers.<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Units (`linear`) or channels (`conv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<usize>,
    /// Kernel (`conv`) or window (`pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    /// Stride (`conv`, `pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// Zero padding on every side (`conv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<usize>,
    /// ReLU on the output (`linear`, `conv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relu: Option<bool>,
    /// Weight posterior (`linear`, `conv`); default `vd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posterior: Option<PosteriorKind>,
    /// Drop probability of the layer's inputs, `posterior = "dropout"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
}

/// A `[[layers]]` list that does not describe a network this trainer and the engine can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    /// Index of the entry at fault (`None`: the list as a whole).
    pub layer: Option<usize>,
    /// Its name, when it has one.
    pub name: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.layer, &self.name) {
            (Some(i), Some(n)) => write!(f, "[[layers]] entry {} ({n:?}): {}", i + 1, self.message),
            (Some(i), None) => write!(f, "[[layers]] entry {}: {}", i + 1, self.message),
            (None, _) => write!(f, "[[layers]]: {}", self.message),
        }
    }
}

impl std::error::Error for SchemaError {}

/// What a `[[layers]]` list builds.
#[derive(Clone, Debug, PartialEq)]
pub enum Built<T: Real> {
    /// A layer sequence.
    Sequential(Network<T>),
    /// The early-exit ResNet of this shape.
    ResNet(ResNetSpec),
}

/// Activations between entries while the list is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Maps([usize; 3]),
    Flat(usize),
}

impl Shape {
    fn len(self) -> usize {
        match self {
            Shape::Maps(s) => s.iter().product(),
            Shape::Flat(n) => n,
        }
    }
}

/// Checks a `[[layers]]` list against an input shape `(channels, height, width)` and a class
/// count, and describes every entry's output shape (for `tinybayes train --verbose` and the
/// docs): one line per layer.
pub fn describe(
    layers: &[LayerConfig],
    input: [usize; 3],
    classes: usize,
) -> Result<Vec<String>, SchemaError> {
    let plan = plan(layers, input, classes)?;
    Ok(plan.lines)
}

/// The names of the weight layers of a `[[layers]]` list, in order (`layers.<index>` where an
/// Every parameter key of a layer entry with whether it is set: what a layer without
/// parameters (flatten, gap) must leave out.
fn parameter_keys(l: &LayerConfig) -> [(&'static str, bool); 7] {
    [
        ("outputs", l.outputs.is_some()),
        ("kernel", l.kernel.is_some()),
        ("stride", l.stride.is_some()),
        ("padding", l.padding.is_some()),
        ("relu", l.relu.is_some()),
        ("posterior", l.posterior.is_some()),
        ("p", l.p.is_some()),
    ]
}

/// entry has none): what `tinybayes import` looks up.
pub fn weight_layer_names(layers: &[LayerConfig]) -> Vec<(usize, String)> {
    layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.kind, LayerKind::Linear | LayerKind::Conv))
        .map(|(i, l)| (i, entry_name(l, i)))
        .collect()
}

fn entry_name(l: &LayerConfig, i: usize) -> String {
    l.name.clone().unwrap_or_else(|| format!("layers.{i}"))
}

/// One checked entry of a sequential list.
#[derive(Clone, Debug)]
enum Step {
    Linear {
        inputs: usize,
        outputs: usize,
        relu: bool,
        posterior: PosteriorKind,
        p: f64,
    },
    Conv {
        in_ch: usize,
        out_ch: usize,
        kernel: [usize; 2],
        geom: ConvGeom,
        relu: bool,
        posterior: PosteriorKind,
    },
    Pool {
        window: [usize; 2],
        stride: usize,
    },
    Flatten,
    Gap,
}

struct Plan {
    steps: Vec<Step>,
    lines: Vec<String>,
    resnet: Option<ResNetSpec>,
}

fn plan(layers: &[LayerConfig], input: [usize; 3], classes: usize) -> Result<Plan, SchemaError> {
    let whole = |message: String| SchemaError {
        layer: None,
        name: None,
        message,
    };
    if layers.is_empty() {
        return Err(whole("the list is empty".into()));
    }
    if layers.len() > MAX_LAYER_ENTRIES {
        return Err(whole(format!(
            "{} entries; the model format holds at most {MAX_LAYER_ENTRIES} layers",
            layers.len()
        )));
    }
    if input.contains(&0) || classes < 2 {
        return Err(whole(format!(
            "input shape {input:?} and {classes} classes: need a non-empty input and at least 2 \
             classes"
        )));
    }
    if layers
        .iter()
        .any(|l| matches!(l.kind, LayerKind::Residual | LayerKind::Exit))
    {
        let spec = resnet_spec(layers, input, classes)?;
        return Ok(Plan {
            steps: Vec::new(),
            lines: vec![format!(
                "early-exit ResNet: stem {}x{} stride {} padding {} -> {} channels, {} blocks, \
                 {} classes",
                spec.stem_kernel,
                spec.stem_kernel,
                spec.stem_stride,
                spec.stem_padding,
                spec.channels,
                spec.blocks,
                spec.classes
            )],
            resnet: Some(spec),
        });
    }
    let mut shape = Shape::Maps(input);
    let mut steps = Vec::new();
    let mut lines = Vec::new();
    let mut weights = 0usize;
    let last_weighted = layers
        .iter()
        .rposition(|l| matches!(l.kind, LayerKind::Linear | LayerKind::Conv));
    for (i, l) in layers.iter().enumerate() {
        let err = |message: String| SchemaError {
            layer: Some(i),
            name: l.name.clone(),
            message,
        };
        let unused = |keys: &[(&str, bool)]| -> Result<(), SchemaError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(err(format!(
                    "`{key}` does not apply to a {:?} layer",
                    l.kind
                ))),
                None => Ok(()),
            }
        };
        let posterior = l.posterior.unwrap_or_default();
        match l.kind {
            LayerKind::Linear => {
                unused(&[
                    ("kernel", l.kernel.is_some()),
                    ("stride", l.stride.is_some()),
                    ("padding", l.padding.is_some()),
                ])?;
                let is_last = Some(i) == last_weighted;
                let outputs = match (l.outputs, is_last) {
                    (Some(o), _) => o,
                    (None, true) => classes,
                    (None, false) => return Err(err("`outputs` is missing".into())),
                };
                if !(1..=MAX_OUTPUTS).contains(&outputs) {
                    return Err(err(format!(
                        "outputs must be in 1..={MAX_OUTPUTS}, got {outputs}"
                    )));
                }
                if is_last && outputs != classes {
                    return Err(err(format!(
                        "the last layer has {outputs} outputs but the data has {classes} classes"
                    )));
                }
                let inputs = shape.len();
                if inputs > MAX_OUTPUTS {
                    return Err(err(format!(
                        "{inputs} inputs; a layer reads at most {MAX_OUTPUTS} (add pooling or a \
                         strided convolution before it)"
                    )));
                }
                let p = match (posterior, l.p) {
                    (PosteriorKind::Dropout, Some(p))
                        if p.is_finite() && (0.0..1.0).contains(&p) =>
                    {
                        p
                    }
                    (PosteriorKind::Dropout, Some(p)) => {
                        return Err(err(format!(
                            "dropout probability p = {p} is outside [0, 1)"
                        )))
                    }
                    (PosteriorKind::Dropout, None) => {
                        return Err(err(
                            "posterior = \"dropout\" needs `p`, the drop probability".into(),
                        ))
                    }
                    (_, Some(_)) => {
                        return Err(err("`p` applies to posterior = \"dropout\" only".into()))
                    }
                    (_, None) => 0.0,
                };
                let relu = l.relu.unwrap_or(!is_last);
                // A first linear layer reads the input rows as they are (flattened).
                if matches!(shape, Shape::Maps(_)) && !steps.is_empty() {
                    steps.push(Step::Flatten);
                }
                weights = weights.saturating_add(inputs.saturating_mul(outputs));
                lines.push(format!(
                    "{}: linear {inputs} -> {outputs}{}, {}",
                    entry_name(l, i),
                    if relu { ", relu" } else { "" },
                    posterior_name(posterior, p)
                ));
                steps.push(Step::Linear {
                    inputs,
                    outputs,
                    relu,
                    posterior,
                    p,
                });
                shape = Shape::Flat(outputs);
            }
            LayerKind::Conv => {
                unused(&[("p", l.p.is_some())])?;
                let Shape::Maps([c, h, w]) = shape else {
                    return Err(err("a convolution needs maps, not a vector (it follows a flatten or linear layer)".into()));
                };
                let out_ch = l
                    .outputs
                    .ok_or_else(|| err("`outputs` (channels) is missing".into()))?;
                if !(1..=MAX_OUTPUTS).contains(&out_ch) {
                    return Err(err(format!(
                        "outputs must be in 1..={MAX_OUTPUTS}, got {out_ch}"
                    )));
                }
                let kernel = l
                    .kernel
                    .ok_or_else(|| err("`kernel` is missing (k or [kh, kw])".into()))?
                    .shape(w);
                let geom = ConvGeom {
                    stride: l.stride.unwrap_or(1),
                    padding: l.padding.unwrap_or(0),
                };
                check_window(kernel, geom.stride).map_err(&err)?;
                if geom.padding >= kernel[0].min(kernel[1]) {
                    return Err(err(format!(
                        "padding {} must be below the kernel's smaller side {} (the engine pads \
                         both axes alike)",
                        geom.padding,
                        kernel[0].min(kernel[1])
                    )));
                }
                let (Some(ho), Some(wo)) =
                    (geom.out_size(h, kernel[0]), geom.out_size(w, kernel[1]))
                else {
                    return Err(err(format!(
                        "a {}x{} kernel with padding {} does not fit {c}x{h}x{w} maps",
                        kernel[0], kernel[1], geom.padding
                    )));
                };
                if posterior == PosteriorKind::Dropout {
                    return Err(err(
                        "posterior = \"dropout\" applies to linear layers only".into()
                    ));
                }
                let out = [out_ch, ho, wo];
                if out.iter().product::<usize>() > MAX_OUTPUTS {
                    return Err(err(format!(
                        "its output {out_ch}x{ho}x{wo} has more than {MAX_OUTPUTS} values (use a \
                         stride or fewer channels)"
                    )));
                }
                let relu = l.relu.unwrap_or(true);
                weights = weights.saturating_add(out_ch * c * kernel[0] * kernel[1]);
                lines.push(format!(
                    "{}: conv {c}x{h}x{w} -> {out_ch}x{ho}x{wo}, kernel {}x{}, stride {}, padding {}{}, {}",
                    entry_name(l, i),
                    kernel[0],
                    kernel[1],
                    geom.stride,
                    geom.padding,
                    if relu { ", relu" } else { "" },
                    posterior_name(posterior, 0.0)
                ));
                steps.push(Step::Conv {
                    in_ch: c,
                    out_ch,
                    kernel,
                    geom,
                    relu,
                    posterior,
                });
                shape = Shape::Maps(out);
            }
            LayerKind::Pool => {
                unused(&[
                    ("outputs", l.outputs.is_some()),
                    ("padding", l.padding.is_some()),
                    ("relu", l.relu.is_some()),
                    ("posterior", l.posterior.is_some()),
                    ("p", l.p.is_some()),
                ])?;
                let Shape::Maps([c, h, w]) = shape else {
                    return Err(err("pooling needs maps, not a vector".into()));
                };
                let window = l.kernel.unwrap_or(Kernel::Side(2)).shape(w);
                let stride = l.stride.unwrap_or(window[0]);
                check_window(window, stride).map_err(&err)?;
                let (ho, wo) = pool_out((h, w), window, stride).ok_or_else(|| {
                    err(format!(
                        "a {}x{} window does not fit {c}x{h}x{w} maps",
                        window[0], window[1]
                    ))
                })?;
                lines.push(format!(
                    "{}: max pool {c}x{h}x{w} -> {c}x{ho}x{wo}, window {}x{}, stride {stride}",
                    entry_name(l, i),
                    window[0],
                    window[1]
                ));
                steps.push(Step::Pool { window, stride });
                shape = Shape::Maps([c, ho, wo]);
            }
            LayerKind::Flatten => {
                unused(&parameter_keys(l))?;
                if let Shape::Maps(s) = shape {
                    steps.push(Step::Flatten);
                    shape = Shape::Flat(s.iter().product());
                }
            }
            LayerKind::Gap => {
                unused(&parameter_keys(l))?;
                let Shape::Maps([c, h, w]) = shape else {
                    return Err(err(
                        "gap needs maps, not a vector (it follows a flatten, linear or gap layer)"
                            .into(),
                    ));
                };
                lines.push(format!(
                    "{}: global average pool {c}x{h}x{w} -> {c}",
                    entry_name(l, i)
                ));
                steps.push(Step::Gap);
                shape = Shape::Flat(c);
            }
            LayerKind::Residual | LayerKind::Exit => unreachable!("handled above"),
        }
    }
    if weights > MAX_WEIGHTS {
        return Err(whole(format!(
            "{weights} weights; the trainer takes at most {MAX_WEIGHTS}"
        )));
    }
    match (shape, last_weighted.map(|i| layers[i].kind)) {
        (Shape::Flat(n), Some(LayerKind::Linear)) if n == classes => {}
        _ => {
            return Err(whole(format!(
                "the network must end with a linear layer of {classes} outputs (the classes)"
            )))
        }
    }
    Ok(Plan {
        steps,
        lines,
        resnet: None,
    })
}

fn check_window(kernel: [usize; 2], stride: usize) -> Result<(), String> {
    if kernel.iter().any(|&k| !(1..=MAX_KERNEL).contains(&k)) {
        return Err(format!(
            "kernel {}x{}: each side must be in 1..={MAX_KERNEL}",
            kernel[0], kernel[1]
        ));
    }
    if !(1..=MAX_KERNEL).contains(&stride) {
        return Err(format!("stride must be in 1..={MAX_KERNEL}, got {stride}"));
    }
    Ok(())
}

fn posterior_name(p: PosteriorKind, drop: f64) -> String {
    match p {
        PosteriorKind::Vd => "variational dropout".into(),
        PosteriorKind::Dropout => format!("MC dropout p = {drop}"),
        PosteriorKind::Deterministic => "deterministic".into(),
    }
}

/// The early-exit ResNet a list describes: `conv` (stem), then `blocks` x (`conv`, `conv`,
/// `residual`, `exit`) with 3x3 padding-1 stride-1 convolutions of the stem's channels.
fn resnet_spec(
    layers: &[LayerConfig],
    input: [usize; 3],
    classes: usize,
) -> Result<ResNetSpec, SchemaError> {
    let pattern = "an early-exit network is a stem conv followed by blocks of [conv (kernel 3, \
                   padding 1), conv (kernel 3, padding 1), residual, exit], every conv with the \
                   stem's channels, ReLU and the vd posterior";
    let fail = |i: usize, why: &str| SchemaError {
        layer: Some(i),
        name: layers[i].name.clone(),
        message: format!("{why}; {pattern}"),
    };
    let stem = &layers[0];
    if stem.kind != LayerKind::Conv {
        return Err(fail(0, "the first entry is not a conv"));
    }
    let vd_relu = |l: &LayerConfig| {
        l.posterior.unwrap_or_default() == PosteriorKind::Vd
            && l.relu.unwrap_or(true)
            && l.p.is_none()
    };
    let channels = stem
        .outputs
        .ok_or_else(|| fail(0, "the stem has no `outputs`"))?;
    let stem_kernel = match stem.kernel {
        Some(Kernel::Side(k)) => k,
        Some(Kernel::Shape([a, b])) if a == b => a,
        _ => return Err(fail(0, "the stem needs a square `kernel`")),
    };
    if !vd_relu(stem) {
        return Err(fail(0, "the stem is not a vd conv with ReLU"));
    }
    let rest = &layers[1..];
    if rest.is_empty() || rest.len() % 4 != 0 {
        return Err(fail(layers.len() - 1, "the blocks are incomplete"));
    }
    for (b, block) in rest.chunks(4).enumerate() {
        let at = 1 + 4 * b;
        for (k, l) in block.iter().enumerate() {
            let want = [
                LayerKind::Conv,
                LayerKind::Conv,
                LayerKind::Residual,
                LayerKind::Exit,
            ][k];
            if l.kind != want {
                return Err(fail(
                    at + k,
                    &format!("expected {want:?}, found {:?}", l.kind),
                ));
            }
            if want == LayerKind::Conv {
                let three = matches!(
                    l.kernel,
                    Some(Kernel::Side(3)) | Some(Kernel::Shape([3, 3]))
                );
                if !three
                    || l.padding != Some(1)
                    || l.stride.unwrap_or(1) != 1
                    || l.outputs != Some(channels)
                    || !vd_relu(l)
                {
                    return Err(fail(at + k, "this block convolution does not fit"));
                }
            } else if l.outputs.is_some()
                || l.kernel.is_some()
                || l.stride.is_some()
                || l.padding.is_some()
                || l.relu.is_some()
                || l.posterior.is_some()
                || l.p.is_some()
            {
                return Err(fail(
                    at + k,
                    "residual and exit entries take no parameters but a name",
                ));
            }
        }
    }
    let spec = ResNetSpec {
        input_shape: input,
        channels,
        blocks: rest.len() / 4,
        stem_kernel,
        stem_stride: stem.stride.unwrap_or(1),
        stem_padding: stem.padding.unwrap_or(0),
        classes,
    };
    Ok(spec)
}

/// Builds the network a `[[layers]]` list describes for inputs of `input` shape and
/// `classes` classes: freshly initialised, deterministic in `seed` (Glorot-uniform weights,
/// `log sigma^2 = init_log_sigma2`, zero biases, drawn layer after layer from the same stream
/// as the built-in architectures, so the LeNets written as lists train bit for bit as before).
pub fn build<T: Real>(
    layers: &[LayerConfig],
    input: [usize; 3],
    classes: usize,
    seed: u64,
    init_log_sigma2: f64,
    prune_threshold: f64,
) -> Result<Built<T>, SchemaError> {
    let plan = plan(layers, input, classes)?;
    if let Some(spec) = plan.resnet {
        return Ok(Built::ResNet(spec));
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[seed, 0x1417]));
    let mut out = Vec::with_capacity(plan.steps.len());
    for step in plan.steps {
        out.push(match step {
            Step::Linear {
                inputs,
                outputs,
                relu,
                posterior: PosteriorKind::Vd,
                ..
            } => vd_linear(&mut rng, inputs, outputs, relu, init_log_sigma2),
            Step::Linear {
                inputs,
                outputs,
                relu,
                p,
                ..
            } => TrainedLayer::DropoutLinear {
                theta: Array2::from_shape_simple_fn((outputs, inputs), || {
                    glorot(&mut rng, inputs, outputs)
                }),
                bias: Array1::zeros(outputs),
                relu,
                p,
            },
            Step::Conv {
                in_ch,
                out_ch,
                kernel,
                geom,
                relu,
                posterior,
            } => {
                let [kh, kw] = kernel;
                let (fan_in, fan_out) = (in_ch * kh * kw, out_ch * kh * kw);
                let theta = Array4::from_shape_simple_fn((out_ch, in_ch, kh, kw), || {
                    glorot(&mut rng, fan_in, fan_out)
                });
                let bias = Array1::zeros(out_ch);
                match posterior {
                    PosteriorKind::Deterministic => TrainedLayer::PlainConv {
                        theta,
                        bias,
                        relu,
                        geom,
                    },
                    _ => TrainedLayer::Conv2d {
                        log_sigma2: Array4::from_elem(theta.dim(), T::from_f64(init_log_sigma2)),
                        theta,
                        bias,
                        relu,
                        geom,
                    },
                }
            }
            Step::Pool {
                window: [2, 2],
                stride: 2,
            } => TrainedLayer::MaxPool2,
            Step::Pool { window, stride } => TrainedLayer::MaxPool { window, stride },
            Step::Flatten => TrainedLayer::Flatten,
            Step::Gap => TrainedLayer::GlobalAvgPool,
        });
    }
    Ok(Built::Sequential(Network {
        arch: Arch::Custom,
        input_shape: input,
        prune_threshold,
        layers: out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Vec<LayerConfig> {
        #[derive(Deserialize)]
        struct L {
            layers: Vec<LayerConfig>,
        }
        toml::from_str::<L>(toml_text).unwrap().layers
    }

    fn shipped(name: &str) -> Vec<LayerConfig> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/configs")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let config: crate::train::TrainConfig = toml::from_str(&text).unwrap();
        config.layers.expect("a [[layers]] list")
    }

    /// The shipped LeNet configs build the very networks of the built-in architectures: the
    /// same layers and the same initial weights, so they train to the same results.
    #[test]
    fn shipped_lenet_configs_build_the_builtin_networks() {
        for (file, arch) in [
            ("lenet300.toml", Arch::Lenet300),
            ("lenet5.toml", Arch::Lenet5),
        ] {
            let layers = shipped(file);
            let Built::Sequential(net) =
                build::<f32>(&layers, [1, 28, 28], 10, 7, -10.0, 3.0).unwrap()
            else {
                panic!("{file}: not sequential");
            };
            let reference = arch.build::<f32>(7, -10.0, 3.0);
            assert_eq!(net.layers, reference.layers, "{file}");
            assert_eq!(net.input_shape, reference.input_shape);
        }
    }

    #[test]
    fn shipped_resnet_config_gives_the_builtin_spec() {
        let layers = shipped("resnet-ee.toml");
        let Built::ResNet(spec) = build::<f32>(&layers, [1, 28, 28], 10, 0, -10.0, 3.0).unwrap()
        else {
            panic!("not a resnet");
        };
        let config: crate::train::TrainConfig = toml::from_str("arch = \"resnet-ee\"").unwrap();
        assert_eq!(spec, config.resnet_spec());
    }

    #[test]
    fn one_d_convolutions_and_pooling_over_time_series() {
        let layers = parse(
            r#"
            [[layers]]
            kind = "conv"
            outputs = 8
            kernel = 5
            padding = 0
            [[layers]]
            kind = "pool"
            kernel = 2
            [[layers]]
            kind = "conv"
            outputs = 4
            kernel = 3
            stride = 2
            posterior = "deterministic"
            [[layers]]
            kind = "linear"
            outputs = 16
            posterior = "dropout"
            p = 0.25
            [[layers]]
            kind = "linear"
            name = "head"
            "#,
        );
        let lines = describe(&layers, [3, 128, 1], 14).unwrap();
        assert!(
            lines[0].contains("3x128x1 -> 8x124x1, kernel 5x1"),
            "{lines:?}"
        );
        assert!(lines[1].contains("8x124x1 -> 8x62x1"), "{lines:?}");
        assert!(lines[2].contains("-> 4x30x1"), "{lines:?}");
        assert!(lines[3].contains("linear 120 -> 16"), "{lines:?}");
        assert!(lines[4].starts_with("head: linear 16 -> 14"), "{lines:?}");
        let Built::Sequential(net) = build::<f64>(&layers, [3, 128, 1], 14, 1, -10.0, 3.0).unwrap()
        else {
            panic!()
        };
        assert!(matches!(
            net.layers[1],
            TrainedLayer::MaxPool {
                window: [2, 1],
                stride: 2
            }
        ));
        assert!(matches!(net.layers[2], TrainedLayer::PlainConv { .. }));
        assert!(matches!(net.layers[3], TrainedLayer::Flatten));
        assert!(matches!(net.layers[4], TrainedLayer::DropoutLinear { p, .. } if p == 0.25));
        assert_eq!(
            weight_layer_names(&layers),
            vec![
                (0, "layers.0".to_string()),
                (2, "layers.2".into()),
                (3, "layers.3".into()),
                (4, "head".into())
            ]
        );
    }

    /// `gap` pools each channel to one value: no flatten before the linear layer that follows,
    /// which reads one input per channel.
    #[test]
    fn gap_pools_every_channel_to_one_input() {
        let layers = parse(
            r#"
            [[layers]]
            kind = "conv"
            outputs = 6
            kernel = 3
            [[layers]]
            kind = "gap"
            name = "pool"
            [[layers]]
            kind = "linear"
            "#,
        );
        let lines = describe(&layers, [1, 9, 7], 4).unwrap();
        assert_eq!(
            lines[1], "pool: global average pool 6x7x5 -> 6",
            "{lines:?}"
        );
        assert!(lines[2].contains("linear 6 -> 4"), "{lines:?}");
        let Built::Sequential(net) = build::<f32>(&layers, [1, 9, 7], 4, 2, -10.0, 3.0).unwrap()
        else {
            panic!("not sequential")
        };
        assert_eq!(net.layers.len(), 3);
        assert_eq!(net.layers[1], TrainedLayer::GlobalAvgPool);
        assert!(
            matches!(&net.layers[2], TrainedLayer::Linear { theta, .. } if theta.dim() == (4, 6))
        );
        let x = ndarray::Array2::from_elem((2, 63), 0.5f32);
        assert_eq!(net.predict_deterministic(&x).dim(), (2, 4));
    }

    #[test]
    fn bad_lists_are_refused_with_the_entry_and_the_reason() {
        let cases = [
            ("[[layers]]\nkind = \"linear\"\noutputs = 5\n", "data has 10 classes"),
            ("[[layers]]\nkind = \"linear\"\noutputs = 7\n[[layers]]\nkind = \"conv\"\noutputs = 2\nkernel = 3\n", "needs maps"),
            ("[[layers]]\nkind = \"conv\"\noutputs = 2\nkernel = 40\n[[layers]]\nkind = \"linear\"\n", "does not fit"),
            ("[[layers]]\nkind = \"conv\"\noutputs = 2\nkernel = 3\npadding = 3\n[[layers]]\nkind = \"linear\"\n", "padding 3"),
            ("[[layers]]\nkind = \"linear\"\nposterior = \"dropout\"\n", "needs `p`"),
            ("[[layers]]\nkind = \"linear\"\nposterior = \"dropout\"\np = 1.0\n", "outside [0, 1)"),
            ("[[layers]]\nkind = \"linear\"\nkernel = 3\n", "`kernel` does not apply"),
            ("[[layers]]\nkind = \"linear\"\noutputs = 4\n[[layers]]\nkind = \"gap\"\n[[layers]]\nkind = \"linear\"\n", "gap needs maps"),
            ("[[layers]]\nkind = \"gap\"\nkernel = 2\n[[layers]]\nkind = \"linear\"\n", "`kernel` does not apply"),
            ("[[layers]]\nkind = \"linear\"\noutputs = 0\n[[layers]]\nkind = \"linear\"\n", "outputs must be"),
            ("[[layers]]\nkind = \"pool\"\nkernel = 2\n", "must end with a linear"),
            ("[[layers]]\nkind = \"conv\"\noutputs = 4\nkernel = 3\n[[layers]]\nkind = \"residual\"\n", "blocks are incomplete"),
            ("[[layers]]\nkind = \"linear\"\noutputs = 70000\n[[layers]]\nkind = \"linear\"\n", "outputs must be"),
        ];
        for (text, want) in cases {
            let err = describe(&parse(text), [1, 28, 28], 10)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(describe(&[], [1, 28, 28], 10)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let unknown = toml::from_str::<crate::train::TrainConfig>(
            "[[layers]]\nkind = \"linear\"\nunits = 3\n",
        );
        assert!(unknown.is_err());
    }
}
