//! The built-in demo upstream (`demo: LABEL` in a cluster): a tiny HTTP/1.1 + HTTP/2 origin inside
//! the `weir` process, so the embedded default answers `curl` with no other setup. It echoes what
//! it received, which makes the proxy's work (forwarded headers, request id, later the filters)
//! visible.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Binds a demo origin on 127.0.0.1:0 and serves it on the current runtime.
pub async fn start(label: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let label: Arc<str> = label.into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let label = label.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(label.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(
    label: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut text = String::with_capacity(512);
    let _ = writeln!(text, "Hello from Weir's demo upstream ({label}).");
    let _ = writeln!(text, "{} {} {:?}", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        let _ = writeln!(text, "{k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !body.is_empty() {
        let _ = writeln!(text, "\n{} body bytes received", body.len());
    }
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&label) {
        h.insert("x-demo-upstream", v);
    }
    Ok(resp)
}
