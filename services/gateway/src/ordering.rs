//! Per-session message order: the last message sequence written to the
//! client for each room. A delivery at or below it is a duplicate (dropped);
//! one beyond the next is a gap, filled from history before it is written.
//! This is what makes delivery gap-free and duplicate-free per session even
//! when deliveries arrive late, twice, or out of order.

use std::collections::HashMap;

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
    /// The last head seen per room while this session was behind it.
    heads: HashMap<RoomId, u64>,
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

    /// Every room's position (what a client would resume from).
    pub fn positions(&self) -> std::collections::BTreeMap<RoomId, u64> {
        self.last.iter().map(|(r, s)| (r.clone(), *s)).collect()
    }

    /// Records a head of `room` the session is behind; returns the one
    /// recorded before it, if any.
    pub fn note_head(&mut self, room: &RoomId, seq: u64) -> Option<u64> {
        self.heads.insert(room.clone(), seq)
    }

    /// The session caught up with `room`'s heads.
    pub fn forget_head(&mut self, room: &RoomId) {
        self.heads.remove(room);
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
    fn heads_are_remembered_until_forgotten() {
        let mut c = Cursors::default();
        assert_eq!(c.note_head(&r(), 5), None);
        assert_eq!(c.note_head(&r(), 7), Some(5));
        c.forget_head(&r());
        assert_eq!(c.note_head(&r(), 8), None);
    }
}
