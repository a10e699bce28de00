//! Generates include/incident_gate.h from src/ffi.rs. The header is committed; tests/abi.rs fails
//! when the committed file differs from what this generates, so a stale header cannot land.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // tests/abi.rs compiles a C program with the `cc` crate, which wants the target triple
    println!("cargo:rustc-env=IG_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("incident_gate.h");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen can read src/ffi.rs");
    bindings.write_to_file(&out);
    // Outside CI keep the committed header current; in CI only compare (tests/abi.rs).
    if std::env::var_os("CI").is_none() {
        bindings.write_to_file(crate_dir.join("include/incident_gate.h"));
    }
}
