//! Setting a session up after its `hello`: the user's rooms, the head (last
//! message sequence) of every room `welcome` names and of every resumed
//! room, positions beyond a room's head clamped to it, and what the writer
//! writes first. A room's head in `welcome` is a promise: every message
//! after it reaches the session, live or filled behind it.

use std::collections::{BTreeMap, HashMap, HashSet};

use chat_core::svc::ErrorCode;
use chat_core::wire::{PROTOCOL_VERSION, RoomHead, ServerFrame};
use chat_core::{RoomId, UserId};
use futures::StreamExt;

use crate::error::GatewayError;
use crate::session::encode;
use crate::state::AppState;
use crate::writer::{ResumeJob, Start};

/// Most rooms one `hello` may resume.
pub const MAX_RESUME_ROOMS: usize = 1000;
/// Head reads in flight at once for one session.
const HEAD_READS_AT_ONCE: usize = 32;

/// The user's rooms (for the registry) and the writer's start.
pub async fn prepare(
    st: &AppState,
    user: &UserId,
    resume: BTreeMap<RoomId, u64>,
) -> Result<(Vec<RoomId>, Start), GatewayError> {
    let mut rooms = st.rooms_of(user).await?;
    rooms.sort();
    let member: HashSet<&RoomId> = rooms.iter().collect();
    let mut refusals = Vec::new();
    let mut resumed = Vec::new();
    for (i, (room, after)) in resume.into_iter().enumerate() {
        let refused = if i >= MAX_RESUME_ROOMS {
            Some((
                ErrorCode::BadRequest,
                format!("cannot resume {room}: more than {MAX_RESUME_ROOMS} rooms in one hello"),
            ))
        } else if !member.contains(&room) {
            Some((
                ErrorCode::NotMember,
                format!("cannot resume {room}: not a member"),
            ))
        } else {
            None
        };
        match refused {
            Some((code, message)) => refusals.push(encode(&ServerFrame::Error {
                id: None,
                code,
                message,
                room: Some(room),
            })),
            None => resumed.push((room, after)),
        }
    }
    let page = st.config.welcome_rooms;
    let more_rooms = rooms.len() > page;
    let shown: Vec<RoomId> = rooms.iter().take(page).cloned().collect();
    let mut wanted: Vec<RoomId> = shown.clone();
    wanted.extend(resumed.iter().map(|(r, _)| r.clone()));
    wanted.sort();
    wanted.dedup();
    let heads: HashMap<RoomId, u64> = read_heads(st, &wanted).await?.into_iter().collect();
    let head = |room: &RoomId| heads.get(room).copied().unwrap_or(0);

    let mut resumes = Vec::with_capacity(resumed.len());
    for (room, after) in resumed {
        let mut tail = head(&room);
        let mut clamped = false;
        if after > tail {
            // A direct get may come from a replica that is behind; only
            // the leader can say the client is really ahead of the room.
            tail = st
                .log
                .last_seq_from_leader(&room)
                .await
                .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
            clamped = after > tail;
            if clamped {
                metrics::counter!("chat_gateway_resumes_clamped_total").increment(1);
            }
        }
        resumes.push(ResumeJob {
            room,
            after,
            tail,
            clamped,
        });
    }
    let resumed_rooms: HashSet<RoomId> = resumes.iter().map(|j| j.room.clone()).collect();
    let positions = shown
        .iter()
        .filter(|r| !resumed_rooms.contains(*r))
        .map(|r| (r.clone(), head(r)))
        .collect();
    let welcome = encode(&ServerFrame::Welcome {
        v: PROTOCOL_VERSION,
        user: user.clone(),
        gateway: st.config.gateway_id.clone(),
        rooms: shown
            .iter()
            .map(|r| RoomHead {
                id: r.clone(),
                seq: head(r),
            })
            .collect(),
        more_rooms,
        limits: st.config.limits.wire(),
    });
    Ok((
        rooms,
        Start {
            welcome,
            positions,
            resumes,
            refusals,
            presence: None,
        },
    ))
}

/// The last message sequence of each room (0 for none), in the order of
/// `rooms`, read from the room stream a few at a time.
pub async fn read_heads(
    st: &AppState,
    rooms: &[RoomId],
) -> Result<Vec<(RoomId, u64)>, GatewayError> {
    let reads = futures::stream::iter(rooms.iter().cloned())
        .map(|room| async move {
            let seq = st.log.last_seq(&room).await;
            (room, seq)
        })
        .buffered(HEAD_READS_AT_ONCE)
        .collect::<Vec<_>>();
    let read = tokio::time::timeout(st.config.request_timeout, reads)
        .await
        .map_err(|_| GatewayError::Unavailable("room heads: no answer in time".into()))?;
    read.into_iter()
        .map(|(room, seq)| {
            seq.map(|s| (room, s))
                .map_err(|e| GatewayError::Unavailable(format!("room head: {e}")))
        })
        .collect()
}
