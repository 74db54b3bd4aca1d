//! End to end, a `[[layers]]` network with a global average pool (conv -> ReLU -> gap ->
//! linear) through the built binary: trained for two epochs on a tiny synthetic u8 `.npz`,
//! exported in f32, q8 and q16 (format version 10), inspected; the f32 engine gives the
//! trainer's own mean-weights probabilities, and q8/q16 stay within the fixed-point
//! tolerances of the f32 engine (the ones `tests/fixed_conv.rs` holds convolutions to).

use std::fs::{self, File};
use std::path::Path;

use ndarray::{Array, Array1, Array2, Array4};
use ndarray_npy::NpzWriter;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::{LayerKind, Precision, GAP_FORMAT_VERSION};
use tinybayes::numeric::FixedPoint;
use tinybayes::writer::ModelBuffer;
use tinybayes::{Engine, Mode, Model, Prediction, Q16, Q8};
use tinybayes_host::train::{TrainedLayer, Trainer};

mod common;
use common::{p, stderr, stdout, tinybayes};

const SIDE: usize = 8;

/// `n` 8x8 u8 images of 3 classes: horizontal stripes, vertical stripes, or a flat grey,
/// with a little noise; a convolution sees the orientation, and the pool keeps it.
fn synthetic(n: usize, seed: usize) -> (Array4<u8>, Array1<u8>) {
    let labels = Array1::from_shape_fn(n, |i| ((i + seed) % 3) as u8);
    let x = Array::from_shape_fn((n, 1, SIDE, SIDE), |(i, _, r, c)| {
        let noise = ((i * 31 + r * 7 + c * 13 + seed) % 17) as i32 - 8;
        let base = match (i + seed) % 3 {
            0 if r % 2 == 0 => 220,
            1 if c % 2 == 0 => 220,
            2 => 120,
            _ => 30,
        };
        (base + noise).clamp(0, 255) as u8
    });
    (x, labels)
}

fn write_npz(path: &Path) {
    let mut w = NpzWriter::new(File::create(path).unwrap());
    let (x, y) = synthetic(90, 0);
    w.add_array("x_train", &x).unwrap();
    w.add_array("y_train", &y).unwrap();
    let (x, y) = synthetic(12, 1);
    w.add_array("x_test", &x).unwrap();
    w.add_array("y_test", &y).unwrap();
    w.finish().unwrap();
}

const CONFIG: &str = r#"
epochs = 2
batch_size = 10
val_size = 10
lr = 0.01

[[layers]]
kind = "conv"
outputs = 6
kernel = 3
padding = 1

[[layers]]
kind = "gap"

[[layers]]
kind = "linear"
"#;

fn version(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[4], bytes[5]])
}

/// The mean-weights prediction of a fixed-point model on raw bytes.
fn run_fixed<N: FixedPoint>(model: &QModel<'_>, raw: &[u8]) -> Vec<f32> {
    let mut ws = vec![0u64; model.workspace_len(4)];
    let mut engine = Engine::<4, N>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
    let q: QPrediction<4> = engine.predict_u8(raw, Mode::MeanWeights, &mut rng).unwrap();
    q.probabilities.iter().take(3).map(|v| v.to_f32()).collect()
}

#[test]
fn a_gap_network_trains_exports_and_runs_like_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("set.npz");
    write_npz(&data);
    let config = dir.path().join("gap.toml");
    fs::write(&config, CONFIG).unwrap();
    let run = dir.path().join("run");
    let out = tinybayes(&[
        "train",
        "--config",
        p(&config),
        "--data",
        p(&data),
        "--out",
        p(&run),
        "-v",
    ]);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("global average pool 6x8x8 -> 6"),
        "{}",
        stderr(&out)
    );
    let net = Trainer::load_network(&run).unwrap();
    assert_eq!(net.layers[1], TrainedLayer::GlobalAvgPool);

    // f32: the engine on raw bytes against the trainer's pruned mean-weights network on the
    // same examples normalised as it trains (u8 data: x / 255).
    let f32_path = dir.path().join("m.tbm");
    let out = tinybayes(&["export", "--run", p(&run), "--out", p(&f32_path)]);
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let buffer = ModelBuffer::from_bytes(&fs::read(&f32_path).unwrap());
    assert_eq!(version(buffer.as_bytes()), GAP_FORMAT_VERSION);
    let model = Model::from_bytes(buffer.as_bytes()).unwrap();
    assert_eq!(model.layers()[1].kind(), LayerKind::GlobalAvgPool);
    let (x, _) = synthetic(12, 1);
    let raw: Vec<Vec<u8>> = x
        .outer_iter()
        .map(|e| e.iter().copied().collect())
        .collect();
    let rows = Array2::from_shape_fn((raw.len(), SIDE * SIDE), |(i, j)| raw[i][j] as f32 / 255.0);
    let reference = net.predict_deterministic(&rows);
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 4).workspace_len()];
    let mut engine = Engine::<4>::new(&model, &mut ws).unwrap();
    let mut float = Vec::new();
    for (i, example) in raw.iter().enumerate() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
        let p: Prediction<3> = engine
            .predict_u8(example, Mode::MeanWeights, &mut rng)
            .unwrap();
        for k in 0..3 {
            assert!(
                (p.probabilities[k] - reference[[i, k]]).abs() < 1e-4,
                "example {i} class {k}: engine {} vs trainer {}",
                p.probabilities[k],
                reference[[i, k]]
            );
        }
        float.push(p.probabilities);
    }
    // The trained network is not constant: the check compares something.
    let spread = reference
        .column(0)
        .iter()
        .fold((1.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(spread.1 - spread.0 > 1e-3, "{spread:?}");

    let out = tinybayes(&["inspect", "--model", p(&f32_path)]);
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    assert!(stdout(&out).contains("global-avgpool"), "{}", stdout(&out));

    // q8 and q16, calibrated on the training examples: within the tolerances of the
    // fixed-point convolutions against f32 (mean weights: 0.05 for q8, 0.01 for q16).
    for (precision, name, tolerance) in [(Precision::Q8, "q8", 0.05), (Precision::Q16, "q16", 0.01)]
    {
        let path = dir.path().join(format!("m-{name}.tbm"));
        let out = tinybayes(&[
            "export",
            "--run",
            p(&run),
            "--precision",
            name,
            "--calibration-data",
            p(&data),
            "--out",
            p(&path),
        ]);
        assert!(
            out.status.success(),
            "{name} export failed: {}",
            stderr(&out)
        );
        let buffer = ModelBuffer::from_bytes(&fs::read(&path).unwrap());
        assert_eq!(version(buffer.as_bytes()), GAP_FORMAT_VERSION);
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        assert_eq!(model.precision(), precision);
        assert_eq!(model.layers()[1].kind(), LayerKind::GlobalAvgPool);
        let out = tinybayes(&["inspect", "--model", p(&path)]);
        assert!(stdout(&out).contains("global-avgpool"), "{}", stdout(&out));
        for (i, example) in raw.iter().enumerate() {
            let got = match precision {
                Precision::Q16 => run_fixed::<Q16>(&model, example),
                _ => run_fixed::<Q8>(&model, example),
            };
            for k in 0..3 {
                assert!(
                    (got[k] - float[i][k]).abs() < tolerance,
                    "{name} example {i} class {k}: {} vs f32 {}",
                    got[k],
                    float[i][k]
                );
            }
        }
    }
}
