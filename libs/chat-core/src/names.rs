//! The NATS contract: every subject, stream, consumer, bucket and header name.
//! These are a public API (see `docs/nats-api.md`); services never spell them
//! as literals.

use crate::{GatewayId, RoomId, UserId};

/// Prefix of every room event subject: `chat.room.<room_id>.<kind>`.
pub const ROOM_SUBJECT_PREFIX: &str = "chat.room";
/// JetStream stream holding every room event, in room-sequence order per room.
pub const ROOM_STREAM: &str = "CHAT_ROOMS";
/// Durable consumers of the history service on [`ROOM_STREAM`]: one per
/// partition, `history-p<n>` (see [`partition_durable`]). The bare name is
/// the unpartitioned consumer of earlier versions, removed at setup.
pub const HISTORY_DURABLE: &str = "history";
/// Durable consumers of the fanout service: `fanout-p<n>`, as for history.
pub const FANOUT_DURABLE: &str = "fanout";
/// What the room stream's subject transform applies to: a room event as
/// published, `chat.room.<room_id>.<kind>`.
pub const ROOM_SUBJECT_PUBLISHED: &str = "chat.room.*.*";
/// Most partitions the room stream may have (permissions name each one).
pub const MAX_ROOM_PARTITIONS: u16 = 32;
/// The priority group every partition consumer pins one client of.
pub const PARTITION_GROUP: &str = "owner";
/// KV bucket where instances of partitioned services announce themselves
/// (`<service>.<instance>`, expiring unless renewed).
pub const WORKERS_BUCKET: &str = "chat_workers";

/// Kinds of room event; the last token of a room event subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A chat message.
    Msg,
    /// A membership change (join or leave).
    Member,
}

impl EventKind {
    /// The subject token of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Msg => "msg",
            EventKind::Member => "member",
        }
    }

    /// Parses a subject token.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "msg" => Some(EventKind::Msg),
            "member" => Some(EventKind::Member),
            _ => None,
        }
    }
}

/// `chat.room.<room_id>.<kind>`: where one room event is published.
pub fn room_subject(room: &RoomId, kind: EventKind) -> String {
    format!("{ROOM_SUBJECT_PREFIX}.{room}.{}", kind.as_str())
}

/// `chat.room.<room_id>.>`: every event of one room.
pub fn room_filter(room: &RoomId) -> String {
    format!("{ROOM_SUBJECT_PREFIX}.{room}.>")
}

/// The room stream's subject transform: it stores `chat.room.<room>.<kind>`
/// as `chat.room.<room>.<kind>.<partition>`, the partition a hash of the
/// room id, computed by nats-server (ADR 0009).
pub fn room_partition_transform(partitions: u16) -> String {
    format!(
        "{ROOM_SUBJECT_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},1)}}}}"
    )
}

/// The partition count in a transform made by [`room_partition_transform`].
pub fn parse_room_partition_transform(destination: &str) -> Option<u16> {
    let rest = destination.split("{{partition(").nth(1)?;
    let (n, _) = rest.split_once(',')?;
    n.trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_ROOM_PARTITIONS).contains(n))
}

/// `chat.room.<room_id>.<kind>.*`: the stored events of one kind of one room
/// (whatever partition the stream put them in), for stream reads.
pub fn stored_room_filter(room: &RoomId, kind: EventKind) -> String {
    format!("{ROOM_SUBJECT_PREFIX}.{room}.{}.*", kind.as_str())
}

/// The stored events of one partition: `chat.room.*.*.<n>`, or only one kind.
pub fn partition_filter(partition: u16, kind: Option<EventKind>) -> String {
    let kind = kind.map_or("*", EventKind::as_str);
    format!("{ROOM_SUBJECT_PREFIX}.*.{kind}.{partition}")
}

/// The durable consumer of partition `n` for a service: `<base>-p<n>`.
pub fn partition_durable(base: &str, partition: u16) -> String {
    format!("{base}-p{partition}")
}

/// Splits a room event subject, as published (`chat.room.<room_id>.<kind>`)
/// or as stored (with the partition token after it), into room and kind.
pub fn parse_room_subject(subject: &str) -> Option<(RoomId, EventKind)> {
    let rest = subject
        .strip_prefix(ROOM_SUBJECT_PREFIX)?
        .strip_prefix('.')?;
    let (room, rest) = rest.split_once('.')?;
    let kind = match rest.split_once('.') {
        Some((kind, partition)) => {
            partition.parse::<u16>().ok()?;
            kind
        }
        None => rest,
    };
    Some((RoomId::parse(room).ok()?, EventKind::parse(kind)?))
}

/// `gw.<gateway_id>.deliver`: core NATS, fanout → one gateway.
pub fn gateway_deliver(gw: &GatewayId) -> String {
    format!("gw.{gw}.deliver")
}

/// `rooms.deliver`: core NATS, fanout → every gateway: one frame for every
/// connected member of a large room (a [`crate::events::Delivery`] with
/// `to_room`); each gateway finds the recipients in its own membership
/// index instead of fanout naming thousands of them per gateway.
pub const ROOM_DELIVER: &str = "rooms.deliver";

/// `fanout.membership`: core NATS, every fanout instance → every fanout
/// instance: a membership change one instance took from the room stream
/// ([`crate::events::MembershipChange`]), so each instance's member cache
/// stays current although each sees only part of the stream. Internal.
pub const FANOUT_MEMBERSHIP: &str = "fanout.membership";

/// `gw.<gateway_id>.heads`: core NATS, fanout → one gateway, the latest
/// message sequence per recently active room ([`crate::events::Heads`]).
pub fn gateway_heads(gw: &GatewayId) -> String {
    format!("gw.{gw}.heads")
}

/// `presence.in.<gateway_id>`: core NATS, a gateway's connect, disconnect and
/// heartbeat reports to the presence service.
pub fn presence_in(gw: &GatewayId) -> String {
    format!("presence.in.{gw}")
}
/// Every gateway's presence reports (the presence service's queue subscription).
pub const PRESENCE_IN_ALL: &str = "presence.in.*";

/// `presence.user.<user_id>`: core NATS, a user's online/offline changes.
pub fn presence_user(user: &UserId) -> String {
    format!("presence.user.{user}")
}
/// Every user's presence changes.
pub const PRESENCE_USER_ALL: &str = "presence.user.*";

/// KV bucket of revoked sign-in sessions: key = the session id (`sid`),
/// value a [`crate::events::Revoked`]; written by auth, watched by gateways,
/// which close that session's connections and refuse its tokens. Entries
/// live as long as an access token can (they expire with `max_age`).
pub const REVOKED_BUCKET: &str = "chat_revoked";

/// KV bucket: key `<user_id>.<gateway_id>` exists while that gateway holds
/// at least one connection of that user (value `{"since": ms, "n": report
/// number}`); entries do not expire by themselves: they go with their
/// gateway's lease.
pub const PRESENCE_BUCKET: &str = "chat_presence";
/// KV bucket of gateway leases: key `<gateway_id>`, renewed by the gateway's
/// heartbeats, expiring after the presence TTL with a marker; an expired
/// lease takes the gateway's entries in [`PRESENCE_BUCKET`] with it.
pub const PRESENCE_LEASES_BUCKET: &str = "chat_presence_gateways";
/// Durable consumer (on the leases bucket's stream) that turns an expired
/// lease into its users' offline changes, shared by all presence instances.
pub const PRESENCE_LEASES_DURABLE: &str = "presence-leases";

/// Key of one (user, gateway) pair in [`PRESENCE_BUCKET`].
pub fn presence_key(user: &UserId, gw: &GatewayId) -> String {
    format!("{user}.{gw}")
}

/// Splits a presence key into its user and gateway.
pub fn parse_presence_key(key: &str) -> Option<(UserId, GatewayId)> {
    let (u, g) = key.split_once('.')?;
    Some((UserId::parse(u).ok()?, GatewayId::parse(g).ok()?))
}

/// Queue groups: all instances of one service share a subscription.
pub mod queue {
    pub const HISTORY: &str = "history";
    pub const PRESENCE: &str = "presence";
    pub const FANOUT: &str = "fanout";
    pub const AUTH: &str = "auth";
}

/// Request/reply subjects `svc.<service>.<verb>` (payloads in [`crate::svc`]).
pub mod svc {
    /// Create a room; the creator becomes its first member.
    pub const HISTORY_ROOM_CREATE: &str = "svc.history.room.create";
    /// Add a member to a room.
    pub const HISTORY_ROOM_JOIN: &str = "svc.history.room.join";
    /// Remove a member from a room.
    pub const HISTORY_ROOM_LEAVE: &str = "svc.history.room.leave";
    /// One room's metadata.
    pub const HISTORY_ROOM_GET: &str = "svc.history.room.get";
    /// Members of a room.
    pub const HISTORY_ROOM_MEMBERS: &str = "svc.history.room.members";
    /// Rooms of a user.
    pub const HISTORY_USER_ROOMS: &str = "svc.history.user.rooms";
    /// A page of a room's history by room sequence.
    pub const HISTORY_PAGE: &str = "svc.history.page";
    /// A stored message by sender and client message id.
    pub const HISTORY_MESSAGE_FIND: &str = "svc.history.message.find";
    /// Every `svc.history.*` subject (the history service's queue subscription).
    pub const HISTORY_ALL: &str = "svc.history.>";
    /// Current presence of a list of users.
    pub const PRESENCE_QUERY: &str = "svc.presence.query";
    /// The online co-members of a user (fanout holds members and presence).
    pub const FANOUT_PRESENCE_SNAPSHOT: &str = "svc.fanout.presence.snapshot";
}

/// Header names.
pub mod headers {
    /// JetStream publish de-duplication id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Optimistic concurrency: expected last stream sequence on the scope subject.
    pub const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
    /// Optimistic concurrency scope (may contain wildcards; nats-server ≥ 2.11).
    pub const EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str =
        "Nats-Expected-Last-Subject-Sequence-Subject";
    /// Room sequence of a room event.
    pub const ROOM_SEQ: &str = "Chat-Seq";
    /// Payload schema version.
    pub const SCHEMA: &str = "Chat-Schema";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_subjects_round_trip() {
        let room = RoomId::parse("r1").unwrap_or_else(|e| panic!("{e}"));
        let s = room_subject(&room, EventKind::Member);
        assert_eq!(s, "chat.room.r1.member");
        assert_eq!(
            parse_room_subject(&s),
            Some((room.clone(), EventKind::Member))
        );
        assert_eq!(room_filter(&room), "chat.room.r1.>");
        assert_eq!(parse_room_subject("chat.room.r1.bogus"), None);
        assert_eq!(parse_room_subject("chat.rooms.r1.msg"), None);
        assert_eq!(
            parse_room_subject("chat.room.r1.msg.7"),
            Some((room.clone(), EventKind::Msg))
        );
        assert_eq!(parse_room_subject("chat.room.r1.msg.x"), None);
        assert_eq!(parse_room_subject("chat.room.r1.msg.7.8"), None);
        assert_eq!(
            stored_room_filter(&room, EventKind::Msg),
            "chat.room.r1.msg.*"
        );
    }

    #[test]
    fn partition_names() {
        let t = room_partition_transform(16);
        assert_eq!(
            t,
            "chat.room.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(16,1)}}"
        );
        assert_eq!(parse_room_partition_transform(&t), Some(16));
        assert_eq!(parse_room_partition_transform("chat.room.>"), None);
        assert_eq!(
            parse_room_partition_transform(&room_partition_transform(MAX_ROOM_PARTITIONS + 1)),
            None
        );
        assert_eq!(partition_filter(3, None), "chat.room.*.*.3");
        assert_eq!(
            partition_filter(0, Some(EventKind::Msg)),
            "chat.room.*.msg.0"
        );
        assert_eq!(partition_durable(FANOUT_DURABLE, 12), "fanout-p12");
    }

    #[test]
    fn presence_keys_round_trip() {
        let u = UserId::parse("u1").unwrap_or_else(|e| panic!("{e}"));
        let g = GatewayId::parse("g-7").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_presence_key(&presence_key(&u, &g)), Some((u, g)));
        assert_eq!(parse_presence_key("nodot"), None);
    }
}
