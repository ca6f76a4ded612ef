//! The auth HTTP API: dev login, the JWKS, and `/auth/me` (session
//! endpoints are in `token_routes.rs`); plus the `AuthUser` extractor that
//! turns a bearer token into verified claims.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chat_jwt::{DEFAULT_LEEWAY, Jwks, Signer, Verifier};
use chat_store::{Identity, SessionStore, UserStore};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::error::AuthError;
use crate::sessions::{Revoker, SessionPolicy, SessionService};

/// `iss` of identities created by dev login; a real OIDC issuer URL can
/// never equal it, so dev users never collide with Google users.
pub const DEV_ISSUER: &str = "dev";

/// Longest dev-login username.
const MAX_USERNAME: usize = 32;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) users: Arc<dyn UserStore>,
    pub(crate) service_accounts: Arc<dyn chat_store::ServiceAccountStore>,
    pub(crate) sessions: SessionService,
    pub(crate) signer: Signer,
    verifier: Verifier,
    jwks: Arc<Jwks>,
    dev_login: bool,
    /// Mark the refresh cookie `Secure` (`CHAT_AUTH_COOKIE_SECURE`).
    pub(crate) cookie_secure: bool,
    /// `Max-Age` of the refresh cookie.
    pub(crate) refresh_ttl_secs: u64,
    /// OpenID Connect sign-in, when configured.
    pub(crate) oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Rate limits of the sign-in and token endpoints.
    pub(crate) limits: crate::limits::Limits,
}

/// Options of [`AppState::new`].
#[derive(Debug, Clone)]
pub struct Options {
    pub dev_login: bool,
    pub cookie_secure: bool,
    pub policy: SessionPolicy,
    pub rates: crate::limits::RateConfig,
}

impl AppState {
    /// State over the stores, issuing with `signer`; tokens are verified
    /// with the signer's own JWKS (current and published keys), so auth
    /// never fetches its own JWKS.
    pub fn new(
        users: Arc<dyn UserStore>,
        service_accounts: Arc<dyn chat_store::ServiceAccountStore>,
        sessions: Arc<dyn SessionStore>,
        revoker: Arc<dyn Revoker>,
        signer: Signer,
        opts: Options,
    ) -> Self {
        let jwks = signer.jwks();
        let verifier =
            Verifier::with_jwks(&jwks, signer.issuer(), signer.audience(), DEFAULT_LEEWAY);
        Self {
            users,
            service_accounts,
            sessions: SessionService::new(sessions, revoker, opts.policy),
            signer,
            verifier,
            jwks: Arc::new(jwks),
            dev_login: opts.dev_login,
            cookie_secure: opts.cookie_secure,
            refresh_ttl_secs: opts.policy.refresh_ttl.as_secs(),
            oidc: None,
            limits: crate::limits::Limits::new(&opts.rates),
        }
    }

    /// Enables OpenID Connect sign-in (`/auth/login`, `/auth/callback`).
    pub fn with_oidc(mut self, oidc: crate::oidc::Oidc) -> Self {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    pub(crate) fn session_store(&self) -> &dyn SessionStore {
        self.sessions.store()
    }

    /// The claims of the request's bearer token, if it has one; a bad one
    /// is an error.
    pub(crate) async fn bearer(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<chat_jwt::Claims>, AuthError> {
        match bearer_token(headers) {
            None => Ok(None),
            Some(t) => Ok(Some(self.verifier.verify(t).await?)),
        }
    }
}

/// The auth routes (without ops endpoints or layers; `run` adds those).
/// Sign-in and token routes are rate limited per client IP.
pub fn router(state: AppState) -> Router {
    let limited = Router::new()
        .route("/auth/dev/login", post(dev_login))
        .route("/auth/login", get(crate::oidc::routes::login))
        .route("/auth/callback", get(crate::oidc::routes::callback))
        .merge(crate::token_routes::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::per_ip,
        ));
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/auth/me", get(me))
        .merge(limited)
        .with_state(state)
}

/// Body of `POST /auth/dev/login`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub username: String,
}

/// A user as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserView {
    pub id: String,
    pub name: String,
}

/// `POST /auth/dev/login`: signs in anyone by username, with no password.
/// Exists for local development and tests; 404 unless `CHAT_AUTH_DEV_LOGIN`.
#[instrument(skip_all, fields(username))]
async fn dev_login(
    State(state): State<AppState>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, AuthError> {
    if !state.dev_login {
        return Err(AuthError::NotFound(
            "dev login is disabled (CHAT_AUTH_DEV_LOGIN=false)".into(),
        ));
    }
    let Json(req) = body.map_err(|e| AuthError::BadRequest(e.body_text()))?;
    let username = valid_username(&req.username)?;
    tracing::Span::current().record("username", username.as_str());
    tracing::warn!(
        username = %username,
        "DEV LOGIN used: anyone can sign in as anyone; for development only"
    );
    let user = state
        .users
        .upsert_user(&Identity {
            issuer: DEV_ISSUER.into(),
            subject: username.clone(),
            name: username,
            email: None,
        })
        .await?;
    state.limits.check_account(user.id.as_str())?;
    let issued = state.sessions.start(&state.signer, &user).await?;
    metrics::counter!("chat_auth_logins_total", "method" => "dev").increment(1);
    Ok(crate::token_routes::session_response(&state, issued, false))
}

/// `GET /.well-known/jwks.json`: the public keys other services verify with.
async fn jwks(State(state): State<AppState>) -> Json<Jwks> {
    Json(state.jwks.as_ref().clone())
}

/// `GET /auth/me`: the signed-in user, as stored now.
#[instrument(skip_all, fields(user = %auth.0.user))]
async fn me(State(state): State<AppState>, auth: AuthUser) -> Result<Json<UserView>, AuthError> {
    let user = state
        .users
        .get_user(&auth.0.user)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("user {} not found", auth.0.user)))?;
    Ok(Json(UserView {
        id: user.id.to_string(),
        name: user.name,
    }))
}

/// Lower-cases and checks a dev-login username: 1..=32 of `[a-z0-9_-]`.
fn valid_username(raw: &str) -> Result<String, AuthError> {
    let name = raw.trim().to_lowercase();
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(AuthError::BadRequest(format!(
            "username must be 1 to {MAX_USERNAME} characters of a-z, 0-9, '_' and '-'"
        )))
    }
}

/// The verified caller of a request: handlers take this instead of reading
/// the `Authorization` header themselves.
#[derive(Debug, Clone)]
pub struct AuthUser(pub chat_jwt::Claims);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or(AuthError::MissingToken)?;
        match state.verifier.verify(token).await {
            Ok(claims) => Ok(Self(claims)),
            Err(e) => {
                metrics::counter!("chat_auth_token_rejections_total").increment(1);
                Err(e.into())
            }
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lower_cased_and_limited_to_a_safe_alphabet() {
        assert_eq!(valid_username("Alice_1").ok().as_deref(), Some("alice_1"));
        assert_eq!(valid_username("a-b").ok().as_deref(), Some("a-b"));
        assert!(valid_username(&"x".repeat(32)).is_ok());
        for bad in ["", "   ", &"x".repeat(33), "al ice", "bob!", "zoë", "a.b"] {
            assert!(valid_username(bad).is_err(), "{bad:?} accepted");
        }
    }
}
