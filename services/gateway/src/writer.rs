//! A session's writer task: owns the socket's sink and writes, in order,
//! `welcome`, any resume refusals and the presence snapshot, then the
//! session's bounded queue interleaved with the catch-up of resumed rooms.
//! Message frames go through the per-room cursors: duplicates are dropped
//! and gaps are filled first (`fill`), so the client sees each room's
//! messages once, in sequence. A catch-up is written as the socket drains
//! (flow control), never through the live queue, so resuming many rooms
//! cannot overflow it; live work goes first between rooms.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::RoomId;
use chat_core::wire::{ServerFrame, close};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::fill::fill;
use crate::ordering::{Cursors, Step};
use crate::registry::{CloseReason, Out};
use crate::session::{close_sink, encode};
use crate::state::AppState;

/// How long a session must stay behind a fanout head before the gateway
/// treats the delivery as lost (a head may overtake its delivery).
const HEAD_GRACE: Duration = Duration::from_secs(1);
/// Longest wait for the presence snapshot after `welcome`; live frames
/// queue meanwhile, and are written without it after.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);

/// The socket's sending half.
pub type Sink<'a> = crate::ws::Writer<'a>;

/// Why the writer stops early.
pub enum Stop {
    /// The socket went away while writing.
    Gone,
    /// Messages the client must see next could not be read in time (a gap
    /// that history could not fill): rather than skip them, the session
    /// ends with `reconnect` and 1001, and the client resumes.
    Resync,
}

/// Most frames written per flush: the writer drains what is queued (up to
/// this many) into the socket's write buffer and flushes once, so a busy
/// session costs one write syscall per batch rather than per frame.
const MAX_BATCH: usize = 64;

/// Buffers a frame; it reaches the socket at the next [`flush`] (or when
/// the write buffer is full, which waits for the socket: flow control).
pub async fn send(sink: &mut Sink<'_>, frame: Utf8Bytes) -> Result<(), Stop> {
    sink.text(frame).await.map_err(|_| Stop::Gone)?;
    metrics::counter!("chat_gateway_frames_out_total").increment(1);
    Ok(())
}

/// Writes buffered frames to the socket. Called after each batch and before
/// anything that waits on another service (a gap fill, a resume), so no
/// frame waits in the buffer for a request.
pub async fn flush(sink: &mut Sink<'_>) -> Result<(), Stop> {
    sink.flush().await.map_err(|_| Stop::Gone)
}

/// One room to catch up after `welcome` (from `hello.resume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeJob {
    pub room: RoomId,
    /// The last sequence the client said it has seen.
    pub after: u64,
    /// The room's last message sequence when the session started.
    pub tail: u64,
    /// `after` was beyond the room's last message (confirmed by the
    /// stream's leader): the session resumes from `tail` instead.
    pub clamped: bool,
}

impl ResumeJob {
    /// Where the room's cursor starts: the client's position, or the tail
    /// when the client is ahead of the room or more than `max` behind it
    /// (it pages history for those itself).
    pub fn start(&self, max: u64) -> u64 {
        if self.clamped || self.tail.saturating_sub(self.after) > max {
            self.tail
        } else {
            self.after
        }
    }
}

/// What the writer writes before anything live, and where each room starts.
pub struct Start {
    pub welcome: Utf8Bytes,
    /// Rooms the client was told about in `welcome`, at their heads.
    pub positions: Vec<(RoomId, u64)>,
    pub resumes: Vec<ResumeJob>,
    /// Error frames answering `hello.resume` entries that were refused.
    pub refusals: Vec<Utf8Bytes>,
    /// The `presence.snapshot` frame, when fanout answers.
    pub presence: Option<oneshot::Receiver<Utf8Bytes>>,
}

/// Runs until the socket fails or `kill`; then closes the socket with the
/// recorded reason.
pub async fn run(
    st: AppState,
    sink: &mut Sink<'_>,
    mut rx: crate::queue::Receiver<Out>,
    kill: CancellationToken,
    reason: Arc<Mutex<Option<CloseReason>>>,
    start: Box<Start>,
) {
    let max = st.config.limits.resume_max;
    let mut cursors = Cursors::default();
    for (room, seq) in &start.positions {
        cursors.set(room, *seq);
    }
    for job in &start.resumes {
        cursors.set(&job.room, job.start(max));
    }
    // `start` is boxed and consumed here, and `opening` boxed, so that
    // neither stays in the state of a session's writer for its life.
    let Start {
        welcome,
        resumes,
        refusals,
        presence,
        ..
    } = *start;
    let mut resumes: VecDeque<ResumeJob> = resumes.into();
    let mut result = Box::pin(opening(sink, welcome, refusals, presence, &kill)).await;
    while result.is_ok() && !kill.is_cancelled() {
        // Live work first: it is bounded and must not wait behind a
        // catch-up; the catch-up goes on when the queue is empty.
        let first = match rx.try_recv() {
            Some(out) => out,
            None => match resumes.pop_front() {
                Some(job) => {
                    result = Box::pin(resume(&st, sink, &mut cursors, job, max)).await;
                    if result.is_ok() {
                        result = flush(sink).await;
                    }
                    continue;
                }
                None => tokio::select! {
                    biased;
                    _ = kill.cancelled() => break,
                    out = rx.recv() => out,
                },
            },
        };
        result = handle(&st, sink, &mut cursors, first).await;
        let mut batch = 1;
        while result.is_ok() && batch < MAX_BATCH {
            let Some(out) = rx.try_recv() else { break };
            result = handle(&st, sink, &mut cursors, out).await;
            batch += 1;
        }
        if result.is_ok() {
            result = flush(sink).await;
        }
    }
    match result {
        Ok(()) => {}
        Err(Stop::Gone) => {
            kill.cancel();
            return;
        }
        Err(Stop::Resync) => {
            let frame = encode(&ServerFrame::Reconnect {
                resume: cursors.positions(),
            });
            if send(sink, frame).await.is_ok() {
                close_sink(
                    sink,
                    close::GOING_AWAY,
                    "missed messages not readable yet: reconnect and resume",
                )
                .await;
            }
            kill.cancel();
            return;
        }
    }
    let reason = match reason.lock() {
        Ok(mut r) => r.take(),
        Err(p) => p.into_inner().take(),
    };
    let Some(r) = reason else {
        let _closed = tokio::time::timeout(Duration::from_secs(2), sink.close(None)).await;
        return;
    };
    // Frames already queued before a deliberate close (e.g. an error frame
    // explaining it) are flushed first, except for a slow consumer whose
    // queue is the problem.
    if r.code != close::SLOW_CONSUMER {
        while let Some(Out::Frame(f)) = rx.try_recv() {
            if send(sink, f).await.is_err() {
                return;
            }
        }
    }
    if r.code == close::GOING_AWAY {
        // Drain: tell the client where it is, so it resumes on another
        // gateway without a gap.
        let frame = encode(&ServerFrame::Reconnect {
            resume: cursors.positions(),
        });
        if send(sink, frame).await.is_err() {
            return;
        }
    }
    Box::pin(close_sink(sink, r.code, &r.reason)).await;
}

/// `welcome`, the refusals, then the presence snapshot (waiting briefly
/// for it): before any live frame, so a presence change queued meanwhile
/// is written after the snapshot it may supersede.
async fn opening(
    sink: &mut Sink<'_>,
    welcome: Utf8Bytes,
    refusals: Vec<Utf8Bytes>,
    presence: Option<oneshot::Receiver<Utf8Bytes>>,
    kill: &CancellationToken,
) -> Result<(), Stop> {
    send(sink, welcome).await?;
    for f in refusals {
        send(sink, f).await?;
    }
    flush(sink).await?;
    if let Some(rx) = presence {
        let snapshot = tokio::select! {
            _ = kill.cancelled() => None,
            r = tokio::time::timeout(SNAPSHOT_WAIT, rx) => r.ok().and_then(Result::ok),
        };
        if let Some(frame) = snapshot {
            send(sink, frame).await?;
            flush(sink).await?;
        }
    }
    Ok(())
}

async fn handle(
    st: &AppState,
    sink: &mut Sink<'_>,
    cursors: &mut Cursors,
    out: Out,
) -> Result<(), Stop> {
    match out {
        Out::Frame(f) => send(sink, f).await,
        Out::Frames(frames) => {
            for f in frames {
                send(sink, f).await?;
            }
            Ok(())
        }
        Out::Positions(rooms) => {
            for (room, seq) in &rooms {
                cursors.start(room, *seq);
            }
            Ok(())
        }
        Out::Forget(room) => {
            cursors.forget(&room);
            Ok(())
        }
        Out::Pong(payload) => sink.pong(payload).map_err(|_| Stop::Gone),
        Out::Msg { room, seq, frame } => match cursors.step(&room, seq) {
            Step::Duplicate => {
                metrics::counter!("chat_gateway_duplicate_deliveries_dropped_total").increment(1);
                Ok(())
            }
            Step::Send => {
                send(sink, frame).await?;
                cursors.advance(&room, seq);
                Ok(())
            }
            Step::Gap { after, before } => {
                metrics::counter!("chat_gateway_gaps_total", "found" => "order").increment(1);
                if !Box::pin(fill(st, sink, cursors, &room, after, before)).await? {
                    metrics::counter!("chat_gateway_gaps_unfilled_total", "found" => "order")
                        .increment(1);
                    tracing::warn!(%room, after, before, "gap not filled in time; the client is asked to resume");
                    return Err(Stop::Resync);
                }
                send(sink, frame).await?;
                cursors.advance(&room, seq);
                Ok(())
            }
        },
        Out::Head { room, seq } => {
            let Some(upto) = cursors.head(&room, seq, std::time::Instant::now(), HEAD_GRACE) else {
                tracing::debug!(target: "chat_gateway::heads", %room, seq, last = ?cursors.last(&room), "head: nothing to do yet");
                return Ok(());
            };
            tracing::debug!(target: "chat_gateway::heads", %room, seq, upto, "head: filling a missed tail");
            let last = cursors.last(&room).unwrap_or(0);
            metrics::counter!("chat_gateway_gaps_total", "found" => "head").increment(1);
            if Box::pin(fill(st, sink, cursors, &room, last, upto + 1)).await? {
                Ok(())
            } else {
                metrics::counter!("chat_gateway_gaps_unfilled_total", "found" => "head")
                    .increment(1);
                tracing::warn!(%room, last, upto, "missed tail not filled in time; the client is asked to resume");
                Err(Stop::Resync)
            }
        }
    }
}

/// Sends what the client missed in one resumed room, then `resumed`.
async fn resume(
    st: &AppState,
    sink: &mut Sink<'_>,
    cursors: &mut Cursors,
    job: ResumeJob,
    max: u64,
) -> Result<(), Stop> {
    if cursors.last(&job.room).is_none() {
        // The user left the room since the session started: nothing to
        // catch up on any more.
        return Ok(());
    }
    let too_far = !job.clamped && job.tail.saturating_sub(job.after) > max;
    let complete = if too_far {
        // Too much to push: the client pages history for the range, and
        // live messages continue from the tail.
        false
    } else {
        let last = cursors.last(&job.room).unwrap_or(job.after);
        if last < job.tail {
            Box::pin(fill(st, sink, cursors, &job.room, last, job.tail + 1)).await?
        } else {
            true
        }
    };
    let to = cursors.last(&job.room).unwrap_or(job.tail).max(job.tail);
    metrics::counter!("chat_gateway_resumes_total", "complete" => complete.to_string())
        .increment(1);
    send(
        sink,
        encode(&ServerFrame::Resumed {
            room: job.room,
            after: if job.clamped { job.tail } else { job.after },
            to,
            complete,
            clamped: job.clamped,
        }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(after: u64, tail: u64, clamped: bool) -> ResumeJob {
        ResumeJob {
            room: RoomId::parse("r1").expect("room"),
            after,
            tail,
            clamped,
        }
    }

    #[test]
    fn a_resumed_room_starts_where_the_client_is_unless_ahead_or_too_far_behind() {
        assert_eq!(job(3, 10, false).start(100), 3);
        assert_eq!(
            job(3, 1000, false).start(100),
            1000,
            "too far: from the tail"
        );
        assert_eq!(
            job(1000, 3, true).start(100),
            3,
            "ahead of the room: its tail"
        );
    }
}
