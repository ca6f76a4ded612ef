//! The whole service over a real socket: `run` with its key file and
//! database, verified from outside through the published JWKS.

use std::path::Path;
use std::time::Duration;

use chat_auth::{Config, run};
use chat_jwt::{DEFAULT_LEEWAY, Verifier};
use chat_platform::Shutdown;
use chat_platform::config::MapSource;
use chat_testkit::{NatsServer, within};
use serde_json::{Value, json};

struct Running {
    base: String,
    admin: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        within(Duration::from_secs(10), "auth to stop", self.task)
            .await
            .expect("task joined")
            .expect("run returned Ok");
    }
}

fn config(dir: &Path, dev_login: bool, nats: &NatsServer) -> Config {
    let src = MapSource::new()
        .with("CHAT_NATS_URL", nats.url())
        .with_all(chat_testkit::service_env(chat_testkit::Role::Auth))
        .with("CHAT_AUTH_DB", dir.join("auth.db").display().to_string())
        .with(
            "CHAT_AUTH_KEY_FILE",
            dir.join("key.pem").display().to_string(),
        )
        .with("CHAT_AUTH_DEV_LOGIN", dev_login.to_string())
        .with("CHAT_AUTH_LISTEN", "127.0.0.1:0")
        .with("CHAT_AUTH_ADMIN_LISTEN", "127.0.0.1:0");
    Config::from_source(&src).expect("config")
}

async fn start(config: Config) -> Running {
    let public = tokio::net::TcpListener::bind(config.listen)
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .expect("bind admin");
    let base = format!("http://{}", public.local_addr().expect("addr"));
    let admin_base = format!("http://{}", admin.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let listeners = chat_platform::http::Listeners { public, admin };
    let task = tokio::spawn(run(config, listeners, shutdown.clone()));
    let http = reqwest::Client::new();
    chat_testkit::eventually(Duration::from_secs(10), "auth ready", || {
        let req = http.get(format!("{base}/readyz"));
        async move { req.send().await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    Running {
        base,
        admin: admin_base,
        shutdown,
        task,
    }
}

async fn login(base: &str, username: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base}/auth/dev/login"))
        .json(&json!({ "username": username }))
        .send()
        .await
        .expect("login request");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("login json")
}

#[tokio::test]
async fn a_token_from_login_verifies_against_the_jwks_fetched_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().await.expect("nats");
    let auth = start(config(dir.path(), true, &nats)).await;

    let body = login(&auth.base, "alice").await;
    let token = body["access_token"].as_str().expect("token");
    let verifier = Verifier::remote(
        format!("{}/.well-known/jwks.json", auth.base),
        "urn:chat:auth",
        "chat",
        DEFAULT_LEEWAY,
    )
    .expect("verifier");
    let claims = verifier.verify(token).await.expect("verifies");
    assert_eq!(
        claims.user.as_str(),
        body["user"]["id"].as_str().expect("id")
    );
    assert_eq!(claims.name, "alice");

    let me: Value = reqwest::Client::new()
        .get(format!("{}/auth/me", auth.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("me json");
    assert_eq!(me["id"], body["user"]["id"]);

    let metrics = reqwest::get(format!("{}/metrics", auth.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("chat_auth_logins_total"), "{metrics}");
    let public = reqwest::get(format!("{}/metrics", auth.base))
        .await
        .expect("public /metrics");
    assert_eq!(
        public.status(),
        404,
        "metrics are on the admin listener only"
    );
    auth.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_the_signing_key_and_the_user_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().await.expect("nats");
    let first = start(config(dir.path(), true, &nats)).await;
    let before = login(&first.base, "bob").await;
    let old_token = before["access_token"].as_str().expect("token").to_string();
    first.stop().await;

    let second = start(config(dir.path(), true, &nats)).await;
    let after = login(&second.base, "bob").await;
    assert_eq!(before["user"]["id"], after["user"]["id"]);
    let me = reqwest::Client::new()
        .get(format!("{}/auth/me", second.base))
        .bearer_auth(&old_token)
        .send()
        .await
        .expect("me");
    assert_eq!(
        me.status(),
        200,
        "a token from before the restart still works"
    );
    second.stop().await;
}

#[tokio::test]
async fn dev_login_is_not_found_unless_enabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().await.expect("nats");
    let auth = start(config(dir.path(), false, &nats)).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/dev/login", auth.base))
        .json(&json!({ "username": "alice" }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    auth.stop().await;
}

#[tokio::test]
async fn start_fails_clearly_without_a_key_file_when_generation_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().await.expect("nats");
    let mut config = config(dir.path(), false, &nats);
    config.generate_key = false;
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let listeners = chat_platform::http::Listeners {
        public: bind().await.expect("bind"),
        admin: bind().await.expect("bind"),
    };
    let err = within(
        Duration::from_secs(10),
        "run to fail",
        run(config, listeners, Shutdown::new()),
    )
    .await
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    assert!(err.contains("CHAT_AUTH_GENERATE_KEY"), "{err}");
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_while_the_old_key_is_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().await.expect("nats");
    let verifier_of = |base: &str| {
        Verifier::remote(
            format!("{base}/.well-known/jwks.json"),
            "urn:chat:auth",
            "chat",
            DEFAULT_LEEWAY,
        )
        .expect("verifier")
    };
    // Before: signing with key A.
    let first = start(config(dir.path(), true, &nats)).await;
    let old_token = login(&first.base, "kim").await["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    first.stop().await;
    let (key_a, key_b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    std::fs::rename(dir.path().join("key.pem"), &key_a).expect("move key A");

    // Rotation: sign with the new key B, keep publishing A.
    let mut rotated = config(dir.path(), true, &nats);
    rotated.key_file = key_b.clone();
    rotated.published_key_files = vec![key_a.clone()];
    let second = start(rotated).await;
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", second.base))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2), "{jwks}");
    let new_token = login(&second.base, "kim").await["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let v = verifier_of(&second.base);
    assert!(
        v.verify(&old_token).await.is_ok(),
        "old-key token refused during the overlap"
    );
    assert!(v.verify(&new_token).await.is_ok());
    second.stop().await;

    // After the old tokens expired: A is no longer published, nor accepted.
    let mut done = config(dir.path(), true, &nats);
    done.key_file = key_b;
    let third = start(done).await;
    let v = verifier_of(&third.base);
    assert!(matches!(
        v.verify(&old_token).await,
        Err(chat_jwt::VerifyError::UnknownKey(_))
    ));
    assert!(v.verify(&new_token).await.is_ok());
    third.stop().await;
}
