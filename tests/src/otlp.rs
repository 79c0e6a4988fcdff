//! An in-test OpenTelemetry collector: a hyper server on `127.0.0.1:0` that accepts OTLP/HTTP
//! trace exports (`POST /v1/traces`, protobuf `ExportTraceServiceRequest`), keeps every span, and
//! answers `200` with an empty `ExportTraceServiceResponse`. Tests wait for spans by count or by
//! trace id, bounded by [`crate::TIMEOUT`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Lower-case hex, 32 digits.
    pub trace_id: String,
    /// Lower-case hex, 16 digits.
    pub span_id: String,
    /// Lower-case hex; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 2 server, 3 client.
    pub kind: i32,
    /// Attributes as text (`"200"`, `"GET"`, …).
    pub attributes: BTreeMap<String, String>,
    /// The resource's attributes (`service.name`, …).
    pub resource: BTreeMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// An attribute's text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// OTLP span kinds.
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

/// The running receiver; stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    changed: watch::Receiver<usize>,
    exports: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let exports: Arc<Mutex<usize>> = Arc::default();
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let (s, e) = (spans.clone(), exports.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, e, tx) = (s.clone(), e.clone(), tx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s, e, tx) = (s.clone(), e.clone(), tx.clone());
                        async move { Ok::<_, Infallible>(export(req, &s, &e, &tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OtlpReceiver {
            addr,
            spans,
            changed,
            exports,
            task,
        }
    }

    /// The collector address for a manifest (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Export requests received so far.
    pub fn exports(&self) -> usize {
        *self.exports.lock().unwrap()
    }

    /// Waits (bounded) until `pred` holds for the spans received, and returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut changed = self.changed.clone();
        crate::within(what, async {
            loop {
                {
                    let spans = self.spans.lock().unwrap();
                    if pred(&spans) {
                        return spans.clone();
                    }
                }
                if changed.changed().await.is_err() {
                    panic!("the OTLP receiver stopped");
                }
            }
        })
        .await
    }

    /// Waits until `n` spans of trace `trace_id` arrived; returns them.
    pub async fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<ReceivedSpan> {
        let spans = self
            .wait_for(&format!("{n} spans of trace {trace_id}"), |s| {
                s.iter().filter(|x| x.trace_id == trace_id).count() >= n
            })
            .await;
        spans
            .into_iter()
            .filter(|x| x.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(
    req: Request<Incoming>,
    spans: &Mutex<Vec<ReceivedSpan>>,
    exports: &Mutex<usize>,
    tx: &watch::Sender<usize>,
) -> Response<Full<Bytes>> {
    let ok_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/x-protobuf");
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" || !ok_type {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"not an OTLP/HTTP trace export",
        )));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Response::new(Full::new(Bytes::new())),
    };
    let Ok(decoded) = ExportTraceServiceRequest::decode(body) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"bad protobuf")));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let mut got = Vec::new();
    for rs in decoded.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(ReceivedSpan {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attributes: attrs(&s.attributes),
                    resource: resource.clone(),
                    status: s.status.map_or(0, |st| st.code),
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                });
            }
        }
    }
    let total = {
        let mut all = spans.lock().unwrap();
        all.extend(got);
        all.len()
    };
    *exports.lock().unwrap() += 1;
    tx.send_replace(total);
    let mut r = Response::new(Full::new(Bytes::from(
        ExportTraceServiceResponse::default().encode_to_vec(),
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    r
}

fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}
