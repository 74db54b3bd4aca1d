//! Helpers shared by the CLI tests: running the built binary and writing IDX files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `tinybayes` binary with `args`.
pub fn tinybayes(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinybayes"))
        .args(args)
        .output()
        .expect("run tinybayes")
}

/// A path as the `&str` argument the CLI takes.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An IDX file of unsigned bytes with the given dimensions.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared data directory (`shared/data` beside the checkout, as in CI, else the
/// workplace's copy) that holds `file` (e.g. `mnist/t10k-images-idx3-ubyte.gz`); the tests
/// that need it fail, rather than pass, when it is absent.
pub fn shared_data(file: &str) -> PathBuf {
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from("/work/shared/data"),
    ];
    candidates
        .iter()
        .find(|d| d.join(file).is_file())
        .cloned()
        .unwrap_or_else(|| panic!("{file} not found in any of {candidates:?}"))
}
