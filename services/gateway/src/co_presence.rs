//! What a session is told of its co-members' presence by asking fanout:
//! the `presence.snapshot` right after `welcome`, and an `online` frame per
//! online member of a room it has just joined.

use chat_core::names::svc as subjects;
use chat_core::svc;
use chat_core::wire::ServerFrame;
use chat_core::{RoomId, SCHEMA_VERSION, UserId};
use tokio::sync::oneshot;
use tungstenite::Utf8Bytes;

use crate::registry::SessionHandle;
use crate::session::encode;
use crate::state::AppState;

/// Who of `rooms`' members (without `user`) fanout sees online.
async fn online(st: &AppState, user: UserId, rooms: Vec<RoomId>) -> Option<svc::PresenceSnapshot> {
    let query = svc::PresenceSnapshotQuery {
        v: SCHEMA_VERSION,
        user,
        rooms,
    };
    match st
        .request::<_, svc::PresenceSnapshot>(subjects::FANOUT_PRESENCE_SNAPSHOT, &query)
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "no presence snapshot");
            None
        }
    }
}

/// Asks fanout which co-members are online and hands the
/// `presence.snapshot` frame to the writer (which waits only briefly).
pub async fn snapshot(
    st: AppState,
    user: UserId,
    rooms: Vec<RoomId>,
    tx: oneshot::Sender<Utf8Bytes>,
) {
    if let Some(s) = online(&st, user, rooms).await {
        let _taken = tx.send(encode(&ServerFrame::PresenceSnapshot {
            online: s.online,
            more: s.more,
        }));
    }
}

/// After `room.joined`: an `online` frame for each member of `room` who is
/// online, queued behind the reply. The joining session is asked for here,
/// not by fanout from the join event, because fanout may not yet know on
/// which gateway a user who has just connected is; the other members learn
/// of the joiner from fanout (the join event, or the joiner's own `online`
/// change).
pub async fn joined(st: AppState, user: UserId, room: RoomId, session: SessionHandle) {
    let Some(s) = online(&st, user, vec![room]).await else {
        return;
    };
    if s.online.is_empty() {
        return;
    }
    let frames = s
        .online
        .into_iter()
        .map(|member| {
            encode(&ServerFrame::Presence {
                user: member,
                status: chat_core::events::PresenceStatus::Online,
            })
        })
        .collect();
    // One place in the queue for all of them (at most the snapshot's cut,
    // `CHAT_FANOUT_PRESENCE_SNAPSHOT_MAX`).
    let _queued = session.push_out(crate::registry::Out::Frames(frames));
}
