//! The sensor demo's build-time half: embeds the HMP activity model and a few test windows cut,
//! at build time, from `../shared/data/hmp-adl/hmp.npz` (the data set's terms do not allow
//! redistributing it, so no window is stored in the repository: a build without the file
//! embeds none and the demo says so).
//!
//! The windows are read from the archive's `x_test` (float32 `[N, ...]`) and `y_test` (uint8
//! `[N]`) arrays: for the HMP set the first test window of each of [`CLASSES`] (a mix of easy
//! and hard activities), else the first [`CLASSES`]`.len()` test examples.
//!
//! Any f32 model and `.npz` of the same input size run the same way: `TINYBAYES_DEVICE_MODEL`
//! and `TINYBAYES_DEVICE_DATA` name them (docs/TRAINING.md).

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The q8 version of the HMP model (signed 8-bit codes of the readings), relative to the
/// firmware crate.
pub const HMP_Q8_MODEL: &str = "../models/hmp-conv1d-q8.tbm";
/// A fixed-point model to run beside a custom f32 one (`TINYBAYES_DEVICE_MODEL`).
const Q8_MODEL_ENV: &str = "TINYBAYES_DEVICE_Q8_MODEL";
/// Monte Carlo samples of the demo (the firmware's `DEMO_SAMPLES`).
const SAMPLES: u16 = 32;

/// The HMP model the demo runs, relative to the firmware crate.
pub const HMP_MODEL: &str = "../models/hmp-conv1d.tbm";
/// Environment variable naming the model file (default [`HMP_MODEL`]).
const MODEL_ENV: &str = "TINYBAYES_DEVICE_MODEL";
/// Environment variable naming the data file (default: `../shared/data/hmp-adl/hmp.npz` from
/// the repository root).
const DATA_ENV: &str = "TINYBAYES_DEVICE_DATA";
/// The HMP archive, relative to the firmware crate (`../shared/data/hmp-adl/hmp.npz` from the
/// repository root).
pub const HMP_DATA: &str = "../../shared/data/hmp-adl/hmp.npz";
/// The activities whose first test window the demo classifies.
const CLASSES: [u8; 8] = [13, 1, 3, 7, 4, 9, 5, 6];
/// The 14 activity names of the data set, by label.
pub const CLASS_NAMES: [&str; 14] = [
    "brush_teeth",
    "climb_stairs",
    "comb_hair",
    "descend_stairs",
    "drink_glass",
    "eat_meat",
    "eat_soup",
    "getup_bed",
    "liedown_bed",
    "pour_water",
    "sitdown_chair",
    "standup_chair",
    "use_telephone",
    "walk",
];

/// One array of an `.npy` member: its shape and raw little-endian values.
pub struct Npy {
    /// The numpy type (`<f4`, `|u1`, `<U3`, ...).
    pub descr: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, C order.
    pub data: Vec<u8>,
}

/// Parses an `.npy` (version 1 to 3) held in memory.
fn parse_npy(bytes: &[u8]) -> Result<Npy, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-text .npy header")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("no {key} in the .npy header"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or_default()
        .to_string();
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or_default();
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| format!("bad shape {s}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Npy {
        descr,
        shape,
        data: bytes[start + len..].to_vec(),
    })
}

/// Reads member `name` (`name.npy`) of the `.npz` archive at `path`.
pub fn read_member(path: &Path, name: &str) -> Result<Npy, String> {
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    let mut member = archive
        .by_name(&format!("{name}.npy"))
        .map_err(|e| format!("{name}: {e}"))?;
    let mut bytes = Vec::new();
    member
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    parse_npy(&bytes).map_err(|e| format!("{name}: {e}"))
}

/// One split of the archive, checked: `x_<split>` float32 or uint8 `[N, ...]` with `window`
/// values per example, `y_<split>` uint8 `[N]`.
pub struct Split {
    x: Npy,
    y: Npy,
    /// Bytes per value: 4 (float32) or 1 (uint8).
    size: usize,
    window: usize,
}

impl Split {
    /// Reads `x_<split>` and `y_<split>` of the archive at `path`.
    pub fn read(path: &Path, split: &str, window: usize) -> Result<Self, String> {
        let x = read_member(path, &format!("x_{split}"))?;
        let y = read_member(path, &format!("y_{split}"))?;
        let per_example: usize = x.shape.iter().skip(1).product();
        // float32 values, or bytes (their values 0..=255, which the f32 engine's raw entry
        // point normalises to the bits of its byte entry point).
        let size = match x.descr.as_str() {
            "<f4" => 4,
            "|u1" => 1,
            _ => 0,
        };
        if size == 0 || x.shape.len() < 2 || per_example != window {
            return Err(format!(
                "x_{split} is {} {:?}, not float32 or uint8 [N, ...] with {window} values per example (the model's input)",
                x.descr, x.shape
            ));
        }
        if y.descr != "|u1" || y.shape != [x.shape[0]] {
            return Err(format!(
                "y_{split} is {} {:?}, not uint8 [{}]",
                y.descr, y.shape, x.shape[0]
            ));
        }
        if x.data.len() < x.shape[0] * window * size || y.data.len() < x.shape[0] {
            return Err("truncated arrays".into());
        }
        Ok(Split { x, y, size, window })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x.shape[0]
    }

    /// The labels, by example.
    pub fn labels(&self) -> &[u8] {
        &self.y.data[..self.len()]
    }

    /// Example `i`'s values and label.
    pub fn example(&self, i: usize) -> (Vec<f32>, u8) {
        let (window, size) = (self.window, self.size);
        let raw = &self.x.data[i * window * size..(i + 1) * window * size];
        let values = match size {
            4 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => raw.iter().map(|&b| f32::from(b)).collect(),
        };
        (values, self.y.data[i])
    }
}

/// The demo windows (values, label) from the archive at `path`, `window` values each.
fn windows(path: &Path, window: usize, hmp: bool) -> Result<Vec<(Vec<f32>, u8)>, String> {
    let test = Split::read(path, "test", window)?;
    let picks: Vec<usize> = if hmp {
        CLASSES
            .iter()
            .map(|&class| {
                test.labels()
                    .iter()
                    .position(|&l| l == class)
                    .ok_or(format!("no test window of class {class}"))
            })
            .collect::<Result<_, _>>()?
    } else {
        (0..CLASSES.len().min(test.len())).collect()
    };
    Ok(picks.into_iter().map(|i| test.example(i)).collect())
}

/// Writes the HMP demo's models, windows and workspace sizes into `src` (`chunk`: the f32
/// engine's samples per pass, `fixed_chunk`: the fixed-point engine's; `seed_base`: the
/// demo's first seed).
pub fn write_hmp(
    src: &mut String,
    manifest: &Path,
    (chunk, fixed_chunk): (usize, usize),
    seed_base: u64,
) {
    println!("cargo::rerun-if-env-changed={DATA_ENV}");
    println!("cargo::rerun-if-env-changed={MODEL_ENV}");
    println!("cargo::rerun-if-env-changed={Q8_MODEL_ENV}");
    let custom = std::env::var_os(MODEL_ENV).map(PathBuf::from);
    let model_path = custom.clone().unwrap_or_else(|| manifest.join(HMP_MODEL));
    println!("cargo::rerun-if-changed={}", model_path.display());
    let bytes = fs::read(&model_path).expect("read the HMP model");
    let buffer = tinybayes::writer::ModelBuffer::from_bytes(&bytes);
    let model = buffer
        .model()
        .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let window = model.input_len();
    writeln!(src, "/// The HMP activity model, in flash.").unwrap();
    writeln!(
        src,
        "pub static HMP_MODEL: &[u8] = tinybayes::include_model!({:?});",
        model_path
            .canonicalize()
            .expect("HMP model path")
            .display()
            .to_string()
    )
    .unwrap();
    writeln!(src, "/// Workspace words of the HMP model at `DEMO_CHUNK`.").unwrap();
    writeln!(
        src,
        "pub const HMP_WORKSPACE_WORDS: usize = {};",
        tinybayes::Plan::new(&model, chunk).workspace_len()
    )
    .unwrap();
    let names: Vec<String> = if custom.is_none() {
        CLASS_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..model.num_classes())
            .map(|k| format!("class {k}"))
            .collect()
    };
    writeln!(src, "/// The class names, by label.").unwrap();
    writeln!(src, "pub static HMP_CLASS_NAMES: &[&str] = &{names:?};").unwrap();

    let data: PathBuf = std::env::var_os(DATA_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join(HMP_DATA));
    let found = if data.is_file() {
        println!("cargo::rerun-if-changed={}", data.display());
        Some(
            windows(&data, window, custom.is_none())
                .unwrap_or_else(|e| panic!("{}: {e}", data.display())),
        )
    } else {
        None
    };
    writeln!(
        src,
        "/// Why no window is embedded (`None` when they are): the data file was not found."
    )
    .unwrap();
    match &found {
        Some(_) => writeln!(src, "pub const HMP_MISSING: Option<&str> = None;").unwrap(),
        None => writeln!(
            src,
            "pub const HMP_MISSING: Option<&str> = Some({:?});",
            data.display().to_string()
        )
        .unwrap(),
    }
    writeln!(
        src,
        "/// Test windows cut from the data file at build time (3 x 128 values in g, channel-major) and their labels."
    )
    .unwrap();
    write_windows(src, "HMP_WINDOWS", found.as_deref().unwrap_or_default());
    let windows: Vec<&[f32]> = found.iter().flatten().map(|(v, _)| v.as_slice()).collect();
    let q8_path = match (std::env::var_os(Q8_MODEL_ENV), &custom) {
        (Some(path), _) => Some(PathBuf::from(path)),
        (None, None) => Some(manifest.join(HMP_Q8_MODEL)),
        (None, Some(_)) => None,
    };
    write_hmp_q8(src, q8_path.as_deref(), &windows, fixed_chunk, seed_base);
}

/// Writes `windows` (values, label) as the static `name: &[(&[f32], u8)]`.
pub fn write_windows(src: &mut String, name: &str, windows: &[(Vec<f32>, u8)]) {
    write!(src, "pub static {name}: &[(&[f32], u8)] = &[").unwrap();
    for (values, label) in windows {
        write!(src, "(&[").unwrap();
        for v in values {
            write!(src, "{:?}f32,", v).unwrap();
        }
        write!(src, "], {label}),").unwrap();
    }
    writeln!(src, "];").unwrap();
}

/// The fixed-point half: the q8 model (if any), each window as the signed codes the model
/// reads, and the digest of the host's answers to them (the device checks its own against it:
/// the same integer engine, bit for bit).
fn write_hmp_q8(
    src: &mut String,
    path: Option<&Path>,
    windows: &[&[f32]],
    chunk: usize,
    seed_base: u64,
) {
    use rand_core::SeedableRng;
    use tinybayes::format::InputCoding;

    let Some(path) = path else {
        writeln!(src, "/// No fixed-point model beside a custom f32 one.").unwrap();
        writeln!(src, "pub static HMP_Q8_MODEL: Option<&[u8]> = None;").unwrap();
        writeln!(src, "/// Workspace words of the fixed-point model.").unwrap();
        writeln!(src, "pub const HMP_Q8_WORKSPACE_WORDS: usize = 0;").unwrap();
        writeln!(src, "/// The windows as signed codes.").unwrap();
        writeln!(src, "pub static HMP_Q8_CODES: &[&[i8]] = &[];").unwrap();
        writeln!(src, "/// The windows as bytes.").unwrap();
        writeln!(src, "pub static HMP_Q8_BYTES: &[&[u8]] = &[];").unwrap();
        writeln!(src, "/// The host's outputs digest.").unwrap();
        writeln!(src, "pub const HMP_Q8_DIGEST: u32 = 0;").unwrap();
        return;
    };
    println!("cargo::rerun-if-changed={}", path.display());
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let buffer = tinybayes::writer::ModelBuffer::from_bytes(&bytes);
    let model = tinybayes::QModel::from_bytes(buffer.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The windows as the model reads them: signed codes at its step, or bytes (which the
    // data must then hold: values 0..=255 without a fraction).
    let (codes, bytes): (Vec<Vec<i8>>, Vec<Vec<u8>>) = match model.input_coding() {
        InputCoding::Signed { step } => (
            windows
                .iter()
                .map(|w| {
                    w.iter()
                        .map(|&v| InputCoding::signed_code(v, step).expect("finite readings"))
                        .collect()
                })
                .collect(),
            Vec::new(),
        ),
        InputCoding::Unsigned => (
            Vec::new(),
            windows
                .iter()
                .map(|w| {
                    w.iter()
                        .map(|&v| {
                            if v.fract() != 0.0 || !(0.0..=255.0).contains(&v) {
                                panic!(
                                    "{}: the fixed-point model reads bytes, but the data holds {v}",
                                    path.display()
                                );
                            }
                            v as u8
                        })
                        .collect()
                })
                .collect(),
        ),
    };
    // The host's answers, as the device computes them (Monte Carlo, seed per window).
    let mut workspace = vec![0u64; model.workspace_len(8)];
    let mut digest = tinybayes::digest::OutputsDigest::new();
    let samples = core::num::NonZeroU16::new(SAMPLES).expect("non-zero");
    let mode = tinybayes::Mode::MonteCarlo { samples };
    for i in 0..windows.len() {
        let mut rng = rand_xoshiro::Xoshiro128PlusPlus::seed_from_u64(seed_base + i as u64);
        let input = (codes.get(i), bytes.get(i));
        let p = match model.precision() {
            tinybayes::format::Precision::Q16 => {
                host_answer::<tinybayes::Q16>(&model, &mut workspace, input, mode, &mut rng)
            }
            _ => host_answer::<tinybayes::Q8>(&model, &mut workspace, input, mode, &mut rng),
        }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        digest.add(&p);
    }
    writeln!(src, "/// The fixed-point HMP model, in flash.").unwrap();
    writeln!(
        src,
        "pub static HMP_Q8_MODEL: Option<&[u8]> = Some(tinybayes::include_model!({:?}));",
        path.canonicalize()
            .expect("q8 model path")
            .display()
            .to_string()
    )
    .unwrap();
    writeln!(
        src,
        "/// Workspace words (u64) of the fixed-point HMP model at `FIXED_CHUNK`."
    )
    .unwrap();
    writeln!(
        src,
        "pub const HMP_Q8_WORKSPACE_WORDS: usize = {};",
        model.workspace_len(chunk)
    )
    .unwrap();
    writeln!(
        src,
        "/// The windows as signed codes, for a fixed-point model that reads them (else empty)."
    )
    .unwrap();
    write!(src, "pub static HMP_Q8_CODES: &[&[i8]] = &[").unwrap();
    for c in &codes {
        write!(src, "&{c:?},").unwrap();
    }
    writeln!(src, "];").unwrap();
    writeln!(
        src,
        "/// The windows as bytes, for a fixed-point model that reads bytes (else empty)."
    )
    .unwrap();
    write!(src, "pub static HMP_Q8_BYTES: &[&[u8]] = &[").unwrap();
    for b in &bytes {
        write!(src, "&{b:?},").unwrap();
    }
    writeln!(src, "];").unwrap();
    writeln!(
        src,
        "/// The outputs digest of the host's answers to `HMP_Q8_CODES` ({SAMPLES} samples, seeds from `DEMO_SEED_BASE`)."
    )
    .unwrap();
    writeln!(
        src,
        "pub const HMP_Q8_DIGEST: u32 = {:#010x};",
        digest.finalize()
    )
    .unwrap();
}

/// The host's answer to one window given as codes or, without them, as bytes: what the
/// device computes with `predict_i8` or `predict_u8`.
fn host_answer<N: tinybayes::numeric::FixedPoint>(
    model: &tinybayes::QModel<'_>,
    workspace: &mut [u64],
    (codes, bytes): (Option<&Vec<i8>>, Option<&Vec<u8>>),
    mode: tinybayes::Mode,
    rng: &mut rand_xoshiro::Xoshiro128PlusPlus,
) -> Result<tinybayes::QPrediction<32>, tinybayes::InferenceError> {
    let mut engine = tinybayes::Engine::<8, N>::new(model, workspace)?;
    match (codes, bytes) {
        (Some(x), _) => engine.predict_i8(x, mode, rng),
        (None, x) => engine.predict_u8(x.map_or(&[][..], |v| v), mode, rng),
    }
}
