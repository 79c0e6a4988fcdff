//! [`build_filter`]: compile a filter crate to `wasm32-wasip1` from inside its own `cargo test`,
//! so the tests always run the current source (the filter author's edit-test loop).
//!
//! The nested cargo gets a target dir of its own (`<target dir>/weir-filters`): the outer cargo may
//! still hold the lock on its target dir, and the wasm build's artifacts should not churn the host
//! build's. Environment that describes the *host* build (flags, target, wrappers, jobserver,
//! profile overrides) is removed so it cannot leak into the wasm build, as
//! `tests/artifacts/build.rs` does.

use std::collections::HashMap;
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

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

/// Prefixes of host-build settings that must not reach the nested build either.
const LEAKY_ENV_PREFIXES: &[&str] = &["CARGO_PROFILE_"];

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("could not run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The build failed; `stderr` holds the compiler's diagnostics.
    #[error("building the filter failed:\n{command}\n--- cargo stderr ---\n{stderr}{hint}")]
    Failed {
        /// The command line.
        command: String,
        /// cargo's stderr.
        stderr: String,
        /// A hint for a known cause (missing target), or empty.
        hint: String,
    },
    /// The build succeeded but produced no `.wasm` for the crate (is it a `cdylib`?).
    #[error("cargo built {manifest} but produced no .wasm; is `crate-type = [\"cdylib\"]` set?")]
    NoArtifact {
        /// The crate's manifest.
        manifest: PathBuf,
    },
}

/// Builds the filter crate at `manifest_dir` (usually `env!("CARGO_MANIFEST_DIR")`) with
/// `cargo build --release --target wasm32-wasip1` and returns the `.wasm` path. Built once per
/// test process; cargo's own freshness check makes later runs cheap. Panics with the compiler's
/// diagnostics on failure (what a test should show); see [`try_build_filter`].
pub fn build_filter(manifest_dir: impl AsRef<Path>) -> PathBuf {
    try_build_filter(manifest_dir).unwrap_or_else(|e| panic!("{e}"))
}

/// [`build_filter`], returning the error.
pub fn try_build_filter(manifest_dir: impl AsRef<Path>) -> Result<PathBuf, BuildError> {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let manifest_dir = manifest_dir.as_ref();
    let key = manifest_dir
        .canonicalize()
        .unwrap_or_else(|_| manifest_dir.to_path_buf());
    // The lock is held across the build on purpose: tests of one binary run in parallel, and the
    // second caller should wait for the first build instead of racing it.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(&key) {
        return Ok(path.clone());
    }
    let path = build(&key)?;
    built.insert(key, path.clone());
    Ok(path)
}

fn build(manifest_dir: &Path) -> Result<PathBuf, BuildError> {
    let manifest = manifest_dir.join("Cargo.toml");
    let target_dir = filters_target_dir(manifest_dir);
    // `CARGO` is set by cargo for the tests it runs: the same (pinned) toolchain builds the wasm.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest_dir)
        .args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
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
    let command = format!("{cmd:?}");
    let output = cmd.output().map_err(|source| BuildError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let hint = if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
            || stderr.contains("can't find crate for `std`")
        {
            format!("\nhint: the {TARGET} target is missing; run `rustup target add {TARGET}`\n")
        } else {
            String::new()
        };
        return Err(BuildError::Failed {
            command,
            stderr,
            hint,
        });
    }
    wasm_artifact(&String::from_utf8_lossy(&output.stdout), &manifest)
        .ok_or(BuildError::NoArtifact { manifest })
}

/// Picks the `.wasm` of the crate at `manifest` from cargo's JSON messages.
fn wasm_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    let manifest = manifest.canonicalize().ok()?;
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["manifest_path"]
                .as_str()
                .and_then(|p| Path::new(p).canonicalize().ok())
                .is_some_and(|p| p == manifest)
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

/// `<target dir>/weir-filters`, where the target dir is the one this test binary was built into
/// (found by the `CACHEDIR.TAG` cargo writes there), else an absolute `$CARGO_TARGET_DIR` (a
/// relative one would resolve against the test's working directory, the crate, not where cargo
/// meant it), else `<crate>/target`.
fn filters_target_dir(manifest_dir: &Path) -> PathBuf {
    let base = env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .or_else(|| {
            env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    base.join("weir-filters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasm_of_the_right_package_is_picked() {
        let dir = env::temp_dir().join(format!("weir-sdk-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        std::fs::write(&manifest, "").unwrap();
        let messages = format!(
            "{}\n{}\nnot json\n{}\n",
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": "/elsewhere/Cargo.toml",
                "filenames": ["/t/other.wasm"]}),
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": manifest,
                "filenames": ["/t/deps/libmine.rlib", "/t/mine.wasm"]}),
            serde_json::json!({"reason": "build-finished", "success": true}),
        );
        assert_eq!(
            wasm_artifact(&messages, &manifest),
            Some(PathBuf::from("/t/mine.wasm"))
        );
        assert_eq!(wasm_artifact("", &manifest), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn filters_get_a_target_dir_of_their_own() {
        let dir = filters_target_dir(Path::new("/nowhere"));
        assert!(dir.ends_with("weir-filters"), "{}", dir.display());
    }
}
