//! The session endpoints: `POST /auth/token` (refresh), `POST /auth/logout`
//! (this session) and `POST /auth/logout/all` (every session of the user).
//!
//! A refresh token comes in the JSON body (apps, services) or in the
//! `chat_refresh` cookie (browsers: HttpOnly, Secure, SameSite=Strict,
//! Path=/auth). A request that relies on the cookie must carry the header
//! `X-Chat-Csrf: 1`: a cross-site page cannot add a custom header without a
//! CORS preflight, which nothing here answers, so it cannot ride on the
//! cookie.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::routes::{AppState, AuthUser, UserView};
use crate::sessions::Issued;

/// Name of the refresh-token cookie.
pub const REFRESH_COOKIE: &str = "chat_refresh";
/// Header a cookie-authenticated request must carry (value `1`).
pub const CSRF_HEADER: &str = "x-chat-csrf";
/// Longest accepted body of these endpoints.
const MAX_BODY: usize = 4096;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/token", post(token))
        .route("/auth/logout", post(logout))
        .route("/auth/logout/all", post(logout_all))
}

/// Body of `POST /auth/token`: JSON or `application/x-www-form-urlencoded`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub grant_type: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Client credentials (service accounts), unless sent with HTTP Basic.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Client credentials: narrow the token to these of the account's
    /// scopes (space-separated); absent: all of them.
    #[serde(default)]
    pub scope: Option<String>,
}

/// Answer of a sign-in or a refresh. `refresh_token` is in the body only
/// when the request did not use the cookie.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The token's scopes (service accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub user: UserView,
}

/// Where the refresh token came from.
enum Presented {
    Body(String),
    Cookie(String),
}

/// The refresh token of a request: the body's, else the cookie's (which
/// requires the CSRF header).
fn presented(headers: &HeaderMap, body: Option<String>) -> Result<Option<Presented>, AuthError> {
    if let Some(t) = body {
        return Ok(Some(Presented::Body(t)));
    }
    let Some(cookie) = cookie(headers, REFRESH_COOKIE) else {
        return Ok(None);
    };
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if csrf != Some("1") {
        return Err(AuthError::Csrf(format!(
            "a request authenticated by cookie must carry the header {CSRF_HEADER}: 1"
        )));
    }
    Ok(Some(Presented::Cookie(cookie)))
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, AuthError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    if body.len() > MAX_BODY {
        return Err(AuthError::BadRequest(format!(
            "body larger than {MAX_BODY} bytes"
        )));
    }
    serde_json::from_slice(body).map_err(|e| AuthError::BadRequest(format!("body: {e}")))
}

/// `POST /auth/token`: `grant_type` `refresh_token` or
/// `client_credentials`.
async fn token(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AuthError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let req: TokenRequest = if form {
        if body.len() > MAX_BODY {
            return Err(AuthError::BadRequest(format!(
                "body larger than {MAX_BODY} bytes"
            )));
        }
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| AuthError::BadRequest(format!("body: {e}")))?
    } else {
        parse_body(&body)?
    };
    match req.grant_type.as_str() {
        "refresh_token" => {}
        "client_credentials" => return client_credentials(&st, &headers, req).await,
        other => {
            return Err(AuthError::BadRequest(format!(
                "unsupported grant_type {other:?} (use \"refresh_token\" or \"client_credentials\")"
            )));
        }
    }
    let Some(presented) = presented(&headers, req.refresh_token)? else {
        return Err(AuthError::InvalidGrant(
            "no refresh token in the body or the chat_refresh cookie".into(),
        ));
    };
    let (raw, via_cookie) = match presented {
        Presented::Body(t) => (t, false),
        Presented::Cookie(t) => (t, true),
    };
    // Per account: the session's user, when the token names one.
    if let Some(session) = st.sessions.session_of(&raw).await? {
        st.limits.check_account(session.user.as_str())?;
    }
    let result = st
        .sessions
        .refresh(&st.signer, st.users.as_ref(), &raw)
        .await;
    match result {
        Ok(issued) => {
            metrics::counter!("chat_auth_refreshes_total", "result" => "ok").increment(1);
            Ok(session_response(&st, issued, via_cookie))
        }
        Err(e) => {
            metrics::counter!("chat_auth_refreshes_total", "result" => "refused").increment(1);
            let mut resp = e.into_response();
            if via_cookie {
                clear_cookie(resp.headers_mut());
            }
            Ok(resp)
        }
    }
}

/// The client-credentials grant: id and secret from HTTP Basic or the body.
async fn client_credentials(
    st: &AppState,
    headers: &HeaderMap,
    req: TokenRequest,
) -> Result<Response, AuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(i, p)| (i.to_string(), p.to_string()))
        });
    let (id, secret) = match (basic, req.client_id, req.client_secret) {
        (Some(pair), _, _) => pair,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => {
            return Err(AuthError::InvalidClient(
                "client_id and client_secret are required (body or HTTP Basic)".into(),
            ));
        }
    };
    let (access_token, expires_in, account) =
        crate::service_accounts::token(st, &id, &secret, req.scope.as_deref()).await?;
    let body = TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: None,
        scope: Some(account.scopes.join(" ")),
        user: UserView {
            id: account.user.to_string(),
            name: account.name,
        },
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The answer to a sign-in or refresh: tokens in the body, and for cookie
/// clients the refresh token in the cookie instead.
pub fn session_response(st: &AppState, issued: Issued, cookie_only: bool) -> Response {
    let cookie = refresh_cookie(st, &issued.refresh_token);
    let user = UserView {
        id: issued.user.id.to_string(),
        name: issued.user.name.clone(),
    };
    let body = TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer".into(),
        expires_in: issued.expires_in,
        refresh_token: (!cookie_only).then_some(issued.refresh_token),
        scope: None,
        user,
    };
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /auth/logout`: ends the session of the presented refresh token
/// (body or cookie), or else of the bearer token's `sid`. Always clears
/// the cookie; 204 even when the session had already ended.
async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AuthError> {
    #[derive(Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LogoutRequest {
        #[serde(default)]
        refresh_token: Option<String>,
    }
    let req: LogoutRequest = parse_body(&body)?;
    let session = match presented(&headers, req.refresh_token)? {
        Some(Presented::Body(t) | Presented::Cookie(t)) => {
            st.sessions.session_of(&t).await?.map(|s| (s.user, s.id))
        }
        None => match st.bearer(&headers).await? {
            Some(claims) => claims.session.map(|sid| (claims.user, sid)),
            None => None,
        },
    };
    if let Some((user, sid)) = session {
        st.sessions.revoke(&user, &sid, "logout").await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    clear_cookie(resp.headers_mut());
    Ok(resp)
}

/// `POST /auth/logout/all` (bearer): ends every session of the caller.
async fn logout_all(State(st): State<AppState>, auth: AuthUser) -> Result<Response, AuthError> {
    let n = st.sessions.revoke_all(&auth.0.user, "logout_all").await?;
    let mut resp = Json(serde_json::json!({ "revoked": n })).into_response();
    clear_cookie(resp.headers_mut());
    Ok(resp)
}

fn refresh_cookie(st: &AppState, token: &str) -> String {
    let secure = if st.cookie_secure { "; Secure" } else { "" };
    format!(
        "{REFRESH_COOKIE}={token}; Path=/auth; HttpOnly{secure}; SameSite=Strict; Max-Age={}",
        st.refresh_ttl_secs
    )
}

fn clear_cookie(headers: &mut HeaderMap) {
    let v = format!("{REFRESH_COOKIE}=; Path=/auth; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&v) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}
