//! NumPy `.npy` arrays and `.npz` archives of them (read with the `ndarray-npy` crate).
//!
//! Each array's header is parsed first and its dtype, rank and size checked (at most
//! [`super::MAX_DATA_BYTES`], and no more than the file or archive entry declares) before its
//! data is allocated and read.
//!
//! - `.npz`: samples and labels under the keys of [`DataKeys`] (`x_train`, `y_train`, and
//!   optionally `x_test`, `y_test`); a split without its `y_*` array has no labels.
//! - `.npy`: samples only; their labels, if any, come from a second `.npy` of integers
//!   (`--labels FILE.npy`). The whole file is one split (evaluation uses all of it).
//!
//! Samples are f32, f64 (converted to f32) or u8, C order; labels any integer dtype.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use ndarray_npy::npy::header::Header;
use ndarray_npy::ReadDataError;
use ndarray_npy::ReadableElement;

use super::{
    check_finite, class_indices, input_shape, DataError, DataErrorKind, DataFile, DataKeys, Part,
    Samples, Values, MAX_DATA_BYTES,
};

/// The sample dtypes accepted.
const SAMPLE_DTYPES: &str = "float32, float64 or uint8";
/// The label dtypes accepted.
const LABEL_DTYPES: &str = "any integer dtype";

/// Counts the bytes read through it (to know where a header ends).
pub(crate) struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// An `.npy` stream whose header has been read: the header, and the reader at the first data
/// byte. What the data readers and `tinybayes import` both start from.
pub(crate) struct NpyStream<R> {
    /// The parsed header.
    pub header: Header,
    /// The stream, positioned after the header.
    pub reader: Counting<R>,
}

impl<R: Read> NpyStream<R> {
    /// Reads the header of an `.npy` stream.
    pub fn open(reader: R) -> Result<Self, ndarray_npy::npy::header::ReadHeaderError> {
        let mut reader = Counting {
            inner: reader,
            read: 0,
        };
        let header = Header::from_reader(&mut reader)?;
        Ok(NpyStream { header, reader })
    }

    /// The dtype descriptor as NumPy writes it (`<f4`), or the structured type's text.
    pub fn descr(&self) -> String {
        self.header
            .type_descriptor
            .as_string()
            .cloned()
            .unwrap_or_else(|| self.header.type_descriptor.to_string())
    }

    /// The bytes that follow the header in a stream of `total` bytes.
    pub fn available(&self, total: u64) -> u64 {
        total.saturating_sub(self.reader.read)
    }
}

/// An array as read: its shape and elements.
enum Elements {
    U8(Vec<u8>),
    F32(Vec<f32>),
    Int(Vec<i128>),
}

/// What an array is expected to hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Samples,
    Labels,
}

/// Reads one `.npy` stream of `total` bytes (when known), checking its header before the data.
fn read_array<R: Read>(
    reader: R,
    total: Option<u64>,
    what: &str,
    want: Want,
) -> Result<(Vec<usize>, Elements), DataErrorKind> {
    let stream = NpyStream::open(reader)
        .map_err(|e| DataErrorKind::Corrupt(format!("{what}: not a valid .npy array ({e})")))?;
    let header = &stream.header;
    if header.layout.is_fortran() {
        return Err(DataErrorKind::Shape(format!(
            "{what}: Fortran-order arrays are not supported (save np.ascontiguousarray(a))"
        )));
    }
    let descr = stream.descr();
    let (kind, size) = parse_descr(&descr).ok_or_else(|| DataErrorKind::Dtype {
        what: what.into(),
        dtype: descr.clone(),
        supported: supported(want),
    })?;
    let ok = match want {
        Want::Samples => matches!((kind, size), ('f', 4 | 8) | ('u', 1)),
        Want::Labels => matches!(kind, 'i' | 'u'),
    };
    if !ok {
        return Err(DataErrorKind::Dtype {
            what: what.into(),
            dtype: descr,
            supported: supported(want),
        });
    }
    let shape = header.shape.clone();
    let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let bytes = count.and_then(|c| c.checked_mul(size as u64));
    let (count, bytes) = match (count, bytes) {
        (Some(c), Some(b)) if b <= MAX_DATA_BYTES && usize::try_from(c).is_ok() => (c as usize, b),
        _ => {
            return Err(DataErrorKind::TooLarge {
                what: what.into(),
                shape,
                bytes: bytes.unwrap_or(u64::MAX),
                limit: MAX_DATA_BYTES,
            })
        }
    };
    if let Some(total) = total {
        let available = stream.available(total);
        if available < bytes {
            return Err(DataErrorKind::Corrupt(format!(
                "{what}: truncated: its shape {shape:?} needs {bytes} bytes of data but {available} follow the header"
            )));
        }
        if available > bytes {
            return Err(DataErrorKind::Corrupt(format!(
                "{what}: {} bytes follow the {bytes} bytes of data its shape {shape:?} declares",
                available - bytes
            )));
        }
    }
    let NpyStream {
        header,
        reader: mut r,
    } = stream;
    let desc = &header.type_descriptor;
    let data_err = |e: ReadDataError| match e {
        ReadDataError::MissingData => DataErrorKind::Corrupt(format!(
            "{what}: truncated: its shape {shape:?} needs {bytes} bytes of data"
        )),
        other => DataErrorKind::Corrupt(format!("{what}: {other}")),
    };
    macro_rules! ints {
        ($t:ty) => {
            Elements::Int(
                <$t>::read_to_end_exact_vec(&mut r, desc, count)
                    .map_err(data_err)?
                    .into_iter()
                    .map(i128::from)
                    .collect(),
            )
        };
    }
    let elements = match (kind, size) {
        ('u', 1) if want == Want::Samples => {
            Elements::U8(u8::read_to_end_exact_vec(&mut r, desc, count).map_err(data_err)?)
        }
        ('f', 4) => {
            Elements::F32(f32::read_to_end_exact_vec(&mut r, desc, count).map_err(data_err)?)
        }
        ('f', _) => Elements::F32(
            f64::read_to_end_exact_vec(&mut r, desc, count)
                .map_err(data_err)?
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        ),
        ('u', 1) => ints!(u8),
        ('u', 2) => ints!(u16),
        ('u', 4) => ints!(u32),
        ('u', _) => ints!(u64),
        ('i', 1) => ints!(i8),
        ('i', 2) => ints!(i16),
        ('i', 4) => ints!(i32),
        _ => ints!(i64),
    };
    Ok((shape, elements))
}

fn supported(want: Want) -> &'static str {
    match want {
        Want::Samples => SAMPLE_DTYPES,
        Want::Labels => LABEL_DTYPES,
    }
}

/// `"<f4"` → `('f', 4)`: kind letter and size of a plain numeric dtype (any byte order mark).
fn parse_descr(descr: &str) -> Option<(char, usize)> {
    let body = descr.trim_start_matches(['<', '>', '|', '=']);
    let mut chars = body.chars();
    let kind = chars.next()?;
    let size: usize = chars.as_str().parse().ok()?;
    matches!((kind, size), ('f', 4 | 8) | ('u' | 'i', 1 | 2 | 4 | 8)).then_some((kind, size))
}

/// Sample array → [`Samples`] (rank mapped onto `[C, H, W]`, values checked finite).
fn to_samples(shape: &[usize], elements: Elements) -> Result<Samples, DataErrorKind> {
    let input = input_shape(shape).map_err(DataErrorKind::Shape)?;
    let values = match elements {
        Elements::U8(v) => Values::U8(v),
        Elements::F32(v) => Values::F32(v),
        Elements::Int(_) => unreachable!("sample arrays are read as u8 or floats"),
    };
    let samples = Samples {
        shape: input,
        values,
    };
    if samples.is_empty() {
        return Err(DataErrorKind::Empty(format!("samples of shape {shape:?}")));
    }
    check_finite(&samples)?;
    Ok(samples)
}

/// Label array → class indices, checked to be one per example.
fn to_labels(
    shape: &[usize],
    elements: Elements,
    samples: usize,
    where_: &str,
) -> Result<Vec<u16>, DataErrorKind> {
    let Elements::Int(values) = elements else {
        unreachable!("label arrays are read as integers")
    };
    if shape.len() != 1 && !(shape.len() == 2 && shape[1] == 1) {
        return Err(DataErrorKind::Shape(format!(
            "labels have shape {shape:?}; expected [N], one class index per example"
        )));
    }
    if values.len() != samples {
        return Err(DataErrorKind::CountMismatch {
            samples,
            labels: values.len(),
            where_: where_.into(),
        });
    }
    class_indices(&values)
}

/// Reads a `.npy` of samples and, when given, a `.npy` of their labels.
pub fn load_npy(path: &Path, labels: Option<&Path>) -> Result<DataFile, DataError> {
    let (shape, elements) = read_npy_file(path, "samples", Want::Samples)?;
    let samples = to_samples(&shape, elements).map_err(|k| DataError::new(path, k))?;
    let labels = match labels {
        Some(lp) => {
            let (shape, elements) = read_npy_file(lp, "labels", Want::Labels)?;
            let where_ = format!("samples {}", path.display());
            Some(
                to_labels(&shape, elements, samples.len(), &where_)
                    .map_err(|k| DataError::new(lp, k))?,
            )
        }
        None => None,
    };
    Ok(DataFile {
        path: path.to_path_buf(),
        train: Part { samples, labels },
        test: None,
    })
}

fn read_npy_file(path: &Path, what: &str, want: Want) -> Result<(Vec<usize>, Elements), DataError> {
    let err = |k| DataError::new(path, k);
    let file = File::open(path).map_err(|e| err(DataErrorKind::Io(e)))?;
    let total = file
        .metadata()
        .map_err(|e| err(DataErrorKind::Io(e)))?
        .len();
    read_array(io::BufReader::new(file), Some(total), what, want).map_err(err)
}

/// Reads an `.npz` archive's training split (`keys.x_train`, `keys.y_train`) and, when the
/// archive has `keys.x_test`, its test split.
pub fn load_npz(path: &Path, keys: &DataKeys) -> Result<DataFile, DataError> {
    let err = |k| DataError::new(path, k);
    let file = File::open(path).map_err(|e| err(DataErrorKind::Io(e)))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| {
        err(DataErrorKind::Corrupt(format!(
            "not a readable .npz (zip) archive: {e}"
        )))
    })?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect();
    let has = |key: &str| names.iter().any(|n| n == key);
    let mut read = |key: &str, want: Want| -> Result<(Vec<usize>, Elements), DataError> {
        if !has(key) {
            let mut available = names.clone();
            available.sort();
            return Err(err(DataErrorKind::MissingKey {
                key: key.into(),
                available,
            }));
        }
        let exact = zip.file_names().any(|n| n == key);
        let name = if exact {
            key.to_string()
        } else {
            format!("{key}.npy")
        };
        let entry = zip
            .by_name(&name)
            .map_err(|e| err(DataErrorKind::Corrupt(format!("array {key:?}: {e}"))))?;
        let total = entry.size();
        read_array(entry, Some(total), &format!("array {key:?}"), want).map_err(|k| match k {
            // A corrupt deflate stream or a bad checksum surfaces as an I/O error.
            DataErrorKind::Io(e) => err(DataErrorKind::Corrupt(format!("array {key:?}: {e}"))),
            other => err(other),
        })
    };
    let mut part = |x: &str, y: &str| -> Result<Part, DataError> {
        let (shape, elements) = read(x, Want::Samples)?;
        let samples =
            to_samples(&shape, elements).map_err(|k| prefix(path, &format!("array {x:?}"), k))?;
        let labels = if has(y) {
            let (shape, elements) = read(y, Want::Labels)?;
            let where_ = format!("{x} and {y}");
            Some(
                to_labels(&shape, elements, samples.len(), &where_)
                    .map_err(|k| prefix(path, &format!("array {y:?}"), k))?,
            )
        } else {
            None
        };
        Ok(Part { samples, labels })
    };
    let train = part(&keys.x_train, &keys.y_train)?;
    let test = if has(&keys.x_test) {
        let test = part(&keys.x_test, &keys.y_test)?;
        if test.samples.shape != train.samples.shape {
            return Err(err(DataErrorKind::Shape(format!(
                "test examples are {} but training examples are {}",
                test.samples.shape_text(),
                train.samples.shape_text()
            ))));
        }
        if test.samples.values.dtype() != train.samples.values.dtype() {
            return Err(err(DataErrorKind::Shape(format!(
                "test examples are {} but training examples are {}",
                test.samples.values.dtype(),
                train.samples.values.dtype()
            ))));
        }
        Some(test)
    } else {
        None
    };
    Ok(DataFile {
        path: path.to_path_buf(),
        train,
        test,
    })
}

/// Names the array in an error about its contents.
fn prefix(path: &Path, what: &str, kind: DataErrorKind) -> DataError {
    let kind = match kind {
        DataErrorKind::Shape(m) => DataErrorKind::Shape(format!("{what}: {m}")),
        DataErrorKind::Empty(m) => DataErrorKind::Empty(format!("{what}: {m}")),
        DataErrorKind::Label { index, label, why } => DataErrorKind::Label {
            index,
            label,
            why: format!("{why} (in {what})"),
        },
        DataErrorKind::NonFinite {
            index,
            position,
            value,
        } => DataErrorKind::Corrupt(format!(
            "{what}: example {index} has a non-finite value ({value}) at position {position}"
        )),
        other => other,
    };
    DataError::new(path, kind)
}
