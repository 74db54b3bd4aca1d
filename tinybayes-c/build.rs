//! Host builds (the tests): generates the C header from the crate's sources with cbindgen
//! into `OUT_DIR/tinybayes.h` and compiles `tests/c/boundary.c` (the C side of the boundary
//! tests) against it, so that the C tests always see the library's real layout;
//! `tests/header.rs` then checks that the checked-in `include/tinybayes.h` is that header.
//! Only with the `host-tests` feature (which the crate's tests enable): a build of the static
//! library, for Cortex-M or the host, does neither and compiles neither tool.

#[cfg(not(feature = "host-tests"))]
fn main() {}

#[cfg(feature = "host-tests")]
fn main() {
    use std::path::PathBuf;

    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=tests/c/boundary.c");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host {
        return;
    }
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("tinybayes-c/cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write_to_file(out_dir.join("tinybayes.h"));
    cc::Build::new()
        .file("tests/c/boundary.c")
        .include(&out_dir)
        .std("c11")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("tinybayes_c_boundary");
}
