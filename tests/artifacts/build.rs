//! Builds the guest programs of `tests/programs` (a separate cargo workspace) for wasm32-wasip1
//! and writes `$OUT_DIR/artifacts.rs`: one `pub const NAME: &str = "/abs/path/name.wasm";` per
//! program, included by `src/lib.rs`.
//!
//! The nested cargo gets a target dir of its own under `OUT_DIR`: sharing the host target dir would
//! deadlock on the lock the outer cargo already holds. Environment that describes the *host* build
//! (flags, target, wrappers, jobserver) is removed so it cannot leak into the wasm build.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The guest crates (package name = cdylib name) and the doc line of their constant.
const PROGRAMS: &[(&str, &str)] = &[
    (
        "conformance",
        "The configurable conformance filter (scenarios in `tests/programs/conformance/src/lib.rs`).",
    ),
    (
        "start_style",
        "A minimal header filter that exports `_start` instead of `_initialize`.",
    ),
    (
        "header_bench",
        "A trivial header filter (reads two headers, adds `x-bench`) for benchmarks.",
    ),
    (
        "tax_bench",
        "The Wasm-tax benchmark's third-party filter (a property, a header, three added headers).",
    ),
];

const TARGET: &str = "wasm32-wasip1";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let programs = manifest_dir
        .join("../programs")
        .canonicalize()
        .expect("tests/programs exists");

    // Rebuild when a program's sources, its manifest or the programs' lock file change. The
    // directories are listed one by one (not `tests/programs` itself) so a stray `target/` left by
    // a manual build in there does not trigger rebuilds.
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", programs.join(file).display());
    }
    for (name, _) in PROGRAMS {
        println!(
            "cargo:rerun-if-changed={}",
            programs.join(name).join("Cargo.toml").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            programs.join(name).join("src").display()
        );
    }

    let target_dir = out_dir.join("programs-target");
    build(&programs, &target_dir);

    let mut generated = String::new();
    for (name, doc) in PROGRAMS {
        let wasm = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{name}.wasm"));
        assert!(
            wasm.is_file(),
            "the nested build did not produce {}",
            wasm.display()
        );
        let constant = name.to_ascii_uppercase();
        writeln!(generated, "/// {doc}").unwrap();
        writeln!(
            generated,
            "pub const {constant}: &str = {:?};",
            path_str(&wasm)
        )
        .unwrap();
    }
    fs::write(out_dir.join("artifacts.rs"), generated).expect("write artifacts.rs");
}

/// Builds the guest programs (see `nested_wasm_build`).
fn build(programs: &Path, target_dir: &Path) {
    let packages: Vec<&str> = PROGRAMS.iter().map(|(name, _)| *name).collect();
    if let Err(message) = nested_wasm_build("the guest programs", programs, target_dir, &packages) {
        panic!("{message}");
    }
}

include!("nested_cargo.rs");

fn path_str(path: &Path) -> &str {
    path.to_str().expect("artifact paths are UTF-8")
}
