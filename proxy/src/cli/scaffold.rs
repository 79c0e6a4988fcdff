//! `weir new-filter NAME`: a new filter crate from the SDK's template (`sdk/template`), ready for
//! the edit–test loop (`cargo test` builds the `.wasm` and runs it in the SDK's native harness).
//!
//! The template's files are embedded in the binary; the generated crate stands on its own (its
//! own `[workspace]` and release profile) and depends on `weir-sdk` by path: the checkout this
//! `weir` was built from, or `--sdk PATH`.

use std::path::{Path, PathBuf};

const CARGO_TOML: &str = include_str!("../../../sdk/template/Cargo.toml");
const LIB_RS: &str = include_str!("../../../sdk/template/src/lib.rs");
const TESTS_RS: &str = include_str!("../../../sdk/template/tests/filter.rs");
const README: &str = include_str!("../../../sdk/template/README.md");

/// The `sdk/` directory of the checkout this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

/// Why a filter crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "`{0}` is not a valid crate name (lower-case letters, digits and `-`, starting with a letter)"
    )]
    BadName(String),
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes a new filter crate named `name` into `dir`.
pub fn new_filter(name: &str, dir: &Path, sdk: &Path) -> Result<(), ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_owned()));
    }
    let sdk = sdk.canonicalize().unwrap_or_else(|_| sdk.to_owned());
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", LIB_RS.to_owned()),
        ("tests/filter.rs", TESTS_RS.to_owned()),
        ("README.md", README.to_owned()),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        let write = |p: &Path| -> std::io::Result<()> {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, &text)
        };
        write(&path).map_err(|source| ScaffoldError::Write { path, source })?;
    }
    Ok(())
}

/// The template's manifest, renamed, pointed at `sdk`, and made a workspace of its own.
fn cargo_toml(name: &str, sdk: &Path) -> String {
    let mut out = String::with_capacity(CARGO_TOML.len() + 64);
    // The template ends with a commented-out `[workspace]` and release profile, which a
    // standalone crate needs: from that marker on, `# ` prefixes are removed.
    let mut standalone_block = false;
    for line in CARGO_TOML.lines() {
        standalone_block |= line == "# [workspace]";
        let line = if standalone_block {
            line.strip_prefix("# ").unwrap_or(line).to_owned()
        } else if line.starts_with("name = ") {
            format!("name = \"{name}\"")
        } else if line.starts_with("description = ") {
            "description = \"A Weir proxy-wasm filter\"".to_owned()
        } else if line.starts_with("weir-sdk = ") {
            format!("weir-sdk = {{ path = {:?} }}", sdk.display().to_string())
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_standalone_crate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-filter");
        new_filter("my-filter", &dir, Path::new("/opt/weir/sdk")).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my-filter\""), "{manifest}");
        assert!(
            manifest.contains("weir-sdk = { path = \"/opt/weir/sdk\" }"),
            "{manifest}"
        );
        assert!(manifest.lines().any(|l| l == "[workspace]"), "{manifest}");
        assert!(
            manifest.lines().any(|l| l == "[profile.release]"),
            "{manifest}"
        );
        assert!(!manifest.contains("weir-filter-template"), "{manifest}");
        // Only the trailing block is uncommented: the instructions at the top stay comments.
        assert!(
            manifest
                .lines()
                .all(|l| l.starts_with('#') || !l.contains("point `weir-sdk`")),
            "{manifest}"
        );
        for f in ["src/lib.rs", "tests/filter.rs", "README.md"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        // Never over an existing directory, never with a bad name.
        assert!(matches!(
            new_filter("my-filter", &dir, Path::new("/x")),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            new_filter("My_Filter", &tmp.path().join("b"), Path::new("/x")),
            Err(ScaffoldError::BadName(_))
        ));
    }
}
