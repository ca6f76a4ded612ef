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
    /// Answer the client's ping with this payload.
    Pong(bytes::Bytes),
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
pub enum AddError {
    #[error("this account already has {0} connections to this gateway")]
    TooManySessions(usize),
    /// More membership changes arrived while the session started than its
    /// watch keeps: its room list may be wrong, so it must start again.
    #[error("too many membership changes while the session started")]
    MissedChanges,
}

/// Default of `CHAT_GATEWAY_MAX_CHANGES_WHILE_CONNECTING`: most membership
/// changes of a user recorded for one starting session.
pub const MAX_WATCHED_CHANGES: usize = 1024;

/// Membership changes of a user whose session is starting, in arrival
/// order: its rooms are read from history before it is registered, and a
/// change delivered in between would otherwise be lost (`set_member` knows
/// only registered users).
#[derive(Default)]
struct Watch {
    changes: Vec<(RoomId, MemberOp)>,
    overflowed: bool,
}

/// Records a user's membership changes until it is passed to
/// [`Registry::add`] or dropped.
pub struct ChangeWatch {
    registry: Registry,
    user: UserId,
    /// None once `add` has taken it.
    id: Option<u64>,
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.registry.inner).take_watch(&self.user, id);
        }
    }
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, UserEntry>,
    /// Connected members per room, kept with `UserEntry::rooms`.
    by_room: HashMap<RoomId, HashSet<UserId>>,
    /// Starting sessions' watches, by user and watch id.
    watches: HashMap<UserId, HashMap<u64, Watch>>,
    next_watch: u64,
}

impl Inner {
    fn take_watch(&mut self, user: &UserId, id: u64) -> Option<Watch> {
        let watches = self.watches.get_mut(user)?;
        let watch = watches.remove(&id);
        if watches.is_empty() {
            self.watches.remove(user);
        }
        watch
    }

    /// Applies one membership change to a registered user's rooms and the
    /// index; true when it changed something.
    fn apply(&mut self, user: &UserId, room: &RoomId, op: MemberOp) -> bool {
        let Some(e) = self.users.get_mut(user) else {
            return false;
        };
        let changed = match op {
            MemberOp::Join => e.rooms.insert(room.clone()),
            MemberOp::Leave => e.rooms.remove(room),
        };
        match (changed, op) {
            (true, MemberOp::Join) => self.index(user, room),
            (true, MemberOp::Leave) => self.unindex(user, room),
            (false, _) => {}
        }
        changed
    }

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
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// Most changes one starting session's watch keeps.
    watch_limit: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(MAX_WATCHED_CHANGES)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Registry {
    /// An empty registry whose starting sessions' watches keep at most
    /// `watch_limit` changes each.
    pub fn new(watch_limit: usize) -> Self {
        Self {
            inner: Arc::default(),
            watch_limit,
        }
    }

    /// Starts recording `user`'s membership changes: take it before reading
    /// the user's rooms, pass it to [`Registry::add`].
    pub fn watch_changes(&self, user: &UserId) -> ChangeWatch {
        let mut inner = lock(&self.inner);
        inner.next_watch += 1;
        let id = inner.next_watch;
        inner
            .watches
            .entry(user.clone())
            .or_default()
            .insert(id, Watch::default());
        ChangeWatch {
            registry: self.clone(),
            user: user.clone(),
            id: Some(id),
        }
    }

    /// Adds a session unless the user already has `max_sessions` here;
    /// returns true when it is the user's first session on this gateway.
    /// Its `rooms` (read after `watch` began) are updated with the changes
    /// `watch` recorded, in order. From now on deliveries reach it.
    pub fn add(
        &self,
        user: &UserId,
        id: SessionId,
        handle: SessionHandle,
        rooms: Vec<RoomId>,
        max_sessions: usize,
        mut watch: ChangeWatch,
    ) -> Result<bool, AddError> {
        let mut inner = lock(&self.inner);
        // Taken here, under the same lock as the registration: no change
        // can fall between the two (and the watch's drop has nothing left).
        let changes = watch
            .id
            .take()
            .and_then(|id| inner.take_watch(user, id))
            .unwrap_or_default();
        if changes.overflowed {
            return Err(AddError::MissedChanges);
        }
        let entry = inner.users.entry(user.clone()).or_default();
        if entry.sessions.len() >= max_sessions {
            return Err(AddError::TooManySessions(entry.sessions.len()));
        }
        let first = entry.sessions.is_empty();
        entry.sessions.insert(id, handle);
        for room in rooms {
            inner.apply(user, &room, MemberOp::Join);
        }
        // A change may already be in what was read, or newer than it;
        // applied in order, the later events of the stream settle it.
        for (room, op) in &changes.changes {
            inner.apply(user, room, *op);
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

    /// Records a membership change of a connected user (and in the watches
    /// of the user's sessions still starting); on a leave, the user's
    /// sessions forget the room.
    pub fn set_member(&self, user: &UserId, room: &RoomId, op: MemberOp) {
        let sessions: Vec<SessionHandle> = {
            let mut inner = lock(&self.inner);
            if let Some(watches) = inner.watches.get_mut(user) {
                for w in watches.values_mut() {
                    if w.changes.len() < self.watch_limit {
                        w.changes.push((room.clone(), op));
                    } else {
                        w.overflowed = true;
                    }
                }
            }
            if !inner.apply(user, room, op) || op == MemberOp::Join {
                return;
            }
            inner
                .users
                .get(user)
                .map(|e| e.sessions.values().cloned().collect())
                .unwrap_or_default()
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
