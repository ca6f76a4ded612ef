//! The auth service: users (identified by issuer + subject), sign-in
//! sessions with rotating refresh tokens (`sessions.rs`, endpoints in
//! `token_routes.rs`), revocations announced over NATS (`revocations.rs`),
//! access tokens signed with an Ed25519 key, the JWKS other services verify
//! them with, and a development-only login by username.

pub mod cli;
mod config;
mod error;
mod keyfile;
mod limits;
mod nats_callout;
pub mod oidc;
mod revocations;
mod routes;
mod service_accounts;
mod sessions;
mod token_routes;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use chat_jwt::Signer;
use chat_platform::Shutdown;
use chat_platform::http::{HttpLimits, Listeners, Readiness, layers, probes_router, serve};
use chat_store::SqliteStore;
use chat_stream::StreamSettings;

/// How long the first NATS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub use config::Config;
pub use error::AuthError;
pub use keyfile::{KeyFileError, load_or_generate};
pub use limits::RateConfig;
pub use routes::{AppState, AuthUser, DEV_ISSUER, LoginRequest, Options, UserView, router};
pub use sessions::{Revoker, SessionPolicy};
pub use token_routes::{CSRF_HEADER, REFRESH_COOKIE, TokenResponse};

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
    let nats = chat_platform::nats::connect(&config.common, "chat-auth", CONNECT_TIMEOUT).await?;
    let readiness = Readiness::new(Some(nats.clone()));
    let admin = tokio::spawn(chat_platform::http::serve_admin(
        listeners.admin,
        readiness.clone(),
        shutdown.clone(),
    ));
    let served = serve_api(
        &config,
        nats.clone(),
        listeners.public,
        readiness,
        shutdown.clone(),
    )
    .await;
    if served.is_err() {
        admin.abort();
    }
    served?;
    admin
        .await
        .context("admin listener task")?
        .context("serving the admin listener")?;
    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "draining NATS failed");
    }
    tracing::info!("auth service stopped");
    Ok(())
}

/// Loads the key and the store, then serves the API on `public` until
/// `shutdown`.
async fn serve_api(
    config: &Config,
    nats: async_nats::Client,
    public: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let key_ready = readiness.flag("signing_key");
    let store_ready = readiness.flag("store");
    let bucket_ready = readiness.flag("revocations");

    let key_file = config.key_file.clone();
    let generate = config.generate_key;
    let published_files = config.published_key_files.clone();
    let (key, published) = tokio::task::spawn_blocking(move || {
        let key = load_or_generate(&key_file, generate)?;
        let published = published_files
            .iter()
            .map(|p| load_or_generate(p, false).map(|k| k.jwk()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, KeyFileError>((key, published))
    })
    .await
    .context("loading the signing key")??;
    key_ready.store(true, Ordering::Release);

    let nats_client = nats.clone();
    let js = async_nats::jetstream::new(nats);
    let settings = StreamSettings {
        manage: config.common.manage_nats,
        replicas: config.common.stream_replicas,
        dedup_window: config.common.dedup_window,
        partitions: config.common.room_partitions,
    };
    // Entries outlive every access token that could name their session.
    let max_age = config.access_ttl + chat_jwt::DEFAULT_LEEWAY + Duration::from_secs(60);
    let bucket = chat_stream::setup::revoked_bucket(&js, &settings, max_age)
        .await
        .context("the revoked-sessions bucket")?;
    bucket_ready.store(true, Ordering::Release);

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
        .context("building the token signer")?
        .with_published_keys(published);
    let store = Arc::new(store);
    let opts = Options {
        dev_login: config.dev_login,
        cookie_secure: config.cookie_secure,
        policy: SessionPolicy {
            session_ttl: config.session_ttl,
            refresh_ttl: config.refresh_ttl,
            max_live: config.max_sessions_per_user,
        },
        rates: config.rates.clone(),
    };
    let revoker = Arc::new(revocations::KvRevoker::new(bucket));
    let mut state = AppState::new(store.clone(), store.clone(), store, revoker, signer, opts);
    if let Some(cfg) = config.oidc.clone() {
        tracing::info!(issuer = %cfg.issuer, redirect_uri = %cfg.redirect_uri, "OpenID Connect sign-in enabled");
        state = state.with_oidc(oidc::Oidc::new(cfg).context("OpenID Connect client")?);
    }
    let callout = match &config.nats_callout_seed {
        Some(seed) => {
            let verifier = chat_jwt::Verifier::with_jwks(
                &state.signer.jwks(),
                state.signer.issuer(),
                state.signer.audience(),
                chat_jwt::DEFAULT_LEEWAY,
            );
            let c =
                nats_callout::Callout::new(seed.expose(), verifier).map_err(anyhow::Error::msg)?;
            tracing::info!("answering the NATS auth callout for service accounts");
            Some(tokio::spawn(
                Arc::new(c).serve(nats_client.clone(), shutdown.clone()),
            ))
        }
        None => None,
    };
    let limits = state.limits.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.sweep();
        }
    });
    let app = layers(
        probes_router(readiness).merge(router(state)),
        &HttpLimits::default(),
    );
    tracing::info!(addr = ?public.local_addr().ok(), "auth service listening");
    let served = serve(public, app, shutdown, &config.http).await;
    sweeper.abort();
    if let Some(c) = callout {
        match c.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "auth callout"),
            Err(e) => tracing::warn!(error = %e, "auth callout task"),
            Ok(Ok(())) => {}
        }
    }
    served.context("serving HTTP")?;
    Ok(())
}
