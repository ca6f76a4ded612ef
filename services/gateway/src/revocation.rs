//! Revoked sign-in sessions: a watch of the `chat_revoked` bucket (auth
//! writes one key per revoked session id) keeps the set this gateway
//! refuses, and closes that session's live connections (4010) as soon as
//! an entry arrives. Entries are kept as long as an access token can live,
//! then forgotten: by then every token of that session has expired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chat_core::names;
use chat_core::wire::close;
use futures::StreamExt as _;

use crate::registry::Registry;

/// How long a revoked id is remembered: longer than any access token lives
/// (auth allows at most 15 minutes).
const RETAIN: Duration = Duration::from_secs(20 * 60);
/// Pause before re-opening a watch that ended or failed.
const REOPEN_AFTER: Duration = Duration::from_millis(500);

/// The revoked session ids this gateway knows of.
#[derive(Default)]
pub struct Revocations {
    ids: Mutex<HashMap<String, Instant>>,
}

impl Revocations {
    /// True when `sid` was revoked.
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.lock().contains_key(sid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `sid` (and forgets ids older than [`RETAIN`]).
    fn insert(&self, sid: &str) {
        let now = Instant::now();
        let mut ids = self.lock();
        ids.retain(|_, at| now.duration_since(*at) < RETAIN);
        ids.insert(sid.to_string(), now);
    }

    /// Follows the bucket until `shutdown`: waits for it to exist (auth
    /// creates it), applies what it holds, sets `ready`, then closes each
    /// newly revoked session's connections.
    pub async fn follow(
        self: Arc<Self>,
        js: jetstream::Context,
        registry: Registry,
        ready: Arc<AtomicBool>,
        shutdown: chat_platform::Shutdown,
    ) {
        loop {
            let run = self.watch_once(&js, &registry, &ready);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = run => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "revocation watch failed; re-opening");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REOPEN_AFTER) => {}
            }
        }
    }

    async fn watch_once(
        &self,
        js: &jetstream::Context,
        registry: &Registry,
        ready: &AtomicBool,
    ) -> Result<(), String> {
        let kv = js
            .get_key_value(names::REVOKED_BUCKET)
            .await
            .map_err(|e| format!("bucket {}: {e}", names::REVOKED_BUCKET))?;
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        let held = kv.status().await.map_err(|e| e.to_string())?.values();
        if held == 0 {
            ready.store(true, Ordering::Release);
        }
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.operation == jetstream::kv::Operation::Put {
                self.insert(&entry.key);
                let n = registry.close_session(
                    &entry.key,
                    close::REVOKED,
                    "session revoked: sign in again",
                );
                if n > 0 {
                    metrics::counter!("chat_gateway_revoked_closes_total").increment(n as u64);
                    tracing::info!(session = %entry.key, connections = n, "revoked session closed");
                }
            }
            if entry.delta == 0 {
                ready.store(true, Ordering::Release);
            }
        }
        Err("the watch ended".into())
    }
}
