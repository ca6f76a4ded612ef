//! One WebSocket session: authenticate, then a reader loop (this task) and a
//! writer task that owns the socket's sink and drains a bounded queue. When
//! either ends, the other is stopped; every server-initiated close carries a
//! documented code and reason.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chat_core::UserId;
use chat_core::svc::ErrorCode;
use chat_core::wire::{ClientFrame, PROTOCOL_VERSION, ServerFrame, close};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::registry::{Out, SessionHandle};
use crate::state::AppState;

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

enum Incoming {
    Text(Utf8Bytes),
    Binary,
    TooBig,
    Closed,
}

async fn next_frame(stream: &mut SplitStream<WebSocket>) -> Incoming {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Incoming::Text(t),
            Some(Ok(Message::Binary(_))) => return Incoming::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Incoming::Closed,
            Some(Err(e)) => {
                let too_big = e
                    .into_inner()
                    .downcast::<tungstenite::Error>()
                    .is_ok_and(|t| matches!(*t, tungstenite::Error::Capacity(_)));
                return if too_big {
                    Incoming::TooBig
                } else {
                    Incoming::Closed
                };
            }
        }
    }
}

/// Runs one session to its end. `_slot` holds the socket's place under the
/// connection limit.
pub async fn run(st: AppState, socket: WebSocket, _slot: Option<OwnedSemaphorePermit>) {
    metrics::gauge!("chat_gateway_connections").increment(1.0);
    let session_id = st.next_session.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();

    // Every step that awaits another service is boxed: an async fn's state
    // is as large as its largest await point, and an idle session should
    // hold only what it needs while it waits for the next frame.
    let (user, resume) = match Box::pin(authenticate(&st, &mut stream)).await {
        Ok(ok) => ok,
        Err((code, reason, error_frame)) => {
            if let Some(f) = error_frame {
                let _sent = sink.send(Message::Text(encode(&f))).await;
            }
            Box::pin(close_sink(&mut sink, code, &reason)).await;
            metrics::gauge!("chat_gateway_connections").decrement(1.0);
            return;
        }
    };
    let span = tracing::info_span!("session", session = session_id, user = %user);
    async move {
        let rooms = match Box::pin(st.rooms_of(&user)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load rooms");
                Box::pin(close_sink(
                    &mut sink,
                    close::INTERNAL,
                    "backend unavailable, retry",
                ))
                .await;
                return;
            }
        };
        let (tx, rx) = crate::queue::bounded(st.config.limits.queue_depth);
        let handle = SessionHandle {
            tx,
            kill: CancellationToken::new(),
            close_reason: Arc::new(Mutex::new(None)),
        };
        let welcome = encode(&ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            user: user.clone(),
            gateway: st.config.gateway_id.clone(),
            rooms: rooms.clone(),
            limits: st.config.limits.wire(),
        });
        // The registry queues `welcome` before deliveries can see the
        // session: it is always the first frame.
        if st
            .registry
            .add(&user, session_id, handle.clone(), rooms, welcome)
        {
            Box::pin(st.presence.connect(&user)).await;
        }
        let writer = tokio::spawn(crate::writer::run(
            st.clone(),
            sink,
            rx,
            handle.kill.clone(),
            handle.close_reason.clone(),
        ));
        tracing::debug!("session authenticated");
        resume_rooms(&st, &user, &handle, resume);

        read_loop(&st, &user, &handle, &mut stream).await;

        if st.registry.remove(&user, session_id) {
            Box::pin(st.presence.disconnect(&user)).await;
        }
        handle.kill.cancel();
        if Box::pin(tokio::time::timeout(Duration::from_secs(5), writer))
            .await
            .is_err()
        {
            tracing::warn!("writer did not finish within 5s");
        }
        tracing::debug!("session ended");
    }
    .instrument(span)
    .await;
    metrics::gauge!("chat_gateway_connections").decrement(1.0);
}

type AuthFailure = (u16, String, Option<ServerFrame>);

/// Most rooms one `hello` may resume.
pub const MAX_RESUME_ROOMS: usize = 1000;

/// Asks the writer to catch the client up in each room it names.
fn resume_rooms(st: &AppState, user: &UserId, handle: &SessionHandle, resume: Option<Resume>) {
    for (i, (room, after)) in resume.into_iter().flatten().enumerate() {
        let refused = if i >= MAX_RESUME_ROOMS {
            Some((
                ErrorCode::BadRequest,
                format!("cannot resume {room}: more than {MAX_RESUME_ROOMS} rooms"),
            ))
        } else if !st.registry.is_member(user, &room) {
            Some((
                ErrorCode::NotMember,
                format!("cannot resume {room}: not a member"),
            ))
        } else {
            None
        };
        let ok = match refused {
            Some((code, message)) => handle.push(encode(&ServerFrame::Error {
                id: None,
                code,
                message,
            })),
            None => handle.push_out(Out::Resume { room, after }),
        };
        if !ok {
            return;
        }
    }
}

type Resume = std::collections::BTreeMap<chat_core::RoomId, u64>;

async fn authenticate(
    st: &AppState,
    stream: &mut SplitStream<WebSocket>,
) -> Result<(UserId, Option<Resume>), AuthFailure> {
    let limits = &st.config.limits;
    let first = match tokio::time::timeout(limits.auth_timeout, next_frame(stream)).await {
        Err(_) => {
            return Err((
                close::AUTH_TIMEOUT,
                "no hello within the authentication timeout".into(),
                None,
            ));
        }
        Ok(Incoming::Text(t)) => t,
        Ok(Incoming::TooBig) => return Err((close::TOO_BIG, "frame too large".into(), None)),
        Ok(Incoming::Binary) => {
            return Err((
                close::UNSUPPORTED_DATA,
                "binary frames are not supported".into(),
                None,
            ));
        }
        Ok(Incoming::Closed) => return Err((1000, String::new(), None)),
    };
    let unauthorized = |message: String| {
        (
            close::UNAUTHORIZED,
            message.clone(),
            Some(ServerFrame::Error {
                id: None,
                code: ErrorCode::Unauthorized,
                message,
            }),
        )
    };
    let (v, token, resume) = match serde_json::from_str::<ClientFrame>(&first) {
        Ok(ClientFrame::Hello { v, token, resume }) => (v, token, resume),
        Ok(_) => return Err(unauthorized("the first frame must be hello".into())),
        Err(e) => return Err(unauthorized(format!("the first frame must be hello: {e}"))),
    };
    if v != PROTOCOL_VERSION {
        return Err((
            close::UNSUPPORTED_VERSION,
            format!("protocol version {v} is not supported; use {PROTOCOL_VERSION}"),
            None,
        ));
    }
    match st.verifier.verify(&token).await {
        Ok(claims) => Ok((claims.user, resume)),
        Err(e) => {
            metrics::counter!("chat_gateway_auth_failures_total").increment(1);
            Err(unauthorized(format!("invalid token: {e}")))
        }
    }
}

async fn read_loop(
    st: &AppState,
    user: &UserId,
    handle: &SessionHandle,
    stream: &mut SplitStream<WebSocket>,
) {
    let limits = &st.config.limits;
    let mut rate = RateLimiter::new(limits.rate_per_sec, limits.rate_burst);
    loop {
        let incoming = tokio::select! {
            _ = handle.kill.cancelled() => return,
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
            Ok(Incoming::TooBig) => {
                metrics::counter!("chat_gateway_frames_too_big_total").increment(1);
                handle.close(
                    close::TOO_BIG,
                    &format!("frame larger than {} bytes", limits.max_frame_bytes),
                );
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
            }));
            continue;
        }
        let reply = Box::pin(crate::commands::handle(st, user, &text)).await;
        if !handle.push(encode(&reply)) {
            return;
        }
    }
}

pub(crate) async fn close_sink(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
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
}
