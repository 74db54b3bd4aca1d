//! include/tinybayes.h is what cbindgen generates from the crate today (CI fails on a stale
//! header). `UPDATE_HEADER=1 cargo test -p tinybayes-c --test header` rewrites it.

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("config");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = crate_dir.join("include/tinybayes.h");
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write include/tinybayes.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/tinybayes.h is stale: regenerate it with \
         `UPDATE_HEADER=1 cargo test -p tinybayes-c --test header` and commit it"
    );
}
