//! One WebSocket session, one task: `hello` (`hello.rs`), setting up
//! (`start.rs`), then a read loop (here) and the writer (`writer.rs`),
//! which drains a bounded queue, run side by side on the same socket
//! (`ws`). When either ends, the other is stopped; every server-initiated
//! close carries a documented code and reason, and the socket lingers
//! after it (`upgrade::linger`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_core::UserId;
use chat_core::svc::ErrorCode;
use chat_core::wire::{ServerFrame, close};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tungstenite::Utf8Bytes;

use crate::hello::Refusal;
use crate::registry::{AddError, Out, SessionHandle};
use crate::state::AppState;
use crate::upgrade::linger;
use crate::ws::{Incoming, Reader, Writer};

/// Token bucket: `rate` frames per second, at most `burst` at once.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; false when none is left.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Encodes a server frame once.
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    match serde_json::to_string(frame) {
        Ok(s) => Utf8Bytes::from(s),
        // ServerFrame contains only strings and numbers: this cannot fail,
        // but if it did the client gets a well-formed error instead.
        Err(e) => Utf8Bytes::from(format!(
            r#"{{"type":"error","code":"internal","message":"encode: {e}"}}"#
        )),
    }
}

/// Runs one session to its end on `tcp` (`early`: bytes the client sent
/// right after its upgrade request). `_slot` holds the socket's place
/// under the connection limit.
pub async fn run(
    st: AppState,
    mut tcp: TcpStream,
    early: bytes::Bytes,
    _slot: Option<OwnedSemaphorePermit>,
) {
    metrics::gauge!("chat_gateway_connections").increment(1.0);
    let session_id = st.next_session.fetch_add(1, Ordering::Relaxed);
    {
        let limits = &st.config.limits;
        let mut reader = Reader::new(&tcp, &early, limits.max_frame_bytes);
        drop(early);
        let mut writer = Writer::new(&tcp, limits.write_buffer_bytes);
        // Every step that awaits another service is boxed: an async fn's
        // state is as large as its largest await point, and an idle
        // session should hold only what it needs while it waits.
        Box::pin(session(&st, session_id, &mut reader, &mut writer)).await;
    }
    Box::pin(linger(&mut tcp)).await;
    metrics::gauge!("chat_gateway_connections").decrement(1.0);
}

/// What a session that has started runs on.
struct Started {
    user: UserId,
    handle: SessionHandle,
    rx: crate::queue::Receiver<Out>,
    start: Box<crate::writer::Start>,
    exp: u64,
    scopes: crate::scopes::Scopes,
}

async fn session(st: &AppState, session_id: u64, reader: &mut Reader<'_>, writer: &mut Writer<'_>) {
    let hello = match Box::pin(crate::hello::authenticate(st, reader, writer)).await {
        Ok(h) => h,
        Err(refusal) => {
            Box::pin(refuse(writer, refusal)).await;
            return;
        }
    };
    let span = tracing::info_span!("session", session = session_id, user = %hello.user);
    // Setting up runs in its own (boxed) future, so the state a session
    // keeps for its life is only what `live` needs.
    let set_up = set_up(st, session_id, hello, writer).instrument(span.clone());
    if let Some(started) = Box::pin(set_up).await {
        // Boxed, and taken apart in `live`: an async fn's arguments would
        // otherwise stay in its state beside the parts taken from them.
        live(st, session_id, started, reader, writer)
            .instrument(span)
            .await;
    }
}

/// Registers an authenticated session (or refuses it): its rooms and
/// resume positions, its queue, presence.
async fn set_up(
    st: &AppState,
    session_id: u64,
    hello: crate::hello::Hello,
    writer: &mut Writer<'_>,
) -> Option<Box<Started>> {
    let user = hello.user;
    let (sid, exp, scopes) = (hello.sid, hello.exp, hello.scopes);
    let cap = st.config.limits.max_connections_per_user;
    if st.registry.sessions_of(&user) >= cap {
        Box::pin(refuse(writer, too_many(cap))).await;
        return None;
    }
    // Membership changes delivered while the rooms are read are kept for
    // `add`, which knows only registered users otherwise.
    let watch = st.registry.watch_changes(&user);
    let (rooms, mut start) = match Box::pin(crate::start::prepare(st, &user, hello.resume)).await {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set the session up");
            let refusal = Refusal::with_error(
                close::INTERNAL,
                e.code(),
                "backend unavailable, retry".into(),
            );
            Box::pin(refuse(writer, refusal)).await;
            return None;
        }
    };
    let (tx, rx) = crate::queue::bounded(st.config.limits.queue_depth);
    let handle = SessionHandle {
        tx,
        kill: CancellationToken::new(),
        close_reason: Arc::new(Mutex::new(None)),
        sid: Arc::new(Mutex::new(sid.clone())),
    };
    let snapshot_rooms = rooms.clone();
    // From here on deliveries reach the session's queue; the writer writes
    // `welcome` before any of them.
    match st
        .registry
        .add(&user, session_id, handle.clone(), rooms, cap, watch)
    {
        Ok(true) => Box::pin(st.presence.connect(&user)).await,
        Ok(false) => {}
        Err(AddError::TooManySessions(_)) => {
            Box::pin(refuse(writer, too_many(cap))).await;
            return None;
        }
        Err(AddError::MissedChanges) => {
            let refusal = Refusal::with_error(
                close::INTERNAL,
                ErrorCode::Unavailable,
                "rooms changed while connecting, retry".into(),
            );
            Box::pin(refuse(writer, refusal)).await;
            return None;
        }
    }
    // A revocation that arrived while this session was being set up found
    // nothing to close: check again now that it is registered.
    if sid.as_deref().is_some_and(|s| st.revocations.is_revoked(s)) {
        handle.close(close::REVOKED, "session revoked: sign in again");
    }
    let (snapshot_tx, snapshot_rx) = oneshot::channel();
    start.presence = Some(snapshot_rx);
    tokio::spawn(crate::co_presence::snapshot(
        st.clone(),
        user.clone(),
        snapshot_rooms,
        snapshot_tx,
    ));
    tracing::debug!("session authenticated");
    Some(Box::new(Started {
        user,
        handle,
        rx,
        start: Box::new(start),
        exp,
        scopes,
    }))
}

/// The session's life: the read loop and the writer, side by side; when
/// either ends the other is stopped.
async fn live(
    st: &AppState,
    session_id: u64,
    started: Box<Started>,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
) {
    let Started {
        user,
        handle,
        rx,
        start,
        exp,
        scopes,
    } = *started;
    // Each future is built in its pinned place: a `let` then `pin!` would
    // keep two copies of it in this future's state.
    let mut write = std::pin::pin!(crate::writer::run(
        st.clone(),
        writer,
        rx,
        handle.kill.clone(),
        handle.close_reason.clone(),
        start,
    ));
    let (user, handle) = (&user, &handle);
    let mut read = std::pin::pin!(async {
        read_loop(st, user, handle, reader, exp, scopes).await;
        if st.registry.remove(user, session_id) {
            Box::pin(st.presence.disconnect(user)).await;
        }
        handle.kill.cancel();
    });
    // The writer stops the reader (through `kill`) when it ends first.
    let writer_first = tokio::select! {
        () = &mut write => true,
        () = &mut read => false,
    };
    if writer_first {
        read.await;
    } else if tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .is_err()
    {
        tracing::warn!("writer did not finish within 5s");
    }
    tracing::debug!("session ended");
}

fn too_many(cap: usize) -> Refusal {
    metrics::counter!("chat_gateway_connections_per_user_rejected_total").increment(1);
    Refusal::with_error(
        close::TOO_MANY_CONNECTIONS,
        ErrorCode::LimitReached,
        format!("this account already has {cap} connections to this gateway"),
    )
}

/// Ends a session that never started: its error frame and the close.
async fn refuse(writer: &mut Writer<'_>, r: Refusal) {
    if let Some(f) = r.frame.as_deref() {
        let _sent = writer.text(encode(f)).await;
    }
    close_sink(writer, r.code, &r.reason).await;
}

/// When a token expiring at `exp` (Unix seconds) runs out, as an instant.
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now = chat_core::time::now_ms() / 1000;
    tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
}

/// The next data frame; pings are answered through the writer (a ping
/// when the queue is half full gets no pong: RFC 6455 §5.5.3 asks only
/// for the latest).
async fn next_data(reader: &mut Reader<'_>, handle: &SessionHandle) -> Incoming {
    loop {
        match reader.next().await {
            Incoming::Ping(p) => {
                handle.tx.try_send_hint(Out::Pong(p));
            }
            other => return other,
        }
    }
}

async fn read_loop(
    st: &AppState,
    user: &UserId,
    handle: &SessionHandle,
    reader: &mut Reader<'_>,
    exp: u64,
    mut scopes: crate::scopes::Scopes,
) {
    let limits = &st.config.limits;
    let mut rate = RateLimiter::new(limits.rate_per_sec, limits.rate_burst);
    // The session lives as long as its token, renewed by `auth` frames.
    let mut expires = expiry_instant(exp);
    // One timer for both deadlines: the idle timeout (from each wait for a
    // frame) and the token's expiry, whichever comes first. It is re-armed
    // only when it fires early (a frame came meanwhile), not on every frame.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(
        (tokio::time::Instant::now() + limits.idle_timeout).min(expires)
    ));
    loop {
        let idle_at = tokio::time::Instant::now() + limits.idle_timeout;
        let incoming = loop {
            tokio::select! {
                _ = handle.kill.cancelled() => return,
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= expires {
                        metrics::counter!("chat_gateway_token_expired_closes_total").increment(1);
                        handle.close(
                            close::TOKEN_EXPIRED,
                            "access token expired: refresh it, reconnect and resume",
                        );
                        return;
                    }
                    if now >= idle_at {
                        handle.close(
                            close::IDLE_TIMEOUT,
                            "idle timeout: send ping to stay connected",
                        );
                        return;
                    }
                    timer.as_mut().reset(idle_at.min(expires));
                }
                i = next_data(reader, handle) => break i,
            }
        };
        let text = match incoming {
            Incoming::Text(t) => t,
            Incoming::Binary => {
                handle.close(close::UNSUPPORTED_DATA, "binary frames are not supported");
                return;
            }
            Incoming::Violation { code, reason } => {
                handle.close(code, &reason);
                return;
            }
            Incoming::CloseFrame(code) => {
                // Answered with the same status code (or none).
                if let Some(code) = code {
                    handle.close(code, "");
                }
                return;
            }
            Incoming::Closed | Incoming::Ping(_) => return,
        };
        metrics::counter!("chat_gateway_frames_in_total").increment(1);
        if !rate.allow(Instant::now()) {
            metrics::counter!("chat_gateway_rate_limited_total").increment(1);
            let id = crate::commands::request_id(&text);
            handle.push(encode(&ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: format!(
                    "more than {} frames/s (burst {}); frame dropped, retry later",
                    limits.rate_per_sec, limits.rate_burst
                ),
                room: None,
            }));
            continue;
        }
        let answer = Box::pin(crate::commands::handle(st, user, &scopes, &text)).await;
        if let Some((sid, exp, renewed_scopes)) = answer.renewed.clone() {
            expires = expiry_instant(exp);
            if expires < timer.deadline() {
                timer.as_mut().reset(expires);
            }
            scopes = renewed_scopes;
            *handle
                .sid
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = sid;
        }
        if !answer.positions.is_empty()
            && !handle.push_out(crate::registry::Out::Positions(answer.positions))
        {
            return;
        }
        if !handle.push(encode(&answer.frame)) {
            return;
        }
        if let Some(room) = answer.joined {
            tokio::spawn(crate::co_presence::joined(
                st.clone(),
                user.clone(),
                room,
                handle.clone(),
            ));
        }
    }
}

/// Sends a close frame with `code` and `reason` (cut to fit a control
/// frame) after what is buffered, within 2 s.
pub(crate) async fn close_sink(writer: &mut Writer<'_>, code: u16, reason: &str) {
    let reason = truncate(reason, 120);
    let send = writer.close(Some((code, &reason)));
    if tokio::time::timeout(Duration::from_secs(2), send)
        .await
        .is_err()
    {
        tracing::debug!("close frame not sent within 2s");
    }
}

/// Close reasons must fit in a control frame (125 bytes).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 3);
        assert!(r.allow(t0) && r.allow(t0) && r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn close_reasons_are_cut_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("ok", 10), "ok");
    }
}
