//! The history service: the system of record for rooms, memberships and room
//! history. It writes every room event from the room stream into the store
//! (one `history-p<n>` durable consumer per partition it owns, ADR 0009) and
//! answers `svc.history.*` requests.
//! See `docs/services/history.md`.

mod api;
mod config;
mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use chat_core::names;
use chat_platform::Shutdown;
use chat_platform::http::{Readiness, serve_admin};
use chat_store::{HistoryStore, SqliteStore};
use chat_stream::setup::{self, StreamSettings};
use chat_stream::{RoomLog, partitions};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use api::MAX_ROOM_NAME_CHARS;
pub use config::Config;

/// How long the first NATS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the SQLite store at `config.db` and runs the service on it until
/// `shutdown`.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let path = config.db.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .context("store open task")?
        .with_context(|| {
            format!(
                "cannot open history store {} (CHAT_HISTORY_DB)",
                config.db.display()
            )
        })?;
    run_with_store(config, Arc::new(store), listener, shutdown).await
}

/// Runs the service on any [`HistoryStore`] (another backend, or a test
/// double) until `shutdown`: stops taking requests and events, finishes the
/// ones in hand, drains NATS and returns.
pub async fn run_with_store(
    config: Config,
    store: Arc<dyn HistoryStore>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let client =
        chat_platform::nats::connect(&config.common, "chat-history", CONNECT_TIMEOUT).await?;
    let ready = Readiness::new(Some(client.clone()));
    let store_ready = ready.flag("store");
    let consumer_ready = ready.flag("consumer");
    // The store is open by the time we get here (run opens it first).
    store_ready.store(true, Ordering::Release);

    // Internal token: a fatal error in one part stops the others.
    let stop = shutdown.child_token();
    let http = tokio::spawn(serve_admin(listener, ready.clone(), stop.clone()));

    let result = serve_nats(&config, &client, store, &stop, &consumer_ready).await;
    stop.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ops HTTP server failed"),
        Err(e) => tracing::warn!(error = %e, "ops HTTP task failed"),
    }
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "NATS drain failed");
    }
    tracing::info!("history service stopped");
    result
}

async fn serve_nats(
    config: &Config,
    client: &async_nats::Client,
    store: Arc<dyn HistoryStore>,
    stop: &Shutdown,
    consumer_ready: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let settings = StreamSettings {
        manage: config.common.manage_nats,
        replicas: config.common.stream_replicas,
        dedup_window: config.common.dedup_window,
        partitions: config.common.room_partitions,
    };
    let stream = setup::room_stream(&js, &settings).await?;
    let max_ack_pending =
        i64::try_from(config.batch.saturating_mul(4).max(1024)).unwrap_or(i64::MAX);
    let spec = partitions::Spec {
        service: names::HISTORY_DURABLE,
        kind: Some(names::EventKind::Msg),
        ack_wait: config.ack_wait,
        max_ack_pending,
    };
    let consumers = partitions::consumers(&stream, &spec, config.common.manage_nats).await?;
    let workers =
        partitions::workers_bucket(&js, &settings, config.common.worker_heartbeat * 3).await?;
    tracing::info!(
        durable = names::HISTORY_DURABLE,
        partitions = consumers.len(),
        "history consumers ready"
    );

    let worker = partitions::Worker {
        kv: workers,
        stream: stream.clone(),
        service: names::HISTORY_DURABLE,
        instance: format!("{}-{}", std::process::id(), chat_core::time::now_ms()),
        heartbeat: config.common.worker_heartbeat,
    };
    let writer_settings = writer::WriterSettings {
        batch: config.batch,
        retry_max: config.retry_max,
    };
    let writer_store = store.clone();
    let writer = tokio::spawn(worker.run(consumers, stop.clone(), move |_, c, stop| {
        writer::run(c, writer_store.clone(), writer_settings.clone(), stop)
    }));
    let api = api::Api {
        store,
        limits: config.rooms,
        log: RoomLog::new(js, stream).with_tail_cache(config.common.room_tail_cache),
    };
    let served = serve_requests(client, api, stop, consumer_ready).await;
    stop.cancel();
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "writer task failed");
    }
    served
}

/// Answers `svc.history.*` until `stop`, then waits for in-flight requests.
/// Ready (consumer created, requests subscribed) is flagged only once the
/// server has registered the subscription, so no request finds no responder.
async fn serve_requests(
    client: &async_nats::Client,
    api: api::Api,
    stop: &Shutdown,
    ready: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let mut sub = client
        .queue_subscribe(names::svc::HISTORY_ALL, names::queue::HISTORY.to_string())
        .await
        .context("subscribe to svc.history.>")?;
    chat_platform::nats::round_trip(client)
        .await
        .map_err(|e| anyhow::anyhow!("the svc.history.> subscription: {e}"))?;
    ready.store(true, Ordering::Release);
    let tracker = TaskTracker::new();
    let result = loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            m = sub.next() => m,
        };
        let Some(msg) = msg else {
            break Err(anyhow::anyhow!("svc.history subscription closed"));
        };
        let api = api.clone();
        let client = client.clone();
        tracker.spawn(async move {
            let body = api.handle(&msg.subject, &msg.payload).await;
            match msg.reply {
                Some(reply) => {
                    if let Err(e) = client.publish(reply, body.into()).await {
                        tracing::warn!(error = %e, "reply not sent");
                    }
                }
                None => tracing::debug!(subject = %msg.subject, "request without reply subject"),
            }
        });
    };
    // Stop taking requests (others in the queue group get them), finish ours.
    if let Err(e) = sub.unsubscribe().await {
        tracing::debug!(error = %e, "unsubscribe failed");
    }
    tracker.close();
    tracker.wait().await;
    result
}
