//! `weir certs` end to end: the walk-through of `examples/mesh/README.md` (mint with `certs mesh`,
//! the example manifests check against what it wrote) and `certs issue`'s refusals as a user sees
//! them (exit code 1, `error: ...` on stderr, nothing written).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MESH_FILES: [&str; 6] = [
    "ca.pem",
    "ca-key.pem",
    "front.pem",
    "front-key.pem",
    "back.pem",
    "back-key.pem",
];

fn weir(args: &[&str]) -> Output {
    Command::new(weir_tests::weir_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run weir")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {}; stdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts a failure as the CLI reports it: exit code 1, one `error: ...` line naming `wants`.
#[track_caller]
fn assert_refused(out: &Output, wants: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.starts_with("error: "), "stderr:\n{stderr}");
    for want in wants {
        assert!(stderr.contains(want), "stderr lacks `{want}`:\n{stderr}");
    }
    assert!(out.stdout.is_empty(), "stdout:\n{}", text(&out.stdout));
}

fn examples_mesh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A copy of `examples/mesh/` (the manifests) with `certs mesh --out <copy>/certs` run in it.
fn minted_mesh() -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().unwrap();
    for manifest in ["front.yaml", "back.yaml"] {
        std::fs::copy(examples_mesh().join(manifest), dir.path().join(manifest)).unwrap();
    }
    let certs = dir.path().join("certs");
    let out = weir(&["certs", "mesh", "--out", path_str(&certs)]);
    (dir, certs, out)
}

#[test]
fn mesh_writes_what_the_example_manifests_need() {
    let (dir, certs, out) = minted_mesh();
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // The files written, one per line, first.
    let want: Vec<String> = MESH_FILES
        .iter()
        .map(|f| certs.join(f).display().to_string())
        .collect();
    assert_eq!(lines[..6], want, "stdout:\n{stdout}");
    for f in MESH_FILES {
        let pem = std::fs::read_to_string(certs.join(f)).unwrap();
        let label = if f.ends_with("-key.pem") {
            "-----BEGIN PRIVATE KEY-----"
        } else {
            "-----BEGIN CERTIFICATE-----"
        };
        assert!(pem.starts_with(label), "{f}:\n{pem}");
        #[cfg(unix)]
        if f.ends_with("-key.pem") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(certs.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    for id in [
        "spiffe://example.org/ns/default/sa/front",
        "spiffe://example.org/ns/default/sa/back",
    ] {
        assert!(stdout.contains(id), "stdout lacks {id}:\n{stdout}");
    }
    // Next to the manifests, the next steps are the README's.
    let back = dir.path().join("back.yaml");
    let front = dir.path().join("front.yaml");
    for step in [
        format!("weir run -c {}", back.display()),
        format!("weir run -c {}", front.display()),
        "curl -i http://127.0.0.1:10080/".to_owned(),
    ] {
        assert!(stdout.contains(&step), "stdout lacks `{step}`:\n{stdout}");
    }
    // The example manifests' relative `certs/...` paths resolve to what was written.
    for manifest in [&front, &back] {
        let out = weir(&["check", path_str(manifest)]);
        assert_ok(&out);
        assert_eq!(text(&out.stdout).trim(), "ok");
    }
}

#[test]
fn mesh_again_refuses_to_overwrite_without_force() {
    let (_dir, certs, out) = minted_mesh();
    assert_ok(&out);
    let before: Vec<Vec<u8>> = MESH_FILES
        .iter()
        .map(|f| std::fs::read(certs.join(f)).unwrap())
        .collect();
    let again = weir(&["certs", "mesh", "--out", path_str(&certs)]);
    assert_refused(&again, &["ca.pem already exists", "--force"]);
    for (f, old) in MESH_FILES.iter().zip(&before) {
        assert_eq!(&std::fs::read(certs.join(f)).unwrap(), old, "{f} changed");
    }
    let forced = weir(&["certs", "mesh", "--out", path_str(&certs), "--force"]);
    assert_ok(&forced);
    assert_ne!(std::fs::read(certs.join("ca-key.pem")).unwrap(), before[1]);
}

#[test]
fn issue_refuses_an_id_outside_the_cas_trust_domain() {
    let (_dir, certs, out) = minted_mesh();
    assert_ok(&out);
    let ca = path_str(&certs);
    let issue = |name: &str, id: &str, extra: &[&str]| {
        let mut args = vec![
            "certs",
            "issue",
            "--ca",
            ca,
            "--out",
            ca,
            "--name",
            name,
            "--spiffe-id",
            id,
        ];
        args.extend_from_slice(extra);
        weir(&args)
    };

    let wrong = issue("billing", "spiffe://other.org/ns/default/sa/billing", &[]);
    assert_refused(
        &wrong,
        &[
            "spiffe://other.org/ns/default/sa/billing",
            "`other.org`",
            "`example.org`",
            "--force",
        ],
    );
    assert!(!certs.join("billing.pem").exists());
    assert!(!certs.join("billing-key.pem").exists());

    // Not a SPIFFE ID at all: refused with the reason.
    let bad = issue("billing", "spiffe://example.org/ns/../billing", &[]);
    assert_refused(&bad, &["invalid SPIFFE ID", "`..`"]);

    // The right trust domain: issued, and the output says what and until when.
    let good = issue(
        "billing",
        "spiffe://example.org/ns/default/sa/billing",
        &["--dns", "billing.local"],
    );
    assert_ok(&good);
    let stdout = text(&good.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..2],
        [
            certs.join("billing.pem").display().to_string(),
            certs.join("billing-key.pem").display().to_string()
        ],
        "stdout:\n{stdout}"
    );
    assert!(
        stdout.contains("spiffe id: spiffe://example.org/ns/default/sa/billing"),
        "{stdout}"
    );
    assert!(stdout.contains("expires: "), "{stdout}");

    // --force overrides the trust-domain check.
    let forced = issue(
        "stranger",
        "spiffe://other.org/ns/default/sa/stranger",
        &["--force"],
    );
    assert_ok(&forced);
    assert!(certs.join("stranger.pem").exists());
}
