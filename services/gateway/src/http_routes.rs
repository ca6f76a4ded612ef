//! HTTP routes of the gateway's public listener: `/ws` (WebSocket), `/`
//! (web client), the forwarded auth routes, and the probes (`/healthz`,
//! `/readyz`) for load balancers. `/metrics` is on the admin listener only.

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chat_platform::http::{ConnSlot, HttpLimits, Readiness, layers, probes_router};

use crate::state::AppState;

/// The web client, served at `/`.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// All public gateway routes with the shared layer stack.
pub fn router(st: AppState, ready: Readiness) -> Router {
    let api = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws", get(ws_upgrade))
        .merge(crate::auth_proxy::routes())
        .with_state(st)
        .merge(probes_router(ready));
    layers(api, &HttpLimits::default())
}

/// `GET /ws`: checks Origin, then upgrades; the session takes over the
/// socket's connection slot.
async fn ws_upgrade(
    State(st): State<AppState>,
    slot: Option<axum::Extension<ConnSlot>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !st.origins.allows(&headers) {
        metrics::counter!("chat_gateway_origin_rejected_total").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if st.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let permit = slot.and_then(|s| s.0.take());
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
