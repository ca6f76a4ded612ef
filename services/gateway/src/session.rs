//! One WebSocket session: `hello` (`hello.rs`), setting up (`start.rs`),
//! then a reader loop (this task) and a writer task (`writer.rs`) that
//! owns the socket's sink and drains a bounded queue. When either ends, the
//! other is stopped; every server-initiated close carries a documented code
//! and reason, and the socket lingers after it (`upgrade::linger`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_core::UserId;
use chat_core::svc::ErrorCode;
use chat_core::wire::{ServerFrame, close};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use crate::hello::Refusal;
use crate::registry::{AddError, SessionHandle};
use crate::state::AppState;
use crate::upgrade::{Socket, linger};

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

/// What the next client frame was.
pub enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// The client broke the WebSocket protocol: close with `code`.
    Violation {
        code: u16,
        reason: String,
    },
    Closed,
}

/// The next data frame (pings and pongs are answered by the library).
pub async fn next_frame(stream: &mut SplitStream<Socket>) -> Incoming {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Incoming::Text(t),
            Some(Ok(Message::Binary(_))) => return Incoming::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Incoming::Closed,
            Some(Err(e)) => return violation(e),
        }
    }
}

/// RFC 6455 §7.4.1: 1009 for too big, 1007 for a text frame that is not
/// UTF-8, 1002 for any other protocol violation; a dropped socket is just
/// closed.
pub fn violation(e: tungstenite::Error) -> Incoming {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Capacity(c) => {
            metrics::counter!("chat_gateway_frames_too_big_total").increment(1);
            Incoming::Violation {
                code: close::TOO_BIG,
                reason: format!("frame too large: {c}"),
            }
        }
        tungstenite::Error::Utf8(_) => Incoming::Violation {
            code: close::INVALID_PAYLOAD,
            reason: "text frame is not valid UTF-8".into(),
        },
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Incoming::Closed
        }
        tungstenite::Error::Protocol(p) => {
            metrics::counter!("chat_gateway_protocol_errors_total").increment(1);
            Incoming::Violation {
                code: close::PROTOCOL_ERROR,
                reason: format!("protocol error: {p}"),
            }
        }
        _ => Incoming::Closed,
    }
}

/// Runs one session to its end. `_slot` holds the socket's place under the
/// connection limit.
pub async fn run(st: AppState, socket: Socket, _slot: Option<OwnedSemaphorePermit>) {
    metrics::gauge!("chat_gateway_connections").increment(1.0);
    let session_id = st.next_session.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();

    // Every step that awaits another service is boxed: an async fn's state
    // is as large as its largest await point, and an idle session should
    // hold only what it needs while it waits for the next frame.
    let hello = match Box::pin(crate::hello::authenticate(&st, &mut stream)).await {
        Ok(h) => h,
        Err(refusal) => {
            Box::pin(refuse(sink, stream, refusal)).await;
            metrics::gauge!("chat_gateway_connections").decrement(1.0);
            return;
        }
    };
    let user = hello.user;
    let (sid, exp, scopes) = (hello.sid, hello.exp, hello.scopes);
    let span = tracing::info_span!("session", session = session_id, user = %user);
    async move {
        let cap = st.config.limits.max_connections_per_user;
        if st.registry.sessions_of(&user) >= cap {
            Box::pin(refuse(sink, stream, too_many(cap))).await;
            return;
        }
        // Membership changes delivered while the rooms are read are kept
        // for `add`, which knows only registered users otherwise.
        let watch = st.registry.watch_changes(&user);
        let (rooms, mut start) =
            match Box::pin(crate::start::prepare(&st, &user, hello.resume)).await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set the session up");
                    let refusal = Refusal::with_error(
                        close::INTERNAL,
                        e.code(),
                        "backend unavailable, retry".into(),
                    );
                    Box::pin(refuse(sink, stream, refusal)).await;
                    return;
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
        // From here on deliveries reach the session's queue; the writer
        // writes `welcome` before any of them.
        match st
            .registry
            .add(&user, session_id, handle.clone(), rooms, cap, watch)
        {
            Ok(true) => Box::pin(st.presence.connect(&user)).await,
            Ok(false) => {}
            Err(AddError::TooManySessions(_)) => {
                Box::pin(refuse(sink, stream, too_many(cap))).await;
                return;
            }
            Err(AddError::MissedChanges) => {
                let refusal = Refusal::with_error(
                    close::INTERNAL,
                    ErrorCode::Unavailable,
                    "rooms changed while connecting, retry".into(),
                );
                Box::pin(refuse(sink, stream, refusal)).await;
                return;
            }
        }
        // A revocation that arrived while this session was being set up
        // found nothing to close: check again now that it is registered.
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
        let writer = tokio::spawn(crate::writer::run(
            st.clone(),
            sink,
            rx,
            handle.kill.clone(),
            handle.close_reason.clone(),
            start,
        ));
        tracing::debug!("session authenticated");

        read_loop(&st, &user, &handle, &mut stream, exp, scopes).await;

        if st.registry.remove(&user, session_id) {
            Box::pin(st.presence.disconnect(&user)).await;
        }
        handle.kill.cancel();
        match Box::pin(tokio::time::timeout(Duration::from_secs(5), writer)).await {
            Ok(Ok(sink)) => {
                if let Ok(mut socket) = stream.reunite(sink) {
                    Box::pin(linger(&mut socket)).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "writer task failed"),
            Err(_) => tracing::warn!("writer did not finish within 5s"),
        }
        tracing::debug!("session ended");
    }
    .instrument(span)
    .await;
    metrics::gauge!("chat_gateway_connections").decrement(1.0);
}

fn too_many(cap: usize) -> Refusal {
    metrics::counter!("chat_gateway_connections_per_user_rejected_total").increment(1);
    Refusal::with_error(
        close::TOO_MANY_CONNECTIONS,
        ErrorCode::LimitReached,
        format!("this account already has {cap} connections to this gateway"),
    )
}

/// Ends a session that never started: its error frame, the close, and
/// lingering on the socket.
async fn refuse(mut sink: SplitSink<Socket, Message>, stream: SplitStream<Socket>, r: Refusal) {
    if let Some(f) = r.frame.as_deref() {
        let _sent = sink.send(Message::Text(encode(f))).await;
    }
    close_sink(&mut sink, r.code, &r.reason).await;
    if let Ok(mut socket) = stream.reunite(sink) {
        linger(&mut socket).await;
    }
}

/// When a token expiring at `exp` (Unix seconds) runs out, as an instant.
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now = chat_core::time::now_ms() / 1000;
    tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
}

async fn read_loop(
    st: &AppState,
    user: &UserId,
    handle: &SessionHandle,
    stream: &mut SplitStream<Socket>,
    exp: u64,
    mut scopes: crate::scopes::Scopes,
) {
    let limits = &st.config.limits;
    let mut rate = RateLimiter::new(limits.rate_per_sec, limits.rate_burst);
    // The session lives as long as its token, renewed by `auth` frames.
    let mut expires = expiry_instant(exp);
    loop {
        let incoming = tokio::select! {
            _ = handle.kill.cancelled() => return,
            _ = tokio::time::sleep_until(expires) => {
                metrics::counter!("chat_gateway_token_expired_closes_total").increment(1);
                handle.close(
                    close::TOKEN_EXPIRED,
                    "access token expired: refresh it, reconnect and resume",
                );
                return;
            }
            r = tokio::time::timeout(limits.idle_timeout, next_frame(stream)) => r,
        };
        let text = match incoming {
            Err(_) => {
                handle.close(
                    close::IDLE_TIMEOUT,
                    "idle timeout: send ping to stay connected",
                );
                return;
            }
            Ok(Incoming::Text(t)) => t,
            Ok(Incoming::Binary) => {
                handle.close(close::UNSUPPORTED_DATA, "binary frames are not supported");
                return;
            }
            Ok(Incoming::Violation { code, reason }) => {
                handle.close(code, &reason);
                return;
            }
            Ok(Incoming::Closed) => return,
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
/// frame) and flushes, within 2 s.
pub(crate) async fn close_sink(sink: &mut SplitSink<Socket, Message>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from(truncate(reason, 120)),
    };
    let send = async {
        let _sent = sink.send(Message::Close(Some(frame))).await;
        let _closed = sink.close().await;
    };
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

    #[test]
    fn protocol_violations_map_to_their_close_codes() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let code = |e| match violation(e) {
            Incoming::Violation { code, .. } => code,
            _ => 0,
        };
        assert_eq!(
            code(tungstenite::Error::Protocol(
                ProtocolError::UnmaskedFrameFromClient
            )),
            1002
        );
        assert_eq!(
            code(tungstenite::Error::Capacity(
                CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1
                }
            )),
            1009
        );
        assert!(matches!(
            violation(tungstenite::Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            Incoming::Closed
        ));
    }
}
