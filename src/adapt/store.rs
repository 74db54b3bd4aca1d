//! The update's state in NOR flash, through the `embedded-storage` traits: two alternating
//! slots, each a whole number of erase pages, so that a write torn by a reset or a power cut
//! leaves the previous state valid.
//!
//! A record (little-endian): magic `TBAD`, version (u16, [`RECORD_VERSION`]), reserved (u16),
//! sequence number (u32), examples seen (u32), features and classes (u16 each), the settings
//! (prior scale and bias variance, f32), the CRC-32 trailer of the model the state belongs to
//! (u32), the number of state words (u32), the likelihood (u32: 0 the softmax bound, 1 label
//! regression, then its smoothing and noise as f32, zero for the bound), the state (f32 words: the Gram matrix, then the
//! class vectors), then a CRC-32 of everything before it, padded to a multiple of
//! [`CHUNK`] bytes. [`Store::save`] erases and writes the slot that does not hold the newest
//! valid record, with the next sequence number; [`Store::load`] takes the valid record with
//! the highest sequence number. A record whose CRC does not match (torn, erased, corrupted)
//! is ignored.

use embedded_storage::nor_flash::NorFlash;

use super::{AdaptError, LastLayer, Likelihood};
use crate::format::CRC32;

/// The record's version.
pub const RECORD_VERSION: u16 = 1;
/// Magic bytes of a record.
pub const RECORD_MAGIC: [u8; 4] = *b"TBAD";
/// Bytes of a record's header.
pub const RECORD_HEADER_LEN: usize = 48;
const HEADER: usize = RECORD_HEADER_LEN;
/// Bytes read or written at a time: the flash's read and write sizes must divide it.
pub const CHUNK: usize = 32;

/// Two slots of a flash region holding the state of one [`LastLayer`].
pub struct Store<F: NorFlash> {
    flash: F,
    /// Start of slot 0 (a multiple of the erase size).
    base: u32,
    /// Bytes per slot (a multiple of the erase size).
    slot: u32,
}

/// What a valid record's header says.
#[derive(Clone, Copy)]
struct Found {
    sequence: u32,
    count: u32,
}

impl<F: NorFlash> Store<F> {
    /// Bytes of one record of `layer`'s state, padded to [`CHUNK`].
    pub fn record_len(layer: &LastLayer<'_, '_>) -> usize {
        let words = layer.gram.len() + layer.info.len();
        (HEADER + 4 * words + 4).div_ceil(CHUNK) * CHUNK
    }

    /// The two slots of `layer`'s records in `len` bytes of `flash` from `base` (a multiple
    /// of the erase size). Checks that two slots of whole erase pages fit and that the
    /// flash's read and write sizes divide [`CHUNK`].
    pub fn new(
        flash: F,
        base: u32,
        len: usize,
        layer: &LastLayer<'_, '_>,
    ) -> Result<Self, AdaptError> {
        if CHUNK % F::WRITE_SIZE != 0
            || CHUNK % F::READ_SIZE != 0
            || base as usize % F::ERASE_SIZE != 0
        {
            return Err(AdaptError::Flash);
        }
        let slot = Self::record_len(layer).div_ceil(F::ERASE_SIZE) * F::ERASE_SIZE;
        let end = (base as usize).checked_add(len);
        if 2 * slot > len || end.is_none_or(|end| end > flash.capacity()) {
            return Err(AdaptError::FlashTooSmall {
                needed: 2 * slot,
                available: len.min(flash.capacity().saturating_sub(base as usize)),
            });
        }
        Ok(Store {
            flash,
            base,
            slot: slot as u32,
        })
    }

    /// Gives the flash back.
    pub fn release(self) -> F {
        self.flash
    }

    fn slot_start(&self, s: usize) -> u32 {
        self.base + s as u32 * self.slot
    }

    /// Saves `layer`'s state in the slot that does not hold the newest valid record.
    pub fn save(&mut self, layer: &LastLayer<'_, '_>) -> Result<(), AdaptError> {
        let found = [self.check(0, layer), self.check(1, layer)];
        let (target, sequence) = match found {
            [Some(a), Some(b)] if newer(b.sequence, a.sequence) => (0, b.sequence.wrapping_add(1)),
            [Some(a), _] => (1, a.sequence.wrapping_add(1)),
            [None, Some(b)] => (0, b.sequence.wrapping_add(1)),
            [None, None] => (0, 1),
        };
        let start = self.slot_start(target);
        self.flash
            .erase(start, start + self.slot)
            .map_err(|_| AdaptError::Flash)?;
        let mut out = Writer {
            flash: &mut self.flash,
            at: start,
            buf: [0; CHUNK],
            fill: 0,
            crc: CRC32.digest(),
        };
        out.put(&header(layer, sequence, layer.count))?;
        for v in layer.gram.iter().chain(layer.info.iter()) {
            out.put(&v.to_le_bytes())?;
        }
        let crc = out.crc.clone().finalize();
        out.put(&crc.to_le_bytes())?;
        out.flush()
    }

    /// Restores the newest valid record of `layer`'s model and settings into `layer`; returns
    /// the number of examples it holds. `NoStoredState` when neither slot holds a valid record
    /// (`layer` is then unchanged), `StateMismatch` when the newest is another model's or has
    /// other settings.
    pub fn load(&mut self, layer: &mut LastLayer<'_, '_>) -> Result<u32, AdaptError> {
        let found = [self.check(0, layer), self.check(1, layer)];
        let (slot, rec) = match found {
            [Some(a), Some(b)] if newer(b.sequence, a.sequence) => (1, b),
            [Some(a), _] => (0, a),
            [None, Some(b)] => (1, b),
            [None, None] => return Err(self.mismatch_or_none(layer)),
        };
        // The CRC matched: read the state words in place.
        let mut at = self.slot_start(slot) as usize + HEADER;
        let mut buf = [0u8; CHUNK];
        let words = layer.gram.len() + layer.info.len();
        let mut w = 0;
        while w < words {
            let aligned = at / CHUNK * CHUNK;
            self.flash
                .read(aligned as u32, &mut buf)
                .map_err(|_| AdaptError::Flash)?;
            let mut p = at - aligned;
            while p + 4 <= CHUNK && w < words {
                let v = f32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
                let g = layer.gram.len();
                if w < g {
                    layer.gram[w] = v;
                } else {
                    layer.info[w - g] = v;
                }
                w += 1;
                p += 4;
                at += 4;
            }
        }
        layer.count = rec.count;
        Ok(rec.count)
    }

    /// Whether slot `s` holds a valid record (CRC) of `layer`'s model and settings.
    fn check(&mut self, s: usize, layer: &LastLayer<'_, '_>) -> Option<Found> {
        let (head, crc_ok) = self.scan(s, layer.gram.len() + layer.info.len())?;
        let expected = header(layer, 0, 0);
        // Everything but the sequence number and the count must match.
        let same = head[..8] == expected[..8] && head[16..] == expected[16..];
        (crc_ok && same).then(|| Found {
            sequence: u32::from_le_bytes([head[8], head[9], head[10], head[11]]),
            count: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        })
    }

    /// Reads slot `s`'s header and checks the CRC of a record of `words` state words.
    fn scan(&mut self, s: usize, words: usize) -> Option<([u8; HEADER], bool)> {
        let start = self.slot_start(s);
        let mut buf = [0u8; CHUNK];
        let mut head = [0u8; HEADER];
        let mut digest = CRC32.digest();
        let body = HEADER + 4 * words;
        let mut stored = [0u8; 4];
        let mut off = 0;
        while off < body + 4 {
            self.flash.read(start + off as u32, &mut buf).ok()?;
            let end = off + CHUNK;
            if off < HEADER {
                let n = HEADER.min(end) - off;
                head[off..off + n].copy_from_slice(&buf[..n]);
            }
            if off < body {
                digest.update(&buf[..body.min(end) - off]);
            }
            let (from, to) = (body.max(off), (body + 4).min(end));
            if from < to {
                stored[from - body..to - body].copy_from_slice(&buf[from - off..to - off]);
            }
            off = end;
        }
        Some((head, digest.finalize() == u32::from_le_bytes(stored)))
    }

    /// `StateMismatch` when a slot holds a record with a valid CRC but another model's or
    /// settings' header, `NoStoredState` otherwise.
    fn mismatch_or_none(&mut self, layer: &LastLayer<'_, '_>) -> AdaptError {
        for s in 0..2 {
            if let Some((head, _)) = self.scan(s, 0) {
                if head[..4] == RECORD_MAGIC && head != header(layer, 0, 0) {
                    // Is it a complete record of another shape? Check its own CRC.
                    let words = u32::from_le_bytes([head[32], head[33], head[34], head[35]]);
                    let len = (HEADER + 4 * words as usize + 4).div_ceil(CHUNK) * CHUNK;
                    if len <= self.slot as usize {
                        if let Some((_, true)) = self.scan(s, words as usize) {
                            return AdaptError::StateMismatch;
                        }
                    }
                }
            }
        }
        AdaptError::NoStoredState
    }
}

/// Sequence number `a` is newer than `b` (wrapping).
fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

/// A record header for `layer` with `sequence` and `count`.
fn header(layer: &LastLayer<'_, '_>, sequence: u32, count: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&RECORD_MAGIC);
    h[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&sequence.to_le_bytes());
    h[12..16].copy_from_slice(&count.to_le_bytes());
    h[16..18].copy_from_slice(&(layer.features as u16).to_le_bytes());
    h[18..20].copy_from_slice(&(layer.classes as u16).to_le_bytes());
    h[20..24].copy_from_slice(&layer.settings.prior_scale.to_le_bytes());
    h[24..28].copy_from_slice(&layer.settings.bias_variance.to_le_bytes());
    h[28..32].copy_from_slice(&layer.model_crc.to_le_bytes());
    let words = (layer.gram.len() + layer.info.len()) as u32;
    h[32..36].copy_from_slice(&words.to_le_bytes());
    let (code, smoothing, noise) = match layer.settings.likelihood {
        Likelihood::SoftmaxBound => (0u32, 0.0f32, 0.0f32),
        Likelihood::LabelRegression { smoothing, noise } => (1, smoothing, noise),
    };
    h[36..40].copy_from_slice(&code.to_le_bytes());
    h[40..44].copy_from_slice(&smoothing.to_le_bytes());
    h[44..48].copy_from_slice(&noise.to_le_bytes());
    h
}

/// Streams a record into flash in [`CHUNK`]-byte writes, with its CRC.
struct Writer<'f, F: NorFlash> {
    flash: &'f mut F,
    at: u32,
    buf: [u8; CHUNK],
    fill: usize,
    crc: crc::Digest<'static, u32>,
}

impl<F: NorFlash> Writer<'_, F> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), AdaptError> {
        self.crc.update(bytes);
        for &b in bytes {
            self.buf[self.fill] = b;
            self.fill += 1;
            if self.fill == CHUNK {
                self.flash
                    .write(self.at, &self.buf)
                    .map_err(|_| AdaptError::Flash)?;
                self.at += CHUNK as u32;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Writes the last partial chunk, padded with zeros.
    fn flush(&mut self) -> Result<(), AdaptError> {
        if self.fill > 0 {
            self.buf[self.fill..].fill(0);
            self.flash
                .write(self.at, &self.buf)
                .map_err(|_| AdaptError::Flash)?;
            self.fill = 0;
        }
        Ok(())
    }
}
