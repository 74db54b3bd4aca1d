//! Timing runs on the real MNIST subset (ignored by default; run with `--release --ignored`).
//!
//! Environment: `TB_ARCH` (lenet300 | lenet5), `TB_EPOCHS` (schedule length, default 200),
//! `TB_RUN` (epochs actually run, default all), `TB_SEED`, `TB_LIMIT` (training examples), `TB_SHARDS`, `TB_KLMAX`,
//! `TB_CKPT` (checkpoint directory).

use std::time::Instant;

use super::trainer::tests::{mnist_test, mnist_train};
use super::{Arch, TrainConfig, TrainEvent, Trainer};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "long: real training run; use --release --ignored --nocapture"]
fn timed_mnist_run() {
    let (train, test) = (mnist_train(), mnist_test());
    let arch: Arch = env::<String>("TB_ARCH")
        .map(|s| s.parse().expect("TB_ARCH"))
        .unwrap_or(Arch::Lenet300);
    let config = TrainConfig {
        epochs: env("TB_EPOCHS").unwrap_or(200),
        seed: env("TB_SEED").unwrap_or(0),
        train_limit: env("TB_LIMIT"),
        shards: env("TB_SHARDS").unwrap_or(2),
        kl_weight_max: env("TB_KLMAX").unwrap_or(1.0),
        ..TrainConfig::for_arch(arch)
    };
    let run = env::<usize>("TB_RUN").unwrap_or(config.epochs);
    eprintln!("config: {config:?}");
    let ckpt = env::<String>("TB_CKPT");
    let mut trainer = match &ckpt {
        Some(dir)
            if std::path::Path::new(dir)
                .join(super::CHECKPOINT_FILE)
                .exists() =>
        {
            Trainer::resume(std::path::Path::new(dir), &train).unwrap()
        }
        _ => Trainer::new(config, &train).unwrap(),
    };
    let start = Instant::now();
    let mut events = |e: &TrainEvent| {
        if let TrainEvent::Epoch(r) = e {
            eprintln!(
                "epoch {:3} loss {:.4} ce {:.4} kl {:9.0} rw {:.2} lr {:.2e} val {:.4} sparsity {:.4} {:?} {:6.0} ex/s {:5.1}s",
                r.epoch,
                r.loss,
                r.ce,
                r.kl,
                r.kl_weight,
                r.lr,
                r.val_accuracy.unwrap_or(f64::NAN),
                r.sparsity,
                r.layer_sparsity.iter().map(|s| (s * 1000.0).round() / 10.0).collect::<Vec<_>>(),
                r.examples_per_sec,
                r.seconds
            );
        }
    };
    let first = trainer.epoch();
    for _ in 0..run {
        if trainer.is_finished() {
            break;
        }
        trainer.train_epoch(&mut events).unwrap();
        if let Some(dir) = &ckpt {
            trainer.save_checkpoint(std::path::Path::new(dir)).unwrap();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let run = trainer.epoch() - first;
    let acc = trainer.evaluate(&test);
    let sp = trainer.model().sparsity();
    eprintln!(
        "ran {} epochs in {secs:.1}s ({:.2}s/epoch); test error {:.2}%; sparsity {:.2}% per layer {:?}",
        run,
        secs / run.max(1) as f64,
        100.0 * (1.0 - acc),
        100.0 * sp.fraction(),
        sp.layers.iter().map(|l| format!("{:.2}%", 100.0 * l.fraction())).collect::<Vec<_>>()
    );
}

/// Where the time of one training step goes, per architecture (batch 100, 2 shards).
#[test]
#[ignore = "timing; use --release --ignored --nocapture"]
fn step_phase_breakdown() {
    use super::tensor::fill_normal;
    let train = mnist_train();
    for arch in [Arch::Lenet300, Arch::Lenet5] {
        let config = TrainConfig {
            train_limit: Some(2000),
            shards: env("TB_SHARDS").unwrap_or(2),
            ..TrainConfig::for_arch(arch)
        };
        let mut t = Trainer::new(config, &train).unwrap();
        let idx: Vec<usize> = (0..100).collect();
        let reps = if arch == Arch::Lenet5 { 10 } else { 40 };
        let (mut fb, mut kl, mut adam) = (0.0, 0.0, 0.0);
        for r in 0..reps {
            let s = Instant::now();
            let (_, mut grads) = t.shard_gradients(&idx, 0, r);
            fb += s.elapsed().as_secs_f64();
            let s = Instant::now();
            t.model.add_kl_grad(&mut grads, 1e-4);
            kl += s.elapsed().as_secs_f64();
            let s = Instant::now();
            t.adam.update(&mut t.model.params_mut(), &grads, 1e-4);
            adam += s.elapsed().as_secs_f64();
        }
        let normals = match arch {
            Arch::Lenet300 => 100 * 410,
            Arch::Lenet5 => 100 * (20 * 576 + 50 * 64 + 510),
            Arch::ResnetEe | Arch::Custom => unreachable!("not in the loop"),
        };
        let mut buf = vec![0f32; normals];
        let s = Instant::now();
        for r in 0..reps {
            fill_normal(&mut buf, r as u64);
        }
        let noise = s.elapsed().as_secs_f64();
        let ms = |v: f64| 1e3 * v / reps as f64;
        eprintln!(
            "{arch}: per step forward+backward {:.2} ms (of which noise {:.2} ms), KL {:.2} ms, Adam {:.2} ms",
            ms(fb),
            ms(noise),
            ms(kl),
            ms(adam)
        );
    }
}

/// Throughput of the KL gradient kernel alone.
#[test]
#[ignore = "timing; use --release --ignored --nocapture"]
fn kl_kernel_throughput() {
    let n = 266_200;
    let theta: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-4 - 0.05)
        .collect();
    let ls2: Vec<f32> = (0..n)
        .map(|i| ((i * 104_729) % 1000) as f32 * 0.012 - 10.0)
        .collect();
    let (mut gt, mut gl) = (vec![0f32; n], vec![0f32; n]);
    let s = Instant::now();
    let mut kl = 0.0;
    for _ in 0..100 {
        kl += super::vd::add_kl_grad(&theta, &ls2, &mut gt, &mut gl, 1e-4);
    }
    let ns = s.elapsed().as_secs_f64() * 1e9 / (100.0 * n as f64);
    eprintln!("KL gradient: {ns:.2} ns per weight (kl {kl:.1})");
}

/// Test error of the network in checkpoint `TB_CKPT` at several prune thresholds.
#[test]
#[ignore = "needs a checkpoint; use --release --ignored --nocapture"]
fn evaluate_checkpoint() {
    let dir: String = env("TB_CKPT").expect("set TB_CKPT to a checkpoint directory");
    let test = mnist_test();
    let mut net = Trainer::load_network(std::path::Path::new(&dir)).unwrap();
    let x = test.to_f32(&crate::data::Normalization::byte_unit(1));
    let y = test.labels_usize();
    for thr in [2.0, 3.0, 4.0, 6.0, 100.0] {
        net.prune_threshold = thr;
        let sp = net.sparsity();
        eprintln!(
            "threshold {thr}: test error {:.2}%, sparsity {:.2}% {:?}",
            100.0 * (1.0 - net.accuracy(&x, &y)),
            100.0 * sp.fraction(),
            sp.layers
                .iter()
                .map(|l| (1000.0 * l.fraction()).round() / 10.0)
                .collect::<Vec<_>>()
        );
    }
}

/// Per-exit test accuracy of the `resnet-ee` network in checkpoint `TB_CKPT` at several prune
/// thresholds, with its sparsity and dense MACs per exit.
#[test]
#[ignore = "needs a checkpoint; use --release --ignored --nocapture"]
fn evaluate_resnet_checkpoint() {
    let dir: String = env("TB_CKPT").expect("set TB_CKPT to a checkpoint directory");
    let test = mnist_test();
    let mut net = Trainer::load_resnet(std::path::Path::new(&dir)).unwrap();
    let x = test.to_f32(&crate::data::Normalization::byte_unit(1));
    let y = test.labels_usize();
    eprintln!("dense MACs per exit {:?}", net.dense_macs_per_exit());
    for thr in [2.0, 3.0, 4.0, 100.0] {
        net.prune_threshold = thr;
        let sp = net.sparsity();
        let acc: Vec<String> = net
            .exit_accuracies(&x, &y)
            .iter()
            .map(|a| format!("{:.2}%", 100.0 * a))
            .collect();
        eprintln!(
            "threshold {thr}: test accuracy per exit {acc:?}, sparsity {:.2}% ({} of {} kept) {:?}",
            100.0 * sp.fraction(),
            sp.total - sp.pruned,
            sp.total,
            sp.layers
                .iter()
                .map(|l| (1000.0 * l.fraction()).round() / 10.0)
                .collect::<Vec<_>>()
        );
    }
}
