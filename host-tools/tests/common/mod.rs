//! Helpers shared by the CLI tests: running the built binary and writing IDX files.
#![allow(dead_code)]

use std::path::Path;
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
