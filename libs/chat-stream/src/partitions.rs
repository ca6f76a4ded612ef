//! Partitioned consumers (ADR 0009): one durable consumer per partition of
//! the room stream, each pinned to one client, and the instances of a
//! service sharing the partitions by rendezvous hashing over the instances
//! listed (and renewed) in the `chat_workers` bucket.
//!
//! An instance only pulls the partitions it owns under its current view.
//! When the view changes it starts the partitions it gained and releases
//! the ones it lost (finish the event in hand, pause the consumer, hand
//! back what it received, unpin, resume). The pin is the fence: if two instances briefly both believe
//! they own a partition, the server still delivers to one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, kv, stream};
use chat_core::names::{self, EventKind};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::setup::{SetupError, StreamSettings};

/// How long one pull request waits before the pull stream renews it; kept
/// well below [`PIN_TIMEOUT`] so a live client never loses its pin.
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long the server keeps a client pinned after its last pull: how long
/// a partition of an instance that vanished without a word stays idle if
/// no one unpins it.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(15);
/// On release, the pull stream is read (and what arrives handed back)
/// until nothing arrived for this long.
const RELEASE_QUIET: Duration = Duration::from_millis(50);
/// Longest pause of a consumer on release: it resumes by itself after it.
const RELEASE_PAUSE_MAX: Duration = Duration::from_secs(5);

/// What one service consumes, partitioned.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The service (`fanout`, `history`): its durable consumers are
    /// `<service>-p<n>` and its instances `<service>.<instance>` in the bucket.
    pub service: &'static str,
    /// Only this kind of event (None: every kind).
    pub kind: Option<EventKind>,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

/// Creates (or finds) one pinned durable consumer per partition of the room
/// stream, and removes the unpartitioned consumer of earlier versions.
pub async fn consumers(
    stream: &stream::Stream,
    spec: &Spec,
    manage: bool,
) -> Result<Vec<PullConsumer>, SetupError> {
    let partitions =
        crate::setup::room_partitions(stream).map_err(|reason| SetupError::Stream {
            name: names::ROOM_STREAM.into(),
            reason,
        })?;
    if manage {
        match stream.delete_consumer(spec.service).await {
            Ok(_) => tracing::info!(durable = spec.service, "removed the unpartitioned consumer"),
            Err(e) => tracing::debug!(error = %e, "no unpartitioned consumer to remove"),
        }
    }
    let mut out = Vec::with_capacity(usize::from(partitions));
    for p in 0..partitions {
        let name = names::partition_durable(spec.service, p);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: names::partition_filter(p, spec.kind),
            // One ack settles a run of handled messages (`acks::Acker`).
            ack_policy: consumer::AckPolicy::All,
            ack_wait: spec.ack_wait,
            max_ack_pending: spec.max_ack_pending,
            deliver_policy: consumer::DeliverPolicy::All,
            priority_policy: consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![names::PARTITION_GROUP.to_string()],
            priority_timeout: PIN_TIMEOUT,
            ..Default::default()
        };
        out.push(crate::setup::consumer_with(stream, &name, config, manage).await?);
    }
    Ok(out)
}

/// Creates (or finds) the bucket of live instances: an entry lives `ttl`
/// unless renewed.
pub async fn workers_bucket(
    js: &jetstream::Context,
    s: &StreamSettings,
    ttl: Duration,
) -> Result<kv::Store, SetupError> {
    crate::setup::find_or_create_bucket(
        js,
        s,
        kv::Config {
            bucket: names::WORKERS_BUCKET.to_string(),
            description: "service.instance -> started-at ms; expires without heartbeats".into(),
            history: 1,
            max_age: ttl,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        },
    )
    .await
}

/// How much `instance` wants `partition`: FNV-1a of both, then mixed.
fn affinity(instance: &str, partition: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes().chain(partition.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's last bytes reach only its low bits: mix (murmur3's finaliser)
    // so the partition number moves the high ones too.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The owner of each of `partitions` among `live` instances. Each
/// partition, in order, goes to the instance that wants it most
/// ([`affinity`]) among those still below their share: ⌊P/N⌋ each, and
/// one more for the first P mod N instances that get there. So every
/// instance owns ⌊P/N⌋ or ⌈P/N⌉ (rendezvous hashing alone can leave one
/// idle when there are few partitions). Every instance with the same view
/// computes the same owners; a change of view moves few partitions.
pub fn owners(partitions: u16, live: &BTreeSet<String>) -> Vec<Option<&str>> {
    let n = live.len().max(1);
    let (floor, extra) = (usize::from(partitions) / n, usize::from(partitions) % n);
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    let mut above_floor = 0usize;
    (0..partitions)
        .map(|p| {
            let mut ranked: Vec<&str> = live.iter().map(String::as_str).collect();
            ranked.sort_by_key(|i| std::cmp::Reverse(affinity(i, p)));
            let owner = ranked.into_iter().find(|i| {
                let h = held.get(i).copied().unwrap_or(0);
                h < floor || (h == floor && above_floor < extra)
            })?;
            let h = held.entry(owner).or_insert(0);
            *h += 1;
            if *h == floor + 1 {
                above_floor += 1;
            }
            Some(owner)
        })
        .collect()
}

/// A partition task: its stop token and its handle, which returns the pull
/// stream it was reading.
type Running = (
    CancellationToken,
    tokio::task::JoinHandle<Option<PullStream>>,
);

/// One instance's membership and its partitions.
pub struct Worker {
    pub kv: kv::Store,
    pub stream: stream::Stream,
    pub service: &'static str,
    /// Unique per process start.
    pub instance: String,
    pub heartbeat: Duration,
}

impl Worker {
    fn key(&self) -> String {
        format!("{}.{}", self.service, self.instance)
    }

    /// The instances of this service listed in the bucket now.
    async fn live(&self) -> Result<BTreeSet<String>, String> {
        let prefix = format!("{}.", self.service);
        let keys = self.kv.keys().await.map_err(|e| e.to_string())?;
        let keys: Vec<String> = keys.try_collect().await.map_err(|e| e.to_string())?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    /// Hands a partition over: pause the consumer (the server stops
    /// delivering it to anyone), hand back with a nak what the pull stream
    /// holds or still receives, close the stream, unpin (the next client
    /// pulling gets the pin) and resume. The redeliveries then queue ahead
    /// of newer events for the next owner, and nothing is left in flight to
    /// the closed subscription, where it would wait out the ack wait. The
    /// pause ends by itself after [`RELEASE_PAUSE_MAX`] should this
    /// instance die meanwhile.
    async fn release(&self, consumer: &PullConsumer, held: Option<PullStream>) {
        let name = consumer.cached_info().name.clone();
        let Some(mut messages) = held else {
            self.unpin(consumer).await;
            return;
        };
        let until = time::OffsetDateTime::now_utc() + RELEASE_PAUSE_MAX;
        let paused = match self.stream.pause_consumer(&name, until).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "pause on release failed");
                false
            }
        };
        let mut handed = 0u64;
        let end = tokio::time::Instant::now() + RELEASE_PAUSE_MAX / 2;
        // Until nothing more arrives for a moment (what was on its way).
        while let Ok(Some(m)) = tokio::time::timeout(RELEASE_QUIET, messages.next()).await {
            handed += nak(m).await;
            if tokio::time::Instant::now() > end {
                break;
            }
        }
        drop(messages);
        self.unpin(consumer).await;
        if paused && let Err(e) = self.stream.resume_consumer(&name).await {
            tracing::warn!(consumer = %name, error = %e, "resume after release failed; it resumes by itself");
        }
        metrics::counter!("chat_partition_released_messages_total", "service" => self.service)
            .increment(handed);
    }

    /// Stops the tasks of `leaving` and releases their partitions, side by
    /// side.
    async fn release_all(&self, leaving: Vec<(u16, &PullConsumer, Running)>) {
        let releases = leaving.into_iter().map(|(p, c, (stop, task))| async move {
            stop.cancel();
            let held = task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, partition = p, "partition task failed");
                None
            });
            self.release(c, held).await;
            tracing::debug!(service = self.service, partition = p, "partition released");
        });
        futures::future::join_all(releases).await;
    }

    async fn unpin(&self, consumer: &PullConsumer) {
        let name = consumer.cached_info().name.clone();
        if let Err(e) = self
            .stream
            .unpin_consumer(&name, names::PARTITION_GROUP)
            .await
        {
            tracing::debug!(consumer = %name, error = %e, "unpin (nothing pinned?)");
        }
    }

    /// Runs `work(partition, consumer, stop)` for each partition this
    /// instance owns, until `shutdown`; then releases every partition and
    /// removes itself from the bucket. `work` must return soon after `stop`
    /// is cancelled, having finished the event in hand, with the pull
    /// stream it was reading (what it received but did not handle is
    /// handed back from there).
    pub async fn run<F, Fut>(
        self,
        consumers: Vec<PullConsumer>,
        shutdown: CancellationToken,
        mut work: F,
    ) where
        F: FnMut(u16, PullConsumer, CancellationToken) -> Fut,
        Fut: Future<Output = Option<PullStream>> + Send + 'static,
    {
        let key = self.key();
        let mut view: BTreeSet<String> = BTreeSet::new();
        let mut running: BTreeMap<u16, Running> = BTreeMap::new();
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self
                .kv
                .put(&key, chat_core::time::now_ms().to_string().into())
                .await
            {
                // Keep what we run: the partition tasks retry on their own,
                // and the pins keep two owners from both receiving.
                tracing::warn!(error = %e, "worker heartbeat failed");
                metrics::counter!("chat_worker_heartbeat_failures_total", "service" => self.service)
                    .increment(1);
                continue;
            }
            let mut live = match self.live().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "listing workers failed");
                    continue;
                }
            };
            live.insert(self.instance.clone());
            if live != view {
                tracing::info!(
                    service = self.service,
                    instances = live.len(),
                    "worker view changed"
                );
            }
            let mut leaving = Vec::new();
            let count = u16::try_from(consumers.len()).unwrap_or(u16::MAX);
            let (now, before) = (owners(count, &live), owners(count, &view));
            for (p, c) in (0u16..).zip(consumers.iter()) {
                let i = usize::from(p);
                let mine = now.get(i).copied().flatten() == Some(self.instance.as_str());
                if mine && !running.contains_key(&p) {
                    // An owner that left the view without releasing (it
                    // crashed) still holds the pin until it times out.
                    let prev = before.get(i).copied().flatten();
                    if prev.is_some_and(|o| o != self.instance && !live.contains(o)) {
                        self.unpin(c).await;
                    }
                    let stop = shutdown.child_token();
                    let task = tokio::spawn(work(p, c.clone(), stop.clone()));
                    running.insert(p, (stop, task));
                    tracing::debug!(service = self.service, partition = p, "partition taken");
                } else if !mine && let Some(handle) = running.remove(&p) {
                    leaving.push((p, c, handle));
                }
            }
            self.release_all(leaving).await;
            metrics::gauge!("chat_partitions_owned", "service" => self.service)
                .set(running.len() as f64);
            view = live;
        }
        // Shutting down: release everything, then leave the view. (Leaving
        // first would let the others, seeing an owner gone, unpin and take
        // newer events before ours were handed back.) Meanwhile the
        // partitions wait in the stream for a heartbeat at most.
        let all = running
            .into_iter()
            .filter_map(|(p, h)| Some((p, consumers.get(usize::from(p))?, h)))
            .collect();
        self.release_all(all).await;
        if let Err(e) = self.kv.delete(&key).await {
            tracing::debug!(error = %e, "leaving the worker view failed; the entry expires");
        }
    }
}

/// Hands one message back (1 if it was a message, 0 for a pull status).
async fn nak(m: Result<jetstream::Message, consumer::pull::MessagesError>) -> u64 {
    let Ok(m) = m else { return 0 };
    if let Err(e) = m.ack_with(jetstream::AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "nak on release failed; redelivered after the ack wait");
    }
    1
}

/// A pull stream on a partition consumer.
pub type PullStream = consumer::pull::Stream;

/// A pinned pull stream on a partition consumer, batches of `batch`.
pub async fn pull(consumer: &PullConsumer, batch: usize) -> Result<PullStream, String> {
    consumer
        .stream()
        .group(names::PARTITION_GROUP)
        .max_messages_per_batch(batch)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn every_instance_owns_a_fair_share_and_a_change_moves_few() {
        let two = set(&["a", "b"]);
        let three = set(&["a", "b", "c"]);
        let count = |o: &[Option<&str>], who: &str| o.iter().filter(|x| **x == Some(who)).count();
        for partitions in [1u16, 2, 4, 5, 16, 32] {
            for live in [&two, &three] {
                let o = owners(partitions, live);
                assert!(
                    o.iter().all(Option::is_some),
                    "every partition has an owner"
                );
                let share = usize::from(partitions) / live.len();
                for i in live.iter() {
                    let n = count(&o, i);
                    assert!(
                        n == share || n == share + 1,
                        "{i} holds {n} of {partitions} among {}",
                        live.len()
                    );
                }
            }
        }
        // Everyone computes the same; c arriving moves only some partitions.
        let (before, after) = (owners(32, &two), owners(32, &three));
        assert_eq!(before, owners(32, &set(&["b", "a"])));
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert!(
            (count(&after, "c")..=16).contains(&moved),
            "{moved} of 32 moved when c (owning {}) arrived",
            count(&after, "c")
        );
        assert_eq!(owners(3, &BTreeSet::new()), vec![None, None, None]);
    }
}
