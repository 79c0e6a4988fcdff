//! The changes: `POST /reload`, `POST /rollback`, `PUT /filters/NAME`, `PUT /chains/NAME` and
//! `PUT /clusters/NAME/endpoints`, each one transaction of [`Control`](crate::control::Control) with one audit line; and
//! `POST /logging`, outside the transaction. A body is read only up to its bound.

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{Admin, Resp, Route, control_error, error, error_text, json_resp};
use crate::control::{Applied, ControlError, FilterChange, FilterPatch};

/// Largest JSON body of a mutation.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest module upload.
pub const MAX_MODULE_BODY: usize = 32 << 20;

impl Admin {
    pub(super) async fn mutate(
        &self,
        route: Route<'_>,
        req: Request<Incoming>,
        dry_run: bool,
    ) -> Resp {
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
            Route::Endpoints(name) => {
                let eps = match serde_json::from_slice::<EndpointsBody>(&body) {
                    Ok(b) => b.endpoints.into_iter().map(EndpointBody::into_config),
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "endpoints: expected {{\"endpoints\": [{{\"address\": \"IP:PORT\", …}}]}}: {e}"
                            ),
                        );
                    }
                };
                (
                    "set_endpoints",
                    name.to_owned(),
                    self.control
                        .set_endpoints(name, eps.collect(), dry_run)
                        .await,
                )
            }
            Route::Read(_) | Route::Logging => unreachable!("not a transaction"),
        };
        audit(action, &target, dry_run, &result);
        match result {
            Ok(a) => json_resp(StatusCode::OK, &applied_json(&a)),
            Err(e) => control_error(&e),
        }
    }
}

/// The body of `PUT /clusters/NAME/endpoints`: the shape of Envoy's `ClusterLoadAssignment`,
/// flattened (one priority per endpoint rather than a list per priority).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsBody {
    endpoints: Vec<EndpointBody>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    /// `IP:PORT` (a name is resolved by DNS discovery, never here).
    address: std::net::SocketAddr,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u32,
    zone: Option<String>,
    #[serde(default)]
    health: crate::config::EndpointHealth,
}

fn one() -> u32 {
    1
}

impl EndpointBody {
    fn into_config(self) -> crate::config::EndpointConfig {
        crate::config::EndpointConfig {
            address: self.address,
            weight: self.weight,
            priority: self.priority,
            zone: self.zone,
            health: self.health,
        }
    }
}

/// `POST /logging?level=debug` (every target) or `?filter=info,weir::audit=debug`.
pub(super) fn logging_set(query: &str) -> Resp {
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
        "prepare_micros": a.prepare_micros,
    })
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
