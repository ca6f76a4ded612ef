//! HTTP routes of the gateway's public listener: `/ws` (WebSocket), `/`
//! (web client), the forwarded auth routes, and the probes (`/healthz`,
//! `/readyz`) for load balancers. `/metrics` is on the admin listener only.

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use chat_platform::http::{HttpLimits, Readiness, layers, probes_router};

use crate::state::AppState;

/// The web client, served at `/`.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// All public gateway routes with the shared layer stack.
pub fn router(st: AppState, ready: Readiness) -> Router {
    let api = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws", get(crate::upgrade::ws_upgrade))
        .merge(crate::auth_proxy::routes())
        .with_state(st)
        .merge(probes_router(ready));
    layers(api, &HttpLimits::default())
}
