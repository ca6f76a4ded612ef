//! The first frame of a session: a `hello`, checked field by field, then
//! its token. Each way of getting it wrong has its own answer: a frame that
//! is not a well-formed `hello` is `malformed` (or `not_authenticated` for
//! another request) and closes with 4005; a refused token is `unauthorized`
//! and closes with 4001; another protocol version closes with 4004.

use std::collections::BTreeMap;

use chat_core::svc::ErrorCode;
use chat_core::wire::{ClientFrame, PROTOCOL_VERSION, ServerFrame, close};
use chat_core::{RoomId, UserId};
use futures::stream::SplitStream;

use crate::session::{Incoming, next_frame};
use crate::state::AppState;
use crate::upgrade::Socket;

/// An authenticated `hello`.
#[derive(Debug)]
pub struct Hello {
    pub user: UserId,
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

/// Waits for the first frame and checks it; the user and resume map of a
/// valid `hello` with a good token.
pub async fn authenticate(
    st: &AppState,
    stream: &mut SplitStream<Socket>,
) -> Result<Hello, Refusal> {
    let limits = &st.config.limits;
    let first = match tokio::time::timeout(limits.auth_timeout, next_frame(stream)).await {
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
        Ok(Incoming::Closed) => return Err(Refusal::close_only(1000, "")),
    };
    let (v, token, resume) = parse(&first)?;
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
        Ok(claims) => Ok(Hello {
            user: claims.user,
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

type Parsed = (u32, String, BTreeMap<RoomId, u64>);

/// The fields of a `hello`, or how the frame is not one.
pub fn parse(text: &str) -> Result<Parsed, Refusal> {
    let bad =
        |code: ErrorCode, message: String| Refusal::with_error(close::BAD_HELLO, code, message);
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        bad(
            ErrorCode::Malformed,
            format!("the first frame must be a hello; it is not valid JSON ({e})"),
        )
    })?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("hello") => {}
        Some(other) => {
            return Err(bad(
                ErrorCode::NotAuthenticated,
                format!("send hello first, before {other:?}"),
            ));
        }
        None => {
            return Err(bad(
                ErrorCode::Malformed,
                "the first frame must be a hello object with \"type\":\"hello\"".into(),
            ));
        }
    }
    match serde_json::from_value::<ClientFrame>(value) {
        Ok(ClientFrame::Hello { v, token, resume }) => Ok((v, token, resume.unwrap_or_default())),
        Ok(_) => Err(bad(ErrorCode::Malformed, "not a hello".into())),
        Err(e) => Err(bad(ErrorCode::Malformed, format!("invalid hello: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> (u16, Option<ErrorCode>, String) {
        match parse(text) {
            Ok(p) => panic!("{text} parsed: {p:?}"),
            Err(r) => {
                let code = match r.frame.as_deref() {
                    Some(ServerFrame::Error { code, .. }) => Some(*code),
                    _ => None,
                };
                (r.code, code, r.reason)
            }
        }
    }

    #[test]
    fn a_malformed_resume_is_malformed_not_unauthorized() {
        for resume in [
            r#"{"r1":-1}"#,
            r#"{"r1":"5"}"#,
            "[1,2]",
            r#"{"r1":1.5}"#,
            r#"{"bad id":1}"#,
        ] {
            let text = format!(r#"{{"type":"hello","v":1,"token":"t","resume":{resume}}}"#);
            let (close_code, code, reason) = refused(&text);
            assert_eq!(close_code, close::BAD_HELLO, "{resume}");
            assert_eq!(code, Some(ErrorCode::Malformed), "{resume}");
            assert!(reason.starts_with("invalid hello"), "{reason}");
        }
    }

    #[test]
    fn another_request_first_is_not_authenticated_and_garbage_is_malformed() {
        let (c, code, _) = refused(r#"{"type":"ping"}"#);
        assert_eq!(
            (c, code),
            (close::BAD_HELLO, Some(ErrorCode::NotAuthenticated))
        );
        for text in ["{not json", "[]", "42", r#"{"v":1}"#] {
            let (c, code, _) = refused(text);
            assert_eq!(
                (c, code),
                (close::BAD_HELLO, Some(ErrorCode::Malformed)),
                "{text}"
            );
        }
    }

    #[test]
    fn a_hello_without_a_token_parses_and_is_refused_later_as_unauthorized() {
        let (v, token, resume) = parse(r#"{"type":"hello","v":1}"#).expect("parses");
        assert_eq!((v, token.as_str(), resume.len()), (1, "", 0));
    }
}
