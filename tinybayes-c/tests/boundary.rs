//! The C API from both sides: `tests/c/boundary.c` (compiled by build.rs) passes every kind
//! of bad argument from C and checks each status code; the Rust tests below check that the
//! C ABI's answers are the Rust API's, bit for bit, for every format, chunk and mode.

use std::ffi::{c_char, CStr};
use std::num::NonZeroU16;

use tinybayes::rand_core::SeedableRng;
use tinybayes::rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::writer::ModelBuffer;
use tinybayes::{Engine, Mode, Model, Prediction, QModel, QPrediction, F32, Q8};
use tinybayes_c::*;

extern "C" {
    fn tb_boundary_checks(
        f32_model: *const u8,
        f32_len: usize,
        q8_model: *const u8,
        q8_len: usize,
        early_exit_model: *const u8,
        early_exit_len: usize,
        image: *const u8,
        report: *mut c_char,
        report_len: usize,
    ) -> i32;
}

/// A shipped model, 8-byte aligned.
fn model(name: &str) -> ModelBuffer {
    let path = format!("{}/../models/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    ModelBuffer::from_bytes(&bytes)
}

/// The first MNIST test digit, as the firmware embeds it.
fn image(i: usize) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../firmware/assets/mnist-test-first10.bin"
    );
    let raw = std::fs::read(path).expect("firmware/assets/mnist-test-first10.bin");
    raw[10 + i * 784..10 + (i + 1) * 784].to_vec()
}

#[test]
fn every_bad_argument_from_c_gets_its_status() {
    let (f32_model, q8_model, ee_model) = (
        model("lenet300.tbm"),
        model("lenet300-q8.tbm"),
        model("resnet-ee.tbm"),
    );
    let pixels = image(0);
    let mut report = vec![0 as c_char; 8192];
    let (f, q, e) = (
        f32_model.as_bytes(),
        q8_model.as_bytes(),
        ee_model.as_bytes(),
    );
    // SAFETY: every pointer is valid for its length, the report buffer writable.
    let failures = unsafe {
        tb_boundary_checks(
            f.as_ptr(),
            f.len(),
            q.as_ptr(),
            q.len(),
            e.as_ptr(),
            e.len(),
            pixels.as_ptr(),
            report.as_mut_ptr(),
            report.len(),
        )
    };
    // SAFETY: the C side NUL-terminates the report.
    let text = unsafe { CStr::from_ptr(report.as_ptr()) }.to_string_lossy();
    assert_eq!(failures, 0, "{text}");
}

/// A prediction through the C ABI.
fn c_predict(bytes: &[u8], chunk: u32, mode: TbMode, seed: u64, input: &[u8]) -> TbResult {
    let mut engine = Box::new(TbEngine {
        opaque: [0; TB_ENGINE_WORDS],
    });
    let mut workspace = vec![0u64; 16384];
    let mut size = 0usize;
    // SAFETY: valid pointers and lengths throughout; the engine and workspace outlive its use.
    unsafe {
        assert_eq!(
            tb_workspace_size(bytes.as_ptr(), bytes.len(), chunk, mode, &mut size),
            TbStatus::Ok
        );
        assert!(size <= workspace.len() * 8);
        let status = tb_engine_init(
            &mut *engine,
            bytes.as_ptr(),
            bytes.len(),
            chunk,
            workspace.as_mut_ptr().cast(),
            size,
        );
        assert_eq!(status, TbStatus::Ok);
        let mut rng = TbRng { state: [0; 4] };
        assert_eq!(tb_rng_seed(&mut rng, seed), TbStatus::Ok);
        let mut result = TbResult::default();
        assert_eq!(tb_result_init(&mut result), TbStatus::Ok);
        let status = tb_predict_u8(
            &mut *engine,
            input.as_ptr(),
            input.len(),
            mode,
            &mut rng,
            &mut result,
        );
        assert_eq!(
            status,
            TbStatus::Ok,
            "{:?}",
            CStr::from_ptr(tb_status_name(status as i32))
        );
        result
    }
}

const MC: TbMode = TbMode {
    kind: TB_MODE_MONTE_CARLO,
    samples: 12,
};

#[test]
fn the_c_abi_answers_as_the_rust_api_for_every_chunk_and_mode() {
    let buffer = model("lenet300.tbm");
    let model = Model::from_bytes(buffer.as_bytes()).unwrap();
    let pixels = image(3);
    let modes = [
        (
            TbMode {
                kind: TB_MODE_MEAN,
                samples: 0,
            },
            Mode::MeanWeights,
        ),
        (
            MC,
            Mode::MonteCarlo {
                samples: NonZeroU16::new(12).unwrap(),
            },
        ),
        (
            TbMode {
                kind: TB_MODE_MOMENTS,
                samples: 0,
            },
            Mode::Moments,
        ),
        (
            TbMode {
                kind: TB_MODE_MOMENTS_THEN_SAMPLE,
                samples: 5,
            },
            Mode::MomentsThenSample {
                samples: NonZeroU16::new(5).unwrap(),
            },
        ),
    ];
    let mut workspace = vec![0.0f32; tinybayes::Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8, F32>::new(&model, &mut workspace).unwrap();
    for (c_mode, mode) in modes {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(99);
        let want: Prediction<10> = engine.predict_u8(&pixels, mode, &mut rng).unwrap();
        let chunks: &[u32] = if matches!(mode, Mode::Moments | Mode::MomentsThenSample { .. }) {
            &[2, 4, 8]
        } else {
            &[1, 2, 4, 8]
        };
        for &chunk in chunks {
            let got = c_predict(buffer.as_bytes(), chunk, c_mode, 99, &pixels);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(got.class_count, 10);
            assert_eq!(
                got.predicted_class as usize, want.class,
                "{mode:?} chunk {chunk}"
            );
            assert_eq!(
                bits(&got.probabilities[..10]),
                bits(&want.probabilities),
                "{mode:?} chunk {chunk}"
            );
            assert_eq!(
                got.predictive_entropy.to_bits(),
                want.predictive_entropy.to_bits()
            );
            assert_eq!(
                got.expected_entropy.to_bits(),
                want.expected_entropy.to_bits()
            );
            assert_eq!(
                got.mutual_information.to_bits(),
                want.mutual_information.to_bits()
            );
            assert_eq!(got.samples as usize, want.samples);
            assert_eq!(got.macs as usize, model.macs());
            assert_eq!(got.fixed_point, 0);
        }
    }
}

#[test]
fn the_c_abi_answers_as_the_rust_api_in_fixed_point() {
    let buffer = model("lenet300-q8.tbm");
    let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
    let pixels = image(8);
    let mut workspace = vec![0u64; tinybayes::Plan::new(&model, 4).workspace_len()];
    let mut engine = Engine::<4, Q8>::new(&model, &mut workspace).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(5);
    let want: QPrediction<10> = engine
        .predict_u8(
            &pixels,
            Mode::MonteCarlo {
                samples: NonZeroU16::new(12).unwrap(),
            },
            &mut rng,
        )
        .unwrap();
    for chunk in [1, 2, 4, 8] {
        let got = c_predict(buffer.as_bytes(), chunk, MC, 5, &pixels);
        let raw: Vec<u32> = want.probabilities.iter().map(|p| p.to_bits()).collect();
        assert_eq!(got.probabilities_uq16[..10], raw[..], "chunk {chunk}");
        assert_eq!(got.predicted_class as usize, want.class);
        assert_eq!(
            got.predictive_entropy_uq16,
            want.predictive_entropy.to_bits()
        );
        assert_eq!(got.expected_entropy_uq16, want.expected_entropy.to_bits());
        assert_eq!(
            got.mutual_information_uq16,
            want.mutual_information.to_bits()
        );
        assert_eq!(got.fixed_point, 1);
    }
}

#[test]
fn the_c_abi_runs_early_exit_policies_as_the_rust_api() {
    let buffer = model("resnet-ee.tbm");
    let model = Model::from_bytes(buffer.as_bytes()).unwrap();
    let pixels = image(1);
    let mut workspace = vec![0.0f32; tinybayes::Plan::new(&model, 4).workspace_len()];
    let mut engine = Engine::<4, F32>::new(&model, &mut workspace).unwrap();
    let samples = NonZeroU16::new(6).unwrap();
    let policies = [
        (
            TB_HALTING_JOINT_MODE,
            tinybayes::Halting::JointMode { prior: None },
        ),
        (
            TB_HALTING_ROBUST,
            tinybayes::Halting::Robust {
                prior: None,
                mutual_information_below: 0.05,
            },
        ),
        (TB_HALTING_ALL, tinybayes::Halting::All),
    ];
    let mut c_workspace = vec![0u64; 1 << 16];
    let mut c_engine = Box::new(TbEngine {
        opaque: [0; TB_ENGINE_WORDS],
    });
    let bytes = buffer.as_bytes();
    // SAFETY: valid pointers and lengths; the engine and workspace outlive its use.
    unsafe {
        let status = tb_engine_init(
            &mut *c_engine,
            bytes.as_ptr(),
            bytes.len(),
            8,
            c_workspace.as_mut_ptr().cast(),
            c_workspace.len() * 8,
        );
        assert_eq!(status, TbStatus::Ok);
    }
    for (kind, halting) in policies {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(11);
        let want = engine
            .predict_u8_early_exit::<10>(&pixels, Mode::MonteCarlo { samples }, halting, &mut rng)
            .unwrap();
        let policy = TbHalting {
            kind,
            exits: 0,
            measure: 0,
            threshold: 0.05,
            prior: std::ptr::null(),
            prior_len: 0,
        };
        let mut rng = TbRng { state: [0; 4] };
        let mut got = TbResult::default();
        // SAFETY: valid pointers for the call.
        let status = unsafe {
            tb_rng_seed(&mut rng, 11);
            tb_predict_early_exit_u8(
                &mut *c_engine,
                pixels.as_ptr(),
                pixels.len(),
                TbMode {
                    kind: TB_MODE_MONTE_CARLO,
                    samples: 6,
                },
                &policy,
                &mut rng,
                &mut got,
            )
        };
        assert_eq!(status, TbStatus::Ok);
        assert_eq!(
            (got.exit as usize, got.depth as usize, got.macs as usize),
            (want.exit, want.depth, want.macs)
        );
        let want_bits: Vec<u32> = want
            .prediction
            .probabilities
            .iter()
            .map(|p| p.to_bits())
            .collect();
        let got_bits: Vec<u32> = got.probabilities[..10]
            .iter()
            .map(|p| p.to_bits())
            .collect();
        assert_eq!(got_bits, want_bits, "policy {kind}");
        assert_eq!(
            got.mutual_information.to_bits(),
            want.prediction.mutual_information.to_bits()
        );
    }
}

#[test]
fn every_status_has_a_distinct_name_with_its_code() {
    let mut seen = std::collections::HashSet::new();
    for status in TbStatus::ALL {
        let name = unsafe { CStr::from_ptr(tb_status_name(status as i32)) }
            .to_str()
            .unwrap();
        assert!(name.starts_with("TB_STATUS_"), "{name}");
        let tag = name.split(':').next().unwrap();
        assert!(seen.insert(tag.to_string()), "two codes named {tag}");
        let header = include_str!("../include/tinybayes.h");
        assert!(
            header.contains(&format!("{tag} = {},", status as i32)),
            "{tag} is not {} in the header",
            status as i32
        );
    }
    assert_eq!(seen.len(), TbStatus::ALL.len());
}
