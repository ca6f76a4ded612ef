//! The gateway: holds client WebSocket connections, authenticates them with
//! access tokens (JWKS), turns client frames into room events and service
//! requests, and writes deliveries from fanout to the right sockets. It also
//! serves the web client and, optionally, forwards `/auth/*` to the auth
//! service so a browser needs one origin.

pub mod auth_proxy;
pub mod co_presence;
pub mod commands;
pub mod config;
pub mod error;
pub mod fill;
pub mod frame;
pub mod hello;
pub mod http_routes;
pub mod ordering;
pub mod origin;
pub mod presence;
pub mod queue;
pub mod registry;
pub mod revocation;
pub mod scopes;
pub mod session;
pub mod start;
pub mod state;
pub mod upgrade;
pub mod writer;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use chat_core::events::{Delivery, Heads};
use chat_core::names;
use chat_platform::Shutdown;
use chat_platform::http::Listeners;
use chat_platform::http::Readiness;
use chat_stream::{RoomLog, StreamSettings};
use futures::StreamExt;
use tokio_util::task::TaskTracker;

pub use config::{Config, Limits};
pub use http_routes::router;
pub use state::AppState;

/// Runs a gateway until `shutdown` (clients on `listeners.public`, ops
/// endpoints on `listeners.admin`), then closes every session with 1001
/// (reconnect and resume), waits up to the grace period for them, and
/// drains NATS.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let bound = listeners.public.local_addr().context("public listener")?;
    let public_url = origin::public_url(config.public_url.as_deref(), bound);
    let origins = origin::AllowedOrigins::resolve(&config.allowed_origins, &public_url);
    let gw = config.gateway_id.clone();
    let nats = chat_platform::nats::connect(
        &config.common,
        &format!("gateway-{gw}"),
        Duration::from_secs(30),
    )
    .await
    .context("gateway")?;
    let js = jetstream::new(nats.clone());
    let settings = StreamSettings {
        manage: config.common.manage_nats,
        replicas: config.common.stream_replicas,
        dedup_window: config.common.dedup_window,
        partitions: config.common.room_partitions,
    };
    let stream = chat_stream::setup::room_stream(&js, &settings).await?;
    let verifier = chat_jwt::Verifier::remote(
        config.jwks_url.clone(),
        &config.token_issuer,
        &config.token_audience,
        config.token_leeway,
    )
    .context("token verifier")?;
    let ready = Readiness::new(Some(nats.clone()));
    let deliveries_ready = ready.flag("deliveries");
    let revocations_ready = ready.flag("revocations");
    let revocations = Arc::new(revocation::Revocations::default());
    let st = AppState::new(state::State {
        config: config.clone(),
        nats: nats.clone(),
        log: RoomLog::new(js.clone(), stream).with_tail_cache(config.common.room_tail_cache),
        revocations: revocations.clone(),
        verifier: Arc::new(verifier),
        registry: registry::Registry::new(config.limits.max_changes_while_connecting),
        send_slots: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_sends_in_flight,
        )),
        presence: presence::PresenceReporter::new(nats.clone(), gw.clone()),
        sessions: TaskTracker::new(),
        origins,
        next_session: Arc::new(AtomicU64::new(1)),
        shutdown: shutdown.clone(),
        http: auth_proxy::client(),
    });
    let admin = tokio::spawn(chat_platform::http::serve_admin(
        listeners.admin,
        ready.clone(),
        shutdown.clone(),
    ));

    // This gateway's own deliveries and the room-wide ones every gateway
    // gets, handled by one task.
    let own = nats
        .subscribe(names::gateway_deliver(&gw))
        .await
        .context("subscribe to deliveries")?;
    let room_wide = nats
        .subscribe(names::ROOM_DELIVER)
        .await
        .context("subscribe to room-wide deliveries")?;
    let mut deliveries = futures::stream::select(own, room_wide);
    let mut heads = nats
        .subscribe(names::gateway_heads(&gw))
        .await
        .context("subscribe to heads")?;
    chat_platform::nats::round_trip(&nats)
        .await
        .map_err(|e| anyhow::anyhow!("deliveries subscription: {e}"))?;
    deliveries_ready.store(true, Ordering::Release);
    let registry = st.registry.clone();
    let delivery_task = tokio::spawn(async move {
        while let Some(msg) = deliveries.next().await {
            let all = match Delivery::decode_all(&msg.payload) {
                Ok(all) => all,
                Err(e) => {
                    metrics::counter!("chat_gateway_bad_deliveries_total").increment(1);
                    tracing::warn!(error = %e, "unreadable delivery dropped");
                    continue;
                }
            };
            // In order: a coalesced message holds a run of room events.
            for d in all {
                match registry.deliver(d) {
                    Ok(n) => {
                        metrics::counter!("chat_gateway_deliveries_total").increment(1);
                        metrics::counter!("chat_gateway_delivered_frames_total")
                            .increment(n as u64);
                    }
                    Err(e) => {
                        metrics::counter!("chat_gateway_bad_deliveries_total").increment(1);
                        tracing::warn!(error = %e, "invalid delivery dropped");
                    }
                }
            }
        }
    });
    let registry = st.registry.clone();
    let heads_task = tokio::spawn(async move {
        while let Some(msg) = heads.next().await {
            match serde_json::from_slice::<Heads>(&msg.payload) {
                Ok(h) => {
                    for head in &h.heads {
                        let n = registry.head(head);
                        tracing::debug!(target: "chat_gateway::heads", room = %head.room, seq = head.seq, users = head.users.len(), sessions = n, "heads received");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable heads dropped"),
            }
        }
    });
    let revocation_task = tokio::spawn(revocations.follow(
        js,
        st.registry.clone(),
        revocations_ready,
        shutdown.clone(),
    ));
    let heartbeat = tokio::spawn(st.presence.clone().heartbeat_loop(
        st.registry.clone(),
        config.heartbeat,
        shutdown.clone(),
    ));

    tracing::info!(
        gateway = %gw,
        addr = %bound,
        url = %public_url,
        origins = %st.origins.describe(),
        "gateway listening"
    );
    let http_options = config.http.clone();
    let app = router(st.clone(), ready);
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        chat_platform::http::serve(listeners.public, app, stop, &http_options).await
    });

    shutdown.cancelled().await;
    let open = st.registry.sessions();
    tracing::info!(sessions = open.len(), "draining: closing sessions");
    for s in &open {
        s.close(
            chat_core::wire::close::GOING_AWAY,
            "server shutting down: reconnect and resume",
        );
    }
    st.sessions.close();
    if tokio::time::timeout(config.shutdown_grace, st.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after the grace period");
    }
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "http server task failed"),
        Err(_) => tracing::warn!("http server did not stop within the grace period"),
    }
    match admin.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin listener error"),
        Err(e) => tracing::warn!(error = %e, "admin listener task failed"),
    }
    heartbeat.abort();
    revocation_task.abort();
    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "nats drain failed");
    }
    delivery_task.abort();
    heads_task.abort();
    tracing::info!("gateway stopped");
    Ok(())
}
