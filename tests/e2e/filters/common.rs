//! Helpers shared by the filter-chain tests: conformance and `trace` filters, one-chain
//! manifests, fresh-connection requests, reading back what `on_log` recorded, and full-duplex
//! streams held open.

use std::net::SocketAddr;

use weir_test_artifacts::CONFORMANCE;
use weir_tests::client::Collected;
use weir_tests::{ChainManifest, FilterDef, H1Client, H2Client, eventually, within};

/// A conformance filter named `name` with configuration `json`.
pub(super) fn conformance(name: &str, json: &str) -> FilterDef {
    FilterDef::new(name, CONFORMANCE).config(json)
}

/// A `trace` filter stamping `tag`.
pub(super) fn trace(name: &str, tag: &str) -> FilterDef {
    conformance(name, &format!(r#"{{"scenario":"trace","tag":"{tag}"}}"#))
}

/// One listener `main` → cluster `web` (`ep`) running chain `edge` = `filters` (in that order).
pub(super) fn one_chain(ep: SocketAddr, filters: Vec<FilterDef>) -> ChainManifest {
    let names: Vec<String> = filters.iter().map(|f| f.name().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut m = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[ep])
        .chain("edge", &names);
    for f in filters {
        m = m.filter(f);
    }
    m
}

/// `GET path` with extra request headers, on a fresh HTTP/1.1 connection.
pub(super) async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Collected {
    H1Client::connect(addr).await.get_with(path, headers).await
}

/// The final statuses filter `tag` recorded from `on_log`, once they start with `want` (on_log
/// runs as the response ends; a read may come just before the last entry lands).
pub(super) async fn wait_log(addr: SocketAddr, tag: &str, want: &str) -> String {
    eventually(
        &format!("trace log of {tag} to read {want:?}"),
        async || {
            let r = get_with(addr, "/", &[("x-read-log", tag)]).await;
            assert_eq!(r.status, 200, "log read: {r:?}");
            let log = r.text();
            assert!(
                want.starts_with(&log),
                "on_log recorded {log:?}, expected {want:?}"
            );
            if log == want { Ok(log) } else { Err(log) }
        },
    )
    .await
}

/// Starts a full-duplex `/stream` exchange over h2 and returns the body sender and the response
/// body once the first chunk came back (or the status if the request was refused).
pub(super) async fn open_stream(
    addr: SocketAddr,
    first: &'static str,
) -> Result<
    (
        http_body_util::channel::Sender<bytes::Bytes, weir_tests::client::BoxError>,
        hyper::body::Incoming,
    ),
    http::StatusCode,
> {
    use http_body_util::BodyExt;
    let mut h2 = H2Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = h2.request("POST", "/stream").body(body).unwrap();
    tx.send_data(bytes::Bytes::from_static(first.as_bytes()))
        .await
        .unwrap();
    let resp = h2.send(req).await.expect("response head");
    if resp.status() != 200 {
        return Err(resp.status());
    }
    let mut body = resp.into_body();
    let frame = within("the first echoed chunk", body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(frame.data_ref().map(|d| &d[..]), Some(first.as_bytes()));
    Ok((tx, body))
}
