//! Who is connected to this gateway: user → sessions (each with its bounded
//! outbound queue) and the rooms the user belongs to. Deliveries, heads and
//! presence reports go through here.

use std::collections::{BTreeSet, HashMap};
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

/// Connected users of this gateway.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<UserId, UserEntry>>>,
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
        let mut map = lock(&self.inner);
        let entry = map.entry(user.clone()).or_default();
        if entry.sessions.len() >= max_sessions {
            return Err(TooManySessions(entry.sessions.len()));
        }
        let first = entry.sessions.is_empty();
        entry.sessions.insert(id, handle);
        entry.rooms.extend(rooms);
        Ok(first)
    }

    /// Closes every session running on sign-in session `sid`; how many.
    pub fn close_session(&self, sid: &str, code: u16, reason: &str) -> usize {
        let map = lock(&self.inner);
        let mut n = 0;
        for s in map.values().flat_map(|e| e.sessions.values()) {
            if lock(&s.sid).as_deref() == Some(sid) {
                s.close(code, reason);
                n += 1;
            }
        }
        n
    }

    /// Sessions `user` has on this gateway now.
    pub fn sessions_of(&self, user: &UserId) -> usize {
        lock(&self.inner).get(user).map_or(0, |e| e.sessions.len())
    }

    /// Removes a session; returns true when it was the user's last.
    pub fn remove(&self, user: &UserId, id: SessionId) -> bool {
        let mut map = lock(&self.inner);
        let Some(entry) = map.get_mut(user) else {
            return false;
        };
        entry.sessions.remove(&id);
        if entry.sessions.is_empty() {
            map.remove(user);
            true
        } else {
            false
        }
    }

    /// Whether `user` is a member of `room` as far as this gateway knows.
    pub fn is_member(&self, user: &UserId, room: &RoomId) -> bool {
        lock(&self.inner)
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
        let map = lock(&self.inner);
        let Some(e) = map.get(user) else {
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
            let mut map = lock(&self.inner);
            let Some(e) = map.get_mut(user) else {
                return;
            };
            match op {
                MemberOp::Join => {
                    e.rooms.insert(room.clone());
                    return;
                }
                MemberOp::Leave => {
                    if !e.rooms.remove(room) {
                        return;
                    }
                    e.sessions.values().cloned().collect()
                }
            }
        };
        for s in sessions {
            s.push_out(Out::Forget(room.clone()));
        }
    }

    /// Every connected user (for presence heartbeats).
    pub fn users(&self) -> Vec<UserId> {
        lock(&self.inner).keys().cloned().collect()
    }

    /// Every session (for shutdown).
    pub fn sessions(&self) -> Vec<SessionHandle> {
        lock(&self.inner)
            .values()
            .flat_map(|e| e.sessions.values().cloned())
            .collect()
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        lock(&self.inner).values().map(|e| e.sessions.len()).sum()
    }

    fn sessions_of_users<'a>(&self, users: impl Iterator<Item = &'a UserId>) -> Vec<SessionHandle> {
        let map = lock(&self.inner);
        users
            .filter_map(|u| map.get(u))
            .flat_map(|e| e.sessions.values().cloned())
            .collect()
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

    /// Writes a delivery's frame to every session of its users, as its kind
    /// says. The frame is shared, not copied, per session. Returns the
    /// number of frames queued; a delivery whose fields do not match its
    /// kind is refused.
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
        let targets = self.sessions_of_users(d.users.iter());
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
mod tests {
    use chat_core::events::{DeliveryKind, Head};

    use super::*;

    fn handle(depth: usize) -> (SessionHandle, crate::queue::Receiver<Out>) {
        let (tx, rx) = crate::queue::bounded(depth);
        let h = SessionHandle {
            tx,
            kill: CancellationToken::new(),
            close_reason: Arc::new(Mutex::new(None)),
            sid: Arc::new(Mutex::new(None)),
        };
        (h, rx)
    }

    fn ids(s: &str) -> (UserId, RoomId) {
        (
            UserId::parse(s).expect("user"),
            RoomId::parse(format!("r{s}")).expect("room"),
        )
    }

    #[test]
    fn a_user_gets_at_most_the_configured_sessions() {
        let reg = Registry::default();
        let (user, room) = ids("a");
        for id in 0..2 {
            let (h, _rx) = handle(4);
            assert_eq!(reg.add(&user, id, h, vec![room.clone()], 2), Ok(id == 0));
        }
        let (h, _rx) = handle(4);
        assert_eq!(reg.add(&user, 9, h, vec![], 2), Err(TooManySessions(2)));
        assert!(!reg.remove(&user, 0), "session 1 is still there");
        let (h, _rx) = handle(4);
        assert!(
            reg.add(&user, 9, h, vec![], 2).is_ok(),
            "a freed place is reusable"
        );
    }

    #[test]
    fn heads_are_dropped_at_a_half_full_queue_and_never_close_the_session() {
        let reg = Registry::default();
        let (user, room) = ids("b");
        let (h, _rx) = handle(4);
        let (kill, tx) = (h.kill.clone(), h.tx.clone());
        reg.add(&user, 1, h, vec![room.clone()], 4).expect("added");
        let head = Head {
            room,
            seq: 3,
            users: vec![user],
        };
        assert_eq!(reg.head(&head), 1);
        assert_eq!(reg.head(&head), 1);
        assert_eq!(reg.head(&head), 0, "half full: the head is dropped");
        assert!(!kill.is_cancelled(), "a head never closes a session");
        assert!(
            tx.try_send(Out::Forget(ids("x").1)).is_ok(),
            "room left for real work"
        );
    }

    #[test]
    fn rooms_are_paged_by_id() {
        let reg = Registry::default();
        let user = UserId::parse("c").expect("user");
        let rooms: Vec<RoomId> = ["r3", "r1", "r2"]
            .iter()
            .map(|r| RoomId::parse(*r).expect("room"))
            .collect();
        let (h, _rx) = handle(4);
        reg.add(&user, 1, h, rooms.clone(), 4).expect("added");
        let (first, more) = reg.rooms_page(&user, None, 2);
        assert_eq!((first.len(), more), (2, true));
        assert_eq!(first[0].as_str(), "r1");
        let (rest, more) = reg.rooms_page(&user, first.last(), 2);
        assert_eq!(rest.iter().map(RoomId::as_str).collect::<Vec<_>>(), ["r3"]);
        assert!(!more);
    }

    #[test]
    fn a_delivery_whose_fields_do_not_match_its_kind_is_refused() {
        let reg = Registry::default();
        let (user, room) = ids("d");
        let (h, mut rx) = handle(8);
        reg.add(&user, 1, h, vec![room.clone()], 4).expect("added");
        let d = Delivery {
            v: 1,
            kind: DeliveryKind::Presence,
            users: vec![user],
            frame: "{}".into(),
            room: Some(room),
            seq: Some(1),
            membership: None,
        };
        assert!(reg.deliver(d).is_err());
        assert!(rx.try_recv().is_none(), "nothing queued");
    }
}
