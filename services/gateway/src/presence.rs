//! Reports this gateway's users to the presence service: connect on a
//! user's first session, disconnect on the last, and a heartbeat listing
//! everyone so entries do not expire (and lost reports heal).

use std::time::Duration;

use chat_core::events::{PresenceOp, PresenceReport};
use chat_core::names;
use chat_core::{GatewayId, SCHEMA_VERSION, UserId};

use crate::registry::Registry;

/// Publishes presence reports for one gateway.
#[derive(Clone)]
pub struct PresenceReporter {
    nats: async_nats::Client,
    gw: GatewayId,
    subject: String,
}

impl PresenceReporter {
    pub fn new(nats: async_nats::Client, gw: GatewayId) -> Self {
        let subject = names::presence_in(&gw);
        Self { nats, gw, subject }
    }

    async fn report(&self, op: PresenceOp, users: Vec<UserId>) {
        let report = PresenceReport {
            v: SCHEMA_VERSION,
            gw: self.gw.clone(),
            op,
            users,
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

    /// All users at once (heartbeat).
    pub async fn heartbeat(&self, users: Vec<UserId>) {
        self.report(PresenceOp::Heartbeat, users).await;
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
                _ = tick.tick() => {
                    let users = registry.users();
                    if !users.is_empty() {
                        self.heartbeat(users).await;
                    }
                }
            }
        }
    }
}
