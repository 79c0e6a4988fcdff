//! Micro-benchmarks of the request head's way through the proxy's HTTP/1.1 path: parse it off
//! the wire, set the forwarded fields and the request id, encode it for the upstream, drop it.
//! Two ways, on the same bytes: through a `HeaderMap` (what a request meeting a filter chain or
//! detailed telemetry takes) and raw (the plain path: the client's lines plus the proxy's own).
//! Two heads: wrk's (one field) and a browser-like one (ten). Figures are in benches/README.md.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request};
use weir::http::headers::{
    client_ip_value, ensure_request_id, new_request_id, set_client_cert, set_forwarded,
    strip_hop_by_hop,
};
use weir::proto::body::ProxyBody;
use weir::proto::h1::head::{Parser, RequestHead as Head};
use weir::upstream::h1::{RawRequest, encode_head};

const WRK: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n";
const BROWSER: &[u8] = b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\nHost: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
Accept: application/json, text/plain, */*\r\nAccept-Language: en-GB,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\nReferer: https://shop.example.com/items\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\n\
Priority: u=4\r\n\r\n";

fn request(head: Head) -> Request<ProxyBody> {
    let mut req = Request::new(ProxyBody::Empty);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.headers_mut() = head.headers;
    req
}

/// Parse, set what the proxy sets, encode for the upstream: the map way.
fn through_map(parser: &Parser, wire: &[u8], client: &HeaderValue) -> usize {
    let mut buf = BytesMut::from(wire);
    let head = parser.parse(&mut buf, false).unwrap().unwrap();
    let mut req = request(head);
    let h = req.headers_mut();
    strip_hop_by_hop(h, false);
    set_forwarded(h, client, "http");
    set_client_cert(h, None);
    ensure_request_id(h);
    encode_head(&req, true, None).as_bytes().len()
}

/// The same, raw: the client's lines, then the proxy's own fields.
fn raw(parser: &Parser, wire: &[u8], client: &HeaderValue) -> usize {
    let mut buf = BytesMut::from(wire);
    let mut head = parser.parse(&mut buf, true).unwrap().unwrap();
    let fields = head.raw.take().expect("the head qualifies");
    let req = request(head);
    let raw = RawRequest {
        lines: fields.lines,
        has_length: fields.length.is_some(),
        forwarded_for: client.clone(),
        forwarded_proto: "http",
        client_cert: None,
        request_id: new_request_id(),
    };
    encode_head(&req, true, Some(&raw)).as_bytes().len()
}

fn heads(c: &mut Criterion) {
    let parser = Parser::new(100, 64 * 1024, 16 * 1024);
    let client = client_ip_value([127, 0, 0, 1].into());
    for (name, wire) in [("wrk", WRK), ("browser", BROWSER)] {
        // Both ways send the same fields (the raw way keeps the client's name case).
        assert_eq!(
            through_map(&parser, wire, &client),
            raw(&parser, wire, &client),
            "{name}"
        );
        let mut g = c.benchmark_group(format!("request_head/{name}"));
        g.bench_function("map", |b| {
            b.iter(|| through_map(&parser, black_box(wire), &client))
        });
        g.bench_function("raw", |b| b.iter(|| raw(&parser, black_box(wire), &client)));
        g.finish();
    }
}

criterion_group!(benches, heads);
criterion_main!(benches);
