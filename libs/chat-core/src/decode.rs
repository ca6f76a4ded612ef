//! The client-frame decoder: one text frame in, a [`ClientFrame`] (or the
//! first frame's `hello`) out, or the error code and human message the
//! client gets. Every transport uses this, and it is what the
//! `client_frame` fuzz target drives.

use std::collections::BTreeMap;

use crate::RoomId;
use crate::svc::ErrorCode;
use crate::wire::{ClientFrame, MAX_REQUEST_ID_LEN};

/// Every `type` a client may send.
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "auth",
    "room.create",
    "room.join",
    "room.leave",
    "rooms.list",
    "send",
    "history",
    "ping",
];

/// Why a frame was not decoded: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    /// The request id, when it could be read (so the error names it).
    pub id: Option<String>,
}

/// Best-effort request id of a frame that could not be processed.
pub fn request_id(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    request_id_of(&v)
}

fn request_id_of(v: &serde_json::Value) -> Option<String> {
    v.get("id")?
        .as_str()
        .filter(|s| s.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_string)
}

/// A request after authentication. `malformed` for text that is not a
/// frame or misses/mistypes fields, `unknown_type` for a `type` no client
/// sends, `bad_request` for a request id longer than allowed.
pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return Err(explain(text, &e)),
    };
    let id = match &frame {
        ClientFrame::RoomCreate { id, .. }
        | ClientFrame::RoomJoin { id, .. }
        | ClientFrame::RoomLeave { id, .. }
        | ClientFrame::History { id, .. }
        | ClientFrame::RoomsList { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Auth { id, .. } => id.as_deref(),
        ClientFrame::Send { .. } | ClientFrame::Hello { .. } => None,
    };
    if id.is_some_and(|i| i.len() > MAX_REQUEST_ID_LEN) {
        return Err(DecodeError {
            code: ErrorCode::BadRequest,
            message: format!("id is longer than {MAX_REQUEST_ID_LEN} characters"),
            id: None,
        });
    }
    Ok(frame)
}

/// Tells apart "not JSON / missing fields" from "unknown type".
fn explain(text: &str, e: &serde_json::Error) -> DecodeError {
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let id = value.as_ref().and_then(request_id_of);
    let ty = value
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str());
    let (code, message) = match (&value, ty) {
        (Some(_), Some(t)) if !CLIENT_TYPES.contains(&t) => {
            (ErrorCode::UnknownType, format!("unknown frame type {t:?}"))
        }
        (Some(_), _) => (ErrorCode::Malformed, format!("invalid frame: {e}")),
        (None, _) => (
            ErrorCode::Malformed,
            format!("frame is not valid JSON: {e}"),
        ),
    };
    DecodeError { code, message, id }
}

/// The fields of a session's first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub v: u32,
    /// Empty when missing (refused as `unauthorized`, not `malformed`).
    pub token: String,
    pub resume: BTreeMap<RoomId, u64>,
}

/// The first frame: a `hello`, or `malformed` (not JSON, not an object, a
/// field of the wrong type, such as a resume position that is not a
/// sequence number) or `not_authenticated` (another request first).
pub fn decode_hello(text: &str) -> Result<Hello, DecodeError> {
    let bad = |code: ErrorCode, message: String| DecodeError {
        code,
        message,
        id: None,
    };
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
    // Decoded again from the text, not from `value`: a JSON object with a
    // key twice is malformed here, as it is for every other request (a
    // `Value` keeps the last one silently; found by the fuzzer).
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Hello { v, token, resume }) => Ok(Hello {
            v,
            token,
            resume: resume.unwrap_or_default(),
        }),
        Ok(_) => Err(bad(ErrorCode::Malformed, "not a hello".into())),
        Err(e) => Err(bad(ErrorCode::Malformed, format!("invalid hello: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        decode(text).err().map_or(ErrorCode::Internal, |e| e.code)
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
            let e = decode_hello(&text).expect_err(resume);
            assert_eq!(e.code, ErrorCode::Malformed, "{resume}");
            assert!(e.message.starts_with("invalid hello"), "{}", e.message);
        }
    }

    #[test]
    fn another_request_first_is_not_authenticated_and_garbage_is_malformed() {
        let e = decode_hello(r#"{"type":"ping"}"#).expect_err("ping");
        assert_eq!(e.code, ErrorCode::NotAuthenticated);
        for text in ["{not json", "[]", "42", r#"{"v":1}"#] {
            assert_eq!(
                decode_hello(text).expect_err(text).code,
                ErrorCode::Malformed,
                "{text}"
            );
        }
        let twice = r#"{"type":"hello","v":1,"token":"a","v":2}"#;
        assert_eq!(
            decode_hello(twice).expect_err("duplicate key").code,
            ErrorCode::Malformed
        );
        let h = decode_hello(r#"{"type":"hello","v":1}"#).expect("no token is not malformed");
        assert_eq!((h.v, h.token.as_str()), (1, ""));
    }

    #[test]
    fn requests_are_told_apart_by_what_is_wrong() {
        assert_eq!(code_of("{nope"), ErrorCode::Malformed);
        assert_eq!(
            code_of(r#"{"type":"teleport","id":"x"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(code_of(r#"{"type":"send","id":"x"}"#), ErrorCode::Malformed);
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(code_of(&long), ErrorCode::BadRequest);
        let e = decode(r#"{"type":"teleport","id":"t1"}"#).expect_err("unknown");
        assert_eq!(e.id.as_deref(), Some("t1"), "the error names the request");
        assert!(matches!(
            decode(r#"{"type":"ping","id":"p"}"#),
            Ok(ClientFrame::Ping { .. })
        ));
    }
}
