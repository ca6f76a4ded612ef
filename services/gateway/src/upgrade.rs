//! The WebSocket handshake on `GET /ws` (RFC 6455 §4.2) and the end of a
//! connection. The gateway upgrades the HTTP connection itself, rather than
//! through axum's extractor, so that a session owns the raw socket: after
//! its close frame it reads and discards what the client still sends (a
//! client in the middle of a 1 MiB frame) before the socket is dropped,
//! so the close frame reaches the client instead of a TCP reset.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_platform::http::ConnSlot;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::state::AppState;

/// Longest time a closing connection is read (and discarded) after the
/// server's close frame, waiting for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read while lingering; a client still sending after that is
/// cut off (reset).
const LINGER_BYTES: usize = 32 * 1024 * 1024;

/// `GET /ws`: checks Origin and the handshake headers, answers
/// `101 Switching Protocols`, and runs the session on the upgraded socket.
/// The session takes over the socket's connection slot.
pub async fn ws_upgrade(State(st): State<AppState>, mut req: Request) -> Response {
    let headers = req.headers();
    if !st.origins.allows(headers) {
        metrics::counter!("chat_gateway_origin_rejected_total").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if st.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let key = match handshake_key(headers) {
        Ok(k) => k,
        Err(refusal) => return refusal.into_response(),
    };
    let permit = req.extensions().get::<ConnSlot>().and_then(ConnSlot::take);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = st.sessions.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            // The session owns the TCP socket itself (`ws`), with any bytes
            // the client sent right after its request.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let early = parts.read_buf;
                    crate::session::run(st, parts.io.into_inner(), early, permit).await;
                }
                Err(_) => tracing::warn!("an upgraded connection is not a TCP socket"),
            },
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadHandshake {
    NotAnUpgrade,
    Version,
    MissingKey,
    BadKey,
}

impl IntoResponse for BadHandshake {
    /// 400 for a request that is not a WebSocket upgrade, 426 (with the
    /// supported version) for another protocol version.
    fn into_response(self) -> Response {
        let why = match self {
            BadHandshake::NotAnUpgrade => "not a WebSocket upgrade request",
            BadHandshake::MissingKey => "Sec-WebSocket-Key is missing",
            BadHandshake::BadKey => "Sec-WebSocket-Key is not a base64 16-byte nonce",
            BadHandshake::Version => {
                let mut r = (
                    StatusCode::UPGRADE_REQUIRED,
                    "WebSocket version 13 is required\n",
                )
                    .into_response();
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                return r;
            }
        };
        (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
    }
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request.
fn handshake_key(headers: &HeaderMap) -> Result<String, BadHandshake> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(BadHandshake::NotAnUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(BadHandshake::Version);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(BadHandshake::MissingKey);
    };
    // A 16-byte nonce in base64 is 24 characters ending in "==".
    let k = key.as_bytes();
    if k.len() != 24 || !k.ends_with(b"==") {
        return Err(BadHandshake::BadKey);
    }
    Ok(tungstenite::handshake::derive_accept_key(k))
}

/// After the close frame: half-closes the socket and reads (discarding)
/// until the client closes its side, for at most [`LINGER`] and
/// [`LINGER_BYTES`], so the kernel does not answer the client's unread
/// bytes with a reset that would destroy the close frame.
pub async fn linger(io: &mut TcpStream) {
    let drain = async {
        let _shut = io.shutdown().await;
        let mut buf = vec![0u8; 16 * 1024];
        let mut read = 0usize;
        while read < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _closed = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_rfc_example_key_gets_the_rfc_example_accept() {
        assert_eq!(
            handshake_key(&headers(&GOOD)),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string())
        );
    }

    #[test]
    fn each_missing_or_wrong_header_is_refused_for_its_reason() {
        let without = |name: &str| {
            let kept: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
            handshake_key(&headers(&kept))
        };
        assert_eq!(without("connection"), Err(BadHandshake::NotAnUpgrade));
        assert_eq!(without("upgrade"), Err(BadHandshake::NotAnUpgrade));
        assert_eq!(without("sec-websocket-version"), Err(BadHandshake::Version));
        assert_eq!(without("sec-websocket-key"), Err(BadHandshake::MissingKey));
        let mut v12 = GOOD;
        v12[2] = ("sec-websocket-version", "12");
        assert_eq!(handshake_key(&headers(&v12)), Err(BadHandshake::Version));
        let mut short = GOOD;
        short[3] = ("sec-websocket-key", "c2hvcnQ=");
        assert_eq!(handshake_key(&headers(&short)), Err(BadHandshake::BadKey));
    }
}
