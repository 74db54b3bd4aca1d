//! The CLI as a new user meets it (issue 10): sizes checked against documented limits before
//! anything is allocated, one-line messages that say the truth once, no silent clamping.
//! Tiny synthetic models and IDX files only, so every test runs in well under a second.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{idx, p, stderr, stdout, tinybayes};

/// Fails unless the command exited with status 1 (an error, not a signal or a panic) and
/// printed exactly one line on stderr containing every needle.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit status 1 expected: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(err.starts_with("error: "), "{err:?}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

/// A synthetic model of `widths` with the given input shape, written into `dir`.
fn synth(dir: &Path, widths: &str, shape: &str) -> PathBuf {
    let model = dir.join(format!("m-{widths}-{shape}.tbm"));
    let out = tinybayes(&[
        "synth",
        "--widths",
        widths,
        "--input-shape",
        shape,
        "--density",
        "0.5",
        "--out",
        p(&model),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    model
}

/// `n` IDX images of `rows x cols` (pixels of a fixed pattern) in `dir`.
fn images(dir: &Path, n: u32, rows: u32, cols: u32) -> PathBuf {
    let path = dir.join(format!("images-{n}x{rows}x{cols}.idx"));
    let pixels: Vec<u8> = (0..n * rows * cols).map(|i| (i * 37 % 256) as u8).collect();
    fs::write(&path, idx(&[n, rows, cols], &pixels)).unwrap();
    path
}

// Item 2: sizes are checked against documented limits before allocating.

#[test]
fn synth_refuses_absurd_widths_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("m.tbm");
    let out = tinybayes(&[
        "synth",
        "--widths",
        "100000,100000,10",
        "--out",
        p(&out_path),
    ]);
    assert_one_line_error(&out, &["100000", "1 to 65535 units per layer"]);
    // Every width within the format, but 7.2e9 weights in all: the budget.
    let out = tinybayes(&[
        "synth",
        "--widths",
        "60000,60000,60000,10",
        "--out",
        p(&out_path),
    ]);
    assert_one_line_error(&out, &["16777216"]);
    let out = tinybayes(&["synth", "--widths", "784,10,2000", "--out", p(&out_path)]);
    assert_one_line_error(&out, &["class count, 2 to 1024"]);
    let many = vec!["4"; 40].join(",");
    let out = tinybayes(&["synth", "--widths", &many, "--out", p(&out_path)]);
    assert_one_line_error(&out, &["2 to 33 widths"]);
    assert!(!out_path.exists());
}

#[test]
fn synth_refuses_absurd_early_exit_networks() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("m.tbm");
    let out = tinybayes(&[
        "synth",
        "--resnet-ee",
        "2",
        "--channels",
        "100000",
        "--out",
        p(&out_path),
    ]);
    assert_one_line_error(&out, &["--channels 100000", "65535", "at most 83 channels"]);
    let out = tinybayes(&["synth", "--resnet-ee", "8", "--out", p(&out_path)]);
    assert_one_line_error(&out, &["1 to 7 blocks"]);
    let out = tinybayes(&[
        "synth",
        "--resnet-ee",
        "7",
        "--side",
        "1",
        "--channels",
        "1000",
        "--out",
        p(&out_path),
    ]);
    assert_one_line_error(&out, &["16777216"]);
    assert!(!out_path.exists());
}

#[test]
fn synth_help_documents_the_limits() {
    let out = tinybayes(&["synth", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for needle in ["65535", "16777216", "1..=7 blocks", "2..=1024"] {
        assert!(help.contains(needle), "{needle:?} not in {help}");
    }
    let out = tinybayes(&["train", "--help"]);
    let help = stdout(&out);
    for needle in [
        "1 to 7",
        "4194304",
        "mini-batch size, 1 to 4096",
        "parallel shards of a mini-batch, 1 to 16",
        "below the image side",
        "1073741824",
    ] {
        assert!(help.contains(needle), "{needle:?} not in {help}");
    }
    for command in ["predict", "eval", "inspect"] {
        let help = stdout(&tinybayes(&[command, "--help"]));
        let needle = if command == "inspect" {
            "1 to 65535"
        } else {
            "1073741824"
        };
        assert!(
            help.contains(needle),
            "{needle:?} not in {command} --help: {help}"
        );
    }
}

#[test]
fn train_refuses_oversized_networks_before_reading_data() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.idx");
    let run = dir.path().join("run");
    let base = [
        "train",
        "--arch",
        "resnet-ee",
        "--images",
        p(&missing),
        "--labels",
        p(&missing),
        "--out",
        p(&run),
    ];
    let with = |extra: &[&str]| {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        tinybayes(&argv)
    };
    assert_one_line_error(&with(&["--channels", "512"]), &["4194304"]);
    assert_one_line_error(&with(&["--blocks", "8"]), &["blocks must be in 1..=7"]);
    let config = dir.path().join("big.toml");
    fs::write(
        &config,
        "arch = \"resnet-ee\"\nchannels = 100\nstem_kernel = 1\nstem_stride = 1\n",
    )
    .unwrap();
    let out = with(&["--config", p(&config)]);
    assert_one_line_error(&out, &["78400 values per map", "65535"]);
    fs::write(&config, "batch_size = 100000\n").unwrap();
    let out = with(&["--config", p(&config)]);
    assert_one_line_error(&out, &["batch_size must be in 1..=4096"]);
    fs::write(&config, "shards = 1000\n").unwrap();
    let out = with(&["--config", p(&config)]);
    assert_one_line_error(&out, &["shards must be in 1..=16"]);
    assert!(!run.exists());
}

#[test]
fn absurd_idx_headers_and_sample_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), "16,8,3", "1x4x4");
    let huge = dir.path().join("huge.idx");
    fs::write(&huge, idx(&[100_000, 100_000, 100_000], &[0; 64])).unwrap();
    let csv = dir.path().join("p.csv");
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&huge),
        "--out",
        p(&csv),
    ]);
    assert_one_line_error(&out, &["absurd", "1073741824"]);
    let out = tinybayes(&["inspect", "--model", p(&model), "--samples", "100000000"]);
    assert_one_line_error(&out, &["--samples must be 1 to 65535", "100000000"]);
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&images(dir.path(), 2, 4, 4)),
        "--samples",
        "70000",
        "--out",
        p(&csv),
    ]);
    assert_one_line_error(&out, &["65535", "70000"]);
}

/// `n` 28x28 training images and their labels (classes 0..10) in `dir`.
fn mnist_like(dir: &Path, n: u32) -> (PathBuf, PathBuf) {
    let images = images(dir, n, 28, 28);
    let labels = dir.join(format!("labels-{n}.idx"));
    let values: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    fs::write(&labels, idx(&[n], &values)).unwrap();
    (images, labels)
}

// Item 4: divergence in the first epoch does not promise a checkpoint that does not exist.

#[test]
fn divergence_in_the_first_epoch_says_there_is_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = mnist_like(dir.path(), 20);
    let config = dir.path().join("wild.toml");
    // A learning rate of 1e30 overflows the weights at the first step.
    fs::write(
        &config,
        "arch = \"lenet300\"\nlr = 1e30\nlr_schedule = \"constant\"\nval_size = 0\n\
         batch_size = 5\nshards = 1\nepochs = 1\nkl_weight_max = 0\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = tinybayes(&[
        "train",
        "--config",
        p(&config),
        "--images",
        p(&images),
        "--labels",
        p(&labels),
        "--out",
        p(&run),
    ]);
    assert_one_line_error(
        &out,
        &[
            "diverged",
            "epoch 1",
            "before the first epoch ended",
            "no checkpoint to resume",
        ],
    );
    assert!(!stderr(&out).contains("is kept"));
    assert!(!run.join("trainer.ckpt").exists());
}

/// A finished one-epoch LeNet-300-100 run on 20 synthetic images (a fraction of a second).
fn tiny_run(dir: &Path) -> PathBuf {
    let (images, labels) = mnist_like(dir, 20);
    let config = dir.join("tiny.toml");
    fs::write(
        &config,
        "arch = \"lenet300\"\nval_size = 0\nbatch_size = 10\nshards = 1\nepochs = 1\n",
    )
    .unwrap();
    let run = dir.join("run");
    let out = tinybayes(&[
        "train",
        "--config",
        p(&config),
        "--images",
        p(&images),
        "--labels",
        p(&labels),
        "--out",
        p(&run),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    run
}

// Item 5: when export prunes everything, the hint says to raise the threshold.

#[test]
fn pruning_everything_says_raise_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path());
    let model = dir.path().join("m.tbm");
    // Weights with log alpha above the threshold are pruned: -100 prunes every one.
    let out = tinybayes(&[
        "export",
        "--run",
        p(&run),
        "--threshold=-100",
        "--out",
        p(&model),
    ]);
    assert_one_line_error(&out, &["pruned", "raise --threshold"]);
    assert!(!stderr(&out).contains("lower"));
    assert!(!model.exists());
}

// Item 6: input shapes are checked as shapes, not by total length.

#[test]
fn images_of_the_right_length_but_the_wrong_shape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 784 inputs, written as 1x28x28 by default.
    let model = synth(dir.path(), "784,8,10", "1x28x28");
    let tall = images(dir.path(), 3, 14, 56);
    let labels = dir.path().join("labels.idx");
    fs::write(&labels, idx(&[3], &[0, 1, 2])).unwrap();
    let csv = dir.path().join("p.csv");
    let shapes = ["14x56", "1x28x28"];
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&tall),
        "--out",
        p(&csv),
    ]);
    assert_one_line_error(&out, &shapes);
    assert!(!csv.exists());
    let report = dir.path().join("report");
    let out = tinybayes(&[
        "eval",
        "--model",
        p(&model),
        "--images",
        p(&tall),
        "--labels",
        p(&labels),
        "--report",
        p(&report),
    ]);
    assert_one_line_error(&out, &shapes);
    let out = tinybayes(&[
        "train",
        "--arch",
        "lenet300",
        "--images",
        p(&tall),
        "--labels",
        p(&labels),
        "--out",
        p(&dir.path().join("run")),
    ]);
    assert_one_line_error(&out, &shapes);
    // Quantizing on the fly calibrates on images that must have the model's shape too.
    let square = images(dir.path(), 3, 28, 28);
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&square),
        "--precision",
        "q8",
        "--calibration-images",
        p(&tall),
        "--out",
        p(&csv),
    ]);
    assert_one_line_error(&out, &["calibration images", "14x56", "1x28x28"]);
    // The right shape runs.
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&square),
        "--out",
        p(&csv),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

// Item 9: negative numbers are values, with or without `=`.

#[test]
fn negative_numbers_need_no_equals_sign() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let model_out = dir.path().join("m.tbm");
    // The value reaches the command: it fails for the missing run, not for "-1".
    let out = tinybayes(&[
        "export",
        "--run",
        p(&missing),
        "--threshold",
        "-1",
        "--out",
        p(&model_out),
    ]);
    assert_one_line_error(&out, &["holds no training checkpoint"]);
    let out = tinybayes(&["synth", "--density", "-0.5", "--out", p(&model_out)]);
    assert_one_line_error(&out, &["--density must be in (0, 1], got -0.5"]);
    let out = tinybayes(&[
        "train",
        "--arch",
        "resnet-ee",
        "--prior-lambda",
        "-0.5",
        "--images",
        p(&missing),
        "--labels",
        p(&missing),
        "--out",
        p(&dir.path().join("run")),
    ]);
    assert_one_line_error(&out, &["-0.5"]);
    // Unsigned options say the value is invalid instead of taking it for a flag.
    let out = tinybayes(&["synth", "--seed", "-1", "--out", p(&model_out)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value '-1'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn negative_halting_thresholds_reach_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("ee.tbm");
    let out = tinybayes(&[
        "synth",
        "--resnet-ee",
        "2",
        "--side",
        "6",
        "--channels",
        "2",
        "--out",
        p(&model),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&images(dir.path(), 2, 6, 6)),
        "--halting",
        "mi",
        "--threshold",
        "-1",
        "--out",
        p(&dir.path().join("p.csv")),
    ]);
    assert_one_line_error(&out, &["--threshold must be a non-negative number of nats"]);
}

// Item 13: one cause, once; `--limit 0` blamed on `--limit`; one wording for empty data.

#[test]
fn a_missing_file_is_named_once_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), "16,8,3", "1x4x4");
    let missing = dir.path().join("missing.idx");
    let csv = dir.path().join("p.csv");
    let square = images(dir.path(), 2, 4, 4);
    let labels = dir.path().join("labels.idx");
    fs::write(&labels, idx(&[2], &[0, 1])).unwrap();
    let report = dir.path().join("report");
    let runs = [
        tinybayes(&[
            "predict",
            "--model",
            p(&model),
            "--images",
            p(&missing),
            "--out",
            p(&csv),
        ]),
        tinybayes(&[
            "eval",
            "--model",
            p(&model),
            "--images",
            p(&square),
            "--labels",
            p(&missing),
            "--report",
            p(&report),
        ]),
        tinybayes(&[
            "train",
            "--images",
            p(&missing),
            "--labels",
            p(&labels),
            "--out",
            p(&dir.path().join("run")),
        ]),
        tinybayes(&["inspect", "--model", p(&missing)]),
    ];
    for out in &runs {
        assert_one_line_error(out, &["missing.idx", "No such file or directory"]);
        let err = stderr(out);
        assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
        assert_eq!(err.matches("missing.idx").count(), 1, "{err}");
    }
}

#[test]
fn limit_zero_is_blamed_on_limit_and_empty_data_has_one_wording() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), "16,8,3", "1x4x4");
    let square = images(dir.path(), 2, 4, 4);
    let labels = dir.path().join("labels.idx");
    fs::write(&labels, idx(&[2], &[0, 1])).unwrap();
    let report = dir.path().join("report");
    let eval = |images: &Path, labels: &Path, extra: &[&str]| {
        let mut argv = vec![
            "eval",
            "--model",
            p(&model),
            "--images",
            p(images),
            "--labels",
            p(labels),
            "--report",
            p(&report),
        ];
        argv.extend_from_slice(extra);
        tinybayes(&argv)
    };
    let out = eval(&square, &labels, &["--limit", "0"]);
    assert_one_line_error(&out, &["--limit 0"]);
    assert!(!stderr(&out).contains("--skip"), "{}", stderr(&out));
    let out = eval(&square, &labels, &["--skip", "5"]);
    assert_one_line_error(&out, &["--skip 5 leaves no image of 2"]);

    let empty = dir.path().join("empty.idx");
    fs::write(&empty, idx(&[0, 4, 4], &[])).unwrap();
    let no_labels = dir.path().join("empty-labels.idx");
    fs::write(&no_labels, idx(&[0], &[])).unwrap();
    let wording = "the data set is empty (no images)";
    assert_one_line_error(&eval(&empty, &no_labels, &[]), &[wording]);
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&empty),
        "--out",
        p(&dir.path().join("p.csv")),
    ]);
    assert_one_line_error(&out, &[wording]);
    let empty28 = dir.path().join("empty28.idx");
    fs::write(&empty28, idx(&[0, 28, 28], &[])).unwrap();
    let out = tinybayes(&[
        "train",
        "--arch",
        "lenet300",
        "--images",
        p(&empty28),
        "--labels",
        p(&no_labels),
        "--out",
        p(&dir.path().join("run")),
    ]);
    assert_one_line_error(&out, &[wording]);
}

// Item 14: no silent clamping (the sample count of `inspect` is refused above 65535 in
// `absurd_idx_headers_and_sample_counts_are_refused`).

#[test]
fn calibration_counts_and_unused_calibration_images_are_not_silent() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), "16,8,3", "1x4x4");
    let few = images(dir.path(), 3, 4, 4);
    let csv = dir.path().join("p.csv");
    let predict = |extra: &[&str]| {
        let mut argv = vec![
            "predict",
            "--model",
            p(&model),
            "--images",
            p(&few),
            "--force",
            "--out",
            p(&csv),
        ];
        argv.extend_from_slice(extra);
        tinybayes(&argv)
    };
    let q8 = ["--precision", "q8", "--calibration-images", p(&few)];
    // More than the file holds, asked for explicitly: refused.
    let out = predict(&[&q8[..], &["--calibration-count", "10"]].concat());
    assert_one_line_error(&out, &["--calibration-count 10", "3 images"]);
    // The default 1000 on a 3-image file: all 3, with a one-line warning.
    let out = predict(&q8);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("warning: calibrating on all 3 images"),
        "{err}"
    );
    // Exactly what the file holds: no warning.
    let out = predict(&[&q8[..], &["--calibration-count", "3"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    // Calibration images with an f32 run are ignored: said in one line.
    let out = predict(&["--calibration-images", p(&few)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("warning: --calibration-images"), "{err}");
    assert!(err.contains("ignored"), "{err}");
    let out = predict(&[]);
    assert_eq!(stderr(&out), "");
}

// Item 15: the default data directory is found from the project root, or TINYBAYES_DATA,
// and a missing one is named.

/// `train` run from `cwd` with `TINYBAYES_DATA` set to `data` (or unset).
fn train_in(cwd: &Path, data: Option<&Path>, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinybayes"));
    command.current_dir(cwd).arg("train").args(extra);
    match data {
        Some(dir) => command.env("TINYBAYES_DATA", dir),
        None => command.env_remove("TINYBAYES_DATA"),
    };
    command.output().expect("run tinybayes")
}

#[test]
fn the_default_data_directory_does_not_depend_on_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // epochs = 0 is refused right after the data files are found, before they are read.
    let argv = ["--epochs", "0", "--out", p(&run)];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let default = root.parent().unwrap().join("shared/data/mnist");
    let out = train_in(dir.path(), None, &argv);
    if default.join("train-images-idx3-ubyte.gz").is_file() {
        assert_one_line_error(&out, &["epochs must be at least 1"]);
    } else {
        assert_one_line_error(&out, &[p(&default), "project root"]);
    }

    // TINYBAYES_DATA names the directory; a missing file says where it looked and why.
    let empty = dir.path().join("no-mnist");
    fs::create_dir(&empty).unwrap();
    let out = train_in(dir.path(), Some(&empty), &argv);
    assert_one_line_error(
        &out,
        &[
            "no train-images-idx3-ubyte[.gz] in",
            p(&empty),
            "from TINYBAYES_DATA",
        ],
    );
    let data = dir.path().join("mnist");
    fs::create_dir(&data).unwrap();
    let (images, labels) = mnist_like(dir.path(), 4);
    fs::copy(images, data.join("train-images-idx3-ubyte")).unwrap();
    fs::copy(labels, data.join("train-labels-idx1-ubyte")).unwrap();
    let out = train_in(dir.path(), Some(&data), &argv);
    assert_one_line_error(&out, &["epochs must be at least 1"]);
    // --data wins over the environment.
    let out = train_in(
        dir.path(),
        Some(&data),
        &[&["--data", p(&empty)][..], &argv].concat(),
    );
    assert_one_line_error(&out, &[p(&empty), "(--data)"]);
}

// Item 3: a resumed run applies the settings it may change and refuses the others.

#[test]
fn resume_applies_epochs_and_learning_rate_and_refuses_other_changes() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path());
    let images = dir.path().join("images-20x28x28.idx");
    let labels = dir.path().join("labels-20.idx");
    let resume = |extra: &[&str]| {
        let mut argv = vec![
            "train",
            "--resume",
            "--images",
            p(&images),
            "--labels",
            p(&labels),
            "--out",
            p(&run),
        ];
        argv.extend_from_slice(extra);
        tinybayes(&argv)
    };
    let epochs_done = || {
        let text = fs::read_to_string(run.join("history.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(epochs_done(), 1);
    // --epochs is applied (it used to be ignored without a word).
    let out = resume(&["--epochs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("at epoch 1 of 2 (changed: epochs 1 -> 2)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(epochs_done(), 2);
    let config_toml = run.join("config.toml");
    let saved = fs::read_to_string(&config_toml).unwrap();
    assert!(saved.contains("epochs = 2\n"), "{saved}");

    // An edit of the run's config.toml is applied too.
    let edited = saved
        .replace("epochs = 2\n", "epochs = 3\n")
        .replace("lr = 0.001\n", "lr = 0.0005\n");
    assert_ne!(edited, saved);
    fs::write(&config_toml, &edited).unwrap();
    let out = resume(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("(changed: epochs 2 -> 3, lr 0.001 -> 0.0005)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(epochs_done(), 3);

    // Other settings are refused with one line, from every source, and nothing is trained.
    let other = dir.path().join("other.toml");
    fs::write(&other, "batch_size = 5\n").unwrap();
    let out = resume(&["--config", p(&other), "--epochs", "4"]);
    assert_one_line_error(
        &out,
        &[
            "batch_size would change from 10 to 5",
            "only epochs, lr, lr_schedule",
        ],
    );
    let out = resume(&["--seed", "9", "--epochs", "4"]);
    assert_one_line_error(&out, &["seed would change from 0 to 9"]);
    let out = resume(&["--epochs", "2"]);
    assert_one_line_error(&out, &["epochs 2 is fewer than the 3 epochs already done"]);
    let now = fs::read_to_string(&config_toml).unwrap();
    fs::write(&config_toml, now.replace("shards = 1\n", "shards = 2\n")).unwrap();
    let out = resume(&["--epochs", "4"]);
    assert_one_line_error(&out, &["shards would change from 1 to 2"]);
    assert_eq!(epochs_done(), 3);
    // A --config of resumable keys only overrides just those keys.
    fs::write(&config_toml, now).unwrap();
    fs::write(&other, "lr = 0.0002\nepochs = 4\n").unwrap();
    let out = resume(&["--config", p(&other)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("lr 0.0005 -> 0.0002"),
        "{}",
        stdout(&out)
    );
    assert_eq!(epochs_done(), 4);

    // The advice printed on divergence can now be followed: lower lr, then --resume.
    fs::write(&other, "lr = 1e30\nepochs = 5\n").unwrap();
    let out = resume(&["--config", p(&other)]);
    assert_one_line_error(
        &out,
        &[
            "diverged",
            "the checkpoint after epoch 4",
            "config.toml, then --resume",
        ],
    );
    assert_eq!(epochs_done(), 4);
    let wild = fs::read_to_string(&config_toml).unwrap();
    let lower: Vec<String> = wild
        .lines()
        .map(|l| {
            if l.starts_with("lr = ") {
                assert_eq!(l.trim_start_matches("lr = ").parse::<f64>(), Ok(1e30));
                "lr = 0.0001".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(lower.join("\n"), wild.trim_end());
    fs::write(&config_toml, lower.join("\n")).unwrap();
    let out = resume(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("at epoch 4 of 5 (changed: epochs 4 -> 5, lr 0.0002 -> 0.0001)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(epochs_done(), 5);
}
