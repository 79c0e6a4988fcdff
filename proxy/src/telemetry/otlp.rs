//! The OTLP exporter's HTTP client: a small `opentelemetry_http::HttpClient` over the hyper
//! client Weir already has, instead of reqwest (a large dependency tree for one POST).
//!
//! The SDK's batch processor exports from a thread of its own and drives the export future with
//! a plain executor, not tokio; so each request is spawned onto the control runtime (whose task
//! answers through its `JoinHandle`, which any executor can await). One HTTP/1.1 connection to
//! the collector is kept and reused; a broken one is replaced on the next export.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};

/// The collector's answer is read up to this much (it is a small protobuf or nothing).
const MAX_RESPONSE: usize = 4 << 20;

type Sender = http1::SendRequest<Full<Bytes>>;

/// See the module docs.
#[derive(Clone)]
pub struct ExportClient {
    rt: tokio::runtime::Handle,
    timeout: Duration,
    conn: Arc<Mutex<Option<Sender>>>,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ExportClient {
    pub fn new(rt: tokio::runtime::Handle, timeout: Duration) -> Self {
        Self {
            rt,
            timeout,
            conn: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let this = self.clone();
        let task = self.rt.spawn(async move {
            match tokio::time::timeout(this.timeout, this.send(request)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", this.timeout).into()),
            }
        });
        task.await?
    }
}

impl ExportClient {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        let authority = parts
            .uri
            .authority()
            .cloned()
            .ok_or("the collector URL has no host")?;
        let pooled = self.conn.lock().ok().and_then(|mut c| c.take());
        let mut sender = match pooled {
            Some(s) if !s.is_closed() => s,
            _ => {
                let addr = authority.as_str().to_owned();
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "collector connection ended");
                    }
                });
                sender
            }
        };
        sender.ready().await?;
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()?;
        parts
            .headers
            .insert(header::HOST, authority.as_str().parse()?);
        let resp = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| -> HttpError { e })?
            .to_bytes();
        if let Ok(mut c) = self.conn.lock() {
            *c = Some(sender);
        }
        Ok(Response::from_parts(parts, body))
    }
}
