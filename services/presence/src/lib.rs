//! The presence service: who is online where. Gateways report connects,
//! disconnects and heartbeats on `presence.in.<gw>`; entries of the
//! `chat_presence` KV bucket (`<user>.<gw>`) live while their gateway's
//! lease in `chat_presence_gateways` (renewed by its heartbeats) does;
//! online/offline flips are published on `presence.user.<user>`; and
//! `svc.presence.query` answers who of some users is online.

mod config;
mod expiry;
mod query;
mod reports;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use chat_core::names;
use chat_platform::Shutdown;
use chat_platform::http::{Readiness, serve_admin};
use chat_stream::{PresenceView, StreamSettings, setup};
use tokio::net::TcpListener;

pub use config::{Config, MIN_TTL_MS};
pub use query::MAX_QUERY_USERS;
pub use state::PresenceError;

use state::Presence;

/// How long the first NATS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ack wait of the expiry consumer: handling a marker deletes the gateway's
/// entries.
const EXPIRY_ACK_WAIT: Duration = Duration::from_secs(30);
/// Unacked bucket changes one presence fleet may hold at once.
const EXPIRY_MAX_ACK_PENDING: i64 = 10_000;
/// Runs the presence service until `shutdown`: connects to NATS, creates the
/// bucket and the expiry consumer (unless `CHAT_MANAGE_NATS=false`), serves
/// reports, expiry and queries plus `/healthz` `/readyz` `/metrics` on
/// `listener`, and on shutdown finishes queued reports and drains NATS.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = chat_platform::nats::connect(&config.common, "chat-presence", CONNECT_TIMEOUT)
        .await
        .context("presence: NATS")?;
    let js = jetstream::new(client.clone());
    let settings = StreamSettings {
        manage: config.common.manage_nats,
        replicas: config.common.stream_replicas,
        dedup_window: config.common.dedup_window,
        partitions: config.common.room_partitions,
    };
    let store = setup::presence_bucket(&js, &settings)
        .await
        .context("presence: bucket")?;
    let leases = setup::presence_leases_bucket(&js, &settings, config.ttl)
        .await
        .context("presence: leases bucket")?;
    let key_prefix = leases.prefix.clone();
    let consumer = setup::durable_consumer(
        &leases.stream,
        names::PRESENCE_LEASES_DURABLE,
        &format!("{key_prefix}>"),
        EXPIRY_ACK_WAIT,
        EXPIRY_MAX_ACK_PENDING,
        settings.manage,
    )
    .await
    .context("presence: lease expiry consumer")?;

    let readiness = Readiness::new(Some(client.clone()));
    let view_ready = readiness.flag("presence view");
    let subs_ready = readiness.flag("subscriptions");
    let view = PresenceView::new();
    let follower = tokio::spawn(follow(
        view.clone(),
        store.clone(),
        view_ready.clone(),
        shutdown.clone(),
    ));
    let http = tokio::spawn(serve_admin(listener, readiness, shutdown.clone()));

    // Reports need the bucket's current contents: a connect is "the user's
    // first gateway" only if the view knows the others.
    if !chat_platform::shutdown::wait_until_set(&view_ready, &shutdown).await {
        return finish(client, http, follower).await;
    }
    tracing::info!(ttl_ms = config.ttl.as_millis(), "presence view ready");

    let presence = Presence::new(client.clone(), js, (store, leases), view, config.ttl);
    let reports_sub = client
        .queue_subscribe(names::PRESENCE_IN_ALL, names::queue::PRESENCE.into())
        .await
        .context("presence: subscribe reports")?;
    let query_sub = client
        .queue_subscribe(names::svc::PRESENCE_QUERY, names::queue::PRESENCE.into())
        .await
        .context("presence: subscribe queries")?;
    // Ready only once the server has the subscriptions: no report or query
    // sent after /readyz says 200 is lost.
    chat_platform::nats::round_trip(&client)
        .await
        .map_err(|e| anyhow::anyhow!("presence: subscriptions: {e}"))?;
    subs_ready.store(true, Ordering::Release);
    let reports = tokio::spawn(reports::serve(
        presence.clone(),
        reports_sub,
        shutdown.clone(),
    ));
    let queries = tokio::spawn(query::serve(
        presence.clone(),
        client.clone(),
        query_sub,
        shutdown.clone(),
    ));
    let expiry = tokio::spawn(expiry::serve(
        presence,
        consumer,
        key_prefix,
        shutdown.clone(),
    ));
    let (r, q, e) = tokio::join!(reports, queries, expiry);
    for (what, res) in [("reports", r), ("queries", q), ("expiry", e)] {
        if let Err(err) = res {
            tracing::error!(error = %err, task = what, "presence task failed");
        }
    }
    finish(client, http, follower).await
}

/// Flushes and drains NATS, then waits for the HTTP server and the watch.
async fn finish(
    client: async_nats::Client,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    follower: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flushing NATS at shutdown failed");
    }
    client.drain().await.context("presence: drain NATS")?;
    follower.await.context("presence: view task")?;
    http.await
        .context("presence: HTTP task")?
        .context("presence: HTTP server")?;
    tracing::info!("presence stopped");
    Ok(())
}

/// Keeps `view` in step with the bucket until shutdown.
async fn follow(view: PresenceView, store: kv::Store, ready: Arc<AtomicBool>, shutdown: Shutdown) {
    view.follow_until(&store, ready, &shutdown).await;
}
