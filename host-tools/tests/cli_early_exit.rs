//! End-to-end tests of early-exit models in the CLI: `synth --resnet-ee` writes one, `inspect`
//! shows its residual additions and exit heads, `predict` adds `depth,macs` columns after the
//! required ones, and `eval` reports depth and MACs, draws the exit-depth histogram and, with
//! `--sweep`, the accuracy-against-MACs plot.

use std::fs;

mod common;
use common::{idx, p, tinybayes};

use serde_json::Value;

/// A synthetic 3-block early-exit ResNet on 6x6 inputs (3 channels) from `synth`, seeded.
fn synth_resnet_ee(dir: &std::path::Path, seed: u64) -> std::path::PathBuf {
    let model = dir.join("ee.tbm");
    let seed = seed.to_string();
    let out = tinybayes(&[
        "synth",
        "--resnet-ee",
        "3",
        "--side",
        "6",
        "--channels",
        "3",
        "--seed",
        &seed,
        "--out",
        p(&model),
    ]);
    assert!(out.status.success(), "{out:?}");
    model
}

/// `n` 6x6 images with pixel `i` (over the whole file) `(i a + (i / 36) b) mod 256`, labels
/// `i mod 10`, written as IDX files into `dir`: (images, labels).
fn write_images(
    dir: &std::path::Path,
    n: usize,
    (a, b): (usize, usize),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let pixels: Vec<u8> = (0..n * 36)
        .map(|i| ((i * a + i / 36 * b) % 256) as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let images = dir.join("images.idx");
    let label_path = dir.join("labels.idx");
    fs::write(&images, idx(&[n as u32, 6, 6], &pixels)).unwrap();
    fs::write(&label_path, idx(&[n as u32], &labels)).unwrap();
    (images, label_path)
}

#[test]
fn early_exit_models_predict_and_evaluate_with_depth_and_macs() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_resnet_ee(dir.path(), 4);
    let out = tinybayes(&["inspect", "--model", p(&model), "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "exit-head").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "residual-add").count(), 3);

    let n = 24;
    let (images, label_path) = write_images(dir.path(), n, (53, 17));

    let csv = dir.path().join("p.csv");
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&images),
        "--samples",
        "8",
        "--halting",
        "joint",
        "--prior-lambda",
        "0.5",
        "--out",
        p(&csv),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,pred,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9,entropy,expected_entropy,mutual_info,depth,macs"
    );
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        let depth: usize = cols[15].parse().unwrap();
        let macs: usize = cols[16].parse().unwrap();
        assert!((1..=3).contains(&depth) && macs > 0, "{line}");
    }

    let report_dir = dir.path().join("r");
    let out = tinybayes(&[
        "eval",
        "--model",
        p(&model),
        "--images",
        p(&images),
        "--labels",
        p(&label_path),
        "--samples",
        "4",
        "--sweep",
        "--report",
        p(&report_dir),
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: Value =
        serde_json::from_slice(&fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let ee = &json["early_exit"];
    assert_eq!(ee["exits"], 3);
    let hist: Vec<u64> = ee["depth_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(hist.iter().sum::<u64>(), n as u64);
    let fraction = ee["macs_fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction <= 1.0);
    assert!(ee["sweep"].as_array().unwrap().len() >= 20);
    assert_eq!(ee["exit_accuracy"].as_array().unwrap().len(), 3);
    for png in ["exit_depth.png", "sweep.png"] {
        let bytes = fs::read(report_dir.join(png)).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG", "{png}");
    }

    // Early-exit options on a plain model are one clear error.
    let plain = dir.path().join("plain.tbm");
    let out = tinybayes(&["synth", "--widths", "36,8,10", "--out", p(&plain)]);
    assert!(out.status.success());
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&plain),
        "--images",
        p(&images),
        "--halting",
        "joint",
        "--out",
        p(&dir.path().join("q.csv")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("early-exit models only"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
}

/// The shipped early-exit ResNet runs any number of samples in one sample's workspace, and
/// `inspect` says so: at most 32 KiB for M = 32 at the default chunk, the same for M = 1,000,
/// and more when the user asks for 8 samples per pass.
#[test]
fn inspect_reports_the_early_exit_workspace_of_one_chunk() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/resnet-ee.tbm");
    let ram = |extra: &[&str]| {
        let mut args = vec!["inspect", "--model", model, "--json"];
        args.extend_from_slice(extra);
        let out = tinybayes(&args);
        assert!(out.status.success(), "{out:?}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            report["ram_bytes"].as_u64().unwrap(),
            report["ram_chunk"].as_u64().unwrap(),
        )
    };
    let (m32, chunk) = ram(&["--samples", "32"]);
    assert_eq!(chunk, 1);
    assert!(m32 <= 32 * 1024, "{m32} bytes");
    assert_eq!(ram(&["--samples", "1000"]).0, m32);
    let (eight, chunk) = ram(&["--samples", "32", "--chunk", "8"]);
    assert_eq!(chunk, 8);
    assert!(eight > 4 * m32, "{eight} vs {m32}");
}

/// `eval --suggest-mi-below` proposes the smallest bound meeting the MACs budget (checked
/// against the evaluations it implies: the bound meets the budget, the float just below it
/// does not), `--halting robust` without `--mi-below` then evaluates with it, `predict` takes
/// the policy too, and bad combinations are one-line errors.
#[test]
fn the_robust_policy_and_its_suggested_bound() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_resnet_ee(dir.path(), 9);
    let n = 40;
    let (images, label_path) = write_images(dir.path(), n, (71, 29));
    let eval = |name: &str, extra: &[&str]| -> Value {
        let report = dir.path().join(name);
        let mut args = vec![
            "eval",
            "--model",
            p(&model),
            "--images",
            p(&images),
            "--labels",
            p(&label_path),
            "--samples",
            "8",
            "--prior-lambda",
            "0.6",
            "--report",
            p(&report),
        ];
        args.extend_from_slice(extra);
        let out = tinybayes(&args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&fs::read(report.join("report.json")).unwrap()).unwrap()
    };
    let joint = eval("joint", &["--halting", "joint"]);
    let all_fraction = 1.0;
    let joint_fraction = joint["early_exit"]["macs_fraction"].as_f64().unwrap();
    assert!(joint_fraction < all_fraction);
    let budget = (joint_fraction + all_fraction) / 2.0;
    let budget_arg = budget.to_string();
    let suggested = eval(
        "suggest",
        &["--halting", "robust", "--suggest-mi-below", &budget_arg],
    );
    let s = &suggested["early_exit"]["suggested_mi_below"];
    let tau = s["mi_below"].as_f64().unwrap() as f32;
    let fraction = s["macs_fraction"].as_f64().unwrap();
    assert!(fraction <= budget, "{s}");
    assert_eq!(s["joint_macs_fraction"].as_f64().unwrap(), joint_fraction);
    // This evaluation ran with the suggested bound, and spent what the replay said.
    let ee = &suggested["early_exit"];
    assert_eq!(ee["halting"]["mi_below"].as_f64().unwrap() as f32, tau);
    assert!((ee["macs_fraction"].as_f64().unwrap() - fraction).abs() < 1e-12);
    // The smallest such bound: the float just below spends more than the budget.
    assert!(tau > 0.0, "the budget is below every block's cost: {tau}");
    let below = f32::from_bits(tau.to_bits() - 1).to_string();
    let tighter = eval("tighter", &["--halting", "robust", "--mi-below", &below]);
    assert!(tighter["early_exit"]["macs_fraction"].as_f64().unwrap() > budget);
    // τ = inf is the joint mode's answers, bit for bit.
    let inf = eval("inf", &["--halting", "robust", "--mi-below", "inf"]);
    assert_eq!(inf["outputs_crc32"], joint["outputs_crc32"]);
    // The largest uncertainty over the exits computed is scored too: the same images as
    // "out of distribution" give the same scores, an AUROC of exactly 0.5.
    let same = eval(
        "same",
        &[
            "--halting",
            "robust",
            "--mi-below",
            "0.01",
            "--ood-images",
            p(&images),
        ],
    );
    let largest = &same["ood"]["largest_seen"];
    assert_eq!(largest["auroc_predictive_entropy"].as_f64(), Some(0.5));
    assert_eq!(largest["auroc_mutual_information"].as_f64(), Some(0.5));

    let csv = dir.path().join("p.csv");
    let out = tinybayes(&[
        "predict",
        "--model",
        p(&model),
        "--images",
        p(&images),
        "--samples",
        "8",
        "--halting",
        "robust",
        "--mi-below",
        "0.01",
        "--out",
        p(&csv),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(&csv).unwrap().lines().count(), n + 1);

    for (args, needle) in [
        (vec!["--halting", "robust"], "--mi-below"),
        (
            vec!["--halting", "robust", "--mi-below", "-0.5"],
            "non-negative",
        ),
        (
            vec!["--halting", "robust", "--mi-below", "NaN"],
            "non-negative",
        ),
        (
            vec!["--halting", "joint", "--mi-below", "0.1"],
            "--halting robust",
        ),
        (vec!["--suggest-mi-below", "1.5"], "fraction"),
    ] {
        let report = dir.path().join("bad");
        let mut all = vec![
            "eval",
            "--model",
            p(&model),
            "--images",
            p(&images),
            "--labels",
            p(&label_path),
            "--samples",
            "4",
            "--report",
            p(&report),
        ];
        all.extend_from_slice(&args);
        let out = tinybayes(&all);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}
