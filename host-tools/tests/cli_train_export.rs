//! End-to-end tests of `tinybayes train`, `export` and `inspect` through the built binary: a
//! tiny run on the real MNIST training files, export, the report read back from the file,
//! `--resume`, and the refusals that protect a user's files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::{p, shared_data, stderr, tinybayes};

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

/// A config that keeps the run small: 300 training images, 200 for validation.
fn small_config(dir: &Path) -> PathBuf {
    let path = dir.join("small.toml");
    fs::write(
        &path,
        "arch = \"lenet300\"\nval_size = 200\ntrain_limit = 300\n",
    )
    .unwrap();
    path
}

#[test]
fn train_export_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = small_config(dir.path());
    let data = shared_data("mnist/train-images-idx3-ubyte.gz").join("mnist");
    let out = tinybayes(&[
        "train",
        "--config",
        p(&config),
        "--epochs",
        "2",
        "--seed",
        "3",
        "--data",
        p(&data),
        "--out",
        p(&run),
    ]);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("epoch   2/2"),
        "per-epoch lines expected: {stdout}"
    );
    let history: Value =
        serde_json::from_str(&fs::read_to_string(run.join("history.json")).unwrap()).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert!(run.join("config.toml").is_file());

    let model = dir.path().join("m.tbm");
    let out = tinybayes(&["export", "--run", p(&run), "--out", p(&model)]);
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let out = tinybayes(&["inspect", "--model", p(&model), "--json"]);
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[0]["kind"], "linear-sparse-by-input");
    assert_eq!(layers[0]["inputs"], 784);
    assert_eq!(layers[2]["outputs"], 10);
    for key in ["dense_params", "nnz", "flash_bytes", "ram_bytes"] {
        assert!(report[key].as_u64().unwrap() > 0, "{key}");
    }
    assert_eq!(
        report["flash_bytes"].as_u64().unwrap(),
        fs::metadata(&model).unwrap().len()
    );
    assert_eq!(report["precision"], "f32");
    // The file records the trained 784-300-100-10 network (format version 5), and the pruning
    // is reported against it as well as against the compacted layers.
    let model_bytes = fs::read(&model).unwrap();
    assert_eq!(u16::from_le_bytes([model_bytes[4], model_bytes[5]]), 5);
    assert_eq!(
        report["trained_dense_weights"],
        784 * 300 + 300 * 100 + 100 * 10
    );
    assert_eq!(report["trained_dense_params"], 266_200 + 300 + 100 + 10);
    let nnz = report["nnz"].as_f64().unwrap();
    let of_trained = report["pruned_of_trained"].as_f64().unwrap();
    assert!(
        (of_trained - (1.0 - nnz / 266_200.0)).abs() < 1e-12,
        "{of_trained}"
    );
    let exported: u64 = layers
        .iter()
        .map(|l| l["dense_weights"].as_u64().unwrap())
        .sum();
    let of_exported = report["pruned_of_exported"].as_f64().unwrap();
    assert!((of_exported - (1.0 - nnz / exported as f64)).abs() < 1e-12);
    let table = tinybayes(&["inspect", "--model", p(&model)]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("trained: 266200 weights (266610 parameters)"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{:.2}% of them pruned", 100.0 * of_trained)),
        "{table}"
    );

    // A q8 export, calibrated on the training images: about a quarter of the flash.
    let q8 = dir.path().join("m-q8.tbm");
    let train_images = data.join("train-images-idx3-ubyte.gz");
    let out = tinybayes(&[
        "export",
        "--run",
        p(&run),
        "--precision",
        "q8",
        "--calibration-images",
        p(&train_images),
        "--calibration-count",
        "200",
        "--out",
        p(&q8),
    ]);
    assert!(out.status.success(), "q8 export failed: {}", stderr(&out));
    let out = tinybayes(&["inspect", "--model", p(&q8), "--json"]);
    let q8_report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q8_report["precision"], "q8");
    assert_eq!(q8_report["trained_dense_weights"], 266_200);
    assert_eq!(q8_report["layers"][0]["kind"], "qlinear-sparse-by-input");
    assert!(
        q8_report["flash_bytes"].as_u64().unwrap() * 2 < report["flash_bytes"].as_u64().unwrap()
    );
    // A q8 file cannot run as f32.
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&q8),
        "--images",
        p(&train_images),
        "--precision",
        "f32",
        "--out",
        p(&dir.path().join("x.csv")),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is a q8 model"), "{}", stderr(&out));

    // The run is finished: resuming it trains nothing more and succeeds.
    let out = tinybayes(&["train", "--data", p(&data), "--out", p(&run), "--resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resuming"));
}

#[test]
fn nothing_a_user_has_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = small_config(dir.path());
    let data = shared_data("mnist/train-images-idx3-ubyte.gz").join("mnist");
    let args = [
        "train",
        "--config",
        p(&config),
        "--epochs",
        "1",
        "--data",
        p(&data),
        "--out",
        p(&run),
    ];
    assert!(tinybayes(&args).status.success());
    let checkpoint = fs::read(run.join("trainer.ckpt")).ok();
    // A second run into the same directory is refused without --resume or --force.
    assert_one_line_error(&tinybayes(&args), "--resume");
    assert_eq!(fs::read(run.join("trainer.ckpt")).ok(), checkpoint);
    // Export refuses an existing output, and leaves it untouched.
    let model = dir.path().join("m.tbm");
    fs::write(&model, b"precious").unwrap();
    assert_one_line_error(
        &tinybayes(&["export", "--run", p(&run), "--out", p(&model)]),
        "--force",
    );
    assert_eq!(fs::read(&model).unwrap(), b"precious");
    assert!(
        tinybayes(&["export", "--run", p(&run), "--out", p(&model), "--force"])
            .status
            .success()
    );
    assert_ne!(fs::read(&model).unwrap(), b"precious");
}

#[test]
fn bad_arguments_and_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data("mnist/train-images-idx3-ubyte.gz").join("mnist");
    let run = dir.path().join("run");
    // Unknown configuration field.
    let config = dir.path().join("bad.toml");
    fs::write(&config, "epochs = 2\nlearning_rat = 0.1\n").unwrap();
    assert_one_line_error(
        &tinybayes(&[
            "train",
            "--config",
            p(&config),
            "--data",
            p(&data),
            "--out",
            p(&run),
        ]),
        "learning_rat",
    );
    // Unknown architecture.
    assert_one_line_error(
        &tinybayes(&[
            "train",
            "--arch",
            "vgg",
            "--data",
            p(&data),
            "--out",
            p(&run),
        ]),
        "vgg",
    );
    // Images and labels that disagree in count.
    let images = data.join("train-images-idx3-ubyte.gz");
    let labels = data.join("t10k-labels-idx1-ubyte.gz");
    assert_one_line_error(
        &tinybayes(&[
            "train",
            "--images",
            p(&images),
            "--labels",
            p(&labels),
            "--out",
            p(&run),
        ]),
        "10000",
    );
    // A data directory without MNIST files.
    assert_one_line_error(
        &tinybayes(&["train", "--data", p(dir.path()), "--out", p(&run)]),
        "train-images-idx3-ubyte",
    );
    // Resuming nothing; exporting from a directory without a checkpoint.
    assert_one_line_error(
        &tinybayes(&["train", "--data", p(&data), "--out", p(&run), "--resume"]),
        "no checkpoint",
    );
    assert_one_line_error(
        &tinybayes(&[
            "export",
            "--run",
            p(dir.path()),
            "--out",
            p(&dir.path().join("m.tbm")),
        ]),
        "checkpoint",
    );
    // A model file that is not one.
    let junk = dir.path().join("junk.tbm");
    fs::write(&junk, vec![7u8; 100]).unwrap();
    assert_one_line_error(
        &tinybayes(&["inspect", "--model", p(&junk)]),
        "not a tinybayes model",
    );
    assert!(
        !run.join("trainer.ckpt").exists(),
        "no failed command may leave a run behind"
    );
}
