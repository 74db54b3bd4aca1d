//! The wrist-accelerometer demo: classify a few embedded HMP test windows (3 axes x 128
//! samples, in g) into 14 daily activities with the Monte Carlo posterior predictive of the
//! sparse 1-D convolutional model, and light the LED when the model is unsure. The windows are
//! cut from `../shared/data/hmp-adl/hmp.npz` when the firmware is built (the data set may not
//! be redistributed, so the repository holds none); without the file the demo says so. Built
//! with `TINYBAYES_DEVICE_MODEL` and `TINYBAYES_DEVICE_DATA`, it runs any f32 model on the first
//! test examples of any `.npz` (docs/TRAINING.md).

use core::num::NonZeroU16;

use embedded_hal::digital::OutputPin;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::digest::OutputsDigest;
use tinybayes::fixed::{QModel, QPrediction, UQ16};
use tinybayes::format::InputCoding;
use tinybayes::{Engine, Mode, Model, Prediction, Q8};

use crate::app::{DemoError, DemoSummary};
use crate::clock::Clock;
use crate::generated::{
    DEMO_CHUNK, DEMO_SAMPLES, DEMO_SEED_BASE, FIXED_CHUNK, HMP_CLASS_NAMES, HMP_MISSING, HMP_MODEL,
    HMP_Q8_BYTES, HMP_Q8_CODES, HMP_Q8_DIGEST, HMP_Q8_MODEL, HMP_Q8_WORKSPACE_WORDS, HMP_WINDOWS,
    HMP_WORKSPACE_WORDS,
};

/// Most classes a model run by this demo may have (the HMP set has 14).
pub const MAX_CLASSES: usize = 32;

/// Mutual information (nats) above which an answer is flagged unsure. Chosen so that a
/// window whose samples disagree on the activity (the epistemic part of the entropy) is
/// flagged; the model's own aleatoric confusion (eating against drinking) shows in the
/// entropy, printed beside it.
pub const UNSURE_MUTUAL_INFORMATION: f32 = 0.10;
/// Top probability below which an answer is flagged unsure.
pub const UNSURE_CONFIDENCE: f32 = 0.6;
/// [`UNSURE_MUTUAL_INFORMATION`] in UQ16 (0.1 nats), for the integer-only model.
pub const UNSURE_MUTUAL_INFORMATION_Q: UQ16 = UQ16(6554);
/// [`UNSURE_CONFIDENCE`] in UQ16 (0.6), for the integer-only model.
pub const UNSURE_CONFIDENCE_Q: UQ16 = UQ16(39322);

/// The name of class `k`.
fn class_name(k: usize) -> &'static str {
    HMP_CLASS_NAMES.get(k).copied().unwrap_or("?")
}

/// What the HMP demo found: `None` when the firmware was built without the data file.
pub fn run_hmp_demo<L: OutputPin, C: Clock>(
    led: &mut L,
    clock: &mut C,
) -> Result<Option<DemoSummary>, DemoError> {
    let model = Model::from_bytes(HMP_MODEL)?;
    crate::app::log_size(&model);
    if let Some(path) = HMP_MISSING {
        defmt::warn!(
            "no windows embedded: {=str} was not found when the firmware was built (its terms forbid redistributing the data, so the repository holds none); build beside ../shared/data/hmp-adl or set TINYBAYES_DEVICE_DATA",
            path
        );
        return Ok(None);
    }
    let mut workspace = [0.0f32; HMP_WORKSPACE_WORDS];
    let mut engine = Engine::<DEMO_CHUNK>::new(&model, &mut workspace)?;
    let samples = NonZeroU16::new(DEMO_SAMPLES).unwrap_or(NonZeroU16::MIN);
    defmt::info!(
        "{=usize} test windows (3 axes x 128 samples at 32 Hz, in g), {=u16} Monte Carlo samples each; UNSURE (LED on) when the mutual information exceeds {=f32} nats or the top probability is below {=f32}",
        HMP_WINDOWS.len(),
        samples.get(),
        UNSURE_MUTUAL_INFORMATION,
        UNSURE_CONFIDENCE
    );
    let mut summary = DemoSummary::default();
    for (i, (window, label)) in HMP_WINDOWS.iter().enumerate() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
        let start = clock.now();
        let p: Prediction<MAX_CLASSES> =
            engine.predict_raw(window, Mode::MonteCarlo { samples }, &mut rng)?;
        let cost = clock.now() - start;
        let unsure =
            p.mutual_information > UNSURE_MUTUAL_INFORMATION || p.confidence() < UNSURE_CONFIDENCE;
        crate::app::show_unsure(led, unsure);
        let name = class_name;
        defmt::info!(
            "window {=usize}: {=str} -> {=str} (p = {=f32}), entropy {=f32} nats, mutual information {=f32} nats{=str} [{=u64} {=str}]",
            i,
            name(usize::from(*label)),
            name(p.class),
            p.confidence(),
            p.predictive_entropy,
            p.mutual_information,
            if unsure { ", UNSURE (LED on)" } else { "" },
            cost,
            C::UNIT
        );
        let start = clock.now();
        let q: Prediction<MAX_CLASSES> =
            engine.predict_raw(window, Mode::MomentsThenSample { samples }, &mut rng)?;
        let moments_cost = clock.now() - start;
        defmt::info!(
            "  by moment propagation: {=str} (p = {=f32}), mutual information {=f32} nats [{=u64} {=str}]",
            name(q.class),
            q.confidence(),
            q.mutual_information,
            moments_cost,
            C::UNIT
        );
        summary.record(i, *label, p.class, unsure);
    }
    let _ = led.set_low();
    Ok(Some(summary))
}

/// The integer-only half of the demo: the q8 model (`models/hmp-conv1d-q8.tbm`) on the same
/// windows, given as the signed 8-bit codes an accelerometer driver would hand it
/// (`Engine::predict_i8`; the build cut them from the readings with the model's step). No
/// float operation runs: thresholds are in UQ16 and values print in thousandths. The answers'
/// outputs digest is checked against the host's, computed by the build with the same engine:
/// a mismatch is an error. `None` when the firmware was built without the data file or
/// without a fixed-point model.
pub fn run_hmp_q8_demo<L: OutputPin, C: Clock>(
    led: &mut L,
    clock: &mut C,
) -> Result<Option<DemoSummary>, DemoError> {
    let (Some(bytes), None) = (HMP_Q8_MODEL, HMP_MISSING) else {
        return Ok(None);
    };
    let model = QModel::from_bytes(bytes)?;
    match model.input_coding() {
        // Logging an f32 sends its bits: defmt formats it on the host, no float operation.
        InputCoding::Signed { step } => defmt::info!(
            "q8 model, integer only, reading signed 8-bit codes of the readings ({=f32} units per code)",
            step
        ),
        InputCoding::Unsigned => defmt::info!("q8 model, integer only, reading bytes"),
    }
    crate::app_fixed::log_size(&model);
    let mut workspace = [0u64; HMP_Q8_WORKSPACE_WORDS];
    let mut engine = Engine::<FIXED_CHUNK, Q8>::new(&model, &mut workspace)?;
    let samples = NonZeroU16::new(DEMO_SAMPLES).unwrap_or(NonZeroU16::MIN);
    let mut summary = DemoSummary::default();
    let mut digest = OutputsDigest::new();
    for (i, (_, label)) in HMP_WINDOWS.iter().enumerate() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
        let mode = Mode::MonteCarlo { samples };
        let start = clock.now();
        // The window as the model reads it: signed codes or bytes (the build cut it so).
        let p: QPrediction<MAX_CLASSES> = match (HMP_Q8_CODES.get(i), HMP_Q8_BYTES.get(i)) {
            (Some(codes), _) => engine.predict_i8(codes, mode, &mut rng)?,
            (None, bytes) => {
                engine.predict_u8(bytes.copied().unwrap_or_default(), mode, &mut rng)?
            }
        };
        let cost = clock.now() - start;
        digest.add(&p);
        let unsure = p.mutual_information > UNSURE_MUTUAL_INFORMATION_Q
            || p.confidence() < UNSURE_CONFIDENCE_Q;
        crate::app::show_unsure(led, unsure);
        defmt::info!(
            "q8 window {=usize}: {=str} -> {=str} (p = {=u32}.{=u32:03}), entropy {=u32}.{=u32:03} nats, mutual information {=u32}.{=u32:03} nats{=str} [{=u64} {=str}]",
            i,
            class_name(usize::from(*label)),
            class_name(p.class),
            p.confidence().to_milli() / 1000,
            p.confidence().to_milli() % 1000,
            p.predictive_entropy.to_milli() / 1000,
            p.predictive_entropy.to_milli() % 1000,
            p.mutual_information.to_milli() / 1000,
            p.mutual_information.to_milli() % 1000,
            if unsure { ", UNSURE (LED on)" } else { "" },
            cost,
            C::UNIT
        );
        summary.record(i, *label, p.class, unsure);
    }
    let _ = led.set_low();
    let found = digest.finalize();
    if found != HMP_Q8_DIGEST {
        return Err(DemoError::HostMismatch {
            expected: HMP_Q8_DIGEST,
            found,
        });
    }
    defmt::info!(
        "q8 answers match the host's bit for bit (outputs digest {=u32:#010x})",
        found
    );
    Ok(Some(summary))
}
