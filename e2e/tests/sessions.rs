//! Sign-in sessions end to end: refresh-token rotation and reuse detection,
//! logout, revocation closing live WebSockets within a second, the CSRF
//! rule of the refresh cookie, and sessions bound to their token's expiry
//! with in-band renewal.

use std::time::{Duration, Instant};

use chat_e2e::{Login, System};
use chat_testkit::WsClient;
use serde_json::{Value, json};

async fn post(sys: &System, path: &str, body: Value, bearer: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", sys.http_url()))
        .json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn refresh(sys: &System, token: &str) -> (u16, Value) {
    post(
        sys,
        "/auth/token",
        json!({"grant_type": "refresh_token", "refresh_token": token}),
        None,
    )
    .await
}

/// Waits for the close and checks it came within a second of `since`.
async fn closed_within_a_second(c: &mut WsClient, since: Instant, code: u16) {
    let closed = c.closed().await.expect("closed");
    assert_eq!(closed.code, code, "{closed:?}");
    let took = since.elapsed();
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
}

async fn hello_refused(sys: &System, token: &str) -> u16 {
    let mut c = WsClient::connect(&sys.ws_url(), None).await.expect("tcp");
    c.send_json(&json!({"type": "hello", "v": 1, "token": token}))
        .await
        .expect("hello");
    c.closed().await.expect("closed").code
}

#[tokio::test]
async fn logout_closes_the_sessions_live_websocket_within_a_second_and_it_cannot_resume() {
    let sys = System::start().await.expect("system");
    let alice = sys.login("alice").await.expect("login");
    let (mut ws, _) = WsClient::connect_as(&sys.ws_url(), &alice.token)
        .await
        .expect("connect");
    // Another session of the same user is not affected.
    let other = sys.login("alice").await.expect("second login");
    let (mut other_ws, _) = WsClient::connect_as(&sys.ws_url(), &other.token)
        .await
        .expect("connect");

    let t0 = Instant::now();
    let (status, _) = post(
        &sys,
        "/auth/logout",
        json!({"refresh_token": alice.refresh_token}),
        None,
    )
    .await;
    assert_eq!(status, 204);
    closed_within_a_second(&mut ws, t0, 4010).await;
    assert_eq!(
        hello_refused(&sys, &alice.token).await,
        4001,
        "a revoked session resumed"
    );
    let (status, body) = refresh(&sys, &alice.refresh_token).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_grant"))
    );

    other_ws
        .send_json(&json!({"type": "ping", "id": "p"}))
        .await
        .expect("ping");
    assert_eq!(other_ws.recv_type("pong").await.expect("pong")["id"], "p");
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_family_and_closes_its_sockets() {
    let sys = System::start().await.expect("system");
    let first = sys.login("bob").await.expect("login");
    let (status, rotated) = refresh(&sys, &first.refresh_token).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_string();
    assert_ne!(second, first.refresh_token, "refresh tokens rotate");
    let access = rotated["access_token"].as_str().expect("access");
    let (mut ws, _) = WsClient::connect_as(&sys.ws_url(), access)
        .await
        .expect("connect");

    // An attacker replays the stolen first token.
    let t0 = Instant::now();
    let (status, body) = refresh(&sys, &first.refresh_token).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_grant"))
    );
    closed_within_a_second(&mut ws, t0, 4010).await;
    // The whole family is dead, the legitimate newest token too.
    let (status, _) = refresh(&sys, &second).await;
    assert_eq!(status, 400);
    assert_eq!(hello_refused(&sys, access).await, 4001);
}

#[tokio::test]
async fn logout_all_closes_every_session_of_the_user() {
    let sys = System::start().await.expect("system");
    let a: Login = sys.login("carol").await.expect("login");
    let b: Login = sys.login("carol").await.expect("login");
    let (mut wa, _) = WsClient::connect_as(&sys.ws_url(), &a.token)
        .await
        .expect("a");
    let (mut wb, _) = WsClient::connect_as(&sys.ws_url(), &b.token)
        .await
        .expect("b");
    let t0 = Instant::now();
    let (status, body) = post(&sys, "/auth/logout/all", json!({}), Some(&a.token)).await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(2)));
    closed_within_a_second(&mut wa, t0, 4010).await;
    closed_within_a_second(&mut wb, t0, 4010).await;
}

#[tokio::test]
async fn the_refresh_cookie_works_only_with_the_csrf_header() {
    let sys = System::start().await.expect("system");
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/dev/login", sys.http_url()))
        .json(&json!({"username": "dave"}))
        .send()
        .await
        .expect("login");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("chat_refresh="))
        .expect("refresh cookie set")
        .to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/auth"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let pair = cookie.split(';').next().expect("name=value").to_string();
    let http = reqwest::Client::new();
    let url = format!("{}/auth/token", sys.http_url());
    let body = json!({"grant_type": "refresh_token"});
    let forged = http
        .post(&url)
        .header("cookie", &pair)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(
        forged.status().as_u16(),
        403,
        "cookie without CSRF header accepted"
    );
    let ok = http
        .post(&url)
        .header("cookie", &pair)
        .header("x-chat-csrf", "1")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    let renewed = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.starts_with("chat_refresh=crt_"));
    assert!(renewed, "the rotated refresh token goes back in the cookie");
    let body: Value = ok.json().await.expect("json");
    assert!(body["access_token"].is_string());
    assert!(
        body.get("refresh_token").is_none(),
        "cookie clients get no token in the body"
    );
}

#[tokio::test]
async fn tokens_of_other_kinds_are_not_access_tokens() {
    let sys = System::start().await.expect("system");
    let login = sys.login("erin").await.expect("login");
    // A refresh token presented as an access token.
    assert_eq!(hello_refused(&sys, &login.refresh_token).await, 4001);
    // A JWT signed with our own key but typed as an ID token.
    let pem = std::fs::read_to_string(sys.signing_key_path()).expect("key file");
    let key = chat_jwt::KeyPair::from_pkcs8_pem(&pem).expect("key");
    let user = chat_core::UserId::parse(login.user_id.clone()).expect("id");
    let exp = chat_core::time::now_ms() / 1000 + 600;
    let claims =
        chat_jwt::testing::claims(chat_e2e::ISSUER, chat_e2e::AUDIENCE, &user, "erin", exp);
    let id_token = chat_jwt::testing::typed_token(&key, "JWT", &claims);
    assert_eq!(hello_refused(&sys, &id_token).await, 4001);
    let access = chat_jwt::testing::typed_token(&key, "at+jwt", &claims);
    WsClient::connect_as(&sys.ws_url(), &access)
        .await
        .expect("the same claims as an access token are accepted");
}

#[tokio::test]
async fn a_session_ends_with_its_token_unless_an_auth_frame_renews_it() {
    // Tokens live 2 s here, so expiry is seen within the test.
    let sys = System::start_with(&[("CHAT_AUTH_ACCESS_TTL_MS", "2000")])
        .await
        .expect("system");
    let login = sys.login("frank").await.expect("login");
    let (mut ws, _) = WsClient::connect_as(&sys.ws_url(), &login.token)
        .await
        .expect("connect");
    let closed = ws.closed().await.expect("closed at expiry");
    assert_eq!(closed.code, 4011, "{closed:?}");

    let login = sys.login("frank").await.expect("login");
    let (mut ws, _) = WsClient::connect_as(&sys.ws_url(), &login.token)
        .await
        .expect("connect");
    // Someone else's token is refused and changes nothing.
    let other = sys.login("grace").await.expect("login");
    ws.send_json(&json!({"type": "auth", "id": "x", "token": other.token}))
        .await
        .expect("auth");
    let refused = ws.recv_type("error").await.expect("refused");
    assert_eq!(
        (&refused["id"], &refused["code"]),
        (&json!("x"), &json!("unauthorized"))
    );
    // Let a second boundary pass, so the refreshed token expires later
    // than the first one (JWT times are whole seconds).
    let (iat, first_exp) = (claim(&login.token, "iat"), claim(&login.token, "exp"));
    ping_until(&mut ws, iat).await;
    // A fresh token of the same user, from a refresh, renews the session.
    let (_, fresh) = refresh(&sys, &login.refresh_token).await;
    let token = fresh["access_token"].as_str().expect("fresh access token");
    ws.send_json(&json!({"type": "auth", "id": "a", "token": token}))
        .await
        .expect("auth");
    let ok = ws.recv_type("authenticated").await.expect("authenticated");
    assert_eq!(ok["id"], "a");
    assert!(ok["exp"].as_u64().expect("exp") > first_exp);
    // Alive past the first token's expiry, then closed at the new one.
    ping_until(&mut ws, first_exp).await;
    let closed = ws.closed().await.expect("closed at the new expiry");
    assert_eq!(closed.code, 4011);
}

/// A numeric claim of a JWT (read without verifying: the test's own token).
fn claim(token: &str, name: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    v[name].as_u64().expect("numeric claim")
}

/// Pings (each answered) until the wall clock is past Unix second `t`.
async fn ping_until(ws: &mut WsClient, t: u64) {
    let mut n = 0;
    while chat_core::time::now_ms() / 1000 <= t {
        n += 1;
        let id = format!("p{n}");
        ws.send_json(&json!({"type": "ping", "id": id}))
            .await
            .expect("ping");
        assert_eq!(ws.recv_type("pong").await.expect("pong")["id"], id.as_str());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn revocation_closes_the_sessions_sockets_on_every_gateway() {
    let nats = chat_testkit::NatsServer::start().await.expect("nats");
    let d = chat_e2e::deploy::Deployment::start(&nats.url(), 2, &[])
        .await
        .expect("two gateways as processes");
    let http = d.gateways[0].http_url();
    let login = chat_e2e::login(&http, "zed").await.expect("login");
    let (mut a, _) = WsClient::connect_as(&d.gateways[0].ws_url(), &login.token)
        .await
        .expect("on gateway 1");
    let (mut b, _) = WsClient::connect_as(&d.gateways[1].ws_url(), &login.token)
        .await
        .expect("on gateway 2");
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{http}/auth/logout"))
        .json(&json!({"refresh_token": login.refresh_token}))
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status().as_u16(), 204);
    closed_within_a_second(&mut a, t0, 4010).await;
    closed_within_a_second(&mut b, t0, 4010).await;
}

#[tokio::test]
async fn hostile_auth_frames_and_token_requests_get_clear_errors_and_change_nothing() {
    let sys = System::start().await.expect("system");
    let login = sys.login("mallory").await.expect("login");
    let (mut ws, _) = WsClient::connect_as(&sys.ws_url(), &login.token)
        .await
        .expect("connect");
    for (frame, code) in [
        (json!({"type": "auth", "id": "a1", "token": 5}), "malformed"),
        (json!({"type": "auth", "id": "a2"}), "malformed"),
        (
            json!({"type": "auth", "id": "a3", "token": "x".repeat(5000)}),
            "unauthorized",
        ),
        (
            json!({"type": "auth", "id": "a4", "token": login.refresh_token}),
            "unauthorized",
        ),
    ] {
        ws.send_json(&frame).await.expect("send");
        let e = ws.recv_type("error").await.expect("error");
        assert_eq!(e["code"], code, "{frame} → {e}");
    }
    ws.send_json(&json!({"type": "ping", "id": "p"}))
        .await
        .expect("ping");
    assert_eq!(
        ws.recv_type("pong").await.expect("pong")["id"],
        "p",
        "the session lives on"
    );

    for (body, status, code) in [
        (
            json!({"grant_type": "password", "username": "a"}),
            400,
            "bad_request",
        ),
        (json!({"grant_type": 7}), 400, "bad_request"),
        (
            json!({"grant_type": "refresh_token", "refresh_token": "crt_nope"}),
            400,
            "invalid_grant",
        ),
        (
            json!({"grant_type": "refresh_token", "refresh_token": "x".repeat(3000)}),
            400,
            "invalid_grant",
        ),
        (
            json!({"grant_type": "refresh_token", "refresh_token": "y".repeat(5000)}),
            400,
            "bad_request",
        ),
        (
            json!({"grant_type": "client_credentials"}),
            401,
            "invalid_client",
        ),
    ] {
        let (s, b) = post(&sys, "/auth/token", body.clone(), None).await;
        assert_eq!(
            (s, &b["error"]["code"]),
            (status, &json!(code)),
            "{body} → {b}"
        );
    }
    // Nothing of that touched the real session.
    let (s, _) = refresh(&sys, &login.refresh_token).await;
    assert_eq!(s, 200);
}
