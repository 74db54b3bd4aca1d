//! Tests of the data readers and the normalisation, on files written by the tests.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array, Array1, Array2, Array3, Array4, ShapeBuilder};
use ndarray_npy::{NpzWriter, WriteNpyExt};

use super::*;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn npy<T: WriteNpyExt>(dir: &Path, name: &str, a: &T) -> PathBuf {
    let p = dir.join(name);
    a.write_npy(File::create(&p).unwrap()).unwrap();
    p
}

/// Writes an `.npz` with the arrays given by the closure.
fn npz(dir: &Path, name: &str, fill: impl FnOnce(&mut NpzWriter<File>)) -> PathBuf {
    let p = dir.join(name);
    let mut w = NpzWriter::new_compressed(File::create(&p).unwrap());
    fill(&mut w);
    w.finish().unwrap();
    p
}

fn series(n: usize, c: usize, t: usize) -> Array3<f32> {
    Array::from_shape_fn((n, c, t), |(i, j, k)| {
        (i as f32) * 0.5 - (j as f32) * 3.0 + (k as f32).sin()
    })
}

/// The error of `r` as one line, checked to be one line.
fn message<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    let m = r.expect_err("expected an error").to_string();
    assert!(!m.contains('\n'), "not one line: {m}");
    m
}

fn keys() -> DataKeys {
    DataKeys::default()
}

#[test]
fn npz_time_series_with_test_split() {
    let d = dir();
    let x = series(6, 3, 8);
    let y = Array1::from(vec![0u8, 1, 2, 1, 0, 4]);
    let xt = series(2, 3, 8);
    let yt = Array1::from(vec![3i64, 1]);
    let p = npz(d.path(), "ts.npz", |w| {
        w.add_array("x_train", &x).unwrap();
        w.add_array("y_train", &y).unwrap();
        w.add_array("x_test", &xt).unwrap();
        w.add_array("y_test", &yt).unwrap();
    });
    let f = load(&p, &keys(), None).unwrap();
    assert_eq!(f.train.samples.shape, [3, 8, 1]);
    assert_eq!(f.train.samples.len(), 6);
    assert_eq!(
        f.train.samples.values,
        Values::F32(x.iter().copied().collect())
    );
    assert_eq!(f.train.labels.as_deref(), Some(&[0u16, 1, 2, 1, 0, 4][..]));
    let test = f.test.as_ref().unwrap();
    assert_eq!(test.labels.as_deref(), Some(&[3u16, 1][..]));
    // K is the largest label of either split plus one.
    assert_eq!(f.classes(None).unwrap(), 5);
    let train = f.training_set(Some(7)).unwrap();
    assert_eq!(train.spec().input_shape, [3, 8, 1]);
    assert_eq!(train.spec().classes, 7);
    assert_eq!(f.eval_set(5).unwrap().len(), 2);
}

#[test]
fn npz_keys_are_overridable_and_test_is_optional() {
    let d = dir();
    let x = Array4::<u8>::from_shape_fn((3, 1, 2, 4), |(i, _, h, w)| (i * 8 + h * 4 + w) as u8);
    let p = npz(d.path(), "img.npz", |w| {
        w.add_array("images", &x).unwrap();
        w.add_array("classes", &Array1::from(vec![1u16, 0, 1]))
            .unwrap();
    });
    let k = DataKeys {
        x_train: "images".into(),
        y_train: "classes".into(),
        ..DataKeys::default()
    };
    let f = load(&p, &k, None).unwrap();
    assert!(f.test.is_none());
    assert_eq!(f.train.samples.shape, [1, 2, 4]);
    assert_eq!(f.train.samples.values, Values::U8((0..24).collect()));
    // With no split, evaluation uses the whole file.
    assert_eq!(f.eval_set(2).unwrap().len(), 3);
    let m = message(load(&p, &keys(), None));
    assert!(
        m.contains("no array \"x_train\"") && m.contains("classes, images"),
        "{m}"
    );
}

#[test]
fn npy_vectors_with_labels_from_a_second_npy() {
    let d = dir();
    let x = Array2::<f64>::from_shape_fn((4, 5), |(i, j)| (i * 5 + j) as f64 / 7.0);
    let xp = npy(d.path(), "x.npy", &x);
    let yp = npy(d.path(), "y.npy", &Array1::from(vec![2i32, 0, 1, 2]));
    let f = load(&xp, &keys(), Some(&yp)).unwrap();
    assert_eq!(f.train.samples.shape, [1, 1, 5]);
    // f64 is converted to f32.
    let want: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    assert_eq!(f.train.samples.values, Values::F32(want));
    assert_eq!(f.training_set(None).unwrap().labels, vec![2, 0, 1, 2]);
    // Without labels the samples load, but a labelled set is refused in one line.
    let f = load(&xp, &keys(), None).unwrap();
    assert!(f.train.labels.is_none());
    assert!(message(f.training_set(None)).contains("no labels"));
    // Mismatched counts.
    let short = npy(d.path(), "short.npy", &Array1::from(vec![0u8, 1]));
    let m = message(load(&xp, &keys(), Some(&short)));
    assert!(m.contains("4 examples but 2 labels"), "{m}");
}

#[test]
fn csv_table() {
    let d = dir();
    let p = d.path().join("t.csv");
    std::fs::write(&p, "a,label,b\n1.5,0,-2\n0.25, 2 ,3e2\n").unwrap();
    let f = load(&p, &keys(), None).unwrap();
    assert_eq!(f.train.samples.shape, [1, 1, 2]);
    assert_eq!(
        f.train.samples.values,
        Values::F32(vec![1.5, -2.0, 0.25, 300.0])
    );
    assert_eq!(f.training_set(None).unwrap().labels, vec![0, 2]);
    assert_eq!(f.classes(None).unwrap(), 3);
}

#[test]
fn csv_errors_are_one_line() {
    let d = dir();
    let cases = [
        ("a,b\n1,2\n", "no \"label\" column"),
        ("label\n1\n", "no feature columns"),
        (
            "a,label\n1,0\n2\n",
            "row 3 has 1 fields but the header has 2",
        ),
        (
            "a,label\nx,0\n",
            "row 2, column \"a\": \"x\" is not a number",
        ),
        ("a,label\n1,0.5\n", "label \"0.5\" is not an integer"),
        ("a,label\nnan,0\n", "non-finite value (NaN)"),
        ("a,label\ninf,0\n", "non-finite value (inf)"),
        ("a,label\n1,-1\n", "label -1 of example 0 is negative"),
        ("a,label\n1,5000\n", "is too large"),
        ("a,label\n", "no rows"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = d.path().join(format!("bad{i}.csv"));
        std::fs::write(&p, text).unwrap();
        let m = message(load(&p, &keys(), None));
        assert!(m.contains(want), "{text:?}: {m}");
        assert!(m.starts_with(&p.display().to_string()), "{m}");
    }
}

#[test]
fn npy_and_npz_errors_are_one_line() {
    let d = dir();
    let y3 = Array1::from(vec![0u8, 1, 0]);
    // Wrong rank of samples.
    let p = npz(d.path(), "rank.npz", |w| {
        w.add_array("x_train", &Array1::from(vec![1.0f32, 2.0, 3.0]))
            .unwrap();
        w.add_array("y_train", &y3).unwrap();
    });
    assert!(message(load(&p, &keys(), None)).contains("expected [N, D] vectors"));
    // Unsupported sample dtype.
    let p = npz(d.path(), "dtype.npz", |w| {
        w.add_array("x_train", &Array2::<i32>::zeros((3, 2)))
            .unwrap();
        w.add_array("y_train", &y3).unwrap();
    });
    let m = message(load(&p, &keys(), None));
    assert!(m.contains("dtype <i4, which is not supported"), "{m}");
    // Float labels.
    let p = npz(d.path(), "fl.npz", |w| {
        w.add_array("x_train", &Array2::<f32>::zeros((3, 2)))
            .unwrap();
        w.add_array("y_train", &Array1::from(vec![0.0f32, 1.0, 0.0]))
            .unwrap();
    });
    assert!(message(load(&p, &keys(), None)).contains("any integer dtype"));
    // Negative label and a label beyond the given class count.
    let p = npz(d.path(), "neg.npz", |w| {
        w.add_array("x_train", &Array2::<f32>::zeros((3, 2)))
            .unwrap();
        w.add_array("y_train", &Array1::from(vec![0i16, -3, 1]))
            .unwrap();
    });
    let m = message(load(&p, &keys(), None));
    assert!(m.contains("label -3 of example 1 is negative"), "{m}");
    let p = npz(d.path(), "big.npz", |w| {
        w.add_array("x_train", &Array2::<f32>::zeros((3, 2)))
            .unwrap();
        w.add_array("y_train", &Array1::from(vec![0u32, 9, 1]))
            .unwrap();
    });
    let f = load(&p, &keys(), None).unwrap();
    let m = message(f.training_set(Some(4)));
    assert!(
        m.contains("label 9 of example 1 is not below the number of classes 4"),
        "{m}"
    );
    // NaN among the samples.
    let mut x = Array2::<f32>::zeros((3, 2));
    x[[2, 1]] = f32::NAN;
    let p = npz(d.path(), "nan.npz", |w| {
        w.add_array("x_train", &x).unwrap();
        w.add_array("y_train", &y3).unwrap();
    });
    let m = message(load(&p, &keys(), None));
    assert!(
        m.contains("example 2 has a non-finite value (NaN) at position 1"),
        "{m}"
    );
    // Mismatched counts.
    let p = npz(d.path(), "count.npz", |w| {
        w.add_array("x_train", &Array2::<f32>::zeros((4, 2)))
            .unwrap();
        w.add_array("y_train", &y3).unwrap();
    });
    let m = message(load(&p, &keys(), None));
    assert!(
        m.contains("4 examples but 3 labels (x_train and y_train)"),
        "{m}"
    );
    // Test split of another shape.
    let p = npz(d.path(), "split.npz", |w| {
        w.add_array("x_train", &Array2::<f32>::zeros((3, 2)))
            .unwrap();
        w.add_array("y_train", &y3).unwrap();
        w.add_array("x_test", &Array2::<f32>::zeros((3, 5)))
            .unwrap();
    });
    assert!(message(load(&p, &keys(), None)).contains("test examples are 1x1x5"));
    // Not a zip archive; a truncated one.
    let p = d.path().join("junk.npz");
    std::fs::write(&p, b"this is not a zip archive at all").unwrap();
    assert!(message(load(&p, &keys(), None)).contains("not a readable .npz"));
    let good = npz(d.path(), "good.npz", |w| {
        w.add_array("x_train", &Array2::<f32>::zeros((30, 20)))
            .unwrap();
        w.add_array("y_train", &Array1::<u8>::zeros(30)).unwrap();
    });
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.path().join("cut.npz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    message(load(&cut, &keys(), None));
    // Unknown extension; missing file.
    assert!(message(load(Path::new("x.parquet"), &keys(), None)).contains("unknown data format"));
    assert!(message(load(&d.path().join("none.npy"), &keys(), None)).contains("cannot read"));
}

#[test]
fn npy_truncated_corrupt_and_absurd() {
    let d = dir();
    let x = Array2::<f32>::from_elem((10, 4), 0.5);
    let p = npy(d.path(), "x.npy", &x);
    let bytes = std::fs::read(&p).unwrap();
    let cut = d.path().join("cut.npy");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let m = message(load(&cut, &keys(), None));
    assert!(
        m.contains("truncated") && m.contains("needs 160 bytes"),
        "{m}"
    );
    let long = d.path().join("long.npy");
    let mut more = bytes.clone();
    more.extend_from_slice(&[0; 3]);
    std::fs::write(&long, &more).unwrap();
    assert!(message(load(&long, &keys(), None)).contains("3 bytes follow"));
    let junk = d.path().join("junk.npy");
    std::fs::write(&junk, b"\x93NUMPY garbage").unwrap();
    assert!(message(load(&junk, &keys(), None)).contains("not a valid .npy array"));
    // A header promising 2^40 x 2^20 floats: refused before any allocation.
    let absurd = d.path().join("absurd.npy");
    let mut f = File::create(&absurd).unwrap();
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576), }";
    let mut header = dict.to_string();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    drop(f);
    let m = message(load(&absurd, &keys(), None));
    assert!(m.contains("more than the limit of 1073741824"), "{m}");
    // Fortran order is refused.
    let fortran = Array2::<f32>::zeros((3, 2).f());
    let p = npy(d.path(), "f.npy", &fortran);
    assert!(message(load(&p, &keys(), None)).contains("Fortran-order"));
}

/// Mean and standard deviation of channel `c` over every example and position, two-pass in
/// f64, independently of the normaliser's single pass.
fn reference_stats(x: &Array3<f32>, c: usize) -> (f64, f64, f64, f64) {
    let vals: Vec<f64> = x
        .index_axis(ndarray::Axis(1), c)
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

#[test]
fn normalisation_matches_an_independent_computation() {
    let x = Array3::<f32>::from_shape_fn((7, 3, 11), |(i, c, t)| {
        100.0 * c as f32 + ((i * 13 + t * 7) % 17) as f32 * (c as f32 + 0.5) - 4.0
    });
    let samples = Samples {
        shape: [3, 11, 1],
        values: Values::F32(x.iter().copied().collect()),
    };
    let st = Normalization::fit(NormalizeMode::Standardize, &samples);
    let sc = Normalization::fit(NormalizeMode::Scale, &samples);
    let un = Normalization::fit(NormalizeMode::Unit, &samples);
    for c in 0..3 {
        let (mean, sd, min, max) = reference_stats(&x, c);
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(
            close(st.scale[c], 1.0 / sd),
            "{c}: {} {}",
            st.scale[c],
            1.0 / sd
        );
        assert!(close(st.offset[c], -mean / sd));
        assert!(close(sc.scale[c], 1.0 / min.abs().max(max.abs())));
        assert_eq!(sc.offset[c], 0.0);
        assert!(close(un.scale[c], 1.0 / (max - min)));
        assert!(close(un.offset[c], -min / (max - min)));
    }
    // Applied, standardised channels have mean 0 and variance 1.
    let z = st.apply(&samples);
    let z = Array3::from_shape_vec((7, 3, 11), z).unwrap();
    for c in 0..3 {
        let (mean, sd, _, _) = reference_stats(&z, c);
        assert!(
            mean.abs() < 1e-5 && (sd - 1.0).abs() < 1e-5,
            "{c}: {mean} {sd}"
        );
    }
    // Scale keeps zero at zero and lands in [-1, 1].
    assert!(sc.apply(&samples).iter().all(|v| v.abs() <= 1.0));
    // A constant channel is not divided by zero.
    let flat = Samples {
        shape: [1, 1, 2],
        values: Values::F32(vec![3.0; 8]),
    };
    let n = Normalization::fit(NormalizeMode::Standardize, &flat);
    assert_eq!((n.scale[0], n.offset[0]), (1.0, -3.0));
    assert!(n.apply(&flat).iter().all(|&v| v == 0.0));
    let none = Normalization::fit(NormalizeMode::None, &samples);
    assert_eq!(none.apply(&samples), x.iter().copied().collect::<Vec<_>>());
}

#[test]
fn bytes_keep_the_mnist_recipe_bit_for_bit() {
    let pixels: Vec<u8> = (0..=255u8).cycle().take(4 * 2 * 3 * 16).collect();
    let labels: Vec<u8> = (0..32).map(|i| (i % 10) as u8).collect();
    let old = crate::idx::Dataset::new(2, 3, pixels[..32 * 6].to_vec(), labels, 10).unwrap();
    let new = DataSet::from(old.clone());
    let norm = Normalization::fit(
        NormalizeMode::default_for(&new.samples.values),
        &new.samples,
    );
    assert_eq!(norm.mode, NormalizeMode::Unit);
    assert_eq!((norm.scale[0], norm.offset[0]), (1.0 / 255.0, 0.0));
    let (a, b) = (old.to_f32(), new.to_f32(&norm));
    assert_eq!(a.shape(), b.shape());
    assert!(a
        .iter()
        .zip(b.iter())
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    // Same fingerprint (old runs resume), same validation split.
    assert_eq!(old.fingerprint(), new.fingerprint());
    let (ot, ov) = old.split_validation(5, 9).unwrap();
    let (nt, nv) = new.split_validation(5, 9).unwrap();
    assert_eq!(DataSet::from(ot), nt);
    assert_eq!(DataSet::from(ov), nv);
    // f32 data hashes differently from the same numbers as bytes.
    let mut f = new.clone();
    f.samples.values = Values::F32(vec![0.0; new.samples.values.len()]);
    assert_ne!(f.fingerprint(), new.fingerprint());
}

#[test]
fn shape_check_names_both_shapes() {
    let s = Samples {
        shape: [1, 14, 56],
        values: Values::U8(vec![0; 14 * 56]),
    };
    assert_eq!(
        s.check_shape([1, 28, 28]).unwrap_err(),
        "the data's examples are 1x14x56 but the model's input is 1x28x28"
    );
    assert!(s.check_shape([1, 14, 56]).is_ok());
}

/// The real HMP accelerometer set in `../shared` (never committed): its shapes.
#[test]
fn hmp_shapes_when_present() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/hmp-adl/hmp.npz");
    if !p.exists() {
        eprintln!(
            "skipped: {} is absent (the HMP set lives in ../shared)",
            p.display()
        );
        return;
    }
    let f = load(&p, &keys(), None).unwrap();
    assert_eq!(f.train.samples.shape, [3, 128, 1]);
    assert_eq!(f.train.samples.len(), 4350);
    assert_eq!(f.test.as_ref().unwrap().samples.len(), 1371);
    assert_eq!(f.classes(None).unwrap(), 14);
    let train = f.training_set(None).unwrap();
    let n = Normalization::fit(NormalizeMode::Standardize, &train.samples);
    assert_eq!(n.channels(), 3);
    assert!(n.scale.iter().all(|s| s.is_finite() && *s > 0.0));
}

#[test]
fn data_keys_parse_name_key_pairs() {
    let keys = DataKeys::parse("x_test=X_val, y_test = y_val").unwrap();
    assert_eq!(keys.x_test, "X_val");
    assert_eq!(keys.y_test, "y_val");
    assert_eq!(keys.x_train, "x_train");
    assert_eq!(DataKeys::parse("").unwrap(), DataKeys::default());
    for (bad, needle) in [
        ("x_test", "NAME=KEY"),
        ("x_test=", "empty key"),
        ("labels=y", "is not x_train"),
    ] {
        let err = DataKeys::parse(bad).unwrap_err();
        assert!(err.contains(needle), "{bad}: {err}");
    }
}
