//! The presence relay: `presence.user.*` (queue group `fanout`) turned into
//! `presence` frames for the user's co-members, one delivery per gateway.

use std::collections::BTreeSet;

use chat_core::events::PresenceChange;
use chat_core::wire::ServerFrame;
use chat_core::{SCHEMA_VERSION, UserId};
use chat_platform::Shutdown;
use tracing::instrument;

use crate::Fanout;
use crate::members::HistoryError;
use crate::plan::{self, Context};

/// Relays changes until shutdown, then drains the subscription.
pub async fn serve(fanout: Fanout, sub: async_nats::Subscriber, shutdown: Shutdown) {
    chat_platform::nats::serve_until_drained(sub, &shutdown, "presence relay", |msg| {
        let fanout = &fanout;
        async move { relay(fanout, &msg.payload).await }
    })
    .await;
}

/// `presence.user.<user_id>`: tells every online co-member.
#[instrument(skip_all, fields(user))]
async fn relay(fanout: &Fanout, payload: &[u8]) {
    let change: PresenceChange = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("chat_fanout_malformed_total").increment(1);
            tracing::warn!(error = %e, "unreadable presence change");
            return;
        }
    };
    tracing::Span::current().record("user", tracing::field::display(&change.user));
    if change.v != SCHEMA_VERSION {
        metrics::counter!("chat_fanout_malformed_total").increment(1);
        tracing::warn!(v = change.v, "presence change of unknown schema version");
        return;
    }
    let co_members = match co_members(fanout, &change.user).await {
        Ok(m) => m,
        Err(e) => {
            // Core NATS has no redelivery; clients refresh presence on
            // reconnect, so a lost relay heals.
            metrics::counter!("chat_fanout_history_errors_total").increment(1);
            tracing::warn!(error = %e, "co-members unavailable; presence change not relayed");
            return;
        }
    };
    let frame = match serde_json::to_string(&ServerFrame::Presence {
        user: change.user.clone(),
        status: change.status,
    }) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "presence frame not encodable");
            return;
        }
    };
    let out = plan::deliveries(&fanout.view, &co_members, &frame, &Context::presence());
    match fanout.publish(out).await {
        Ok(()) => metrics::counter!("chat_fanout_presence_relays_total").increment(1),
        Err(e) => tracing::warn!(error = %e, "presence delivery publish failed"),
    }
}

/// When `joiner` joins a room of `members`: the online members learn that
/// the joiner is online, without waiting for a change. (The joining session
/// learns who is online from its gateway, which asks
/// `svc.fanout.presence.snapshot` after the join: this instance may not yet
/// know where a user who has just connected is, and then it also leaves the
/// others to the joiner's own `online` change, relayed to the co-members
/// history has by then.)
pub fn presence_on_join(
    fanout: &Fanout,
    members: &BTreeSet<UserId>,
    joiner: &UserId,
) -> Vec<(chat_core::GatewayId, chat_core::events::Delivery)> {
    if !fanout.view.is_online(joiner) {
        return Vec::new();
    }
    if members.len() > fanout.presence_max_room {
        metrics::counter!("chat_fanout_presence_large_rooms_skipped_total").increment(1);
        return Vec::new();
    }
    let others: BTreeSet<UserId> = members.iter().filter(|m| *m != joiner).cloned().collect();
    let Ok(frame) = serde_json::to_string(&ServerFrame::Presence {
        user: joiner.clone(),
        status: chat_core::events::PresenceStatus::Online,
    }) else {
        return Vec::new();
    };
    plan::deliveries(&fanout.view, &others, &frame, &Context::presence())
}

/// Members of every room of `user` with at most `presence_max_room`
/// members, without `user`.
async fn co_members(fanout: &Fanout, user: &UserId) -> Result<BTreeSet<UserId>, HistoryError> {
    let rooms = fanout.history.user_rooms(user).await?;
    co_members_in(fanout, user, &rooms).await
}

/// Members of those of `rooms` with at most `presence_max_room` members,
/// without `user`.
pub(crate) async fn co_members_in(
    fanout: &Fanout,
    user: &UserId,
    rooms: &[chat_core::RoomId],
) -> Result<BTreeSet<UserId>, HistoryError> {
    let mut out = BTreeSet::new();
    for room in rooms {
        let members = fanout.members.members(room).await?;
        if members.len() > fanout.presence_max_room {
            metrics::counter!("chat_fanout_presence_large_rooms_skipped_total").increment(1);
            continue;
        }
        out.extend(members.iter().cloned());
    }
    out.remove(user);
    Ok(out)
}
