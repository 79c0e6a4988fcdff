//! A cluster's resilience sections: `retries:` (with its budget), `circuit_breaker:`,
//! `outlier:`, `health_check:`, `failover:` and `ewma:`.

use std::time::Duration;

use serde::Serialize;

use super::HealthCheckKind;
use super::check::{Errors, positive};
use super::raw;
use super::units::ser_duration;

// Resilience defaults: Envoy's where Envoy has one (breakers, outlier detection, priorities,
// backoff), Istio's retry count, Linkerd's retry budget and peak-EWMA constants.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_MAX_BODY: u64 = 64 * 1024;
pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_RETRY_BUDGET_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_BREAKER_LIMIT: u32 = 1024;
pub const DEFAULT_OUTLIER_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const DEFAULT_OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_OUTLIER_MAX_EJECTION_PERCENT: u32 = 10;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_UNHEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_HEALTH_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_OVERPROVISIONING_FACTOR: f64 = 1.4;
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
pub const DEFAULT_EWMA_RTT: Duration = Duration::from_millis(30);

/// When and how a request is tried again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub on: RetryOn,
    pub non_idempotent: bool,
    pub max_body: u64,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_max: Duration,
    pub budget: RetryBudgetConfig,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            on: RetryOn::default(),
            non_idempotent: false,
            max_body: DEFAULT_RETRY_MAX_BODY,
            backoff_base: DEFAULT_RETRY_BACKOFF_BASE,
            backoff_max: DEFAULT_RETRY_BACKOFF_MAX,
            budget: RetryBudgetConfig::default(),
        }
    }
}

/// The conditions a retry is made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made (refused, unreachable, timeout, TLS).
    pub connect_failure: bool,
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): it never processed it.
    pub refused_stream: bool,
    /// No response head: the connection was reset or closed, or an attempt timed out.
    pub reset: bool,
    /// Any 5xx answer, and every local failure (Envoy's `5xx`).
    pub server_error: bool,
    /// 502, 503 and 504 answers, and every local failure.
    pub gateway_error: bool,
    /// These exact statuses.
    pub statuses: Vec<u16>,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect_failure: true,
            refused_stream: true,
            reset: true,
            server_error: false,
            gateway_error: false,
            statuses: Vec::new(),
        }
    }
}

impl RetryOn {
    /// The condition names, as the manifest writes them.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            (self.connect_failure, "connect_failure"),
            (self.refused_stream, "refused_stream"),
            (self.reset, "reset"),
            (self.server_error, "5xx"),
            (self.gateway_error, "gateway_error"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| (*n).to_owned())
        .collect();
        v.extend(self.statuses.iter().map(u16::to_string));
        v
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

/// Retries ≤ `percent`% of requests + `min_per_second` × `ttl`, over a sliding `ttl` window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudgetConfig {
    pub percent: f64,
    pub min_per_second: u32,
    #[serde(serialize_with = "ser_duration")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_per_second: DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
            ttl: DEFAULT_RETRY_BUDGET_TTL,
        }
    }
}

/// Cluster-wide limits (summed over workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakerConfig {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_BREAKER_LIMIT,
            max_pending: DEFAULT_BREAKER_LIMIT,
            max_requests: DEFAULT_BREAKER_LIMIT,
            max_retries: DEFAULT_BREAKER_LIMIT,
        }
    }
}

/// Passive outlier detection. A threshold of 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    /// The HTTP probe's path (empty for a TCP check).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub host: Option<String>,
}

/// Priority failover (Envoy's overprovisioning factor and panic threshold).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FailoverConfig {
    pub overprovisioning_factor: f64,
    /// Percent of available endpoints below which a level ignores health (0: never).
    pub panic_threshold: u32,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
        }
    }
}

/// Peak-EWMA latency tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EwmaConfig {
    #[serde(serialize_with = "ser_duration")]
    pub decay: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            decay: DEFAULT_EWMA_DECAY,
            default_rtt: DEFAULT_EWMA_RTT,
        }
    }
}

pub(super) fn retry_policy(r: raw::Retries, p: &str, errs: &mut Errors) -> RetryPolicy {
    let d = RetryPolicy::default();
    let attempts = r.attempts.unwrap_or(d.attempts);
    if attempts > 10 {
        errs.push(format!("{p}.attempts"), "must be at most 10");
    }
    let on = match r.on {
        None => d.on,
        Some(list) => {
            let mut on = RetryOn {
                connect_failure: false,
                refused_stream: false,
                reset: false,
                server_error: false,
                gateway_error: false,
                statuses: Vec::new(),
            };
            if list.is_empty() {
                errs.push(format!("{p}.on"), "must name at least one condition");
            }
            for (i, c) in list.into_iter().enumerate() {
                let code = match c {
                    raw::RetryOn::Status(n) => Some(n),
                    raw::RetryOn::Name(n) => match n.as_str() {
                        "connect_failure" => {
                            on.connect_failure = true;
                            None
                        }
                        "refused_stream" => {
                            on.refused_stream = true;
                            None
                        }
                        "reset" => {
                            on.reset = true;
                            None
                        }
                        "5xx" => {
                            on.server_error = true;
                            None
                        }
                        "gateway_error" => {
                            on.gateway_error = true;
                            None
                        }
                        other => match other.parse::<u16>() {
                            Ok(n) => Some(n),
                            Err(_) => {
                                errs.push(
                                    format!("{p}.on[{i}]"),
                                    format!(
                                        "`{other}`: expected connect_failure, refused_stream, \
                                         reset, 5xx, gateway_error or a status code"
                                    ),
                                );
                                None
                            }
                        },
                    },
                };
                if let Some(n) = code {
                    if (100..=599).contains(&n) {
                        if !on.statuses.contains(&n) {
                            on.statuses.push(n);
                        }
                    } else {
                        errs.push(
                            format!("{p}.on[{i}]"),
                            format!("`{n}` is not an HTTP status (100-599)"),
                        );
                    }
                }
            }
            on
        }
    };
    let max_body = r.max_body.map_or(d.max_body, |s| s.0);
    if max_body > 16 << 20 {
        errs.push(format!("{p}.max_body"), "must be at most 16MiB");
    }
    let b = r.backoff.unwrap_or_default();
    let backoff_base = positive(
        b.base.map(|x| x.0),
        d.backoff_base,
        &format!("{p}.backoff.base"),
        errs,
    );
    let backoff_max = positive(
        b.max.map(|x| x.0),
        d.backoff_max.max(backoff_base),
        &format!("{p}.backoff.max"),
        errs,
    );
    if backoff_max < backoff_base {
        errs.push(
            format!("{p}.backoff.max"),
            "must not be shorter than `backoff.base`",
        );
    }
    let bu = r.budget.unwrap_or_default();
    let percent = bu.percent.unwrap_or(d.budget.percent);
    if !(0.0..=100.0).contains(&percent) {
        errs.push(format!("{p}.budget.percent"), "must be between 0 and 100");
    }
    let ttl = positive(
        bu.ttl.map(|x| x.0),
        d.budget.ttl,
        &format!("{p}.budget.ttl"),
        errs,
    );
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
        errs.push(format!("{p}.budget.ttl"), "must be between 1s and 60s");
    }
    RetryPolicy {
        attempts,
        on,
        non_idempotent: r.non_idempotent.unwrap_or(false),
        max_body,
        backoff_base,
        backoff_max,
        budget: RetryBudgetConfig {
            percent,
            min_per_second: bu.min_per_second.unwrap_or(d.budget.min_per_second),
            ttl,
        },
    }
}

pub(super) fn circuit_breaker(
    c: raw::CircuitBreaker,
    p: &str,
    errs: &mut Errors,
) -> CircuitBreakerConfig {
    let d = CircuitBreakerConfig::default();
    let mut limit = |v: Option<u32>, default: u32, field: &str| {
        let v = v.unwrap_or(default);
        if v == 0 {
            errs.push(format!("{p}.{field}"), "must be at least 1");
        }
        v
    };
    CircuitBreakerConfig {
        max_connections: limit(c.max_connections, d.max_connections, "max_connections"),
        max_pending: limit(c.max_pending, d.max_pending, "max_pending"),
        max_requests: limit(c.max_requests, d.max_requests, "max_requests"),
        max_retries: limit(c.max_retries, d.max_retries, "max_retries"),
    }
}

pub(super) fn outlier(o: raw::Outlier, p: &str, errs: &mut Errors) -> OutlierConfig {
    let base_ejection = positive(
        o.base_ejection.map(|x| x.0),
        DEFAULT_OUTLIER_BASE_EJECTION,
        &format!("{p}.base_ejection"),
        errs,
    );
    let max_ejection = positive(
        o.max_ejection.map(|x| x.0),
        DEFAULT_OUTLIER_MAX_EJECTION.max(base_ejection),
        &format!("{p}.max_ejection"),
        errs,
    );
    if max_ejection < base_ejection {
        errs.push(
            format!("{p}.max_ejection"),
            "must not be shorter than `base_ejection`",
        );
    }
    let max_ejection_percent = o
        .max_ejection_percent
        .unwrap_or(DEFAULT_OUTLIER_MAX_EJECTION_PERCENT);
    if max_ejection_percent > 100 {
        errs.push(
            format!("{p}.max_ejection_percent"),
            "must be between 0 and 100",
        );
    }
    let o = OutlierConfig {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(DEFAULT_OUTLIER_CONSECUTIVE_5XX),
        consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
        consecutive_connect_failures: o.consecutive_connect_failures.unwrap_or(0),
        interval: positive(
            o.interval.map(|x| x.0),
            DEFAULT_OUTLIER_INTERVAL,
            &format!("{p}.interval"),
            errs,
        ),
        base_ejection,
        max_ejection,
        max_ejection_percent,
    };
    if o.consecutive_5xx == 0
        && o.consecutive_gateway_errors == 0
        && o.consecutive_connect_failures == 0
    {
        errs.push(
            p,
            "every threshold is 0: set consecutive_5xx, consecutive_gateway_errors or \
             consecutive_connect_failures (or remove the section)",
        );
    }
    o
}

pub(super) fn health_check(h: raw::HealthCheck, p: &str, errs: &mut Errors) -> HealthCheckConfig {
    let kind = h.kind.unwrap_or_default();
    let path = match (kind, h.path) {
        (raw::HealthCheckKind::Http, Some(path)) => {
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                errs.push(
                    format!("{p}.path"),
                    format!("`{path}`: must start with `/` and hold no spaces or control bytes"),
                );
            }
            path
        }
        (raw::HealthCheckKind::Http, None) => {
            errs.push(
                format!("{p}.path"),
                "an HTTP health check needs a path (or set `kind: tcp`)",
            );
            String::new()
        }
        (raw::HealthCheckKind::Tcp, path) => {
            if path.is_some() {
                errs.push(format!("{p}.path"), "a tcp health check sends no request");
            }
            if h.host.is_some() {
                errs.push(format!("{p}.host"), "a tcp health check sends no request");
            }
            String::new()
        }
    };
    if let Some(host) = &h.host
        && (host.is_empty() || http::HeaderValue::from_str(host).is_err())
    {
        errs.push(format!("{p}.host"), format!("`{host}` is not a valid Host"));
    }
    let threshold = |v: Option<u32>, default: u32, field: &str, errs: &mut Errors| {
        let v = v.unwrap_or(default);
        if !(1..=100).contains(&v) {
            errs.push(format!("{p}.{field}"), "must be between 1 and 100");
        }
        v
    };
    let interval = positive(
        h.interval.map(|x| x.0),
        DEFAULT_HEALTH_INTERVAL,
        &format!("{p}.interval"),
        errs,
    );
    let timeout = positive(
        h.timeout.map(|x| x.0),
        DEFAULT_HEALTH_TIMEOUT.min(interval),
        &format!("{p}.timeout"),
        errs,
    );
    HealthCheckConfig {
        kind,
        path,
        interval,
        timeout,
        unhealthy_threshold: threshold(
            h.unhealthy_threshold,
            DEFAULT_HEALTH_UNHEALTHY_THRESHOLD,
            "unhealthy_threshold",
            errs,
        ),
        healthy_threshold: threshold(
            h.healthy_threshold,
            DEFAULT_HEALTH_HEALTHY_THRESHOLD,
            "healthy_threshold",
            errs,
        ),
        host: h.host,
    }
}

pub(super) fn failover(f: raw::Failover, p: &str, errs: &mut Errors) -> FailoverConfig {
    let d = FailoverConfig::default();
    let overprovisioning_factor = f
        .overprovisioning_factor
        .unwrap_or(d.overprovisioning_factor);
    if !(1.0..=10.0).contains(&overprovisioning_factor) {
        errs.push(
            format!("{p}.overprovisioning_factor"),
            "must be between 1.0 and 10.0",
        );
    }
    let panic_threshold = f.panic_threshold.unwrap_or(d.panic_threshold);
    if panic_threshold > 100 {
        errs.push(format!("{p}.panic_threshold"), "must be between 0 and 100");
    }
    FailoverConfig {
        overprovisioning_factor,
        panic_threshold,
    }
}

pub(super) fn ewma(e: raw::Ewma, p: &str, errs: &mut Errors) -> EwmaConfig {
    let d = EwmaConfig::default();
    EwmaConfig {
        decay: positive(e.decay.map(|x| x.0), d.decay, &format!("{p}.decay"), errs),
        default_rtt: positive(
            e.default_rtt.map(|x| x.0),
            d.default_rtt,
            &format!("{p}.default_rtt"),
            errs,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::check::errs;
    use crate::config::{LbPolicy, parse};

    #[test]
    fn resilience_sections_take_defaults() {
        let c = parse(
            concat!(
                "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\n",
                "clusters:\n",
                "  c:\n",
                "    endpoints: [127.0.0.1:1, {address: 127.0.0.1:2, weight: 3, priority: 1}]\n",
                "    lb: p2c_ewma\n",
                "    timeouts: {per_try: 200ms, request: 2s, idle: 30s}\n",
                "    retries: {on: [reset, 503, \"429\", gateway_error]}\n",
                "    circuit_breaker: {max_requests: 5}\n",
                "    outlier: {consecutive_5xx: 3}\n",
                "    health_check: {path: /healthz}\n",
            ),
            "t",
            Path::new("."),
        )
        .unwrap();
        let k = &c.clusters[0];
        assert_eq!(k.lb, LbPolicy::P2cEwma);
        assert_eq!(k.endpoint_meta(0), (1, 0));
        assert_eq!(k.endpoint_meta(1), (3, 1));
        assert_eq!(k.per_try_timeout, Some(Duration::from_millis(200)));
        assert_eq!(k.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(k.idle_timeout, Some(Duration::from_secs(30)));
        let r = k.retries.as_ref().unwrap();
        assert_eq!(r.attempts, DEFAULT_RETRY_ATTEMPTS);
        assert_eq!(r.on.names(), ["reset", "gateway_error", "503", "429"]);
        assert_eq!(r.budget, RetryBudgetConfig::default());
        assert_eq!(r.max_body, DEFAULT_RETRY_MAX_BODY);
        assert_eq!(k.circuit_breaker.max_requests, 5);
        assert_eq!(k.circuit_breaker.max_connections, DEFAULT_BREAKER_LIMIT);
        let o = k.outlier.unwrap();
        assert_eq!(o.consecutive_5xx, 3);
        assert_eq!(o.max_ejection_percent, DEFAULT_OUTLIER_MAX_EJECTION_PERCENT);
        let h = k.health_check.as_ref().unwrap();
        assert_eq!(h.interval, DEFAULT_HEALTH_INTERVAL);
        assert_eq!(h.unhealthy_threshold, DEFAULT_HEALTH_UNHEALTHY_THRESHOLD);
        assert_eq!(k.failover, FailoverConfig::default());
        // A cluster without the sections: no retries, no outlier detection, no health checks,
        // default breakers.
        let plain = parse(
            "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\nclusters:\n  c: {endpoints: [127.0.0.1:1]}\n",
            "t",
            Path::new("."),
        )
        .unwrap();
        let k = &plain.clusters[0];
        assert!(k.retries.is_none() && k.outlier.is_none() && k.health_check.is_none());
        assert_eq!(k.circuit_breaker, CircuitBreakerConfig::default());
        // The dump names the retry conditions as the manifest does.
        let dump = serde_json::to_string(&c.clusters[0]).unwrap();
        assert!(
            dump.contains(r#""on":["reset","gateway_error","503","429"]"#),
            "{dump}"
        );
    }

    #[test]
    fn a_health_check_is_http_with_a_path_or_tcp_without_one() {
        let cluster = |hc: &str| {
            format!(
                "listeners:\n  - {{name: a, address: 127.0.0.1:0, default_cluster: c}}\nclusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    health_check: {hc}\n"
            )
        };
        let c = parse(&cluster("{kind: tcp, interval: 1s}"), "t", Path::new(".")).unwrap();
        let h = c.clusters[0].health_check.as_ref().unwrap();
        assert_eq!((h.kind, h.path.as_str()), (HealthCheckKind::Tcp, ""));
        let c = parse(&cluster("{path: /healthz}"), "t", Path::new(".")).unwrap();
        let h = c.clusters[0].health_check.as_ref().unwrap();
        assert_eq!(
            (h.kind, h.path.as_str()),
            (HealthCheckKind::Http, "/healthz")
        );
        for (hc, want) in [
            (
                "{interval: 1s}",
                "clusters.c.health_check.path: an HTTP health check needs a path",
            ),
            (
                "{kind: tcp, path: /x}",
                "clusters.c.health_check.path: a tcp health check sends no request",
            ),
            (
                "{kind: tcp, host: a}",
                "clusters.c.health_check.host: a tcp health check sends no request",
            ),
            ("{kind: udp}", "clusters.c.health_check.kind"),
        ] {
            let joined = errs(&cluster(hc)).join("\n");
            assert!(joined.contains(want), "{hc}: missing {want} in:\n{joined}");
        }
    }

    #[test]
    fn resilience_sections_are_checked_field_by_field() {
        let e = errs(concat!(
            "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\n",
            "clusters:\n",
            "  c:\n",
            "    endpoints: [{address: 127.0.0.1:2, weight: 0, priority: 500}]\n",
            "    timeouts: {per_try: 0s}\n",
            "    retries: {attempts: 99, on: [sometimes, 999], budget: {percent: 150, ttl: 2m}, backoff: {base: 100ms, max: 10ms}}\n",
            "    circuit_breaker: {max_pending: 0}\n",
            "    outlier: {consecutive_5xx: 0, max_ejection_percent: 101}\n",
            "    health_check: {path: healthz, unhealthy_threshold: 0}\n",
            "    failover: {overprovisioning_factor: 0.5, panic_threshold: 120}\n",
        ));
        let joined = e.join("\n");
        for want in [
            "clusters.c.endpoints[0].weight",
            "clusters.c.endpoints[0].priority",
            "clusters.c.timeouts.per_try",
            "clusters.c.retries.attempts",
            "clusters.c.retries.on[0]: `sometimes`",
            "clusters.c.retries.on[1]: `999`",
            "clusters.c.retries.budget.percent",
            "clusters.c.retries.budget.ttl",
            "clusters.c.retries.backoff.max",
            "clusters.c.circuit_breaker.max_pending",
            "clusters.c.outlier: every threshold is 0",
            "clusters.c.outlier.max_ejection_percent",
            "clusters.c.health_check.path",
            "clusters.c.health_check.unhealthy_threshold",
            "clusters.c.failover.overprovisioning_factor",
            "clusters.c.failover.panic_threshold",
        ] {
            assert!(joined.contains(want), "missing {want} in:\n{joined}");
        }
        // A typo inside an endpoint map is named precisely.
        let e = errs(
            "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\nclusters:\n  c: {endpoints: [{address: 127.0.0.1:2, wieght: 2}]}\n",
        );
        assert!(e[0].contains("clusters.c.endpoints[0]"), "{e:?}");
        assert!(e[0].contains("unknown field `wieght`"), "{e:?}");
    }
}
