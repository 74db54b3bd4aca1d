//! The fixed-point demo: the same ten digits classified by the q8 LeNet-300-100 with the
//! integer-only engine, for cores without an FPU (Cortex-M0, M3). Nothing here touches a
//! float: thresholds are in Q16 nats and values print in thousandths.

use core::num::NonZeroU16;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::{Engine, Q8};
use tinybayes::{InferenceError, Mode, ModelError};

use crate::assets;
use crate::clock::Clock;
use crate::generated::{
    FIXED_CHUNK, FIXED_Q8_MODEL, FIXED_SAMPLES, FIXED_SEED_BASE, FIXED_WORKSPACE_WORDS,
};

/// The q8 model's "unsure" thresholds (UQ16: mutual information in nats, top probability),
/// from validation data and compared in integers: generated, see [`crate::unsure`].
pub use crate::unsure::lenet300_q8::{UNSURE_CONFIDENCE, UNSURE_MUTUAL_INFORMATION};

/// Where the q8 model's thresholds come from, as the demo prints it.
const THRESHOLDS_SOURCE: &str =
    "thresholds from MNIST test images 5000-9999, firmware/src/unsure/lenet300_q8.rs";

/// Whether a fixed-point prediction should be flagged as "I don't know".
pub fn is_unsure<const K: usize>(p: &QPrediction<K>) -> bool {
    p.mutual_information > UNSURE_MUTUAL_INFORMATION || p.confidence() < UNSURE_CONFIDENCE
}

/// Why the fixed-point demo stopped.
#[derive(Debug, defmt::Format)]
pub enum FixedDemoError {
    /// The embedded model did not validate.
    Model(ModelError),
    /// An inference failed.
    Inference(InferenceError),
}

impl From<ModelError> for FixedDemoError {
    fn from(e: ModelError) -> Self {
        FixedDemoError::Model(e)
    }
}

impl From<InferenceError> for FixedDemoError {
    fn from(e: InferenceError) -> Self {
        FixedDemoError::Inference(e)
    }
}

/// Logs a fixed-point model's size: layers, stored weights, flash, and workspace at
/// `FIXED_CHUNK`.
pub fn log_size(model: &QModel<'_>) {
    defmt::info!(
        "{=usize} layers, {=usize} weights stored, {=usize} bytes of flash, {=usize} bytes of workspace",
        model.layers().len(),
        model.nnz(),
        model.as_bytes().len(),
        model.workspace_bytes(FIXED_CHUNK)
    );
}

/// Runs the fixed-point demo on the embedded images; returns (correct, unsure, total).
pub fn run_fixed_demo<L: OutputPin, D: DelayNs, C: Clock>(
    led: &mut L,
    delay: &mut D,
    clock: &mut C,
) -> Result<crate::app::DemoSummary, FixedDemoError> {
    let model = QModel::from_bytes(FIXED_Q8_MODEL)?;
    defmt::info!(
        "model: LeNet-300-100, sparse variational dropout, q8 fixed point (models/lenet300-q8.tbm)"
    );
    log_size(&model);
    let mut workspace = [0u64; FIXED_WORKSPACE_WORDS];
    let mut engine = Engine::<FIXED_CHUNK, Q8>::new(&model, &mut workspace)?;
    let samples = NonZeroU16::new(FIXED_SAMPLES).unwrap_or(NonZeroU16::MIN);
    defmt::info!(
        "integer-only posterior predictive, {=u16} Monte Carlo samples per image",
        samples.get()
    );
    defmt::info!(
        "UNSURE (LED on) when the mutual information exceeds {=u32}.{=u32:03} nats (UQ16 {=u32}) or the top probability is below {=u32}.{=u32:03} (UQ16 {=u32}) ({=str})",
        UNSURE_MUTUAL_INFORMATION.to_milli() / 1000,
        UNSURE_MUTUAL_INFORMATION.to_milli() % 1000,
        UNSURE_MUTUAL_INFORMATION.to_bits(),
        UNSURE_CONFIDENCE.to_milli() / 1000,
        UNSURE_CONFIDENCE.to_milli() % 1000,
        UNSURE_CONFIDENCE.to_bits(),
        THRESHOLDS_SOURCE
    );
    let mut summary = crate::app::DemoSummary::default();
    for i in 0..assets::IMAGE_COUNT {
        let (pixels, label) = assets::image(i);
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(FIXED_SEED_BASE + i as u64);
        let start = clock.now();
        let p: QPrediction<10> =
            engine.predict_u8(pixels, Mode::MonteCarlo { samples }, &mut rng)?;
        let cost = clock.now() - start;
        let unsure = is_unsure(&p);
        crate::app::show_unsure(led, unsure);
        defmt::info!(
            "image {=usize}: label {=u8} -> predicted {=usize} (p = {=u32}.{=u32:03}), entropy {=u32}.{=u32:03} nats, expected entropy {=u32}.{=u32:03}, mutual information {=u32}.{=u32:03} nats{=str} [UQ16 p {=u32} H {=u32} EH {=u32} MI {=u32}] [{=u64} {=str}]",
            i,
            label,
            p.class,
            p.confidence().to_milli() / 1000,
            p.confidence().to_milli() % 1000,
            p.predictive_entropy.to_milli() / 1000,
            p.predictive_entropy.to_milli() % 1000,
            p.expected_entropy.to_milli() / 1000,
            p.expected_entropy.to_milli() % 1000,
            p.mutual_information.to_milli() / 1000,
            p.mutual_information.to_milli() % 1000,
            if unsure { ", UNSURE (LED on)" } else { "" },
            p.confidence().to_bits(),
            p.predictive_entropy.to_bits(),
            p.expected_entropy.to_bits(),
            p.mutual_information.to_bits(),
            cost,
            C::UNIT
        );
        summary.record(i, label, p.class, unsure);
        delay.delay_ms(1);
    }
    let _ = led.set_low();
    Ok(summary)
}
