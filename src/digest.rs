//! One digest of a run's outputs, the same on the host and the device: the CRC-32 (ISO-HDLC,
//! as the model files) of every output bit of every prediction, in order.
//!
//! Per prediction, in this byte order: the class (u16), each probability, the predictive
//! entropy, the expected entropy and the mutual information (u32 each: the f32 bits, or the
//! Q16 value of a fixed-point prediction), all little endian. A run's digest covers its images
//! in order, one mode each; `tinybayes eval` and `predict` print it as "outputs CRC-32" for
//! image `i` seeded with `seed + i`, and the firmware's parity binary computes it the same
//! way, so equal digests mean bit-identical outputs.
//!
//! ```
//! use tinybayes::digest::OutputsDigest;
//! # let p = tinybayes::Prediction::<2> { probabilities: heapless::Vec::from_slice(&[0.25, 0.75]).unwrap(),
//! #     class: 1, predictive_entropy: 0.56, expected_entropy: 0.5, mutual_information: 0.06, samples: 8 };
//! let mut digest = OutputsDigest::new();
//! digest.add(&p);
//! let crc: u32 = digest.finalize();
//! # assert_ne!(crc, OutputsDigest::new().finalize());
//! ```

use crate::fixed::QPrediction;
use crate::format::CRC32;
use crate::predictive::Prediction;

/// The CRC of the digests (a `static`, so that a digest may borrow it for as long as it runs).
static CRC: crc::Crc<u32> = CRC32;

/// A prediction whose outputs go into an [`OutputsDigest`].
pub trait DigestOutputs: sealed::Sealed {
    /// Feeds the outputs to `digest` in the module's byte order.
    fn digest_into(&self, digest: &mut crc::Digest<'_, u32>);
}

mod sealed {
    pub trait Sealed {}
    impl<const K: usize> Sealed for crate::predictive::Prediction<K> {}
    impl<const K: usize> Sealed for crate::fixed::QPrediction<K> {}
}

/// The class, then every output word, little endian.
fn feed(digest: &mut crc::Digest<'_, u32>, class: usize, words: impl Iterator<Item = u32>) {
    digest.update(&(class as u16).to_le_bytes());
    for w in words {
        digest.update(&w.to_le_bytes());
    }
}

/// The digest of a prediction type whose outputs have `to_bits() -> u32`.
macro_rules! digest_outputs {
    ($prediction:ident) => {
        impl<const K: usize> DigestOutputs for $prediction<K> {
            fn digest_into(&self, digest: &mut crc::Digest<'_, u32>) {
                let summary = [
                    self.predictive_entropy,
                    self.expected_entropy,
                    self.mutual_information,
                ];
                let words = self
                    .probabilities
                    .iter()
                    .chain(&summary)
                    .map(|v| v.to_bits());
                feed(digest, self.class, words);
            }
        }
    };
}

digest_outputs!(Prediction);
digest_outputs!(QPrediction);

/// The running digest of a run's outputs.
pub struct OutputsDigest {
    digest: crc::Digest<'static, u32>,
    count: usize,
}

impl Default for OutputsDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputsDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self {
            digest: CRC.digest(),
            count: 0,
        }
    }

    /// Adds the next prediction's outputs.
    pub fn add(&mut self, prediction: &impl DigestOutputs) {
        prediction.digest_into(&mut self.digest);
        self.count += 1;
    }

    /// Predictions added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The CRC-32 of everything added.
    pub fn finalize(self) -> u32 {
        self.digest.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::UQ16;

    #[test]
    fn the_digest_is_the_crc_of_the_documented_bytes() {
        let p = Prediction::<3> {
            probabilities: heapless::Vec::from_slice(&[0.5, 0.25, 0.25]).unwrap(),
            class: 0,
            predictive_entropy: 1.0,
            expected_entropy: 0.75,
            mutual_information: 0.25,
            samples: 4,
        };
        let q = QPrediction::<3> {
            probabilities: heapless::Vec::from_slice(&[UQ16(1), UQ16(2), UQ16(3)]).unwrap(),
            class: 2,
            predictive_entropy: UQ16(4),
            expected_entropy: UQ16(5),
            mutual_information: UQ16(6),
            samples: 4,
        };
        let mut bytes = std::vec::Vec::new();
        bytes.extend_from_slice(&0u16.to_le_bytes());
        for v in [0.5f32, 0.25, 0.25, 1.0, 0.75, 0.25] {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        bytes.extend_from_slice(&2u16.to_le_bytes());
        for v in 1u32..=6 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut d = OutputsDigest::new();
        d.add(&p);
        d.add(&q);
        assert_eq!(d.count(), 2);
        assert_eq!(d.finalize(), CRC32.checksum(&bytes));
    }
}
