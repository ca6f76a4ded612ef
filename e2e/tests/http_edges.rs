//! The gateway's HTTP surface under hostile requests: only the documented
//! auth routes are forwarded, browser origins are compared whole, ops
//! endpoints stay on the admin listener, and half-sent requests neither
//! stay open nor escape the connection limit.

use std::time::Duration;

use chat_e2e::System;
use chat_testkit::WsClient;
use chat_testkit::raw::{self, closed_by_peer};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn only_the_documented_auth_routes_reach_the_auth_service() {
    let sys = System::start().await.expect("system");
    let gw = sys.gateway;
    // Each of these reached the auth service's own paths (its /readyz and
    // /metrics answered through the gateway) before the forward was an
    // allow-list.
    for path in [
        "/auth/../../internal/admin?x=1",
        "/auth/%2e%2e/readyz",
        "/auth/%2E%2E/metrics",
        "/auth/..%2freadyz",
        "/auth/./me/../../readyz",
        "/auth//readyz",
        "/auth/readyz",
        "/auth/dev/login/../../../readyz",
        "/auth/",
    ] {
        let r = raw::get(gw, path).await.expect("response");
        assert_eq!(r.status, 404, "{path}: {} {}", r.head, r.body_text());
        assert!(
            !r.body_text().contains("ready"),
            "{path}: {}",
            r.body_text()
        );
    }
    // The documented routes work, with their methods only.
    let jwks = raw::get(gw, "/.well-known/jwks.json").await.expect("jwks");
    assert_eq!(jwks.status, 200, "{}", jwks.body_text());
    assert!(jwks.body_text().contains("\"keys\""));
    let wrong_method = raw::get(gw, "/auth/dev/login").await.expect("GET login");
    assert_eq!(wrong_method.status, 405);
    sys.login("alice")
        .await
        .expect("POST /auth/dev/login is forwarded");
    let me = raw::get(gw, "/auth/me").await.expect("me");
    assert_eq!(
        me.status, 401,
        "forwarded, and auth refused the missing token"
    );
}

#[tokio::test]
async fn a_page_served_under_another_name_is_refused_even_when_host_and_origin_agree() {
    let sys = System::start().await.expect("system");
    let port = sys.gateway.port();
    // DNS rebinding: evil.example now resolves to the gateway; the browser
    // sends the attacker's name in both Host and Origin.
    let rebound = format!("evil.example:{port}");
    let err = WsClient::connect_with(
        &sys.ws_url(),
        &[("host", &rebound), ("origin", &format!("http://{rebound}"))],
    )
    .await
    .err()
    .map(|e| format!("{e:#}"));
    assert!(err.as_deref().is_some_and(|e| e.contains("403")), "{err:?}");
    // The scheme counts: https on the gateway's own host:port is another origin.
    let err = WsClient::connect(&sys.ws_url(), Some(&format!("https://127.0.0.1:{port}")))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(err.as_deref().is_some_and(|e| e.contains("403")), "{err:?}");
    // The printed URL's origin, and its localhost spelling, are allowed.
    for own in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        WsClient::connect(&sys.ws_url(), Some(&own))
            .await
            .unwrap_or_else(|e| panic!("{own}: {e:#}"));
    }
}

#[tokio::test]
async fn a_configured_public_url_is_the_allowed_origin() {
    let sys = System::start_with(&[("CHAT_GATEWAY_PUBLIC_URL", "https://chat.example")])
        .await
        .expect("system");
    WsClient::connect(&sys.ws_url(), Some("https://chat.example"))
        .await
        .expect("public origin");
    let own = sys.http_url();
    let err = WsClient::connect(&sys.ws_url(), Some(&own)).await.err();
    assert!(err.is_some(), "the bound address is not the public origin");
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only() {
    let sys = System::start().await.expect("system");
    for path in ["/metrics", "/auth/../metrics", "/auth/%2e%2e/metrics"] {
        let r = raw::get(sys.gateway, path).await.expect("response");
        assert_eq!(r.status, 404, "{path} on the public port: {}", r.head);
    }
    // Probes stay on the public port for load balancers...
    for path in ["/healthz", "/readyz"] {
        let r = raw::get(sys.gateway, path).await.expect("probe");
        assert_eq!(r.status, 200, "{path}");
    }
    // ...and everything is on the admin port.
    let _session = sys.client("alice").await.expect("a session to count");
    let m = raw::get(sys.admin, "/metrics")
        .await
        .expect("admin metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.body_text().contains("chat_gateway_connections"),
        "{}",
        m.body_text()
    );
    assert_eq!(
        raw::get(sys.admin, "/readyz").await.expect("readyz").status,
        200
    );
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let sys = System::start_with(&[("CHAT_GATEWAY_HEADER_TIMEOUT_MS", "500")])
        .await
        .expect("system");
    let mut tcp = tokio::net::TcpStream::connect(sys.gateway)
        .await
        .expect("connect");
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n", sys.gateway).as_bytes())
        .await
        .expect("half a request");
    // Before the timeout existed this socket stayed open indefinitely.
    assert!(
        closed_by_peer(&mut tcp, Duration::from_secs(10)).await,
        "the gateway closed the half-sent request"
    );
    // An idle kept-alive connection is closed the same way.
    let mut idle = tokio::net::TcpStream::connect(sys.gateway)
        .await
        .expect("connect");
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", sys.gateway).as_bytes())
        .await
        .expect("request");
    assert!(closed_by_peer(&mut idle, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn sockets_that_never_upgrade_count_against_the_connection_limit() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_MAX_CONNECTIONS", "3"),
        ("CHAT_GATEWAY_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await
    .expect("system");
    let login = sys.login("alice").await.expect("login");
    // One session and two silent sockets fill the three slots.
    let (mut session, _) = WsClient::connect_as(&sys.ws_url(), &login.token)
        .await
        .expect("session");
    let mut silent = Vec::new();
    for _ in 0..2 {
        let s = tokio::net::TcpStream::connect(sys.gateway)
            .await
            .expect("connect");
        silent.push(s);
    }
    // Accept order is not connect order: wait until the gateway holds both.
    let full = chat_testkit::eventually(Duration::from_secs(10), "the limit to be reached", || {
        let gw = sys.gateway;
        async move {
            let r = raw::get(gw, "/healthz").await.ok()?;
            (r.status == 503).then_some(r)
        }
    })
    .await;
    assert!(full.body_text().contains("too many connections"));
    let err = WsClient::connect_as(&sys.ws_url(), &login.token)
        .await
        .err();
    assert!(
        err.is_some_and(|e| format!("{e:#}").contains("503")),
        "a fourth socket is refused with 503"
    );
    // Freeing a silent slot lets a new session in; the first one lived on.
    drop(silent.pop());
    chat_testkit::eventually(Duration::from_secs(10), "a slot to be free", || {
        let (url, token) = (sys.ws_url(), login.token.clone());
        async move { WsClient::connect_as(&url, &token).await.ok() }
    })
    .await;
    session
        .send_json(&serde_json::json!({"type": "ping", "id": "p"}))
        .await
        .expect("ping");
    session
        .recv_type("pong")
        .await
        .expect("first session alive");
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_refused_and_one_within_it_is_served() {
    let sys = System::start_with(&[("CHAT_GATEWAY_MAX_HEADER_BYTES", "8192")])
        .await
        .expect("system");
    let request = |pad: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nhost: {}\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
            sys.gateway,
            "p".repeat(pad)
        )
    };
    let within = raw::http(sys.gateway, request(4000).as_bytes())
        .await
        .expect("response");
    assert_eq!(within.status, 200);
    let over = raw::http(sys.gateway, request(20_000).as_bytes()).await;
    assert!(
        over.as_ref().is_ok_and(|r| r.status == 431),
        "a 20 KB head: {over:?}"
    );
}
