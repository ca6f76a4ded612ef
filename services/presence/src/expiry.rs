//! Expiry of gateways that stopped heartbeating: a durable pull consumer on
//! the leases bucket's stream, shared by all presence instances, so each
//! expired lease takes its gateway's entries (and announces their users
//! offline) exactly once.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use chat_core::GatewayId;
use chat_platform::Shutdown;
use futures::StreamExt;
use tracing::instrument;

use crate::state::Presence;

/// Header the server sets on the marker it leaves when an entry ages out.
const MARKER_REASON: &str = "Nats-Marker-Reason";
/// Messages fetched per pull request.
const BATCH: usize = 256;
/// How long one pull waits for messages before the next request.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause after a failed pull, so a broken connection is not spun on.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Processes the leases bucket's changes until shutdown. Renewals are acked
/// at once; markers take their gateway's entries.
pub async fn serve(
    presence: Presence,
    consumer: PullConsumer,
    key_prefix: String,
    shutdown: Shutdown,
) {
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = consumer.batch().max_messages(BATCH).expires(PULL_EXPIRES).messages() => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pulling lease changes failed");
                pause(&shutdown).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => None,
                m = batch.next() => m,
            };
            let Some(msg) = next else { break };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "lease change pull error");
                    continue;
                }
            };
            let ack = handle(&presence, &msg, &key_prefix).await;
            if let Err(e) = msg.ack_with(ack).await {
                tracing::warn!(error = %e, "acking lease change failed");
            }
        }
    }
}

/// `$KV.chat_presence_gateways.<gw>`: handles one lease change and says how
/// to acknowledge it.
#[instrument(skip_all, fields(subject = %msg.subject))]
async fn handle(
    presence: &Presence,
    msg: &async_nats::jetstream::Message,
    prefix: &str,
) -> AckKind {
    let is_marker = msg
        .headers
        .as_ref()
        .is_some_and(|h| h.get(MARKER_REASON).is_some());
    if !is_marker {
        return AckKind::Ack;
    }
    let Some(gw) = msg
        .subject
        .as_str()
        .strip_prefix(prefix)
        .and_then(|k| GatewayId::parse(k).ok())
    else {
        return AckKind::Ack;
    };
    match presence.lease_expired(&gw).await {
        Ok(removed) => {
            metrics::counter!("chat_presence_leases_expired_total").increment(1);
            tracing::info!(%gw, removed, "gateway lease expired");
            AckKind::Ack
        }
        Err(e) => {
            metrics::counter!("chat_presence_errors_total").increment(1);
            tracing::warn!(error = %e, %gw, "expired lease not applied; will retry");
            AckKind::Nak(Some(RETRY_PAUSE))
        }
    }
}

async fn pause(shutdown: &Shutdown) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}
