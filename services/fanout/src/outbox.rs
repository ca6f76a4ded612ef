//! The deliveries of a run of room events, coalesced: one NATS message per
//! subject for the whole run (a JSON array of deliveries in stream order, or
//! a single delivery when there is one), published before the run is acked.
//! A busy partition's run of twenty events to one gateway costs one message
//! instead of twenty, for fanout, nats-server and the gateway alike; an
//! event on a quiet partition is a run of one, published at once.

use chat_core::events::Delivery;

use crate::{Fanout, PublishError};

/// A coalesced message is published once its deliveries' frames reach this
/// many bytes, well below NATS's default 1 MiB payload limit.
pub(crate) const MAX_BYTES: usize = 256 * 1024;

/// Deliveries waiting for the end of the run, per subject in first-use order.
#[derive(Default)]
pub(crate) struct Outbox {
    subjects: Vec<(String, Vec<Delivery>)>,
    bytes: usize,
}

impl Outbox {
    pub(crate) fn push(&mut self, subject: String, delivery: Delivery) {
        self.bytes += delivery.frame.len() + 32 * delivery.users.len();
        match self.subjects.iter_mut().find(|(s, _)| *s == subject) {
            Some((_, list)) => list.push(delivery),
            None => self.subjects.push((subject, vec![delivery])),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Enough is waiting that it should go out before the run grows.
    pub(crate) fn full(&self) -> bool {
        self.bytes >= MAX_BYTES
    }

    /// Publishes one message per subject. On a failure the subjects not
    /// published yet stay, to be published again (a repeat of one that went
    /// out is dropped by the gateways, which know each room's sequence).
    pub(crate) async fn publish(&mut self, fanout: &Fanout) -> Result<(), PublishError> {
        while let Some((subject, list)) = self.subjects.first() {
            let body = if let [one] = list.as_slice() {
                serde_json::to_vec(one)
            } else {
                serde_json::to_vec(list)
            };
            let body = body.map_err(|e| PublishError {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
            fanout.publish_raw(subject.clone(), body).await?;
            metrics::counter!("chat_fanout_delivery_messages_total").increment(1);
            self.subjects.remove(0);
        }
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::events::DeliveryKind;

    fn delivery(frame: &str) -> Delivery {
        Delivery {
            v: chat_core::SCHEMA_VERSION,
            kind: DeliveryKind::Msg,
            users: vec![chat_core::UserId::parse("u1").unwrap_or_else(|e| panic!("{e}"))],
            frame: frame.into(),
            room: None,
            seq: None,
            membership: None,
            to_room: false,
        }
    }

    #[test]
    fn deliveries_are_grouped_per_subject_in_order_and_fill_up_by_bytes() {
        let mut out = Outbox::default();
        out.push("gw.a.deliver".into(), delivery("1"));
        out.push("rooms.deliver".into(), delivery("2"));
        out.push("gw.a.deliver".into(), delivery("3"));
        let frames: Vec<(&str, Vec<&str>)> = out
            .subjects
            .iter()
            .map(|(s, l)| (s.as_str(), l.iter().map(|d| d.frame.as_str()).collect()))
            .collect();
        assert_eq!(
            frames,
            vec![
                ("gw.a.deliver", vec!["1", "3"]),
                ("rooms.deliver", vec!["2"])
            ]
        );
        assert!(!out.full());
        out.push("gw.a.deliver".into(), delivery(&"x".repeat(MAX_BYTES)));
        assert!(out.full());
    }
}
