//! The first frame of a session: a `hello`, checked field by field, then
//! its token. Each way of getting it wrong has its own answer: a frame that
//! is not a well-formed `hello` is `malformed` (or `not_authenticated` for
//! another request) and closes with 4005; a refused token is `unauthorized`
//! and closes with 4001; another protocol version closes with 4004.

use std::collections::BTreeMap;

use chat_core::svc::ErrorCode;
use chat_core::wire::{PROTOCOL_VERSION, ServerFrame, close};
use chat_core::{RoomId, UserId};

use crate::state::AppState;
use crate::ws::{Incoming, Reader, Writer};

/// An authenticated `hello`.
#[derive(Debug)]
pub struct Hello {
    pub user: UserId,
    /// The token's sign-in session, if it names one.
    pub sid: Option<String>,
    /// The token's expiry (Unix seconds): the session ends then unless an
    /// `auth` frame renews it.
    pub exp: u64,
    /// What the token may do (service accounts; people: everything).
    pub scopes: crate::scopes::Scopes,
    /// Room → the last sequence the client has seen.
    pub resume: BTreeMap<RoomId, u64>,
}

/// Why a session ends before it starts: the close code and reason, and an
/// error frame to send first.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
    pub frame: Option<Box<ServerFrame>>,
}

impl Refusal {
    /// An error frame with `code`, then a close with `close_code`.
    pub fn with_error(close_code: u16, code: ErrorCode, message: String) -> Self {
        Self {
            code: close_code,
            reason: message.clone(),
            frame: Some(Box::new(ServerFrame::Error {
                id: None,
                code,
                message,
                room: None,
            })),
        }
    }

    fn close_only(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            frame: None,
        }
    }
}

/// The first data frame (pings before it are answered).
async fn first_frame(reader: &mut Reader<'_>, writer: &mut Writer<'_>) -> Incoming {
    loop {
        match reader.next().await {
            Incoming::Ping(p) => {
                if writer.pong(p).is_err() || writer.flush().await.is_err() {
                    return Incoming::Closed;
                }
            }
            other => return other,
        }
    }
}

/// Waits for the first frame and checks it; the user and resume map of a
/// valid `hello` with a good token.
pub async fn authenticate(
    st: &AppState,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
) -> Result<Hello, Refusal> {
    let limits = &st.config.limits;
    let first = match tokio::time::timeout(limits.auth_timeout, first_frame(reader, writer)).await {
        Err(_) => {
            return Err(Refusal::close_only(
                close::AUTH_TIMEOUT,
                "no hello within the authentication timeout",
            ));
        }
        Ok(Incoming::Text(t)) => t,
        Ok(Incoming::Binary) => {
            return Err(Refusal::close_only(
                close::UNSUPPORTED_DATA,
                "binary frames are not supported",
            ));
        }
        Ok(Incoming::Violation { code, reason }) => return Err(Refusal::close_only(code, reason)),
        Ok(Incoming::CloseFrame(_) | Incoming::Closed | Incoming::Ping(_)) => {
            return Err(Refusal::close_only(1000, ""));
        }
    };
    let chat_core::decode::Hello { v, token, resume } = parse(&first)?;
    if v != PROTOCOL_VERSION {
        return Err(Refusal::close_only(
            close::UNSUPPORTED_VERSION,
            format!("protocol version {v} is not supported; use {PROTOCOL_VERSION}"),
        ));
    }
    if token.is_empty() {
        metrics::counter!("chat_gateway_auth_failures_total").increment(1);
        return Err(Refusal::with_error(
            close::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "hello.token is missing".into(),
        ));
    }
    match st.verifier.verify(&token).await {
        Ok(claims)
            if claims
                .session
                .as_deref()
                .is_some_and(|s| st.revocations.is_revoked(s)) =>
        {
            metrics::counter!("chat_gateway_auth_failures_total").increment(1);
            Err(Refusal::with_error(
                close::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "invalid token: its session was revoked".into(),
            ))
        }
        Ok(claims) => Ok(Hello {
            user: claims.user,
            sid: claims.session,
            exp: claims.exp,
            scopes: crate::scopes::Scopes::from_claims(claims.scopes),
            resume,
        }),
        Err(e) => {
            metrics::counter!("chat_gateway_auth_failures_total").increment(1);
            Err(Refusal::with_error(
                close::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                format!("invalid token: {e}"),
            ))
        }
    }
}

/// The fields of a `hello`, or how the frame is not one (closed with 4005).
fn parse(text: &str) -> Result<chat_core::decode::Hello, Refusal> {
    chat_core::decode::decode_hello(text)
        .map_err(|e| Refusal::with_error(close::BAD_HELLO, e.code, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_hello_closes_with_4005_and_says_what_is_wrong() {
        let r = parse(r#"{"type":"hello","v":1,"token":"t","resume":{"r1":-1}}"#)
            .expect_err("malformed");
        assert_eq!(r.code, close::BAD_HELLO);
        assert!(matches!(
            r.frame.as_deref(),
            Some(ServerFrame::Error {
                code: ErrorCode::Malformed,
                ..
            })
        ));
        let r = parse(r#"{"type":"ping"}"#).expect_err("not a hello");
        assert_eq!(r.code, close::BAD_HELLO);
    }
}
