//! Announcing revoked sessions: one entry per session id in the
//! `chat_revoked` KV bucket, which every gateway watches (it closes that
//! session's connections within a second and refuses its tokens).

use async_nats::jetstream::kv;
use async_trait::async_trait;
use chat_core::events::Revoked;
use chat_core::{SCHEMA_VERSION, UserId};

use crate::sessions::Revoker;

/// Writes revocations to the bucket.
pub struct KvRevoker {
    store: kv::Store,
}

impl KvRevoker {
    pub fn new(store: kv::Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Revoker for KvRevoker {
    async fn revoked(&self, user: &UserId, sessions: &[String]) -> Result<(), String> {
        let entry = Revoked {
            v: SCHEMA_VERSION,
            user: user.clone(),
            at: chat_core::time::now_ms(),
        };
        let body = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        for sid in sessions {
            self.store
                .put(sid.as_str(), bytes::Bytes::from(body.clone()))
                .await
                .map_err(|e| format!("announce revocation of {sid}: {e}"))?;
        }
        metrics::counter!("chat_auth_sessions_revoked_total").increment(sessions.len() as u64);
        Ok(())
    }
}
