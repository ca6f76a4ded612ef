//! The presence state machine: writes (user, gateway) entries to the bucket,
//! keeps the local [`PresenceView`] in step, and publishes a
//! `presence.user.<id>` change when a user's online state flips.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use chat_core::events::{PresenceChange, PresenceStatus};
use chat_core::names;
use chat_core::{GatewayId, SCHEMA_VERSION, UserId};
use chat_stream::PresenceView;

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

/// Shared handle on the bucket, the view and the NATS client.
#[derive(Clone)]
pub struct Presence {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    view: PresenceView,
}

impl Presence {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        kv: kv::Store,
        view: PresenceView,
    ) -> Self {
        Self {
            client,
            js,
            kv,
            view,
        }
    }

    /// The live view of the bucket.
    pub fn view(&self) -> &PresenceView {
        &self.view
    }

    /// Writes (or refreshes) `user`'s entry for `gw`; publishes Online when
    /// the user had no gateway before. Used for connect and heartbeat alike,
    /// so a heartbeat heals a lost connect.
    pub async fn touch(&self, user: &UserId, gw: &GatewayId) -> Result<(), PresenceError> {
        let key = names::presence_key(user, gw);
        // Read before writing: the KV watch may apply our own put before the
        // put's ack reaches us, so a flip reported by `apply` is unreliable.
        let was_online = self.view.is_online(user);
        let value = serde_json::to_vec(&serde_json::json!({ "since": chat_core::time::now_ms() }))?;
        let revision = self
            .kv
            .put(&key, value.into())
            .await
            .map_err(|e| PresenceError::Write {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        self.view.apply(&key, revision, kv::Operation::Put);
        if !was_online {
            self.publish(user, PresenceStatus::Online).await?;
        }
        Ok(())
    }

    /// Deletes `user`'s entry for `gw`; publishes Offline when that was the
    /// user's last gateway.
    pub async fn remove(&self, user: &UserId, gw: &GatewayId) -> Result<(), PresenceError> {
        let key = names::presence_key(user, gw);
        let was_online = self.view.is_online(user);
        let revision = self.delete(&key).await?;
        self.view.apply(&key, revision, kv::Operation::Delete);
        if was_online && !self.view.is_online(user) {
            self.publish(user, PresenceStatus::Offline).await?;
        }
        Ok(())
    }

    /// Applies an expiry marker for `key` at stream sequence `revision`;
    /// publishes Offline when it removed the user's last live entry.
    /// Returns whether it did.
    pub async fn expired(&self, key: &str, revision: u64) -> Result<bool, PresenceError> {
        let Some((user, _gw)) = names::parse_presence_key(key) else {
            return Ok(false);
        };
        // The watch may already have applied this marker; the view records
        // whether it took the user offline, whoever applied it first. A
        // marker also follows a clean disconnect, when the delete's
        // tombstone ages out: that one took nobody offline (the disconnect
        // already said so), and announcing it again was a second offline.
        self.view.apply(key, revision, kv::Operation::Purge);
        if !self.view.take_expiry(revision) || self.view.is_online(&user) {
            return Ok(false);
        }
        self.publish(&user, PresenceStatus::Offline).await?;
        Ok(true)
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
