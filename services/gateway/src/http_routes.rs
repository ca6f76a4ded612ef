//! HTTP routes of the gateway: `/ws` (WebSocket), `/` (web client), the
//! optional auth forwarding, and the ops endpoints.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use chat_platform::http::{HttpLimits, Readiness, layers, ops_router};

use crate::config::Config;
use crate::state::AppState;

/// The web client, served at `/`.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// All gateway routes with the shared layer stack.
pub fn router(st: AppState, ready: Readiness) -> Router {
    let api = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws", get(ws_upgrade))
        .route("/auth/{*rest}", any(auth_forward))
        .route("/.well-known/jwks.json", get(auth_forward))
        .with_state(st)
        .merge(ops_router(ready));
    layers(api, &HttpLimits::default())
}

/// `GET /ws`: checks Origin and the connection limit, then upgrades.
async fn ws_upgrade(
    State(st): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&st.config, &headers) {
        metrics::counter!("chat_gateway_origin_rejected_total").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if st.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let Ok(permit) = st.slots.clone().try_acquire_owned() else {
        metrics::counter!("chat_gateway_connections_rejected_total").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let limits = &st.config.limits;
    let tracker = st.sessions.clone();
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        .on_upgrade(move |socket| {
            let token = tracker.token();
            async move {
                crate::session::run(st, socket, permit).await;
                drop(token);
            }
        })
}

/// Browser origins: an explicit list (or `*`), else same host only. Clients
/// that send no Origin (native apps, services) are not browsers and pass.
pub fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if !config.allowed_origins.is_empty() {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// `/auth/*` and `/.well-known/jwks.json`: forwarded to the auth service when
/// `CHAT_GATEWAY_AUTH_UPSTREAM` is set, else 404.
async fn auth_forward(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(upstream) = &st.config.auth_upstream else {
        return (StatusCode::NOT_FOUND, "auth is not served here\n").into_response();
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = st
        .http
        .request(method, format!("{upstream}{path}"))
        .body(body);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let ctype = resp.headers().get(header::CONTENT_TYPE).cloned();
            match resp.bytes().await {
                Ok(b) => {
                    let mut out = (status, b).into_response();
                    if let Some(c) = ctype {
                        out.headers_mut().insert(header::CONTENT_TYPE, c);
                    }
                    out
                }
                Err(e) => {
                    (StatusCode::BAD_GATEWAY, format!("auth upstream: {e}\n")).into_response()
                }
            }
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("auth upstream: {e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_platform::config::MapSource;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().expect("origin"));
        }
        h
    }

    #[test]
    fn same_host_and_listed_origins_pass_foreign_ones_do_not() {
        let c = Config::from_source(&MapSource::new()).expect("config");
        assert!(origin_allowed(&c, &headers(None, "chat.example:8080")));
        assert!(origin_allowed(
            &c,
            &headers(Some("http://chat.example:8080"), "chat.example:8080")
        ));
        assert!(!origin_allowed(
            &c,
            &headers(Some("http://evil.example"), "chat.example:8080")
        ));
        let c = Config::from_source(
            &MapSource::new().with("CHAT_GATEWAY_ALLOWED_ORIGINS", "https://app.example"),
        )
        .expect("config");
        assert!(origin_allowed(
            &c,
            &headers(Some("https://app.example"), "gw:1")
        ));
        assert!(!origin_allowed(&c, &headers(Some("http://gw:1"), "gw:1")));
    }
}
