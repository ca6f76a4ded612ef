//! The auth routes driven in-process with `oneshot`: no socket.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chat_auth::{AppState, router};
use chat_core::UserId;
use chat_jwt::{DEFAULT_LEEWAY, KeyPair, Signer, Verifier};
use chat_store::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt as _;

struct App {
    router: Router,
    key: KeyPair,
}

/// Records what would be announced to the gateways.
#[derive(Default)]
pub struct Recorded(pub std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl chat_auth::Revoker for Recorded {
    async fn revoked(&self, _user: &UserId, sessions: &[String]) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(sessions);
        Ok(())
    }
}

fn app(dev_login: bool) -> App {
    let key = KeyPair::generate().expect("key");
    let signer = Signer::new(
        key.clone(),
        "urn:chat:auth",
        "chat",
        Duration::from_secs(900),
    )
    .expect("signer");
    let store = Arc::new(SqliteStore::in_memory().expect("store"));
    let opts = chat_auth::Options {
        dev_login,
        cookie_secure: true,
        policy: chat_auth::SessionPolicy {
            session_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(600),
            max_live: 3,
        },
        rates: chat_auth::RateConfig {
            ip_per_min: std::num::NonZeroU32::new(1000).expect("nonzero"),
            account_per_min: std::num::NonZeroU32::new(1000).expect("nonzero"),
            trusted_proxies: Vec::new(),
        },
    };
    let revoked = Arc::new(Recorded::default());
    App {
        router: router(AppState::new(
            store.clone(),
            store.clone(),
            store,
            revoked,
            signer,
            opts,
        )),
        key,
    }
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

fn login(body: &str) -> Request<Body> {
    Request::post("/auth/dev/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn me(token: &str) -> Request<Body> {
    Request::get("/auth/me")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn dev_login_returns_a_bearer_token_for_the_lower_cased_user() {
    let app = app(true);
    let (status, body) = call(&app.router, login(r#"{"username":"Alice"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user"]["name"], "alice");
    let token = body["access_token"].as_str().expect("token");
    let claims = Verifier::with_jwks(&app.key.jwks(), "urn:chat:auth", "chat", DEFAULT_LEEWAY)
        .verify(token)
        .await
        .expect("token verifies with the service key");
    assert_eq!(
        claims.user.as_str(),
        body["user"]["id"].as_str().expect("id")
    );
    assert_eq!(claims.name, "alice");
}

#[tokio::test]
async fn the_same_username_always_maps_to_the_same_user() {
    let app = app(true);
    let (_, first) = call(&app.router, login(r#"{"username":"bob"}"#)).await;
    let (_, again) = call(&app.router, login(r#"{"username":"BOB"}"#)).await;
    let (_, other) = call(&app.router, login(r#"{"username":"carol"}"#)).await;
    assert_eq!(first["user"]["id"], again["user"]["id"]);
    assert_ne!(first["user"]["id"], other["user"]["id"]);
}

#[tokio::test]
async fn bad_usernames_and_bodies_are_json_bad_requests() {
    let app = app(true);
    for body in [
        r#"{"username":""}"#,
        r#"{"username":"no spaces"}"#,
        r#"{"username":"waaaaaaaaaaaaaaaaaaaaaaaaaaaaaaay"}"#,
        r#"{"user":"alice"}"#,
        "not json",
    ] {
        let (status, json) = call(&app.router, login(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(json["error"]["code"], "bad_request", "{body}");
        assert!(json["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn dev_login_is_a_json_404_when_disabled() {
    let app = app(false);
    let (status, json) = call(&app.router, login(r#"{"username":"alice"}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "not_found");
}

#[tokio::test]
async fn the_jwks_publishes_the_signing_key() {
    let app = app(false);
    let req = Request::get("/.well-known/jwks.json")
        .body(Body::empty())
        .expect("request");
    let (status, json) = call(&app.router, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, serde_json::to_value(app.key.jwks()).expect("json"));
}

#[tokio::test]
async fn me_returns_the_signed_in_user() {
    let app = app(true);
    let (_, login) = call(&app.router, login(r#"{"username":"dave"}"#)).await;
    let token = login["access_token"].as_str().expect("token");
    let (status, json) = call(&app.router, me(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, json!({ "id": login["user"]["id"], "name": "dave" }));
}

#[tokio::test]
async fn me_without_a_valid_token_is_unauthorized() {
    let app = app(true);
    let no_header = Request::get("/auth/me").body(Body::empty()).expect("req");
    let (status, json) = call(&app.router, no_header).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"]["code"], "unauthorized");

    let foreign = KeyPair::generate().expect("key");
    let (token, _) = Signer::new(foreign, "urn:chat:auth", "chat", Duration::from_secs(60))
        .expect("signer")
        .issue(&UserId::parse("u1").expect("id"), "x")
        .expect("issue");
    let (status, _) = call(&app.router, me(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let expired = Signer::new(
        app.key.clone(),
        "urn:chat:auth",
        "chat",
        Duration::from_secs(60),
    )
    .expect("signer")
    .issue_with_exp(&UserId::parse("u1").expect("id"), "x", 1)
    .expect("issue");
    let resp = app
        .router
        .clone()
        .oneshot(me(&expired))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
}

#[tokio::test]
async fn me_for_a_validly_signed_but_unknown_user_is_not_found() {
    let app = app(true);
    let (token, _) = Signer::new(
        app.key.clone(),
        "urn:chat:auth",
        "chat",
        Duration::from_secs(60),
    )
    .expect("signer")
    .issue(&UserId::parse("u-ghost").expect("id"), "ghost")
    .expect("issue");
    let (status, json) = call(&app.router, me(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "not_found");
}
