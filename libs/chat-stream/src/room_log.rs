//! Appending room events with a gap-free room sequence.
//!
//! Every message of room R is published on `chat.room.R.msg` with
//! `Nats-Expected-Last-Subject-Sequence` (scoped by
//! `Nats-Expected-Last-Subject-Sequence-Subject` to the subjects the stream
//! stores it under, `chat.room.R.msg.*`, ADR 0009): the
//! publish succeeds only if no other message of R was stored since the one
//! we numbered from, so the room sequence (`Chat-Seq`, also in the payload)
//! is assigned atomically with persistence. On a conflict the appender
//! re-reads the room's last message and retries. Within one process, appends
//! to one room are serialised by a per-room lock, so conflicts only arise
//! between processes.
//!
//! Other events (membership changes) take no number: they carry the
//! sequence of the last message before them, which places them in the
//! timeline. See `docs/adr/0002-room-sequence.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use chat_core::events::{EventBody, RoomEvent};
use chat_core::names::{self, headers};
use chat_core::{RoomId, SCHEMA_VERSION, UserId};

/// Attempts before giving up under extreme contention.
const MAX_ATTEMPTS: usize = 64;
/// Longest random pause between conflicting attempts, in milliseconds.
const CONFLICT_PAUSE_MAX_MS: u64 = 20;

/// Why an append failed. Nothing was stored unless `duplicate` is reported
/// through [`Appended`].
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("JetStream publish failed: {0}")]
    Publish(String),
    #[error("reading the room's last event failed: {0}")]
    Read(String),
    #[error("stored event {seq} is not a valid room event: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("gave up after {MAX_ATTEMPTS} sequence conflicts")]
    Contention,
}

/// Result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored event (for a duplicate: the one stored first).
    pub event: RoomEvent,
    /// Stream sequence of the stored event.
    pub stream_seq: u64,
    /// True when the de-duplication id matched an event already stored.
    pub duplicate: bool,
}

/// Per-room lock around the last known tail (None: unknown, re-read it).
type TailSlot = Arc<tokio::sync::Mutex<Option<Tail>>>;

#[derive(Debug, Clone, Copy)]
struct Tail {
    stream_seq: u64,
    room_seq: u64,
}

/// Rooms whose last known tail a [`RoomLog`] keeps by default.
pub const DEFAULT_TAIL_CACHE: usize = 100_000;

/// Appends events to rooms. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct RoomLog {
    js: jetstream::Context,
    stream: stream::Stream,
    tails: Arc<Mutex<HashMap<RoomId, TailSlot>>>,
    /// Most rooms in `tails`: a process that touches ever more rooms must
    /// not keep a tail for each forever.
    max_tails: usize,
}

impl RoomLog {
    pub fn new(js: jetstream::Context, stream: stream::Stream) -> Self {
        Self {
            js,
            stream,
            tails: Arc::default(),
            max_tails: DEFAULT_TAIL_CACHE,
        }
    }

    /// Keeps the tails of at most `rooms` rooms (at least 1). When full,
    /// the tails no append is using are dropped; they are re-read from the
    /// stream on the room's next append.
    pub fn with_tail_cache(mut self, rooms: usize) -> Self {
        self.max_tails = rooms.max(1);
        self
    }

    /// Rooms whose tail is cached now.
    pub fn cached_tails(&self) -> usize {
        match self.tails.lock() {
            Ok(t) => t.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    /// The room stream.
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    fn tail_slot(&self, room: &RoomId) -> TailSlot {
        let mut tails = match self.tails.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = tails.get(room) {
            return slot.clone();
        }
        if tails.len() >= self.max_tails {
            // Keep only slots an append holds right now (someone else has
            // a clone); the others cost one read to rebuild.
            tails.retain(|_, slot| Arc::strong_count(slot) > 1);
            metrics::counter!("chat_room_tail_cache_evictions_total").increment(1);
        }
        tails.entry(room.clone()).or_default().clone()
    }

    /// Appends `body` to `room`. A message gets the next room sequence; any
    /// other event gets the sequence of the room's last message. `dedup_id`,
    /// when given, makes retries idempotent within the stream's
    /// de-duplication window: a repeat returns the first event with
    /// `duplicate: true`.
    pub async fn append(
        &self,
        room: &RoomId,
        from: &UserId,
        body: EventBody,
        dedup_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        match body.kind() {
            names::EventKind::Msg => self.append_message(room, from, body, dedup_id).await,
            names::EventKind::Member => self.append_unnumbered(room, from, body, dedup_id).await,
        }
    }

    /// Publishes an event that takes no number, positioned after the room's
    /// last message.
    async fn append_unnumbered(
        &self,
        room: &RoomId,
        from: &UserId,
        body: EventBody,
        dedup_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        let current = {
            let slot = self.tail_slot(room);
            let mut tail = slot.lock().await;
            match *tail {
                Some(t) => t,
                None => {
                    let t = self.read_tail(room).await?;
                    *tail = Some(t);
                    t
                }
            }
        };
        let subject = names::room_subject(room, body.kind());
        let event = RoomEvent {
            v: SCHEMA_VERSION,
            room: room.clone(),
            seq: current.room_seq,
            ts: chat_core::time::now_ms(),
            from: from.clone(),
            body,
        };
        let payload =
            serde_json::to_vec(&event).map_err(|e| AppendError::Publish(e.to_string()))?;
        let mut hdrs = HeaderMap::new();
        hdrs.insert(headers::SCHEMA, SCHEMA_VERSION.to_string().as_str());
        hdrs.insert(headers::ROOM_SEQ, event.seq.to_string().as_str());
        if let Some(id) = dedup_id {
            hdrs.insert(headers::MSG_ID, id);
        }
        let ack = self
            .js
            .publish_with_headers(subject, hdrs, payload.into())
            .await
            .map_err(|e| AppendError::Publish(e.to_string()))?
            .await
            .map_err(|e| AppendError::Publish(e.to_string()))?;
        if ack.duplicate {
            let event = self.read_event(ack.sequence).await?;
            return Ok(Appended {
                event,
                stream_seq: ack.sequence,
                duplicate: true,
            });
        }
        Ok(Appended {
            event,
            stream_seq: ack.sequence,
            duplicate: false,
        })
    }

    /// Publishes a message as the room's next sequence.
    async fn append_message(
        &self,
        room: &RoomId,
        from: &UserId,
        body: EventBody,
        dedup_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        let slot = self.tail_slot(room);
        let mut tail = slot.lock().await;
        let subject = names::room_subject(room, body.kind());
        let scope = names::stored_room_filter(room, body.kind());
        for attempt in 0..MAX_ATTEMPTS {
            let current = match *tail {
                Some(t) => t,
                None => {
                    let t = self.read_tail(room).await?;
                    *tail = Some(t);
                    t
                }
            };
            let event = RoomEvent {
                v: SCHEMA_VERSION,
                room: room.clone(),
                seq: current.room_seq + 1,
                ts: chat_core::time::now_ms(),
                from: from.clone(),
                body: body.clone(),
            };
            let payload =
                serde_json::to_vec(&event).map_err(|e| AppendError::Publish(e.to_string()))?;
            let mut hdrs = HeaderMap::new();
            hdrs.insert(headers::SCHEMA, SCHEMA_VERSION.to_string().as_str());
            hdrs.insert(headers::ROOM_SEQ, event.seq.to_string().as_str());
            hdrs.insert(
                headers::EXPECTED_LAST_SUBJECT_SEQ,
                current.stream_seq.to_string().as_str(),
            );
            hdrs.insert(headers::EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, scope.as_str());
            if let Some(id) = dedup_id {
                hdrs.insert(headers::MSG_ID, id);
            }
            let ack = self
                .js
                .publish_with_headers(subject.clone(), hdrs, payload.into())
                .await
                .map_err(|e| AppendError::Publish(e.to_string()))?
                .await;
            match ack {
                Ok(ack) if ack.duplicate => {
                    let event = self.read_event(ack.sequence).await?;
                    return Ok(Appended {
                        event,
                        stream_seq: ack.sequence,
                        duplicate: true,
                    });
                }
                Ok(ack) => {
                    *tail = Some(Tail {
                        stream_seq: ack.sequence,
                        room_seq: event.seq,
                    });
                    return Ok(Appended {
                        event,
                        stream_seq: ack.sequence,
                        duplicate: false,
                    });
                }
                Err(e) if is_conflict(&e) => {
                    // Another process appended to this room: re-read and
                    // retry, after a random pause that grows with repeated
                    // conflicts, so racing gateways stop colliding in step.
                    *tail = None;
                    metrics::counter!("chat_room_append_conflicts_total").increment(1);
                    if attempt > 0 {
                        let cap = CONFLICT_PAUSE_MAX_MS.min(1 << attempt.min(6));
                        let ms = rand::random_range(0..=cap);
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                }
                Err(e) => {
                    // The outcome is unknown (e.g. timeout): forget the tail so
                    // the next attempt re-reads it instead of trusting it.
                    *tail = None;
                    return Err(AppendError::Publish(e.to_string()));
                }
            }
        }
        Err(AppendError::Contention)
    }

    /// The room sequence of `room`'s last stored message (0 for none), by
    /// direct get: any replica may answer, so it may be a moment behind.
    pub async fn last_seq(&self, room: &RoomId) -> Result<u64, AppendError> {
        Ok(self.read_tail(room).await?.room_seq)
    }

    /// Like [`RoomLog::last_seq`], but answered by the stream's leader: never
    /// behind an acknowledged append. For decisions a lagging replica must
    /// not make (is a client's position really beyond the room?).
    pub async fn last_seq_from_leader(&self, room: &RoomId) -> Result<u64, AppendError> {
        let subject = names::stored_room_filter(room, names::EventKind::Msg);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => room_seq_of(&msg.headers, msg.sequence),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(0)
            }
            Err(e) => Err(AppendError::Read(e.to_string())),
        }
    }

    /// The last stored message's stream and room sequence for `room`
    /// (zeros for a room with no messages in the stream).
    async fn read_tail(&self, room: &RoomId) -> Result<Tail, AppendError> {
        match self
            .stream
            .direct_get_last_for_subject(names::stored_room_filter(room, names::EventKind::Msg))
            .await
        {
            Ok(msg) => {
                let room_seq = room_seq_of(&msg.headers, msg.sequence)?;
                Ok(Tail {
                    stream_seq: msg.sequence,
                    room_seq,
                })
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                Ok(Tail {
                    stream_seq: 0,
                    room_seq: 0,
                })
            }
            Err(e) => Err(AppendError::Read(e.to_string())),
        }
    }

    /// The messages of `room` with `after < seq < before`, in order, at most
    /// `limit`, read from the stream itself (no need to wait for history).
    /// Stops at the first hole: the stream no longer holds that part (its
    /// retention), or the replica that answered is behind. The caller reads
    /// the rest from history.
    pub async fn read_messages(
        &self,
        room: &RoomId,
        after: u64,
        before: u64,
        limit: usize,
    ) -> Result<Vec<RoomEvent>, AppendError> {
        let subject = names::stored_room_filter(room, names::EventKind::Msg);
        let tail = self.read_tail(room).await?;
        let want = after + 1;
        let mut out = Vec::new();
        if tail.room_seq < want || want >= before || limit == 0 {
            return Ok(out);
        }
        // Room sequences grow with stream sequences: binary search for the
        // first stream position holding room sequence >= want.
        let (mut lo, mut hi) = (1, tail.stream_seq);
        let mut found: Option<(u64, RoomEvent)> = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some((s, ev)) = self.next_message(&subject, mid).await? else {
                break;
            };
            if ev.seq >= want {
                found = Some((s, ev));
                if mid == 0 || s == lo {
                    break;
                }
                hi = mid - 1;
            } else {
                lo = s + 1;
            }
        }
        let Some((mut stream_seq, mut ev)) = found else {
            return Ok(out);
        };
        loop {
            if ev.seq != after + 1 + out.len() as u64 || ev.seq >= before {
                return Ok(out);
            }
            out.push(ev);
            if out.len() >= limit {
                return Ok(out);
            }
            match self.next_message(&subject, stream_seq + 1).await? {
                Some((s, next)) => (stream_seq, ev) = (s, next),
                None => return Ok(out),
            }
        }
    }

    /// The first message on `subject` at or after stream sequence `from`.
    async fn next_message(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<(u64, RoomEvent)>, AppendError> {
        match self
            .stream
            .direct_get_next_for_subject(subject, Some(from))
            .await
        {
            Ok(msg) => {
                let ev =
                    serde_json::from_slice(&msg.payload).map_err(|e| AppendError::Corrupt {
                        seq: msg.sequence,
                        reason: e.to_string(),
                    })?;
                Ok(Some((msg.sequence, ev)))
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(AppendError::Read(e.to_string())),
        }
    }

    /// The room event stored at stream sequence `seq`.
    pub async fn read_event(&self, seq: u64) -> Result<RoomEvent, AppendError> {
        let msg = self
            .stream
            .direct_get(seq)
            .await
            .map_err(|e| AppendError::Read(e.to_string()))?;
        serde_json::from_slice(&msg.payload).map_err(|e| AppendError::Corrupt {
            seq,
            reason: e.to_string(),
        })
    }
}

/// The room sequence in a stored message's `Chat-Seq` header.
fn room_seq_of(h: &HeaderMap, stream_seq: u64) -> Result<u64, AppendError> {
    h.get(headers::ROOM_SEQ)
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| AppendError::Corrupt {
            seq: stream_seq,
            reason: format!("missing {} header", headers::ROOM_SEQ),
        })
}

/// Whether a publish failed because the room's tail moved (another process
/// appended first). A single node answers 10071 (`wrong last sequence: N`);
/// a clustered stream's leader may answer 10164 (the same check, without
/// the number), which async-nats reports as `Other`.
fn is_conflict(e: &async_nats::jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|je| {
            je.error_code() == async_nats::jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}
