//! Checkpoint file: the complete trainer state in one file, written atomically.
//!
//! Layout of `<dir>/trainer.ckpt`:
//!
//! ```text
//! b"TBCKPT01"                 8-byte magic
//! u64 little-endian           length H of the JSON header
//! H bytes                     JSON header (format, config as TOML text, epoch, Adam step,
//!                             data fingerprint, tensor sizes, payload checksum, history)
//! f32 little-endian           every parameter tensor, then every Adam first moment, then every
//!                             Adam second moment, in optimizer order
//! ```
//!
//! Floats are stored bit-exactly (the configuration as TOML text, which round-trips `f64`
//! exactly), so a resumed run continues with precisely the state that was saved. The file is
//! written to `trainer.ckpt.tmp`, synced, then renamed over the old checkpoint, so a crash never
//! leaves a half-written checkpoint in place of a good one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::trainer::EpochReport;

/// File name of the checkpoint inside its directory.
pub const CHECKPOINT_FILE: &str = "trainer.ckpt";
const MAGIC: &[u8; 8] = b"TBCKPT01";
const FORMAT: u32 = 1;
/// Refuse headers larger than this (a corrupt length field must not allocate gigabytes).
const MAX_HEADER: u64 = 64 << 20;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed (the message includes the cause, which is therefore not
    /// also `source()`: a chained report would print it twice).
    #[error("checkpoint I/O on {path}: {error}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        error: io::Error,
    },
    /// The file is not a checkpoint of this format, or is damaged.
    #[error("corrupt or incompatible checkpoint {path}: {reason}")]
    Corrupt {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Metadata stored before the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub format: u32,
    /// The [`super::TrainConfig`] serialised as TOML.
    pub config_toml: String,
    /// Next epoch to run.
    pub epoch: usize,
    pub adam_step: u64,
    pub data_fingerprint: u64,
    /// Length of every parameter tensor, in optimizer order.
    pub tensor_sizes: Vec<usize>,
    /// FNV-1a of the payload bytes.
    pub payload_checksum: u64,
    pub history: Vec<EpochReport>,
}

/// The state that follows the header.
pub(crate) struct Payload {
    pub params: Vec<Vec<f32>>,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes the checkpoint atomically into `dir` (created if missing) and returns its path.
pub(crate) fn write(
    dir: &Path,
    mut header: Header,
    params: &[&[f32]],
    m: &[Vec<f32>],
    v: &[Vec<f32>],
) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |error| CheckpointError::Io { path: p, error }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let total: usize = params.iter().map(|p| p.len()).sum::<usize>() * 3;
    let mut payload = Vec::with_capacity(total * 4);
    for t in params
        .iter()
        .copied()
        .chain(m.iter().map(Vec::as_slice))
        .chain(v.iter().map(Vec::as_slice))
    {
        for x in t {
            payload.extend_from_slice(&x.to_le_bytes());
        }
    }
    header.format = FORMAT;
    header.tensor_sizes = params.iter().map(|p| p.len()).collect();
    header.payload_checksum = fnv1a(&payload);
    let json = serde_json::to_vec(&header).map_err(|e| CheckpointError::Corrupt {
        path: path.clone(),
        reason: format!("cannot encode header: {e}"),
    })?;
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(MAGIC)
        .and_then(|()| f.write_all(&(json.len() as u64).to_le_bytes()))
        .and_then(|()| f.write_all(&json))
        .and_then(|()| f.write_all(&payload))
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    // Make the rename durable where the platform allows syncing a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Reads and verifies the checkpoint in `dir`.
pub(crate) fn read(dir: &Path) -> Result<(Header, Payload), CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = fs::read(&path).map_err(|error| CheckpointError::Io {
        path: path.clone(),
        error,
    })?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.clone(),
        reason,
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[8..16]);
    let hlen = u64::from_le_bytes(len8);
    if hlen > MAX_HEADER || hlen > (bytes.len() - 16) as u64 {
        return Err(corrupt(format!("header length {hlen} out of range")));
    }
    let hend = 16 + hlen as usize;
    let header: Header = serde_json::from_slice(&bytes[16..hend])
        .map_err(|e| corrupt(format!("bad header: {e}")))?;
    if header.format != FORMAT {
        return Err(corrupt(format!(
            "format {} (expected {FORMAT})",
            header.format
        )));
    }
    let body = &bytes[hend..];
    let floats: usize = header
        .tensor_sizes
        .iter()
        .try_fold(0usize, |a, &n| a.checked_add(n))
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| corrupt("tensor sizes overflow".into()))?;
    if Some(body.len()) != floats.checked_mul(4) {
        return Err(corrupt(format!(
            "payload has {} bytes, header describes {floats} floats",
            body.len()
        )));
    }
    if fnv1a(body) != header.payload_checksum {
        return Err(corrupt("payload checksum mismatch".into()));
    }
    let mut values = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let mut take_all = || -> Vec<Vec<f32>> {
        header
            .tensor_sizes
            .iter()
            .map(|&n| values.by_ref().take(n).collect())
            .collect()
    };
    let params = take_all();
    let m = take_all();
    let v = take_all();
    Ok((header, Payload { params, m, v }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_prints_its_cause_once_in_a_chained_report() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = read(&dir.path().join("missing")) else {
            panic!("a missing checkpoint was read");
        };
        assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
        // `{:#}` prints the whole chain: the cause is in the message and nowhere else.
        let report = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(report.matches("(os error 2)").count(), 1, "{report}");
        let err = crate::train::TrainError::from(crate::idx::IdxError::Empty);
        let report = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(report.matches("empty").count(), 1, "{report}");
    }
}
