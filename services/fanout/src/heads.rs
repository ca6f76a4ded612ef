//! Heads: every few seconds, each gateway is told the latest message
//! sequence this instance delivered to it per recently active room
//! (`gw.<id>.heads`). Deliveries are core NATS: one lost in a NATS node
//! failure or partition is normally noticed by the gateway at the room's
//! next message (a gap, filled from history). A room's *last* message has no
//! next one; the heads make the gateway notice it too. Heads repeat for the
//! whole window, so a few lost heads do no harm either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_core::events::{Delivery, Head, Heads};
use chat_core::{GatewayId, RoomId, SCHEMA_VERSION, UserId, names};
use chat_platform::Shutdown;

struct Entry {
    seq: u64,
    users: Vec<UserId>,
    at: Instant,
}

/// What was delivered lately: gateway → room → latest message.
#[derive(Clone, Default)]
pub(crate) struct HeadBook {
    inner: Arc<Mutex<HashMap<GatewayId, HashMap<RoomId, Entry>>>>,
}

impl HeadBook {
    fn lock(&self) -> MutexGuard<'_, HashMap<GatewayId, HashMap<RoomId, Entry>>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Notes a delivery of a message (other deliveries carry no head).
    pub(crate) fn record(&self, gw: &GatewayId, d: &Delivery) {
        let (Some(room), Some(seq), None) = (&d.room, d.seq, &d.membership) else {
            return;
        };
        let mut book = self.lock();
        let rooms = book.entry(gw.clone()).or_default();
        match rooms.get_mut(room) {
            Some(e) if e.seq > seq => {}
            Some(e) => {
                e.seq = seq;
                e.users.clone_from(&d.users);
                e.at = Instant::now();
            }
            None => {
                rooms.insert(
                    room.clone(),
                    Entry {
                        seq,
                        users: d.users.clone(),
                        at: Instant::now(),
                    },
                );
            }
        }
    }

    /// The heads to send now, per gateway; forgets rooms idle for longer
    /// than `window`.
    pub(crate) fn due(&self, window: Duration) -> Vec<(GatewayId, Heads)> {
        let mut book = self.lock();
        book.retain(|_, rooms| {
            rooms.retain(|_, e| e.at.elapsed() < window);
            !rooms.is_empty()
        });
        book.iter()
            .map(|(gw, rooms)| {
                let heads = rooms
                    .iter()
                    .map(|(room, e)| Head {
                        room: room.clone(),
                        seq: e.seq,
                        users: e.users.clone(),
                    })
                    .collect();
                (
                    gw.clone(),
                    Heads {
                        v: SCHEMA_VERSION,
                        heads,
                    },
                )
            })
            .collect()
    }
}

/// Publishes the heads every `interval` until shutdown.
pub(crate) async fn publish_loop(
    client: async_nats::Client,
    book: HeadBook,
    interval: Duration,
    window: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (gw, heads) in book.due(window) {
            let body = match serde_json::to_vec(&heads) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "heads not encodable");
                    continue;
                }
            };
            if let Err(e) = client.publish(names::gateway_heads(&gw), body.into()).await {
                tracing::debug!(error = %e, %gw, "heads publish failed; the next round repeats them");
            }
            metrics::counter!("chat_fanout_heads_total").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(room: &str, seq: u64, users: &[&str]) -> Delivery {
        Delivery {
            v: SCHEMA_VERSION,
            users: users
                .iter()
                .map(|u| UserId::parse(*u).expect("user"))
                .collect(),
            frame: "{}".into(),
            room: Some(RoomId::parse(room).expect("room")),
            seq: Some(seq),
            membership: None,
        }
    }

    #[test]
    fn the_latest_message_per_room_and_gateway_is_kept_until_the_window_ends() {
        let book = HeadBook::default();
        let gw = GatewayId::parse("g1").expect("gw");
        book.record(&gw, &delivery("r1", 5, &["a"]));
        book.record(&gw, &delivery("r1", 7, &["a", "b"]));
        book.record(&gw, &delivery("r1", 6, &["a"]));
        book.record(&gw, &delivery("r2", 1, &["c"]));
        let mut due = book.due(Duration::from_secs(30));
        assert_eq!(due.len(), 1);
        let (g, mut heads) = due.remove(0);
        assert_eq!(g, gw);
        heads
            .heads
            .sort_by(|a, b| a.room.as_str().cmp(b.room.as_str()));
        assert_eq!(heads.heads.len(), 2);
        assert_eq!(
            heads.heads[0].seq, 7,
            "an older delivery never lowers the head"
        );
        assert_eq!(heads.heads[0].users.len(), 2);
        assert_eq!(heads.heads[1].seq, 1);
        assert!(
            book.due(Duration::ZERO).is_empty(),
            "idle rooms are forgotten"
        );
    }
}
