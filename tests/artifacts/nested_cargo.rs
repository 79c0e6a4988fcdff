// Shared by the build scripts that compile guest crates to wasm32-wasip1 with a nested cargo:
// `tests/artifacts/build.rs` (the guest test programs) and `proxy/build.rs` (the stock filters),
// each through `include!`. One copy of the rules for what host settings must not leak into the
// nested build.

/// Host-build settings that must not reach the nested wasm build.
const NESTED_LEAKY_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_INCREMENTAL",
    // Variables cargo sets for the running build script; the nested cargo sets its own for the
    // build scripts it runs, but only the ones that apply, so stale host values could show through.
    "TARGET",
    "HOST",
    "OUT_DIR",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
];

/// Prefixes of host-build settings that must not reach the nested build either: build settings
/// (`CARGO_BUILD_TARGET`, `CARGO_BUILD_RUSTFLAGS`, …), profile overrides meant for the host crates
/// (the guest workspaces set their own release profile), and the host's `cfg` values.
const NESTED_LEAKY_ENV_PREFIXES: &[&str] = &["CARGO_BUILD_", "CARGO_PROFILE_", "CARGO_CFG_"];

/// Runs `cargo build --release --locked --target wasm32-wasip1` for `packages` of the workspace
/// in `workspace` into `target_dir`. On failure: a message with the command, the nested stderr
/// and a hint for the usual causes (`what` names what was being built).
fn nested_wasm_build(
    what: &str,
    workspace: &std::path::Path,
    target_dir: &std::path::Path,
    packages: &[&str],
) -> Result<(), String> {
    const NESTED_TARGET: &str = "wasm32-wasip1";
    // `CARGO` is the cargo running this build script, so the nested build uses the same (pinned)
    // toolchain without going through a rustup proxy.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(NESTED_TARGET)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for name in packages {
        cmd.arg("--package").arg(name);
    }
    for var in NESTED_LEAKY_ENV {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        let leaky = var
            .to_str()
            .is_some_and(|v| NESTED_LEAKY_ENV_PREFIXES.iter().any(|p| v.starts_with(p)));
        if leaky {
            cmd.env_remove(var);
        }
    }
    let output = cmd
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let hint = if stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`")
    {
        format!(
            "\nhint: the {NESTED_TARGET} target is missing; run `rustup target add {NESTED_TARGET}` (the Makefile does this)\n"
        )
    } else if stderr.contains("--locked") {
        format!(
            "\nhint: {}/Cargo.lock is out of date (often: sdk/Cargo.toml changed); run \
             `cargo update --workspace --manifest-path {}/Cargo.toml` and commit the lock file\n",
            workspace.display(),
            workspace.display()
        )
    } else {
        String::new()
    };
    Err(format!(
        "building {what} failed ({}):\n{cmd:?}\n--- nested cargo stderr ---\n{stderr}{hint}",
        output.status
    ))
}
