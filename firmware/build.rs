//! Build script of the firmware:
//! - puts the board's `memory.x` on the linker path;
//! - embeds the demo model and sizes its workspace;
//! - generates the seeded synthetic benchmark models (sparse and dense 784-300-100-10);
//! - runs the demo model on the ten embedded MNIST images **on the host**, with the very same
//!   core crate, and writes the bit patterns of every output so the on-target test can assert
//!   host/device parity;
//! - embeds the HMP activity model and test windows cut from the data file (`build/hmp.rs`);
//! - embeds the HMP model trained without volunteer m1, the sizes of its last layer's update,
//!   and m1's windows, rotated, cut from the same file (`build/adapt.rs`).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::early_exit::{ExitPrediction, Halting};
use tinybayes::writer::{synthetic, ModelBuffer, StorageChoice};
use tinybayes::{Engine, Mode, Model, Prediction};

/// The model the demo and the parity test run, relative to this crate.
const DEMO_MODEL: &str = "../models/lenet300.tbm";
/// What the demo says about its model.
const DEMO_MODEL_DESCRIPTION: &str =
    "LeNet-300-100, sparse variational dropout, trained on MNIST (models/lenet300.tbm)";
/// The ten MNIST test images (labels, then 784-byte images), written by `tinybayes images`
/// (README, Firmware).
const IMAGES: &str = "assets/mnist-test-first10.bin";
/// Samples of the Monte Carlo posterior predictive in the demo and the parity test.
const PARITY_SAMPLES: u16 = 32;
/// Image `i` is predicted with a generator seeded by `PARITY_SEED_BASE + i`.
const PARITY_SEED_BASE: u64 = 0x7b00;
/// Samples sharing a pass on the device (the host below uses all 32 at once: results must
/// not depend on it).
const DEVICE_CHUNK: usize = 8;

#[path = "build/adapt.rs"]
mod adapt;
#[path = "build/fixed.rs"]
mod fixed;
#[path = "build/hmp.rs"]
mod hmp;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));

    // The board: the nRF52840-DK feature, or under QEMU the board that emulates the target's
    // core: mps2-an386 for the M4F, mps2-an385 for the M3, micro:bit for the M0, mps2-an505
    // for the M33. `TINYBAYES_QEMU_BOARD` overrides the emulated board: the Cortex-M7
    // (mps2-an500, firmware/boards/m7-mps2-an500.toml) runs the M4F's thumbv7em code, and
    // firmware/boards/m0-on-mps2-an385.toml runs the Cortex-M0's ARMv6-M code on the
    // mps2-an385, whose 4 MB of RAM hold the larger models (ARMv6-M is a subset of ARMv7-M, so
    // the instructions counted are the M0's).
    println!("cargo::rerun-if-env-changed=TINYBAYES_QEMU_BOARD");
    let target = env::var("TARGET").unwrap_or_default();
    let qemu_board = env::var("TINYBAYES_QEMU_BOARD").ok();
    let board = if env::var_os("CARGO_FEATURE_NRF52840DK").is_some() {
        "nrf52840dk"
    } else if let Some(board) = qemu_board.as_deref() {
        // The M7 and M33 boards run only their core's code (the others: see above).
        match board {
            "mps2-an385" | "mps2-an386" | "microbit" => board,
            "mps2-an500" if target.starts_with("thumbv7em") => board,
            "mps2-an505" if target.starts_with("thumbv8m.main") => board,
            "mps2-an500" | "mps2-an505" => {
                let code = match board {
                    "mps2-an500" => "thumbv7em",
                    _ => "thumbv8m.main",
                };
                panic!("TINYBAYES_QEMU_BOARD={board} runs {code} code, not {target}")
            }
            _ => panic!(
                "TINYBAYES_QEMU_BOARD={board}: not mps2-an385, mps2-an386, mps2-an500, \
                 mps2-an505 or microbit"
            ),
        }
    } else if target.starts_with("thumbv6m") {
        "microbit"
    } else if target.starts_with("thumbv7m") {
        "mps2-an385"
    } else if target.starts_with("thumbv8m.main") {
        "mps2-an505"
    } else {
        "mps2-an386"
    };
    fs::copy(
        manifest.join(format!("memory/{board}.x")),
        out.join("memory.x"),
    )
    .expect("copy memory.x");
    println!("cargo::rustc-link-search={}", out.display());
    println!("cargo::rerun-if-changed=memory");
    println!(
        "cargo::rustc-check-cfg=cfg(tb_board, values(\"nrf52840dk\", \"microbit\", \"mps2-an385\", \"mps2-an386\", \"mps2-an500\", \"mps2-an505\"))"
    );
    println!("cargo::rustc-cfg=tb_board=\"{board}\"");
    // The core whose instruction set the image holds: the `core=` field of the bench lines.
    let core = match (target.split('-').next().unwrap_or_default(), board) {
        ("thumbv6m", _) => "cortex-m0",
        ("thumbv7m", _) => "cortex-m3",
        (arch, _) if arch.starts_with("thumbv8m") => "cortex-m33",
        (_, "mps2-an500") => "cortex-m7",
        _ => "cortex-m4f",
    };
    println!("cargo::rustc-env=TINYBAYES_CORE={core}");
    println!("cargo::rustc-env=TINYBAYES_BOARD={board}");
    // ARMv6-M code (the Cortex-M0's instruction set) on an MPS2 board.
    println!("cargo::rustc-check-cfg=cfg(tb_armv6m_on_mps2)");
    if target.starts_with("thumbv6m") && board.starts_with("mps2") {
        println!("cargo::rustc-cfg=tb_armv6m_on_mps2");
    }
    // The full-test-set parity run checks the f32 model on hard-float cores, q8 elsewhere.
    println!("cargo::rustc-check-cfg=cfg(tb_parity_f32)");
    if target.ends_with("eabihf") {
        println!("cargo::rustc-cfg=tb_parity_f32");
    }
    // The micro:bit has 16 KB of RAM: fewer samples share a pass there.
    let fixed_chunk = if board == "microbit" { 4 } else { 8 };

    let demo_path = manifest
        .join(DEMO_MODEL)
        .canonicalize()
        .expect("demo model file exists");
    let demo_bytes = fs::read(&demo_path).expect("read demo model");
    let demo = ModelBuffer::from_bytes(&demo_bytes);
    let model = demo.model().expect("the demo model is valid");
    let images = fs::read(manifest.join(IMAGES)).expect("read demo images");
    println!("cargo::rerun-if-changed={}", demo_path.display());
    println!("cargo::rerun-if-changed={IMAGES}");

    let mut src = String::new();
    writeln!(src, "/// The demo model, in flash.").unwrap();
    writeln!(
        src,
        "pub static DEMO_MODEL: &[u8] = tinybayes::include_model!({:?});",
        demo_path.display().to_string()
    )
    .unwrap();
    writeln!(src, "/// What the demo model is.").unwrap();
    writeln!(
        src,
        "pub const DEMO_MODEL_DESCRIPTION: &str = {DEMO_MODEL_DESCRIPTION:?};"
    )
    .unwrap();
    writeln!(src, "/// Monte Carlo samples per prediction in the demo.").unwrap();
    writeln!(src, "pub const DEMO_SAMPLES: u16 = {PARITY_SAMPLES};").unwrap();
    writeln!(
        src,
        "/// Seed of image i's generator is `DEMO_SEED_BASE + i`."
    )
    .unwrap();
    writeln!(src, "pub const DEMO_SEED_BASE: u64 = {PARITY_SEED_BASE};").unwrap();
    writeln!(
        src,
        "/// Samples sharing one pass over the weights on the device."
    )
    .unwrap();
    writeln!(src, "pub const DEMO_CHUNK: usize = {DEVICE_CHUNK};").unwrap();
    writeln!(
        src,
        "/// Workspace words the demo model needs with `DEMO_CHUNK`."
    )
    .unwrap();
    writeln!(
        src,
        "pub const DEMO_WORKSPACE_WORDS: usize = {};",
        tinybayes::Plan::new(&model, DEVICE_CHUNK).workspace_len()
    )
    .unwrap();
    write_parity(&mut src, &model, &images);
    write_bench_models(&mut src, &out, &model);
    fixed::write_fixed(&mut src, &manifest, &out, &images, fixed_chunk, board);
    write_early_exit_model(&mut src, &manifest, &out, &images);
    hmp::write_hmp(
        &mut src,
        &manifest,
        (DEVICE_CHUNK, fixed_chunk),
        PARITY_SEED_BASE,
    );
    adapt::write_adapt(&mut src, &manifest, DEVICE_CHUNK);
    fs::write(out.join("generated.rs"), src).expect("write generated.rs");
}

/// The bits a parity row holds for one prediction: class, predictive entropy, expected
/// entropy, mutual information, then every class probability.
fn prediction_bits(p: &Prediction<10>) -> Vec<u32> {
    let mut row = vec![
        p.class as u32,
        p.predictive_entropy.to_bits(),
        p.expected_entropy.to_bits(),
        p.mutual_information.to_bits(),
    ];
    row.extend(p.probabilities.iter().map(|v| v.to_bits()));
    row
}

/// Host-side expectations: for each image, the bits of (class, predictive entropy, expected
/// entropy, mutual information, p_0..p_9), in mean-weights mode then Monte Carlo mode.
fn write_parity(src: &mut String, model: &Model<'_>, images: &[u8]) {
    let count = images.len() / 785;
    let mut workspace =
        vec![0.0f32; tinybayes::Plan::new(model, PARITY_SAMPLES as usize).workspace_len()];
    let mut engine = Engine::<32>::new(model, &mut workspace).expect("workspace");
    let samples = NonZeroU16::new(PARITY_SAMPLES).expect("non-zero");
    let mut rows = Vec::new();
    for mode in [Mode::MeanWeights, Mode::MonteCarlo { samples }] {
        for i in 0..count {
            let pixels = &images[count + i * 784..count + (i + 1) * 784];
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(PARITY_SEED_BASE + i as u64);
            let p: Prediction<10> = engine.predict_u8(pixels, mode, &mut rng).expect("predict");
            rows.push(prediction_bits(&p));
        }
    }
    writeln!(
        src,
        "/// Host-computed output bits per image: mean-weights rows, then Monte Carlo rows."
    )
    .unwrap();
    writeln!(
        src,
        "pub static HOST_EXPECTED: [[u32; 14]; {}] = [",
        rows.len()
    )
    .unwrap();
    for row in rows {
        writeln!(src, "    {row:?},").unwrap();
    }
    writeln!(src, "];").unwrap();
}

/// Seeded synthetic benchmark models of the LeNet-300-100 shape: sparse (3% density) and dense,
/// and the one workspace size that serves every bench model (`demo` included) at 32 samples per
/// pass.
fn write_bench_models(src: &mut String, out: &Path, demo: &Model<'_>) {
    let mut workspace_words = tinybayes::Plan::new(demo, 32).workspace_len();
    let widths = [784, 300, 100, 10];
    let mut sparse = synthetic::mlp(11, &widths, 0.03);
    sparse.input_shape = [1, 28, 28];
    let mut dense = synthetic::mlp(11, &widths, 1.0);
    dense.input_shape = [1, 28, 28];
    for layer in &mut dense.layers {
        layer.storage = StorageChoice::Dense;
    }
    for (name, spec) in [("BENCH_SPARSE", &sparse), ("BENCH_DENSE", &dense)] {
        let buffer = spec.to_buffer().expect("bench model");
        let model = buffer.model().expect("valid");
        let file = out.join(format!("{}.tbm", name.to_lowercase()));
        fs::write(&file, buffer.as_bytes()).expect("write bench model");
        writeln!(
            src,
            "/// Seeded synthetic benchmark model ({} weights stored).",
            model.nnz()
        )
        .unwrap();
        writeln!(
            src,
            "pub static {name}: &[u8] = tinybayes::include_model!({:?});",
            file.display().to_string()
        )
        .unwrap();
        workspace_words = workspace_words.max(tinybayes::Plan::new(&model, 32).workspace_len());
    }
    writeln!(
        src,
        "/// Workspace words of the largest bench model (the demo model's and both synthetic ones) at 32 samples per pass."
    )
    .unwrap();
    writeln!(
        src,
        "pub const BENCH_WORKSPACE_WORDS: usize = {workspace_words};"
    )
    .unwrap();
}

/// The early-exit model: `models/resnet-ee.tbm` (the trained one, see models/README.md), or,
/// when that file is absent, a seeded synthetic network of the same kind so that the firmware
/// always builds.
/// Samples per pass of the early-exit binary.
const EE_CHUNK: usize = 1;

fn write_early_exit_model(src: &mut String, manifest: &Path, out: &Path, images: &[u8]) {
    let trained = manifest.join("../models/resnet-ee.tbm");
    println!("cargo::rerun-if-changed={}", trained.display());
    let (path, description) = match trained.canonicalize() {
        Ok(path) => (path, "trained early-exit ResNet (models/resnet-ee.tbm)"),
        Err(_) => {
            let priors = [0.4f32, 0.3, 0.2, 0.1];
            let spec = synthetic::resnet_ee(5, 28, 4, 10, &priors, 2.0);
            let path = out.join("resnet-ee-synthetic.tbm");
            fs::write(&path, spec.to_bytes().expect("synthetic early-exit model")).expect("write");
            (
                path,
                "synthetic (untrained) early-exit ResNet: models/resnet-ee.tbm is missing",
            )
        }
    };
    let buffer = ModelBuffer::from_bytes(&fs::read(&path).expect("read early-exit model"));
    let model = buffer.model().expect("valid early-exit model");
    writeln!(src, "/// The early-exit model, in flash.").unwrap();
    writeln!(
        src,
        "pub static EE_MODEL: &[u8] = tinybayes::include_model!({:?});",
        path.display().to_string()
    )
    .unwrap();
    writeln!(src, "/// What the early-exit model is.").unwrap();
    writeln!(
        src,
        "pub const EE_MODEL_DESCRIPTION: &str = {description:?};"
    )
    .unwrap();
    writeln!(
        src,
        "/// Samples per pass of the early-exit binary: one, so that the workspace holds one \
         sample's feature maps whatever the number of samples (policies that read the exits \
         regenerate the samples' paths)."
    )
    .unwrap();
    writeln!(src, "pub const EE_CHUNK: usize = {EE_CHUNK};").unwrap();
    writeln!(
        src,
        "/// Workspace words of the early-exit model at `EE_CHUNK`."
    )
    .unwrap();
    writeln!(
        src,
        "pub const EE_WORKSPACE_WORDS: usize = {};",
        tinybayes::Plan::new(&model, EE_CHUNK).workspace_len()
    )
    .unwrap();
    write_early_exit_parity(src, &model, images);
}

/// Images of the early-exit parity rows (every block run: each convolution kernel runs).
const EE_PARITY_IMAGES: usize = 3;
/// Monte Carlo samples of the early-exit parity rows.
const EE_PARITY_SAMPLES: u16 = 8;

/// Host-side expectations for the early-exit model with every block run (a depth budget of
/// all exits): per image, the bits of (class, predictive entropy, expected entropy, mutual
/// information, p_0..p_9), mean-weights rows then Monte Carlo rows, image `i` seeded with
/// `EE_SEED_BASE + i`.
fn write_early_exit_parity(src: &mut String, model: &Model<'_>, images: &[u8]) {
    let count = images.len() / 785;
    let mut workspace = vec![0.0f32; tinybayes::Plan::new(model, EE_CHUNK).workspace_len()];
    let mut engine = Engine::<EE_CHUNK>::new(model, &mut workspace).expect("workspace");
    let samples = NonZeroU16::new(EE_PARITY_SAMPLES).expect("non-zero");
    let halting = Halting::Depth {
        exits: model.exit_count(),
    };
    let mut rows = Vec::new();
    for mode in [Mode::MeanWeights, Mode::MonteCarlo { samples }] {
        for i in 0..EE_PARITY_IMAGES.min(count) {
            let pixels = &images[count + i * 784..count + (i + 1) * 784];
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(PARITY_SEED_BASE + i as u64);
            let p: ExitPrediction<10> = engine
                .predict_u8_early_exit(pixels, mode, halting, &mut rng)
                .expect("predict");
            rows.push(prediction_bits(&p.prediction));
        }
    }
    writeln!(
        src,
        "/// Monte Carlo samples of the early-exit parity rows."
    )
    .unwrap();
    writeln!(
        src,
        "pub const EE_PARITY_SAMPLES: u16 = {EE_PARITY_SAMPLES};"
    )
    .unwrap();
    writeln!(
        src,
        "/// Host-computed output bits of the early-exit model, every block run, per image \
         (seeded with `DEMO_SEED_BASE + i`): mean-weights rows, then Monte Carlo rows."
    )
    .unwrap();
    writeln!(
        src,
        "pub static EE_HOST_EXPECTED: [[u32; 14]; {}] = [",
        rows.len()
    )
    .unwrap();
    for row in rows {
        writeln!(src, "    {row:?},").unwrap();
    }
    writeln!(src, "];").unwrap();
}
