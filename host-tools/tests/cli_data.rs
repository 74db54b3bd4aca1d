//! End-to-end tests of data files (`--data FILE.npz|.npy|.csv`) through the built binary:
//! train on a tiny synthetic f32 set, export, evaluate and predict on its test split; and the
//! one-line refusals of data whose shape does not fit.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Output;

use ndarray::{Array, Array1, Array4};
use ndarray_npy::{NpzWriter, WriteNpyExt};

mod common;
use common::{p, stderr, stdout, tinybayes};

/// Fails unless the command failed with exactly one line on stderr containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure, got success");
    let err = stderr(out);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

/// `n` 28x28 f32 "images" of 3 classes in sensor-like units (around 40, spread about 6):
/// a class-specific band of rows is raised.
fn synthetic(n: usize, seed: usize) -> (Array4<f32>, Array1<u8>) {
    let labels = Array1::from_shape_fn(n, |i| ((i + seed) % 3) as u8);
    let x = Array::from_shape_fn((n, 1, 28, 28), |(i, _, r, c)| {
        let class = (i + seed) % 3;
        let band = r / 10 == class;
        let noise = (((i * 31 + r * 7 + c * 13) % 11) as f32 - 5.0) * 0.3;
        40.0 + if band { 9.0 } else { -3.0 } + noise
    });
    (x, labels)
}

fn write_npz(path: &Path, train: usize, test: Option<usize>) {
    write_shifted_npz(path, train, test, 0.0);
}

/// [`write_npz`] with every value shifted by `shift` (-40: signed readings around zero).
fn write_shifted_npz(path: &Path, train: usize, test: Option<usize>, shift: f32) {
    let mut w = NpzWriter::new(File::create(path).unwrap());
    let (x, y) = synthetic(train, 0);
    w.add_array("x_train", &x.mapv(|v| v + shift)).unwrap();
    w.add_array("y_train", &y).unwrap();
    if let Some(n) = test {
        let (x, y) = synthetic(n, 1);
        w.add_array("x_test", &x.mapv(|v| v + shift)).unwrap();
        w.add_array("y_test", &y).unwrap();
    }
    w.finish().unwrap();
}

fn small_config(dir: &Path) -> PathBuf {
    let path = dir.join("small.toml");
    fs::write(
        &path,
        "arch = \"lenet300\"\nval_size = 10\nbatch_size = 10\n",
    )
    .unwrap();
    path
}

#[test]
fn train_export_eval_predict_on_an_npz() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("set.npz");
    write_npz(&data, 60, Some(21));
    let run = dir.path().join("run");
    let config = small_config(dir.path());
    let out = tinybayes(&[
        "train",
        "--config",
        p(&config),
        "--epochs",
        "1",
        "--data",
        p(&data),
        "--out",
        p(&run),
        "-v",
    ]);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("60 training examples of 1x28x28 f32, 3 classes, 21 test examples"),
        "{err}"
    );
    // The fitted normalisation is stored in the run's configuration: f32 data standardised.
    let saved: toml::Table = fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let norm = saved["normalization"].as_table().unwrap();
    assert_eq!(norm["mode"].as_str(), Some("standardize"));
    assert_eq!(norm["bytes"].as_bool(), Some(false));
    let scale = norm["scale"].as_array().unwrap()[0].as_float().unwrap();
    let offset = norm["offset"].as_array().unwrap()[0].as_float().unwrap();
    // Mean about 40 and spread about 6 in the raw units: scale ~ 1/6, offset ~ -40/6.
    assert!((0.1..0.3).contains(&scale), "{scale}");
    assert!((-10.0..-4.0).contains(&offset), "{offset}");

    let model = dir.path().join("m.tbm");
    let out = tinybayes(&["export", "--run", p(&run), "--out", p(&model)]);
    assert!(out.status.success(), "export failed: {}", stderr(&out));

    let report = dir.path().join("report");
    let out = tinybayes(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--report",
        p(&report),
        "--json",
    ]);
    assert!(out.status.success(), "eval failed: {}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["count"].as_u64(), Some(21), "{json}");
    // The bands are easy to tell apart; the engine fed the raw values normalises them with
    // the pair stored in the model.
    assert!(json["accuracy"].as_f64().unwrap() >= 0.9, "{json}");

    let csv = dir.path().join("pred.csv");
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&csv),
    ]);
    assert!(out.status.success(), "predict failed: {}", stderr(&out));
    let text = fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.ends_with(",label"), "{header}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 21);
    // The test split's labels, in order.
    let (_, y) = synthetic(21, 1);
    for (row, want) in rows.iter().zip(y.iter()) {
        assert!(row.ends_with(&format!(",{want}")), "{row}");
    }

    // A set of 14x56 examples is not the model's 28x28 input, whatever its length.
    let wide = dir.path().join("wide.npz");
    let mut w = NpzWriter::new(File::create(&wide).unwrap());
    w.add_array("x_train", &Array4::<f32>::zeros((4, 1, 14, 56)))
        .unwrap();
    w.add_array("y_train", &Array1::<u8>::zeros(4)).unwrap();
    w.finish().unwrap();
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--data",
        p(&wide),
        "--out",
        p(&dir.path().join("w.csv")),
    ]);
    assert_one_line_error(
        &out,
        "the data's examples are 1x14x56 but the model's input is 1x28x28",
    );
    let out = tinybayes(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&wide),
        "--report",
        p(&dir.path().join("r2")),
    ]);
    assert_one_line_error(&out, "1x14x56 but the model's input is 1x28x28");
}

#[test]
fn data_that_does_not_fit_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Vectors: the built-in architectures take 28x28 images only.
    let x = dir.path().join("x.npy");
    Array::from_shape_fn((30, 20), |(i, j)| (i * j) as f32)
        .write_npy(File::create(&x).unwrap())
        .unwrap();
    let y = dir.path().join("y.npy");
    Array1::from_shape_fn(30, |i| (i % 4) as i64)
        .write_npy(File::create(&y).unwrap())
        .unwrap();
    let out = tinybayes(&[
        "train",
        "--data",
        p(&x),
        "--labels",
        p(&y),
        "--out",
        p(&run),
    ]);
    assert_one_line_error(
        &out,
        "data has 1x1x20 examples and 4 classes; lenet300 needs 1x28x28 inputs",
    );
    // A .npy without labels.
    let out = tinybayes(&["train", "--data", p(&x), "--out", p(&run)]);
    assert_one_line_error(&out, "the training examples have no labels");
    // A CSV with a NaN.
    let csv = dir.path().join("t.csv");
    fs::write(&csv, "a,b,label\n1,2,0\n3,nan,1\n").unwrap();
    let out = tinybayes(&["train", "--data", p(&csv), "--out", p(&run)]);
    assert_one_line_error(&out, "example 1 has a non-finite value (NaN) at position 1");
    // A missing file and an unknown format.
    let out = tinybayes(&[
        "train",
        "--data",
        p(&dir.path().join("none.npz")),
        "--out",
        p(&run),
    ]);
    assert_one_line_error(&out, "cannot read");
    let odd = dir.path().join("data.parquet");
    fs::write(&odd, "x").unwrap();
    let out = tinybayes(&["train", "--data", p(&odd), "--out", p(&run)]);
    assert_one_line_error(&out, "unknown data format");
    // An unknown normalisation mode.
    let out = tinybayes(&[
        "train",
        "--data",
        p(&x),
        "--normalize",
        "zscore",
        "--out",
        p(&run),
    ]);
    assert_one_line_error(&out, "--normalize: unknown mode \"zscore\"");
    assert!(stdout(&out).is_empty());
}

/// Signed readings (around zero) trained with `normalize = "scale"` export to q8 from the f32
/// data: the file reads signed 8-bit codes (inspect says so), evaluates on the f32 data within
/// a point or two of the f32 model, and predicts. A model standardised (non-zero offsets)
/// cannot be quantized, with a one-line reason naming the fix; a q8 model of bytes refuses f32
/// data in one line.
#[test]
fn scale_normalised_f32_data_exports_to_q8_that_reads_signed_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("signed.npz");
    write_shifted_npz(&data, 60, Some(21), -40.0);
    let train = |normalize: &str, run: &Path| {
        let config = dir.path().join(format!("{normalize}.toml"));
        fs::write(
            &config,
            format!(
                "arch = \"lenet300\"\nval_size = 10\nbatch_size = 10\nnormalize = \"{normalize}\"\n"
            ),
        )
        .unwrap();
        let out = tinybayes(&[
            "train",
            "--config",
            p(&config),
            "--epochs",
            "1",
            "--data",
            p(&data),
            "--out",
            p(run),
        ]);
        assert!(out.status.success(), "train failed: {}", stderr(&out));
    };
    let run = dir.path().join("run");
    train("scale", &run);
    let f32_model = dir.path().join("m.tbm");
    let q8_model = dir.path().join("m-q8.tbm");
    let out = tinybayes(&["export", "--run", p(&run), "--out", p(&f32_model)]);
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let out = tinybayes(&[
        "export",
        "--run",
        p(&run),
        "--out",
        p(&q8_model),
        "--precision",
        "q8",
        "--calibration-data",
        p(&data),
    ]);
    assert!(out.status.success(), "q8 export failed: {}", stderr(&out));
    let out = tinybayes(&["inspect", "--model", p(&q8_model)]);
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    // The largest calibration reading is about 9 + 1.5 from zero: a step near 10.5 / 127.
    let text = stdout(&out);
    assert!(
        text.contains("input: signed 8-bit codes q, raw value p = q * 0.0"),
        "{text}"
    );
    let accuracy = |model: &Path| {
        let out = tinybayes(&[
            "eval",
            "--model",
            p(model),
            "--data",
            p(&data),
            "--report",
            p(&model.with_extension("report")),
            "--json",
        ]);
        assert!(out.status.success(), "eval failed: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["accuracy"].as_f64().unwrap()
    };
    let (a32, a8) = (accuracy(&f32_model), accuracy(&q8_model));
    assert!(a32 >= 0.9 && (a32 - a8).abs() <= 0.1, "f32 {a32}, q8 {a8}");
    // The same test split under other names, picked by --data-keys.
    let renamed = dir.path().join("renamed.npz");
    let mut w = NpzWriter::new(File::create(&renamed).unwrap());
    let (x, y) = synthetic(21, 1);
    w.add_array("X_val", &x.mapv(|v| v - 40.0)).unwrap();
    w.add_array("y_val", &y).unwrap();
    w.finish().unwrap();
    let out = tinybayes(&[
        "eval",
        "--model",
        p(&q8_model),
        "--data",
        p(&renamed),
        "--data-keys",
        "x_train=X_val,y_train=y_val",
        "--report",
        p(&dir.path().join("renamed-report")),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "eval --data-keys failed: {}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["count"].as_u64(), Some(21), "{json}");
    assert!(
        (json["accuracy"].as_f64().unwrap() - a8).abs() < 1e-9,
        "{json}"
    );
    let csv = dir.path().join("pred.csv");
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&q8_model),
        "--data",
        p(&data),
        "--out",
        p(&csv),
    ]);
    assert!(out.status.success(), "predict failed: {}", stderr(&out));
    assert_eq!(fs::read_to_string(&csv).unwrap().lines().count(), 22);

    // --input-step: a positive step, for f32 calibration data only.
    let bad_model = dir.path().join("bad.tbm");
    let q8_with = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--run",
            p(&run),
            "--out",
            p(&bad_model),
            "--precision",
            "q8",
        ];
        args.extend_from_slice(extra);
        tinybayes(&args)
    };
    for bad in ["0", "-1", "nan", "inf"] {
        // clap's own error: the reason, then its pointer to --help.
        let out = q8_with(&["--calibration-data", p(&data), "--input-step", bad]);
        assert!(!out.status.success(), "{bad}");
        let err = stderr(&out);
        assert!(
            err.contains("--input-step must be a finite positive number"),
            "{err}"
        );
    }
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/mnist/train-images-idx3-ubyte.gz");
    if mnist.is_file() {
        let out = q8_with(&["--calibration-images", p(&mnist), "--input-step", "0.01"]);
        assert_one_line_error(&out, "--input-step applies to f32 calibration data");
    }
    assert!(!bad_model.exists());
    // Standardised: offsets that fixed point cannot fold.
    let std_run = dir.path().join("std");
    train("standardize", &std_run);
    let out = tinybayes(&[
        "export",
        "--run",
        p(&std_run),
        "--out",
        p(&dir.path().join("s.tbm")),
        "--precision",
        "q8",
        "--calibration-data",
        p(&data),
    ]);
    assert_one_line_error(&out, "train with normalize = \"scale\"");
    // A q8 model of bytes (MNIST's) does not take f32 data.
    let bytes_model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/lenet300-q8.tbm");
    let out = tinybayes(&[
        "eval",
        "--model",
        p(&bytes_model),
        "--data",
        p(&data),
        "--report",
        p(&dir.path().join("r3")),
    ]);
    assert_one_line_error(&out, "reads unsigned bytes");
}
