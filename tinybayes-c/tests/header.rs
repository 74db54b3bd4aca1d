//! include/tinybayes.h is the header cbindgen generates from the crate today (build.rs
//! writes it to OUT_DIR; CI fails on a stale checked-in copy).
//! `UPDATE_HEADER=1 cargo test -p tinybayes-c --test header` rewrites the copy.

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/tinybayes.h"));

#[test]
fn header_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/tinybayes.h");
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&path, GENERATED).expect("write include/tinybayes.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == GENERATED,
        "include/tinybayes.h is stale: regenerate it with \
         `UPDATE_HEADER=1 cargo test -p tinybayes-c --test header` and commit it"
    );
}
