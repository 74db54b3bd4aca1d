//! IDX file reader (the MNIST format) and an in-memory image-classification [`Dataset`].
//!
//! An IDX file is a big-endian header followed by raw data:
//!
//! ```text
//! 0x00 0x00 <type> <rank>   magic: two zero bytes, element type, number of dimensions
//! <rank> x u32 (big-endian) size of each dimension
//! data                      product(sizes) elements, row-major
//! ```
//!
//! Only the unsigned-byte element type (`0x08`) is supported, which is what MNIST uses: images are
//! `0x00000803` (`[n, rows, cols]`) and labels are `0x00000801` (`[n]`). Files may be plain or
//! gzip-compressed; compression is detected from the gzip magic bytes `1f 8b`, never from the file
//! name. Every malformed input yields a typed [`IdxError`]; nothing here panics on bad data, and
//! the decoded size is capped at [`MAX_DECODED_BYTES`] so a hostile header or a gzip bomb cannot
//! exhaust memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Largest decoded payload accepted (1 GiB); larger headers are rejected as absurd.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Element-type code of unsigned bytes, the only type this reader accepts.
pub const IDX_TYPE_U8: u8 = 0x08;

/// The one wording of an empty image set, wherever it is found empty.
pub const EMPTY_DATA_SET: &str = "the data set is empty (no images)";

/// Number of classes MNIST labels range over.
pub const MNIST_CLASSES: usize = 10;

/// Why an IDX file or a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be opened or read. The message includes the cause, so the cause is
    /// not also exposed as `source()` (a chained report would print it twice).
    #[error("cannot read {path}: {error}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        error: io::Error,
    },
    /// The gzip stream is corrupt.
    #[error("corrupt gzip stream: {0}")]
    Gzip(io::Error),
    /// The file ends before the header or the declared data is complete.
    #[error("truncated IDX data: expected {expected} bytes of {part}, found {found}")]
    Truncated {
        /// Which part was cut short (`"header"` or `"data"`).
        part: &'static str,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },
    /// More bytes follow the declared data: the header's counts do not match the data length.
    #[error("IDX data longer than its header declares ({expected} bytes declared)")]
    TrailingData {
        /// Bytes the header declares.
        expected: u64,
    },
    /// The first two magic bytes are not zero: not an IDX file.
    #[error("bad IDX magic {found:02x?} (expected 00 00 <type> <rank>)")]
    BadMagic {
        /// The four magic bytes found.
        found: [u8; 4],
    },
    /// The element type is not unsigned byte (`0x08`).
    #[error("unsupported IDX element type 0x{code:02x} (only 0x08, unsigned byte, is supported)")]
    UnsupportedType {
        /// Type code found.
        code: u8,
    },
    /// The file has the wrong number of dimensions for what was asked.
    #[error("IDX rank {found} where {expected} was expected")]
    WrongRank {
        /// Rank required by the caller.
        expected: u8,
        /// Rank in the file.
        found: u8,
    },
    /// The declared dimensions are absurd (overflow or more than [`MAX_DECODED_BYTES`]).
    #[error("IDX dimensions {dims:?} are absurd (more than {limit} bytes)")]
    TooLarge {
        /// Dimensions from the header.
        dims: Vec<u32>,
        /// The cap in bytes.
        limit: u64,
    },
    /// Image and label files disagree on the number of examples.
    #[error("{images} images but {labels} labels")]
    CountMismatch {
        /// Images in the image file.
        images: usize,
        /// Labels in the label file.
        labels: usize,
    },
    /// A label is not a valid class index.
    #[error("label {label} at index {index} is not below the number of classes {classes}")]
    LabelOutOfRange {
        /// Position of the bad label.
        index: usize,
        /// Its value.
        label: u8,
        /// Number of classes.
        classes: usize,
    },
    /// The dataset has no examples (or images have zero pixels).
    #[error("{EMPTY_DATA_SET}")]
    Empty,
    /// A validation split or subset asks for more examples than exist.
    #[error("cannot take {requested} examples from a dataset of {available} (at least one must remain for training)")]
    SplitTooLarge {
        /// Examples requested.
        requested: usize,
        /// Examples available.
        available: usize,
    },
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// Row-major elements; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

/// Reads an IDX array from `reader`, transparently un-gzipping it when it starts with `1f 8b`.
///
/// Errors: [`IdxError::Gzip`] for a corrupt stream, and the header/data errors listed on
/// [`IdxError`]. I/O failures other than corruption are reported as `Io` with an empty path.
pub fn read_idx<R: Read>(reader: R) -> Result<IdxArray, IdxError> {
    let mut buffered = BufReader::new(reader);
    let is_gzip = starts_with_gzip_magic(&mut buffered).map_err(|e| io_err(Path::new(""), e))?;
    if is_gzip {
        read_idx_plain(MultiGzDecoder::new(buffered), true)
    } else {
        read_idx_plain(buffered, false)
    }
}

/// Reads an IDX file (plain or gzip) from disk.
pub fn read_idx_file(path: &Path) -> Result<IdxArray, IdxError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    read_idx(file).map_err(|e| match e {
        IdxError::Io { error, .. } => io_err(path, error),
        other => other,
    })
}

/// Reads an image file: rank 3, `[n, rows, cols]`.
/// Reads an IDX image file with errors that name the file once.
pub fn load_images(path: &Path) -> anyhow::Result<IdxArray> {
    read_images(path).map_err(|e| match e {
        IdxError::Io { .. } => anyhow::anyhow!(e),
        other => anyhow::anyhow!(other).context(format!("images {}", path.display())),
    })
}

/// Reads an IDX label file with errors that name the file once.
pub fn load_labels(path: &Path) -> anyhow::Result<IdxArray> {
    read_labels(path).map_err(|e| match e {
        IdxError::Io { .. } => anyhow::anyhow!(e),
        other => anyhow::anyhow!(other).context(format!("labels {}", path.display())),
    })
}

/// Reads an image file and its label file as a [`Dataset`] of `classes` classes, with errors
/// that name the file at fault once.
pub fn load_labelled(images: &Path, labels: &Path, classes: usize) -> anyhow::Result<Dataset> {
    let images = load_images(images)?;
    let labels = load_labels(labels)?;
    Dataset::from_idx(images, labels, classes).map_err(|e| match e {
        IdxError::CountMismatch { .. } => {
            anyhow::anyhow!(e).context("images and labels do not match")
        }
        other => anyhow::anyhow!(other),
    })
}

pub fn read_images(path: &Path) -> Result<IdxArray, IdxError> {
    let arr = read_idx_file(path)?;
    check_rank(&arr, 3)?;
    Ok(arr)
}

/// Reads a label file: rank 1, `[n]`.
pub fn read_labels(path: &Path) -> Result<IdxArray, IdxError> {
    let arr = read_idx_file(path)?;
    check_rank(&arr, 1)?;
    Ok(arr)
}

fn check_rank(arr: &IdxArray, expected: u8) -> Result<(), IdxError> {
    if arr.dims.len() != usize::from(expected) {
        return Err(IdxError::WrongRank {
            expected,
            found: u8::try_from(arr.dims.len()).unwrap_or(u8::MAX),
        });
    }
    Ok(())
}

fn io_err(path: &Path, error: io::Error) -> IdxError {
    IdxError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// True when the buffered stream starts with the gzip magic `1f 8b` (nothing is consumed).
fn starts_with_gzip_magic<R: Read>(reader: &mut BufReader<R>) -> io::Result<bool> {
    loop {
        match reader.fill_buf() {
            Ok(buf) => return Ok(buf.len() >= 2 && buf[0] == 0x1f && buf[1] == 0x8b),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads up to `want` bytes into `out`, returning how many were read (fewer only at end of stream).
fn read_up_to<R: Read>(
    reader: &mut R,
    want: u64,
    out: &mut Vec<u8>,
    gz: bool,
) -> Result<u64, IdxError> {
    reader
        .take(want)
        .read_to_end(out)
        .map(|n| n as u64)
        .map_err(|e| classify(e, gz))
}

fn classify(e: io::Error, gz: bool) -> IdxError {
    if gz && e.kind() != io::ErrorKind::Interrupted {
        IdxError::Gzip(e)
    } else {
        io_err(Path::new(""), e)
    }
}

fn read_idx_plain<R: Read>(mut reader: R, gz: bool) -> Result<IdxArray, IdxError> {
    let mut magic = Vec::with_capacity(4);
    let got = read_up_to(&mut reader, 4, &mut magic, gz)?;
    if got < 4 {
        return Err(IdxError::Truncated {
            part: "header",
            expected: 4,
            found: got,
        });
    }
    let magic = [magic[0], magic[1], magic[2], magic[3]];
    if magic[0] != 0 || magic[1] != 0 {
        return Err(IdxError::BadMagic { found: magic });
    }
    if magic[2] != IDX_TYPE_U8 {
        return Err(IdxError::UnsupportedType { code: magic[2] });
    }
    let rank = u64::from(magic[3]);
    let mut dim_bytes = Vec::with_capacity(4 * usize::from(magic[3]));
    let got = read_up_to(&mut reader, 4 * rank, &mut dim_bytes, gz)?;
    if got < 4 * rank {
        return Err(IdxError::Truncated {
            part: "header",
            expected: 4 + 4 * rank,
            found: 4 + got,
        });
    }
    let dims32: Vec<u32> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let total = dims32
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .filter(|&t| t <= MAX_DECODED_BYTES);
    let Some(total) = total else {
        return Err(IdxError::TooLarge {
            dims: dims32,
            limit: MAX_DECODED_BYTES,
        });
    };
    // Grow the buffer as data arrives rather than trusting the header for the allocation.
    let mut data = Vec::with_capacity(total.min(1 << 24) as usize);
    let got = read_up_to(&mut reader, total, &mut data, gz)?;
    if got < total {
        return Err(IdxError::Truncated {
            part: "data",
            expected: total,
            found: got,
        });
    }
    let mut extra = Vec::with_capacity(1);
    if read_up_to(&mut reader, 1, &mut extra, gz)? > 0 {
        return Err(IdxError::TrailingData { expected: total });
    }
    Ok(IdxArray {
        dims: dims32.iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Grey-scale images with class labels, held as raw bytes (one byte per pixel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Pixels, `len() * rows * cols` bytes, image after image, row-major.
    pub pixels: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u8>,
    /// Number of classes the labels range over.
    pub classes: usize,
}

/// Loads an image file and a label file (plain or gzip) as a [`Dataset`] of [`MNIST_CLASSES`]
/// classes, checking that counts agree and every label is a valid class.
pub fn load_dataset(images_path: &Path, labels_path: &Path) -> Result<Dataset, IdxError> {
    let images = read_images(images_path)?;
    let labels = read_labels(labels_path)?;
    Dataset::from_idx(images, labels, MNIST_CLASSES)
}

impl Dataset {
    /// Builds a dataset from decoded image (rank 3) and label (rank 1) arrays.
    pub fn from_idx(images: IdxArray, labels: IdxArray, classes: usize) -> Result<Self, IdxError> {
        check_rank(&images, 3)?;
        check_rank(&labels, 1)?;
        let (rows, cols) = (images.dims[1], images.dims[2]);
        Self::new(rows, cols, images.data, labels.data, classes)
    }

    /// Builds a dataset from raw parts, validating sizes and labels.
    pub fn new(
        rows: usize,
        cols: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
        classes: usize,
    ) -> Result<Self, IdxError> {
        let per_image = rows.checked_mul(cols).unwrap_or(0);
        if per_image == 0 || labels.is_empty() || classes == 0 {
            return Err(IdxError::Empty);
        }
        if pixels.len() % per_image != 0 || pixels.len() / per_image != labels.len() {
            return Err(IdxError::CountMismatch {
                images: pixels.len() / per_image,
                labels: labels.len(),
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= classes)
        {
            return Err(IdxError::LabelOutOfRange {
                index,
                label,
                classes,
            });
        }
        Ok(Self {
            rows,
            cols,
            pixels,
            labels,
            classes,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples (never the case for a validated dataset).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (`rows * cols`).
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }

    /// The raw pixels of image `i`, or `None` when out of range.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let f = self.features();
        self.pixels.get(i * f..(i + 1) * f)
    }

    /// All images as an `[n, rows*cols]` matrix of `p / 255` in `[0, 1]`.
    pub fn to_f32(&self) -> Array2<f32> {
        let data: Vec<f32> = self.pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        Array2::from_shape_vec((self.len(), self.features()), data)
            .unwrap_or_else(|_| unreachable!("pixel count validated in Dataset::new"))
    }

    /// Labels as `usize` class indices.
    pub fn labels_usize(&self) -> Vec<usize> {
        self.labels.iter().map(|&l| usize::from(l)).collect()
    }

    /// The examples at `indices` (in that order), as a new dataset.
    ///
    /// Indices must be in range (callers in this crate guarantee it); out-of-range indices are
    /// skipped rather than panicking.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let f = self.features();
        let mut pixels = Vec::with_capacity(indices.len() * f);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if let Some(img) = self.image(i) {
                pixels.extend_from_slice(img);
                labels.push(self.labels[i]);
            }
        }
        Dataset {
            rows: self.rows,
            cols: self.cols,
            pixels,
            labels,
            classes: self.classes,
        }
    }

    /// The first `n` examples (all of them when `n >= len()`).
    pub fn take(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }

    /// Splits off `n_val` examples for validation, chosen by a seeded shuffle, and returns
    /// `(train, validation)`. Both keep the original relative order of their examples, so the
    /// split depends only on `(len, n_val, seed)`. At least one training example must remain.
    pub fn split_validation(
        &self,
        n_val: usize,
        seed: u64,
    ) -> Result<(Dataset, Dataset), IdxError> {
        if n_val >= self.len() {
            return Err(IdxError::SplitTooLarge {
                requested: n_val,
                available: self.len(),
            });
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let (val, train) = order.split_at_mut(n_val);
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(train), self.subset(val)))
    }

    /// A 64-bit fingerprint of the contents (sizes, pixels and labels; FNV-1a over 8-byte
    /// little-endian words), used to check that a resumed training run sees the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |w: u64| {
            h ^= w;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for v in [self.rows, self.cols, self.len(), self.classes] {
            eat(v as u64);
        }
        for bytes in [&self.pixels, &self.labels] {
            let mut words = bytes.chunks_exact(8);
            for w in &mut words {
                eat(u64::from_le_bytes([
                    w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
                ]));
            }
            let mut tail = [0u8; 8];
            tail[..words.remainder().len()].copy_from_slice(words.remainder());
            eat(u64::from_le_bytes(tail) ^ ((words.remainder().len() as u64) << 59));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn idx_bytes(type_code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, type_code, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn sample(n: u32) -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..n * 6).map(|i| (i * 7 % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        (
            idx_bytes(8, &[n, 2, 3], &pixels),
            idx_bytes(8, &[n], &labels),
        )
    }

    #[test]
    fn reads_plain_and_gzip_identically() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = sample(5);
        // Names deliberately lie about compression: detection is by magic bytes.
        let ip = write(dir.path(), "images.gz", &img);
        let lp = write(dir.path(), "labels.raw", &gzip(&lab));
        let plain = load_dataset(&ip, &lp).unwrap();
        let ip2 = write(dir.path(), "images2", &gzip(&img));
        let lp2 = write(dir.path(), "labels2", &lab);
        let gz = load_dataset(&ip2, &lp2).unwrap();
        assert_eq!(plain, gz);
        assert_eq!(plain.len(), 5);
        assert_eq!((plain.rows, plain.cols), (2, 3));
        assert_eq!(plain.labels, vec![0, 1, 2, 3, 4]);
        assert_eq!(plain.image(1).unwrap(), &[42, 49, 56, 63, 70, 77]);
        let x = plain.to_f32();
        assert_eq!(x.dim(), (5, 6));
        assert!((x[[1, 0]] - 42.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn truncated_header_and_data() {
        let (img, _) = sample(4);
        for cut in [0, 3, 6, img.len() - 1] {
            let err = read_idx(&img[..cut]).unwrap_err();
            assert!(
                matches!(err, IdxError::Truncated { .. }),
                "cut {cut}: {err}"
            );
            let err = read_idx(&gzip(&img[..cut])[..]).unwrap_err();
            assert!(
                matches!(err, IdxError::Truncated { .. }),
                "gz cut {cut}: {err}"
            );
        }
        // A gzip stream that is itself cut short is corrupt or truncated, never a panic.
        let gz = gzip(&img);
        let err = read_idx(&gz[..gz.len() / 2]).unwrap_err();
        assert!(
            matches!(err, IdxError::Gzip(_) | IdxError::Truncated { .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_magic_type_rank_and_size() {
        let err = read_idx(&[1u8, 0, 8, 1, 0, 0, 0, 0][..]).unwrap_err();
        assert!(matches!(err, IdxError::BadMagic { .. }), "{err}");
        let err = read_idx(&idx_bytes(0x0d, &[1], &[0, 0, 0, 0])[..]).unwrap_err();
        assert!(
            matches!(err, IdxError::UnsupportedType { code: 0x0d }),
            "{err}"
        );
        let err = read_idx(&idx_bytes(8, &[65536, 65536, 2], &[])[..]).unwrap_err();
        assert!(matches!(err, IdxError::TooLarge { .. }), "{err}");
        let err = read_idx(&idx_bytes(8, &[u32::MAX; 4], &[])[..]).unwrap_err();
        assert!(matches!(err, IdxError::TooLarge { .. }), "{err}");
        let err = read_idx(&idx_bytes(8, &[2], &[1, 2, 3])[..]).unwrap_err();
        assert!(
            matches!(err, IdxError::TrailingData { expected: 2 }),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = sample(3);
        let ip = write(dir.path(), "i", &img);
        let lp = write(dir.path(), "l", &lab);
        let err = load_dataset(&lp, &ip).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::WrongRank {
                    expected: 3,
                    found: 1
                }
            ),
            "{err}"
        );
        let err = load_dataset(&dir.path().join("missing"), &lp).unwrap_err();
        assert!(matches!(err, IdxError::Io { .. }), "{err}");
    }

    #[test]
    fn count_mismatch_and_bad_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (img, _) = sample(3);
        let ip = write(dir.path(), "i", &img);
        let lp = write(dir.path(), "l", &idx_bytes(8, &[2], &[0, 1]));
        let err = load_dataset(&ip, &lp).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::CountMismatch {
                    images: 3,
                    labels: 2
                }
            ),
            "{err}"
        );
        let lp = write(dir.path(), "l2", &idx_bytes(8, &[3], &[0, 10, 1]));
        let err = load_dataset(&ip, &lp).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::LabelOutOfRange {
                    index: 1,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
        let ip = write(dir.path(), "i0", &idx_bytes(8, &[0, 2, 3], &[]));
        let lp = write(dir.path(), "l0", &idx_bytes(8, &[0], &[]));
        assert!(matches!(load_dataset(&ip, &lp), Err(IdxError::Empty)));
    }

    #[test]
    fn split_and_take_are_deterministic() {
        let (img, lab) = sample(50);
        let ds = Dataset::from_idx(read_idx(&img[..]).unwrap(), read_idx(&lab[..]).unwrap(), 10)
            .unwrap();
        let (t1, v1) = ds.split_validation(10, 7).unwrap();
        let (t2, v2) = ds.split_validation(10, 7).unwrap();
        assert_eq!((t1.len(), v1.len()), (40, 10));
        assert_eq!((&t1, &v1), (&t2, &v2));
        let (_, v3) = ds.split_validation(10, 8).unwrap();
        assert_ne!(v1, v3);
        // Train and validation partition the data: label multiset is preserved.
        let mut all: Vec<u8> = t1.labels.iter().chain(&v1.labels).copied().collect();
        all.sort_unstable();
        let mut orig = ds.labels.clone();
        orig.sort_unstable();
        assert_eq!(all, orig);
        assert!(matches!(
            ds.split_validation(50, 0),
            Err(IdxError::SplitTooLarge { .. })
        ));
        assert_eq!(ds.take(3).labels, vec![0, 1, 2]);
        assert_eq!(ds.take(500).len(), 50);
        assert_ne!(ds.fingerprint(), ds.take(49).fingerprint());
    }

    #[test]
    fn real_mnist_test_set_loads() {
        let dir = crate::train::trainer::tests::mnist_dir();
        let ip = dir.join("t10k-images-idx3-ubyte.gz");
        let ds = load_dataset(&ip, &dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!((ds.len(), ds.rows, ds.cols), (10_000, 28, 28));
        assert_eq!(ds.labels[..5], [7, 2, 1, 0, 4]);
    }
}
