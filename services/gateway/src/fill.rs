//! Filling a range of a room's messages into a session in order: from
//! history (whole pages), and from the room stream itself where history
//! lags or is down (ADR 0004). Used for gaps, missed tails and resumes.

use std::time::Duration;

use chat_core::names::svc as subjects;
use chat_core::svc::{MAX_PAGE_LIMIT, Page, PageQuery};
use chat_core::wire::ServerFrame;
use chat_core::{RoomId, SCHEMA_VERSION};

use crate::ordering::Cursors;
use crate::session::encode;
use crate::state::AppState;
use crate::writer::{Sink, Stop, flush, send};

/// How long a gap fill waits while neither history nor the stream has the
/// next message (a replica or history catching up).
const FILL_WAIT: Duration = Duration::from_secs(3);
/// How long a gap fill waits for one history page before reading the stream.
const FILL_HISTORY_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between history polls while it catches up.
const FILL_POLL: Duration = Duration::from_millis(25);

/// Writes the messages `after < seq < before` of `room` in order, advancing
/// the cursor: from history, and from the room stream where history lags
/// or is down. Polls for up to [`FILL_WAIT`] while neither has the next
/// message. Returns whether the whole range was written.
pub async fn fill(
    st: &AppState,
    sink: &mut Sink<'_>,
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
    sink: &mut Sink<'_>,
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
