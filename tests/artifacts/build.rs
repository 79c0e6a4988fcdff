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
use std::process::Command;

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
];

const TARGET: &str = "wasm32-wasip1";

/// Host-build settings that must not reach the nested wasm build.
const LEAKY_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
];

/// Prefixes of host-build settings that must not reach the nested build either (profile overrides
/// meant for the host crates; the programs workspace sets its own release profile).
const LEAKY_ENV_PREFIXES: &[&str] = &["CARGO_PROFILE_"];

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

/// Runs `cargo build --release --target wasm32-wasip1` on the programs workspace; panics with the
/// nested cargo's stderr on failure.
fn build(programs: &Path, target_dir: &Path) {
    // `CARGO` is the cargo running this build script, so the nested build uses the same
    // (pinned) toolchain without going through a rustup proxy.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(programs)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(programs.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (name, _) in PROGRAMS {
        cmd.arg("--package").arg(name);
    }
    for var in LEAKY_ENV {
        cmd.env_remove(var);
    }
    for (var, _) in env::vars_os() {
        let leaky = var
            .to_str()
            .is_some_and(|v| LEAKY_ENV_PREFIXES.iter().any(|p| v.starts_with(p)));
        if leaky {
            cmd.env_remove(var);
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    if output.status.success() {
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let hint = if stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`")
    {
        format!(
            "\nhint: the {TARGET} target is missing; run `rustup target add {TARGET}` (the Makefile does this)\n"
        )
    } else {
        String::new()
    };
    panic!(
        "building the guest programs failed ({}):\n{cmd:?}\n--- nested cargo stderr ---\n{stderr}{hint}",
        output.status
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("artifact paths are UTF-8")
}
