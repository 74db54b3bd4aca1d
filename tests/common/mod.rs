//! Helpers shared by the fixed-point integration tests: running a model of either format
//! with a seeded generator, and editing model files.
#![allow(dead_code)]

use core::num::NonZeroU16;

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::{Precision, CRC32, TRAILER_LEN};
use tinybayes::numeric::FixedPoint;
use tinybayes::writer::{ModelBuffer, ModelSpec};
use tinybayes::{Engine, Mode, Model, ModelError, Prediction, Q16, Q8};

/// Monte Carlo with `samples` samples.
pub fn mc(samples: u16) -> Mode {
    Mode::MonteCarlo {
        samples: NonZeroU16::new(samples).unwrap(),
    }
}

/// One prediction of a q8 or q16 model with `CHUNK` samples per pass, the generator seeded
/// with `seed`.
pub fn run_fixed<const CHUNK: usize>(
    model: &QModel<'_>,
    raw: &[u8],
    mode: Mode,
    seed: u64,
) -> QPrediction<8> {
    fn typed<const CHUNK: usize, N: FixedPoint>(
        model: &QModel<'_>,
        raw: &[u8],
        mode: Mode,
        seed: u64,
    ) -> QPrediction<8> {
        let mut ws = vec![0u64; model.workspace_len(CHUNK)];
        let mut engine = Engine::<CHUNK, N>::new(model, &mut ws).unwrap();
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
        engine.predict_u8(raw, mode, &mut rng).unwrap()
    }
    match model.precision() {
        Precision::Q16 => typed::<CHUNK, Q16>(model, raw, mode, seed),
        _ => typed::<CHUNK, Q8>(model, raw, mode, seed),
    }
}

/// One prediction of the f32 model `spec` describes, 8 samples per pass.
pub fn run_f32(spec: &ModelSpec, raw: &[u8], mode: Mode, seed: u64) -> Prediction<8> {
    let buffer = spec.to_buffer().unwrap();
    let model = Model::from_bytes(buffer.as_bytes()).unwrap();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    engine.predict_u8(raw, mode, &mut rng).unwrap()
}

/// Rewrites the CRC (and nothing else) so that structural checks are what gets exercised.
pub fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - TRAILER_LEN;
    let crc = CRC32.checksum(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the bytes are a valid fixed-point model.
pub fn parse_fixed(bytes: &[u8]) -> Result<(), ModelError> {
    let buffer = ModelBuffer::from_bytes(bytes);
    QModel::from_bytes(buffer.as_bytes()).map(|_| ())
}
