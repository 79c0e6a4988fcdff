//! Tests of `build_filter` on throwaway crates: a dependency-free cdylib builds to a `.wasm`, a
//! compile error comes back with the compiler's message, and a crate without a cdylib is named as
//! producing no module.

use std::fs;
use std::path::Path;

use weir_sdk::testing::{BuildError, try_build_filter};

/// Writes a crate of its own workspace (`[workspace]`) with `lib_rs` and `crate_type`.
fn write_crate(dir: &Path, name: &str, crate_type: &str, lib_rs: &str) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [lib]\ncrate-type = [\"{crate_type}\"]\n\n[workspace]\n"
        ),
    )
    .unwrap();
    fs::write(dir.join("src/lib.rs"), lib_rs).unwrap();
}

#[test]
fn a_cdylib_builds_to_a_wasm_module() {
    let dir = tempfile::tempdir().unwrap();
    write_crate(
        dir.path(),
        "weir_sdk_build_ok",
        "cdylib",
        "#[unsafe(no_mangle)]\npub extern \"C\" fn answer() -> i32 { 42 }\n",
    );
    let wasm = try_build_filter(dir.path()).expect("builds");
    assert!(
        wasm.ends_with("wasm32-wasip1/release/weir_sdk_build_ok.wasm"),
        "{}",
        wasm.display()
    );
    assert!(fs::read(&wasm).unwrap().starts_with(b"\0asm"));
    // Memoized: the second call returns the same module without building again.
    assert_eq!(try_build_filter(dir.path()).unwrap(), wasm);
}

#[test]
fn compile_errors_come_back_with_the_compilers_message() {
    let dir = tempfile::tempdir().unwrap();
    write_crate(
        dir.path(),
        "weir_sdk_build_broken",
        "cdylib",
        "pub fn broken() -> u32 { \"not a number\" }\n",
    );
    match try_build_filter(dir.path()) {
        Err(BuildError::Failed { stderr, .. }) => {
            assert!(stderr.contains("mismatched types"), "{stderr}");
        }
        other => panic!("expected a build failure, got {other:?}"),
    }
}

#[test]
fn a_crate_without_a_cdylib_produces_no_module() {
    let dir = tempfile::tempdir().unwrap();
    write_crate(dir.path(), "weir_sdk_build_rlib", "rlib", "pub fn f() {}\n");
    let err = try_build_filter(dir.path()).unwrap_err();
    assert!(matches!(err, BuildError::NoArtifact { .. }), "{err}");
    assert!(err.to_string().contains("cdylib"), "{err}");
}
