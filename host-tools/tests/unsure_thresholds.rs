//! The firmware's checked-in "unsure" thresholds (`firmware/src/unsure/*.rs`) are what the
//! command in the README (Firmware) writes now: `tinybayes eval --suggest-thresholds 0.5
//! --emit-rust FILE` over MNIST test images 5000-9999, for each model the demos embed. Needs
//! the MNIST test set in the shared data directory: without it the test fails (it never passes
//! silently).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{p, shared_data, stderr, tinybayes};

/// Each model a firmware demo embeds, the file (in `firmware/`) that names it, the line that
/// does, and the generated thresholds file in `firmware/src/unsure/`.
const SHIPPED: [(&str, &str, &str, &str); 2] = [
    (
        "lenet300.tbm",
        "build.rs",
        "const DEMO_MODEL: &str = \"../models/lenet300.tbm\";",
        "lenet300.rs",
    ),
    (
        "lenet300-q8.tbm",
        "build/fixed.rs",
        "const Q8_MODEL: &str = \"../models/lenet300-q8.tbm\";",
        "lenet300_q8.rs",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn checked_in_thresholds_are_what_the_command_writes_now() {
    let mnist = shared_data("mnist/t10k-images-idx3-ubyte.gz").join("mnist");
    let images = mnist.join("t10k-images-idx3-ubyte.gz");
    let labels = mnist.join("t10k-labels-idx1-ubyte.gz");
    let dir = tempfile::tempdir().unwrap();
    for (model, source, line, file) in SHIPPED {
        // The thresholds belong to the model the firmware embeds.
        let build = fs::read_to_string(root().join("firmware").join(source)).unwrap();
        assert!(
            build.lines().any(|l| l.trim() == line),
            "firmware/{source} no longer embeds models/{model} ({line}): regenerate the thresholds for the embedded model"
        );
        let out = dir.path().join(file);
        let report = dir.path().join(model);
        let model_path = root().join("models").join(model);
        let run = tinybayes(&[
            "eval",
            "-q",
            "--model",
            p(&model_path),
            "--images",
            p(&images),
            "--labels",
            p(&labels),
            "--skip",
            "5000",
            "--limit",
            "5000",
            "--samples",
            "32",
            "--seed",
            "0",
            "--suggest-thresholds",
            "0.5",
            "--emit-rust",
            p(&out),
            "--report",
            p(&report),
        ]);
        assert!(run.status.success(), "eval failed: {}", stderr(&run));
        let now = fs::read_to_string(&out).unwrap();
        let checked_in = fs::read_to_string(root().join("firmware/src/unsure").join(file)).unwrap();
        assert_eq!(
            checked_in, now,
            "firmware/src/unsure/{file} differs from what the command writes now: regenerate it (README, Firmware)"
        );
    }
}

#[test]
fn emit_rust_needs_suggest_thresholds_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("models/lenet300.tbm");
    let out = dir.path().join("t.rs");
    let base = [
        "eval",
        "--model",
        p(&model),
        "--images",
        "i.idx",
        "--labels",
        "l.idx",
        "--report",
        p(dir.path()),
        "--emit-rust",
        p(&out),
    ];
    let run = tinybayes(&base);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("--suggest-thresholds"),
        "{}",
        stderr(&run)
    );

    fs::write(&out, "existing").unwrap();
    let mut args = base.to_vec();
    args.extend(["--suggest-thresholds", "0.5"]);
    let run = tinybayes(&args);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("already exists"), "{}", stderr(&run));
    assert_eq!(fs::read_to_string(&out).unwrap(), "existing");
}
