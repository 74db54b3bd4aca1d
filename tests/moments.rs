//! Moment propagation (`Mode::Moments`, `Mode::MomentsThenSample`): the whole network's
//! predictive against Monte Carlo with M = 1,000 on plain, convolutional (see `conv.rs`) and
//! early-exit networks, its errors, and what it shares with the other modes. The per-layer
//! closed forms are tested against Monte Carlo and numerical integration in
//! `src/kernels/moments.rs`.

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::early_exit::Halting;
use tinybayes::numeric::Q8;
use tinybayes::writer::synthetic;
use tinybayes::{Engine, InferenceError, Mode, Model, Plan, Prediction, QModel};

const CHUNK: usize = 16;

fn samples(m: u16) -> NonZeroU16 {
    NonZeroU16::new(m).unwrap()
}

fn predict(model: &Model<'_>, raw: &[u8], mode: Mode) -> Prediction<8> {
    let mut ws = vec![0.0f32; Plan::new(model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(11);
    engine.predict_u8(raw, mode, &mut rng).unwrap()
}

/// The largest difference between two predictives' class probabilities.
fn distance(a: &Prediction<8>, b: &Prediction<8>) -> f32 {
    a.probabilities
        .iter()
        .zip(&b.probabilities)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checks moment propagation against Monte Carlo (M = 1,000) on `inputs`: the largest
/// class-probability difference of the probit and of 1,000 logit draws stays below `gap`,
/// and the logit draws' mean mutual information within `mi_ratio` (relative) of Monte
/// Carlo's, on a model uncertain enough for that to mean something.
fn assert_close_to_monte_carlo(
    name: &str,
    model: &Model<'_>,
    inputs: &[Vec<u8>],
    gap: f32,
    mi_ratio: f32,
) {
    let (mut probit, mut drawn, mut mi_drawn, mut mi_mc) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for raw in inputs {
        let mc = predict(
            model,
            raw,
            Mode::MonteCarlo {
                samples: samples(1000),
            },
        );
        let moments = predict(model, raw, Mode::Moments);
        let then = predict(
            model,
            raw,
            Mode::MomentsThenSample {
                samples: samples(1000),
            },
        );
        assert_eq!(moments.mutual_information, 0.0);
        assert_eq!(then.samples, 1000);
        probit = probit.max(distance(&moments, &mc));
        drawn = drawn.max(distance(&then, &mc));
        mi_drawn += then.mutual_information / inputs.len() as f32;
        mi_mc += mc.mutual_information / inputs.len() as f32;
    }
    println!("{name}: probit {probit}, drawn {drawn}, MI {mi_drawn} vs {mi_mc}");
    assert!(
        probit < gap,
        "{name}: probit predictive {probit} from Monte Carlo's"
    );
    assert!(
        drawn < gap,
        "{name}: logit draws' predictive {drawn} from Monte Carlo's"
    );
    assert!(
        mi_mc > 0.01,
        "{name}: the test model must be uncertain ({mi_mc})"
    );
    assert!(
        (mi_drawn / mi_mc - 1.0).abs() < mi_ratio,
        "{name}: MI {mi_drawn} vs {mi_mc}"
    );
}

fn inputs(len: usize, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..count)
        .map(|_| (0..len).map(|_| (rng.next_u32() >> 24) as u8).collect())
        .collect()
}

#[test]
fn a_perceptron_s_moments_predictive_matches_monte_carlo() {
    let buffer = synthetic::mlp(4, &[20, 16, 12, 5], 0.7)
        .to_buffer()
        .unwrap();
    let model = buffer.model().unwrap();
    assert_close_to_monte_carlo("perceptron", &model, &inputs(20, 12, 1), 0.03, 0.25);
}

#[test]
fn an_early_exit_network_s_moments_predictive_matches_monte_carlo_at_every_depth() {
    let buffer = synthetic::resnet_ee(3, 6, 4, 5, &[0.4, 0.35, 0.25], 2.0)
        .to_buffer()
        .unwrap();
    let model = buffer.model().unwrap();
    assert_close_to_monte_carlo("resnet", &model, &inputs(36, 12, 2), 0.05, 0.3);
    // Every exit answers in moment mode too, with the same halting rules.
    let mut ws = vec![0.0f32; Plan::new(&model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(&model, &mut ws).unwrap();
    let raw = &inputs(36, 1, 3)[0];
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
    for exits in 1..=3 {
        let p = engine
            .predict_u8_early_exit::<8>(raw, Mode::Moments, Halting::Depth { exits }, &mut rng)
            .unwrap();
        assert_eq!((p.depth, p.exit), (exits, exits - 1));
    }
    let all = engine
        .predict_u8_early_exit::<8>(raw, Mode::Moments, Halting::All, &mut rng)
        .unwrap();
    assert_eq!(all.prediction, predict(&model, raw, Mode::Moments));
}

#[test]
fn moment_propagation_needs_two_samples_per_pass_and_an_f32_model() {
    let buffer = synthetic::mlp(4, &[20, 16, 5], 0.7).to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let mut ws = vec![0.0f32; Plan::new(&model, 1).workspace_len()];
    let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
    let raw = [7u8; 20];
    assert_eq!(
        engine.predict_u8::<8>(&raw, Mode::Moments, &mut rng),
        Err(InferenceError::ChunkTooSmall {
            needed: 2,
            chunk: 1
        })
    );
    let spec = synthetic::mlp(4, &[20, 16, 5], 0.7);
    let calibration = [raw.as_slice()];
    let q = tinybayes::fixed::quantize::quantize(
        &spec,
        tinybayes::format::Precision::Q8,
        &calibration,
        Default::default(),
    )
    .unwrap();
    let qbuffer = q.to_buffer().unwrap();
    let qmodel = QModel::from_bytes(qbuffer.as_bytes()).unwrap();
    let mut qws = vec![0u64; Plan::new(&qmodel, 8).workspace_len()];
    let mut qengine = Engine::<8, Q8>::new(&qmodel, &mut qws).unwrap();
    assert_eq!(
        qengine.predict_u8::<8>(&raw, Mode::Moments, &mut rng).err(),
        Some(InferenceError::UnsupportedMode)
    );
}

#[test]
fn moment_propagation_is_deterministic_and_reads_the_generator_only_for_logit_draws() {
    let buffer = synthetic::mlp(5, &[20, 16, 5], 0.7).to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let raw = &inputs(20, 1, 4)[0];
    let mut ws = vec![0.0f32; Plan::new(&model, 2).workspace_len()];
    let mut engine = Engine::<2>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
    let before = rng.clone();
    let a: Prediction<8> = engine.predict_u8(raw, Mode::Moments, &mut rng).unwrap();
    assert_eq!(rng, before, "the probit draws nothing");
    // The same answer whatever the chunk (2 here, 16 in `predict`).
    assert_eq!(a, predict(&model, raw, Mode::Moments));
    let then = Mode::MomentsThenSample {
        samples: samples(64),
    };
    let b: Prediction<8> = engine.predict_u8(raw, then, &mut rng).unwrap();
    assert_ne!(rng, before, "logit draws read one seed");
    let mut again = before.clone();
    assert_eq!(b, engine.predict_u8(raw, then, &mut again).unwrap());
}
