//! Import of networks trained elsewhere (PyTorch): the weights of a `[[layers]]` architecture
//! read from a NumPy `.npz` archive or a `.safetensors` file, into a [`Network`] that
//! [`crate::export::export`] prunes and writes like a trained run.
//!
//! # Tensor names and layouts
//!
//! Each weight layer of the list (a `linear` or `conv` entry) is found by its `name`, by default
//! `layers.<index>` (the entry's index in the list, counting every kind; see
//! [`weight_layer_names`]). For a layer named `N` the file holds:
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `N.weight` | linear `[out, in]`; conv `[out, in, kh, kw]`, or `[out, in, k]` for a 1-D convolution over a time series | the posterior mean θ (PyTorch's layout) |
//! | `N.log_sigma2` | that of `N.weight` | log σ² of each weight (`vd` layers) |
//! | `N.log_alpha` | that of `N.weight` | instead of `N.log_sigma2`: log α of each weight |
//! | `N.bias` | `[out]` | the bias; absent (PyTorch's `bias=False`) means zeros |
//!
//! A `[out, in, k]` weight is a `[out, in, k, 1]` kernel: time series are laid out `[C, T, 1]`,
//! so a PyTorch `Conv1d` over `[C, T]` is our convolution with kernel `[k, 1]`. Linear layers
//! after convolutions read the maps flattened channel-major (`x.flatten(1)` of an NCHW or
//! NCT tensor in PyTorch), as the engine does.
//!
//! Layers with `posterior = "dropout"` or `"deterministic"` need only `N.weight` and `N.bias`.
//!
//! # log α
//!
//! The trainer computes `log α = log σ² - log(θ² + 10⁻⁸)` (the 10⁻⁸ keeps it finite at θ = 0;
//! sparse-VD code that uses `log(|θ| + ε)` or another ε differs only for |θ| near ε). A file with
//! `N.log_alpha` is converted by the inverse, `log σ² = log α + ln(θ² + 10⁻⁸)`, computed in f64,
//! so the pruning test `log α > threshold` sees the file's log α again. For θ = 0 this gives
//! `log σ² = log α - 18.42`: a weight of mean zero with variance `α · 10⁻⁸`, pruned when its
//! log α exceeds the threshold, and otherwise almost exactly zero in every sample. When a
//! layer has both tensors, `N.log_sigma2` is used.
//!
//! # Checks
//!
//! Every tensor is checked before its data are allocated: its dtype (f32 or f64, and f16 or
//! bf16 in a `.safetensors` file, f16 in an `.npz`), its shape against the layer's, and the
//! bytes its shape needs against those the file holds. Values must be finite (in f32). Tensors
//! of the file that no layer reads are reported ([`Imported::unused`]): a batch-norm or other
//! layer the engine lacks would otherwise be dropped without a word.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::data::npy::NpyStream;
use ndarray::{Array1, Array2, Array4};
use safetensors::tensor::{Dtype, SafeTensors};

use crate::train::schema::{build, weight_layer_names, Built, LayerConfig};
use crate::train::{Network, TrainedLayer};

/// Largest weights file read (1 GiB): far above the 16,777,216 weights a `[[layers]]` network
/// holds at most, whose weights and variances take 256 MiB in f64.
pub const MAX_WEIGHTS_FILE_BYTES: u64 = 1 << 30;

/// The ε of `log α = log σ² - log(θ² + ε)` (as in [`crate::train::vd::log_alpha`]).
pub const LOG_ALPHA_EPS: f64 = 1e-8;

/// A weights-file problem: one line naming the file and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportError {
    /// The file (or the config) at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ImportError {}

/// The container formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    /// NumPy `.npz` archive (`numpy.savez` or `savez_compressed`), one array per tensor name.
    Npz,
    /// Hugging Face `.safetensors`.
    Safetensors,
}

impl WeightsFormat {
    /// The format a path's extension names (`.npz` or `.safetensors`, any case).
    ///
    /// # Errors
    /// Any other extension.
    pub fn of(path: &Path) -> Result<Self, ImportError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("npz") => Ok(Self::Npz),
            Some("safetensors") => Ok(Self::Safetensors),
            _ => Err(ImportError {
                path: path.to_path_buf(),
                message: "unknown weights format (give a .npz or .safetensors file)".into(),
            }),
        }
    }
}

/// Element types of the tensors read, with their byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    F16,
    Bf16,
    F32,
    F64,
}

impl Element {
    fn size(self) -> usize {
        match self {
            Element::F16 | Element::Bf16 => 2,
            Element::F32 => 4,
            Element::F64 => 8,
        }
    }
}

/// Converts little- or big-endian `bytes` of `element`s to f32 (f64 rounded to nearest).
fn decode(bytes: &[u8], element: Element, big_endian: bool) -> Vec<f32> {
    let size = element.size();
    bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            if big_endian {
                b[..size].reverse();
            }
            match element {
                Element::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
                Element::Bf16 => half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
                Element::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Element::F64 => f64::from_le_bytes(b) as f32,
            }
        })
        .collect()
}

/// A tensor as read: its shape and its values in row-major order, as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The shape in the file.
    pub shape: Vec<usize>,
    /// The values.
    pub values: Vec<f32>,
}

/// An open weights file: the names it holds, and its tensors read one at a time.
pub struct WeightsFile {
    path: PathBuf,
    names: Vec<String>,
    source: Source,
}

enum Source {
    Npz(zip::ZipArchive<BufReader<File>>),
    /// The whole file (checked to parse at open).
    Safetensors(Vec<u8>),
}

impl WeightsFile {
    /// Opens `path` (format by extension) and lists its tensors.
    ///
    /// # Errors
    /// An unknown extension, an unreadable, oversized, corrupt or truncated file.
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let format = WeightsFormat::of(path)?;
        let fail = |message: String| ImportError {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| fail(format!("cannot read: {e}")))?
            .len();
        if len > MAX_WEIGHTS_FILE_BYTES {
            return Err(fail(format!(
                "{len} bytes, more than the {MAX_WEIGHTS_FILE_BYTES} a weights file may have"
            )));
        }
        let (names, source) = match format {
            WeightsFormat::Npz => {
                let archive = zip::ZipArchive::new(BufReader::new(file))
                    .map_err(|e| fail(format!("not a readable .npz (zip) archive: {e}")))?;
                let names = archive
                    .file_names()
                    .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
                    .collect();
                (names, Source::Npz(archive))
            }
            WeightsFormat::Safetensors => {
                let mut bytes = Vec::with_capacity(len as usize);
                BufReader::new(file)
                    .read_to_end(&mut bytes)
                    .map_err(|e| fail(format!("cannot read: {e}")))?;
                let parsed = SafeTensors::deserialize(&bytes)
                    .map_err(|e| fail(format!("not a valid .safetensors file: {e}")))?;
                let names = parsed.names().into_iter().map(str::to_string).collect();
                (names, Source::Safetensors(bytes))
            }
        };
        let mut names: Vec<String> = names;
        names.sort();
        Ok(Self {
            path: path.to_path_buf(),
            names,
            source,
        })
    }

    /// The tensor names the file holds, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the file holds a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    fn error(&self, message: String) -> ImportError {
        ImportError {
            path: self.path.clone(),
            message,
        }
    }

    /// The names held, for a message: the first 20, then how many more.
    fn names_list(&self) -> String {
        let shown: Vec<&str> = self.names.iter().take(20).map(String::as_str).collect();
        let more = self.names.len().saturating_sub(shown.len());
        let mut text = if shown.is_empty() {
            "no tensors".to_string()
        } else {
            shown.join(", ")
        };
        if more > 0 {
            text += &format!(" and {more} more");
        }
        text
    }

    /// Reads tensor `name`, whose shape must be one of `shapes` (described to the user as
    /// `expected`), as finite f32 values in row-major order; `None` when the file lacks it.
    ///
    /// # Errors
    /// Another shape, an unsupported dtype, missing or extra data, a value that is NaN or
    /// infinite (in f32).
    pub fn read(
        &mut self,
        name: &str,
        shapes: &[Vec<usize>],
        expected: &str,
    ) -> Result<Option<Tensor>, ImportError> {
        if !self.contains(name) {
            return Ok(None);
        }
        let shape_error =
            |found: &[usize]| format!("tensor `{name}` has shape {found:?}, expected {expected}");
        let path = self.path.clone();
        let fail = |message: String| ImportError {
            path: path.clone(),
            message,
        };
        let (shape, values) = match &mut self.source {
            Source::Npz(archive) => {
                // numpy writes `name.npy`; take a member named without the suffix too.
                let entry = format!("{name}.npy");
                let index = archive
                    .index_for_name(&entry)
                    .or_else(|| archive.index_for_name(name))
                    .ok_or_else(|| fail(format!("tensor `{name}`: not in the archive")))?;
                let mut member = archive
                    .by_index(index)
                    .map_err(|e| fail(format!("tensor `{name}`: cannot read: {e}")))?;
                let total = member.size();
                read_npy(&mut member, total, name, shapes, &shape_error).map_err(fail)?
            }
            Source::Safetensors(bytes) => {
                let parsed = SafeTensors::deserialize(bytes)
                    .map_err(|e| fail(format!("not a valid .safetensors file: {e}")))?;
                let view = parsed
                    .tensor(name)
                    .map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
                let shape = view.shape().to_vec();
                if !shapes.contains(&shape) {
                    return Err(fail(shape_error(&shape)));
                }
                let element = match view.dtype() {
                    Dtype::F16 => Element::F16,
                    Dtype::BF16 => Element::Bf16,
                    Dtype::F32 => Element::F32,
                    Dtype::F64 => Element::F64,
                    other => {
                        return Err(fail(format!(
                            "tensor `{name}` has dtype {other:?}; supported: F32, F64, F16, BF16"
                        )))
                    }
                };
                // The crate checks that every tensor's bytes match its shape and dtype.
                (shape, decode(view.data(), element, false))
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.error(format!(
                "tensor `{name}` holds {} at flat index {i} (every value must be finite in f32)",
                values[i]
            )));
        }
        Ok(Some(Tensor { shape, values }))
    }
}

/// Reads one `.npy` array of `total` bytes: header, then its shape checked, then its data.
fn read_npy<R: Read>(
    reader: R,
    total: u64,
    name: &str,
    shapes: &[Vec<usize>],
    shape_error: &dyn Fn(&[usize]) -> String,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    let stream = NpyStream::open(reader)
        .map_err(|e| format!("tensor `{name}`: not a valid .npy array ({e})"))?;
    let descr = stream.descr();
    let big_endian = descr.starts_with('>');
    let element = match descr.trim_start_matches(['<', '>', '=', '|']) {
        "f2" => Element::F16,
        "f4" => Element::F32,
        "f8" => Element::F64,
        _ => {
            return Err(format!(
                "tensor `{name}` has dtype {descr}; supported: float32, float64, float16"
            ))
        }
    };
    let shape = stream.header.shape.clone();
    if !shapes.contains(&shape) {
        return Err(shape_error(&shape));
    }
    if stream.header.layout.is_fortran() && shape.len() > 1 {
        return Err(format!(
            "tensor `{name}` is in Fortran order (save numpy.ascontiguousarray of it)"
        ));
    }
    // The accepted shapes are those of the network built, so this is bounded by its size.
    let bytes = shape.iter().product::<usize>() * element.size();
    let available = stream.available(total);
    if available != bytes as u64 {
        return Err(format!(
            "tensor `{name}`: its shape {shape:?} needs {bytes} bytes of data but {available} \
             follow its header ({})",
            if available < bytes as u64 {
                "truncated"
            } else {
                "corrupt"
            }
        ));
    }
    let mut data = vec![0u8; bytes];
    let mut r = stream.reader;
    r.read_exact(&mut data).map_err(|e| {
        format!("tensor `{name}`: cannot read its data (truncated or corrupt: {e})")
    })?;
    Ok((shape, decode(&data, element, big_endian)))
}

/// What [`import_network`] made of a file.
#[derive(Debug)]
pub struct Imported {
    /// The network with the file's weights, ready for [`crate::export::export`].
    pub network: Network,
    /// One line per weight layer: its name and what was read.
    pub layers: Vec<String>,
    /// Tensors of the file that no layer read, sorted.
    pub unused: Vec<String>,
    /// Tensors read but not needed (variances of a layer declared deterministic), with why.
    pub ignored: Vec<String>,
}

/// Shapes a weight tensor may have, and how to describe them.
fn weight_shapes(layer: &TrainedLayer) -> Option<(Vec<Vec<usize>>, String)> {
    match layer {
        TrainedLayer::Linear { theta, .. } | TrainedLayer::DropoutLinear { theta, .. } => {
            let (o, i) = theta.dim();
            Some((vec![vec![o, i]], format!("[{o}, {i}] ([out, in])")))
        }
        TrainedLayer::Conv2d { theta, .. } | TrainedLayer::PlainConv { theta, .. } => {
            let (o, i, kh, kw) = theta.dim();
            let mut shapes = vec![vec![o, i, kh, kw]];
            let mut text = format!("[{o}, {i}, {kh}, {kw}] ([out, in, kh, kw])");
            if kw == 1 {
                shapes.push(vec![o, i, kh]);
                text += &format!(" or [{o}, {i}, {kh}] (a 1-D convolution, [out, in, k])");
            }
            Some((shapes, text))
        }
        TrainedLayer::MaxPool2
        | TrainedLayer::MaxPool { .. }
        | TrainedLayer::Flatten
        | TrainedLayer::GlobalAvgPool => None,
    }
}

/// Builds the network a `[[layers]]` list describes for inputs of shape `input` and `classes`
/// classes, and fills its weights from `file` (see the module docs for the names and shapes).
/// `threshold` is recorded as the network's pruning threshold.
///
/// # Errors
/// A list that does not describe a sequential network (early-exit ResNets are not imported
/// yet), two weight layers of one name, and every problem of a tensor: missing (with the
/// names the file holds), of another shape or dtype, truncated, not finite.
pub fn import_network(
    layers: &[LayerConfig],
    input: [usize; 3],
    classes: usize,
    threshold: f64,
    file: &mut WeightsFile,
) -> Result<Imported, ImportError> {
    let config_error = |message: String| file.error(message);
    let built = build::<f32>(layers, input, classes, 0, -10.0, threshold)
        .map_err(|e| config_error(format!("the architecture: {e}")))?;
    let mut network = match built {
        Built::Sequential(n) => n,
        Built::ResNet(_) => {
            return Err(config_error(
                "the architecture is an early-exit ResNet (residual/exit entries), which \
                 import does not read yet; sequential [[layers]] lists only"
                    .into(),
            ))
        }
    };
    let names = weight_layer_names(layers);
    let mut seen = BTreeSet::new();
    for (_, name) in &names {
        if !seen.insert(name.as_str()) {
            return Err(config_error(format!(
                "two weight layers are named {name:?}: each needs its own tensors"
            )));
        }
    }
    let mut used = BTreeSet::new();
    let mut lines = Vec::new();
    let mut ignored = Vec::new();
    let mut names = names.into_iter();
    for layer in &mut network.layers {
        let Some((shapes, expected)) = weight_shapes(layer) else {
            continue;
        };
        let (entry, name) = names.next().expect("one name per weight layer of the list");
        let what = format!("layer {name:?} ([[layers]] entry {})", entry + 1);
        let missing = |file: &WeightsFile, tensor: &str, extra: &str| {
            file.error(format!(
                "no tensor `{tensor}` for {what}{extra}; the file holds: {}",
                file.names_list()
            ))
        };
        let key = |suffix: &str| format!("{name}.{suffix}");
        let theta = file
            .read(&key("weight"), &shapes, &expected)?
            .ok_or_else(|| missing(file, &key("weight"), ""))?
            .values;
        used.insert(key("weight"));
        let outputs = shapes[0][0];
        let bias = match file.read(&key("bias"), &[vec![outputs]], &format!("[{outputs}]"))? {
            Some(b) => {
                used.insert(key("bias"));
                b.values
            }
            None => vec![0.0; outputs],
        };
        let has_bias = used.contains(&key("bias"));
        let variances = matches!(
            layer,
            TrainedLayer::Linear { .. } | TrainedLayer::Conv2d { .. }
        );
        let log_sigma2 = if variances {
            let (values, how) = match file.read(&key("log_sigma2"), &shapes, &expected)? {
                Some(v) => {
                    used.insert(key("log_sigma2"));
                    if file.contains(&key("log_alpha")) {
                        used.insert(key("log_alpha"));
                        ignored.push(format!(
                            "{} (the layer's {} is used)",
                            key("log_alpha"),
                            key("log_sigma2")
                        ));
                    }
                    (v.values, "log_sigma2")
                }
                None => {
                    let log_alpha = file
                        .read(&key("log_alpha"), &shapes, &expected)?
                        .ok_or_else(|| {
                            missing(
                                file,
                                &key("log_sigma2"),
                                &format!(
                                    " (or `{}`: a vd layer needs its variances; write posterior \
                                     = \"deterministic\" in the config for a layer without)",
                                    key("log_alpha")
                                ),
                            )
                        })?
                        .values;
                    used.insert(key("log_alpha"));
                    let converted = log_sigma2_of(&theta, &log_alpha);
                    if let Some(i) = converted.iter().position(|v| !v.is_finite()) {
                        return Err(file.error(format!(
                            "tensor `{}`: log sigma^2 = log alpha + ln(theta^2 + 1e-8) is not \
                             finite in f32 at flat index {i}",
                            key("log_alpha")
                        )));
                    }
                    (converted, "log_alpha")
                }
            };
            lines.push(format!(
                "{name}: weight, {how}{}",
                if has_bias {
                    ", bias"
                } else {
                    ", no bias (zeros)"
                }
            ));
            Some(values)
        } else {
            for suffix in ["log_sigma2", "log_alpha"] {
                if file.contains(&key(suffix)) {
                    used.insert(key(suffix));
                    ignored.push(format!(
                        "{} (the config declares {name:?} without variances: its posterior is \
                         dropout or deterministic)",
                        key(suffix)
                    ));
                }
            }
            lines.push(format!(
                "{name}: weight{}",
                if has_bias {
                    ", bias"
                } else {
                    ", no bias (zeros)"
                }
            ));
            None
        };
        fill(layer, theta, log_sigma2, bias);
    }
    let unused = file
        .names()
        .iter()
        .filter(|n| !used.contains(*n))
        .cloned()
        .collect();
    Ok(Imported {
        network,
        layers: lines,
        unused,
        ignored,
    })
}

/// `log σ² = log α + ln(θ² + ε)` per weight, in f64 (see the module docs).
pub fn log_sigma2_of(theta: &[f32], log_alpha: &[f32]) -> Vec<f32> {
    theta
        .iter()
        .zip(log_alpha)
        .map(|(&t, &a)| {
            let t = f64::from(t);
            (f64::from(a) + (t * t + LOG_ALPHA_EPS).ln()) as f32
        })
        .collect()
}

/// Puts values read (row-major, of the layer's shape) into a built layer.
fn fill(layer: &mut TrainedLayer, theta: Vec<f32>, log_sigma2: Option<Vec<f32>>, bias: Vec<f32>) {
    let shaped2 = |dim: (usize, usize), v: Vec<f32>| {
        Array2::from_shape_vec(dim, v).expect("the shape was checked")
    };
    let shaped4 = |dim: (usize, usize, usize, usize), v: Vec<f32>| {
        Array4::from_shape_vec(dim, v).expect("the shape was checked")
    };
    match layer {
        TrainedLayer::Linear {
            theta: t,
            log_sigma2: l,
            bias: b,
            ..
        } => {
            let dim = t.dim();
            *t = shaped2(dim, theta);
            *l = shaped2(dim, log_sigma2.expect("a vd layer has variances"));
            *b = Array1::from(bias);
        }
        TrainedLayer::Conv2d {
            theta: t,
            log_sigma2: l,
            bias: b,
            ..
        } => {
            let dim = t.dim();
            *t = shaped4(dim, theta);
            *l = shaped4(dim, log_sigma2.expect("a vd layer has variances"));
            *b = Array1::from(bias);
        }
        TrainedLayer::DropoutLinear {
            theta: t, bias: b, ..
        } => {
            *t = shaped2(t.dim(), theta);
            *b = Array1::from(bias);
        }
        TrainedLayer::PlainConv {
            theta: t, bias: b, ..
        } => {
            *t = shaped4(t.dim(), theta);
            *b = Array1::from(bias);
        }
        TrainedLayer::MaxPool2
        | TrainedLayer::MaxPool { .. }
        | TrainedLayer::Flatten
        | TrainedLayer::GlobalAvgPool => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_alpha_round_trips_through_the_trainers_definition() {
        let theta = [0.5f32, -0.01, 0.0, 3.0];
        let log_alpha = [-4.0f32, 2.5, 1.0, 7.5];
        let ls2 = log_sigma2_of(&theta, &log_alpha);
        for ((&t, &a), &l) in theta.iter().zip(&log_alpha).zip(&ls2) {
            let back = crate::train::vd::log_alpha(t, l);
            assert!((back - a).abs() < 1e-5, "theta {t}: {a} -> {l} -> {back}");
        }
        // theta = 0: a finite variance alpha * 1e-8.
        assert!((ls2[2] - (1.0 + (1e-8f64).ln() as f32)).abs() < 1e-5);
    }

    #[test]
    fn decodes_every_dtype_and_byte_order() {
        let v = [1.5f32, -2.25];
        let le32: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let be64: Vec<u8> = v.iter().flat_map(|x| f64::from(*x).to_be_bytes()).collect();
        let f16: Vec<u8> = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(decode(&le32, Element::F32, false), v);
        assert_eq!(decode(&be64, Element::F64, true), v);
        assert_eq!(decode(&f16, Element::F16, false), v);
        assert_eq!(decode(&bf16, Element::Bf16, false), v);
    }
}
