//! The client protocol (version 1): JSON text frames over WebSocket, each an
//! object with a `type`. Documented in `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::events::{PresenceStatus, RoomEvent};
use crate::svc::{ErrorCode, Room};
use crate::{ClientMsgId, GatewayId, RoomId, UserId};

/// Protocol version spoken by this build; `hello.v` must equal it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request id (`id` on requests other than `send`).
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientFrame {
    /// Must be the first frame: authenticates the connection. `resume`
    /// maps rooms to the last message sequence the client has seen; the
    /// gateway then sends what it missed before live messages.
    #[serde(rename = "hello")]
    Hello {
        v: u32,
        /// Missing is the same as empty: refused as `unauthorized`.
        #[serde(default)]
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<std::collections::BTreeMap<RoomId, u64>>,
    },
    /// Creates a room with the caller as first member.
    #[serde(rename = "room.create")]
    RoomCreate {
        #[serde(default)]
        id: Option<String>,
        name: String,
    },
    /// Joins an existing room.
    #[serde(rename = "room.join")]
    RoomJoin {
        #[serde(default)]
        id: Option<String>,
        room: RoomId,
    },
    /// Leaves a room.
    #[serde(rename = "room.leave")]
    RoomLeave {
        #[serde(default)]
        id: Option<String>,
        room: RoomId,
    },
    /// Sends a message; `id` is the client message id (idempotency key).
    /// `retry` marks a resend of an id that may have been stored already:
    /// only then is the store asked (beyond the stream's de-duplication
    /// window).
    #[serde(rename = "send")]
    Send {
        id: ClientMsgId,
        room: RoomId,
        text: String,
        #[serde(default)]
        retry: bool,
    },
    /// Asks for a page of history.
    #[serde(rename = "history")]
    History {
        #[serde(default)]
        id: Option<String>,
        room: RoomId,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// A page of the caller's rooms (by id, after `after`), with each
    /// room's last message sequence.
    #[serde(rename = "rooms.list")]
    RoomsList {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        after: Option<RoomId>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Keep-alive; answered with `pong`.
    #[serde(rename = "ping")]
    Ping {
        #[serde(default)]
        id: Option<String>,
    },
    /// A fresh access token for the same user, before the current one
    /// expires: the session then lives until the new token's expiry.
    /// Answered with `authenticated`, or an `unauthorized` error (the
    /// session keeps its old token).
    #[serde(rename = "auth")]
    Auth {
        #[serde(default)]
        id: Option<String>,
        token: String,
    },
}

/// Limits announced to the client in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_text_bytes: usize,
    pub msgs_per_sec: u32,
    pub burst: u32,
    pub idle_timeout_ms: u64,
}

/// A room and its last message sequence when the server looked: every
/// message after `seq` reaches the session (live, or filled in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomHead {
    pub id: RoomId,
    pub seq: u64,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerFrame {
    /// Authentication succeeded.
    #[serde(rename = "welcome")]
    Welcome {
        v: u32,
        user: UserId,
        gateway: GatewayId,
        /// The user's first rooms by id (at most `CHAT_GATEWAY_WELCOME_ROOMS`).
        rooms: Vec<RoomHead>,
        /// More rooms follow: page them with `rooms.list`.
        more_rooms: bool,
        limits: Limits,
    },
    /// Reply to `rooms.list`.
    #[serde(rename = "rooms")]
    Rooms {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        rooms: Vec<RoomHead>,
        more: bool,
    },
    /// Reply to `room.create`.
    #[serde(rename = "room.created")]
    RoomCreated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room: Room,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Reply to `room.join`.
    #[serde(rename = "room.joined")]
    RoomJoined {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room: Room,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Reply to `room.leave`.
    #[serde(rename = "room.left")]
    RoomLeft {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room: Room,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// The message with client id `id` is durably stored as `seq` of `room`.
    #[serde(rename = "ack")]
    Ack {
        id: ClientMsgId,
        room: RoomId,
        seq: u64,
        ts: u64,
        /// True when this send repeated an earlier one (nothing new stored).
        duplicate: bool,
    },
    /// A room event (message or membership change).
    #[serde(rename = "event")]
    Event(RoomEvent),
    /// Reply to `history`.
    #[serde(rename = "history")]
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room: RoomId,
        events: Vec<RoomEvent>,
        more: bool,
    },
    /// The missed messages of `room` after `after` were sent (up to `to`).
    /// `complete: false` means the gap was too large or history was
    /// unavailable: fetch `after < seq <= to` with `history`.
    #[serde(rename = "resumed")]
    Resumed {
        room: RoomId,
        after: u64,
        to: u64,
        complete: bool,
        /// The position the client gave was beyond the room's last
        /// message; the gateway resumed from that message (`after`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        clamped: bool,
    },
    /// Sent just before a server-initiated close that asks the client to
    /// reconnect (1001): where it is in each room, to pass as `hello.resume`.
    #[serde(rename = "reconnect")]
    Reconnect {
        resume: std::collections::BTreeMap<RoomId, u64>,
    },
    /// Sent once after `welcome`: the co-members online now (in rooms with
    /// presence); everyone else is offline. `more`: the list was cut.
    #[serde(rename = "presence.snapshot")]
    PresenceSnapshot { online: Vec<UserId>, more: bool },
    /// A co-member's presence changed.
    #[serde(rename = "presence")]
    Presence {
        user: UserId,
        status: PresenceStatus,
    },
    /// Reply to `auth`: the session now lives until `exp` (Unix seconds).
    #[serde(rename = "authenticated")]
    Authenticated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        exp: u64,
    },
    /// Reply to `ping`.
    #[serde(rename = "pong")]
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// A request failed; `id` names the request when it could be read.
    #[serde(rename = "error")]
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
        /// The room concerned, where the error is about one (a refused
        /// resume).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
    },
}

/// WebSocket close codes used by the gateway (documented in `docs/protocol.md`).
pub mod close {
    /// Server is shutting down or draining: reconnect (to any gateway) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455 (unmasked or reserved-bit frames, reserved
    /// opcodes, fragmented or oversized control frames).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame was sent; the protocol is text-only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// The token in `hello` was rejected.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `hello` within the authentication timeout.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// No frame within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4003;
    /// `hello.v` is not a supported protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 4004;
    /// The first frame was not a well-formed `hello`.
    pub const BAD_HELLO: u16 = 4005;
    /// The user already has `CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER`
    /// connections on this gateway.
    pub const TOO_MANY_CONNECTIONS: u16 = 4008;
    /// The outbound queue overflowed (client too slow): reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// The session was revoked (sign-out, refresh-token reuse): sign in
    /// again; do not reconnect with the same token.
    pub const REVOKED: u16 = 4010;
    /// The access token expired without an `auth` frame renewing it:
    /// refresh the token, then reconnect and resume.
    pub const TOKEN_EXPIRED: u16 = 4011;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_from_documented_json() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"send","id":"c1","room":"r1","text":"hi"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f, ClientFrame::Send { retry: false, .. }));
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","id":"c1","room":"r1","text":"hi","retry":true}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f, ClientFrame::Send { retry: true, .. }));
        assert!(
            serde_json::from_str::<ClientFrame>(
                r#"{"type":"send","id":"c1","room":"r1","text":"hi","retry":"yes"}"#
            )
            .is_err(),
            "retry is a boolean"
        );
        let f: ClientFrame = serde_json::from_str(r#"{"type":"room.join","room":"r1"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f, ClientFrame::RoomJoin { id: None, .. }));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn event_frame_is_flat() {
        let ev: RoomEvent = serde_json::from_str(
            r#"{"v":1,"room":"r1","seq":1,"ts":5,"from":"a","kind":"msg","cmid":"c","text":"x"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = serde_json::to_string(&ServerFrame::Event(ev)).unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["type"], "event");
        assert_eq!(v["kind"], "msg");
        assert_eq!(v["seq"], 1);
    }
}
