//! Early exit (README: "Early-exit ResNets as Bayesian control flow"): the exact
//! halting rule against brute force, the other policies against their definitions, and the
//! validation of residual and exit layers.

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::early_exit::{ExitPrediction, Halting, Uncertainty};
use tinybayes::writer::{synthetic, LayerOp, ModelBuffer, ModelSpec};
use tinybayes::{Engine, InferenceError, Mode, Model, ModelError, Prediction};

const CHUNK: usize = 16;
const SIDE: usize = 6;

fn mc(samples: u16) -> Mode {
    Mode::MonteCarlo {
        samples: NonZeroU16::new(samples).unwrap(),
    }
}

/// Truncated geometric prior over `n` exits: p(l) ∝ (1 - lambda)^l.
fn geometric(n: usize, lambda: f32) -> Vec<f32> {
    let raw: Vec<f32> = (0..n).map(|l| (1.0 - lambda).powi(l as i32)).collect();
    let total: f32 = raw.iter().sum();
    raw.iter().map(|p| p / total).collect()
}

fn model(seed: u64, exits: usize, sharpness: f32) -> ModelBuffer {
    let priors = geometric(exits, 0.3);
    synthetic::resnet_ee(seed, SIDE, 4, 5, &priors, sharpness)
        .to_buffer()
        .unwrap()
}

fn image(rng: &mut Xoshiro128PlusPlus) -> Vec<u8> {
    (0..SIDE * SIDE)
        .map(|_| (rng.next_u32() >> 24) as u8)
        .collect()
}

fn run(
    model: &Model<'_>,
    raw: &[u8],
    mode: Mode,
    halting: Halting<'_>,
    seed: u64,
) -> Result<ExitPrediction<8>, InferenceError> {
    let mut ws = vec![0.0f32; tinybayes::Plan::new(model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    engine.predict_u8_early_exit(raw, mode, halting, &mut rng)
}

#[test]
fn the_exact_halting_rule_matches_brute_force() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(1);
    let mut decisions = [0usize; 6];
    let mut early = 0;
    for seed in 0..12u64 {
        let exits = 2 + (seed as usize % 4);
        let buffer = model(seed, exits, 1.0 + seed as f32 * 0.7);
        let model = buffer.model().unwrap();
        for trial in 0..12 {
            let raw = image(&mut inputs);
            let lambda = [0.05, 0.3, 0.6, 0.9][trial % 4];
            let prior = geometric(exits, lambda);
            for mode in [Mode::MeanWeights, mc(8)] {
                let all = run(&model, &raw, mode, Halting::All, trial as u64).unwrap();
                assert_eq!(all.depth, exits);
                // Brute force: the argmax of p(y | x, l) p(l) over every exit (first on ties).
                let mut best = (f32::MIN, 0);
                for (l, e) in all.exits.iter().enumerate() {
                    let joint = e.confidence * prior[l];
                    if joint > best.0 {
                        best = (joint, l);
                    }
                }
                let halting = Halting::JointMode {
                    prior: Some(&prior),
                };
                let got = run(&model, &raw, mode, halting, trial as u64).unwrap();
                assert_eq!(got.exit, best.1, "seed {seed} trial {trial} {mode:?}");
                assert_eq!(got.prediction.class, all.exits[best.1].class);
                assert!(got.depth > got.exit && got.depth <= exits);
                // The exits it computed said exactly what brute force saw.
                assert_eq!(&got.exits[..], &all.exits[..got.depth]);
                assert!(got.macs <= all.macs);
                decisions[got.exit] += 1;
                early += usize::from(got.depth < exits);
            }
        }
    }
    // The test covers stopping early and answering at several depths.
    assert!(early > 20, "stopped early {early} times");
    assert!(
        decisions.iter().filter(|&&n| n > 0).count() >= 3,
        "{decisions:?}"
    );
}

/// The robust rule by brute force, from every exit's summary: the trusted exits (mutual
/// information strictly below τ, and the last), the earliest argmax of `confidence * prior`
/// over them, and the first exit after which the best trusted joint so far reaches the next
/// exit's prior mass (or the last exit). Returns (answering exit, depth).
fn robust_by_hand(
    exits: &[tinybayes::early_exit::ExitSummary],
    prior: &[f32],
    tau: f32,
) -> (usize, usize) {
    let n = exits.len();
    let mut best: Option<(f32, usize)> = None;
    let mut depth = n;
    for (l, e) in exits.iter().enumerate() {
        if l + 1 == n || e.mutual_information < tau {
            let joint = e.confidence * prior[l];
            if best.is_none_or(|(b, _)| joint > b) {
                best = Some((joint, l));
            }
        }
        if l + 1 < n && best.is_some_and(|(b, _)| b >= prior[l + 1]) {
            depth = l + 1;
            break;
        }
    }
    (best.map(|(_, l)| l).unwrap(), depth)
}

#[test]
fn the_robust_rule_matches_brute_force() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(4);
    let (mut early, mut deeper_than_joint, mut other_answer) = (0, 0, 0);
    for seed in 0..8u64 {
        let exits = 2 + (seed as usize % 4);
        let buffer = model(100 + seed, exits, 1.0 + seed as f32 * 0.6);
        let model = buffer.model().unwrap();
        for trial in 0..8u64 {
            let raw = image(&mut inputs);
            let prior = geometric(exits, [0.05, 0.3, 0.6, 0.9][trial as usize % 4]);
            for mode in [Mode::MeanWeights, mc(8), mc(21)] {
                let all = run(&model, &raw, mode, Halting::All, trial).unwrap();
                let joint = Halting::JointMode {
                    prior: Some(&prior),
                };
                let joint = run(&model, &raw, mode, joint, trial).unwrap();
                // τ on both sides of every exit's mutual information (equal: untrusted).
                let mut taus = vec![0.0, 1e-4, 0.05, f32::INFINITY];
                for e in &all.exits {
                    let mi = e.mutual_information;
                    taus.extend([mi, mi * 1.001 + 1e-9]);
                }
                for tau in taus {
                    let halting = Halting::Robust {
                        prior: Some(&prior),
                        mutual_information_below: tau,
                    };
                    let got = run(&model, &raw, mode, halting, trial).unwrap();
                    let (exit, depth) = robust_by_hand(&all.exits, &prior, tau);
                    let at = format!("seed {seed} trial {trial} {mode:?} tau {tau}");
                    assert_eq!((got.exit, got.depth), (exit, depth), "{at}");
                    // The exits it computed said exactly what brute force saw.
                    assert_eq!(&got.exits[..], &all.exits[..depth], "{at}");
                    // The answer is exit `exit`'s predictive, bit for bit.
                    let budget = Halting::Depth { exits: exit + 1 };
                    let alone = run(&model, &raw, mode, budget, trial).unwrap();
                    assert_eq!(got.prediction, alone.prediction, "{at}");
                    assert!(got.macs <= all.macs);
                    if depth < exits {
                        // Stopping early: the joint mode's own condition holds, and the
                        // answering exit's weight samples agree.
                        assert!(joint.depth <= depth, "{at}");
                        assert!(all.exits[exit].mutual_information < tau, "{at}");
                        early += 1;
                    }
                    deeper_than_joint += usize::from(got.depth > joint.depth);
                    other_answer += usize::from(got.exit != joint.exit);
                }
            }
        }
    }
    // The cases covered: stopping early, running deeper than the joint mode, another answer.
    assert!(early > 50, "stopped early {early} times");
    assert!(
        deeper_than_joint > 50,
        "deeper than the joint mode {deeper_than_joint} times"
    );
    assert!(
        other_answer > 10,
        "another answer than the joint mode {other_answer} times"
    );
}

/// τ = +∞ is the joint mode, τ = 0 (or below) runs every block and answers with the last
/// exit, bit for bit; with mean weights (mutual information 0) any τ > 0 is the joint mode;
/// a NaN bound is refused.
#[test]
fn the_robust_rule_at_its_edges() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(6);
    let mut joint_stopped_early = 0;
    for seed in 0..5u64 {
        let exits = 2 + (seed as usize % 3);
        let buffer = model(200 + seed, exits, 2.0 + seed as f32);
        let model = buffer.model().unwrap();
        for trial in 0..6u64 {
            let raw = image(&mut inputs);
            for mode in [Mode::MeanWeights, mc(9), mc(40)] {
                let robust = |tau| Halting::Robust {
                    prior: None,
                    mutual_information_below: tau,
                };
                let joint = Halting::JointMode { prior: None };
                let joint = run(&model, &raw, mode, joint, trial).unwrap();
                assert_eq!(
                    run(&model, &raw, mode, robust(f32::INFINITY), trial).unwrap(),
                    joint
                );
                let all = run(&model, &raw, mode, Halting::All, trial).unwrap();
                for tau in [0.0, -1.0, f32::NEG_INFINITY] {
                    assert_eq!(run(&model, &raw, mode, robust(tau), trial).unwrap(), all);
                }
                if mode == Mode::MeanWeights {
                    assert_eq!(
                        run(&model, &raw, mode, robust(1e-30), trial).unwrap(),
                        joint
                    );
                }
                joint_stopped_early += usize::from(joint.depth < exits);
            }
        }
    }
    assert!(joint_stopped_early > 10, "{joint_stopped_early}");
    let buffer = model(1, 3, 1.0);
    let model = buffer.model().unwrap();
    let raw = vec![9u8; SIDE * SIDE];
    let nan = Halting::Robust {
        prior: None,
        mutual_information_below: f32::NAN,
    };
    assert_eq!(
        run(&model, &raw, mc(4), nan, 0),
        Err(InferenceError::BadPrior)
    );
    let increasing = [0.2f32, 0.3, 0.5];
    let bad = Halting::Robust {
        prior: Some(&increasing),
        mutual_information_below: 0.1,
    };
    assert_eq!(
        run(&model, &raw, mc(4), bad, 0),
        Err(InferenceError::BadPrior)
    );
}

#[test]
fn running_every_block_is_the_plain_prediction_and_ignores_chunking() {
    let buffer = model(3, 4, 2.0);
    let model = buffer.model().unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(9);
    for _ in 0..5 {
        let raw = image(&mut rng);
        for mode in [Mode::MeanWeights, mc(5), mc(40)] {
            let all = run(&model, &raw, mode, Halting::All, 7).unwrap();
            assert_eq!(all.exit, 3);
            let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 4).workspace_len()];
            let mut engine = Engine::<4>::new(&model, &mut ws).unwrap();
            let mut r = Xoshiro128PlusPlus::seed_from_u64(7);
            let plain: Prediction<8> = engine.predict_u8(&raw, mode, &mut r).unwrap();
            assert_eq!(plain, all.prediction);
            let mut r = Xoshiro128PlusPlus::seed_from_u64(7);
            let chunked: ExitPrediction<8> = engine
                .predict_u8_early_exit(&raw, mode, Halting::All, &mut r)
                .unwrap();
            assert_eq!(chunked, all);
        }
    }
}

/// One prediction with an engine of `C` samples per pass; also the generator's next output.
fn run_chunked<const C: usize>(
    model: &Model<'_>,
    raw: &[u8],
    mode: Mode,
    halting: Halting<'_>,
    seed: u64,
) -> (ExitPrediction<8>, u64) {
    let mut ws = vec![0.0f32; tinybayes::Plan::new(model, C).workspace_len()];
    let mut engine = Engine::<C>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    let p = engine
        .predict_u8_early_exit(raw, mode, halting, &mut rng)
        .unwrap();
    (p, rng.next_u64())
}

/// With more samples than one pass holds, a policy that reads the exits regenerates each
/// chunk's path per exit from replayed seeds: the answer, the exits seen, the depth and the
/// generator's state afterwards are those of one pass holding every sample.
#[test]
fn every_policy_gives_the_same_answer_for_any_chunk_size() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(21);
    let mut depths = std::collections::BTreeSet::new();
    for seed in 0..6u64 {
        let exits = 2 + (seed as usize % 3);
        let buffer = model(40 + seed, exits, 0.5 + seed as f32 * 0.5);
        let model = buffer.model().unwrap();
        let prior = geometric(exits, 0.2);
        for trial in 0..6u64 {
            let raw = image(&mut inputs);
            let policies = [
                Halting::All,
                Halting::JointMode {
                    prior: Some(&prior),
                },
                Halting::SampleDepth { prior: None },
                Halting::Depth { exits: 2 },
                Halting::Threshold {
                    measure: Uncertainty::PredictiveEntropy,
                    at_most: 1.2,
                },
                Halting::Threshold {
                    measure: Uncertainty::MutualInformation,
                    at_most: 0.02,
                },
                Halting::Robust {
                    prior: Some(&prior),
                    mutual_information_below: 0.02,
                },
            ];
            for halting in policies {
                for mode in [Mode::MeanWeights, mc(37)] {
                    let one_pass = run_chunked::<64>(&model, &raw, mode, halting, trial);
                    depths.insert(one_pass.0.depth);
                    assert_eq!(
                        run_chunked::<1>(&model, &raw, mode, halting, trial),
                        one_pass
                    );
                    assert_eq!(
                        run_chunked::<5>(&model, &raw, mode, halting, trial),
                        one_pass
                    );
                    assert_eq!(
                        run_chunked::<16>(&model, &raw, mode, halting, trial),
                        one_pass
                    );
                }
            }
        }
    }
    // The policies stopped at several depths, so regeneration past the first exit was seen.
    assert!(depths.len() >= 3, "depths seen: {depths:?}");
}

/// The workspace of one chunk does not grow with the samples, and a single-sample engine of
/// the early-exit model needs a fraction of a one-pass engine's.
#[test]
fn the_early_exit_workspace_is_that_of_one_chunk() {
    let buffer = model(5, 4, 1.0);
    let model = buffer.model().unwrap();
    let one = tinybayes::Plan::new(&model, 1).workspace_len();
    let sixteen = tinybayes::Plan::new(&model, 16).workspace_len();
    assert!(one * 4 < sixteen, "{one} vs {sixteen}");
    // Exactly the plan's words run 37 samples with a joint-mode policy.
    let mut ws = vec![0.0f32; one];
    let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(3);
    let raw = image(&mut rng);
    let p: ExitPrediction<8> = engine
        .predict_u8_early_exit(&raw, mc(37), Halting::JointMode { prior: None }, &mut rng)
        .unwrap();
    assert_eq!(p.prediction.samples, 37);
}

#[test]
fn the_threshold_policy_stops_at_the_first_certain_exit() {
    let buffer = model(5, 5, 3.0);
    let model = buffer.model().unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(2);
    for trial in 0..20 {
        let raw = image(&mut rng);
        let all = run(&model, &raw, mc(12), Halting::All, trial).unwrap();
        for (measure, tau) in [
            (Uncertainty::MutualInformation, 0.02),
            (Uncertainty::PredictiveEntropy, 0.5),
        ] {
            let value = |e: &tinybayes::early_exit::ExitSummary| match measure {
                Uncertainty::MutualInformation => e.mutual_information,
                Uncertainty::PredictiveEntropy => e.predictive_entropy,
            };
            let want = all.exits.iter().position(|e| value(e) <= tau).unwrap_or(4);
            let halting = Halting::Threshold {
                measure,
                at_most: tau,
            };
            let got = run(&model, &raw, mc(12), halting, trial).unwrap();
            assert_eq!((got.exit, got.depth), (want, want + 1));
        }
    }
}

#[test]
fn a_depth_budget_runs_exactly_that_many_exits() {
    let buffer = model(6, 4, 1.5);
    let model = buffer.model().unwrap();
    let raw = vec![50u8; SIDE * SIDE];
    let all = run(&model, &raw, mc(4), Halting::All, 1).unwrap();
    let mut previous = 0;
    for d in 1..=5 {
        let got = run(&model, &raw, mc(4), Halting::Depth { exits: d }, 1).unwrap();
        assert_eq!(got.depth, d.min(4));
        assert_eq!(got.exit, d.min(4) - 1);
        assert_eq!(&got.exits[..], &all.exits[..got.depth]);
        assert!(got.macs > previous || d > 4);
        previous = got.macs;
    }
    assert_eq!(
        run(&model, &raw, mc(4), Halting::Depth { exits: 0 }, 1),
        Err(InferenceError::BadPrior)
    );
}

#[test]
fn sampled_depths_follow_the_prior() {
    let buffer = model(8, 3, 1.0);
    let model = buffer.model().unwrap();
    let prior = [0.6f32, 0.3, 0.1];
    let raw = vec![100u8; SIDE * SIDE];
    let mut counts = [0usize; 3];
    let n = 3000;
    for seed in 0..n {
        let halting = Halting::SampleDepth {
            prior: Some(&prior),
        };
        let got = run(&model, &raw, Mode::MeanWeights, halting, seed).unwrap();
        assert_eq!(got.depth, got.exit + 1);
        counts[got.exit] += 1;
    }
    for (c, p) in counts.iter().zip(prior) {
        let expected = p * n as f32;
        let sd = (n as f32 * p * (1.0 - p)).sqrt();
        assert!((*c as f32 - expected).abs() < 5.0 * sd, "{counts:?}");
    }
}

#[test]
fn bad_policies_and_plain_models_are_typed_errors() {
    let buffer = model(1, 3, 1.0);
    let model = buffer.model().unwrap();
    let raw = vec![7u8; SIDE * SIDE];
    let increasing = [0.2f32, 0.3, 0.5];
    let halting = Halting::JointMode {
        prior: Some(&increasing),
    };
    assert_eq!(
        run(&model, &raw, Mode::MeanWeights, halting, 0),
        Err(InferenceError::BadPrior)
    );
    let short = [1.0f32];
    let halting = Halting::SampleDepth {
        prior: Some(&short),
    };
    assert_eq!(
        run(&model, &raw, Mode::MeanWeights, halting, 0),
        Err(InferenceError::BadPrior)
    );
    let plain = synthetic::mlp(1, &[36, 8, 5], 0.5).to_buffer().unwrap();
    let plain = plain.model().unwrap();
    assert_eq!(
        run(&plain, &raw, Mode::MeanWeights, Halting::All, 0),
        Err(InferenceError::NotEarlyExit)
    );
}

fn spec_error(spec: &ModelSpec) -> ModelError {
    match spec.to_buffer() {
        Err(tinybayes::writer::WriteError::Invalid(e)) => e,
        other => panic!("expected an invalid model, got {other:?}"),
    }
}

#[test]
fn invalid_residual_and_exit_layers_are_refused() {
    let good = synthetic::resnet_ee(2, SIDE, 4, 5, &[0.5, 0.3, 0.2], 1.0);
    assert!(good.to_buffer().is_ok());
    // Layers: 0 stem, 1-2 convs, 3 add, 4 exit, 5-6 convs, 7 add, 8 exit, ...
    let mut forward = good.clone();
    forward.layers[3].op = LayerOp::ResidualAdd { source: 3 };
    assert_eq!(spec_error(&forward), ModelError::BadEarlyExit { layer: 3 });
    let mut overlapping = good.clone();
    overlapping.layers[7].op = LayerOp::ResidualAdd { source: 0 };
    assert_eq!(
        spec_error(&overlapping),
        ModelError::BadEarlyExit { layer: 7 }
    );
    let mut from_exit = good.clone();
    from_exit.layers[7].op = LayerOp::ResidualAdd { source: 4 };
    assert_eq!(
        spec_error(&from_exit),
        ModelError::BadEarlyExit { layer: 7 }
    );
    let mut not_a_distribution = good.clone();
    not_a_distribution.layers[4].op = LayerOp::ExitHead { prior: 0.9 };
    assert!(matches!(
        spec_error(&not_a_distribution),
        ModelError::BadEarlyExit { .. }
    ));
    let mut negative = good.clone();
    negative.layers[4].op = LayerOp::ExitHead { prior: -0.5 };
    assert_eq!(spec_error(&negative), ModelError::BadEarlyExit { layer: 4 });
    // A residual network must end with an exit head.
    let mut truncated = good.clone();
    truncated.layers.truncate(4);
    assert_eq!(spec_error(&truncated), ModelError::BadOutputLayer);
    // Old readers' view: the file is version 4.
    let bytes = good.to_bytes().unwrap();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 4);
}
