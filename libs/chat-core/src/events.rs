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
    /// What the frame is; decides which of the fields below must be set.
    pub kind: DeliveryKind,
    /// Recipients on this gateway.
    pub users: Vec<UserId>,
    /// The server frame (JSON text) to write to each recipient's sessions.
    pub frame: String,
    /// Room and sequence of a room event (`msg` and `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The change of a `member` delivery, so gateways update their
    /// sessions' rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipChange>,
    /// A room-wide delivery (on `rooms.deliver`, to every gateway): the
    /// recipients are every member of `room` connected to the gateway, as
    /// its own membership index knows them, plus `users` (a leaver, who is
    /// no longer a member, receives its own leave).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub to_room: bool,
}

/// The kind of a [`Delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// A message of a room: `room` and `seq` (its room sequence) are set,
    /// and the gateway writes it in sequence order per session.
    Msg,
    /// A membership event: `room`, `seq` (the room's last message before
    /// it) and `membership` are set.
    Member,
    /// A presence frame: none of them.
    Presence,
}

/// A delivery, checked: what a gateway acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed<'a> {
    Msg { room: &'a RoomId, seq: u64 },
    Member { change: &'a MembershipChange },
    Presence,
}

impl Delivery {
    /// Decodes the payload of a delivery subject: one delivery, or a JSON
    /// array of deliveries, in order (fanout coalesces the deliveries of a
    /// run of events to one subject into one message).
    pub fn decode_all(payload: &[u8]) -> Result<Vec<Delivery>, serde_json::Error> {
        if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            serde_json::from_slice(payload)
        } else {
            serde_json::from_slice(payload).map(|d| vec![d])
        }
    }

    /// The delivery's kind with the fields that kind requires, or why it is
    /// not a valid delivery.
    pub fn routed(&self) -> Result<Routed<'_>, &'static str> {
        match (self.kind, &self.room, self.seq, &self.membership) {
            (DeliveryKind::Msg, Some(room), Some(seq), None) => Ok(Routed::Msg { room, seq }),
            (DeliveryKind::Msg, ..) => Err("a msg delivery needs room and seq, and no membership"),
            (DeliveryKind::Member, Some(room), Some(_), Some(change)) if change.room == *room => {
                Ok(Routed::Member { change })
            }
            (DeliveryKind::Member, ..) => {
                Err("a member delivery needs room, seq and a membership of that room")
            }
            (DeliveryKind::Presence, None, None, None) if !self.to_room => Ok(Routed::Presence),
            (DeliveryKind::Presence, ..) => {
                Err("a presence delivery has no room, seq or membership and is not room-wide")
            }
        }
    }
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
    /// The users concerned: one for connect/disconnect; for a heartbeat, the
    /// gateway's users of its `part` (all of them without one).
    pub users: Vec<UserId>,
    /// The gateway's report number: larger for every later report of the
    /// gateway (it starts from the gateway's start time in microseconds).
    /// A heartbeat removes the entries of its part written by an earlier
    /// report that it does not list (a lost disconnect). Absent: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n: u64,
    /// A heartbeat's share of the users, `[i, k]`: those whose
    /// [`presence_part`] of `k` is `i`. Absent: all users (`[0, 1]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<[u32; 2]>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Which of `parts` heartbeat parts `user` belongs to (FNV-1a of the id:
/// gateways and presence must agree, whatever their build).
pub fn presence_part(user: &UserId, parts: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(h % u64::from(parts.max(1))).unwrap_or(0)
}

/// Kind of presence report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceOp {
    /// First connection of these users on this gateway.
    Connect,
    /// Last connection of these users on this gateway closed.
    Disconnect,
    /// The gateway is alive (its lease is renewed), with its users (or a
    /// part of them): missing entries are written, stale ones removed.
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
    fn a_delivery_payload_holds_one_delivery_or_an_array_in_order() {
        let one = r#"{"v":1,"kind":"msg","users":["u1"],"frame":"a","room":"r","seq":1}"#;
        let many = format!(
            " [{one},{}]",
            one.replace("\"a\"", "\"b\"").replace(":1}", ":2}")
        );
        let frames = |p: &str| -> Vec<(String, Option<u64>)> {
            Delivery::decode_all(p.as_bytes())
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .into_iter()
                .map(|d| (d.frame, d.seq))
                .collect()
        };
        assert_eq!(frames(one), vec![("a".into(), Some(1))]);
        assert_eq!(
            frames(&many),
            vec![("a".into(), Some(1)), ("b".into(), Some(2))]
        );
        assert!(Delivery::decode_all(b"[1]").is_err());
        assert!(Delivery::decode_all(b"garbage").is_err());
    }

    #[test]
    fn heartbeat_parts_are_a_fixed_function_of_the_user_id() {
        let u = |s: &str| UserId::parse(s).unwrap_or_else(|e| panic!("{e}"));
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: gateways and presence of
        // any build must agree on it.
        assert_eq!(
            presence_part(&u("a"), 1_000_003),
            (0xaf63_dc4c_8601_ec8c_u64 % 1_000_003) as u32
        );
        assert_eq!(presence_part(&u("a"), 1), 0);
        assert_eq!(presence_part(&u("a"), 0), 0, "no parts is one part");
        let spread: std::collections::HashSet<u32> = (0..64)
            .map(|i| presence_part(&u(&format!("u{i}")), 4))
            .collect();
        assert_eq!(spread.len(), 4, "64 users fill 4 parts");
    }

    #[test]
    fn a_report_without_number_or_part_reads_as_number_0_and_all_users() {
        let r: PresenceReport =
            serde_json::from_str(r#"{"v":1,"gw":"g1","op":"heartbeat","users":["u1"]}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.n, r.part), (0, None));
        let text = serde_json::to_string(&r).unwrap_or_else(|e| panic!("{e}"));
        assert!(!text.contains("\"n\"") && !text.contains("part"), "{text}");
    }

    #[test]
    fn a_delivery_is_routed_by_its_kind_and_needs_that_kinds_fields() {
        let room = RoomId::parse("r1").unwrap_or_else(|e| panic!("{e}"));
        let user = UserId::parse("u1").unwrap_or_else(|e| panic!("{e}"));
        let base = Delivery {
            v: 1,
            kind: DeliveryKind::Msg,
            users: vec![user.clone()],
            frame: "{}".into(),
            room: Some(room.clone()),
            seq: Some(4),
            membership: None,
            to_room: false,
        };
        assert_eq!(
            base.routed(),
            Ok(Routed::Msg {
                room: &room,
                seq: 4
            })
        );
        // The same fields with another kind are not a message any more.
        let member = Delivery {
            kind: DeliveryKind::Member,
            ..base.clone()
        };
        assert!(
            member.routed().is_err(),
            "a member delivery without its change"
        );
        let change = MembershipChange {
            room: room.clone(),
            user,
            op: MemberOp::Join,
        };
        let member = Delivery {
            membership: Some(change.clone()),
            ..member
        };
        assert_eq!(member.routed(), Ok(Routed::Member { change: &change }));
        let presence = Delivery {
            kind: DeliveryKind::Presence,
            ..base.clone()
        };
        assert!(presence.routed().is_err(), "presence carries no room");
        let room_wide_presence = Delivery {
            kind: DeliveryKind::Presence,
            room: None,
            seq: None,
            to_room: true,
            ..base.clone()
        };
        assert!(
            room_wide_presence.routed().is_err(),
            "room-wide needs a room"
        );
        let text = serde_json::to_string(&base).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !text.contains("to_room"),
            "per-gateway is the default: {text}"
        );
        let json = r#"{"v":1,"users":["u1"],"frame":"{}","room":"r1","seq":4}"#;
        assert!(
            serde_json::from_str::<Delivery>(json).is_err(),
            "the kind is required"
        );
    }

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

/// A revoked sign-in session, as stored under its id in
/// [`crate::names::REVOKED_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub v: u32,
    pub user: UserId,
    /// Unix milliseconds.
    pub at: u64,
}
