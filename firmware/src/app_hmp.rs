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
use tinybayes::{Engine, Mode, Model, Prediction};

use crate::app::{DemoError, DemoSummary};
use crate::clock::Clock;
use crate::generated::{
    DEMO_CHUNK, DEMO_SAMPLES, DEMO_SEED_BASE, HMP_CLASS_NAMES, HMP_MISSING, HMP_MODEL, HMP_WINDOWS,
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

/// What the HMP demo found: `None` when the firmware was built without the data file.
pub fn run_hmp_demo<L: OutputPin, C: Clock>(
    led: &mut L,
    clock: &mut C,
) -> Result<Option<DemoSummary>, DemoError> {
    let model = Model::from_bytes(HMP_MODEL)?;
    defmt::info!(
        "model: {=usize} layers, {=usize} weights stored of {=usize} trained parameters, {=usize} bytes of flash, {=usize} bytes of workspace",
        model.layers().len(),
        model.nnz(),
        model.dense_params(),
        model.as_bytes().len(),
        tinybayes::Plan::new(&model, DEMO_CHUNK).workspace_bytes()
    );
    if let Some(path) = HMP_MISSING {
        defmt::warn!(
            "no windows embedded: {=str} was not found when the firmware was built (its terms forbid redistributing the data, so the repository holds none); build beside ../shared/data/hmp-adl or set TINYBAYES_HMP_DATA",
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
    let mut summary = DemoSummary {
        correct: 0,
        unsure: 0,
        wrong: 0,
        wrong_flagged: 0,
        total: 0,
    };
    for (i, (window, label)) in HMP_WINDOWS.iter().enumerate() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
        let start = clock.now();
        let p: Prediction<MAX_CLASSES> =
            engine.predict_raw(window, Mode::MonteCarlo { samples }, &mut rng)?;
        let cost = clock.now() - start;
        let unsure =
            p.mutual_information > UNSURE_MUTUAL_INFORMATION || p.confidence() < UNSURE_CONFIDENCE;
        let _ = if unsure {
            led.set_high()
        } else {
            led.set_low()
        };
        let name = |k: usize| HMP_CLASS_NAMES.get(k).copied().unwrap_or("?");
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
