//! The presence state machine: writes (user, gateway) entries to the bucket
//! and renews gateway leases, keeps the local [`PresenceView`] in step, and
//! publishes a `presence.user.<id>` change when a user's online state flips.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use chat_core::events::{PresenceChange, PresenceStatus, presence_part};
use chat_core::names;
use chat_core::{GatewayId, SCHEMA_VERSION, UserId};
use chat_stream::PresenceView;
use futures::StreamExt;

/// How many entries of one report are written concurrently.
const CONCURRENCY: usize = 32;

/// Header JetStream KV uses to mark a delete (`KV-Operation: DEL`).
const KV_OPERATION: &str = "KV-Operation";
const KV_OPERATION_DELETE: &str = "DEL";

/// Why a presence update could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("writing presence entry {key}: {reason}")]
    Write { key: String, reason: String },
    #[error("publishing presence change of {user}: {reason}")]
    Publish { user: UserId, reason: String },
    #[error("encoding presence change: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Shared handle on the buckets, the view and the NATS client.
#[derive(Clone)]
pub struct Presence {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    leases: kv::Store,
    view: PresenceView,
    /// A connect renews its gateway's lease only when this instance has not
    /// done so for a quarter of the TTL (heartbeats always renew it).
    renew_every: Duration,
    renewed: Arc<Mutex<HashMap<GatewayId, Instant>>>,
}

impl Presence {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        (kv, leases): (kv::Store, kv::Store),
        view: PresenceView,
        ttl: Duration,
    ) -> Self {
        Self {
            client,
            js,
            kv,
            leases,
            view,
            renew_every: ttl / 4,
            renewed: Arc::default(),
        }
    }

    /// The live view of the bucket.
    pub fn view(&self) -> &PresenceView {
        &self.view
    }

    /// A connect: `users`' entries for `gw` under report number `n`, after
    /// making sure the gateway has a lease (no entry outlives its gateway).
    pub async fn connect(
        &self,
        gw: &GatewayId,
        users: &[UserId],
        n: u64,
    ) -> Result<(), PresenceError> {
        if !self.recently_renewed(gw) {
            self.renew(gw).await?;
        }
        let puts: Vec<_> = users.iter().map(|u| self.touch(u, gw, n)).collect();
        first_error(futures::stream::iter(puts).buffer_unordered(CONCURRENCY)).await
    }

    /// A disconnect: `users`' entries for `gw` go.
    pub async fn disconnect(&self, gw: &GatewayId, users: &[UserId]) -> Result<(), PresenceError> {
        let deletes: Vec<_> = users.iter().map(|u| self.remove(u, gw)).collect();
        first_error(futures::stream::iter(deletes).buffer_unordered(CONCURRENCY)).await
    }

    /// A heartbeat (part `[i, k]` of report `n`): renews the lease, writes
    /// the listed users the view does not have (a lost connect), and removes
    /// this part's entries written before `n` that it does not list (a lost
    /// disconnect). An idle gateway costs one lease write.
    pub async fn heartbeat(
        &self,
        gw: &GatewayId,
        users: &[UserId],
        n: u64,
        [i, k]: [u32; 2],
    ) -> Result<(), PresenceError> {
        self.renew(gw).await?;
        let listed: HashSet<&UserId> = users.iter().collect();
        let stale = self.view.users_of_where(gw, |u, written| {
            written < n && !listed.contains(u) && presence_part(u, k) == i
        });
        // Built up front: a closure inside the stream would make the spawned
        // task's future not `Send` for every lifetime.
        let missing = self.view.missing_on(gw, users);
        let puts: Vec<_> = missing.iter().map(|u| self.touch(u, gw, n)).collect();
        first_error(futures::stream::iter(puts).buffer_unordered(CONCURRENCY)).await?;
        if !stale.is_empty() {
            metrics::counter!("chat_presence_stale_entries_removed_total")
                .increment(stale.len() as u64);
        }
        self.disconnect(gw, &stale).await
    }

    /// The lease of `gw` expired (its marker was seen): unless a heartbeat
    /// renewed it since, every entry of the gateway goes, and users with no
    /// other gateway go offline. Returns how many entries went.
    pub async fn lease_expired(&self, gw: &GatewayId) -> Result<usize, PresenceError> {
        let key = gw.to_string();
        let renewed = self
            .leases
            .get(&key)
            .await
            .map_err(|e| PresenceError::Write {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        if renewed.is_some() {
            return Ok(0);
        }
        self.renewed_map().remove(gw);
        let users = self.view.users_of_where(gw, |_, _| true);
        self.disconnect(gw, &users).await?;
        Ok(users.len())
    }

    fn renewed_map(&self) -> std::sync::MutexGuard<'_, HashMap<GatewayId, Instant>> {
        match self.renewed.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    fn recently_renewed(&self, gw: &GatewayId) -> bool {
        self.renewed_map()
            .get(gw)
            .is_some_and(|at| at.elapsed() < self.renew_every)
    }

    /// Writes `gw`'s lease (it lives the TTL from now).
    async fn renew(&self, gw: &GatewayId) -> Result<(), PresenceError> {
        let key = gw.to_string();
        let value = serde_json::to_vec(&serde_json::json!({ "at": chat_core::time::now_ms() }))?;
        self.leases
            .put(&key, value.into())
            .await
            .map_err(|e| PresenceError::Write {
                key,
                reason: e.to_string(),
            })?;
        let mut renewed = self.renewed_map();
        // Forget gateways not renewed for a while (they stopped, and their
        // ids are not reused): the map holds live gateways only.
        let forget_after = self.renew_every * 8;
        renewed.retain(|_, at| at.elapsed() < forget_after);
        renewed.insert(gw.clone(), Instant::now());
        Ok(())
    }

    /// Writes `user`'s entry for `gw` under report number `n`; publishes
    /// Online when the user had no gateway before.
    async fn touch(&self, user: &UserId, gw: &GatewayId, n: u64) -> Result<(), PresenceError> {
        let key = names::presence_key(user, gw);
        // Read before writing: the KV watch may apply our own put before the
        // put's ack reaches us, so a flip reported by `apply` is unreliable.
        let was_online = self.view.is_online(user);
        let value =
            serde_json::to_vec(&serde_json::json!({ "since": chat_core::time::now_ms(), "n": n }))?;
        let revision = self
            .kv
            .put(&key, value.into())
            .await
            .map_err(|e| PresenceError::Write {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        self.view.apply_entry(&key, revision, kv::Operation::Put, n);
        if !was_online {
            self.publish(user, PresenceStatus::Online).await?;
        }
        Ok(())
    }

    /// Deletes `user`'s entry for `gw`; publishes Offline when that was the
    /// user's last gateway.
    async fn remove(&self, user: &UserId, gw: &GatewayId) -> Result<(), PresenceError> {
        let key = names::presence_key(user, gw);
        let was_online = self.view.is_online(user);
        let revision = self.delete(&key).await?;
        self.view.apply(&key, revision, kv::Operation::Delete);
        if was_online && !self.view.is_online(user) {
            self.publish(user, PresenceStatus::Offline).await?;
        }
        Ok(())
    }

    /// `kv.delete`, but returning the delete's revision so the view can
    /// order it against puts it sees through the watch.
    async fn delete(&self, key: &str) -> Result<u64, PresenceError> {
        let err = |reason: String| PresenceError::Write {
            key: key.to_string(),
            reason,
        };
        let subject = format!(
            "{}{key}",
            self.kv.put_prefix.as_deref().unwrap_or(&self.kv.prefix)
        );
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, KV_OPERATION_DELETE);
        let ack = self
            .js
            .publish_with_headers(subject, headers, bytes::Bytes::new())
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// Publishes `presence.user.<id>` (core NATS).
    async fn publish(&self, user: &UserId, status: PresenceStatus) -> Result<(), PresenceError> {
        let change = PresenceChange {
            v: SCHEMA_VERSION,
            user: user.clone(),
            status,
            at: chat_core::time::now_ms(),
        };
        let payload = serde_json::to_vec(&change)?;
        self.client
            .publish(names::presence_user(user), payload.into())
            .await
            .map_err(|e| PresenceError::Publish {
                user: user.clone(),
                reason: e.to_string(),
            })?;
        let label = match status {
            PresenceStatus::Online => "online",
            PresenceStatus::Offline => "offline",
        };
        metrics::counter!("chat_presence_changes_total", "status" => label).increment(1);
        tracing::debug!(user = %user, status = label, "presence changed");
        Ok(())
    }
}

/// Runs every write, returning the first error (the others still run).
async fn first_error(
    writes: impl futures::Stream<Item = Result<(), PresenceError>>,
) -> Result<(), PresenceError> {
    let results: Vec<_> = writes.collect().await;
    let mut first = None;
    for r in results {
        if let Err(e) = r {
            metrics::counter!("chat_presence_errors_total").increment(1);
            tracing::warn!(error = %e, "presence write failed");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}
