//! `telemetry:`: OpenTelemetry traces (exported over OTLP/HTTP) and the JSON access log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::check::{Errors, positive};
use super::raw;
use super::units::ser_duration;

pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 1.0;
pub const DEFAULT_TRACE_SERVICE_NAME: &str = "weir";
/// OpenTelemetry's batch span processor defaults (`OTEL_BSP_*`).
pub const DEFAULT_TRACE_BATCH_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_TRACE_MAX_BATCH: usize = 512;
pub const DEFAULT_TRACE_MAX_QUEUE: usize = 2048;
pub const DEFAULT_TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's access-log file flush interval.
pub const DEFAULT_ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Traces and the access log (both off unless configured). Metrics need no configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryConfig {
    pub tracing: Option<TracingConfig>,
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL (`http://…/v1/traces`).
    pub collector: String,
    pub sample_ratio: f64,
    pub service_name: String,
    #[serde(serialize_with = "ser_duration")]
    pub batch_delay: Duration,
    pub max_batch: usize,
    pub max_queue: usize,
    #[serde(serialize_with = "ser_duration")]
    pub export_timeout: Duration,
    /// Header names only: values may be credentials and `/config_dump` shows this.
    #[serde(serialize_with = "ser_header_names")]
    pub headers: Vec<(String, String)>,
}

fn ser_header_names<S: serde::Serializer>(h: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(k, _)| k))
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLogConfig {
    pub path: AccessLogPath,
    pub fields: Vec<AccessLogField>,
    #[serde(serialize_with = "ser_duration")]
    pub flush_interval: Duration,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogPath {
    Stdout,
    /// Appended to (absolute).
    File(PathBuf),
}

macro_rules! access_log_fields {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// One field of an access-log line (named like the JSON key it writes).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum AccessLogField { $($variant),* }

        impl AccessLogField {
            /// Every field, in the default order.
            pub const ALL: &'static [AccessLogField] = &[$(AccessLogField::$variant),*];

            /// The JSON key (and manifest name).
            pub fn name(self) -> &'static str {
                match self { $(AccessLogField::$variant => $name),* }
            }

            /// The field called `name`.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(AccessLogField::$variant),)* _ => None }
            }
        }
    };
}

access_log_fields! {
    StartTime => "start_time",
    Method => "method",
    Path => "path",
    Protocol => "protocol",
    Authority => "authority",
    UserAgent => "user_agent",
    RequestId => "request_id",
    Status => "status",
    ResponseFlags => "response_flags",
    BytesReceived => "bytes_received",
    BytesSent => "bytes_sent",
    DurationMs => "duration_ms",
    UpstreamServiceTimeMs => "upstream_service_time_ms",
    UpstreamHost => "upstream_host",
    UpstreamCluster => "upstream_cluster",
    Route => "route",
    Listener => "listener",
    DownstreamRemoteAddress => "downstream_remote_address",
    PeerIdentity => "peer_identity",
    TraceId => "trace_id",
    Error => "error",
}

impl Serialize for AccessLogField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

pub(super) fn telemetry(t: raw::Telemetry, base_dir: &Path, errs: &mut Errors) -> TelemetryConfig {
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
