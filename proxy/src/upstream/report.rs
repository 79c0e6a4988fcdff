//! What the admin endpoint shows of the clusters' live state: `/clusters` (JSON) and the
//! `weir_cluster_*` series of `/metrics` (Prometheus text). Read on the control thread from the
//! shared state (`shared.rs`), summing the workers' shards. Kept apart from `admin/` so that a
//! general metrics registry can take the series over later.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::shared::{ClusterShared, EjectReason, Resource, TimeoutKind};
use crate::config::ClusterConfig;

/// `/clusters`: each cluster's settings, version and endpoint source, endpoints (health,
/// ejection, load), priority loads, breakers, retries and timeouts.
pub fn clusters_json(states: &[Arc<ClusterShared>]) -> Value {
    let now = crate::timer::now_ms();
    let clusters: Vec<Value> = states
        .iter()
        .map(|s| {
            let c: &ClusterConfig = &s.config;
            let endpoints: Vec<Value> = s
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let ejected = e.ejected.load(Relaxed);
                    json!({
                        "address": e.addr,
                        "priority": e.priority,
                        "weight": e.weight,
                        "zone": e.zone.as_deref(),
                        "health_status": e.health,
                        "available": e.available(),
                        "healthy": e.healthy.load(Relaxed),
                        "ejected": ejected,
                        "ejected_for_ms": if ejected {
                            e.ejected_until.load(Relaxed).saturating_sub(now)
                        } else {
                            0
                        },
                        "ejections": e.ejections_total.load(Relaxed),
                        "consecutive_5xx": e.consecutive_5xx.load(Relaxed),
                        "consecutive_gateway_errors": e.consecutive_gateway.load(Relaxed),
                        "consecutive_connect_failures": e.consecutive_connect.load(Relaxed),
                        "health_check_failures_in_a_row": e.hc_streak_failures.load(Relaxed),
                        "rq_total": s.sum_endpoint(i, |x| &x.rq_total),
                        "rq_error": s.sum_endpoint(i, |x| &x.rq_error),
                        "rq_active": s.sum_endpoint(i, |x| &x.rq_active),
                    })
                })
                .collect();
            let loads = s.priority_loads();
            let priorities: Vec<Value> = s
                .levels
                .iter()
                .zip(&loads)
                .enumerate()
                .map(|(li, (p, l))| {
                    let members = s.endpoints.iter().filter(|e| e.level == li);
                    json!({
                        "priority": p,
                        "load_percent": l.load,
                        "panic": l.panic,
                        "endpoints": members.clone().count(),
                        "available": members.filter(|e| e.available()).count(),
                    })
                })
                .collect();
            let breakers: serde_json::Map<String, Value> = Resource::ALL
                .iter()
                .map(|&r| {
                    let active = s.sum(|w| w.gauge(r));
                    let max = r.limit(&s.limits);
                    (
                        r.name().to_owned(),
                        json!({
                            "active": active,
                            "max": max,
                            "open": active >= max,
                            "overflow": s.sum(|w| &w.overflow[r as usize]),
                        }),
                    )
                })
                .collect();
            let timeouts: serde_json::Map<String, Value> = TimeoutKind::ALL
                .iter()
                .map(|&k| (k.name().to_owned(), json!(s.sum(|w| &w.timeouts[k as usize]))))
                .collect();
            let budget = s.budget.snapshot(now);
            json!({
                "name": c.name,
                "version": s.generation,
                "endpoint_source": s.source,
                "dns": s.dns.as_ref().map(|d| json!({
                    "resolutions": d.resolutions.load(Relaxed),
                    "failures": d.failures.load(Relaxed),
                    "last_resolution_unix_ms": d.last_at_ms.load(Relaxed),
                    "last_ok": d.last_ok.load(Relaxed),
                    "last_error": d.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                })),
                "protocol": c.protocol,
                "lb": c.lb,
                "endpoints": endpoints,
                "priorities": priorities,
                "rq_total": s.sum(|w| &w.rq_total),
                "rq_active": s.sum(|w| &w.rq_active),
                "rq_pending": s.sum(|w| &w.rq_pending),
                "cx_active": s.sum(|w| &w.cx_active),
                "circuit_breakers": breakers,
                "retries": {
                    "policy": c.retries,
                    "sent": s.sum(|w| &w.rq_retry),
                    "succeeded": s.sum(|w| &w.rq_retry_success),
                    "active": s.sum(|w| &w.retries_active),
                    "overflow_budget": s.sum(|w| &w.retry_overflow_budget),
                    "overflow_circuit_breaker": s.sum(|w| &w.overflow[Resource::Retries as usize]),
                    "budget": {
                        "requests": budget.requests,
                        "retries": budget.retries,
                        "available": budget.available,
                    },
                },
                "timeouts": timeouts,
                "outlier": c.outlier.map(|o| json!({
                    "settings": o,
                    "ejected": s.ejected.load(Relaxed),
                    "ejections": EjectReason::ALL
                        .iter()
                        .map(|&r| (r.name().to_owned(), json!(s.ejections[r as usize].load(Relaxed))))
                        .collect::<serde_json::Map<_, _>>(),
                })),
                "health_check": c.health_check.as_ref().map(|h| json!({
                    "settings": h,
                    "passes": s.hc_success.load(Relaxed),
                    "failures": s.hc_failure.load(Relaxed),
                })),
            })
        })
        .collect();
    json!({ "clusters": clusters })
}

/// Appends the `weir_cluster_*` series to a Prometheus text exposition.
pub fn prometheus(states: &[Arc<ClusterShared>], out: &mut String) {
    let cluster = |out: &mut String,
                   name: &str,
                   kind: &str,
                   help: &str,
                   f: &dyn Fn(&ClusterShared) -> u64| {
        head(out, name, kind, help);
        for s in states {
            let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {}", s.name, f(s));
        }
    };
    let labelled = |out: &mut String,
                    name: &str,
                    kind: &str,
                    help: &str,
                    label: &str,
                    values: &dyn Fn(&ClusterShared) -> Vec<(String, u64)>| {
        head(out, name, kind, help);
        for s in states {
            for (v, n) in values(s) {
                let _ = writeln!(out, "{name}{{cluster=\"{}\",{label}=\"{v}\"}} {n}", s.name);
            }
        }
    };
    let endpoint = |out: &mut String,
                    name: &str,
                    kind: &str,
                    help: &str,
                    f: &dyn Fn(&ClusterShared, usize) -> u64| {
        head(out, name, kind, help);
        for s in states {
            for (i, e) in s.endpoints.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",endpoint=\"{}\",priority=\"{}\"}} {}",
                    s.name,
                    e.addr,
                    e.priority,
                    f(s, i)
                );
            }
        }
    };
    if states.is_empty() {
        return;
    }
    cluster(
        out,
        "weir_cluster_upstream_rq_total",
        "counter",
        "Upstream requests sent (every attempt, retries included).",
        &|s| s.sum(|w| &w.rq_total),
    );
    cluster(
        out,
        "weir_cluster_upstream_rq_active",
        "gauge",
        "Upstream requests in flight (until their response body ends).",
        &|s| s.sum(|w| &w.rq_active),
    );
    cluster(
        out,
        "weir_cluster_upstream_rq_pending_active",
        "gauge",
        "Upstream requests waiting for a new connection.",
        &|s| s.sum(|w| &w.rq_pending),
    );
    cluster(
        out,
        "weir_cluster_upstream_cx_active",
        "gauge",
        "Upstream connections open.",
        &|s| s.sum(|w| &w.cx_active),
    );
    cluster(
        out,
        "weir_cluster_upstream_rq_retry_total",
        "counter",
        "Retries sent.",
        &|s| s.sum(|w| &w.rq_retry),
    );
    cluster(
        out,
        "weir_cluster_upstream_rq_retry_success_total",
        "counter",
        "Retries that brought the final, non-retriable answer.",
        &|s| s.sum(|w| &w.rq_retry_success),
    );
    labelled(
        out,
        "weir_cluster_upstream_rq_retry_overflow_total",
        "counter",
        "Retries not made: the retry budget was spent, or max_retries was reached.",
        "reason",
        &|s| {
            vec![
                ("budget".into(), s.sum(|w| &w.retry_overflow_budget)),
                (
                    "circuit_breaker".into(),
                    s.sum(|w| &w.overflow[Resource::Retries as usize]),
                ),
            ]
        },
    );
    cluster(
        out,
        "weir_cluster_retry_budget_available",
        "gauge",
        "Retries the budget allows now.",
        &|s| s.budget.snapshot(crate::timer::now_ms()).available,
    );
    labelled(
        out,
        "weir_cluster_upstream_rq_timeout_total",
        "counter",
        "Timeouts, by kind (connect, response, per_try, request, idle).",
        "kind",
        &|s| {
            TimeoutKind::ALL
                .iter()
                .map(|&k| (k.name().into(), s.sum(|w| &w.timeouts[k as usize])))
                .collect()
        },
    );
    labelled(
        out,
        "weir_cluster_upstream_overflow_total",
        "counter",
        "Refused by a circuit breaker, by resource.",
        "resource",
        &|s| {
            Resource::ALL
                .iter()
                .map(|&r| (r.name().into(), s.sum(|w| &w.overflow[r as usize])))
                .collect()
        },
    );
    labelled(
        out,
        "weir_cluster_circuit_breaker_open",
        "gauge",
        "1 while a resource is at its circuit-breaker limit.",
        "resource",
        &|s| {
            Resource::ALL
                .iter()
                .map(|&r| {
                    let open = s.sum(|w| w.gauge(r)) >= r.limit(&s.limits);
                    (r.name().into(), u64::from(open))
                })
                .collect()
        },
    );
    labelled(
        out,
        "weir_cluster_outlier_ejections_total",
        "counter",
        "Endpoints ejected by outlier detection, by reason.",
        "reason",
        &|s| {
            EjectReason::ALL
                .iter()
                .map(|&r| (r.name().into(), s.ejections[r as usize].load(Relaxed)))
                .collect()
        },
    );
    cluster(
        out,
        "weir_cluster_outlier_ejections_active",
        "gauge",
        "Endpoints ejected right now.",
        &|s| u64::from(s.ejected.load(Relaxed)),
    );
    labelled(
        out,
        "weir_cluster_health_check_total",
        "counter",
        "Active health-check probes, by result.",
        "result",
        &|s| {
            vec![
                ("success".into(), s.hc_success.load(Relaxed)),
                ("failure".into(), s.hc_failure.load(Relaxed)),
            ]
        },
    );
    labelled(
        out,
        "weir_cluster_priority_load_percent",
        "gauge",
        "Share of requests each priority level gets.",
        "priority",
        &|s| {
            s.levels
                .iter()
                .zip(s.priority_loads())
                .map(|(p, l)| (p.to_string(), u64::from(l.load)))
                .collect()
        },
    );
    endpoint(
        out,
        "weir_cluster_endpoint_healthy",
        "gauge",
        "1 while the endpoint may be balanced to (passing health checks, not ejected).",
        &|s, i| u64::from(s.endpoints[i].available()),
    );
    endpoint(
        out,
        "weir_cluster_endpoint_ejected",
        "gauge",
        "1 while outlier detection keeps the endpoint out.",
        &|s, i| u64::from(s.endpoints[i].ejected.load(Relaxed)),
    );
    endpoint(
        out,
        "weir_cluster_endpoint_rq_total",
        "counter",
        "Upstream requests sent to the endpoint.",
        &|s, i| s.sum_endpoint(i, |x| &x.rq_total),
    );
    endpoint(
        out,
        "weir_cluster_endpoint_rq_error_total",
        "counter",
        "5xx answers and local failures from the endpoint.",
        &|s, i| s.sum_endpoint(i, |x| &x.rq_error),
    );
    endpoint(
        out,
        "weir_cluster_endpoint_rq_active",
        "gauge",
        "Upstream requests in flight to the endpoint.",
        &|s, i| s.sum_endpoint(i, |x| &x.rq_active),
    );
    let discovered: Vec<_> = states
        .iter()
        .filter_map(|s| s.dns.as_ref().map(|d| (&s.name, d)))
        .collect();
    if discovered.is_empty() {
        return;
    }
    head(
        out,
        "weir_dns_resolutions_total",
        "counter",
        "DNS resolutions of a discovered cluster's hosts (every refresh).",
    );
    for (name, d) in &discovered {
        let _ = writeln!(
            out,
            "weir_dns_resolutions_total{{cluster=\"{name}\"}} {}",
            d.resolutions.load(Relaxed)
        );
    }
    head(
        out,
        "weir_dns_resolution_failures_total",
        "counter",
        "DNS resolutions that failed (the last good endpoints kept serving).",
    );
    for (name, d) in &discovered {
        let _ = writeln!(
            out,
            "weir_dns_resolution_failures_total{{cluster=\"{name}\"}} {}",
            d.failures.load(Relaxed)
        );
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
