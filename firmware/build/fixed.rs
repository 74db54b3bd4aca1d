//! Build-time data of the fixed-point firmware: the q8 and q16 LeNet-300-100 models and the
//! q8 LeNet-5, their workspace, host-computed digests of their outputs on the ten embedded
//! images, the q8 early-exit ResNet with the bits of its outputs on those images, and the
//! expected digest of the full 10,000-image MNIST test set, which the
//! `parity` binary streams over semihosting and checks on the device.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::digest::OutputsDigest;
use tinybayes::early_exit::Halting;
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::Precision;
use tinybayes::numeric::FixedPoint;
use tinybayes::writer::ModelBuffer;
use tinybayes::Engine;
use tinybayes::QExitPrediction;
use tinybayes::{Mode, Prediction};
use tinybayes::{Q16, Q8};

/// The fixed-point models, relative to the firmware crate.
const Q8_MODEL: &str = "../models/lenet300-q8.tbm";
const Q16_MODEL: &str = "../models/lenet300-q16.tbm";
/// The q8 LeNet-5 (fixed-point convolutions), on the boards whose RAM holds its workspace.
const LENET5_Q8_MODEL: &str = "../models/lenet5-q8.tbm";
/// Images of the q8 LeNet-5's Monte Carlo parity run (mean weights: all of them).
const LENET5_MC_IMAGES: usize = 1000;
/// Samples sharing a pass for the q8 LeNet-5 on the emulated boards with megabytes of RAM.
const LENET5_CHUNK: usize = 8;
/// The MC dropout LeNet-300-100 in q8 (dense rows, 271 KB), benchmarked on the MPS2 boards.
const MCDROPOUT_Q8_MODEL: &str = "../models/lenet300-mcdropout-q8.tbm";
/// The q8 early-exit ResNet, on the boards whose RAM holds its workspace (cfg `tb_resnet_q8`).
const RESNET_Q8_MODEL: &str = "../models/resnet-ee-q8.tbm";
/// Samples sharing a pass for the q8 early-exit ResNet on the MPS2 boards (4 MB of RAM): all
/// eight of a Monte Carlo prediction.
const RESNET_CHUNK: usize = 8;
/// Monte Carlo samples of the q8 early-exit ResNet's parity test and benchmark.
const RESNET_SAMPLES: u16 = 8;
/// The f32 model of the full-test-set parity run on hard-float targets.
const F32_MODEL: &str = "../models/lenet300.tbm";
/// Monte Carlo samples of the parity runs and the demo.
const SAMPLES: u16 = 32;
/// Image `i` uses the generator seeded with `SEED_BASE + i` (as the f32 parity test).
const SEED_BASE: u64 = 0x7b00;
/// The MNIST test images, relative to the workspace (`../shared/data/mnist`), unless
/// `TINYBAYES_MNIST_DIR` names the directory.
const MNIST_DIR: &str = "../../shared/data/mnist";
const MNIST_TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";

fn modes() -> [Mode; 2] {
    [
        Mode::MeanWeights,
        Mode::MonteCarlo {
            samples: NonZeroU16::new(SAMPLES).expect("non-zero"),
        },
    ]
}

/// The outputs digest (`tinybayes::digest`) of one image in both modes (mean weights, then
/// Monte Carlo).
fn image_digest<N: FixedPoint>(
    engine: &mut Engine<'_, '_, 32, N>,
    pixels: &[u8],
    seed: u64,
) -> u32 {
    let mut digest = OutputsDigest::new();
    for mode in modes() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
        let p: QPrediction<10> = engine.predict_u8(pixels, mode, &mut rng).expect("predict");
        digest.add(&p);
    }
    digest.finalize()
}

/// The digest of each embedded image (`count` labels, then the images) with a model of format
/// `N`.
fn embedded_digests<N: FixedPoint>(model: &QModel<'_>, images: &[u8], count: usize) -> Vec<u32> {
    let mut ws = vec![0u64; model.workspace_len(32)];
    let mut engine = Engine::<32, N>::new(model, &mut ws).expect("workspace");
    (0..count)
        .map(|i| {
            let pixels = &images[count + i * 784..count + (i + 1) * 784];
            image_digest(&mut engine, pixels, SEED_BASE + i as u64)
        })
        .collect()
}

/// Reads a fixed-point model file (relative to the firmware crate), rebuilding when it changes.
fn read_fixed(manifest: &Path, rel: &str) -> (PathBuf, ModelBuffer) {
    let path = manifest
        .join(rel)
        .canonicalize()
        .expect("fixed-point model exists");
    println!("cargo::rerun-if-changed={}", path.display());
    let buffer = ModelBuffer::from_bytes(&fs::read(&path).expect("read model"));
    (path, buffer)
}

/// Embeds a fixed-point model as `name` with the digests of its outputs on the embedded
/// images (`{name}_EXPECTED`); returns its bytes.
fn embed_fixed(
    src: &mut String,
    manifest: &Path,
    name: &str,
    rel: &str,
    images: &[u8],
) -> ModelBuffer {
    let (path, buffer) = read_fixed(manifest, rel);
    {
        let model = QModel::from_bytes(buffer.as_bytes()).expect("valid fixed-point model");
        writeln!(src, "/// {rel}, in flash.").unwrap();
        writeln!(
            src,
            "pub static {name}: &[u8] = tinybayes::include_model!({:?});",
            path.display().to_string()
        )
        .unwrap();
        // Per embedded image: the digest of its outputs in both modes.
        let count = images.len() / 785;
        let digests = match model.precision() {
            Precision::Q16 => embedded_digests::<Q16>(&model, images, count),
            _ => embedded_digests::<Q8>(&model, images, count),
        };
        writeln!(
        src,
        "/// Host-computed CRC-32 of each embedded image's outputs with `{name}` (mean weights, then Monte Carlo)."
    )
    .unwrap();
        writeln!(
            src,
            "pub static {name}_EXPECTED: [u32; {count}] = {digests:?};"
        )
        .unwrap();
    }
    buffer
}

/// The fixed-point data: LeNet-300-100 in q8 and q16 at `chunk`, LeNet-5 in q8 where the
/// board's RAM holds it (cfg `tb_lenet5`), the full-test-set parity data.
pub fn write_fixed(
    src: &mut String,
    manifest: &Path,
    out: &Path,
    images: &[u8],
    chunk: usize,
    board: &str,
) {
    let mut workspace_words = 0;
    for (name, rel) in [("FIXED_Q8_MODEL", Q8_MODEL), ("FIXED_Q16_MODEL", Q16_MODEL)] {
        let buffer = embed_fixed(src, manifest, name, rel, images);
        let model = QModel::from_bytes(buffer.as_bytes()).expect("valid fixed-point model");
        workspace_words = workspace_words.max(model.workspace_len(chunk));
    }
    // Only the emulated MPS2 boards (4 MB of RAM) run it: the micro:bit's 16 KB cannot hold
    // even one sample's feature maps (209,664 B), and on the nRF52840-DK's 256 KB that would
    // leave under 48 KB for everything else, untested on a board. Elsewhere the model is not
    // embedded and the code that runs it is compiled out (cfg `tb_lenet5`).
    let fits = board.starts_with("mps2");
    println!("cargo::rustc-check-cfg=cfg(tb_lenet5)");
    let bytes = if fits {
        println!("cargo::rustc-cfg=tb_lenet5");
        embed_fixed(src, manifest, "LENET5_Q8_MODEL", LENET5_Q8_MODEL, images)
    } else {
        read_fixed(manifest, LENET5_Q8_MODEL).1
    };
    let lenet5 = QModel::from_bytes(bytes.as_bytes()).expect("valid fixed-point model");
    if fits {
        writeln!(src, "/// Samples sharing a pass for the q8 LeNet-5.").unwrap();
        writeln!(src, "pub const LENET5_CHUNK: usize = {LENET5_CHUNK};").unwrap();
        writeln!(
            src,
            "/// 64-bit workspace words of the q8 LeNet-5 at `LENET5_CHUNK`."
        )
        .unwrap();
        writeln!(
            src,
            "pub const LENET5_WORKSPACE_WORDS: usize = {};",
            lenet5.workspace_len(LENET5_CHUNK)
        )
        .unwrap();
    }
    // The MC dropout model's 271 KB fit the MPS2 boards' 4 MB of flash, not the micro:bit's
    // 256 KB (cfg `tb_mcdropout`).
    println!("cargo::rustc-check-cfg=cfg(tb_mcdropout)");
    if fits {
        println!("cargo::rustc-cfg=tb_mcdropout");
        let (path, buffer) = read_fixed(manifest, MCDROPOUT_Q8_MODEL);
        let model = QModel::from_bytes(buffer.as_bytes()).expect("valid fixed-point model");
        writeln!(src, "/// {MCDROPOUT_Q8_MODEL}, in flash.").unwrap();
        writeln!(
            src,
            "pub static MCDROPOUT_Q8_MODEL: &[u8] = tinybayes::include_model!({:?});",
            path.display().to_string()
        )
        .unwrap();
        writeln!(
            src,
            "/// 64-bit workspace words of the q8 MC dropout model at `FIXED_CHUNK`."
        )
        .unwrap();
        writeln!(
            src,
            "pub const MCDROPOUT_WORKSPACE_WORDS: usize = {};",
            model.workspace_len(chunk)
        )
        .unwrap();
    }
    writeln!(
        src,
        "/// Bytes of workspace the q8 LeNet-5 needs with one sample per pass."
    )
    .unwrap();
    writeln!(
        src,
        "pub const LENET5_WORKSPACE_BYTES_ONE_SAMPLE: usize = {};",
        lenet5.workspace_bytes(1)
    )
    .unwrap();
    writeln!(
        src,
        "/// Samples sharing a pass in the fixed-point firmware."
    )
    .unwrap();
    writeln!(src, "pub const FIXED_CHUNK: usize = {chunk};").unwrap();
    writeln!(
        src,
        "/// 64-bit workspace words of the fixed-point models at `FIXED_CHUNK`."
    )
    .unwrap();
    writeln!(
        src,
        "pub const FIXED_WORKSPACE_WORDS: usize = {workspace_words};"
    )
    .unwrap();
    writeln!(
        src,
        "/// Monte Carlo samples of the fixed-point demo and parity runs."
    )
    .unwrap();
    writeln!(src, "pub const FIXED_SAMPLES: u16 = {SAMPLES};").unwrap();
    writeln!(
        src,
        "/// Seed of image i's generator is `FIXED_SEED_BASE + i`."
    )
    .unwrap();
    writeln!(src, "pub const FIXED_SEED_BASE: u64 = {SEED_BASE};").unwrap();
    write_resnet_q8(src, manifest, images, fits);
    write_full_parity(src, manifest, out, fits);
}

/// The three runs of the q8 early-exit ResNet the device checks, in the order of the rows of
/// `RESNET_Q8_EXPECTED`: mean weights with every block, then `RESNET_SAMPLES` Monte Carlo
/// samples with the joint-mode policy (the model's prior), then with every block.
const RESNET_RUNS: [&str; 3] = [
    "mean weights, Halting::All",
    "M = 8, Halting::JointMode",
    "M = 8, Halting::All",
];

/// Embeds the q8 early-exit ResNet where it fits (cfg `tb_resnet_q8`) with, per run and per
/// embedded image (seeded `SEED_BASE + i`), the bits of every output of the host's prediction:
/// class, answering exit, depth, MACs, samples, predictive entropy, expected entropy, mutual
/// information, then the ten probabilities (all UQ16 bits).
fn write_resnet_q8(src: &mut String, manifest: &Path, images: &[u8], fits: bool) {
    println!("cargo::rustc-check-cfg=cfg(tb_resnet_q8)");
    let (path, buffer) = read_fixed(manifest, RESNET_Q8_MODEL);
    let model = QModel::from_bytes(buffer.as_bytes()).expect("valid q8 early-exit model");
    writeln!(
        src,
        "/// Bytes of workspace the q8 early-exit ResNet needs with one sample per pass."
    )
    .unwrap();
    writeln!(
        src,
        "pub const RESNET_Q8_WORKSPACE_BYTES_ONE_SAMPLE: usize = {};",
        model.workspace_bytes(1)
    )
    .unwrap();
    if !fits {
        return;
    }
    println!("cargo::rustc-cfg=tb_resnet_q8");
    writeln!(src, "/// models/resnet-ee-q8.tbm, in flash.").unwrap();
    writeln!(
        src,
        "pub static RESNET_Q8_MODEL: &[u8] = tinybayes::include_model!({:?});",
        path.display().to_string()
    )
    .unwrap();
    writeln!(
        src,
        "/// Samples sharing a pass for the q8 early-exit ResNet."
    )
    .unwrap();
    writeln!(src, "pub const RESNET_CHUNK: usize = {RESNET_CHUNK};").unwrap();
    writeln!(
        src,
        "/// 64-bit workspace words of the q8 early-exit ResNet at `RESNET_CHUNK`."
    )
    .unwrap();
    writeln!(
        src,
        "pub const RESNET_WORKSPACE_WORDS: usize = {};",
        model.workspace_len(RESNET_CHUNK)
    )
    .unwrap();
    writeln!(
        src,
        "/// Monte Carlo samples of the q8 early-exit ResNet's parity test and benchmark."
    )
    .unwrap();
    writeln!(src, "pub const RESNET_SAMPLES: u16 = {RESNET_SAMPLES};").unwrap();
    writeln!(src, "/// The runs of `RESNET_Q8_EXPECTED`, in order.").unwrap();
    writeln!(src, "pub const RESNET_RUNS: [&str; 3] = {RESNET_RUNS:?};").unwrap();
    let samples = NonZeroU16::new(RESNET_SAMPLES).expect("non-zero");
    let runs = [
        (Mode::MeanWeights, Halting::All),
        (
            Mode::MonteCarlo { samples },
            Halting::JointMode { prior: None },
        ),
        (Mode::MonteCarlo { samples }, Halting::All),
    ];
    let count = images.len() / 785;
    let mut ws = vec![0u64; model.workspace_len(RESNET_CHUNK)];
    let mut engine = Engine::<RESNET_CHUNK, Q8>::new(&model, &mut ws).expect("workspace");
    writeln!(
        src,
        "/// Host-computed output bits of the q8 early-exit ResNet per run (`RESNET_RUNS`) and embedded image (seeded `FIXED_SEED_BASE + i`): class, exit, depth, MACs, samples, predictive entropy, expected entropy, mutual information, p_0..p_9."
    )
    .unwrap();
    writeln!(
        src,
        "pub static RESNET_Q8_EXPECTED: [[[u32; 18]; {count}]; 3] = ["
    )
    .unwrap();
    for (mode, halting) in runs {
        writeln!(src, "    [").unwrap();
        for i in 0..count {
            let pixels = &images[count + i * 784..count + (i + 1) * 784];
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(SEED_BASE + i as u64);
            let e: QExitPrediction<10> = engine
                .predict_u8_early_exit(pixels, mode, halting, &mut rng)
                .expect("predict");
            let p = &e.prediction;
            let mut row = vec![
                p.class as u32,
                e.exit as u32,
                e.depth as u32,
                e.macs as u32,
                p.samples as u32,
                p.predictive_entropy.to_bits(),
                p.expected_entropy.to_bits(),
                p.mutual_information.to_bits(),
            ];
            row.extend(p.probabilities.iter().map(|v| v.to_bits()));
            assert_eq!(row.len(), 18, "ten classes");
            writeln!(src, "        {row:?},").unwrap();
        }
        writeln!(src, "    ],").unwrap();
    }
    writeln!(src, "];").unwrap();
}

/// Decodes the MNIST test images to a raw file in OUT_DIR (10,000 x 784 bytes) and computes
/// the parity model's digest over all of them on the host: the f32 LeNet-300-100 on
/// hard-float targets, the q8 LeNet-5 on the Cortex-M3, the q8 LeNet-300-100 elsewhere.
fn write_full_parity(src: &mut String, manifest: &Path, out: &Path, lenet5_fits: bool) {
    println!("cargo::rerun-if-env-changed=TINYBAYES_MNIST_DIR");
    let dir = env::var_os("TINYBAYES_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join(MNIST_DIR));
    let gz = dir.join(MNIST_TEST_IMAGES);
    let raw = out.join("mnist-t10k-images.u8");
    let pixels = fs::File::open(&gz).ok().and_then(|f| {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut bytes)
            .ok()?;
        // IDX: magic 0x00000803, count, rows, cols (big endian), then the pixels.
        let header: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let dims = |i: usize| u32::from_be_bytes(header[i..i + 4].try_into().unwrap()) as usize;
        let ok = dims(0) == 0x803 && dims(8) == 28 && dims(12) == 28;
        let n = dims(4);
        (ok && bytes.len() == 16 + n * 784).then(|| bytes.split_off(16))
    });
    let Some(pixels) = pixels else {
        println!(
            "cargo::warning=MNIST test images not found at {} (set TINYBAYES_MNIST_DIR): the parity binary will report them missing",
            gz.display()
        );
        writeln!(
            src,
            "/// Full-test-set parity data is unavailable in this build."
        )
        .unwrap();
        writeln!(
            src,
            "pub const PARITY_IMAGES: Option<&core::ffi::CStr> = None;"
        )
        .unwrap();
        writeln!(src, "/// Images checked per mode.").unwrap();
        writeln!(src, "pub const PARITY_IMAGE_COUNTS: [usize; 2] = [0; 2];").unwrap();
        writeln!(src, "/// The model the parity binary would run (no data).").unwrap();
        writeln!(src, "pub const PARITY_MODEL_NAME: &str = \"\";").unwrap();
        writeln!(src, "/// No fixed-point parity run in this build.").unwrap();
        writeln!(src, "pub const PARITY_LENET5: bool = false;").unwrap();
        writeln!(src, "/// Expected digests (unavailable).").unwrap();
        writeln!(src, "pub const PARITY_EXPECTED_CRC32: [u32; 2] = [0; 2];").unwrap();
        return;
    };
    println!("cargo::rerun-if-changed={}", gz.display());
    fs::write(&raw, &pixels).expect("write raw parity images");
    let target = env::var("TARGET").unwrap_or_default();
    let f32_target = target.ends_with("eabihf");
    let lenet5_target = target.starts_with("thumbv7m") && lenet5_fits;
    let file = if f32_target {
        F32_MODEL
    } else if lenet5_target {
        LENET5_Q8_MODEL
    } else {
        Q8_MODEL
    };
    let path = manifest
        .join(file)
        .canonicalize()
        .expect("parity model exists");
    let buffer = ModelBuffer::from_bytes(&fs::read(&path).expect("read model"));
    let count = pixels.len() / 784;
    // The q8 LeNet-5 costs 4.6 M instructions per image with mean weights and 59 M with
    // M = 32 on the M3: every image in the first mode, the first 1,000 in the second.
    let counts = [
        count,
        if lenet5_target {
            count.min(LENET5_MC_IMAGES)
        } else {
            count
        },
    ];
    let mut expected = Vec::new();
    for (mode, &count) in modes().iter().zip(&counts) {
        let mode = *mode;
        let pixels = &pixels[..count * 784];
        let mut digest = OutputsDigest::new();
        if f32_target {
            let model = buffer.model().expect("valid f32 model");
            let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 32).workspace_len()];
            let mut engine = Engine::<32>::new(&model, &mut ws).expect("workspace");
            for (i, image) in pixels.chunks_exact(784).enumerate() {
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(SEED_BASE + i as u64);
                let p: Prediction<10> = engine.predict_u8(image, mode, &mut rng).expect("predict");
                digest.add(&p);
            }
        } else {
            let model = QModel::from_bytes(buffer.as_bytes()).expect("valid");
            let mut ws = vec![0u64; model.workspace_len(32)];
            let mut engine = Engine::<32, Q8>::new(&model, &mut ws).expect("workspace");
            for (i, image) in pixels.chunks_exact(784).enumerate() {
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(SEED_BASE + i as u64);
                let p: QPrediction<10> = engine.predict_u8(image, mode, &mut rng).expect("predict");
                digest.add(&p);
            }
        }
        expected.push(digest.finalize());
    }
    writeln!(
        src,
        "/// The raw MNIST test images (784 bytes each), read over semihosting."
    )
    .unwrap();
    writeln!(
        src,
        "pub const PARITY_IMAGES: Option<&core::ffi::CStr> = Some(c{:?});",
        raw.display().to_string()
    )
    .unwrap();
    writeln!(
        src,
        "/// Images checked per mode (the first ones of the file): mean weights, Monte Carlo."
    )
    .unwrap();
    writeln!(
        src,
        "pub const PARITY_IMAGE_COUNTS: [usize; 2] = {counts:?};"
    )
    .unwrap();
    writeln!(src, "/// The model the parity binary runs on this target.").unwrap();
    writeln!(src, "pub const PARITY_MODEL_NAME: &str = {file:?};").unwrap();
    writeln!(
        src,
        "/// Whether the fixed-point parity run is the q8 LeNet-5's (else the q8 LeNet-300-100's)."
    )
    .unwrap();
    writeln!(src, "pub const PARITY_LENET5: bool = {lenet5_target};").unwrap();
    writeln!(
        src,
        "/// Host-computed outputs digests (`tinybayes::digest`) over every image, image i seeded with `FIXED_SEED_BASE + i`: mean weights, then Monte Carlo with `FIXED_SAMPLES` samples."
    )
    .unwrap();
    writeln!(
        src,
        "pub const PARITY_EXPECTED_CRC32: [u32; 2] = [{:#010x}, {:#010x}];",
        expected[0], expected[1]
    )
    .unwrap();
}
