//! Who is connected to this gateway: user → sessions (each with its bounded
//! outbound queue) and the rooms the user belongs to. Deliveries and
//! presence reports go through here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use chat_core::events::{Delivery, MemberOp};
use chat_core::{RoomId, UserId};
use tokio_util::sync::CancellationToken;

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
    /// Write this message frame of `room` in sequence order (see
    /// [`crate::ordering`]).
    Msg {
        room: RoomId,
        seq: u64,
        frame: Utf8Bytes,
    },
    /// Send what the client missed in `room` after `after`, then `resumed`.
    Resume { room: RoomId, after: u64 },
    /// Fanout delivered up to `seq` of `room`: fill anything the session
    /// has not written yet (a lost delivery of the room's last messages).
    Head { room: RoomId, seq: u64 },
}

/// The part of a session other tasks may touch.
#[derive(Clone)]
pub struct SessionHandle {
    /// Work for the writer; bounded by the queue depth.
    pub tx: crate::queue::Sender<Out>,
    /// Cancelled to close the session; the reason is in `close_reason`.
    pub kill: CancellationToken,
    pub close_reason: Arc<Mutex<Option<CloseReason>>>,
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
    /// consumer.
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
    rooms: HashSet<RoomId>,
}

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
    /// Adds a session, queuing `welcome` as its first frame; returns true
    /// when it is the user's first session on this gateway. The frame is
    /// queued under the registry's lock, before the session becomes visible
    /// to deliveries, so nothing can be queued ahead of it.
    pub fn add(
        &self,
        user: &UserId,
        id: SessionId,
        handle: SessionHandle,
        rooms: Vec<RoomId>,
        welcome: Utf8Bytes,
    ) -> bool {
        let mut map = lock(&self.inner);
        handle.push(welcome);
        let entry = map.entry(user.clone()).or_default();
        let first = entry.sessions.is_empty();
        entry.sessions.insert(id, handle);
        entry.rooms.extend(rooms);
        first
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

    /// Records a membership change of a connected user.
    pub fn set_member(&self, user: &UserId, room: &RoomId, op: MemberOp) {
        if let Some(e) = lock(&self.inner).get_mut(user) {
            match op {
                MemberOp::Join => {
                    e.rooms.insert(room.clone());
                }
                MemberOp::Leave => {
                    e.rooms.remove(room);
                }
            }
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

    /// Passes a head to every session of its users (fanout computed them
    /// from the room's members, as for a delivery; the session's own room
    /// list may predate a recent join). A full queue is left alone: it
    /// already has work that will show any gap.
    pub fn head(&self, h: &chat_core::events::Head) -> usize {
        let targets: Vec<SessionHandle> = {
            let map = lock(&self.inner);
            h.users
                .iter()
                .filter_map(|u| map.get(u))
                .flat_map(|e| e.sessions.values().cloned())
                .collect()
        };
        targets
            .into_iter()
            .filter(|s| {
                s.tx.try_send(Out::Head {
                    room: h.room.clone(),
                    seq: h.seq,
                })
                .is_ok()
            })
            .count()
    }

    /// Writes a delivery's frame to every session of its users. The frame is
    /// shared, not copied, per session. Returns the number of frames queued.
    pub fn deliver(&self, d: Delivery) -> usize {
        let frame = Utf8Bytes::from(d.frame);
        // Messages are ordered per session; membership and presence frames
        // carry no number of their own and pass as they come.
        let msg = match (&d.room, d.seq, &d.membership) {
            (Some(room), Some(seq), None) => Some((room.clone(), seq)),
            _ => None,
        };
        let mut targets = Vec::new();
        {
            let mut map = lock(&self.inner);
            for user in &d.users {
                let Some(entry) = map.get_mut(user) else {
                    continue;
                };
                if let Some(m) = &d.membership
                    && &m.user == user
                {
                    match m.op {
                        MemberOp::Join => {
                            entry.rooms.insert(m.room.clone());
                        }
                        MemberOp::Leave => {
                            entry.rooms.remove(&m.room);
                        }
                    }
                }
                targets.extend(entry.sessions.values().cloned());
            }
        }
        // Push outside the lock: closing a slow session must not block others.
        targets
            .into_iter()
            .filter(|s| match &msg {
                Some((room, seq)) => s.push_out(Out::Msg {
                    room: room.clone(),
                    seq: *seq,
                    frame: frame.clone(),
                }),
                None => s.push(frame.clone()),
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(depth: usize) -> (SessionHandle, crate::queue::Receiver<Out>) {
        let (tx, rx) = crate::queue::bounded(depth);
        let h = SessionHandle {
            tx,
            kill: CancellationToken::new(),
            close_reason: Arc::new(Mutex::new(None)),
        };
        (h, rx)
    }

    fn text(out: Option<Out>) -> String {
        match out {
            Some(Out::Frame(f) | Out::Msg { frame: f, .. }) => f.as_str().to_string(),
            _ => String::new(),
        }
    }

    #[test]
    fn a_sessions_welcome_is_queued_before_any_delivery_can_reach_it() {
        let reg = Registry::default();
        let (user, room) = (
            UserId::parse("bob").expect("user"),
            RoomId::parse("r1").expect("room"),
        );
        let (h, mut rx) = handle(8);
        assert!(reg.add(&user, 1, h, vec![room.clone()], Utf8Bytes::from("welcome")));
        let queued = reg.deliver(Delivery {
            v: chat_core::SCHEMA_VERSION,
            users: vec![user],
            room: Some(room),
            seq: Some(1),
            membership: None,
            frame: "event".into(),
        });
        assert_eq!(queued, 1);
        assert_eq!(text(rx.try_recv()), "welcome");
        assert_eq!(text(rx.try_recv()), "event");
    }
}
