//! The GET endpoints: readiness and liveness, `/config_dump`, `/clusters`, `/filters`, `/certs`,
//! `/metrics` (the core's, each filter's and the guest-defined series) and `GET /logging`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use super::{Admin, Resp, error, json_resp, text};

impl Admin {
    pub(super) fn read(&self, path: &str) -> Resp {
        match path {
            "/ready" => {
                if self.state.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.state.xds.as_ref().is_some_and(|x| !x.ready()) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the first configuration from the control plane\n",
                    )
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
                // The generation that last changed each listener and cluster.
                v["versions"] = json!({
                    "listeners": p
                        .listeners
                        .iter()
                        .map(|l| (l.name.to_string(), json!(l.generation)))
                        .collect::<serde_json::Map<_, _>>(),
                    "clusters": p
                        .clusters
                        .iter()
                        .map(|c| (c.name.clone(), json!(c.generation)))
                        .collect::<serde_json::Map<_, _>>(),
                });
                if let Some(x) = &self.state.xds {
                    let mut dump = x.dump();
                    // Which listeners, clusters, filters and chains the control plane supplied.
                    dump["dynamic"] = json!({
                        "listeners": p.dynamic.listeners.iter().map(|l| &l.name).collect::<Vec<_>>(),
                        "clusters": p.dynamic.clusters.iter().map(|c| &c.name).collect::<Vec<_>>(),
                        "filters": p.dynamic.filters.iter().map(|f| &f.name).collect::<Vec<_>>(),
                        "chains": p.dynamic.chains.iter().map(|c| &c.name).collect::<Vec<_>>(),
                    });
                    v["xds"] = dump;
                }
                json_resp(StatusCode::OK, &v)
            }
            "/filters" => json_resp(StatusCode::OK, &self.filters_json()),
            "/listeners" => {
                let p = self.control.current();
                let listeners: Vec<_> = p
                    .listeners
                    .iter()
                    .map(|l| {
                        json!({
                            "name": &*l.name,
                            "address": l.local,
                            "version": l.generation,
                            "tls": l.tls.is_some(),
                        })
                    })
                    .collect();
                json_resp(StatusCode::OK, &json!({ "listeners": listeners }))
            }
            "/certs" => json_resp(StatusCode::OK, &self.state.tls.certs_json()),
            "/clusters" => {
                let p = self.control.current();
                json_resp(
                    StatusCode::OK,
                    &crate::upstream::report::clusters_json(&p.clusters),
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
                    "vms_since": set.since,
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
        if let Some(x) = &self.state.xds {
            x.metrics(&mut out);
        }
        let lc = &self.control.listener_changes;
        let _ = writeln!(
            out,
            "# HELP weir_listener_changes_total Listeners added, removed and updated by published changes.\n# TYPE weir_listener_changes_total counter\nweir_listener_changes_total{{op=\"add\"}} {}\nweir_listener_changes_total{{op=\"remove\"}} {}\nweir_listener_changes_total{{op=\"update\"}} {}",
            lc[0].load(Ordering::Relaxed),
            lc[1].load(Ordering::Relaxed),
            lc[2].load(Ordering::Relaxed)
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
        let p = self.control.current();
        if let Some(t) = &self.state.telemetry {
            let live: Vec<crate::telemetry::metrics::LiveCluster<'_>> = p
                .clusters
                .iter()
                .map(|c| crate::telemetry::metrics::LiveCluster {
                    name: &c.name,
                    slots: c.metrics,
                    endpoints: c.endpoints.iter().map(|e| (e.addr, e.metrics)).collect(),
                })
                .collect();
            let listeners: Vec<(&str, usize)> =
                p.listeners.iter().map(|l| (&*l.name, l.id)).collect();
            t.render(&mut out, &listeners, &live);
        }
        crate::upstream::report::prometheus(&p.clusters, &mut out);
        self.control.clusters.metrics(&mut out);
        out
    }
}

/// `GET /logging`: the filter in force.
pub(super) fn logging_read() -> Resp {
    match crate::telemetry::logs::current() {
        Some(f) => json_resp(StatusCode::OK, &json!({ "filter": f })),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "logging was not set up with a reloadable filter",
        ),
    }
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
}
