//! Compiles `tests/c/boundary.c` (the C side of the boundary tests) for host builds; a
//! Cortex-M build of the static library compiles no C.

fn main() {
    println!("cargo:rerun-if-changed=tests/c/boundary.c");
    println!("cargo:rerun-if-changed=include/tinybayes.h");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host {
        return;
    }
    cc::Build::new()
        .file("tests/c/boundary.c")
        .include("include")
        .std("c11")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("tinybayes_c_boundary");
}
