//! A live, in-memory view of the presence bucket: which gateways hold each
//! user. Kept current by a KV watch; used by fanout (where to deliver) and
//! presence (who is online).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use chat_core::names;
use chat_core::{GatewayId, UserId};
use futures::StreamExt;

/// How long the record of an expiry that took a user offline is kept for
/// the one who handles that expiry marker (see [`PresenceView::take_expiry`]).
const EXPIRY_RECORD_AGE: Duration = Duration::from_secs(60);

/// user → gateways, with the KV revision of each (user, gateway) entry so a
/// late, older update never undoes a newer one.
#[derive(Clone, Default)]
pub struct PresenceView {
    inner: Arc<RwLock<HashMap<UserId, HashMap<GatewayId, u64>>>>,
    /// Revisions of expiry markers that took a user offline, whichever of
    /// the watch or the marker's handler applied them first; oldest first.
    expiries: Arc<Mutex<VecDeque<(u64, Instant)>>>,
}

impl PresenceView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one KV change. Returns true when the user's online state
    /// flipped (none ↔ some gateways).
    pub fn apply(&self, key: &str, revision: u64, op: Operation) -> bool {
        let Some((user, gw)) = names::parse_presence_key(key) else {
            return false;
        };
        let mut map = match self.inner.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let gws = map.entry(user.clone()).or_default();
        let was_online = !gws.is_empty();
        match op {
            Operation::Put => {
                let newer = gws.get(&gw).is_none_or(|r| *r < revision);
                if newer {
                    gws.insert(gw, revision);
                }
            }
            Operation::Delete | Operation::Purge => {
                if gws.get(&gw).is_some_and(|r| *r <= revision) {
                    gws.remove(&gw);
                }
            }
        }
        let online = !gws.is_empty();
        if !online {
            map.remove(&user);
        }
        drop(map);
        let flipped = was_online != online;
        if flipped && matches!(op, Operation::Purge) {
            self.record_expiry(revision);
        }
        flipped
    }

    fn record_expiry(&self, revision: u64) {
        let mut e = match self.expiries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        while e
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > EXPIRY_RECORD_AGE)
        {
            e.pop_front();
        }
        e.push_back((revision, now));
    }

    /// Whether the expiry marker at `revision` took its user offline when
    /// it was applied (by the watch or by [`PresenceView::apply`] directly),
    /// once: the record is taken. An expiry marker also follows a delete
    /// whose tombstone aged out; that one removed nothing live, so it is
    /// not an offline transition.
    pub fn take_expiry(&self, revision: u64) -> bool {
        let mut e = match self.expiries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        match e.iter().position(|(r, _)| *r == revision) {
            Some(i) => {
                e.remove(i);
                true
            }
            None => false,
        }
    }

    /// Gateways currently holding `user`.
    pub fn gateways_of(&self, user: &UserId) -> Vec<GatewayId> {
        let map = match self.inner.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(user)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `user` is connected to any gateway.
    pub fn is_online(&self, user: &UserId) -> bool {
        let map = match self.inner.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.contains_key(user)
    }

    /// Users of `users` that are online.
    pub fn online_of(&self, users: &[UserId]) -> Vec<UserId> {
        users
            .iter()
            .filter(|u| self.is_online(u))
            .cloned()
            .collect()
    }

    /// Distinct gateways of several users, each with its users.
    pub fn group_by_gateway(&self, users: &[UserId]) -> HashMap<GatewayId, Vec<UserId>> {
        let map = match self.inner.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut out: HashMap<GatewayId, Vec<UserId>> = HashMap::new();
        let mut seen = HashSet::new();
        for u in users {
            if !seen.insert(u) {
                continue;
            }
            if let Some(gws) = map.get(u) {
                for gw in gws.keys() {
                    out.entry(gw.clone()).or_default().push(u.clone());
                }
            }
        }
        out
    }

    /// Watches `store` from its current contents on, applying every change,
    /// until the watch ends. Calls `ready` once the initial contents are in.
    pub async fn follow(
        &self,
        store: &kv::Store,
        ready: impl FnOnce(),
    ) -> Result<(), kv::WatchError> {
        let mut watch = store.watch_all_from_revision(1).await?;
        let mut ready = Some(ready);
        // An empty bucket sends no initial entries: ready at once.
        if store
            .status()
            .await
            .map(|s| s.values() == 0)
            .unwrap_or(false)
            && let Some(r) = ready.take()
        {
            r();
        }
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) => {
                    self.apply(&e.key, e.revision, e.operation);
                    if e.delta == 0
                        && let Some(r) = ready.take()
                    {
                        r();
                    }
                }
                Err(err) => tracing::warn!(error = %err, "presence watch error"),
            }
        }
        Ok(())
    }
}

/// How long to wait before re-opening a watch that ended.
const WATCH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl PresenceView {
    /// Follows `store` until `shutdown`, re-opening the watch whenever it
    /// ends; sets `ready` once the bucket's contents are in the view.
    pub async fn follow_until(
        &self,
        store: &kv::Store,
        ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            let flag = ready.clone();
            let watched = self.follow(store, move || {
                flag.store(true, std::sync::atomic::Ordering::Release);
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                res = watched => {
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "presence watch failed; re-opening");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_flips_only_on_first_and_last_gateway() {
        let v = PresenceView::new();
        assert!(v.apply("alice.g1", 1, Operation::Put));
        assert!(!v.apply("alice.g2", 2, Operation::Put));
        assert!(!v.apply("alice.g1", 3, Operation::Delete));
        assert!(v.is_online(&UserId::parse("alice").unwrap_or_else(|e| panic!("{e}"))));
        assert!(v.apply("alice.g2", 4, Operation::Purge));
        assert!(!v.is_online(&UserId::parse("alice").unwrap_or_else(|e| panic!("{e}"))));
    }

    #[test]
    fn only_an_expiry_that_removes_a_live_entry_is_a_recorded_offline() {
        let v = PresenceView::new();
        v.apply("carol.g1", 1, Operation::Put);
        v.apply("carol.g1", 2, Operation::Delete);
        // The tombstone aged out: a marker for an entry that is not live.
        v.apply("carol.g1", 3, Operation::Purge);
        assert!(!v.take_expiry(3));
        v.apply("dave.g1", 4, Operation::Put);
        v.apply("dave.g1", 5, Operation::Purge);
        v.apply("dave.g1", 5, Operation::Purge);
        assert!(v.take_expiry(5), "dave's live entry expired");
        assert!(!v.take_expiry(5), "taken once");
    }

    #[test]
    fn an_older_delete_does_not_undo_a_newer_put() {
        let v = PresenceView::new();
        v.apply("bob.g1", 5, Operation::Put);
        v.apply("bob.g1", 3, Operation::Delete);
        let bob = UserId::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.gateways_of(&bob).len(), 1);
    }
}
