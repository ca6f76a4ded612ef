//! A live, in-memory view of the presence bucket: which gateways hold each
//! user, and which users each gateway holds. Kept current by a KV watch;
//! used by fanout (where to deliver) and presence (who is online).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{self, Operation};
use chat_core::names;
use chat_core::{GatewayId, UserId};
use futures::StreamExt;

/// One (user, gateway) entry: its KV revision (so a late, older update
/// never undoes a newer one) and the report number that wrote it.
#[derive(Clone, Copy)]
struct Entry {
    revision: u64,
    n: u64,
}

#[derive(Default)]
struct Maps {
    /// user → gateways.
    users: HashMap<UserId, HashMap<GatewayId, Entry>>,
    /// gateway → users (for heartbeats and expired leases).
    gateways: HashMap<GatewayId, HashSet<UserId>>,
}

/// user → gateways, and gateway → users.
#[derive(Clone, Default)]
pub struct PresenceView {
    inner: Arc<RwLock<Maps>>,
}

impl PresenceView {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        match self.inner.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    /// Applies one KV change of an entry written without a report number.
    /// Returns true when the user's online state flipped.
    pub fn apply(&self, key: &str, revision: u64, op: Operation) -> bool {
        self.apply_entry(key, revision, op, 0)
    }

    /// Applies one KV change; `n` is the report number a put carries.
    /// Returns true when the user's online state flipped (none ↔ some
    /// gateways).
    pub fn apply_entry(&self, key: &str, revision: u64, op: Operation, n: u64) -> bool {
        let Some((user, gw)) = names::parse_presence_key(key) else {
            return false;
        };
        let mut guard = match self.inner.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let maps = &mut *guard;
        let gws = maps.users.entry(user.clone()).or_default();
        let was_online = !gws.is_empty();
        match op {
            Operation::Put => {
                if gws.get(&gw).is_none_or(|e| e.revision < revision) {
                    gws.insert(gw.clone(), Entry { revision, n });
                    maps.gateways.entry(gw).or_default().insert(user.clone());
                }
            }
            Operation::Delete | Operation::Purge => {
                if gws.get(&gw).is_some_and(|e| e.revision <= revision) {
                    gws.remove(&gw);
                    if let Some(users) = maps.gateways.get_mut(&gw) {
                        users.remove(&user);
                        if users.is_empty() {
                            maps.gateways.remove(&gw);
                        }
                    }
                }
            }
        }
        let online = !gws.is_empty();
        if !online {
            maps.users.remove(&user);
        }
        was_online != online
    }

    /// Those of `users` that `gw` does not hold (one read lock for all).
    pub fn missing_on(&self, gw: &GatewayId, users: &[UserId]) -> Vec<UserId> {
        let maps = self.read();
        let held = maps.gateways.get(gw);
        users
            .iter()
            .filter(|u| !held.is_some_and(|h| h.contains(*u)))
            .cloned()
            .collect()
    }

    /// The users `gw` holds whose entry's report number and id pass `keep`
    /// (one read lock; only the kept ones are copied).
    pub fn users_of_where(
        &self,
        gw: &GatewayId,
        keep: impl Fn(&UserId, u64) -> bool,
    ) -> Vec<UserId> {
        let maps = self.read();
        let Some(users) = maps.gateways.get(gw) else {
            return Vec::new();
        };
        users
            .iter()
            .filter(|u| {
                maps.users
                    .get(*u)
                    .and_then(|g| g.get(gw))
                    .is_some_and(|e| keep(u, e.n))
            })
            .cloned()
            .collect()
    }

    /// Gateways currently holding `user`.
    pub fn gateways_of(&self, user: &UserId) -> Vec<GatewayId> {
        self.read()
            .users
            .get(user)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `user` is connected to any gateway.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.read().users.contains_key(user)
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
        let maps = self.read();
        let map = &maps.users;
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
                    self.apply_entry(&e.key, e.revision, e.operation, report_number(&e.value));
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

/// The report number in an entry's value (`{"since": …, "n": …}`); 0 when
/// it has none (entries written before report numbers, or a delete).
fn report_number(value: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Value {
        #[serde(default)]
        n: u64,
    }
    serde_json::from_slice::<Value>(value).map_or(0, |v| v.n)
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
    fn a_gateway_lists_its_users_with_their_report_numbers() {
        let v = PresenceView::new();
        v.apply_entry("carol.g1", 1, Operation::Put, 7);
        v.apply_entry("dave.g1", 2, Operation::Put, 9);
        v.apply_entry("dave.g2", 3, Operation::Put, 4);
        let g1 = GatewayId::parse("g1").unwrap_or_else(|e| panic!("{e}"));
        let id = |s: &str| UserId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let mut on_g1 = v.users_of_where(&g1, |_, _| true);
        on_g1.sort();
        assert_eq!(on_g1, vec![id("carol"), id("dave")]);
        assert_eq!(v.users_of_where(&g1, |_, n| n < 9), vec![id("carol")]);
        v.apply("carol.g1", 4, Operation::Delete);
        assert_eq!(
            v.missing_on(&g1, &[id("carol"), id("dave")]),
            vec![id("carol")]
        );
        assert_eq!(v.users_of_where(&g1, |_, n| n < 9), Vec::<UserId>::new());
        v.apply("dave.g1", 5, Operation::Delete);
        assert!(v.users_of_where(&g1, |_, _| true).is_empty());
        assert!(v.is_online(&id("dave")), "still on g2");
        assert_eq!(report_number(br#"{"since":1,"n":12}"#), 12);
        assert_eq!(report_number(br#"{"since":1}"#), 0);
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
