//! h2c (prior knowledge) downstream: requests and bodies both ways, to HTTP/1.1 and to h2c
//! upstreams, concurrent streams on one connection, and full-duplex streaming.

use bytes::Bytes;
use http_body_util::BodyExt;
use weir_tests::client::body_channel;
use weir_tests::{EchoServer, H2Client, Manifest, within};

use crate::{is_uuid_v4, pattern};

#[tokio::test]
async fn h2_downstream_to_h1_upstream() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let r = c.post("/h2?q=1", "over h2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "over h2");
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "cluster protocol defaults to http1"
    );
    assert_eq!(
        seen.uri.path_and_query().map(|p| p.as_str()),
        Some("/h2?q=1")
    );
    assert_eq!(seen.method, "POST");
    assert!(
        seen.header("host").is_some(),
        "the :authority must become Host for HTTP/1.1"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen.header("x-request-id").is_some_and(is_uuid_v4));
}

#[tokio::test]
async fn h2_downstream_to_h2_upstream() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let r = c.post("/both-h2", "h2 all the way").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "h2 all the way");
    assert_eq!(up.wait_requests(1).await[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn h1_downstream_to_h2_upstream() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = weir_tests::H1Client::connect(weir.listener_addr("main")).await;
    let r = c.post("/mixed", "h1 in, h2 out").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "h1 in, h2 out");
    assert_eq!(up.wait_requests(1).await[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn one_mib_body_both_directions_h2() {
    for protocol in ["http1", "http2"] {
        let up = EchoServer::start().await;
        let weir = Manifest::new(&[up.addr]).protocol(protocol).start().await;
        let mut c = H2Client::connect(weir.listener_addr("main")).await;
        let data = Bytes::from(pattern(1 << 20));
        let r = c.post("/big", data.clone()).await;
        assert_eq!(r.status, 200, "cluster {protocol}");
        assert!(
            r.body == data,
            "cluster {protocol}: response body differs ({} bytes)",
            r.body.len()
        );
        assert!(
            up.wait_requests(1).await[0].body == data,
            "cluster {protocol}: upstream body differs"
        );
    }
}

#[tokio::test]
async fn concurrent_streams_on_one_connection() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let c = H2Client::connect(weir.listener_addr("main")).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.post(&format!("/s/{i}"), format!("stream {i}")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), format!("stream {i}"));
        }));
    }
    for t in tasks {
        within("stream", t).await.unwrap();
    }
}

#[tokio::test]
async fn full_duplex_streaming_h2() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = body_channel();
    let req = c.request("POST", "/stream").body(body).unwrap();
    tx.send_data(Bytes::from_static(b"ping-1")).await.unwrap();
    let resp = c
        .send(req)
        .await
        .expect("response head before the request body ended");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Each chunk must come back before the next is sent: nothing is buffered to the end.
    for i in 1..=3 {
        let mut got = Vec::new();
        let want = format!("ping-{i}");
        while got.len() < want.len() {
            let f = within(&format!("echo of {want}"), body.frame())
                .await
                .expect("body ended early")
                .expect("body error");
            if let Ok(d) = f.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(got, want.as_bytes());
        if i < 3 {
            tx.send_data(Bytes::from(format!("ping-{}", i + 1)))
                .await
                .unwrap();
        }
    }
    drop(tx);
    let rest = within("end of body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn split_h2_cookies_are_joined_for_an_http1_upstream() {
    // RFC 9113 §8.2.3: several `cookie` fields MUST be joined with "; " before HTTP/1.1.
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("GET", "/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(weir_tests::body_empty())
        .unwrap();
    assert_eq!(
        weir_tests::collect(c.send(req).await.unwrap()).await.status,
        200
    );
    let seen = &up.wait_requests(1).await[0];
    let cookies: Vec<_> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

#[tokio::test]
async fn h2_authority_wins_over_a_conflicting_host_header() {
    // RFC 9113 §8.3.1: :authority identifies the target; a differing Host must not be what the
    // HTTP/1.1 upstream sees (refusing the request is also acceptable).
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = http::Request::builder()
        .method("GET")
        .uri("http://authority.test/which-host")
        .version(http::Version::HTTP_2)
        .header("host", "header.test")
        .body(weir_tests::body_empty())
        .unwrap();
    let r = weir_tests::collect(c.send(req).await.unwrap()).await;
    if r.status == 400 {
        return;
    }
    assert_eq!(r.status, 200);
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(seen.header("host"), Some("authority.test"));
}

#[tokio::test]
async fn requests_beyond_the_upstream_stream_limit_wait_instead_of_failing() {
    // The h2 upstream allows 2 concurrent streams; 5 concurrent requests must all be served
    // (queued for a stream slot), none refused.
    let up = EchoServer::start_h2_with_max_streams(2).await;
    let weir = Manifest::new(&[up.addr])
        .protocol("http2")
        .response_timeout("10s")
        .start()
        .await;
    let c = H2Client::connect(weir.listener_addr("main")).await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.post("/hold", format!("held {i}")).await
        }));
    }
    up.wait_requests(2).await;
    up.release(5);
    for (i, t) in tasks.into_iter().enumerate() {
        let r = within("held request", t).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, format!("held {i}")),
            "x-weir-error {:?}",
            r.header("x-weir-error")
        );
    }
    assert_eq!(up.requests().len(), 5);
}
