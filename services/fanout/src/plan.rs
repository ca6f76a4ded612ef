//! Turning one frame and its recipients into one delivery per gateway, or
//! (large rooms) into one room-wide delivery for every gateway.

use std::collections::BTreeSet;

use chat_core::events::{Delivery, DeliveryKind, MembershipChange};
use chat_core::{GatewayId, RoomId, SCHEMA_VERSION, UserId};
use chat_stream::PresenceView;

/// What a frame is and where a room event sits, copied onto each of its
/// deliveries.
#[derive(Debug, Clone)]
pub struct Context {
    pub kind: DeliveryKind,
    pub room: Option<RoomId>,
    pub seq: Option<u64>,
    pub membership: Option<MembershipChange>,
}

impl Context {
    /// A presence frame: no room, no sequence.
    pub fn presence() -> Self {
        Self {
            kind: DeliveryKind::Presence,
            room: None,
            seq: None,
            membership: None,
        }
    }

    /// The delivery of `frame` to `users` in this context.
    fn delivery(&self, frame: &str, users: Vec<UserId>, to_room: bool) -> Delivery {
        Delivery {
            v: SCHEMA_VERSION,
            kind: self.kind,
            users,
            frame: frame.to_string(),
            room: self.room.clone(),
            seq: self.seq,
            membership: self.membership.clone(),
            to_room,
        }
    }

    /// A room event: a message, or (with `membership`) a membership change.
    pub fn event(room: &RoomId, seq: u64, membership: Option<MembershipChange>) -> Self {
        Self {
            kind: if membership.is_some() {
                DeliveryKind::Member
            } else {
                DeliveryKind::Msg
            },
            room: Some(room.clone()),
            seq: Some(seq),
            membership,
        }
    }
}

/// One delivery per gateway holding at least one online recipient; offline
/// recipients are skipped (they catch up from history). Gateways come out
/// sorted, users within a delivery sorted, so the result is deterministic.
pub fn deliveries(
    view: &PresenceView,
    recipients: &BTreeSet<UserId>,
    frame: &str,
    ctx: &Context,
) -> Vec<(GatewayId, Delivery)> {
    let users: Vec<UserId> = recipients.iter().cloned().collect();
    let mut groups: Vec<_> = view.group_by_gateway(&users).into_iter().collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .map(|(gw, mut users)| {
            users.sort();
            (gw, ctx.delivery(frame, users, false))
        })
        .collect()
}

/// One room-wide delivery of a room event: every gateway delivers it to the
/// room's members connected there, plus the user of a membership change
/// (a leaver is no member any more but receives its own leave).
pub fn room_wide(frame: &str, ctx: &Context) -> Delivery {
    let users = ctx
        .membership
        .as_ref()
        .map(|c| vec![c.user.clone()])
        .unwrap_or_default();
    ctx.delivery(frame, users, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::kv::Operation;

    fn u(s: &str) -> UserId {
        UserId::parse(s).expect("valid id")
    }

    #[test]
    fn recipients_are_grouped_by_gateway_and_offline_ones_skipped() {
        let view = PresenceView::new();
        view.apply("bob.g1", 1, Operation::Put);
        view.apply("alice.g1", 2, Operation::Put);
        view.apply("alice.g2", 3, Operation::Put);
        let recipients: BTreeSet<_> = [u("alice"), u("bob"), u("carol")].into();
        let out = deliveries(&view, &recipients, "{}", &Context::presence());
        let got: Vec<(String, Vec<UserId>)> = out
            .into_iter()
            .map(|(g, d)| (g.to_string(), d.users))
            .collect();
        assert_eq!(
            got,
            vec![
                ("g1".to_string(), vec![u("alice"), u("bob")]),
                ("g2".to_string(), vec![u("alice")]),
            ]
        );
    }
}
