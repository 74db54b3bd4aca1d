//! The adaptation demo: the device learns a new wearer. The HMP activity model was trained
//! without volunteer m1, and m1 wears the watch rotated 180 degrees about its z axis (every
//! window reads `(-x, -y, z)`): the model is nearly always wrong on m1's windows, mostly with
//! a mutual information above the sensor demo's unsure threshold. From a few of m1's labelled
//! windows the device updates the model's last layer in closed form (`tinybayes::adapt`:
//! penultimate features, then a rank-one update of the state, no heap), saves the state to
//! NOR flash in two CRC'd slots and loads it back, writes the updated last layer as a small
//! head model, and runs the same test windows again through the model with that head.
//!
//! The prior of the update is the exported posterior of the last layer with its variances
//! widened 300 times (so that a few examples of a mounting the model never saw can move it):
//! after only 20 examples the adapted model is still unsure, and its mutual information is
//! higher than the exported model's, which was confidently wrong.
//!
//! The windows (learnt from: m1's training recordings; shown: its test recordings) are cut
//! from `../shared/data/hmp-adl/hmp.npz` and rotated when the firmware is built
//! (`build/adapt.rs`; the data set may not be redistributed, so the repository holds none);
//! without the file the demo says so.

use core::num::NonZeroU16;

use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::adapt::store::Store;
use tinybayes::adapt::{AdaptError, LastLayer};
use tinybayes::format::CRC32;
use tinybayes::{Engine, InferenceError, Mode, Model, ModelError, Prediction};

use crate::app_hmp::{MAX_CLASSES, UNSURE_CONFIDENCE, UNSURE_MUTUAL_INFORMATION};
use crate::clock::Clock;
use crate::generated::{
    ADAPT_CLASS_NAMES, ADAPT_HEAD_WORDS, ADAPT_LEARN, ADAPT_MISSING, ADAPT_MODEL,
    ADAPT_MODEL_DESCRIPTION, ADAPT_SCRATCH_WORDS, ADAPT_SETTINGS, ADAPT_SHOW, ADAPT_STATE_WORDS,
    ADAPT_VOLUNTEER, ADAPT_WORKSPACE_WORDS, DEMO_CHUNK, DEMO_SAMPLES, DEMO_SEED_BASE,
};

/// Bytes of NOR flash the state needs: two slots of whole 4 KB pages, each holding the state's
/// words and its record's header, CRC and padding (under 256 bytes; `Store::new` checks).
pub const FLASH_BYTES: usize = 2 * (4 * ADAPT_STATE_WORDS + 256).div_ceil(4096) * 4096;

/// Why the adaptation demo stopped.
#[derive(Debug, defmt::Format)]
pub enum AdaptDemoError {
    /// The embedded model or the head did not validate.
    Model(ModelError),
    /// An inference or a features pass failed.
    Inference(InferenceError),
    /// The update, the head, the composition or the flash store failed.
    Adapt(AdaptError),
    /// The state loaded back from flash differs from the one saved.
    RestoredDiffers {
        /// Examples in the state saved.
        saved: u32,
        /// Examples in the state loaded.
        loaded: u32,
        /// CRC-32 of the head written from the state saved.
        saved_head: u32,
        /// CRC-32 of the head written from the state loaded.
        loaded_head: u32,
    },
}

impl From<ModelError> for AdaptDemoError {
    fn from(e: ModelError) -> Self {
        AdaptDemoError::Model(e)
    }
}

impl From<InferenceError> for AdaptDemoError {
    fn from(e: InferenceError) -> Self {
        AdaptDemoError::Inference(e)
    }
}

impl From<AdaptError> for AdaptDemoError {
    fn from(e: AdaptError) -> Self {
        AdaptDemoError::Adapt(e)
    }
}

/// How one model did on the shown windows.
#[derive(Clone, Copy, Debug, Default, defmt::Format)]
pub struct Tally {
    /// Windows answered right.
    pub correct: usize,
    /// Windows answered.
    pub total: usize,
    /// Windows flagged unsure.
    pub unsure: usize,
    /// Sum of the mutual information, nats.
    pub mutual_information: f32,
}

impl Tally {
    /// The mean mutual information, nats.
    pub fn mean_mutual_information(&self) -> f32 {
        self.mutual_information / self.total.max(1) as f32
    }
}

/// What the demo found.
#[derive(Clone, Copy, Debug, defmt::Format)]
pub struct AdaptSummary {
    /// The model as exported, on the shown windows.
    pub before: Tally,
    /// The model with the updated last layer.
    pub after: Tally,
}

impl AdaptSummary {
    /// Logs the closing line.
    pub fn log(&self) {
        defmt::info!(
            "done: {=str}'s rotated test windows, {=usize}/{=usize} correct before, {=usize}/{=usize} after; mean mutual information {=f32} nats before, {=f32} after; flagged unsure {=usize} before, {=usize} after",
            ADAPT_VOLUNTEER,
            self.before.correct,
            self.before.total,
            self.after.correct,
            self.after.total,
            self.before.mean_mutual_information(),
            self.after.mean_mutual_information(),
            self.before.unsure,
            self.after.unsure
        );
    }
}

/// The name of class `k`.
fn class_name(k: usize) -> &'static str {
    ADAPT_CLASS_NAMES.get(k).copied().unwrap_or("?")
}

/// Runs `engine` on the shown windows, `tag` naming the model in the log.
fn show<L: OutputPin, C: Clock>(
    engine: &mut Engine<'_, '_, DEMO_CHUNK>,
    tag: &str,
    led: &mut L,
    clock: &mut C,
) -> Result<Tally, AdaptDemoError> {
    let samples = NonZeroU16::new(DEMO_SAMPLES).unwrap_or(NonZeroU16::MIN);
    let mut tally = Tally::default();
    for (i, (window, label)) in ADAPT_SHOW.iter().enumerate() {
        // The same seed per window before and after: only the model changes.
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
        let start = clock.now();
        let p: Prediction<MAX_CLASSES> =
            engine.predict_raw(window, Mode::MonteCarlo { samples }, &mut rng)?;
        let cost = clock.now() - start;
        let unsure =
            p.mutual_information > UNSURE_MUTUAL_INFORMATION || p.confidence() < UNSURE_CONFIDENCE;
        crate::app::show_unsure(led, unsure);
        defmt::info!(
            "{=str}, window {=usize}: {=str} -> {=str} (p = {=f32}), entropy {=f32} nats, mutual information {=f32} nats{=str} [{=u64} {=str}]",
            tag,
            i,
            class_name(usize::from(*label)),
            class_name(p.class),
            p.confidence(),
            p.predictive_entropy,
            p.mutual_information,
            if unsure { ", UNSURE (LED on)" } else { "" },
            cost,
            C::UNIT
        );
        tally.total += 1;
        tally.correct += usize::from(p.class == usize::from(*label));
        tally.unsure += usize::from(unsure);
        tally.mutual_information += p.mutual_information;
    }
    let _ = led.set_low();
    Ok(tally)
}

/// Runs the demo, saving the state to `flash` (at least [`FLASH_BYTES`], erase pages of
/// 4 KB or a divisor of it: under QEMU, [`tinybayes::adapt::flash::RamFlash`]; on a board, the HAL's
/// flash). `None` when the firmware was built without the data file.
pub fn run_adapt_demo<L: OutputPin, C: Clock, F: NorFlash>(
    led: &mut L,
    clock: &mut C,
    flash: &mut F,
) -> Result<Option<AdaptSummary>, AdaptDemoError> {
    let model = Model::from_bytes(ADAPT_MODEL)?;
    defmt::info!("model: {=str}", ADAPT_MODEL_DESCRIPTION);
    crate::app::log_size(&model);
    if let Some(path) = ADAPT_MISSING {
        defmt::warn!(
            "no windows embedded: {=str} was not found when the firmware was built (its terms forbid redistributing the data, so the repository holds none); build beside ../shared/data/hmp-adl",
            path
        );
        return Ok(None);
    }
    defmt::info!(
        "new wearer: volunteer {=str} (never seen in training), watch rotated 180 degrees about z, (x, y, z) -> (-x, -y, z); {=usize} test windows, {=u16} Monte Carlo samples each",
        ADAPT_VOLUNTEER,
        ADAPT_SHOW.len(),
        DEMO_SAMPLES
    );
    let mut workspace = [0.0f32; ADAPT_WORKSPACE_WORDS];
    let mut state = [0.0f32; ADAPT_STATE_WORDS];
    let mut layer = LastLayer::new(&model, ADAPT_SETTINGS, &mut state)?;

    // 1. The model as exported; 2. learning from the labelled windows.
    let before = {
        let mut engine = Engine::<DEMO_CHUNK>::new(&model, &mut workspace)?;
        let before = show(&mut engine, "before", led, clock)?;
        defmt::info!(
            "learning from {=usize} labelled windows of {=str}'s training recordings (other recordings than the test windows'): {}",
            ADAPT_LEARN.len(),
            ADAPT_VOLUNTEER,
            ADAPT_SETTINGS
        );
        let (mut features_total, mut update_total) = (0u64, 0u64);
        for (i, (window, label)) in ADAPT_LEARN.iter().enumerate() {
            let start = clock.now();
            let features = engine.features_raw(window)?;
            let features_cost = clock.now() - start;
            let start = clock.now();
            layer.update(features, usize::from(*label))?;
            let update_cost = clock.now() - start;
            if i % 20 == 0 {
                defmt::info!(
                    "learn {=usize}: {=str}, features pass {=u64} {=str}, update {=u64} {=str}",
                    i,
                    class_name(usize::from(*label)),
                    features_cost,
                    C::UNIT,
                    update_cost,
                    C::UNIT
                );
            }
            features_total += features_cost;
            update_total += update_cost;
        }
        let n = ADAPT_LEARN.len().max(1) as u64;
        defmt::info!(
            "per example: features pass {=u64} {=str}, update {=u64} {=str} (mean of {=u32}; {=usize} features, {=usize} classes)",
            features_total / n,
            C::UNIT,
            update_total / n,
            C::UNIT,
            layer.count(),
            layer.features(),
            layer.classes()
        );
        before
    };
    defmt::info!(
        "RAM of the adaptation: state {=usize} bytes, head scratch {=usize} bytes, head buffer {=usize} bytes (besides the engine's workspace of {=usize} bytes)",
        4 * ADAPT_STATE_WORDS,
        4 * ADAPT_SCRATCH_WORDS,
        4 * ADAPT_HEAD_WORDS,
        4 * ADAPT_WORKSPACE_WORDS
    );

    // 3. Persistence: save, then load into a fresh state; both must write the same head.
    defmt::info!(
        "NOR flash EMULATED IN RAM here ({=usize} bytes, {=usize}-byte pages, {=usize}-byte writes): QEMU's mps2 flash is read-only; on a board the same code takes the HAL's NorFlash (e.g. nrf52840-hal's Nvmc)",
        flash.capacity(),
        F::ERASE_SIZE,
        F::WRITE_SIZE
    );
    let capacity = flash.capacity();
    let mut store = Store::new(&mut *flash, 0, capacity, &layer)?;
    let start = clock.now();
    store.save(&layer)?;
    let save_cost = clock.now() - start;
    let mut scratch = [0.0f32; ADAPT_SCRATCH_WORDS];
    let mut head = [0u32; ADAPT_HEAD_WORDS];
    let start = clock.now();
    let saved_head = content_crc(layer.write_head(&mut scratch, &mut head)?);
    let head_cost = clock.now() - start;
    let mut fresh = [0.0f32; ADAPT_STATE_WORDS];
    let mut restored = LastLayer::new(&model, ADAPT_SETTINGS, &mut fresh)?;
    let start = clock.now();
    let loaded = store.load(&mut restored)?;
    let load_cost = clock.now() - start;
    defmt::info!(
        "saved the state of {=u32} examples ({=usize}-byte record) [{=u64} {=str}]; loaded {=u32} examples into a fresh state [{=u64} {=str}]",
        layer.count(),
        Store::<&mut F>::record_len(&layer),
        save_cost,
        C::UNIT,
        loaded,
        load_cost,
        C::UNIT
    );

    // 4. The head from the loaded state: the adapted model.
    let bytes = restored.write_head(&mut scratch, &mut head)?;
    let loaded_head = content_crc(bytes);
    if loaded != layer.count() || loaded_head != saved_head {
        return Err(AdaptDemoError::RestoredDiffers {
            saved: layer.count(),
            loaded,
            saved_head,
            loaded_head,
        });
    }
    defmt::info!(
        "the loaded state writes the same head as the saved one: {=usize} bytes, contents' CRC-32 {=u32:#010x} [write_head {=u64} {=str}]",
        bytes.len(),
        loaded_head,
        head_cost,
        C::UNIT
    );
    let head_model = Model::from_bytes(bytes)?;
    let adapted = model.with_head(&head_model)?;
    defmt::info!(
        "adapted model: {=usize} layers (the last one replaced by the head's two), {=usize} bytes of workspace",
        adapted.layers().len(),
        tinybayes::Plan::new(&adapted, DEMO_CHUNK).workspace_bytes()
    );
    let mut engine = Engine::<DEMO_CHUNK>::new(&adapted, &mut workspace)?;
    let after = show(&mut engine, "after", led, clock)?;
    Ok(Some(AdaptSummary { before, after }))
}

/// The CRC-32 of a model file's contents: its trailer. (The CRC of a whole file, trailer
/// included, is the same constant for every file: CRC-32's residue.)
fn content_crc(file: &[u8]) -> u32 {
    CRC32.checksum(&file[..file.len().saturating_sub(4)])
}
