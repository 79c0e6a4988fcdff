//! The `weir` binary under test: locating it, running `weir run` until its readiness lines, sending
//! signals, awaiting exit, running `weir check`, and writing manifests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long `weir run` may take to print `weir: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the `weir` binary: `$WEIR_BIN` if set, else `target/<profile>/weir` next to the `deps/`
/// folder holding this test binary. Panics with the command to run if it does not exist.
pub fn weir_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "WEIR_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/e2e-<hash>  ->  <target>/<profile>/weir
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary is not inside <target>/<profile>/deps");
    let bin = profile_dir.join(format!("weir{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "weir binary not found at {}: build it first with `cargo build -p weir` (same profile and \
         CARGO_TARGET_DIR as the tests), or point WEIR_BIN at it",
        bin.display()
    );
    bin
}

/// A running `weir run --config <manifest>`. Killed (SIGKILL) on drop; its stderr is printed when
/// dropped during a panic so a failing test shows the proxy's logs.
pub struct Weir {
    child: Child,
    pid: u32,
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stdout_extra: Arc<Mutex<Vec<String>>>,
    stdout_task: Option<tokio::task::JoinHandle<()>>,
    readiness: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Weir {
    /// Starts weir with `manifest` (YAML) and waits for `weir: ready`.
    pub async fn start(manifest: &str) -> Weir {
        Weir::start_with_args(manifest, &[]).await
    }

    /// Starts weir with `manifest` and extra `weir run` arguments (e.g. `--workers 2`).
    pub async fn start_with_args(manifest: &str, args: &[&str]) -> Weir {
        Weir::start_with_files(manifest, &[], args).await
    }

    /// Like [`Weir::start_with_args`], with extra files (`name`, contents) written next to the
    /// manifest first (a token file, a module, …).
    pub async fn start_with_files(manifest: &str, files: &[(&str, &[u8])], args: &[&str]) -> Weir {
        Weir::start_with_hook(manifest, files, args, async |_, _| {}).await
    }

    /// Like [`Weir::start_with_files`], running `meanwhile(pid, dir)` after the process is spawned
    /// and before its readiness lines are read: a test can act while weir is still starting.
    pub async fn start_with_hook(
        manifest: &str,
        files: &[(&str, &[u8])],
        args: &[&str],
        meanwhile: impl AsyncFnOnce(u32, &std::path::Path),
    ) -> Weir {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, manifest).expect("write manifest");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write file");
        }
        // `args` may name the manifest itself (`--config PATH`, e.g. a symlink to follow).
        let mut cmd = Command::new(weir_bin());
        cmd.arg("run");
        if !args.contains(&"--config") {
            cmd.arg("--config").arg(&path);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn weir");
        let pid = child.id().expect("pid of a just-spawned child");
        meanwhile(pid, dir.path()).await;

        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        let mut stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(err_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });

        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut listeners = HashMap::new();
        let mut admin = None;
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        seen.push(line.clone());
                        if line == "weir: ready" {
                            return true;
                        }
                        if let Some(rest) = line.strip_prefix("weir: listener ") {
                            if let Some((name, addr)) = rest.split_once(" listening on ") {
                                let addr = addr.trim().parse().unwrap_or_else(|e| {
                                    panic!("bad address in readiness line {line:?}: {e}")
                                });
                                listeners.insert(name.to_string(), addr);
                            }
                        } else if let Some(addr) = line.strip_prefix("weir: admin listening on ") {
                            admin = Some(addr.trim().parse().unwrap_or_else(|e| {
                                panic!("bad address in readiness line {line:?}: {e}")
                            }));
                        }
                    }
                    _ => return false, // stdout closed: the process is exiting
                }
            }
        })
        .await;
        if ready != Ok(true) {
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            // Let the stderr reader drain what the process wrote before it died.
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut stderr_task).await;
            panic!(
                "weir did not print `weir: ready` within {READY_TIMEOUT:?} ({}).\nstdout so far: \
                 {seen:#?}\nmanifest:\n{manifest}\nstderr:\n{}",
                match status {
                    Ok(Ok(s)) => format!("exited: {s}"),
                    _ => "still running".to_string(),
                },
                stderr.lock().unwrap()
            );
        }
        // Keep draining stdout so a chatty process never blocks on a full pipe.
        let stdout_extra = Arc::new(Mutex::new(Vec::new()));
        let extra = stdout_extra.clone();
        let stdout_task = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                extra.lock().unwrap().push(line);
            }
        });
        Weir {
            child,
            pid,
            listeners,
            admin,
            stderr,
            stdout_extra,
            stdout_task: Some(stdout_task),
            readiness: seen,
            _dir: dir,
        }
    }

    /// The folder holding the manifest (`weir.yaml`) and the extra files.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Address of the listener called `name`, from its readiness line.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| {
            panic!(
                "no readiness line for listener {name:?}; saw {:?}",
                self.listeners
            )
        })
    }

    /// Address of the admin listener, from its readiness line.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .expect("no `weir: admin listening on` readiness line")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything weir wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The stdout lines up to and including `weir: ready`.
    pub fn readiness_lines(&self) -> &[String] {
        &self.readiness
    }

    /// Lines weir printed to stdout after `weir: ready` (complete once [`Weir::wait_exit`]
    /// returned).
    pub fn stdout_after_ready(&self) -> Vec<String> {
        self.stdout_extra.lock().unwrap().clone()
    }

    /// Sends SIGTERM (through `kill(1)`: the workspace forbids `unsafe`, so no direct libc call).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal("INT");
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -{sig} {} failed: {st}", self.pid);
    }

    /// Waits (at most `limit`) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(r) => r.expect("wait for weir"),
            Err(_) => panic!(
                "weir did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            ),
        };
        // The process is gone, so stdout is at EOF: let its reader finish.
        if let Some(t) = self.stdout_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        status
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- weir (pid {}) stderr ----\n{}",
                self.pid,
                self.stderr()
            );
        }
        // kill_on_drop sends SIGKILL; start_kill makes it explicit and immediate.
        let _ = self.child.start_kill();
    }
}

/// The result of `weir check FILE`.
#[derive(Debug)]
pub struct CheckOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything printed to stdout.
    pub stdout: String,
    /// Everything printed to stderr.
    pub stderr: String,
}

/// Runs `weir check` on `manifest` (written to a temp file) and returns what it printed.
pub fn check(manifest: &str) -> CheckOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let out = std::process::Command::new(weir_bin())
        .arg("check")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run weir check");
    CheckOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A manifest v1 with one listener `main` on `127.0.0.1:0`, an admin listener on `127.0.0.1:0`,
/// and one cluster `web` that is the listener's default cluster. One worker unless told otherwise,
/// so that pool and balancing behaviour is deterministic.
#[derive(Clone, Debug)]
pub struct Manifest {
    workers: Option<usize>,
    drain_timeout: Option<String>,
    endpoints: Vec<SocketAddr>,
    protocol: Option<String>,
    lb: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    limits: Vec<(String, String)>,
    pool: Vec<(String, String)>,
}

impl Manifest {
    /// A manifest whose cluster `web` has `endpoints`.
    pub fn new(endpoints: &[SocketAddr]) -> Manifest {
        Manifest {
            workers: Some(1),
            drain_timeout: None,
            endpoints: endpoints.to_vec(),
            protocol: None,
            lb: None,
            connect_timeout: None,
            response_timeout: None,
            limits: Vec::new(),
            pool: Vec::new(),
        }
    }

    /// Sets `workers` (`None` leaves it out: one per core).
    pub fn workers(mut self, n: Option<usize>) -> Manifest {
        self.workers = n;
        self
    }

    /// Sets `drain_timeout`, e.g. `"5s"`.
    pub fn drain_timeout(mut self, d: &str) -> Manifest {
        self.drain_timeout = Some(d.to_string());
        self
    }

    /// Sets the cluster's `protocol` (`http1` | `http2`).
    pub fn protocol(mut self, p: &str) -> Manifest {
        self.protocol = Some(p.to_string());
        self
    }

    /// Sets the cluster's `lb` (`round_robin` | `least_request`).
    pub fn lb(mut self, lb: &str) -> Manifest {
        self.lb = Some(lb.to_string());
        self
    }

    /// Sets `timeouts.connect`.
    pub fn connect_timeout(mut self, d: &str) -> Manifest {
        self.connect_timeout = Some(d.to_string());
        self
    }

    /// Sets `timeouts.response`.
    pub fn response_timeout(mut self, d: &str) -> Manifest {
        self.response_timeout = Some(d.to_string());
        self
    }

    /// Sets one listener limit, e.g. `("header_read_timeout", "500ms")`.
    pub fn limit(mut self, key: &str, value: &str) -> Manifest {
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets one cluster pool setting, e.g. `("max_idle", "8")`.
    pub fn pool(mut self, key: &str, value: &str) -> Manifest {
        self.pool.push((key.to_string(), value.to_string()));
        self
    }

    /// Renders the manifest as YAML.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        if let Some(w) = self.workers {
            writeln!(y, "workers: {w}").unwrap();
        }
        if let Some(d) = &self.drain_timeout {
            writeln!(y, "drain_timeout: {d}").unwrap();
        }
        y.push_str("admin: { address: 127.0.0.1:0 }\n");
        y.push_str(
            "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    default_cluster: web\n",
        );
        if !self.limits.is_empty() {
            y.push_str("    limits:\n");
            for (k, v) in &self.limits {
                writeln!(y, "      {k}: {v}").unwrap();
            }
        }
        y.push_str("clusters:\n  web:\n");
        let eps: Vec<String> = self.endpoints.iter().map(|a| a.to_string()).collect();
        writeln!(y, "    endpoints: [{}]", eps.join(", ")).unwrap();
        if let Some(p) = &self.protocol {
            writeln!(y, "    protocol: {p}").unwrap();
        }
        if let Some(lb) = &self.lb {
            writeln!(y, "    lb: {lb}").unwrap();
        }
        let mut t = Vec::new();
        if let Some(c) = &self.connect_timeout {
            t.push(format!("connect: {c}"));
        }
        if let Some(r) = &self.response_timeout {
            t.push(format!("response: {r}"));
        }
        if !t.is_empty() {
            writeln!(y, "    timeouts: {{ {} }}", t.join(", ")).unwrap();
        }
        if !self.pool.is_empty() {
            let p: Vec<String> = self.pool.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            writeln!(y, "    pool: {{ {} }}", p.join(", ")).unwrap();
        }
        y
    }

    /// Starts weir with this manifest.
    pub async fn start(&self) -> Weir {
        Weir::start(&self.yaml()).await
    }
}
