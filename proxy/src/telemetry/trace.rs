//! OpenTelemetry traces: a server span per request and a client span per upstream attempt, W3C
//! trace context read from the request and sent upstream, exported in batches over OTLP/HTTP
//! (protobuf) by the SDK's batch processor through [`super::otlp::ExportClient`].
//!
//! Spans follow OTel's HTTP semantic conventions: named after the method (Weir has no route
//! templates), kind `SERVER` / `CLIENT`, `http.request.method`, `url.path`, `url.query`,
//! `url.scheme`, `server.address`/`server.port`, `client.address`, `network.peer.address`/`port`,
//! `network.protocol.version`, `user_agent.original`, `http.response.status_code`, `error.type`,
//! status `Error` for 5xx (server) and 4xx/5xx or no response (client). Weir adds `weir.listener`,
//! `weir.cluster`, `weir.request_id` and `weir.response_flags`.
//!
//! Sampling is parent-based: a request whose `traceparent` is valid keeps its caller's decision;
//! a new trace is sampled with the manifest's `sample_ratio` (by trace id, so every hop of a
//! trace that uses the same ratio agrees). An unsampled request still propagates its context.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderMap, Request};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};

use super::metrics::flags;
use crate::config::TracingConfig;

/// The tracer and its exporter pipeline (process-wide; workers share it).
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Builds the OTLP/HTTP exporter (its requests run on `rt`), the batch processor and the
    /// sampler from the manifest.
    pub fn new(cfg: &TracingConfig, rt: tokio::runtime::Handle) -> Result<Self, String> {
        let client = super::otlp::ExportClient::new(rt, cfg.export_timeout);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(cfg.collector.clone())
            .with_timeout(cfg.export_timeout)
            .with_headers(cfg.headers.iter().cloned().collect())
            .build()
            .map_err(|e| format!("the OTLP exporter did not build: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(cfg.batch_delay)
            .with_max_export_batch_size(cfg.max_batch)
            .with_max_queue_size(cfg.max_queue)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("weir");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Starts the server span of `req`, the child of its incoming `traceparent` when valid.
    pub fn server_span<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        scheme: &'static str,
        listener: &str,
    ) -> RequestTrace {
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(req.headers()));
        let mut span = self
            .tracer
            .span_builder(method_name(req.method()))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            let mut attrs = vec![
                KeyValue::new("http.request.method", req.method().as_str().to_owned()),
                KeyValue::new("url.path", req.uri().path().to_owned()),
                KeyValue::new("url.scheme", scheme),
                KeyValue::new("client.address", peer.ip().to_string()),
                KeyValue::new("network.peer.address", peer.ip().to_string()),
                KeyValue::new("network.peer.port", i64::from(peer.port())),
                KeyValue::new("network.protocol.version", protocol_version(req.version())),
                KeyValue::new("weir.listener", listener.to_owned()),
            ];
            if let Some(q) = req.uri().query() {
                attrs.push(KeyValue::new("url.query", q.to_owned()));
            }
            let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            if let Some(a) = authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
                attrs.push(KeyValue::new("server.address", a.host().to_owned()));
                if let Some(p) = a.port_u16() {
                    attrs.push(KeyValue::new("server.port", i64::from(p)));
                }
            }
            if let Some(ua) = header_text(req.headers(), http::header::USER_AGENT) {
                attrs.push(KeyValue::new("user_agent.original", ua));
            }
            span.set_attributes(attrs);
        }
        let server_cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut rt = RequestTrace {
            server: span,
            server_cx,
            client: None,
            client_cx: None,
            request_id: false,
            attempts: 0,
        };
        rt.note_request_id(req.headers());
        rt
    }

    /// Writes `cx`'s span context as `traceparent` (and `tracestate`) into `headers`.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Exports what is queued and stops the exporter (blocks until done or timed out).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter shutdown");
        }
    }
}

/// A request's spans.
pub struct RequestTrace {
    server: Span,
    /// A context whose span is the server span: the parent of client spans.
    server_cx: Context,
    client: Option<Span>,
    client_cx: Option<Context>,
    /// `weir.request_id` is on the server span (the client's, or the one weir generated once
    /// the request reaches an upstream).
    request_id: bool,
    /// Client spans started so far (a retry's span carries `http.request.resend_count`).
    attempts: u32,
}

impl RequestTrace {
    /// The context to propagate from the server span.
    pub fn server_context(&self) -> &Context {
        &self.server_cx
    }

    /// The current client span's context, if an attempt is in flight.
    pub fn client_context(&self) -> Option<&Context> {
        self.client_cx.as_ref()
    }

    fn note_request_id(&mut self, h: &HeaderMap) {
        if self.request_id || !self.server.is_recording() {
            return;
        }
        if let Some(id) = header_text(h, "x-request-id") {
            self.server
                .set_attribute(KeyValue::new("weir.request_id", id));
            self.request_id = true;
        }
    }

    /// The trace id, as 16 bytes.
    pub fn trace_id(&self) -> [u8; 16] {
        self.server.span_context().trace_id().to_bytes()
    }

    /// Starts the client span of an upstream attempt (ending the previous attempt's, if any).
    pub fn client_span<B>(
        &mut self,
        t: &Tracing,
        req: &Request<B>,
        upstream: SocketAddr,
        cluster: &str,
    ) {
        if let Some(mut old) = self.client.take() {
            old.end();
        }
        self.note_request_id(req.headers());
        let mut span = t
            .tracer
            .span_builder(method_name(req.method()))
            .with_kind(SpanKind::Client)
            .start_with_context(&t.tracer, &self.server_cx);
        if span.is_recording() {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            span.set_attributes([
                KeyValue::new("http.request.method", req.method().as_str().to_owned()),
                KeyValue::new("server.address", upstream.ip().to_string()),
                KeyValue::new("server.port", i64::from(upstream.port())),
                KeyValue::new("network.peer.address", upstream.ip().to_string()),
                KeyValue::new("network.peer.port", i64::from(upstream.port())),
                KeyValue::new("url.full", format!("http://{upstream}{path}")),
                KeyValue::new("weir.cluster", cluster.to_owned()),
            ]);
            if self.attempts > 0 {
                span.set_attribute(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(self.attempts),
                ));
            }
        }
        self.attempts += 1;
        self.client_cx = Some(Context::new().with_remote_span_context(span.span_context().clone()));
        self.client = Some(span);
    }

    /// The attempt's outcome: an upstream status (0: none) or an error reason.
    pub fn client_status(&mut self, status: u16, error: Option<&'static str>) {
        let Some(span) = &mut self.client else {
            return;
        };
        if !span.is_recording() {
            return;
        }
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(reason) = error {
            span.set_attribute(KeyValue::new("error.type", reason));
            span.set_status(Status::error(reason));
        } else if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
    }

    /// Ends the spans: the request is over with `status` (0: none was sent) and `flags`.
    pub fn end(mut self, status: u16, f: u16) {
        if let Some(mut c) = self.client.take() {
            c.end();
        }
        let span = &mut self.server;
        if span.is_recording() {
            if status != 0 {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            if f != 0 {
                span.set_attribute(KeyValue::new("weir.response_flags", flag_text(f)));
            }
            if status >= 500 || status == 0 {
                let kind: Cow<'static, str> = if status == 0 {
                    "no_response".into()
                } else {
                    status.to_string().into()
                };
                span.set_attribute(KeyValue::new("error.type", kind));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// `UF,URX` for a flag set (`-` for none), as Envoy writes `%RESPONSE_FLAGS%`.
pub fn flag_text(f: u16) -> String {
    if f == 0 {
        return "-".to_owned();
    }
    flags::NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// The trace id of a valid `traceparent` in `headers` (for the access log when the core's own
/// tracing is off).
pub fn trace_id_of(headers: &HeaderMap) -> Option<[u8; 16]> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let span = cx.span();
    let sc: &SpanContext = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_bytes())
}

/// OTel's span name for a request without a route template: the method, or `HTTP` for a
/// method outside the standard set (an unbounded name would explode span cardinality).
fn method_name(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "HTTP",
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

fn header_text(h: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_written_like_envoy() {
        assert_eq!(flag_text(0), "-");
        assert_eq!(flag_text(flags::UF), "UF");
        assert_eq!(flag_text(flags::UF | flags::URX | flags::DC), "UF,DC,URX");
    }

    #[test]
    fn trace_ids_only_from_valid_traceparents() {
        let mut h = HeaderMap::new();
        assert_eq!(trace_id_of(&h), None);
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id_of(&h).map(hex::encode).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(trace_id_of(&h), None);
    }
}
