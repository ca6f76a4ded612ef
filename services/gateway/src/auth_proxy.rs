//! Forwarding the documented auth routes to the auth service
//! (`CHAT_GATEWAY_AUTH_UPSTREAM`), so a browser needs one origin. Only the
//! routes in [`FORWARDED`] exist: each is matched literally and forwarded to
//! the same fixed path upstream, so no client-supplied path (`/auth/../x`,
//! `/auth/%2e%2e/x`) can reach anything else of the auth service.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};

use crate::state::AppState;

/// The auth routes a client may reach through the gateway, with their method.
pub const FORWARDED: &[(&str, MethodFilter)] = &[
    ("/auth/dev/login", MethodFilter::POST),
    ("/auth/login", MethodFilter::GET),
    ("/auth/callback", MethodFilter::GET),
    ("/auth/token", MethodFilter::POST),
    ("/auth/logout", MethodFilter::POST),
    ("/auth/logout/all", MethodFilter::POST),
    ("/auth/me", MethodFilter::GET),
    ("/.well-known/jwks.json", MethodFilter::GET),
];

/// Largest auth response passed back (a JWKS, a token): anything larger is
/// not a real answer.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Request headers passed to auth; everything else stays here. The cookie
/// carries the refresh token, `x-chat-csrf` proves a same-origin request.
const REQUEST_HEADERS: [header::HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::ACCEPT,
    header::COOKIE,
    header::HeaderName::from_static("x-chat-csrf"),
];
/// Response headers passed back (`Location`: sign-in redirects;
/// `Retry-After`: rate limits).
const RESPONSE_HEADERS: [header::HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::WWW_AUTHENTICATE,
    header::LOCATION,
    header::RETRY_AFTER,
];

/// The HTTP client of the forward: bounded time, never follows redirects
/// (a redirect from upstream goes back to the client as it is).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "auth forward client with defaults");
            reqwest::Client::new()
        })
}

/// The forwarded routes (404 for each when no upstream is configured).
pub fn routes() -> Router<AppState> {
    FORWARDED.iter().fold(Router::new(), |r, (path, method)| {
        r.route(path, on(*method, forward))
    })
}

async fn forward(
    State(st): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    matched: MatchedPath,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(upstream) = &st.config.auth_upstream else {
        return (StatusCode::NOT_FOUND, "auth is not served here\n").into_response();
    };
    // The path is the route's own literal, never the client's.
    let mut url = format!("{upstream}{}", matched.as_str());
    if let Some(q) = uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let mut req = st.http.request(method, url).body(body);
    for name in REQUEST_HEADERS {
        for v in headers.get_all(&name) {
            req = req.header(name.clone(), v);
        }
    }
    // Auth's per-IP rate limits count the browser, not this gateway (auth
    // believes the header only from its trusted proxies; a client's own
    // header of that name is never forwarded).
    if let Some(axum::Extension(axum::extract::ConnectInfo(addr))) = peer {
        req = req.header("x-chat-client-ip", addr.ip().to_string());
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "auth upstream unreachable");
            return (StatusCode::BAD_GATEWAY, "auth service unavailable\n").into_response();
        }
    };
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_RESPONSE_BYTES => {
                body.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => {
                tracing::warn!("auth upstream answer larger than {MAX_RESPONSE_BYTES} bytes");
                return (StatusCode::BAD_GATEWAY, "auth service answer too large\n")
                    .into_response();
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "auth upstream answer cut off");
                return (StatusCode::BAD_GATEWAY, "auth service unavailable\n").into_response();
            }
        }
    }
    let mut out = (resp.status(), body).into_response();
    for name in RESPONSE_HEADERS {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    // A response may set several cookies (a new one, a cleared one).
    for v in resp.headers().get_all(header::SET_COOKIE) {
        out.headers_mut().append(header::SET_COOKIE, v.clone());
    }
    out
}
