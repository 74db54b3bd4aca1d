//! `tinybayes adapt` through the built binary: the adapted model is written and evaluates,
//! K = 0 leaves the predictive unchanged, `--report` writes the curve, and bad input gets one
//! line and a non-zero exit.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array3};
use ndarray_npy::NpzWriter;
use tinybayes::writer::ModelBuffer;

mod common;
use common::{p, stderr, stdout, tinybayes};

/// The shipped HMP model trained without volunteer m1 (input 3 x 128 raw g values, 14
/// classes).
fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/hmp-conv1d-m1out.tbm")
}

/// Accelerometer-like windows: a per-class tilt of the three axes plus a class-dependent
/// oscillation, in g.
fn windows(n: usize, seed: usize, flip: bool) -> (Array3<f32>, Array1<u8>) {
    let labels = Array1::from_shape_fn(n, |i| ((i * 5 + seed) % 14) as u8);
    let x = Array3::from_shape_fn((n, 3, 128), |(i, c, t)| {
        let class = labels[i] as f32;
        let tilt = ((class + 1.0) * (c as f32 + 1.0) * 0.37).sin();
        let wave = (t as f32 * 0.05 * (1.0 + class * 0.2) + i as f32).sin() * 0.3;
        let v = (0.8 * tilt + wave).clamp(-1.5, 1.5);
        if flip && c < 2 {
            -v
        } else {
            v
        }
    });
    (x, labels)
}

fn write_npz(path: &Path, train: usize, test: Option<usize>, label_shift: u8) {
    let mut w = NpzWriter::new(File::create(path).unwrap());
    let (x, mut y) = windows(train, 0, true);
    y.mapv_inplace(|l| l + label_shift);
    w.add_array("x_train", &x).unwrap();
    w.add_array("y_train", &y).unwrap();
    if let Some(n) = test {
        let (x, y) = windows(n, 3, true);
        w.add_array("x_test", &x).unwrap();
        w.add_array("y_test", &y).unwrap();
    }
    w.finish().unwrap();
}

/// The probability columns of a `predict` CSV.
fn probabilities(csv: &str) -> Vec<Vec<f32>> {
    csv.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .skip(2)
                .take(14)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn adapt_writes_a_model_that_learnt_and_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("wearer.npz");
    write_npz(&data, 60, Some(28), 0);
    let out = dir.path().join("adapted.tbm");
    let report = dir.path().join("report");
    let run = tinybayes(&[
        "adapt",
        "--model",
        p(&model()),
        "--data",
        p(&data),
        "--count",
        "40",
        "--prior-scale",
        "300",
        "--bias-variance",
        "1",
        "--likelihood",
        "label",
        "--samples",
        "8",
        "--out",
        p(&out),
        "--report",
        p(&report),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    // The curve: K = 0, 5, 10, 20, 40, in the table and the JSON; the plot is a PNG.
    let table = stdout(&run);
    for k in ["     0 ", "     5 ", "    10 ", "    20 ", "    40 "] {
        assert!(table.contains(k), "{table}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("adapt.json")).unwrap()).unwrap();
    let curve = json["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 5);
    assert_eq!(json["eval_count"], 28);
    assert_eq!(json["likelihood"], "label");
    let png = std::fs::read(report.join("adapt.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Learning from 40 examples of this easy synthetic "wearer" helps on its held-out
    // windows: lower NLL than the model as exported, and less epistemic uncertainty.
    let (first, last) = (&curve[0], &curve[4]);
    assert!(last["nll"].as_f64() < first["nll"].as_f64(), "{json}");
    assert!(
        last["mutual_information"].as_f64() < first["mutual_information"].as_f64(),
        "{json}"
    );
    // The adapted file is an ordinary model: it loads, inspects and evaluates.
    let bytes = std::fs::read(&out).unwrap();
    let buffer = ModelBuffer::from_bytes(&bytes);
    let adapted = buffer.model().unwrap();
    assert_eq!(adapted.num_classes(), 14);
    let eval = tinybayes(&[
        "eval",
        "--model",
        p(&out),
        "--data",
        p(&data),
        "--samples",
        "8",
        "--report",
        p(&dir.path().join("eval")),
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    // Nothing is overwritten without --force.
    let again = tinybayes(&[
        "adapt",
        "--model",
        p(&model()),
        "--data",
        p(&data),
        "--count",
        "1",
        "--out",
        p(&out),
    ]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
}

#[test]
fn adapting_on_no_examples_leaves_the_predictive_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("wearer.npz");
    write_npz(&data, 20, Some(10), 0);
    let out = dir.path().join("same.tbm");
    let run = tinybayes(&[
        "adapt",
        "--model",
        p(&model()),
        "--data",
        p(&data),
        "--count",
        "0",
        "--out",
        p(&out),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let predict = |m: &Path| {
        let out = tinybayes(&[
            "predict",
            "--model",
            p(m),
            "--data",
            p(&data),
            "--samples",
            "16",
            "--out",
            "-",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        probabilities(&stdout(&out))
    };
    let (a, b) = (predict(&model()), predict(&out));
    assert_eq!(a.len(), 10);
    for (x, y) in a.iter().zip(&b) {
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() < 1e-4, "{x:?} vs {y:?}");
        }
    }
}

#[test]
fn bad_input_gets_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("wearer.npz");
    write_npz(&data, 12, None, 0);
    let bad_labels = dir.path().join("labels.npz");
    write_npz(&bad_labels, 12, None, 14);
    let out = dir.path().join("a.tbm");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let hmp = model();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--count".into(), "13".into()], "--count 13 but"),
        (
            vec![
                "--count".into(),
                "2".into(),
                "--prior-scale".into(),
                "0".into(),
            ],
            "prior scale",
        ),
        (
            vec![
                "--count".into(),
                "2".into(),
                "--likelihood".into(),
                "label".into(),
                "--smoothing".into(),
                "1".into(),
            ],
            "smoothing",
        ),
        (
            vec![
                "--count".into(),
                "2".into(),
                "--report".into(),
                p(&dir.path().join("r")).into(),
            ],
            "held-out data",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "adapt",
            "--model",
            p(&hmp),
            "--data",
            p(&data),
            "--out",
            p(&out),
        ];
        args.extend(extra.iter().map(String::as_str));
        let run = tinybayes(&args);
        assert!(!run.status.success(), "{args:?}");
        let err = stderr(&run);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    for (file, expected) in [
        ("hmp-conv1d-q8.tbm", "adapt updates f32 models"),
        ("lenet300-mcdropout.tbm", "no Gaussian posterior"),
        ("resnet-ee.tbm", "not a linear layer of a plain network"),
    ] {
        let run = tinybayes(&[
            "adapt",
            "--model",
            p(&models.join(file)),
            "--data",
            p(&data),
            "--count",
            "1",
            "--out",
            p(&out),
        ]);
        let err = stderr(&run);
        assert!(
            !run.status.success() && err.contains(expected),
            "{file}: {err}"
        );
    }
    let run = tinybayes(&[
        "adapt",
        "--model",
        p(&model()),
        "--data",
        p(&bad_labels),
        "--count",
        "1",
        "--out",
        p(&out),
    ]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("number of classes"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_state_saved_on_the_device_comes_back_as_the_adapted_model() {
    use tinybayes::adapt::flash::RamFlash;
    use tinybayes::adapt::store::Store;
    use tinybayes::adapt::{LastLayer, Likelihood, Settings};
    use tinybayes::writer::ModelSpec;
    use tinybayes::Model;

    let dir = tempfile::tempdir().unwrap();
    let hmp = model();
    let bytes = std::fs::read(&hmp).unwrap();
    let buffer = ModelBuffer::from_bytes(&bytes);
    let base = buffer.model().unwrap();
    let settings = Settings {
        prior_scale: 300.0,
        bias_variance: 1.0,
        likelihood: Likelihood::LabelRegression {
            smoothing: 0.1,
            noise: 1.0,
        },
    };
    // What a device does: updates, then a save into its flash region (8 KB pages here).
    let mut state = vec![0.0f32; LastLayer::state_len(&base).unwrap()];
    let mut layer = LastLayer::new(&base, settings, &mut state).unwrap();
    for i in 0..30 {
        let phi: Vec<f32> = (0..layer.features())
            .map(|j| ((i * 7 + j * 3) % 11) as f32 * 0.2)
            .collect();
        layer.update(&phi, i % 14).unwrap();
    }
    let mut region = vec![0u8; 65536];
    let flash = RamFlash::<1, 8192>::erased(&mut region);
    let mut store = Store::new(flash, 0, 65536, &layer).unwrap();
    store.save(&layer).unwrap();
    let dump = dir.path().join("flash.bin");
    std::fs::write(&dump, &region).unwrap();
    // The adapted model it stands for.
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let mut words = vec![0u32; layer.head_len()];
    let head = Model::from_bytes(layer.write_head(&mut scratch, &mut words).unwrap()).unwrap();
    let mut spec = ModelSpec::from_model(&base.with_head(&head).unwrap());
    spec.trained = None;
    let expected = spec.to_bytes().unwrap();

    let out = dir.path().join("from-device.tbm");
    let settings_args = [
        "--prior-scale",
        "300",
        "--bias-variance",
        "1",
        "--likelihood",
        "label",
    ];
    let mut args = vec![
        "adapt",
        "--model",
        p(&hmp),
        "--state",
        p(&dump),
        "--erase-size",
        "8192",
        "--out",
        p(&out),
    ];
    args.extend(settings_args);
    let run = tinybayes(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("30 examples"), "{}", stdout(&run));
    assert_eq!(std::fs::read(&out).unwrap(), expected);

    // Other settings, another erase size, a damaged dump: one line each, nothing written.
    let bad = dir.path().join("bad.tbm");
    let damaged = dir.path().join("damaged.bin");
    let mut bytes = std::fs::read(&dump).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    for (extra, file, expected) in [
        (vec!["--prior-scale", "30"], &dump, "other settings"),
        (
            [vec!["--erase-size", "3000"], settings_args.to_vec()].concat(),
            &dump,
            "--erase-size 3000",
        ),
        (settings_args.to_vec(), &damaged, "no valid stored state"),
    ] {
        let mut args = vec![
            "adapt",
            "--model",
            p(&hmp),
            "--state",
            p(file),
            "--out",
            p(&bad),
        ];
        args.extend(extra);
        let run = tinybayes(&args);
        let err = stderr(&run);
        assert!(
            !run.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!bad.exists());
    }
}
