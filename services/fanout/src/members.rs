//! Room members as fanout sees them: a per-room cache filled on a miss from
//! the history service (`svc.history.room.members`) and then kept current by
//! the membership events passing through the room stream in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_core::names;
use chat_core::svc::{Members, Reply, RoomRef, SvcError, UserRef, UserRooms};
use chat_core::{RoomId, SCHEMA_VERSION, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a history request may take before it counts as failed.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// A history request that did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("request {subject}: {reason}")]
    Request {
        subject: &'static str,
        reason: String,
    },
    #[error("reply of {subject} unreadable: {reason}")]
    Decode {
        subject: &'static str,
        reason: String,
    },
    #[error("history refused {subject}: {error}")]
    Refused {
        subject: &'static str,
        error: SvcError,
    },
}

/// Request/reply client of the history service.
#[derive(Clone)]
pub struct History {
    client: async_nats::Client,
}

impl History {
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// `svc.history.room.members`
    pub async fn room_members(&self, room: &RoomId) -> Result<Vec<UserId>, HistoryError> {
        let req = RoomRef {
            v: SCHEMA_VERSION,
            room: room.clone(),
        };
        let reply: Members = self.request(names::svc::HISTORY_ROOM_MEMBERS, &req).await?;
        Ok(reply.members)
    }

    /// `svc.history.user.rooms`
    pub async fn user_rooms(&self, user: &UserId) -> Result<Vec<RoomId>, HistoryError> {
        let req = UserRef {
            v: SCHEMA_VERSION,
            user: user.clone(),
        };
        let reply: UserRooms = self.request(names::svc::HISTORY_USER_ROOMS, &req).await?;
        Ok(reply.rooms)
    }

    async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: &'static str,
        req: &Q,
    ) -> Result<R, HistoryError> {
        let fail = |reason: String| HistoryError::Request { subject, reason };
        let body = serde_json::to_vec(req).map_err(|e| fail(e.to_string()))?;
        let msg = tokio::time::timeout(HISTORY_TIMEOUT, self.client.request(subject, body.into()))
            .await
            .map_err(|_| fail(format!("no reply within {HISTORY_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let reply: Reply<R> =
            serde_json::from_slice(&msg.payload).map_err(|e| HistoryError::Decode {
                subject,
                reason: e.to_string(),
            })?;
        reply
            .into_result()
            .map_err(|error| HistoryError::Refused { subject, error })
    }
}

/// How long a room's cached members are trusted before they are read from
/// history again. Membership changes normally arrive as events (from this
/// instance's part of the stream, or from the other instances on
/// `fanout.membership`); this bounds the staleness if one is ever missed.
const MEMBERS_TTL: Duration = Duration::from_secs(60);

/// A room's members, shared: every event of the room reads them, and a
/// room of 10,000 must not be copied per message. Membership events change
/// them copy-on-write.
pub type MemberSet = Arc<BTreeSet<UserId>>;

type Cached = (MemberSet, Instant);

/// room → members. Shared by the room pipeline and the presence relay.
#[derive(Clone)]
pub struct MemberCache {
    history: History,
    rooms: Arc<Mutex<HashMap<RoomId, Cached>>>,
    /// Rooms cached at most (`CHAT_FANOUT_MEMBER_CACHE_ROOMS`); beyond it
    /// an arbitrary room is evicted and refilled from history on its next
    /// event.
    max_rooms: usize,
}

impl MemberCache {
    pub fn new(history: History, max_rooms: usize) -> Self {
        Self {
            history,
            rooms: Arc::default(),
            max_rooms: max_rooms.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Cached>> {
        match self.rooms.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Members of `room`, asking history on a miss.
    pub async fn members(&self, room: &RoomId) -> Result<MemberSet, HistoryError> {
        if let Some((m, at)) = self.lock().get(room)
            && at.elapsed() < MEMBERS_TTL
        {
            metrics::counter!("chat_fanout_member_cache_hits_total").increment(1);
            return Ok(m.clone());
        }
        metrics::counter!("chat_fanout_member_cache_misses_total").increment(1);
        let fetched: MemberSet =
            Arc::new(self.history.room_members(room).await?.into_iter().collect());
        let mut rooms = self.lock();
        // Someone else may have filled it meanwhile and applied later
        // membership events to it: theirs is at least as current.
        if let Some((m, at)) = rooms.get(room)
            && at.elapsed() < MEMBERS_TTL
        {
            return Ok(m.clone());
        }
        if rooms.len() >= self.max_rooms
            && let Some(victim) = rooms.keys().next().cloned()
        {
            rooms.remove(&victim);
        }
        rooms.insert(room.clone(), (fetched.clone(), Instant::now()));
        Ok(fetched)
    }

    /// Records a join seen in the room stream (no-op for an uncached room).
    pub fn joined(&self, room: &RoomId, user: &UserId) {
        if let Some((m, _)) = self.lock().get_mut(room) {
            Arc::make_mut(m).insert(user.clone());
        }
    }

    /// Records a leave seen in the room stream (no-op for an uncached room).
    pub fn left(&self, room: &RoomId, user: &UserId) {
        if let Some((m, _)) = self.lock().get_mut(room) {
            Arc::make_mut(m).remove(user);
        }
    }
}
