//! The admin endpoint (loopback by default; on the control thread, never on a worker).
//!
//! Reads: `GET /ready` (200 serving, 503 draining), `/healthz`, `/metrics` (Prometheus text),
//! `/config_dump` (the running validated config as JSON), `/clusters` (live endpoint health,
//! ejections, priority loads, breakers, retries: `upstream/report.rs`), `/filters`, `/certs`
//! (every certificate and trust anchor in use, with expiry, and each TLS context's rotations),
//! `/logging` (the log filter in force).
//!
//! Mutations (POST/PUT only, each through [`Control`]'s transaction; `?dry_run=true` validates,
//! compiles and canaries without publishing):
//! `POST /reload`, `PUT /filters/NAME` (body `application/wasm`: new module bytes; or JSON
//! `{"module": "builtin:X" | "sha256:HEX", "config": …, "vm_config": …, "failure_policy": …}`),
//! `PUT /chains/NAME` (JSON `["f1", "f2"]`), `POST /rollback`; and, outside the transaction,
//! `POST /logging?level=LEVEL` or `?filter=DIRECTIVES` (the proxy's own log filter, as Envoy's
//! `/logging`).
//!
//! A mutation must carry `Authorization: Bearer TOKEN` matching `admin.token_file` (compared in
//! constant time; without a token file mutations are off), a `Host` naming this endpoint, and no
//! foreign `Origin` (a browser page cannot drive it). Bodies are bounded; every mutation writes
//! one audit line (target `weir::audit`: what, digest, result).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::AdminConfig;
use crate::control::{Applied, Control, ControlError, FilterChange, FilterPatch};

/// Largest JSON body of a mutation.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest module upload.
pub const MAX_MODULE_BODY: usize = 32 << 20;

/// State the admin endpoint reports.
#[derive(Default)]
pub struct AdminState {
    pub draining: AtomicBool,
    /// Certificates in use (`/certs`, expiry metrics).
    pub tls: Arc<crate::tls::TlsContexts>,
    /// The core's metrics (`/metrics`).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Each cluster's live state (indexed like the config's clusters, which a reload never
    /// changes): `/clusters` and the `weir_cluster_*` metrics.
    pub clusters: Vec<Arc<crate::upstream::ClusterShared>>,
}

struct Admin {
    state: Arc<AdminState>,
    control: Arc<Control>,
    config: AdminConfig,
    /// The address the endpoint is bound to (`Host` must name it, or localhost with its port).
    local: SocketAddr,
}

type Resp = Response<Full<Bytes>>;

/// Serves the admin endpoint on `listener` until the process exits.
pub fn start(
    listener: TcpListener,
    state: Arc<AdminState>,
    control: Arc<Control>,
    config: AdminConfig,
) {
    let local = listener.local_addr().unwrap_or(config.address);
    let admin = Arc::new(Admin {
        state,
        control,
        config,
        local,
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_resp(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Resp {
    json_resp(status, &json!({ "error": message.to_string() }))
}

/// The routes: what a path is, and which methods it takes.
enum Route<'a> {
    Read(&'a str),
    /// `GET` reads the log filter, `POST` sets it.
    Logging,
    Reload,
    Rollback,
    Filter(&'a str),
    Chain(&'a str),
}

impl Route<'_> {
    fn allowed(&self) -> &'static str {
        match self {
            Route::Read(_) => "GET, HEAD",
            Route::Logging => "GET, HEAD, POST",
            Route::Reload | Route::Rollback => "POST",
            Route::Filter(_) | Route::Chain(_) => "PUT",
        }
    }
}

/// A filter or chain name in a path: the manifest's name rules, so `..`, `/`, `%2e` and the
/// like never get further.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.contains("..")
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        let route = match path.as_str() {
            "/ready" | "/healthz" | "/metrics" | "/config_dump" | "/clusters" | "/filters"
            | "/certs" => Route::Read(path.as_str()),
            "/reload" => Route::Reload,
            "/rollback" => Route::Rollback,
            "/logging" => Route::Logging,
            p => {
                let (kind, name) = match (p.strip_prefix("/filters/"), p.strip_prefix("/chains/")) {
                    (Some(n), _) => (0, n),
                    (_, Some(n)) => (1, n),
                    _ => return error(StatusCode::NOT_FOUND, "not found"),
                };
                if !valid_name(name) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid name {name:?}: letters, digits, `-`, `_`, `.` only"),
                    );
                }
                if kind == 0 {
                    Route::Filter(name)
                } else {
                    Route::Chain(name)
                }
            }
        };
        let method_ok = match &route {
            Route::Read(_) => matches!(*req.method(), Method::GET | Method::HEAD),
            Route::Logging => matches!(*req.method(), Method::GET | Method::HEAD | Method::POST),
            Route::Reload | Route::Rollback => req.method() == Method::POST,
            Route::Filter(_) | Route::Chain(_) => req.method() == Method::PUT,
        };
        if !method_ok {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(route.allowed()));
            return r;
        }
        match route {
            Route::Read(p) => self.read(p),
            Route::Logging if req.method() != Method::POST => logging_read(),
            Route::Logging => {
                if let Err(r) = self.authorize(&req) {
                    return *r;
                }
                logging_set(req.uri().query().unwrap_or(""))
            }
            mutation => {
                if let Err(r) = self.authorize(&req) {
                    return *r;
                }
                let dry_run = req.uri().query().is_some_and(|q| {
                    q.split('&')
                        .any(|kv| kv == "dry_run=true" || kv == "dry_run=1")
                });
                self.mutate(mutation, req, dry_run).await
            }
        }
    }

    /// Token, `Host` and `Origin` checks for a mutation.
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), Box<Resp>> {
        let host_ok = |h: &str| {
            let port = self.local.port();
            h == self.local.to_string()
                || h == format!("localhost:{port}")
                || h == format!("127.0.0.1:{port}")
                || h == format!("[::1]:{port}")
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(host_ok) {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "foreign Host: admin mutations must be addressed to the admin endpoint itself",
            )));
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(host_ok);
            if !ok {
                return Err(Box::new(error(
                    StatusCode::FORBIDDEN,
                    "foreign Origin: admin mutations are not for web pages",
                )));
            }
        }
        let Some(file) = &self.config.token_file else {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "admin mutations are off: set admin.token_file in the manifest",
            )));
        };
        let expected = match std::fs::read_to_string(file) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot read the admin token file");
                return Err(Box::new(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot read the admin token file",
                )));
            }
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g)
                if !expected.is_empty() && constant_time_eq(g.as_bytes(), expected.as_bytes()) =>
            {
                Ok(())
            }
            _ => {
                let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(Box::new(r))
            }
        }
    }

    async fn mutate(&self, route: Route<'_>, req: Request<Incoming>, dry_run: bool) -> Resp {
        let is_wasm = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/wasm"));
        let limit = if is_wasm {
            MAX_MODULE_BODY
        } else {
            MAX_JSON_BODY
        };
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over the limit of {limit} bytes"),
                );
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
        };
        let (action, target, result) = match route {
            Route::Reload => ("reload", String::new(), self.control.reload(dry_run).await),
            Route::Rollback => ("rollback", String::new(), self.control.rollback().await),
            Route::Filter(name) => {
                let change = if is_wasm {
                    FilterChange::Module(body.to_vec())
                } else {
                    match serde_json::from_slice::<FilterPatch>(&body) {
                        Ok(p) => FilterChange::Patch(p),
                        Err(e) => {
                            return error(StatusCode::BAD_REQUEST, format!("filter change: {e}"));
                        }
                    }
                };
                (
                    "put_filter",
                    name.to_owned(),
                    self.control.put_filter(name, change, dry_run).await,
                )
            }
            Route::Chain(name) => {
                let filters = match serde_json::from_slice::<ChainBody>(&body) {
                    Ok(ChainBody::List(f)) | Ok(ChainBody::Object { filters: f }) => f,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("chain: expected [\"filter\", …]: {e}"),
                        );
                    }
                };
                (
                    "put_chain",
                    name.to_owned(),
                    self.control.put_chain(name, filters, dry_run).await,
                )
            }
            Route::Read(_) | Route::Logging => unreachable!("not a transaction"),
        };
        audit(action, &target, dry_run, &result);
        match result {
            Ok(a) => json_resp(StatusCode::OK, &applied_json(&a)),
            Err(e) => {
                let status = match &e {
                    ControlError::Busy => StatusCode::CONFLICT,
                    ControlError::NoHistory | ControlError::NoManifest => StatusCode::CONFLICT,
                    ControlError::Timeout(_) | ControlError::Internal(_) => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                let mut body = json!({ "error": error_text(&e) });
                if let ControlError::Config(c) = &e {
                    body["errors"] = c.errors.iter().map(|f| json!(f.to_string())).collect();
                }
                json_resp(status, &body)
            }
        }
    }

    fn read(&self, path: &str) -> Resp {
        match path {
            "/ready" => {
                if self.state.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/config_dump" => {
                let p = self.control.current();
                let mut v = serde_json::to_value(&*p.config).unwrap_or_default();
                // The token file's path is not secret, but nothing read from it is ever shown.
                v["generation"] = json!(p.id);
                json_resp(StatusCode::OK, &v)
            }
            "/filters" => json_resp(StatusCode::OK, &self.filters_json()),
            "/certs" => json_resp(StatusCode::OK, &self.state.tls.certs_json()),
            "/clusters" => {
                let p = self.control.current();
                json_resp(
                    StatusCode::OK,
                    &crate::upstream::report::clusters_json(
                        &p.config.clusters,
                        &self.state.clusters,
                    ),
                )
            }
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn filters_json(&self) -> serde_json::Value {
        let p = self.control.current();
        let Some(set) = &p.filters else {
            return json!({ "generation": p.id, "filters": [] });
        };
        let filters: Vec<_> = set
            .filters
            .iter()
            .zip(&p.config.filters)
            .map(|(f, c)| {
                let s = f.plugin.stats.snapshot();
                json!({
                    "name": f.name,
                    "module": c.module,
                    "sha256": f.module.sha256_hex(),
                    "failure_policy": c.failure_policy,
                    "generation": p.id,
                    "callbacks": s.callbacks,
                    "callback_nanos": s.callback_nanos,
                    "traps": s.traps,
                    "deadline_hits": s.deadline_hits,
                    "memory_limit_hits": s.memory_limit_hits,
                    "memory_bytes": s.memory_bytes,
                    "vm_rebuilds": s.vm_rebuilds,
                    "state": if s.traps > 0 { "trapped" } else { "serving" },
                })
            })
            .collect();
        json!({ "generation": p.id, "filters": filters })
    }

    fn metrics(&self) -> String {
        let p = self.control.current();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP weir_generation The generation of filters and chains serving now.\n# TYPE weir_generation gauge\nweir_generation {}",
            p.id
        );
        let _ = writeln!(
            out,
            "# HELP weir_config_changes_total Admin and watch changes, by result.\n# TYPE weir_config_changes_total counter\nweir_config_changes_total{{result=\"published\"}} {}\nweir_config_changes_total{{result=\"refused\"}} {}",
            self.control.reloads_ok.load(Ordering::Relaxed),
            self.control.reloads_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_manifest_watch_checks_total Times --watch looked at the manifest file.\n# TYPE weir_manifest_watch_checks_total counter\nweir_manifest_watch_checks_total {}",
            self.control.watch_checks.load(Ordering::Relaxed)
        );
        if let Some(set) = &p.filters {
            let series: [Series; 5] = [
                (
                    "weir_filter_callbacks_total",
                    "counter",
                    "Guest callbacks run.",
                    |s| s.callbacks,
                ),
                (
                    "weir_filter_traps_total",
                    "counter",
                    "VM failures (traps, deadlines, memory).",
                    |s| s.traps,
                ),
                (
                    "weir_filter_deadline_hits_total",
                    "counter",
                    "Callbacks stopped at their CPU deadline.",
                    |s| s.deadline_hits,
                ),
                (
                    "weir_filter_vm_rebuilds_total",
                    "counter",
                    "VMs rebuilt by the reload policy.",
                    |s| s.vm_rebuilds,
                ),
                (
                    "weir_filter_memory_bytes",
                    "gauge",
                    "Linear memory of the filter's most recently measured VM.",
                    |s| s.memory_bytes,
                ),
            ];
            for (name, kind, help, get) in series {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for f in &set.filters {
                    let _ = writeln!(
                        out,
                        "{name}{{filter=\"{}\",sha256=\"{}\"}} {}",
                        f.name,
                        f.module.sha256_hex(),
                        get(&f.plugin.stats.snapshot())
                    );
                }
            }
            callback_histograms(&set.filters, &mut out);
            guest_metrics(&set.runtime, &mut out);
        }
        self.state.tls.metrics(&mut out);
        if let Some(t) = &self.state.telemetry {
            t.render(&mut out);
        }
        crate::upstream::report::prometheus(&self.state.clusters, &mut out);
        out
    }
}

/// `GET /logging`: the filter in force.
fn logging_read() -> Resp {
    match crate::telemetry::logs::current() {
        Some(f) => json_resp(StatusCode::OK, &json!({ "filter": f })),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "logging was not set up with a reloadable filter",
        ),
    }
}

/// `POST /logging?level=debug` (every target) or `?filter=info,weir::audit=debug`.
fn logging_set(query: &str) -> Resp {
    use crate::telemetry::logs::{self, LogError};
    let mut level = None;
    let mut filter = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("level", v)) => level = Some(v.to_owned()),
            Some(("filter", v)) => filter = Some(percent_decode(v)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter `{kv}`: use ?level=LEVEL or ?filter=DIRECTIVES"),
                );
            }
        }
    }
    let result = match (level, filter) {
        (Some(l), None) => logs::set_level(&l),
        (None, Some(f)) => logs::set_filter(&f),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give one of ?level=LEVEL (trace, debug, info, warn, error, critical, off) or \
                 ?filter=DIRECTIVES",
            );
        }
    };
    match result {
        Ok(now) => {
            tracing::info!(target: "weir::audit", action = "logging", filter = %now, result = "published", "admin change");
            json_resp(StatusCode::OK, &json!({ "filter": now }))
        }
        Err(e @ (LogError::Level(_) | LogError::Filter(..))) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `%XX` escapes of a query value (`,` and `=` arrive escaped from some clients).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Per filter and phase: how long guest callbacks take (estimated from the timed sample of
/// callbacks; see `FilterStats::phases`).
fn callback_histograms(filters: &[crate::filter::LoadedFilter], out: &mut String) {
    use crate::telemetry::metrics::{label, write_histogram};
    use weir_host_abi::{CALLBACK_BUCKETS_NS, Phase};
    const LE: [&str; 17] = [
        "0.000001",
        "0.0000025",
        "0.000005",
        "0.00001",
        "0.000025",
        "0.00005",
        "0.0001",
        "0.00025",
        "0.0005",
        "0.001",
        "0.0025",
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "1",
    ];
    debug_assert_eq!(LE.len(), CALLBACK_BUCKETS_NS.len());
    let name = "weir_filter_callback_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Guest callback time by phase (one callback in 16 is timed and stands for 16).\n# TYPE {name} histogram"
    );
    for f in filters {
        let stats = &f.plugin.stats;
        for phase in Phase::ALL {
            let h = &stats.phases[phase as usize];
            let labels = format!("filter=\"{}\",phase=\"{}\"", label(&f.name), phase.name());
            write_histogram(out, name, &labels, &LE, |i| {
                if i <= CALLBACK_BUCKETS_NS.len() {
                    h.buckets[i].load(Ordering::Relaxed)
                } else {
                    h.sum_nanos.load(Ordering::Relaxed)
                }
            });
        }
    }
}

/// The metrics filters define themselves (`proxy_define_metric`), one series per filter and
/// metric name, summed over every worker's VM: counters and gauges as `weir_filter_metric`,
/// histograms as `weir_filter_metric_count` / `_sum`. Each is a family of its own, written as one
/// group (the text format wants a family's samples together, and an untyped family does not own
/// `_count` / `_sum` suffixes).
fn guest_metrics(runtime: &weir_host_abi::Runtime, out: &mut String) {
    use weir_host_abi::MetricValue;
    let samples = runtime.metrics().snapshot();
    if samples.is_empty() {
        return;
    }
    let label = |s: &str| crate::telemetry::metrics::label(s);
    let labelled: Vec<(String, &MetricValue)> = samples
        .iter()
        .map(|m| (metric_labels(&m.plugin, &m.name, label), &m.value))
        .collect();
    let scalars: Vec<_> = labelled
        .iter()
        .filter_map(|(l, v)| match v {
            MetricValue::Counter(v) => Some((l, v.to_string())),
            MetricValue::Gauge(v) => Some((l, v.to_string())),
            MetricValue::Histogram { .. } => None,
        })
        .collect();
    if !scalars.is_empty() {
        out.push_str("# HELP weir_filter_metric Counters and gauges the filters define.\n# TYPE weir_filter_metric untyped\n");
        for (l, v) in scalars {
            let _ = writeln!(out, "weir_filter_metric{{{l}}} {v}");
        }
    }
    let histograms: Vec<_> = labelled
        .iter()
        .filter_map(|(l, v)| match v {
            MetricValue::Histogram { count, sum } => Some((l, *count, *sum)),
            _ => None,
        })
        .collect();
    if !histograms.is_empty() {
        out.push_str("# HELP weir_filter_metric_count Observations of the histograms the filters define.\n# TYPE weir_filter_metric_count counter\n");
        for (l, count, _) in &histograms {
            let _ = writeln!(out, "weir_filter_metric_count{{{l}}} {count}");
        }
        out.push_str("# HELP weir_filter_metric_sum Sum of the observations of the histograms the filters define.\n# TYPE weir_filter_metric_sum counter\n");
        for (l, _, sum) in &histograms {
            let _ = writeln!(out, "weir_filter_metric_sum{{{l}}} {sum}");
        }
    }
}

/// `filter="…",name="…"`, plus one label per `|key=value` suffix of the metric name (the way
/// filters such as `builtin:telemetry` encode dimensions in proxy-wasm's flat metric names).
/// A key that is not a Prometheus label name, or would shadow `filter`/`name`, stays in the name.
fn metric_labels(plugin: &str, name: &str, label: impl Fn(&str) -> String) -> String {
    let valid = |k: &str| {
        !k.is_empty()
            && k != "filter"
            && k != "name"
            && k.bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
    };
    let mut parts = name.split('|');
    let base = parts.next().unwrap_or_default();
    let mut extra = String::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut all_ok = true;
    for p in parts {
        match p.split_once('=') {
            Some((k, v)) if valid(k) && !seen.contains(&k) => {
                seen.push(k);
                let _ = write!(extra, ",{k}=\"{}\"", label(v));
            }
            _ => all_ok = false,
        }
    }
    if all_ok {
        format!(
            "filter=\"{}\",name=\"{}\"{extra}",
            label(plugin),
            label(base)
        )
    } else {
        format!("filter=\"{}\",name=\"{}\"", label(plugin), label(name))
    }
}

/// A per-filter metric: name, type, help, and how to read it from a snapshot.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&weir_host_abi::StatsSnapshot) -> u64,
);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ChainBody {
    List(Vec<String>),
    Object { filters: Vec<String> },
}

fn applied_json(a: &Applied) -> serde_json::Value {
    json!({
        "result": if a.dry_run { "valid" } else { "published" },
        "generation": a.generation,
        "dry_run": a.dry_run,
        "modules": a.modules.iter().map(|(n, d)| json!({"filter": n, "sha256": d})).collect::<Vec<_>>(),
        "micros": a.micros,
    })
}

fn error_text(e: &ControlError) -> String {
    match e {
        // Every field error, not just the count.
        ControlError::Config(c) => c
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        ControlError::Filter(f) => {
            let mut s = f.to_string();
            let mut src = std::error::Error::source(f);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    let _ = write!(s, ": {t}");
                }
                src = inner.source();
            }
            s
        }
        other => other.to_string(),
    }
}

fn audit(action: &str, target: &str, dry_run: bool, result: &Result<Applied, ControlError>) {
    match result {
        Ok(a) => {
            let digests = a
                .modules
                .iter()
                .filter(|(n, _)| target.is_empty() || n == target)
                .map(|(n, d)| format!("{n}={d}"))
                .collect::<Vec<_>>()
                .join(",");
            tracing::info!(target: "weir::audit", action, name = target, dry_run, generation = a.generation, modules = %digests, micros = a.micros, result = if dry_run { "valid" } else { "published" }, "admin change");
        }
        Err(e) => {
            tracing::warn!(target: "weir::audit", action, name = target, dry_run, result = "refused", error = %error_text(e), "admin change");
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_metric_names_become_labels() {
        let l = |s: &str| s.to_owned();
        assert_eq!(
            metric_labels("t", "telemetry.requests_total|cluster=web|class=2xx", l),
            r#"filter="t",name="telemetry.requests_total",cluster="web",class="2xx""#
        );
        assert_eq!(
            metric_labels("f", "fault.aborts", l),
            r#"filter="f",name="fault.aborts""#
        );
        // Not label-shaped (bad key, a shadowing key, a repeat, no `=`): the name stays whole.
        for odd in ["a|1x=2", "a|name=b", "a|k=1|k=2", "a|plain"] {
            assert_eq!(
                metric_labels("f", odd, l),
                format!(r#"filter="f",name="{odd}""#)
            );
        }
    }

    #[test]
    fn names_refuse_traversal_and_separators() {
        for bad in [
            "", "..", "a/../b", "a/b", "%2e%2e", ".hidden", "a..b", "a b", "a%2fb",
        ] {
            assert!(!valid_name(bad), "{bad:?} must be refused");
        }
        for good in ["auth", "add-header", "v1.2_x"] {
            assert!(valid_name(good), "{good:?} must be accepted");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
