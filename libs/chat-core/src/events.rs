//! Payloads that flow between services over NATS: room events (the room
//! stream), deliveries (fanout → gateway) and presence reports and changes.

use serde::{Deserialize, Serialize};

use crate::{ClientMsgId, GatewayId, RoomId, UserId};

/// One event of a room, as stored in the room stream and in history, and as
/// delivered to clients (inside a `{"type":"event", …}` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// Schema version ([`crate::SCHEMA_VERSION`]).
    pub v: u32,
    pub room: RoomId,
    /// Room sequence: 1, 2, 3 … without gaps within the room.
    pub seq: u64,
    /// Unix milliseconds when the event was sequenced.
    pub ts: u64,
    /// Who caused it (sender of a message, actor of a membership change).
    pub from: UserId,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A chat message.
    Msg {
        /// The sender's client message id (idempotency key).
        cmid: ClientMsgId,
        text: String,
    },
    /// A membership change.
    Member { user: UserId, op: MemberOp },
}

impl EventBody {
    /// The subject token for this body.
    pub fn kind(&self) -> crate::names::EventKind {
        match self {
            EventBody::Msg { .. } => crate::names::EventKind::Msg,
            EventBody::Member { .. } => crate::names::EventKind::Member,
        }
    }
}

/// Direction of a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberOp {
    Join,
    Leave,
}

/// `gw.<gateway_id>.deliver`: one frame for some users connected to one
/// gateway. The frame is encoded once by fanout and written as-is to every
/// recipient's sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub v: u32,
    /// Recipients on this gateway.
    pub users: Vec<UserId>,
    /// The server frame (JSON text) to write to each recipient's sessions.
    pub frame: String,
    /// Room and sequence of a room event (absent for presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Set for membership events, so gateways update their sessions' rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipChange>,
}

/// `gw.<gateway_id>.heads`: fanout → one gateway, every few seconds, the
/// latest message sequence of each recently active room with members online
/// there, and those members. Deliveries are core NATS and can be lost when a NATS node
/// fails; a gateway whose session is behind a head fills the gap (from
/// history) even when no later message of that room arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    pub v: u32,
    pub heads: Vec<Head>,
}

/// One room's head on one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub room: RoomId,
    /// The room's latest message sequence (delivered by this fanout).
    pub seq: u64,
    /// The room's members online on this gateway when the head was sent.
    pub users: Vec<UserId>,
}

/// A membership change carried on a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    pub room: RoomId,
    pub user: UserId,
    pub op: MemberOp,
}

/// `presence.in.<gateway_id>`: what a gateway tells the presence service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceReport {
    pub v: u32,
    pub gw: GatewayId,
    pub op: PresenceOp,
    /// The users concerned: one for connect/disconnect, all users currently
    /// connected to the gateway for a heartbeat.
    pub users: Vec<UserId>,
}

/// Kind of presence report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceOp {
    /// First connection of these users on this gateway.
    Connect,
    /// Last connection of these users on this gateway closed.
    Disconnect,
    /// Full list of users on this gateway; refreshes their expiry.
    Heartbeat,
}

/// `presence.user.<user_id>`: a user's presence changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub v: u32,
    pub user: UserId,
    pub status: PresenceStatus,
    /// Unix milliseconds of the change.
    pub at: u64,
}

/// Online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_event_json_is_flat_with_kind_tag() {
        let ev = RoomEvent {
            v: 1,
            room: RoomId::parse("r1").unwrap_or_else(|e| panic!("{e}")),
            seq: 3,
            ts: 10,
            from: UserId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
            body: EventBody::Msg {
                cmid: ClientMsgId::parse("c1").unwrap_or_else(|e| panic!("{e}")),
                text: "hi".into(),
            },
        };
        let json = serde_json::to_value(&ev).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["kind"], "msg");
        assert_eq!(json["text"], "hi");
        assert_eq!(json["seq"], 3);
        let back: RoomEvent = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, ev);
    }
}
