//! A session's writer task: owns the socket's sink and drains the session's
//! bounded queue in order. Message frames go through the per-room cursors:
//! duplicates are dropped and gaps are filled (history, else the stream) first, so the
//! client sees each room's messages once, in sequence. Resume requests are
//! served here too, so catch-up and live messages cannot interleave wrongly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use chat_core::names::svc as subjects;
use chat_core::svc::{MAX_PAGE_LIMIT, Page, PageQuery};
use chat_core::wire::{ServerFrame, close};
use chat_core::{RoomId, SCHEMA_VERSION};
use futures::SinkExt;
use futures::stream::SplitSink;
use tokio_util::sync::CancellationToken;

use crate::ordering::{Cursors, Step};
use crate::registry::{CloseReason, Out};
use crate::session::{close_sink, encode};
use crate::state::AppState;

/// How long a gap fill waits while neither history nor the stream has the
/// next message (a replica or history catching up).
const FILL_WAIT: Duration = Duration::from_secs(3);
/// How long a session must stay behind a fanout head before the gateway
/// treats the delivery as lost (a head may overtake its delivery).
const HEAD_GRACE: Duration = Duration::from_secs(1);
/// How long a gap fill waits for one history page before reading the stream.
const FILL_HISTORY_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between history polls while it catches up.
const FILL_POLL: Duration = Duration::from_millis(25);

type Sink = SplitSink<WebSocket, Message>;

/// Why the writer stops early.
enum Stop {
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
/// the write buffer is full).
async fn send(sink: &mut Sink, frame: Utf8Bytes) -> Result<(), Stop> {
    sink.feed(Message::Text(frame))
        .await
        .map_err(|_| Stop::Gone)?;
    metrics::counter!("chat_gateway_frames_out_total").increment(1);
    Ok(())
}

/// Writes buffered frames to the socket. Called after each batch and before
/// anything that waits on another service (a gap fill, a resume), so no
/// frame waits in the buffer for a request.
async fn flush(sink: &mut Sink) -> Result<(), Stop> {
    sink.flush().await.map_err(|_| Stop::Gone)
}

/// Runs until the queue closes, the socket fails, or `kill`; then closes the
/// socket with the recorded reason.
pub async fn run(
    st: AppState,
    mut sink: Sink,
    mut rx: crate::queue::Receiver<Out>,
    kill: CancellationToken,
    reason: Arc<Mutex<Option<CloseReason>>>,
) {
    let mut cursors = Cursors::default();
    loop {
        let out = tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            out = rx.recv() => out,
        };
        let mut result = handle(&st, &mut sink, &mut cursors, out).await;
        let mut batch = 1;
        while result.is_ok() && batch < MAX_BATCH {
            let Some(out) = rx.try_recv() else { break };
            result = handle(&st, &mut sink, &mut cursors, out).await;
            batch += 1;
        }
        if result.is_ok() {
            result = flush(&mut sink).await;
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
                if send(&mut sink, frame).await.is_ok() {
                    close_sink(
                        &mut sink,
                        close::GOING_AWAY,
                        "missed messages not readable yet: reconnect and resume",
                    )
                    .await;
                }
                kill.cancel();
                return;
            }
        }
    }
    let reason = match reason.lock() {
        Ok(mut r) => r.take(),
        Err(p) => p.into_inner().take(),
    };
    match reason {
        Some(r) => {
            // Frames already queued before a deliberate close (e.g. an error
            // frame explaining it) are flushed first, except for a slow
            // consumer whose queue is the problem.
            if r.code != close::SLOW_CONSUMER {
                while let Some(Out::Frame(f)) = rx.try_recv() {
                    if send(&mut sink, f).await.is_err() {
                        return;
                    }
                }
            }
            if r.code == close::GOING_AWAY {
                // Drain: tell the client where it is, so it resumes on
                // another gateway without a gap.
                let frame = encode(&ServerFrame::Reconnect {
                    resume: cursors.positions(),
                });
                if send(&mut sink, frame).await.is_err() {
                    return;
                }
            }
            Box::pin(close_sink(&mut sink, r.code, &r.reason)).await;
        }
        None => {
            let _closed = sink.close().await;
        }
    }
}

async fn handle(
    st: &AppState,
    sink: &mut Sink,
    cursors: &mut Cursors,
    out: Out,
) -> Result<(), Stop> {
    match out {
        Out::Frame(f) => send(sink, f).await,
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
                metrics::counter!("chat_gateway_gaps_total").increment(1);
                if !Box::pin(fill(st, sink, cursors, &room, after, before)).await? {
                    metrics::counter!("chat_gateway_gaps_unfilled_total").increment(1);
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
            metrics::counter!("chat_gateway_gaps_total").increment(1);
            if Box::pin(fill(st, sink, cursors, &room, last, upto + 1)).await? {
                Ok(())
            } else {
                metrics::counter!("chat_gateway_gaps_unfilled_total").increment(1);
                tracing::warn!(%room, last, upto, "missed tail not filled in time; the client is asked to resume");
                Err(Stop::Resync)
            }
        }
        Out::Resume { room, after } => Box::pin(resume(st, sink, cursors, room, after)).await,
    }
}

/// Sends what the client missed in `room` after `after`, then `resumed`.
async fn resume(
    st: &AppState,
    sink: &mut Sink,
    cursors: &mut Cursors,
    room: RoomId,
    after: u64,
) -> Result<(), Stop> {
    flush(sink).await?;
    cursors.set(&room, after);
    let latest = match st.log.last_seq(&room).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, %room, "resume: room tail unavailable");
            None
        }
    };
    let max = st.config.limits.resume_max;
    let complete = match latest {
        // Unknown tail: the client cannot be told it is complete;
        // live messages still fill any gap before they are written.
        None => false,
        Some(latest) if latest.saturating_sub(after) > max => {
            // Too much to push: the client pages history for the
            // range, and live messages continue from the tail.
            cursors.set(&room, latest);
            false
        }
        Some(latest) => fill(st, sink, cursors, &room, after, latest + 1).await?,
    };
    let to = cursors
        .last(&room)
        .unwrap_or(after)
        .max(latest.unwrap_or(after));
    metrics::counter!("chat_gateway_resumes_total", "complete" => complete.to_string())
        .increment(1);
    send(
        sink,
        encode(&ServerFrame::Resumed {
            room,
            after,
            to,
            complete,
        }),
    )
    .await
}

/// Writes the messages `after < seq < before` of `room` in order, advancing
/// the cursor: from history, and from the room stream where history lags
/// or is down. Polls for up to [`FILL_WAIT`] while neither has the next
/// message. Returns whether the whole range was written.
async fn fill(
    st: &AppState,
    sink: &mut Sink,
    cursors: &mut Cursors,
    room: &RoomId,
    after: u64,
    before: u64,
) -> Result<bool, Stop> {
    flush(sink).await?;
    let deadline = tokio::time::Instant::now() + FILL_WAIT;
    let mut cur = after;
    while cur + 1 < before {
        // History first: whole pages per request, and it holds everything
        // however old. It is written asynchronously, so its tail may lag.
        let query = PageQuery {
            v: SCHEMA_VERSION,
            room: room.clone(),
            before: Some(before),
            after: Some(cur),
            limit: MAX_PAGE_LIMIT,
        };
        let asked = tokio::time::timeout(
            FILL_HISTORY_TIMEOUT,
            st.request::<_, Page>(subjects::HISTORY_PAGE, &query),
        )
        .await;
        let events = match asked {
            Ok(Ok(page)) => page.events,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %room, "gap fill: history unavailable; reading the stream");
                Vec::new()
            }
            Err(_) => {
                tracing::debug!(%room, "gap fill: history slow; reading the stream");
                Vec::new()
            }
        };
        let mut progressed = write_contiguous(sink, cursors, room, &mut cur, events).await?;
        if !progressed && cur + 1 < before {
            // History lags or is down: the stream holds every acknowledged
            // message of its retention, stored or not.
            let wanted = usize::try_from(before - cur - 1).unwrap_or(usize::MAX);
            match st
                .log
                .read_messages(room, cur, before, wanted.min(MAX_PAGE_LIMIT as usize))
                .await
            {
                Ok(events) => {
                    progressed = write_contiguous(sink, cursors, room, &mut cur, events).await?;
                }
                Err(e) => tracing::debug!(error = %e, %room, "gap fill: stream read failed"),
            }
        }
        if !progressed {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(%room, cur, before, "gap fill: neither history nor the stream had the next message in time");
                return Ok(false);
            }
            tokio::time::sleep(FILL_POLL).await;
        }
    }
    Ok(true)
}

/// Writes `events` while they continue `cur` without a hole; returns
/// whether any was written.
async fn write_contiguous(
    sink: &mut Sink,
    cursors: &mut Cursors,
    room: &RoomId,
    cur: &mut u64,
    events: Vec<chat_core::events::RoomEvent>,
) -> Result<bool, Stop> {
    let mut progressed = false;
    for ev in events {
        if ev.seq != *cur + 1 {
            break;
        }
        *cur = ev.seq;
        send(sink, encode(&ServerFrame::Event(ev))).await?;
        cursors.advance(room, *cur);
        progressed = true;
    }
    Ok(progressed)
}
