//! `svc.fanout.presence.snapshot` (queue group `fanout`): the online
//! co-members of a user, for a session that just connected. Fanout answers
//! it because it holds both halves: room members (its cache) and who is
//! online (its presence view). Requests are served concurrently, a bounded
//! number at a time.

use std::sync::Arc;

use chat_core::SCHEMA_VERSION;
use chat_core::svc::{ErrorCode, PresenceSnapshot, PresenceSnapshotQuery, Reply, SvcError};
use chat_platform::Shutdown;
use tokio::sync::Semaphore;

use crate::Fanout;

/// Snapshots computed at once by one instance; more wait.
const IN_FLIGHT: usize = 64;

/// Answers snapshot requests until shutdown, then drains the subscription.
pub async fn serve(fanout: Fanout, sub: async_nats::Subscriber, max: usize, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    chat_platform::nats::serve_until_drained(sub, &shutdown, "presence snapshots", |msg| {
        let (fanout, slots) = (fanout.clone(), slots.clone());
        async move {
            let Some(reply_to) = msg.reply.clone() else {
                return;
            };
            let Ok(permit) = slots.acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                let reply = answer(&fanout, &msg.payload, max).await;
                match serde_json::to_vec(&reply) {
                    Ok(body) => {
                        if let Err(e) = fanout.client.publish(reply_to, body.into()).await {
                            tracing::warn!(error = %e, "presence snapshot reply not sent");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "presence snapshot not encoded"),
                }
                drop(permit);
            });
        }
    })
    .await;
}

/// The online co-members of the asked user (rooms with presence only),
/// sorted, at most `max`.
async fn answer(fanout: &Fanout, payload: &[u8], max: usize) -> Reply<PresenceSnapshot> {
    metrics::counter!("chat_fanout_presence_snapshots_total").increment(1);
    let query: PresenceSnapshotQuery = match serde_json::from_slice(payload) {
        Ok(q) => q,
        Err(e) => return Reply::Error(SvcError::new(ErrorCode::Malformed, e.to_string())),
    };
    if query.v != SCHEMA_VERSION {
        return Reply::Error(SvcError::new(
            ErrorCode::BadRequest,
            format!("unsupported schema version {}", query.v),
        ));
    }
    let co_members = match crate::relay::co_members_in(fanout, &query.user, &query.rooms).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "co-members unavailable; no presence snapshot");
            return Reply::Error(SvcError::new(ErrorCode::Unavailable, "members unavailable"));
        }
    };
    let mut online = co_members.into_iter().filter(|u| fanout.view.is_online(u));
    let list: Vec<_> = online.by_ref().take(max).collect();
    Reply::Ok(PresenceSnapshot {
        online: list,
        more: online.next().is_some(),
    })
}
