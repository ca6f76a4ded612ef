//! Reports this gateway's users to the presence service: connect on a
//! user's first session, disconnect on the last, and a heartbeat that renews
//! the gateway's lease and lists everyone, in parts (so lost reports heal).
//! Every report is numbered, so presence can tell which entries a heartbeat
//! makes stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_core::events::{PresenceOp, PresenceReport, presence_part};
use chat_core::names;
use chat_core::{GatewayId, SCHEMA_VERSION, UserId};

use crate::registry::Registry;

/// Publishes presence reports for one gateway.
#[derive(Clone)]
pub struct PresenceReporter {
    nats: async_nats::Client,
    gw: GatewayId,
    subject: String,
    /// The next report number: from the start time in microseconds, so a
    /// restarted gateway of the same id numbers above its last life.
    next: Arc<AtomicU64>,
}

/// Most users in one heartbeat part (about 30 bytes each: well under NATS's
/// default 1 MiB payload).
pub const HEARTBEAT_PART_USERS: usize = 8192;

impl PresenceReporter {
    pub fn new(nats: async_nats::Client, gw: GatewayId) -> Self {
        let subject = names::presence_in(&gw);
        let start = chat_core::time::now_ms().saturating_mul(1000);
        Self {
            nats,
            gw,
            subject,
            next: Arc::new(AtomicU64::new(start)),
        }
    }

    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    async fn report(&self, op: PresenceOp, users: Vec<UserId>) {
        let n = self.number();
        self.send(op, users, n, None).await;
    }

    async fn send(&self, op: PresenceOp, users: Vec<UserId>, n: u64, part: Option<[u32; 2]>) {
        let report = PresenceReport {
            v: SCHEMA_VERSION,
            gw: self.gw.clone(),
            op,
            users,
            n,
            part,
        };
        let payload = match serde_json::to_vec(&report) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode presence report");
                return;
            }
        };
        // Core NATS: a lost report is healed by the next heartbeat.
        if let Err(e) = self
            .nats
            .publish(self.subject.clone(), payload.into())
            .await
        {
            tracing::warn!(error = %e, ?op, "presence report not sent");
        }
    }

    /// The user's first session on this gateway opened.
    pub async fn connect(&self, user: &UserId) {
        self.report(PresenceOp::Connect, vec![user.clone()]).await;
    }

    /// The user's last session on this gateway closed.
    pub async fn disconnect(&self, user: &UserId) {
        self.report(PresenceOp::Disconnect, vec![user.clone()])
            .await;
    }

    /// A heartbeat: the report number is taken before the users are
    /// listed, so every user connected under an earlier number is listed.
    /// Sent in parts of at most [`HEARTBEAT_PART_USERS`], by
    /// [`presence_part`]; sent with no users too, as it renews the lease.
    pub async fn heartbeat(&self, registry: &Registry) {
        let n = self.number();
        let users = registry.users();
        let parts = users.len().div_ceil(HEARTBEAT_PART_USERS).max(1);
        let k = u32::try_from(parts).unwrap_or(u32::MAX);
        let mut split: Vec<Vec<UserId>> = vec![Vec::new(); parts];
        for u in users {
            let i = presence_part(&u, k) as usize;
            if let Some(part) = split.get_mut(i) {
                part.push(u);
            }
        }
        for (i, part) in split.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(0);
            self.send(PresenceOp::Heartbeat, part, n, Some([i, k]))
                .await;
        }
    }

    /// Sends a heartbeat every `every` until `shutdown`.
    pub async fn heartbeat_loop(
        self,
        registry: Registry,
        every: Duration,
        shutdown: chat_platform::Shutdown,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.heartbeat(&registry).await,
            }
        }
    }
}
