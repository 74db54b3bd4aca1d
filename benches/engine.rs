//! Host benchmarks of the core engine (criterion): the shipped LeNet-300-100 model on an
//! embedded MNIST test image, in the modes the device runs, plus model validation; and the
//! last-layer update (`tinybayes::adapt`) of the HMP model (51 features, 14 classes): one
//! update, and writing the adapted head. Device
//! figures (instruction counts under QEMU) come from `cargo bench-m4`; see BENCHMARKS.md.
//!
//! Run: `cargo bench -p tinybayes --bench engine`.

use core::num::NonZeroU16;

use criterion::{criterion_group, criterion_main, Criterion};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::writer::ModelBuffer;
use tinybayes::{Engine, Mode, Model, Prediction};

const MODEL: &[u8] = include_bytes!("../models/lenet300.tbm");
const IMAGES: &[u8] = include_bytes!("../firmware/assets/mnist-test-first10.bin");

fn engine(c: &mut Criterion) {
    let buffer = ModelBuffer::from_bytes(MODEL);
    let model = buffer.model().expect("shipped model is valid");
    let pixels = &IMAGES[10..10 + 784];
    let mut group = c.benchmark_group("lenet300");
    group.bench_function("validate", |b| {
        b.iter(|| Model::from_bytes(std::hint::black_box(buffer.as_bytes())).map(|m| m.nnz()))
    });
    let mut workspace = vec![0.0f32; tinybayes::Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(&model, &mut workspace).expect("workspace");
    for (name, mode) in [
        ("mean weights", Mode::MeanWeights),
        (
            "monte carlo M=8",
            Mode::MonteCarlo {
                samples: NonZeroU16::new(8).unwrap(),
            },
        ),
        (
            "monte carlo M=32",
            Mode::MonteCarlo {
                samples: NonZeroU16::new(32).unwrap(),
            },
        ),
    ] {
        group.bench_function(name, |b| {
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
            b.iter(|| {
                let p: Prediction<10> = engine
                    .predict_u8(std::hint::black_box(pixels), mode, &mut rng)
                    .unwrap();
                p.class
            })
        });
    }
    group.finish();
}

fn adapt(c: &mut Criterion) {
    use tinybayes::adapt::{LastLayer, Settings};
    let buffer = ModelBuffer::from_bytes(include_bytes!("../models/hmp-conv1d-m1out.tbm"));
    let model = buffer.model().expect("shipped model is valid");
    let mut state = vec![0.0f32; LastLayer::state_len(&model).expect("adaptable")];
    let settings = Settings {
        prior_scale: 30.0,
        ..Settings::default()
    };
    let mut layer = LastLayer::new(&model, settings, &mut state).expect("state");
    let features: Vec<f32> = (0..layer.features())
        .map(|i| ((i * 7) % 11) as f32 * 0.1)
        .collect();
    let mut group = c.benchmark_group("adapt hmp");
    group.bench_function("update", |b| {
        b.iter(|| layer.update(std::hint::black_box(&features), 3).unwrap())
    });
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let mut head = vec![0u32; layer.head_len()];
    group.bench_function("write head", |b| {
        b.iter(|| layer.write_head(&mut scratch, &mut head).unwrap().len())
    });
    group.finish();
}

criterion_group!(benches, engine, adapt);
criterion_main!(benches);
