//! Request/reply payloads of `svc.<service>.<verb>` subjects, and the error
//! shape shared by those replies and the client protocol.

use serde::{Deserialize, Serialize};

use crate::events::RoomEvent;
use crate::{RoomId, UserId};

/// Stable error codes, shared by service replies and client error frames.
/// Documented in `docs/protocol.md`; never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON or misses required fields.
    Malformed,
    /// The frame's `type` is not known.
    UnknownType,
    /// A field has an invalid value (bad id, empty text, bad page bounds).
    BadRequest,
    /// A frame other than `hello` arrived before authentication.
    NotAuthenticated,
    /// The token is missing, expired, forged or otherwise invalid.
    Unauthorized,
    /// The token is valid but its scopes do not allow this (service
    /// accounts).
    Forbidden,
    /// The room does not exist.
    NotFound,
    /// The user is not a member of the room.
    NotMember,
    /// The frame or message text exceeds a configured limit.
    TooLarge,
    /// The connection (or user) sends faster than its rate limit.
    RateLimited,
    /// A per-user limit was reached (connections per user on a gateway,
    /// rooms per user).
    LimitReached,
    /// The same client message id was already used with different content.
    IdConflict,
    /// A dependency (NATS, store) is unavailable; retry later.
    Unavailable,
    /// An unexpected server error; retry later.
    Internal,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::IdConflict => "id_conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error reply: a stable code and a human-readable message. It displays
/// as its message alone: the code travels separately, never as a Rust name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct SvcError {
    pub code: ErrorCode,
    pub message: String,
}

impl SvcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Every `svc.*` reply: `{"ok": …}` or `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(SvcError),
}

impl<T> From<Result<T, SvcError>> for Reply<T> {
    fn from(r: Result<T, SvcError>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        }
    }
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, SvcError> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
        }
    }
}

/// A room's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub created_by: UserId,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// `svc.history.room.create`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCreate {
    pub v: u32,
    pub by: UserId,
    pub name: String,
}

/// `svc.history.room.join` and `svc.history.room.leave`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub v: u32,
    pub room: RoomId,
    pub user: UserId,
}

/// Reply to create/join/leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReply {
    pub room: Room,
    /// False when the user already was (join) or was not (leave) a member.
    pub changed: bool,
    /// Room sequence of the membership event, when one was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `svc.history.room.get` and `svc.history.room.members`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRef {
    pub v: u32,
    pub room: RoomId,
}

/// Reply to `svc.history.room.members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub room: RoomId,
    pub members: Vec<UserId>,
}

/// `svc.history.user.rooms`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub v: u32,
    pub user: UserId,
}

/// Reply to `svc.history.user.rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRooms {
    pub user: UserId,
    pub rooms: Vec<RoomId>,
}

/// Largest page a history query returns.
pub const MAX_PAGE_LIMIT: u32 = 200;

/// `svc.history.page`: events with `after < seq < before`, at most `limit`.
/// With `after` the page is the oldest such events, otherwise the newest.
/// Events are always returned in ascending `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageQuery {
    pub v: u32,
    pub room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    pub limit: u32,
}

/// Reply to `svc.history.page`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub room: RoomId,
    pub events: Vec<RoomEvent>,
    /// True when more events match beyond this page.
    pub more: bool,
}

/// `svc.history.message.find`: the message `from` sent to `room` with
/// client message id `cmid`, if stored. Keeps sends idempotent beyond the
/// stream's de-duplication window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFind {
    pub v: u32,
    pub room: RoomId,
    pub from: UserId,
    pub cmid: crate::ClientMsgId,
}

/// Reply to `svc.history.message.find`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundMessage {
    #[serde(default)]
    pub event: Option<RoomEvent>,
}

/// `svc.presence.query`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceQuery {
    pub v: u32,
    pub users: Vec<UserId>,
}

/// `svc.fanout.presence.snapshot`: which co-members of `user` in `rooms`
/// (the user's rooms, as the asking gateway loaded them from history) are
/// online. Fanout does not check the rooms: only gateways may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSnapshotQuery {
    pub v: u32,
    pub user: UserId,
    pub rooms: Vec<RoomId>,
}

/// Reply to `svc.fanout.presence.snapshot`: the online members of the
/// user's rooms with at most `CHAT_FANOUT_PRESENCE_MAX_ROOM` members,
/// without the user, sorted, at most `CHAT_FANOUT_PRESENCE_SNAPSHOT_MAX`;
/// `more` when that cut the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSnapshot {
    pub online: Vec<UserId>,
    pub more: bool,
}

/// Reply to `svc.presence.query`: the subset of the asked users that is online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceQueryReply {
    pub online: Vec<UserId>,
}
