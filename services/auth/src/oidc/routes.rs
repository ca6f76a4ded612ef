//! The browser sign-in: `GET /auth/login` sends the browser to the
//! provider, `GET /auth/callback` finishes there and returns the session
//! as the HttpOnly refresh cookie (never a token in a URL), then redirects
//! to `CHAT_AUTH_AFTER_LOGIN_URL`, whose page gets its access token with
//! `POST /auth/token` (cookie + `X-Chat-Csrf: 1`).
//!
//! The login is bound to the browser that started it: `/auth/login` sets
//! a random `chat_oidc` cookie (SameSite=Lax, so the provider's redirect
//! back carries it) whose hash is stored with the login's `state`; the
//! callback needs both, once, within [`LOGIN_TTL`].

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::AuthError;
use crate::routes::AppState;

/// How long a started sign-in may take.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress at once (all users); beyond, `/auth/login` is 503.
pub const MAX_PENDING_LOGINS: usize = 100_000;
/// The cookie binding a sign-in to its browser.
pub const LOGIN_COOKIE: &str = "chat_oidc";

/// `GET /auth/login`: a fresh sign-in at the provider.
pub async fn login(State(st): State<AppState>) -> Result<Response, AuthError> {
    let Some(oidc) = st.oidc.as_ref() else {
        return Err(AuthError::NotFound(
            "OpenID Connect sign-in is not configured (CHAT_AUTH_OIDC_ISSUER)".into(),
        ));
    };
    let begun = oidc.begin().await.map_err(AuthError::from)?;
    let binding = crate::sessions::random_token()?;
    let now = chat_core::time::now_ms();
    let stored = st
        .session_store()
        .put_login(
            &chat_store::PendingLogin {
                state: begun.state,
                binding: crate::sessions::hash(&binding),
                nonce: begun.nonce,
                pkce_verifier: begun.pkce_verifier,
                created_at: now,
            },
            now.saturating_sub(millis(LOGIN_TTL)),
            MAX_PENDING_LOGINS,
        )
        .await?;
    if !stored {
        return Err(AuthError::Unavailable(
            "too many sign-ins in progress; retry shortly".into(),
        ));
    }
    metrics::counter!("chat_auth_oidc_logins_started_total").increment(1);
    let secure = if st.cookie_secure { "; Secure" } else { "" };
    let cookie = format!(
        "{LOGIN_COOKIE}={binding}; Path=/auth; HttpOnly{secure}; SameSite=Lax; Max-Age={}",
        LOGIN_TTL.as_secs()
    );
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&begun.url) {
        headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// What the provider sends back to the callback.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /auth/callback`: finishes the sign-in started by this browser.
pub async fn callback(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AuthError> {
    let Some(oidc) = st.oidc.as_ref() else {
        return Err(AuthError::NotFound(
            "OpenID Connect sign-in is not configured (CHAT_AUTH_OIDC_ISSUER)".into(),
        ));
    };
    let result = finish(&st, oidc, &headers, query.ok().map(|q| q.0)).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            metrics::counter!("chat_auth_oidc_logins_failed_total").increment(1);
            tracing::warn!(audit = "sign_in_failed", error = %e, "OIDC sign-in refused");
            e.into_response()
        }
    };
    // The binding cookie is single use, whatever happened.
    let clear = format!("{LOGIN_COOKIE}=; Path=/auth; HttpOnly; Secure; SameSite=Lax; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn finish(
    st: &AppState,
    oidc: &super::Oidc,
    headers: &HeaderMap,
    query: Option<CallbackQuery>,
) -> Result<Response, AuthError> {
    let refused = |m: &str| AuthError::SignIn(m.to_string());
    let q = query.ok_or_else(|| refused("malformed callback query"))?;
    if let Some(e) = q.error {
        return Err(refused(&format!(
            "the provider refused: {}",
            e.chars().take(100).collect::<String>()
        )));
    }
    let state = q.state.ok_or_else(|| refused("missing state"))?;
    let code = q.code.ok_or_else(|| refused("missing code"))?;
    // RFC 9207: a response naming another issuer is a mix-up attack.
    if q.iss.as_deref().is_some_and(|i| i != oidc.config().issuer) {
        return Err(refused("the response names another issuer"));
    }
    let now = chat_core::time::now_ms();
    let pending = st
        .session_store()
        .take_login(&state, now.saturating_sub(millis(LOGIN_TTL)))
        .await?
        .ok_or_else(|| refused("unknown, used or expired sign-in (state)"))?;
    let binding = crate::token_routes::cookie(headers, LOGIN_COOKIE)
        .ok_or_else(|| refused("the sign-in was not started by this browser"))?;
    if crate::sessions::hash(&binding) != pending.binding {
        return Err(refused("the sign-in was not started by this browser"));
    }
    let identity = oidc
        .finish(&code, &pending.nonce, &pending.pkce_verifier)
        .await?;
    // Users are keyed by (issuer, subject), never by email.
    let user = st.users.upsert_user(&identity).await?;
    st.limits.check_account(user.id.as_str())?;
    let issued = st.sessions.start(&st.signer, &user).await?;
    metrics::counter!("chat_auth_logins_total", "method" => "oidc").increment(1);
    tracing::info!(audit = "sign_in", user = %user.id, issuer = %identity.issuer, "OIDC sign-in");
    let mut resp = crate::token_routes::session_response(st, issued, true);
    // The browser gets the cookie and a redirect, not the token body.
    *resp.status_mut() = StatusCode::SEE_OTHER;
    *resp.body_mut() = axum::body::Body::empty();
    resp.headers_mut().remove(header::CONTENT_TYPE);
    if let Ok(v) = HeaderValue::from_str(&oidc.config().after_login_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
