//! The auth service: users (identified by issuer + subject), access tokens
//! signed with an Ed25519 key, the JWKS other services verify them with, and
//! a development-only login by username.

mod config;
mod error;
mod keyfile;
mod routes;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use chat_jwt::Signer;
use chat_platform::Shutdown;
use chat_platform::http::{HttpLimits, Listeners, Readiness, layers, probes_router, serve};
use chat_store::SqliteStore;

pub use config::Config;
pub use error::AuthError;
pub use keyfile::{KeyFileError, load_or_generate};
pub use routes::{AppState, AuthUser, DEV_ISSUER, LoginRequest, LoginResponse, UserView, router};

/// Runs the auth service until `shutdown`: loads (or creates) the signing
/// key and the user store, then serves the API (and the probes) on
/// `listeners.public` and the ops endpoints on `listeners.admin`, finishing
/// in-flight requests on shutdown.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.dev_login {
        tracing::warn!(
            "CHAT_AUTH_DEV_LOGIN is on: POST /auth/dev/login signs in anyone by \
             username without a password. FOR DEVELOPMENT ONLY, never in production"
        );
    }
    // auth does not use NATS yet: ready means key and store are loaded.
    let readiness = Readiness::new(None);
    let admin = tokio::spawn(chat_platform::http::serve_admin(
        listeners.admin,
        readiness.clone(),
        shutdown.clone(),
    ));
    let served = serve_api(&config, listeners.public, readiness, shutdown.clone()).await;
    if served.is_err() {
        admin.abort();
    }
    served?;
    admin
        .await
        .context("admin listener task")?
        .context("serving the admin listener")?;
    tracing::info!("auth service stopped");
    Ok(())
}

/// Loads the key and the store, then serves the API on `public` until
/// `shutdown`.
async fn serve_api(
    config: &Config,
    public: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let key_ready = readiness.flag("signing_key");
    let store_ready = readiness.flag("store");

    let key_file = config.key_file.clone();
    let generate = config.generate_key;
    let key = tokio::task::spawn_blocking(move || load_or_generate(&key_file, generate))
        .await
        .context("loading the signing key")??;
    key_ready.store(true, Ordering::Release);

    let db = config.db.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(db))
        .await
        .context("opening the user store")?
        .with_context(|| {
            format!(
                "opening the user store {} (CHAT_AUTH_DB)",
                config.db.display()
            )
        })?;
    store_ready.store(true, Ordering::Release);

    let signer = Signer::new(key, &config.issuer, &config.audience, config.access_ttl)
        .context("building the token signer")?;
    let state = AppState::new(Arc::new(store), signer, config.dev_login);
    let app = layers(
        probes_router(readiness).merge(router(state)),
        &HttpLimits::default(),
    );
    tracing::info!(addr = ?public.local_addr().ok(), "auth service listening");
    serve(public, app, shutdown, &config.http)
        .await
        .context("serving HTTP")?;
    Ok(())
}
