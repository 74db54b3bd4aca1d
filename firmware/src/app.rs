//! The demo application, written against embedded-hal traits so it runs on any board:
//! classify the embedded MNIST images with the Monte Carlo posterior predictive, report each
//! answer with its uncertainty, and light the LED whenever the model is unsure; beside it, the
//! same answer by moment propagation (one pass, then draws of the logits only) and its cost.

use core::num::NonZeroU16;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Engine, InferenceError, Mode, Model, ModelError, Prediction};

use crate::assets;
use crate::clock::Clock;
use crate::generated::{
    DEMO_CHUNK, DEMO_MODEL, DEMO_MODEL_DESCRIPTION, DEMO_SAMPLES, DEMO_SEED_BASE,
    DEMO_WORKSPACE_WORDS,
};

/// The demo model's "unsure" thresholds (mutual information in nats, top probability), from
/// validation data: generated, see [`crate::unsure`].
pub use crate::unsure::lenet300::{UNSURE_CONFIDENCE, UNSURE_MUTUAL_INFORMATION};

/// Where the demo model's thresholds come from, as the demo prints it.
const THRESHOLDS_SOURCE: &str =
    "thresholds from MNIST test images 5000-9999, firmware/src/unsure/lenet300.rs";

/// Why the demo stopped.
#[derive(Debug, defmt::Format)]
pub enum DemoError {
    /// The embedded model did not validate.
    Model(ModelError),
    /// An inference failed.
    Inference(InferenceError),
    /// The device's answers differ from the host's (their outputs digests).
    HostMismatch {
        /// The host's digest, computed when the firmware was built.
        expected: u32,
        /// The device's.
        found: u32,
    },
}

impl From<ModelError> for DemoError {
    fn from(e: ModelError) -> Self {
        DemoError::Model(e)
    }
}

impl From<InferenceError> for DemoError {
    fn from(e: InferenceError) -> Self {
        DemoError::Inference(e)
    }
}

/// Whether a prediction should be flagged as "I don't know".
pub fn is_unsure<const K: usize>(p: &Prediction<K>) -> bool {
    p.mutual_information > UNSURE_MUTUAL_INFORMATION || p.confidence() < UNSURE_CONFIDENCE
}

/// What the demo found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, defmt::Format)]
pub struct DemoSummary {
    /// Images whose prediction matched the label.
    pub correct: usize,
    /// Images flagged unsure.
    pub unsure: usize,
    /// Images answered wrong.
    pub wrong: usize,
    /// Images answered wrong and flagged unsure.
    pub wrong_flagged: usize,
    /// Images classified.
    pub total: usize,
}

/// Lights the LED for an unsure answer and clears it otherwise. Best effort: a failing LED
/// must not stop the classifier.
pub fn show_unsure<L: OutputPin>(led: &mut L, unsure: bool) {
    let _ = if unsure {
        led.set_high()
    } else {
        led.set_low()
    };
}

impl DemoSummary {
    /// Logs the closing line every demo prints: answers right, flagged, and wrong ones flagged.
    pub fn log(&self) {
        defmt::info!(
            "done: {=usize}/{=usize} correct, {=usize} flagged unsure; {=usize} of the {=usize} wrong answers flagged",
            self.correct,
            self.total,
            self.unsure,
            self.wrong_flagged,
            self.wrong
        );
    }

    /// Counts image `i`'s answer, and says whether a wrong one was flagged.
    pub fn record(&mut self, i: usize, label: u8, predicted: usize, unsure: bool) {
        self.total += 1;
        self.unsure += usize::from(unsure);
        if predicted == usize::from(label) {
            self.correct += 1;
        } else {
            self.wrong += 1;
            self.wrong_flagged += usize::from(unsure);
            defmt::info!(
                "image {=usize} is answered wrong (label {=u8}, predicted {=usize}) and {=str}",
                i,
                label,
                predicted,
                if unsure {
                    "flagged UNSURE"
                } else {
                    "NOT flagged: the thresholds miss it"
                }
            );
        }
    }
}

/// Logs an f32 model's size: layers, stored weights against the trained parameters, flash, and
/// workspace at `DEMO_CHUNK`.
pub fn log_size(model: &Model<'_>) {
    defmt::info!(
        "{=usize} layers, {=usize} weights stored of {=usize} trained parameters, {=usize} bytes of flash, {=usize} bytes of workspace",
        model.layers().len(),
        model.nnz(),
        model.dense_params(),
        model.as_bytes().len(),
        tinybayes::Plan::new(model, DEMO_CHUNK).workspace_bytes()
    );
}

/// Runs the demo on the embedded images.
pub fn run_demo<L: OutputPin, D: DelayNs, C: Clock>(
    led: &mut L,
    delay: &mut D,
    clock: &mut C,
) -> Result<DemoSummary, DemoError> {
    let model = Model::from_bytes(DEMO_MODEL)?;
    defmt::info!("model: {=str}", DEMO_MODEL_DESCRIPTION);
    log_size(&model);
    let mut workspace = [0.0f32; DEMO_WORKSPACE_WORDS];
    let mut engine = Engine::<DEMO_CHUNK>::new(&model, &mut workspace)?;
    let samples = NonZeroU16::new(DEMO_SAMPLES).unwrap_or(NonZeroU16::MIN);
    defmt::info!(
        "posterior predictive with {=u16} Monte Carlo samples per image",
        samples.get()
    );
    defmt::info!(
        "UNSURE (LED on) when the mutual information exceeds {=f32} nats or the top probability is below {=f32} ({=str})",
        UNSURE_MUTUAL_INFORMATION,
        UNSURE_CONFIDENCE,
        THRESHOLDS_SOURCE
    );

    let mut summary = DemoSummary::default();
    for i in 0..assets::IMAGE_COUNT {
        let (pixels, label) = assets::image(i);
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
        let start = clock.now();
        let p: Prediction<10> =
            engine.predict_u8(pixels, Mode::MonteCarlo { samples }, &mut rng)?;
        let cost = clock.now() - start;
        let unsure = is_unsure(&p);
        show_unsure(led, unsure);
        defmt::info!(
            "image {=usize}: label {=u8} -> predicted {=usize} (p = {=f32}), entropy {=f32} nats, expected entropy {=f32}, mutual information {=f32} nats{=str} [{=u64} {=str}]",
            i,
            label,
            p.class,
            p.confidence(),
            p.predictive_entropy,
            p.expected_entropy,
            p.mutual_information,
            if unsure { ", UNSURE (LED on)" } else { "" },
            cost,
            C::UNIT
        );
        // The same question by moment propagation: one pass, then draws of the logits only.
        let start = clock.now();
        let q: Prediction<10> =
            engine.predict_u8(pixels, Mode::MomentsThenSample { samples }, &mut rng)?;
        let moments_cost = clock.now() - start;
        defmt::info!(
            "  by moment propagation: predicted {=usize} (p = {=f32}), entropy {=f32} nats, mutual information {=f32} nats [{=u64} {=str}]",
            q.class,
            q.confidence(),
            q.predictive_entropy,
            q.mutual_information,
            moments_cost,
            C::UNIT
        );
        summary.record(i, label, p.class, unsure);
        delay.delay_ms(1);
    }
    let _ = led.set_low();
    Ok(summary)
}
