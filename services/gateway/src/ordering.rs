//! Per-session message order: the last message sequence written to the
//! client for each room. A delivery at or below it is a duplicate (dropped);
//! one beyond the next is a gap, filled from history before it is written.
//! This is what makes delivery gap-free and duplicate-free per session even
//! when deliveries arrive late, twice, or out of order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_core::RoomId;

/// What to do with a message of sequence `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write it.
    Send,
    /// Already written: drop it.
    Duplicate,
    /// Messages `after < seq < before` are missing: fill them first.
    Gap { after: u64, before: u64 },
}

/// Last written message sequence per room.
#[derive(Debug, Default)]
pub struct Cursors {
    last: HashMap<RoomId, u64>,
    /// Per room, the highest head seen while this session was behind it,
    /// and when the session was first seen behind.
    heads: HashMap<RoomId, (u64, Instant)>,
}

impl Cursors {
    /// Classifies a message. A room seen for the first time starts at it.
    pub fn step(&self, room: &RoomId, seq: u64) -> Step {
        match self.last.get(room) {
            None => Step::Send,
            Some(&last) if seq <= last => Step::Duplicate,
            Some(&last) if seq == last + 1 => Step::Send,
            Some(&last) => Step::Gap {
                after: last,
                before: seq,
            },
        }
    }

    /// Records that `seq` of `room` was written (never moves backwards).
    pub fn advance(&mut self, room: &RoomId, seq: u64) {
        let last = self.last.entry(room.clone()).or_insert(seq);
        if seq > *last {
            *last = seq;
        }
    }

    /// Sets the position of `room` (resume: what the client has seen).
    pub fn set(&mut self, room: &RoomId, seq: u64) {
        self.last.insert(room.clone(), seq);
    }

    /// Starts `room` at `seq` unless it already has a position (the client
    /// was told `seq`; a message written since is newer).
    pub fn start(&mut self, room: &RoomId, seq: u64) {
        self.last.entry(room.clone()).or_insert(seq);
    }

    /// Drops everything known about `room` (the user left it).
    pub fn forget(&mut self, room: &RoomId) {
        self.last.remove(room);
        self.heads.remove(room);
    }

    /// Rooms with a position.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no room has a position.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Every room's position (what a client would resume from).
    pub fn positions(&self) -> std::collections::BTreeMap<RoomId, u64> {
        self.last.iter().map(|(r, s)| (r.clone(), *s)).collect()
    }

    /// Takes a head of `room` (fanout delivered up to `seq` here) at `now`.
    /// Returns the sequence to fill up to when the session has been behind
    /// a head for at least `grace`: a head can overtake its own delivery
    /// inside the gateway, so being behind for a moment proves nothing. A
    /// room without a position yet is left alone (its next message starts
    /// it).
    pub fn head(&mut self, room: &RoomId, seq: u64, now: Instant, grace: Duration) -> Option<u64> {
        let last = self.last(room)?;
        if self.heads.get(room).is_some_and(|(h, _)| *h <= last) {
            self.heads.remove(room);
        }
        if seq > last {
            let entry = self.heads.entry(room.clone()).or_insert((seq, now));
            entry.0 = entry.0.max(seq);
        }
        match self.heads.get(room) {
            Some((h, since)) if now.saturating_duration_since(*since) >= grace => Some(*h),
            _ => None,
        }
    }

    /// The last written sequence of `room`.
    pub fn last(&self, room: &RoomId) -> Option<u64> {
        self.last.get(room).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> RoomId {
        RoomId::parse("r1").expect("room id")
    }

    #[test]
    fn in_order_messages_pass_and_repeats_are_dropped() {
        let mut c = Cursors::default();
        assert_eq!(c.step(&r(), 7), Step::Send, "first contact starts anywhere");
        c.advance(&r(), 7);
        assert_eq!(c.step(&r(), 8), Step::Send);
        c.advance(&r(), 8);
        assert_eq!(c.step(&r(), 8), Step::Duplicate);
        assert_eq!(c.step(&r(), 3), Step::Duplicate);
    }

    #[test]
    fn a_position_told_to_the_client_never_moves_a_room_back() {
        let mut c = Cursors::default();
        c.start(&r(), 5);
        assert_eq!(
            c.step(&r(), 7),
            Step::Gap {
                after: 5,
                before: 7
            }
        );
        c.advance(&r(), 7);
        c.start(&r(), 5);
        assert_eq!(c.last(&r()), Some(7), "already past it");
    }

    #[test]
    fn a_forgotten_room_holds_nothing_and_starts_afresh() {
        let mut c = Cursors::default();
        c.set(&r(), 4);
        c.head(&r(), 9, Instant::now(), Duration::from_secs(1));
        c.forget(&r());
        assert!(c.is_empty());
        assert_eq!(
            c.step(&r(), 2),
            Step::Send,
            "a rejoin starts where it is told"
        );
    }

    #[test]
    fn a_jump_is_a_gap_to_fill() {
        let mut c = Cursors::default();
        c.set(&r(), 4);
        assert_eq!(
            c.step(&r(), 9),
            Step::Gap {
                after: 4,
                before: 9
            }
        );
        c.advance(&r(), 9);
        c.advance(&r(), 6);
        assert_eq!(c.last(&r()), Some(9), "never moves backwards");
    }

    #[test]
    fn a_head_fills_only_after_the_session_stayed_behind_for_the_grace() {
        let grace = Duration::from_secs(1);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(2);
        let mut c = Cursors::default();
        assert_eq!(c.head(&r(), 5, t0, grace), None, "no position yet: ignored");
        c.set(&r(), 3);
        assert_eq!(c.head(&r(), 5, t0, grace), None, "just behind: wait");
        // Another fanout instance's older head does not reset the wait.
        assert_eq!(c.head(&r(), 2, t0 + grace / 2, grace), None);
        assert_eq!(
            c.head(&r(), 4, later, grace),
            Some(5),
            "still behind 5 later: fill to 5"
        );
        c.advance(&r(), 5);
        assert_eq!(c.head(&r(), 5, later, grace), None, "caught up");
        assert_eq!(
            c.head(&r(), 7, later, grace),
            None,
            "a new head starts a new wait"
        );
        c.advance(&r(), 7);
        assert_eq!(
            c.head(&r(), 6, later + grace * 2, grace),
            None,
            "caught up by itself"
        );
    }
}
