//! `presence.in.*` (queue group `presence`): gateways' connect, disconnect
//! and heartbeat reports, applied one report at a time in arrival order.

use std::collections::HashSet;

use chat_core::events::{PresenceOp, PresenceReport};
use chat_platform::Shutdown;
use tracing::instrument;

use crate::state::Presence;

/// Serves reports until shutdown, then drains the subscription so reports
/// already received are still applied.
pub async fn serve(presence: Presence, sub: async_nats::Subscriber, shutdown: Shutdown) {
    chat_platform::nats::serve_until_drained(sub, &shutdown, "presence reports", |msg| {
        let presence = &presence;
        async move { handle(presence, &msg.payload).await }
    })
    .await;
}

/// `presence.in.<gateway_id>`: applies one report.
#[instrument(skip_all, fields(gw, op))]
async fn handle(presence: &Presence, payload: &[u8]) {
    let report: PresenceReport = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!("chat_presence_malformed_total").increment(1);
            tracing::warn!(error = %e, "unreadable presence report");
            return;
        }
    };
    let span = tracing::Span::current();
    span.record("gw", tracing::field::display(&report.gw));
    span.record("op", tracing::field::debug(report.op));
    let op = match report.op {
        PresenceOp::Connect => "connect",
        PresenceOp::Disconnect => "disconnect",
        PresenceOp::Heartbeat => "heartbeat",
    };
    metrics::counter!("chat_presence_reports_total", "op" => op).increment(1);
    let mut seen = HashSet::new();
    let users: Vec<_> = report
        .users
        .iter()
        .filter(|u| seen.insert(*u))
        .cloned()
        .collect();
    let gw = &report.gw;
    let applied = match report.op {
        PresenceOp::Connect => presence.connect(gw, &users, report.n).await,
        PresenceOp::Disconnect => presence.disconnect(gw, &users).await,
        PresenceOp::Heartbeat => {
            let part = report.part.unwrap_or([0, 1]);
            if part[1] == 0 || part[0] >= part[1] {
                metrics::counter!("chat_presence_malformed_total").increment(1);
                tracing::warn!(?part, "heartbeat part out of range");
                return;
            }
            presence.heartbeat(gw, &users, report.n, part).await
        }
    };
    if let Err(e) = applied {
        tracing::warn!(error = %e, "presence report not fully applied; the next heartbeat heals it");
    }
}
