//! MC dropout through the built binary: `train --dropout` on a tiny synthetic set, `export`
//! (a Bernoulli posterior, format version 8), `inspect`, `eval` in every mode, a q8 export,
//! and the one-line errors for bad drop probabilities.

use std::fs;
use std::path::Path;

use serde_json::Value;

mod common;
use common::{idx, p, stderr, tinybayes};

/// `n` 28x28 images of 4 classes, each class a bright 8x8 block in its own quadrant plus a
/// little seeded noise, as IDX image and label files in `dir`.
fn synthetic_set(dir: &Path, name: &str, n: usize, seed: u32) -> (String, String) {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let class = i % 4;
        let (oy, ox) = (4 + 12 * (class / 2), 4 + 12 * (class % 2));
        for y in 0..28 {
            for x in 0..28 {
                let inside = (oy..oy + 8).contains(&y) && (ox..ox + 8).contains(&x);
                let noise = (next() % 40) as u8;
                pixels.push(if inside {
                    200 + noise
                } else if noise < 4 {
                    90
                } else {
                    0
                });
            }
        }
        labels.push(class as u8);
    }
    let images = dir.join(format!("{name}-images.idx"));
    let label_file = dir.join(format!("{name}-labels.idx"));
    fs::write(&images, idx(&[n as u32, 28, 28], &pixels)).unwrap();
    fs::write(&label_file, idx(&[n as u32], &labels)).unwrap();
    (p(&images).to_string(), p(&label_file).to_string())
}

fn eval_report(dir: &Path, model: &Path, images: &str, labels: &str, mode: &[&str]) -> Value {
    let report = dir.join(format!("report-{}", mode.join("-")));
    let mut args = vec![
        "eval",
        "--model",
        p(model),
        "--images",
        images,
        "--labels",
        labels,
        "--report",
        p(&report),
    ];
    args.extend_from_slice(mode);
    let out = tinybayes(&args);
    assert!(out.status.success(), "eval {mode:?}: {}", stderr(&out));
    serde_json::from_str(&fs::read_to_string(report.join("report.json")).unwrap()).unwrap()
}

#[test]
fn dropout_train_export_eval_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = synthetic_set(dir.path(), "train", 240, 1);
    let (test_images, test_labels) = synthetic_set(dir.path(), "test", 80, 2);
    let config = dir.path().join("c.toml");
    // The flag overrides the file's probabilities.
    fs::write(
        &config,
        "arch = \"lenet300\"\nval_size = 40\nepochs = 3\ndropout = [0.5, 0.5, 0.5]\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = tinybayes(&[
        "train",
        "--config",
        p(&config),
        "--dropout",
        "0.1,0.4,0.3",
        "--images",
        &images,
        "--labels",
        &labels,
        "--out",
        p(&run),
    ]);
    assert!(out.status.success(), "train: {}", stderr(&out));
    let saved = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("dropout = [0.1, 0.4, 0.3]"), "{saved}");

    let model = dir.path().join("m.tbm");
    let out = tinybayes(&["export", "--run", p(&run), "--out", p(&model)]);
    assert!(out.status.success(), "export: {}", stderr(&out));
    let bytes = fs::read(&model).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 8);
    let out = tinybayes(&["inspect", "--model", p(&model), "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report["layers"].as_array().unwrap();
    for (layer, p) in layers.iter().zip(["0.1", "0.4", "0.3"]) {
        assert_eq!(layer["posterior"], format!("bernoulli (p {p})"));
    }
    // Dense weights: nothing pruned.
    assert_eq!(report["nnz"], 266_200);

    // Every mode runs; the synthetic task is learnt; sampling disagrees, the mean does not.
    let mc = eval_report(
        dir.path(),
        &model,
        &test_images,
        &test_labels,
        &["--samples", "8"],
    );
    let mean = eval_report(
        dir.path(),
        &model,
        &test_images,
        &test_labels,
        &["--mode", "mean"],
    );
    let moments = eval_report(
        dir.path(),
        &model,
        &test_images,
        &test_labels,
        &["--mode", "moments"],
    );
    for r in [&mc, &mean, &moments] {
        assert!(r["accuracy"].as_f64().unwrap() > 0.9, "{}", r["accuracy"]);
    }
    let mi = |r: &Value| r["uncertainty"]["correct"]["mutual_information"]["mean"].as_f64();
    assert!(mi(&mc).unwrap() > 0.0);
    assert_eq!(mi(&mean), Some(0.0));

    // A q8 export of the same run runs in the integer engine and agrees.
    let q8 = dir.path().join("m-q8.tbm");
    let out = tinybayes(&[
        "export",
        "--run",
        p(&run),
        "--precision",
        "q8",
        "--calibration-images",
        &images,
        "--out",
        p(&q8),
    ]);
    assert!(out.status.success(), "q8 export: {}", stderr(&out));
    let q8_mc = eval_report(
        dir.path(),
        &q8,
        &test_images,
        &test_labels,
        &["--samples", "8", "--precision", "q8"],
    );
    let gap = (q8_mc["accuracy"].as_f64().unwrap() - mc["accuracy"].as_f64().unwrap()).abs();
    assert!(
        gap <= 0.05,
        "q8 {} vs f32 {}",
        q8_mc["accuracy"],
        mc["accuracy"]
    );
}

#[test]
fn bad_drop_probabilities_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = synthetic_set(dir.path(), "train", 8, 3);
    let run = dir.path().join("run");
    for (flags, needle) in [
        (vec!["--dropout", "1.0,0.5,0.5"], "outside [0, 1)"),
        (vec!["--dropout", "0.2,-0.1,0.5"], "outside [0, 1)"),
        (vec!["--dropout", "0.2,0.5,nan"], "outside [0, 1)"),
        (
            vec!["--dropout", "0.2,0.5"],
            "one probability per weight layer",
        ),
        (
            vec!["--arch", "lenet5", "--dropout", "0.2,0.5,0.5"],
            "linear-only",
        ),
    ] {
        let mut args = vec!["train", "--images", &images, "--labels", &labels, "--out"];
        args.push(p(&run));
        args.extend(flags.iter().copied());
        let out = tinybayes(&args);
        assert!(!out.status.success(), "{flags:?} succeeded");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{flags:?}: {err:?}");
        assert!(err.contains(needle), "{flags:?}: {err:?}");
        assert!(!run.exists(), "{flags:?} created the run directory");
    }
}
