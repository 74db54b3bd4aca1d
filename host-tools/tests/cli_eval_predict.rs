//! End-to-end tests of `tinybayes predict` and `tinybayes eval`: the built binary on tiny IDX
//! files in a temporary directory and a synthetic 16-8-3 model written by `tinybayes synth`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::{idx, p, shared_data, tinybayes};

const IMAGES: usize = 40;
const CLASSES: usize = 3;
const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
const PNGS: [&str; 4] = [
    "reliability.png",
    "entropy_hist.png",
    "mutual_info_hist.png",
    "sparsity.png",
];

/// A temporary directory with a model (16 inputs as 1x4x4, 3 classes), 40 4x4 images and
/// their labels.
struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    images: PathBuf,
    labels: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.tbm");
        let out = tinybayes(&[
            "synth",
            "--widths",
            "16,8,3",
            "--input-shape",
            "1x4x4",
            "--density",
            "0.6",
            "--seed",
            "11",
            "--out",
            p(&model),
        ]);
        assert!(out.status.success(), "{out:?}");
        let pixels: Vec<u8> = (0..IMAGES * 16)
            .map(|i| ((i * 97 + i / 16 * 31) % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..IMAGES).map(|i| (i % CLASSES) as u8).collect();
        let images = dir.path().join("images.idx");
        let label_path = dir.path().join("labels.idx");
        fs::write(&images, idx(&[IMAGES as u32, 4, 4], &pixels)).unwrap();
        fs::write(&label_path, idx(&[IMAGES as u32], &labels)).unwrap();
        Fixture {
            dir,
            model,
            images,
            labels: label_path,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn predict(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "predict",
            "--model",
            p(&self.model),
            "--images",
            p(&self.images),
        ];
        args.extend_from_slice(extra);
        tinybayes(&args)
    }

    fn eval(&self, report: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "eval",
            "--model",
            p(&self.model),
            "--images",
            p(&self.images),
            "--labels",
            p(&self.labels),
            "--report",
            p(report),
        ];
        args.extend_from_slice(extra);
        tinybayes(&args)
    }
}

/// Rows of a predictions CSV as (header, rows of fields).
fn read_csv(path: &Path) -> (String, Vec<Vec<String>>) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
}

/// Asserts a failure with exactly one line on stderr, starting `error:` and containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got {out:?}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr:?}");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

fn assert_png(path: &Path) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes[..8], PNG_MAGIC, "{}", path.display());
    let info = png::Decoder::new(&bytes[..]).read_info().unwrap();
    assert!(info.info().width >= 400 && info.info().height >= 300);
}

#[test]
fn predict_writes_the_exact_header_and_one_row_per_image() {
    let f = Fixture::new();
    let out_path = f.path("preds.csv");
    let out = f.predict(&["--samples", "16", "--seed", "3", "--out", p(&out_path)]);
    assert!(out.status.success(), "{out:?}");
    let (header, rows) = read_csv(&out_path);
    assert_eq!(
        header,
        "index,pred,p0,p1,p2,entropy,expected_entropy,mutual_info"
    );
    assert_eq!(rows.len(), IMAGES);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 2 + CLASSES + 3);
        assert_eq!(row[0], i.to_string());
        let probs: Vec<f64> = row[2..2 + CLASSES]
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        let sum: f64 = probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row {i}: sum {sum}");
        assert!(probs.iter().all(|&q| (0.0..=1.0).contains(&q)));
        let pred: usize = row[1].parse().unwrap();
        assert!(
            probs.iter().all(|&q| q <= probs[pred]),
            "row {i}: pred not argmax"
        );
        let [h, eh, mi]: [f64; 3] = core::array::from_fn(|k| row[2 + CLASSES + k].parse().unwrap());
        // H = E[H] + MI, all within [0, ln K].
        assert!(h >= 0.0 && eh >= 0.0 && mi >= 0.0);
        assert!(h <= (CLASSES as f64).ln() + 1e-5);
        assert!((h - eh - mi).abs() < 1e-5, "row {i}: {h} != {eh} + {mi}");
    }
}

#[test]
fn predict_depends_on_seed_and_mode_only() {
    let f = Fixture::new();
    let run = |name: &str, extra: &[&str]| -> Vec<u8> {
        let path = f.path(name);
        let mut args = extra.to_vec();
        args.extend(["--out", p(&path)]);
        let out = f.predict(&args);
        assert!(out.status.success(), "{out:?}");
        fs::read(path).unwrap()
    };
    let a = run("a.csv", &["--samples", "8", "--seed", "5"]);
    let b = run("b.csv", &["--samples", "8", "--seed", "5"]);
    let c = run("c.csv", &["--samples", "8", "--seed", "6"]);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mean0 = run("m0.csv", &["--samples", "0", "--seed", "1"]);
    let mean1 = run("m1.csv", &["--mean-weights", "--seed", "2"]);
    assert_eq!(mean0, mean1);
    let (_, rows) = read_csv(&f.path("m0.csv"));
    assert!(rows.iter().all(|r| r.last().unwrap() == "0"));
}

#[test]
fn eval_writes_a_sane_report_and_valid_pngs() {
    let f = Fixture::new();
    // A nested directory that does not exist yet is created.
    let report_dir = f.path("out/report");
    let out = f.eval(&report_dir, &["--samples", "12", "--seed", "9"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("accuracy") && stdout.contains("ECE"),
        "{stdout}"
    );

    let report: Value =
        serde_json::from_str(&fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["count"], IMAGES);
    assert_eq!(report["samples"], 12);
    assert_eq!(report["seed"], 9);
    assert_eq!(report["mode"], "monte_carlo");
    assert_eq!(report["classes"], CLASSES);
    assert!(report["model"].as_str().unwrap().ends_with("model.tbm"));
    let num = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("{key}"));
    let acc = num("accuracy");
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(
        report["correct"].as_u64().unwrap() as f64 / IMAGES as f64,
        acc
    );
    assert!((0.0..=1.0).contains(&num("ece")));
    assert!(num("nll") >= 0.0);
    assert!((0.0..=2.0).contains(&num("brier")));
    let bins = report["reliability"].as_array().unwrap();
    assert_eq!(bins.len(), 15);
    let binned: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(binned, IMAGES as u64);
    let u = &report["uncertainty"];
    let groups = u["correct"]["count"].as_u64().unwrap() + u["wrong"]["count"].as_u64().unwrap();
    assert_eq!(groups, IMAGES as u64);
    for key in ["auroc_predictive_entropy", "auroc_mutual_information"] {
        if let Some(a) = u[key].as_f64() {
            assert!((0.0..=1.0).contains(&a), "{key} {a}");
        }
    }
    let sparsity = report["sparsity"].as_array().unwrap();
    assert_eq!(sparsity.len(), 2);
    for layer in sparsity {
        let s = layer["sparsity"].as_f64().unwrap();
        let expected = 1.0
            - layer["nnz"].as_f64().unwrap()
                / (layer["inputs"].as_f64().unwrap() * layer["outputs"].as_f64().unwrap());
        assert!((s - expected).abs() < 1e-12);
    }
    for png in PNGS {
        assert_png(&report_dir.join(png));
    }
}

#[test]
fn eval_agrees_with_predict() {
    // The same seed and samples: eval's accuracy and NLL must follow from predict's CSV.
    let f = Fixture::new();
    let csv = f.path("p.csv");
    let report_dir = f.path("r");
    assert!(f
        .predict(&["--samples", "7", "--seed", "4", "--out", p(&csv)])
        .status
        .success());
    assert!(f
        .eval(&report_dir, &["--samples", "7", "--seed", "4"])
        .status
        .success());
    let (_, rows) = read_csv(&csv);
    let labels: Vec<usize> = (0..IMAGES).map(|i| i % CLASSES).collect();
    let correct = rows
        .iter()
        .zip(&labels)
        .filter(|(r, &y)| r[1] == y.to_string())
        .count();
    let nll: f64 = rows
        .iter()
        .zip(&labels)
        .map(|(r, &y)| -r[2 + y].parse::<f64>().unwrap().max(1e-12).ln())
        .sum::<f64>()
        / IMAGES as f64;
    let report: Value =
        serde_json::from_str(&fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["correct"].as_u64().unwrap() as usize, correct);
    assert!((report["nll"].as_f64().unwrap() - nll).abs() < 1e-6);
}

#[test]
fn nothing_is_overwritten_without_force() {
    let f = Fixture::new();
    // predict: an existing output is kept.
    let csv = f.write("keep.csv", b"precious\n");
    let out = f.predict(&["--out", p(&csv)]);
    assert_one_line_error(&out, "already exists");
    assert_eq!(fs::read(&csv).unwrap(), b"precious\n");
    let out = f.predict(&["--out", p(&csv), "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert!(fs::read_to_string(&csv).unwrap().starts_with("index,pred,"));

    // eval: a second run refuses, leaving report.json and the plots as they were.
    let dir = f.path("report");
    assert!(f.eval(&dir, &["--samples", "4"]).status.success());
    let before: Vec<Vec<u8>> = ["report.json"]
        .iter()
        .chain(PNGS.iter())
        .map(|n| fs::read(dir.join(n)).unwrap())
        .collect();
    let out = f.eval(&dir, &["--samples", "5"]);
    assert_one_line_error(&out, "already exists");
    let after: Vec<Vec<u8>> = ["report.json"]
        .iter()
        .chain(PNGS.iter())
        .map(|n| fs::read(dir.join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
    // A lone plot from someone else also blocks the run.
    let dir2 = f.path("report2");
    fs::create_dir(&dir2).unwrap();
    fs::write(dir2.join("sparsity.png"), b"mine").unwrap();
    assert_one_line_error(&f.eval(&dir2, &[]), "already exists");
    assert_eq!(fs::read(dir2.join("sparsity.png")).unwrap(), b"mine");
    assert!(!dir2.join("report.json").exists());
    // --force replaces everything.
    let out = f.eval(&dir, &["--samples", "5", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let report: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["samples"], 5);
}

#[test]
fn bad_inputs_fail_with_one_line_and_write_nothing() {
    let f = Fixture::new();
    let pixels: Vec<u8> = (0..IMAGES * 16).map(|i| i as u8).collect();
    let truncated = f.write("trunc.idx", &idx(&[IMAGES as u32, 4, 4], &pixels)[..100]);
    let mut magic = idx(&[IMAGES as u32, 4, 4], &pixels);
    magic[0] = 0x12;
    let bad_magic = f.write("magic.idx", &magic);
    let big = f.write("big.idx", &idx(&[2, 5, 5], &[7; 50]));
    let few_labels = f.write("few.idx", &idx(&[IMAGES as u32 - 1], &[0; IMAGES - 1]));
    let high_labels = f.write("high.idx", &idx(&[IMAGES as u32], &[5; IMAGES]));
    let mut corrupt = fs::read(&f.model).unwrap();
    let last = corrupt.len() - 10;
    corrupt[last] ^= 0x55;
    let corrupt_model = f.write("corrupt.tbm", &corrupt);
    let not_model = f.write("not.tbm", &[0u8; 100]);
    let a_file = f.write("plain-file", b"x");
    let out_csv = f.path("never.csv");
    let under_file = a_file.join("x.csv");
    let missing = f.path("missing.idx");

    let predict = |model: &Path, images: &Path, extra: &[&str], needle: &str| {
        let mut args = vec!["predict", "--model", p(model), "--images", p(images)];
        args.extend_from_slice(extra);
        if !extra.contains(&"--out") {
            args.extend(["--out", p(&out_csv)]);
        }
        assert_one_line_error(&tinybayes(&args), needle);
        assert!(!out_csv.exists(), "{needle}: output written");
    };
    let m = &f.model;
    predict(m, &truncated, &[], "truncated IDX data");
    predict(m, &bad_magic, &[], "bad IDX magic");
    predict(m, &missing, &[], "cannot read");
    predict(
        m,
        &big,
        &[],
        "images are 5x5 (25 values) but the model's input is 1x4x4 (16 values)",
    );
    predict(&corrupt_model, &f.images, &[], "CRC mismatch");
    predict(&not_model, &f.images, &[], "not a tinybayes model");
    for bad in ["65536", "-1", "lots", "2.5"] {
        predict(m, &f.images, &["--samples", bad], "--samples must be");
    }
    predict(
        m,
        &f.images,
        &["--out", p(&under_file)],
        "is not a directory",
    );
    predict(
        m,
        &f.images,
        &["--out", p(&f.path("no/such/dir/x.csv"))],
        "does not exist",
    );
    predict(m, &f.images, &["--out", p(f.dir.path())], "already exists");

    let report = f.path("bad-report");
    let eval = |images: &Path, labels: &Path, report_dir: &Path, extra: &[&str], needle: &str| {
        let mut args = vec![
            "eval",
            "--model",
            p(m),
            "--images",
            p(images),
            "--labels",
            p(labels),
            "--report",
            p(report_dir),
        ];
        args.extend_from_slice(extra);
        assert_one_line_error(&tinybayes(&args), needle);
        assert!(
            !report.join("report.json").exists(),
            "{needle}: report written"
        );
    };
    eval(
        &f.images,
        &few_labels,
        &report,
        &[],
        "40 images but 39 labels",
    );
    eval(&f.images, &high_labels, &report, &[], "label 5");
    eval(&truncated, &f.labels, &report, &[], "truncated IDX data");
    eval(&f.images, &bad_magic, &report, &[], "bad IDX magic");
    eval(
        &big,
        &f.write("two.idx", &idx(&[2], &[0, 1])),
        &report,
        &[],
        "images are 5x5 (25 values) but the model's input is 1x4x4 (16 values)",
    );
    eval(
        &f.images,
        &f.labels,
        &report,
        &["--samples", "70000"],
        "--samples must be",
    );
    eval(&f.images, &f.labels, &a_file, &[], "is not a directory");
    eval(
        &f.images,
        &f.labels,
        &under_file,
        &[],
        "cannot create report directory",
    );
}

/// The outputs digests BENCHMARKS.md lists for the firmware's full-test-set parity runs
/// (`cargo parity-m4`, `parity-m3`, `parity-m0`, which check the device against the same
/// digests computed at build time) are what `eval` prints for the same model, mode and seed:
/// the CLI and the firmware compute one digest.
#[test]
fn documented_parity_digests_are_what_eval_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = fs::read_to_string(root.join("BENCHMARKS.md")).unwrap();
    // (model, samples, images: all 10,000 or "first N", digest)
    let rows: Vec<(String, u32, usize, String)> = doc
        .lines()
        .filter(|l| l.starts_with("| `cargo parity-"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let samples = if cells[3].starts_with("mean weights") {
                0
            } else {
                32
            };
            let images = cells[3].split("first ").nth(1).map_or(10_000, |t| {
                let n = t.split(' ').next().unwrap().replace(',', "");
                n.parse().unwrap()
            });
            (cells[2].to_string(), samples, images, cells[4].to_string())
        })
        .collect();
    assert_eq!(rows.len(), 6, "the parity table of BENCHMARKS.md: {rows:?}");
    let data = shared_data("mnist/t10k-images-idx3-ubyte.gz").join("mnist");
    let dir = tempfile::tempdir().unwrap();
    for (i, (model, samples, images, crc)) in rows.iter().enumerate() {
        let report = dir.path().join(format!("r{i}"));
        let out = tinybayes(&[
            "eval",
            "--model",
            p(&root.join("models").join(model)),
            "--images",
            p(&data.join("t10k-images-idx3-ubyte.gz")),
            "--labels",
            p(&data.join("t10k-labels-idx1-ubyte.gz")),
            "--samples",
            &samples.to_string(),
            "--limit",
            &images.to_string(),
            "--seed",
            "31488",
            "--report",
            p(&report),
        ]);
        assert!(out.status.success(), "{out:?}");
        let json: Value =
            serde_json::from_str(&fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["count"], *images);
        assert_eq!(
            json["outputs_crc32"],
            crc.as_str(),
            "{model}, {samples} samples"
        );
    }
}

/// `eval --suggest-thresholds SHARE` proposes unsure thresholds that flag at least SHARE of the
/// wrong answers (the synthetic model is wrong on most of these images), says so on stdout,
/// and refuses a share outside (0, 1] in one line.
#[test]
fn eval_suggests_thresholds_that_flag_the_share_of_wrong_answers() {
    let f = Fixture::new();
    let report_dir = f.path("t");
    let out = f.eval(
        &report_dir,
        &["--samples", "16", "--suggest-thresholds", "0.75"],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("unsure when mutual information >"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let t = &report["thresholds"];
    assert_eq!(t["share"], 0.75);
    for key in ["mutual_information", "confidence"] {
        let flagged = t[key]["wrong_flagged"].as_f64().unwrap();
        assert!((0.75..=1.0).contains(&flagged), "{key}: {t}");
    }
    let out = f.eval(&f.path("t2"), &["--suggest-thresholds", "1.5"]);
    assert_one_line_error(&out, "not a share in (0, 1]");
}
