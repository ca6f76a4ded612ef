//! Who is connected to this gateway: user → sessions (each with its bounded
//! outbound queue) and the rooms the user belongs to, and the reverse index
//! room → connected members (the recipients of room-wide deliveries).
//! Deliveries, heads and presence reports go through here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_core::events::{Delivery, MemberOp, Routed};
use chat_core::{RoomId, UserId};
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

/// Identifies one connection within this process.
pub type SessionId = u64;

/// Why the server ends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// What a session's writer is asked to do, in order.
#[derive(Debug)]
pub enum Out {
    /// Write this frame.
    Frame(Utf8Bytes),
    /// Write these frames in order, taking one place in the queue (the
    /// `online` frames after a join: a room of hundreds online must not
    /// fill the queue and close the session as a slow consumer).
    Frames(Vec<Utf8Bytes>),
    /// Write this message frame of `room` in sequence order (see
    /// [`crate::ordering`]).
    Msg {
        room: RoomId,
        seq: u64,
        frame: Utf8Bytes,
    },
    /// Fanout delivered up to `seq` of `room`: fill anything the session
    /// has not written yet (a lost delivery of the room's last messages).
    Head { room: RoomId, seq: u64 },
    /// The client was told these rooms' positions (a `rooms.list` page, a
    /// join): every later message must reach it, so rooms the session has
    /// no position for yet start there.
    Positions(Vec<(RoomId, u64)>),
    /// The user left `room`: the session forgets its position there, so a
    /// session that joins and leaves many rooms holds no state for them.
    Forget(RoomId),
}

/// The part of a session other tasks may touch.
#[derive(Clone)]
pub struct SessionHandle {
    /// Work for the writer; bounded by the queue depth.
    pub tx: crate::queue::Sender<Out>,
    /// Cancelled to close the session; the reason is in `close_reason`.
    pub kill: CancellationToken,
    pub close_reason: Arc<Mutex<Option<CloseReason>>>,
    /// The sign-in session (`sid`) of the token the session runs on; an
    /// in-band `auth` may change it.
    pub sid: Arc<Mutex<Option<String>>>,
}

impl SessionHandle {
    /// Asks the session to close with `code`; the first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        let mut r = lock(&self.close_reason);
        if r.is_none() {
            *r = Some(CloseReason {
                code,
                reason: reason.to_string(),
            });
        }
        drop(r);
        self.kill.cancel();
    }

    /// Queues a frame; on a full queue the session is closed as a slow consumer.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        self.push_out(Out::Frame(frame))
    }

    /// Queues writer work; on a full queue the session is closed as a slow
    /// consumer. Every kind of work goes through here: one policy.
    pub fn push_out(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(crate::queue::PushError::Full) => {
                metrics::counter!("chat_gateway_slow_consumer_closes_total").increment(1);
                self.close(
                    chat_core::wire::close::SLOW_CONSUMER,
                    "outbound queue full: reconnect and resume",
                );
                false
            }
            Err(crate::queue::PushError::Closed) => false,
        }
    }
}

#[derive(Default)]
struct UserEntry {
    sessions: HashMap<SessionId, SessionHandle>,
    /// Ordered, so `rooms.list` pages by id.
    rooms: BTreeSet<RoomId>,
}

/// Why a session was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this account already has {0} connections to this gateway")]
pub struct TooManySessions(pub usize);

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, UserEntry>,
    /// Connected members per room, kept with `UserEntry::rooms`.
    by_room: HashMap<RoomId, HashSet<UserId>>,
}

impl Inner {
    fn index(&mut self, user: &UserId, room: &RoomId) {
        self.by_room
            .entry(room.clone())
            .or_default()
            .insert(user.clone());
    }

    fn unindex(&mut self, user: &UserId, room: &RoomId) {
        if let Some(members) = self.by_room.get_mut(room) {
            members.remove(user);
            if members.is_empty() {
                self.by_room.remove(room);
            }
        }
    }
}

/// Connected users of this gateway.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Registry {
    /// Adds a session unless the user already has `max_sessions` here;
    /// returns true when it is the user's first session on this gateway.
    /// From now on deliveries reach it.
    pub fn add(
        &self,
        user: &UserId,
        id: SessionId,
        handle: SessionHandle,
        rooms: Vec<RoomId>,
        max_sessions: usize,
    ) -> Result<bool, TooManySessions> {
        let mut inner = lock(&self.inner);
        let entry = inner.users.entry(user.clone()).or_default();
        if entry.sessions.len() >= max_sessions {
            return Err(TooManySessions(entry.sessions.len()));
        }
        let first = entry.sessions.is_empty();
        entry.sessions.insert(id, handle);
        let new: Vec<RoomId> = rooms
            .into_iter()
            .filter(|r| entry.rooms.insert(r.clone()))
            .collect();
        for room in &new {
            inner.index(user, room);
        }
        Ok(first)
    }

    /// Closes every session running on sign-in session `sid`; how many.
    pub fn close_session(&self, sid: &str, code: u16, reason: &str) -> usize {
        let inner = lock(&self.inner);
        let mut n = 0;
        for s in inner.users.values().flat_map(|e| e.sessions.values()) {
            if lock(&s.sid).as_deref() == Some(sid) {
                s.close(code, reason);
                n += 1;
            }
        }
        n
    }

    /// Sessions `user` has on this gateway now.
    pub fn sessions_of(&self, user: &UserId) -> usize {
        lock(&self.inner)
            .users
            .get(user)
            .map_or(0, |e| e.sessions.len())
    }

    /// Removes a session; returns true when it was the user's last.
    pub fn remove(&self, user: &UserId, id: SessionId) -> bool {
        let mut inner = lock(&self.inner);
        let Some(entry) = inner.users.get_mut(user) else {
            return false;
        };
        entry.sessions.remove(&id);
        if !entry.sessions.is_empty() {
            return false;
        }
        if let Some(entry) = inner.users.remove(user) {
            for room in &entry.rooms {
                inner.unindex(user, room);
            }
        }
        true
    }

    /// Whether `user` is a member of `room` as far as this gateway knows.
    pub fn is_member(&self, user: &UserId, room: &RoomId) -> bool {
        lock(&self.inner)
            .users
            .get(user)
            .is_some_and(|e| e.rooms.contains(room))
    }

    /// Up to `limit` of `user`'s rooms after `after` (by id), and whether
    /// more follow.
    pub fn rooms_page(
        &self,
        user: &UserId,
        after: Option<&RoomId>,
        limit: usize,
    ) -> (Vec<RoomId>, bool) {
        let inner = lock(&self.inner);
        let Some(e) = inner.users.get(user) else {
            return (Vec::new(), false);
        };
        let mut it: Box<dyn Iterator<Item = &RoomId>> = match after {
            Some(a) => Box::new(
                e.rooms
                    .range::<RoomId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(e.rooms.iter()),
        };
        let page: Vec<RoomId> = it.by_ref().take(limit).cloned().collect();
        (page, it.next().is_some())
    }

    /// Records a membership change of a connected user; on a leave, the
    /// user's sessions forget the room.
    pub fn set_member(&self, user: &UserId, room: &RoomId, op: MemberOp) {
        let sessions: Vec<SessionHandle> = {
            let mut inner = lock(&self.inner);
            let Some(e) = inner.users.get_mut(user) else {
                return;
            };
            match op {
                MemberOp::Join => {
                    if e.rooms.insert(room.clone()) {
                        inner.index(user, room);
                    }
                    return;
                }
                MemberOp::Leave => {
                    if !e.rooms.remove(room) {
                        return;
                    }
                    let sessions = e.sessions.values().cloned().collect();
                    inner.unindex(user, room);
                    sessions
                }
            }
        };
        for s in sessions {
            s.push_out(Out::Forget(room.clone()));
        }
    }

    /// Every connected user (for presence heartbeats).
    pub fn users(&self) -> Vec<UserId> {
        lock(&self.inner).users.keys().cloned().collect()
    }

    /// Every session (for shutdown).
    pub fn sessions(&self) -> Vec<SessionHandle> {
        lock(&self.inner)
            .users
            .values()
            .flat_map(|e| e.sessions.values().cloned())
            .collect()
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        lock(&self.inner)
            .users
            .values()
            .map(|e| e.sessions.len())
            .sum()
    }

    fn sessions_of_users<'a>(&self, users: impl Iterator<Item = &'a UserId>) -> Vec<SessionHandle> {
        let inner = lock(&self.inner);
        users
            .filter_map(|u| inner.users.get(u))
            .flat_map(|e| e.sessions.values().cloned())
            .collect()
    }

    /// Sessions of every connected member of `room`, and of `extra` (who
    /// may no longer be members).
    fn sessions_of_room(&self, room: &RoomId, extra: &[UserId]) -> Vec<SessionHandle> {
        let inner = lock(&self.inner);
        let members = inner.by_room.get(room);
        let extra = extra
            .iter()
            .filter(|u| !members.is_some_and(|m| m.contains(*u)));
        members
            .into_iter()
            .flatten()
            .chain(extra)
            .filter_map(|u| inner.users.get(u))
            .flat_map(|e| e.sessions.values().cloned())
            .collect()
    }

    /// Connected members of `room` as this gateway knows them (tests).
    #[cfg(test)]
    fn members_of(&self, room: &RoomId) -> usize {
        lock(&self.inner).by_room.get(room).map_or(0, HashSet::len)
    }

    /// Passes a head to every session of its users (fanout computed them
    /// from the room's members, as for a delivery; the session's own room
    /// list may predate a recent join). Heads are hints: one only goes into
    /// a queue that is at most half full and is otherwise dropped (the next
    /// heads, 2 s later, repeat it), so a user in hundreds of busy rooms is
    /// never closed by a heads batch. Returns the number of sessions it
    /// reached.
    pub fn head(&self, h: &chat_core::events::Head) -> usize {
        self.sessions_of_users(h.users.iter())
            .into_iter()
            .filter(|s| {
                let queued = s.tx.try_send_hint(Out::Head {
                    room: h.room.clone(),
                    seq: h.seq,
                });
                if !queued {
                    metrics::counter!("chat_gateway_heads_dropped_total").increment(1);
                }
                queued
            })
            .count()
    }

    /// Writes a delivery's frame to every session of its users (or, for a
    /// room-wide delivery, of the room's connected members and its users),
    /// as its kind says. The frame is shared, not copied, per session.
    /// Returns the number of frames queued; a delivery whose fields do not
    /// match its kind is refused.
    pub fn deliver(&self, d: Delivery) -> Result<usize, &'static str> {
        // Messages are ordered per session; membership and presence frames
        // carry no number of their own and pass as they come.
        let msg = match d.routed()? {
            Routed::Msg { room, seq } => Some((room.clone(), seq)),
            Routed::Member { change } => {
                self.set_member(&change.user, &change.room, change.op);
                None
            }
            Routed::Presence => None,
        };
        let targets = match (&d.room, d.to_room) {
            // routed() refuses a room-wide delivery without a room.
            (Some(room), true) => self.sessions_of_room(room, &d.users),
            _ => self.sessions_of_users(d.users.iter()),
        };
        let frame = Utf8Bytes::from(d.frame);
        // Push outside the lock: closing a slow session must not block others.
        let queued = targets
            .into_iter()
            .filter(|s| match &msg {
                Some((room, seq)) => s.push_out(Out::Msg {
                    room: room.clone(),
                    seq: *seq,
                    frame: frame.clone(),
                }),
                None => s.push(frame.clone()),
            })
            .count();
        Ok(queued)
    }
}

#[cfg(test)]
mod tests;
