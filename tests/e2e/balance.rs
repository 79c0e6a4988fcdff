//! Endpoint choice: round robin alternates; least request avoids the endpoint with a request in
//! flight.

use weir_tests::{EchoServer, H1Client, Manifest, within};

#[tokio::test]
async fn round_robin_alternates_between_two_endpoints() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = Manifest::new(&[a.addr, b.addr])
        .lb("round_robin")
        .workers(Some(1))
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let mut order = Vec::new();
    for i in 0..10 {
        let r = c.get(&format!("/rr/{i}")).await;
        assert_eq!(r.status, 200);
        order.push(r.header("x-upstream").unwrap().to_string());
    }
    for w in order.windows(2) {
        assert_ne!(w[0], w[1], "round robin did not alternate: {order:?}");
    }
    assert_eq!(a.requests().len(), 5, "{order:?}");
    assert_eq!(b.requests().len(), 5, "{order:?}");
}

#[tokio::test]
async fn round_robin_is_the_default() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = Manifest::new(&[a.addr, b.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..4 {
        assert_eq!(c.get(&format!("/d/{i}")).await.status, 200);
    }
    assert_eq!((a.requests().len(), b.requests().len()), (2, 2));
}

#[tokio::test]
async fn least_request_prefers_the_idle_endpoint() {
    least_request_case("http1").await;
}

#[tokio::test]
async fn least_request_prefers_the_idle_endpoint_over_http2() {
    // On a multiplexed connection the in-flight count is per request, not per connection.
    least_request_case("http2").await;
}

async fn least_request_case(protocol: &str) {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = Manifest::new(&[a.addr, b.addr])
        .lb("least_request")
        .protocol(protocol)
        .workers(Some(1))
        .start()
        .await;
    let addr = weir.listener_addr("main");

    // One request parks on whichever endpoint gets it.
    let held = tokio::spawn(async move {
        let mut c = H1Client::connect(addr).await;
        c.get("/hold").await
    });
    let busy_is_a = within("the held request reaching an endpoint", async {
        tokio::select! {
            _ = a.wait_requests(1) => true,
            _ = b.wait_requests(1) => false,
        }
    })
    .await;
    let (busy, idle) = if busy_is_a { (&a, &b) } else { (&b, &a) };

    // While it is in flight, every new request goes to the idle endpoint.
    let mut c = H1Client::connect(addr).await;
    for i in 0..6 {
        let r = c.get(&format!("/lr/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-upstream"),
            Some(idle.addr.to_string().as_str()),
            "request {i} went to the busy endpoint"
        );
    }
    assert_eq!(busy.requests().len(), 1);
    busy.release(1);
    let r = within("held request", held).await.unwrap();
    assert_eq!(r.status, 200);
}
