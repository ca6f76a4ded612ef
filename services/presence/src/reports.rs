//! `presence.in.*` (queue group `presence`): gateways' connect, disconnect
//! and heartbeat reports, applied one report at a time in arrival order.

use std::collections::HashSet;

use chat_core::events::{PresenceOp, PresenceReport};
use chat_platform::Shutdown;
use futures::StreamExt;
use tracing::instrument;

use crate::state::Presence;

/// How many users of one heartbeat are refreshed concurrently.
const HEARTBEAT_CONCURRENCY: usize = 32;

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
    let users: Vec<_> = report.users.iter().filter(|u| seen.insert(*u)).collect();
    let gw = &report.gw;
    // Futures are built up front (not in a stream closure) so their borrows
    // of `presence` and `gw` stay nameable for the spawned task.
    let work: Vec<_> = users
        .into_iter()
        .map(|u| {
            let presence = presence.clone();
            let (user, gw, op) = (u.clone(), gw.clone(), report.op);
            async move {
                match op {
                    PresenceOp::Connect | PresenceOp::Heartbeat => presence.touch(&user, &gw).await,
                    PresenceOp::Disconnect => presence.remove(&user, &gw).await,
                }
            }
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(work)
        .buffer_unordered(HEARTBEAT_CONCURRENCY)
        .collect()
        .await;
    for r in results {
        if let Err(e) = r {
            metrics::counter!("chat_presence_errors_total").increment(1);
            tracing::warn!(error = %e, "presence report not applied");
        }
    }
}
