//! The adaptation demo's build-time half (`cargo demo-adapt`): embeds the HMP model trained
//! without volunteer m1 and, cut at build time from `../shared/data/hmp-adl/hmp.npz` (the data
//! set may not be redistributed: the repository holds no window, and a build without the file
//! embeds none and the demo says so), m1's windows as a watch worn rotated 180 degrees about
//! its z axis reads them, `(x, y, z) -> (-x, -y, z)`:
//! - [`LEARN`] labelled windows of m1's *training* recordings, to learn from: every class of
//!   m1's once, the rest shared in proportion to its windows per class (largest remainders,
//!   ties to the lower class), evenly spaced inside a class;
//! - [`SHOW_PER_CLASS`] evenly spaced windows of each class among m1's *test* recordings
//!   (other recordings than the ones learnt from), shown before and after the update.
//!
//! The settings of the update and the sizes of its buffers (state, scratch, head, and the
//! workspace of the adapted model) are computed here with the very same core crate.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use tinybayes::adapt::{LastLayer, Likelihood, Settings};
use tinybayes::writer::ModelBuffer;
use tinybayes::{Model, Plan};

use crate::hmp::{read_member, write_windows, Npy, Split, CLASS_NAMES, HMP_DATA};

/// The model a new wearer meets: the HMP network trained without [`VOLUNTEER`], relative to
/// the firmware crate.
const ADAPT_MODEL: &str = "../models/hmp-conv1d-m1out.tbm";
/// The new wearer, by name in the archive's `subject_names`.
const VOLUNTEER: &str = "m1";
/// Labelled windows the device learns from.
const LEARN: usize = 100;
/// Test windows shown per class of the volunteer's (evenly spaced).
const SHOW_PER_CLASS: usize = 2;
/// The prior and likelihood of the update: the exported posterior variances of the last layer
/// widened 300 times and a bias deviation of variance 1, so that 100 examples of a mounting
/// the model never saw can move it, and regression on smoothed labels (whose targets do not
/// depend on how wrong the model is).
const SETTINGS: Settings = Settings {
    prior_scale: 300.0,
    bias_variance: 1.0,
    likelihood: Likelihood::LabelRegression {
        smoothing: 0.1,
        noise: 1.0,
    },
};

/// `npy`'s strings: a numpy unicode array (`<U<n>`, UTF-32 little-endian, `n` characters
/// each, padded with NULs).
fn strings(npy: &Npy) -> Result<Vec<String>, String> {
    let chars: usize = npy
        .descr
        .strip_prefix("<U")
        .and_then(|n| n.parse().ok())
        .ok_or(format!(
            "{} is not a little-endian unicode array",
            npy.descr
        ))?;
    let count: usize = npy.shape.iter().product();
    if chars == 0 || npy.data.len() < count * chars * 4 {
        return Err("truncated unicode array".into());
    }
    npy.data
        .chunks_exact(chars * 4)
        .take(count)
        .map(|item| {
            item.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .take_while(|&c| c != 0)
                .map(|c| char::from_u32(c).ok_or(format!("bad character {c:#x}")))
                .collect()
        })
        .collect()
}

/// The indices of `split`'s examples whose volunteer (`subject_<name>`) is `volunteer`.
fn volunteer_examples(
    path: &Path,
    name: &str,
    split: &Split,
    volunteer: u8,
) -> Result<Vec<usize>, String> {
    let subjects = read_member(path, &format!("subject_{name}"))?;
    if subjects.descr != "|u1" || subjects.shape != [split.len()] {
        return Err(format!(
            "subject_{name} is {} {:?}, not uint8 [{}]",
            subjects.descr,
            subjects.shape,
            split.len()
        ));
    }
    Ok((0..split.len())
        .filter(|&i| subjects.data[i] == volunteer)
        .collect())
}

/// `examples` grouped by label, ascending, each group in archive order.
fn by_class(split: &Split, examples: &[usize]) -> Vec<(u8, Vec<usize>)> {
    let mut groups: Vec<(u8, Vec<usize>)> = Vec::new();
    for &i in examples {
        let label = split.labels()[i];
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, group)) => group.push(i),
            None => groups.push((label, vec![i])),
        }
    }
    groups.sort_by_key(|(l, _)| *l);
    groups
}

/// `count` of a group's `n` examples, evenly spaced and centred: positions `(2j + 1) n / 2q`.
fn spaced(group: &[usize], count: usize) -> impl Iterator<Item = usize> + '_ {
    let n = group.len();
    (0..count).map(move |j| group[(2 * j + 1) * n / (2 * count)])
}

/// The windows learnt from: every class once, the other `LEARN - classes` in proportion to
/// the class's windows (largest remainders, ties to the lower class).
fn learn_picks(groups: &[(u8, Vec<usize>)]) -> Result<Vec<usize>, String> {
    let classes = groups.len();
    if classes == 0 || classes > LEARN {
        return Err(format!(
            "{VOLUNTEER} has {classes} classes in the training split: 1 to {LEARN} are needed"
        ));
    }
    let total: usize = groups.iter().map(|(_, g)| g.len()).sum();
    let rest = LEARN - classes;
    let mut quota: Vec<usize> = groups
        .iter()
        .map(|(_, g)| 1 + rest * g.len() / total)
        .collect();
    let mut order: Vec<usize> = (0..classes).collect();
    // Stable: equal remainders keep the lower class first.
    order.sort_by_key(|&c| std::cmp::Reverse(rest * groups[c].1.len() % total));
    let left = LEARN - quota.iter().sum::<usize>();
    for &c in order.iter().take(left) {
        quota[c] += 1;
    }
    Ok(groups
        .iter()
        .zip(&quota)
        .flat_map(|((_, g), &q)| spaced(g, q.min(g.len())))
        .collect())
}

/// The window as the rotated watch reads it: its x and y axes (the first two of the three
/// channel-major channels) negated.
fn rotated((mut values, label): (Vec<f32>, u8)) -> (Vec<f32>, u8) {
    let axis = values.len() / 3;
    for v in &mut values[..2 * axis] {
        *v = -*v;
    }
    (values, label)
}

/// The windows to learn from and to show, cut from the archive at `path`.
type Cut = (Vec<(Vec<f32>, u8)>, Vec<(Vec<f32>, u8)>);

fn cut(path: &Path, window: usize) -> Result<Cut, String> {
    let names = strings(&read_member(path, "subject_names")?)?;
    let volunteer = names
        .iter()
        .position(|n| n == VOLUNTEER)
        .ok_or(format!("no volunteer {VOLUNTEER} in subject_names"))?;
    let volunteer = u8::try_from(volunteer).map_err(|_| "too many volunteers")?;
    let train = Split::read(path, "train", window)?;
    let mine = volunteer_examples(path, "train", &train, volunteer)?;
    let learn = learn_picks(&by_class(&train, &mine))?;
    let test = Split::read(path, "test", window)?;
    let mine = volunteer_examples(path, "test", &test, volunteer)?;
    let show: Vec<usize> = by_class(&test, &mine)
        .iter()
        .flat_map(|(_, g)| spaced(g, SHOW_PER_CLASS.min(g.len())))
        .collect();
    if show.is_empty() {
        return Err(format!("{VOLUNTEER} has no test window"));
    }
    Ok((
        learn
            .into_iter()
            .map(|i| rotated(train.example(i)))
            .collect(),
        show.into_iter().map(|i| rotated(test.example(i))).collect(),
    ))
}

/// The sizes of the update's buffers (words) for `model` under [`SETTINGS`]: state, scratch,
/// head, and the workspace of the adapted model at `chunk` samples per pass (the head's
/// layers depend on the model and the settings, not on the examples: an update with none
/// has them).
fn sizes(model: &Model<'_>, chunk: usize) -> Result<[usize; 4], tinybayes::adapt::AdaptError> {
    let mut state = vec![0.0f32; LastLayer::state_len(model)?];
    let layer = LastLayer::new(model, SETTINGS, &mut state)?;
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let head_words = layer.head_len();
    let mut out = vec![0u32; head_words];
    let bytes = layer.write_head(&mut scratch, &mut out)?;
    let head = Model::from_bytes(bytes).expect("the head is a valid model");
    let adapted = model.with_head(&head)?;
    Ok([
        state.len(),
        scratch.len(),
        head_words,
        Plan::new(&adapted, chunk).workspace_len(),
    ])
}

/// Writes the adaptation demo's model, settings, buffer sizes and windows into `src`
/// (`chunk`: the f32 engine's samples per pass).
pub fn write_adapt(src: &mut String, manifest: &Path, chunk: usize) {
    let model_path = manifest
        .join(ADAPT_MODEL)
        .canonicalize()
        .expect("the adaptation model exists");
    println!("cargo::rerun-if-changed={}", model_path.display());
    let buffer = ModelBuffer::from_bytes(&fs::read(&model_path).expect("read adaptation model"));
    let model = buffer
        .model()
        .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let [state, scratch, head, adapted] =
        sizes(&model, chunk).unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let workspace = Plan::new(&model, chunk).workspace_len().max(adapted);

    writeln!(
        src,
        "/// The HMP model trained without volunteer {VOLUNTEER}, in flash."
    )
    .unwrap();
    writeln!(
        src,
        "pub static ADAPT_MODEL: &[u8] = tinybayes::include_model!({:?});",
        model_path.display().to_string()
    )
    .unwrap();
    writeln!(src, "/// What the adaptation model is.").unwrap();
    writeln!(
        src,
        "pub const ADAPT_MODEL_DESCRIPTION: &str = {:?};",
        format!(
            "HMP 1-D CNN trained without volunteer {VOLUNTEER} ({})",
            ADAPT_MODEL.trim_start_matches("../")
        )
    )
    .unwrap();
    writeln!(src, "/// The new wearer.").unwrap();
    writeln!(src, "pub const ADAPT_VOLUNTEER: &str = {VOLUNTEER:?};").unwrap();
    writeln!(src, "/// The class names, by label.").unwrap();
    writeln!(
        src,
        "pub static ADAPT_CLASS_NAMES: &[&str] = &{CLASS_NAMES:?};"
    )
    .unwrap();
    let Likelihood::LabelRegression { smoothing, noise } = SETTINGS.likelihood else {
        unreachable!("the demo regresses on smoothed labels")
    };
    writeln!(src, "/// The prior and likelihood of the update.").unwrap();
    writeln!(
        src,
        "pub const ADAPT_SETTINGS: tinybayes::adapt::Settings = tinybayes::adapt::Settings {{ \
         prior_scale: {:?}, bias_variance: {:?}, likelihood: \
         tinybayes::adapt::Likelihood::LabelRegression {{ smoothing: {smoothing:?}, noise: {noise:?} }} }};",
        SETTINGS.prior_scale, SETTINGS.bias_variance
    )
    .unwrap();
    for (name, words, what) in [
        (
            "ADAPT_STATE_WORDS",
            state,
            "the update's state (`LastLayer::state_len`)",
        ),
        (
            "ADAPT_SCRATCH_WORDS",
            scratch,
            "the head writer's scratch (`LastLayer::scratch_len`)",
        ),
        (
            "ADAPT_HEAD_WORDS",
            head,
            "the head file (`LastLayer::head_len`)",
        ),
        (
            "ADAPT_WORKSPACE_WORDS",
            workspace,
            "the engine's workspace at `DEMO_CHUNK` for the model and the adapted model",
        ),
    ] {
        writeln!(src, "/// Words of {what}.").unwrap();
        writeln!(src, "pub const {name}: usize = {words};").unwrap();
    }

    let data = manifest.join(HMP_DATA);
    let found = data.is_file().then(|| {
        println!("cargo::rerun-if-changed={}", data.display());
        cut(&data, model.input_len()).unwrap_or_else(|e| panic!("{}: {e}", data.display()))
    });
    writeln!(
        src,
        "/// Why no window is embedded (`None` when they are): the data file was not found."
    )
    .unwrap();
    match &found {
        Some(_) => writeln!(src, "pub const ADAPT_MISSING: Option<&str> = None;").unwrap(),
        None => writeln!(
            src,
            "pub const ADAPT_MISSING: Option<&str> = Some({:?});",
            data.display().to_string()
        )
        .unwrap(),
    }
    let (learn, show) = found.unwrap_or_default();
    writeln!(
        src,
        "/// {VOLUNTEER}'s labelled training windows to learn from, rotated (x and y negated), in g."
    )
    .unwrap();
    write_windows(src, "ADAPT_LEARN", &learn);
    writeln!(
        src,
        "/// {VOLUNTEER}'s test windows shown before and after, rotated (x and y negated), in g."
    )
    .unwrap();
    write_windows(src, "ADAPT_SHOW", &show);
}
