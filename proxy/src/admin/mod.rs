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
//!
//! This file serves the endpoint, routes each request, and is the one place failures become
//! answers (`error`, `control_error`); `reads.rs` holds the GET endpoints, `mutations.rs` the
//! changes (each through the transaction, plus `/logging`), `auth.rs` who may make them.

mod auth;
mod mutations;
mod reads;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::AdminConfig;
use crate::control::{Control, ControlError};

pub use mutations::{MAX_JSON_BODY, MAX_MODULE_BODY};

/// State the admin endpoint reports.
#[derive(Default)]
pub struct AdminState {
    pub draining: AtomicBool,
    /// Certificates in use (`/certs`, expiry metrics).
    pub tls: Arc<crate::tls::TlsContexts>,
    /// The core's metrics (`/metrics`).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// The xDS client, when weir follows a control plane (`/ready`, `/config_dump`, `/metrics`).
    pub xds: Option<Arc<crate::xds::XdsStatus>>,
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
    /// `PUT /clusters/NAME/endpoints`.
    Endpoints(&'a str),
}

impl Route<'_> {
    fn allowed(&self) -> &'static str {
        match self {
            Route::Read(_) => "GET, HEAD",
            Route::Logging => "GET, HEAD, POST",
            Route::Reload | Route::Rollback => "POST",
            Route::Filter(_) | Route::Chain(_) | Route::Endpoints(_) => "PUT",
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
            | "/listeners" | "/certs" => Route::Read(path.as_str()),
            "/reload" => Route::Reload,
            "/rollback" => Route::Rollback,
            "/logging" => Route::Logging,
            p => {
                let endpoints = p
                    .strip_prefix("/clusters/")
                    .and_then(|r| r.strip_suffix("/endpoints"));
                let (kind, name) = match (
                    p.strip_prefix("/filters/"),
                    p.strip_prefix("/chains/"),
                    endpoints,
                ) {
                    (Some(n), _, _) => (0, n),
                    (_, Some(n), _) => (1, n),
                    (_, _, Some(n)) => (2, n),
                    _ => return error(StatusCode::NOT_FOUND, "not found"),
                };
                if !valid_name(name) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid name {name:?}: letters, digits, `-`, `_`, `.` only"),
                    );
                }
                match kind {
                    0 => Route::Filter(name),
                    1 => Route::Chain(name),
                    _ => Route::Endpoints(name),
                }
            }
        };
        let method_ok = match &route {
            Route::Read(_) => matches!(*req.method(), Method::GET | Method::HEAD),
            Route::Logging => matches!(*req.method(), Method::GET | Method::HEAD | Method::POST),
            Route::Reload | Route::Rollback => req.method() == Method::POST,
            Route::Filter(_) | Route::Chain(_) | Route::Endpoints(_) => req.method() == Method::PUT,
        };
        if !method_ok {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(route.allowed()));
            return r;
        }
        match route {
            Route::Read(p) => self.read(p),
            Route::Logging if req.method() != Method::POST => reads::logging_read(),
            Route::Logging => {
                if let Err(r) = self.authorize(&req) {
                    return *r;
                }
                mutations::logging_set(req.uri().query().unwrap_or(""))
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
}

/// A transaction that failed, as an answer: 409 when it cannot run now (another change in
/// progress, nothing to roll back to, no manifest file), 500 when weir itself failed, 422 when
/// the change is wrong (every problem listed).
fn control_error(e: &ControlError) -> Resp {
    let status = match e {
        ControlError::Busy => StatusCode::CONFLICT,
        ControlError::NoHistory | ControlError::NoManifest => StatusCode::CONFLICT,
        ControlError::UnknownCluster(_) => StatusCode::NOT_FOUND,
        ControlError::Timeout(_) | ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let mut body = json!({ "error": error_text(e) });
    if let ControlError::Config(c) = e {
        body["errors"] = c.errors.iter().map(|f| json!(f.to_string())).collect();
    }
    json_resp(status, &body)
}

/// A refused change as the answer and the audit line say it.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
