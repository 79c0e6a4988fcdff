//! Raw manifest → validated [`Config`]. Collects every problem rather than stopping at the first,
//! so `weir check` shows an operator the whole list at once.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::raw;
use super::*;

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates a parsed manifest. `base_dir` resolves relative module paths.
pub fn validate(m: raw::Manifest, base_dir: &Path) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    if m.workers == Some(0) {
        errs.push("workers", "must be at least 1");
    }
    if m.workers.is_some_and(|w| w > 1024) {
        errs.push("workers", "must be at most 1024");
    }

    let admin = m.admin.map(|a| AdminConfig {
        address: socket_addr(&a.address, "admin.address", &mut errs),
        token_file: a.token_file.map(|f| {
            let path = base_dir.join(f);
            if !path.is_file() {
                errs.push(
                    "admin.token_file",
                    format!("no token file at {}", path.display()),
                );
            }
            path
        }),
    });

    // Clusters first: listeners refer to them.
    let mut clusters = Vec::with_capacity(m.clusters.len());
    for (name, c) in m.clusters {
        let p = format!("clusters.{name}");
        check_name(&name, &p, &mut errs);
        let endpoints = match (c.endpoints, c.demo) {
            (Some(_), Some(_)) => {
                errs.push(&p, "give either `endpoints` or `demo`, not both");
                Endpoints::Static(vec![])
            }
            (None, None) => {
                errs.push(&p, "needs `endpoints` (a list of ip:port) or `demo: LABEL`");
                Endpoints::Static(vec![])
            }
            (None, Some(label)) => Endpoints::Demo(label),
            (Some(list), None) => {
                if list.is_empty() {
                    errs.push(format!("{p}.endpoints"), "must list at least one endpoint");
                }
                let mut eps = Vec::with_capacity(list.len());
                for (i, e) in list.iter().enumerate() {
                    eps.push(endpoint(e, &format!("{p}.endpoints[{i}]"), &mut errs));
                }
                Endpoints::Static(eps)
            }
        };
        let connect_timeout = positive(
            c.timeouts.connect.map(|d| d.0),
            DEFAULT_CONNECT_TIMEOUT,
            &format!("{p}.timeouts.connect"),
            &mut errs,
        );
        let response_timeout = positive(
            c.timeouts.response.map(|d| d.0),
            DEFAULT_RESPONSE_TIMEOUT,
            &format!("{p}.timeouts.response"),
            &mut errs,
        );
        let pool_idle_timeout = positive(
            c.pool.idle_timeout.map(|d| d.0),
            DEFAULT_POOL_IDLE_TIMEOUT,
            &format!("{p}.pool.idle_timeout"),
            &mut errs,
        );
        let opt = |d: Option<units::HumanDuration>, field: &str, errs: &mut Errors| {
            d.map(|d| positive(Some(d.0), d.0, &format!("{p}.timeouts.{field}"), errs))
        };
        let per_try_timeout = opt(c.timeouts.per_try, "per_try", &mut errs);
        let request_timeout = opt(c.timeouts.request, "request", &mut errs);
        let idle_timeout = opt(c.timeouts.idle, "idle", &mut errs);
        clusters.push(ClusterConfig {
            index: clusters.len(),
            name,
            endpoints,
            protocol: c.protocol,
            lb: c.lb,
            connect_timeout,
            response_timeout,
            per_try_timeout,
            request_timeout,
            idle_timeout,
            pool_max_idle: c.pool.max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
            pool_idle_timeout,
            tls: c
                .tls
                .map(|t| cluster_tls(t, base_dir, &format!("{p}.tls"), &mut errs)),
            retries: c
                .retries
                .map(|r| retry_policy(r, &format!("{p}.retries"), &mut errs)),
            circuit_breaker: circuit_breaker(
                c.circuit_breaker.unwrap_or_default(),
                &format!("{p}.circuit_breaker"),
                &mut errs,
            ),
            outlier: c
                .outlier
                .map(|o| outlier(o, &format!("{p}.outlier"), &mut errs)),
            health_check: c
                .health_check
                .map(|h| health_check(h, &format!("{p}.health_check"), &mut errs)),
            failover: failover(
                c.failover.unwrap_or_default(),
                &format!("{p}.failover"),
                &mut errs,
            ),
            ewma: ewma(c.ewma.unwrap_or_default(), &format!("{p}.ewma"), &mut errs),
        });
    }

    // Filters and chains: schema and references (executed once the filter chain lands).
    let mut filters = Vec::with_capacity(m.filters.len());
    for (name, f) in m.filters {
        let p = format!("filters.{name}");
        check_name(&name, &p, &mut errs);
        let module = if let Some(b) = f.module.strip_prefix("builtin:") {
            if b.is_empty() {
                errs.push(format!("{p}.module"), "`builtin:` needs a filter name");
            }
            ModuleRef::Builtin(b.to_owned())
        } else {
            let path = base_dir.join(&f.module);
            if !path.is_file() {
                errs.push(
                    format!("{p}.module"),
                    format!(
                        "no module file at {} (or write builtin:NAME)",
                        path.display()
                    ),
                );
            }
            ModuleRef::File(path)
        };
        if let Some(h) = &f.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            errs.push(format!("{p}.sha256"), "must be 64 hex digits");
        }
        let memory_limit = f.limits.memory.map_or(DEFAULT_FILTER_MEMORY, |s| s.0);
        if memory_limit < 64 * 1024 {
            errs.push(
                format!("{p}.limits.memory"),
                "must be at least 64KiB (one Wasm page)",
            );
        }
        let callback_deadline = positive(
            f.limits.callback_deadline.map(|d| d.0),
            DEFAULT_FILTER_CALLBACK_DEADLINE,
            &format!("{p}.limits.callback_deadline"),
            &mut errs,
        );
        filters.push(FilterConfig {
            name,
            module,
            sha256: f.sha256.map(|h| h.to_ascii_lowercase()),
            config: f.config,
            vm_config: f.vm_config,
            failure_policy: f.failure_policy,
            memory_limit,
            callback_deadline,
        });
    }
    let mut chains = Vec::with_capacity(m.chains.len());
    for (name, list) in m.chains {
        let p = format!("chains.{name}");
        check_name(&name, &p, &mut errs);
        for (i, f) in list.iter().enumerate() {
            if !filters.iter().any(|x| &x.name == f) {
                errs.push(format!("{p}[{i}]"), format!("unknown filter `{f}`"));
            }
        }
        chains.push(ChainConfig {
            name,
            filters: list,
        });
    }

    if m.listeners.is_empty() {
        errs.push("listeners", "at least one listener is needed");
    }
    let mut names = BTreeSet::new();
    let mut listeners = Vec::with_capacity(m.listeners.len());
    for (i, l) in m.listeners.into_iter().enumerate() {
        let p = format!("listeners[{i}]");
        check_name(&l.name, &format!("{p}.name"), &mut errs);
        if !names.insert(l.name.clone()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        let address = socket_addr(&l.address, &format!("{p}.address"), &mut errs);
        let default_cluster = match clusters.iter().position(|c| c.name == l.default_cluster) {
            Some(ix) => ix,
            None => {
                errs.push(
                    format!("{p}.default_cluster"),
                    format!("unknown cluster `{}`", l.default_cluster),
                );
                0
            }
        };
        if let Some(ch) = &l.chain
            && !chains.iter().any(|c| &c.name == ch)
        {
            errs.push(format!("{p}.chain"), format!("unknown chain `{ch}`"));
        }
        let limits = listener_limits(&l.limits, &format!("{p}.limits"), &mut errs);
        let tls = l
            .tls
            .map(|t| listener_tls(t, base_dir, &format!("{p}.tls"), &mut errs));
        listeners.push(ListenerConfig {
            name: l.name,
            address,
            default_cluster,
            default_cluster_name: l.default_cluster,
            chain: l.chain,
            limits,
            tls,
        });
    }
    // Two listeners on one fixed address would fail to bind at start; say so now.
    let mut seen = BTreeSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.address.port() != 0 && !seen.insert(l.address) {
            errs.push(
                format!("listeners[{i}].address"),
                format!("{} is used twice", l.address),
            );
        }
    }

    let drain_timeout = positive(
        m.drain_timeout.map(|d| d.0),
        DEFAULT_DRAIN_TIMEOUT,
        "drain_timeout",
        &mut errs,
    );

    let tls_watch_interval = positive(
        m.tls_watch_interval.map(|d| d.0),
        DEFAULT_TLS_WATCH_INTERVAL,
        "tls_watch_interval",
        &mut errs,
    );

    let telemetry = m
        .telemetry
        .map(|t| telemetry(t, base_dir, &mut errs))
        .unwrap_or_default();

    if errs.0.is_empty() {
        Ok(Config {
            workers: m.workers,
            drain_timeout,
            tls_watch_interval,
            admin,
            listeners,
            clusters,
            chains,
            filters,
            telemetry,
        })
    } else {
        Err(errs.0)
    }
}

fn telemetry(t: raw::Telemetry, base_dir: &Path, errs: &mut Errors) -> TelemetryConfig {
    let tracing = t.tracing.map(|tr| {
        let p = "telemetry.tracing";
        let collector = collector_url(&tr.collector, &format!("{p}.collector"), errs);
        let sample_ratio = tr.sample_ratio.unwrap_or(DEFAULT_TRACE_SAMPLE_RATIO);
        if !(sample_ratio.is_finite() && (0.0..=1.0).contains(&sample_ratio)) {
            errs.push(
                format!("{p}.sample_ratio"),
                format!("{sample_ratio} is not a ratio between 0.0 and 1.0"),
            );
        }
        let service_name = tr
            .service_name
            .unwrap_or_else(|| DEFAULT_TRACE_SERVICE_NAME.to_owned());
        if service_name.is_empty() {
            errs.push(format!("{p}.service_name"), "must not be empty");
        }
        let max_batch = tr.max_batch.unwrap_or(DEFAULT_TRACE_MAX_BATCH);
        let max_queue = tr.max_queue.unwrap_or(DEFAULT_TRACE_MAX_QUEUE);
        if max_batch == 0 {
            errs.push(format!("{p}.max_batch"), "must be at least 1");
        }
        if max_queue < max_batch {
            errs.push(
                format!("{p}.max_queue"),
                format!("must be at least max_batch ({max_batch})"),
            );
        }
        let mut headers = Vec::new();
        for (k, v) in tr.headers.unwrap_or_default() {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(&v).is_err()
            {
                errs.push(
                    format!("{p}.headers.{k}"),
                    "is not a valid HTTP header name and value",
                );
            }
            headers.push((k, v));
        }
        TracingConfig {
            collector,
            sample_ratio,
            service_name,
            batch_delay: positive(
                tr.batch_delay.map(|d| d.0),
                DEFAULT_TRACE_BATCH_DELAY,
                &format!("{p}.batch_delay"),
                errs,
            ),
            max_batch,
            max_queue,
            export_timeout: positive(
                tr.export_timeout.map(|d| d.0),
                DEFAULT_TRACE_EXPORT_TIMEOUT,
                &format!("{p}.export_timeout"),
                errs,
            ),
            headers,
        }
    });
    let access_log = t.access_log.map(|a| {
        let p = "telemetry.access_log";
        let path = match a.path.as_deref() {
            None | Some("stdout") => AccessLogPath::Stdout,
            Some("") => {
                errs.push(format!("{p}.path"), "must be `stdout` or a file path");
                AccessLogPath::Stdout
            }
            Some(f) => {
                let full = base_dir.join(f);
                if !full.parent().is_some_and(Path::is_dir) {
                    errs.push(
                        format!("{p}.path"),
                        format!("no folder for {}", full.display()),
                    );
                }
                AccessLogPath::File(full)
            }
        };
        let fields = match a.fields {
            None => AccessLogField::ALL.to_vec(),
            Some(names) => {
                if names.is_empty() {
                    errs.push(format!("{p}.fields"), "must name at least one field");
                }
                let mut out = Vec::with_capacity(names.len());
                for (i, n) in names.iter().enumerate() {
                    match AccessLogField::parse(n) {
                        Some(f) if out.contains(&f) => {
                            errs.push(format!("{p}.fields[{i}]"), format!("`{n}` is listed twice"));
                        }
                        Some(f) => out.push(f),
                        None => errs.push(
                            format!("{p}.fields[{i}]"),
                            format!(
                                "unknown field `{n}` (fields: {})",
                                AccessLogField::ALL
                                    .iter()
                                    .map(|f| f.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ),
                    }
                }
                out
            }
        };
        AccessLogConfig {
            path,
            fields,
            flush_interval: positive(
                a.flush_interval.map(|d| d.0),
                DEFAULT_ACCESS_LOG_FLUSH_INTERVAL,
                &format!("{p}.flush_interval"),
                errs,
            ),
        }
    });
    TelemetryConfig {
        tracing,
        access_log,
    }
}

/// The OTLP/HTTP traces URL: `http://HOST:PORT` gets the standard `/v1/traces` path; a URL with
/// a path is used as written. Only plain HTTP: a collector is normally a local agent or sidecar.
fn collector_url(s: &str, path: &str, errs: &mut Errors) -> String {
    let Ok(uri) = s.parse::<http::Uri>() else {
        errs.push(path, format!("`{s}` is not a URL"));
        return s.to_owned();
    };
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        errs.push(
            path,
            format!(
                "`{s}`: write http://HOST:PORT (OTLP over HTTP/protobuf; https is not supported)"
            ),
        );
        return s.to_owned();
    }
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => format!(
            "http://{}/v1/traces",
            uri.authority().map_or("", |a| a.as_str())
        ),
        Some(_) => s.to_owned(),
    }
}

fn listener_limits(r: &raw::ListenerLimits, p: &str, errs: &mut Errors) -> ListenerLimits {
    let d = ListenerLimits::default();
    let l = ListenerLimits {
        max_request_headers_size: r
            .max_request_headers_size
            .map_or(d.max_request_headers_size, |s| s.0),
        max_request_headers: r.max_request_headers.unwrap_or(d.max_request_headers),
        max_uri_length: r.max_uri_length.map_or(d.max_uri_length, |s| s.0),
        header_read_timeout: positive(
            r.header_read_timeout.map(|x| x.0),
            d.header_read_timeout,
            &format!("{p}.header_read_timeout"),
            errs,
        ),
        idle_timeout: positive(
            r.idle_timeout.map(|x| x.0),
            d.idle_timeout,
            &format!("{p}.idle_timeout"),
            errs,
        ),
        max_connections: r.max_connections.unwrap_or(d.max_connections),
        h2_max_concurrent_streams: r
            .h2_max_concurrent_streams
            .unwrap_or(d.h2_max_concurrent_streams),
    };
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
    if !(8 * 1024..=1024 * 1024).contains(&l.max_request_headers_size) {
        errs.push(
            format!("{p}.max_request_headers_size"),
            "must be between 8KiB and 1MiB",
        );
    }
    if l.max_request_headers == 0 || l.max_request_headers > 10_000 {
        errs.push(
            format!("{p}.max_request_headers"),
            "must be between 1 and 10000",
        );
    }
    if l.max_uri_length < 64 {
        errs.push(format!("{p}.max_uri_length"), "must be at least 64 bytes");
    }
    if l.max_connections == 0 {
        errs.push(format!("{p}.max_connections"), "must be at least 1");
    }
    if l.h2_max_concurrent_streams == 0 {
        errs.push(
            format!("{p}.h2_max_concurrent_streams"),
            "must be at least 1",
        );
    }
    l
}

/// A PEM file the proxy will read: must exist now (it is read, and re-read on rotation, later).
fn pem_file(base_dir: &Path, f: &str, path: &str, errs: &mut Errors) -> PathBuf {
    let full = base_dir.join(f);
    if !full.is_file() {
        errs.push(path, format!("no file at {}", full.display()));
    }
    full
}

fn listener_tls(
    t: raw::ListenerTls,
    base_dir: &Path,
    p: &str,
    errs: &mut Errors,
) -> ListenerTlsConfig {
    let cert = pem_file(base_dir, &t.cert, &format!("{p}.cert"), errs);
    let key = pem_file(base_dir, &t.key, &format!("{p}.key"), errs);
    let client_ca = t
        .client_ca
        .map(|f| pem_file(base_dir, &f, &format!("{p}.client_ca"), errs));
    let client_auth = match (t.client_auth, &client_ca) {
        (None, Some(_)) => ClientAuth::Required,
        (None, None) => ClientAuth::None,
        (Some(a @ (ClientAuth::Optional | ClientAuth::Required)), None) => {
            errs.push(
                format!("{p}.client_auth"),
                "verifying client certificates needs `client_ca` (a trust bundle)",
            );
            a
        }
        (Some(a), _) => a,
    };
    let trust_domains = t.trust_domains.unwrap_or_default();
    if !trust_domains.is_empty() && client_auth == ClientAuth::None {
        errs.push(
            format!("{p}.trust_domains"),
            "needs client certificates (`client_ca`, and `client_auth` not `none`)",
        );
    }
    for (i, td) in trust_domains.iter().enumerate() {
        if !crate::tls::spiffe::valid_trust_domain(td) {
            errs.push(
                format!("{p}.trust_domains[{i}]"),
                format!("`{td}` is not a trust domain (lower-case letters, digits, `.-_`)"),
            );
        }
    }
    let alpn = t
        .alpn
        .unwrap_or_else(|| vec!["h2".to_owned(), "http/1.1".to_owned()]);
    if alpn.is_empty() {
        errs.push(format!("{p}.alpn"), "must name at least one protocol");
    }
    for (i, a) in alpn.iter().enumerate() {
        if a != "h2" && a != "http/1.1" {
            errs.push(
                format!("{p}.alpn[{i}]"),
                format!("`{a}`: only `h2` and `http/1.1` are served"),
            );
        }
    }
    let tls13_only = match t.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(v) => {
            errs.push(
                format!("{p}.min_version"),
                format!("`{v}`: must be \"1.2\" or \"1.3\" (older versions are never accepted)"),
            );
            false
        }
    };
    let handshake_timeout = positive(
        t.handshake_timeout.map(|d| d.0),
        DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        &format!("{p}.handshake_timeout"),
        errs,
    );
    ListenerTlsConfig {
        cert,
        key,
        client_ca,
        client_auth,
        trust_domains,
        alpn,
        tls13_only,
        handshake_timeout,
        forward_client_cert: t.forward_client_cert,
    }
}

fn cluster_tls(
    t: raw::ClusterTls,
    base_dir: &Path,
    p: &str,
    errs: &mut Errors,
) -> ClusterTlsConfig {
    let ca = pem_file(base_dir, &t.ca, &format!("{p}.ca"), errs);
    let client_cert = match (t.cert, t.key) {
        (Some(c), Some(k)) => Some((
            pem_file(base_dir, &c, &format!("{p}.cert"), errs),
            pem_file(base_dir, &k, &format!("{p}.key"), errs),
        )),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(format!("{p}.key"), "`cert` needs its `key`");
            None
        }
        (None, Some(_)) => {
            errs.push(format!("{p}.cert"), "`key` needs its `cert`");
            None
        }
    };
    if let Some(sni) = &t.sni
        && !crate::tls::spiffe::valid_dns_name(sni)
    {
        errs.push(format!("{p}.sni"), format!("`{sni}` is not a DNS name"));
    }
    let expect = match (t.expect_identity, &t.sni) {
        (Some(id), _) if id.starts_with("spiffe://") => match crate::tls::spiffe::parse(&id) {
            Ok(s) if s.path.is_empty() => ExpectedIdentity::TrustDomain(s.trust_domain.to_owned()),
            Ok(_) => ExpectedIdentity::Spiffe(id),
            Err(e) => {
                errs.push(format!("{p}.expect_identity"), format!("`{id}`: {e}"));
                ExpectedIdentity::Spiffe(id)
            }
        },
        (Some(name), _) => {
            if !crate::tls::spiffe::valid_dns_name(&name) {
                errs.push(
                    format!("{p}.expect_identity"),
                    format!("`{name}` is neither a spiffe:// ID nor a DNS name"),
                );
            }
            ExpectedIdentity::Dns(name)
        }
        (None, Some(sni)) => ExpectedIdentity::Dns(sni.clone()),
        (None, None) => {
            errs.push(
                p,
                "needs `expect_identity` (a SPIFFE ID or DNS name) or `sni`: an upstream's \
                 certificate is always checked against an identity",
            );
            ExpectedIdentity::Dns(String::new())
        }
    };
    ClusterTlsConfig {
        ca,
        client_cert,
        sni: t.sni,
        expect,
    }
}

fn positive(v: Option<Duration>, default: Duration, path: &str, errs: &mut Errors) -> Duration {
    match v {
        Some(d) if d.is_zero() => {
            errs.push(path, "must be greater than zero");
            default
        }
        Some(d) => d,
        None => default,
    }
}

fn check_name(name: &str, path: &str, errs: &mut Errors) {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(
            path,
            format!("`{name}` is not a valid name (1-128 of A-Z a-z 0-9 - _ .)"),
        );
    }
}

fn socket_addr(s: &str, path: &str, errs: &mut Errors) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        errs.push(path, format!("`{s}` is not an ip:port address"));
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

/// One `endpoints` entry: an address, or `{address, weight, priority}`.
fn endpoint(e: &raw::Endpoint, p: &str, errs: &mut Errors) -> EndpointConfig {
    match e {
        raw::Endpoint::Address(a) => EndpointConfig {
            address: endpoint_addr(a, p, errs),
            weight: 1,
            priority: 0,
        },
        raw::Endpoint::Detailed(d) => {
            let weight = d.weight.unwrap_or(1);
            if !(1..=MAX_WEIGHT).contains(&weight) {
                errs.push(
                    format!("{p}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                );
            }
            let priority = d.priority.unwrap_or(0);
            if priority > MAX_PRIORITY {
                errs.push(
                    format!("{p}.priority"),
                    format!("must be between 0 and {MAX_PRIORITY}"),
                );
            }
            EndpointConfig {
                address: endpoint_addr(&d.address, &format!("{p}.address"), errs),
                weight,
                priority,
            }
        }
    }
}

const MAX_WEIGHT: u32 = 10_000;
const MAX_PRIORITY: u32 = 127;

fn retry_policy(r: raw::Retries, p: &str, errs: &mut Errors) -> RetryPolicy {
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

fn circuit_breaker(c: raw::CircuitBreaker, p: &str, errs: &mut Errors) -> CircuitBreakerConfig {
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

fn outlier(o: raw::Outlier, p: &str, errs: &mut Errors) -> OutlierConfig {
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

fn health_check(h: raw::HealthCheck, p: &str, errs: &mut Errors) -> HealthCheckConfig {
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

fn failover(f: raw::Failover, p: &str, errs: &mut Errors) -> FailoverConfig {
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

fn ewma(e: raw::Ewma, p: &str, errs: &mut Errors) -> EwmaConfig {
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

/// An endpoint is `ip:port` or `host:port` (resolved once, at load time).
fn endpoint_addr(s: &str, path: &str, errs: &mut Errors) -> SocketAddr {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            errs.push(path, "endpoint port must not be 0");
        }
        return a;
    }
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => a,
        _ => {
            errs.push(
                path,
                format!("`{s}` is not an ip:port or resolvable host:port"),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}
