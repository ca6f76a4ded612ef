//! The fanout service: turns each room event of the room stream into one
//! delivery per gateway holding online recipients (`gw.<id>.deliver`), and
//! relays presence changes (`presence.user.*`) to co-members the same way.

mod config;
mod heads;
mod members;
mod outbox;
mod pipeline;
mod plan;
mod relay;
mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use chat_core::GatewayId;
use chat_core::events::Delivery;
use chat_core::names;
use chat_platform::Shutdown;
use chat_platform::http::{Readiness, serve_admin};
use chat_stream::{PresenceView, StreamSettings, partitions, setup};
use tokio::net::TcpListener;

pub use config::{Config, MAX_BATCH};
pub use members::HistoryError;

use members::{History, MemberCache};

/// How long the first NATS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ack wait of the room consumer: long enough for a history retry or two.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Unacked room events the whole fanout fleet may hold.
const MAX_ACK_PENDING: i64 = 10_000;
/// How often to look for the presence bucket until the presence service
/// (its owner, which sets its TTL) has created it.
const BUCKET_POLL: Duration = Duration::from_millis(500);
/// A delivery that could not be published.
#[derive(Debug, thiserror::Error)]
#[error("publishing on {subject}: {reason}")]
pub struct PublishError {
    pub subject: String,
    pub reason: String,
}

/// What the pipeline and the relay share.
#[derive(Clone)]
pub(crate) struct Fanout {
    client: async_nats::Client,
    history: History,
    members: MemberCache,
    view: PresenceView,
    heads: heads::HeadBook,
    /// This instance's id on `fanout.membership` (its own changes are
    /// already applied, in stream order, and must not come back late).
    instance: Arc<str>,
    /// Rooms with more members get no presence pushes.
    presence_max_room: usize,
    /// Rooms with at least this many members get room-wide deliveries.
    room_wide_min_members: usize,
}

/// Header naming the fanout instance that shared a membership change.
pub(crate) const INSTANCE_HEADER: &str = "Chat-Fanout-Instance";

impl Fanout {
    /// Publishes each delivery on `gw.<id>.deliver` (core NATS). Deliveries
    /// go out on the same connection as the ack that follows, so they are
    /// sent before it.
    async fn publish(&self, out: Vec<(GatewayId, Delivery)>) -> Result<(), PublishError> {
        for (gw, delivery) in out {
            self.publish_on(names::gateway_deliver(&gw), &delivery)
                .await?;
            metrics::counter!("chat_fanout_deliveries_total").increment(1);
        }
        Ok(())
    }

    async fn publish_on(&self, subject: String, delivery: &Delivery) -> Result<(), PublishError> {
        let body = match serde_json::to_vec(delivery) {
            Ok(b) => b,
            Err(e) => {
                return Err(PublishError {
                    subject,
                    reason: e.to_string(),
                });
            }
        };
        self.publish_raw(subject, body).await
    }

    /// Publishes an encoded delivery (or a JSON array of them, `outbox`).
    async fn publish_raw(&self, subject: String, body: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .publish(subject.clone(), body.into())
            .await
            .map_err(|e| PublishError {
                subject,
                reason: e.to_string(),
            })
    }
}

/// Runs the fanout service until `shutdown`: connects to NATS, creates the
/// room stream, the `fanout-p<n>` partition consumers and the workers
/// bucket (unless `CHAT_MANAGE_NATS=false`), waits for the presence bucket,
/// then runs the room pipeline on the partitions it owns and the presence
/// relay, serving `/healthz` `/readyz` `/metrics` on `listener`. On
/// shutdown it leaves the workers bucket, finishes the event in hand per
/// partition, naks what it had received, and drains NATS.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = chat_platform::nats::connect(&config.common, "chat-fanout", CONNECT_TIMEOUT)
        .await
        .context("fanout: NATS")?;
    let js = jetstream::new(client.clone());
    let settings = StreamSettings {
        manage: config.common.manage_nats,
        replicas: config.common.stream_replicas,
        dedup_window: config.common.dedup_window,
        partitions: config.common.room_partitions,
    };
    let stream = setup::room_stream(&js, &settings)
        .await
        .context("fanout: room stream")?;
    let spec = partitions::Spec {
        service: names::FANOUT_DURABLE,
        kind: None,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
    };
    let consumers = partitions::consumers(&stream, &spec, settings.manage)
        .await
        .context("fanout: room consumers")?;
    let workers = partitions::workers_bucket(&js, &settings, config.common.worker_heartbeat * 3)
        .await
        .context("fanout: workers bucket")?;

    let readiness = Readiness::new(Some(client.clone()));
    let view_ready = readiness.flag("presence view");
    let subs_ready = readiness.flag("subscriptions");
    let http = tokio::spawn(serve_admin(listener, readiness, shutdown.clone()));
    let view = PresenceView::new();
    let follower = tokio::spawn(follow(
        js,
        view.clone(),
        view_ready.clone(),
        shutdown.clone(),
    ));
    // Delivering before the view holds the bucket's contents would skip
    // online users as offline.
    if !chat_platform::shutdown::wait_until_set(&view_ready, &shutdown).await {
        return finish(client, http, follower).await;
    }
    tracing::info!(batch = config.batch, "presence view ready; fanout starting");

    let history = History::new(client.clone());
    let fanout = Fanout {
        client: client.clone(),
        members: MemberCache::new(history.clone(), config.member_cache_rooms),
        history,
        view,
        heads: heads::HeadBook::default(),
        instance: Arc::from(format!(
            "{}-{}",
            std::process::id(),
            chat_core::time::now_ms()
        )),
        presence_max_room: config.presence_max_room,
        room_wide_min_members: config.room_wide_min_members,
    };
    let heads_task = tokio::spawn(heads::publish_loop(
        fanout.clone(),
        config.heads_interval,
        config.heads_window,
        shutdown.clone(),
    ));
    // Membership changes other instances took from their part of the stream.
    let mut shared_changes = client
        .subscribe(names::FANOUT_MEMBERSHIP)
        .await
        .context("fanout: subscribe membership changes")?;
    let members = fanout.members.clone();
    let me = fanout.instance.clone();
    let changes_task = tokio::spawn(async move {
        while let Some(msg) = futures::StreamExt::next(&mut shared_changes).await {
            let from_me = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(INSTANCE_HEADER))
                .is_some_and(|v| v.as_str() == &*me);
            if from_me {
                continue;
            }
            match serde_json::from_slice::<chat_core::events::MembershipChange>(&msg.payload) {
                Ok(c) => match c.op {
                    chat_core::events::MemberOp::Join => members.joined(&c.room, &c.user),
                    chat_core::events::MemberOp::Leave => members.left(&c.room, &c.user),
                },
                Err(e) => tracing::warn!(error = %e, "unreadable membership change dropped"),
            }
        }
    });
    let relay_sub = client
        .queue_subscribe(names::PRESENCE_USER_ALL, names::queue::FANOUT.into())
        .await
        .context("fanout: subscribe presence changes")?;
    let snapshot_sub = client
        .queue_subscribe(
            names::svc::FANOUT_PRESENCE_SNAPSHOT,
            names::queue::FANOUT.into(),
        )
        .await
        .context("fanout: subscribe presence snapshots")?;
    // Ready only once the server has the subscription.
    chat_platform::nats::round_trip(&client)
        .await
        .map_err(|e| anyhow::anyhow!("fanout: subscriptions: {e}"))?;
    subs_ready.store(true, Ordering::Release);
    let relay = tokio::spawn(relay::serve(fanout.clone(), relay_sub, shutdown.clone()));
    let snapshots = tokio::spawn(snapshot::serve(
        fanout.clone(),
        snapshot_sub,
        config.presence_snapshot_max,
        shutdown.clone(),
    ));
    let worker = partitions::Worker {
        kv: workers,
        stream,
        service: names::FANOUT_DURABLE,
        instance: fanout.instance.to_string(),
        heartbeat: config.common.worker_heartbeat,
    };
    let batch = config.batch;
    let pipeline = tokio::spawn(worker.run(consumers, shutdown.clone(), move |_, c, stop| {
        pipeline::serve(fanout.clone(), c, batch, stop)
    }));
    let (p, r, h, s) = tokio::join!(pipeline, relay, heads_task, snapshots);
    changes_task.abort();
    for (what, res) in [
        ("pipeline", p),
        ("relay", r),
        ("heads", h),
        ("snapshots", s),
    ] {
        if let Err(err) = res {
            tracing::error!(error = %err, task = what, "fanout task failed");
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
    client.drain().await.context("fanout: drain NATS")?;
    follower.await.context("fanout: view task")?;
    http.await
        .context("fanout: HTTP task")?
        .context("fanout: HTTP server")?;
    tracing::info!("fanout stopped");
    Ok(())
}

/// Finds the presence bucket (waiting for its owner to create it), then
/// keeps `view` in step with it until shutdown.
async fn follow(
    js: jetstream::Context,
    view: PresenceView,
    ready: Arc<AtomicBool>,
    shutdown: Shutdown,
) {
    let mut store: Option<kv::Store> = None;
    let mut warned = false;
    while !shutdown.is_cancelled() {
        let current = match &store {
            Some(s) => s.clone(),
            None => match js.get_key_value(names::PRESENCE_BUCKET).await {
                Ok(s) => {
                    store = Some(s.clone());
                    s
                }
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "presence bucket not found yet; waiting for the presence service");
                    }
                    pause(&shutdown, BUCKET_POLL).await;
                    continue;
                }
            },
        };
        view.follow_until(&current, ready.clone(), &shutdown).await;
    }
}

async fn pause(shutdown: &Shutdown, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
