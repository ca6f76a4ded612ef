//! HTTP plumbing shared by services: `/healthz`, `/readyz`, `/metrics`, the
//! one place the tower layer stack is built, and serving with explicit
//! bounds and graceful shutdown ([`serve`]).

mod serve;

pub use serve::{ConnSlot, ServeOptions, serve};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::Shutdown;

static METRICS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    METRICS
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// Named readiness flags.
type Flags = Arc<std::sync::Mutex<Vec<(&'static str, Arc<AtomicBool>)>>>;

/// What `/readyz` checks: the NATS connection and named service flags.
#[derive(Clone, Default)]
pub struct Readiness {
    nats: Option<async_nats::Client>,
    flags: Flags,
}

impl Readiness {
    pub fn new(nats: Option<async_nats::Client>) -> Self {
        Self {
            nats,
            flags: Arc::default(),
        }
    }

    /// A flag that must be set before the service reports ready.
    pub fn flag(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut flags) = self.flags.lock() {
            flags.push((name, flag.clone()));
        }
        flag
    }

    /// `Ok` when ready, else the list of what is not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut missing = Vec::new();
        if let Some(nc) = &self.nats
            && nc.connection_state() != async_nats::connection::State::Connected
        {
            missing.push("nats: not connected".to_string());
        }
        if let Ok(flags) = self.flags.lock() {
            for (name, f) in flags.iter() {
                if !f.load(Ordering::Acquire) {
                    missing.push(format!("{name}: not ready"));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// `/healthz` (alive) and `/readyz` (dependencies usable): the probes a
/// load balancer or kubelet uses. Served on the admin listener, and on a
/// public listener where a load balancer checks it.
pub fn probes_router(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready.check() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(missing) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", missing.join("; ")),
                        ),
                    }
                }
            }),
        )
}

/// The admin listener's routes: the probes and `/metrics` (Prometheus).
/// Never merged into a public router: metrics name internals.
pub fn ops_router(ready: Readiness) -> Router {
    let handle = metrics_handle();
    probes_router(ready).route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                match handle {
                    Some(h) => (StatusCode::OK, h.render()).into_response(),
                    None => {
                        (StatusCode::SERVICE_UNAVAILABLE, "no metrics recorder\n").into_response()
                    }
                }
            }
        }),
    )
}

/// Serves the ops routes on an admin `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    ready: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = layers(ops_router(ready), &HttpLimits::default());
    serve(listener, app, shutdown, &ServeOptions::admin()).await
}

/// The two listeners of a service with a public API (gateway, auth): the
/// public one, and the admin one for probes and metrics (keep it off the
/// internet: bind it to loopback or a cluster-internal address).
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// Limits of the HTTP layer stack.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Longest time a request may take (408 above); not applied to upgraded
    /// WebSocket connections, which outlive their request.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The tower stack every HTTP service uses, outermost first:
/// - catch-panic outermost, so a panicking handler still yields a 500 and
///   the connection survives;
/// - sensitive headers are marked before tracing, so tokens never reach logs;
/// - tracing sees every request, including ones rejected by the limits below;
/// - the timeout bounds handler time, and the body limit rejects oversized
///   bodies before a handler buffers them.
pub fn layers(router: Router, limits: &HttpLimits) -> Router {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::sensitive_headers::SetSensitiveHeadersLayer;
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::TraceLayer;

    router
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
            axum::http::header::COOKIE,
        ]))
        .layer(CatchPanicLayer::new())
}
