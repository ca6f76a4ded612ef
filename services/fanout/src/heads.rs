//! Heads: every few seconds, each gateway is told the latest message
//! sequence of every recently active room (handled by this instance) that
//! has members online there (`gw.<id>.heads`). Deliveries are core NATS: one lost in a NATS node
//! failure or partition is normally noticed by the gateway at the room's
//! next message (a gap, filled from history). A room's *last* message has no
//! next one; the heads make the gateway notice it too. Heads repeat for the
//! whole window, so a few lost heads do no harm either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_core::events::{Head, Heads};
use chat_core::{GatewayId, RoomId, SCHEMA_VERSION, names};
use chat_platform::Shutdown;

use crate::Fanout;

/// Rooms with recent messages: room → (latest message sequence, when).
#[derive(Clone, Default)]
pub(crate) struct HeadBook {
    inner: Arc<Mutex<HashMap<RoomId, (u64, Instant)>>>,
}

impl HeadBook {
    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, (u64, Instant)>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Notes that message `seq` of `room` was delivered.
    pub(crate) fn record(&self, room: &RoomId, seq: u64) {
        let mut book = self.lock();
        let e = book.entry(room.clone()).or_insert((seq, Instant::now()));
        if seq >= e.0 {
            *e = (seq, Instant::now());
        }
    }

    /// Rooms with a message within `window`, and their latest sequence;
    /// forgets the others.
    pub(crate) fn due(&self, window: Duration) -> Vec<(RoomId, u64)> {
        let mut book = self.lock();
        book.retain(|_, (_, at)| at.elapsed() < window);
        book.iter().map(|(r, (s, _))| (r.clone(), *s)).collect()
    }
}

/// Every `interval` until shutdown: for each recently active room, the
/// members online *now* (the presence view at this moment, so a member
/// who reconnected to another gateway since the last delivery is
/// included), grouped by gateway, one `Heads` message per gateway.
pub(crate) async fn publish_loop(
    fanout: Fanout,
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
        let mut per_gateway: HashMap<GatewayId, Vec<Head>> = HashMap::new();
        for (room, seq) in fanout.heads.due(window) {
            let members = match fanout.members.members(&room).await {
                Ok(m) => m.iter().cloned().collect::<Vec<_>>(),
                Err(e) => {
                    tracing::debug!(error = %e, %room, "heads: members unavailable; next round");
                    continue;
                }
            };
            for (gw, users) in fanout.view.group_by_gateway(&members) {
                per_gateway.entry(gw).or_default().push(Head {
                    room: room.clone(),
                    seq,
                    users,
                });
            }
        }
        for (gw, heads) in per_gateway {
            let body = match serde_json::to_vec(&Heads {
                v: SCHEMA_VERSION,
                heads,
            }) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "heads not encodable");
                    continue;
                }
            };
            if let Err(e) = fanout
                .client
                .publish(names::gateway_heads(&gw), body.into())
                .await
            {
                tracing::debug!(error = %e, %gw, "heads publish failed; the next round repeats them");
            }
            metrics::counter!("chat_fanout_heads_total").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).expect("room")
    }

    #[test]
    fn the_latest_message_per_room_is_kept_until_the_window_ends() {
        let book = HeadBook::default();
        book.record(&room("r1"), 5);
        book.record(&room("r1"), 7);
        book.record(&room("r1"), 6);
        book.record(&room("r2"), 1);
        let mut due = book.due(Duration::from_secs(30));
        due.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        assert_eq!(
            due,
            vec![(room("r1"), 7), (room("r2"), 1)],
            "an older message never lowers the head"
        );
        assert!(
            book.due(Duration::ZERO).is_empty(),
            "idle rooms are forgotten"
        );
    }
}
