//! The room pipeline: one task per owned partition of the room stream, on
//! that partition's pinned durable consumer (ADR 0009). Within a partition
//! events are handled strictly in stream order, one by one, and acked a
//! run at a time after the run's deliveries were published (coalesced per
//! gateway); a room always falls in the same
//! partition, so its events reach the gateways in order even with several
//! fanout instances.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use chat_core::events::{EventBody, MemberOp, MembershipChange, RoomEvent};
use chat_core::wire::ServerFrame;
use chat_core::{SCHEMA_VERSION, names};
use chat_platform::Shutdown;
use chat_stream::acks::Acker;
use chat_stream::partitions;
use futures::{FutureExt, StreamExt};
use tracing::instrument;

use crate::Fanout;
use crate::members::MemberSet;
use crate::outbox::Outbox;
use crate::plan::{self, Context};

/// First retry delay after a failure; doubles per delivery attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What to do with a message after handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Delivered: ack.
    Done,
    /// Never deliverable (unparseable, unknown version): terminate.
    Poison,
    /// A dependency failed: try again after a backoff.
    Retry,
}

/// Pulls and handles one partition's room events until `stop` (the
/// partition moved to another instance, or shutdown); returns the pull
/// stream in hand, whose unhandled messages the caller hands back. Handled
/// events form a run: when nothing more is waiting (or the run is full),
/// its deliveries are published, coalesced per gateway (`outbox`), and
/// then the run is acked with one ack (`acks::Acker`).
pub async fn serve(
    fanout: Fanout,
    consumer: PullConsumer,
    batch_size: usize,
    stop: Shutdown,
) -> Option<partitions::PullStream> {
    let mut run = Run {
        outbox: Outbox::default(),
        acker: Acker::start(&consumer, batch_size, "fanout").await,
    };
    while !stop.is_cancelled() {
        let pulled = tokio::select! {
            _ = stop.cancelled() => break,
            b = partitions::pull(&consumer, batch_size) => b,
        };
        let mut messages = match pulled {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pulling room events failed");
                pause(&stop, BACKOFF_BASE).await;
                continue;
            }
        };
        loop {
            let next = match messages.next().now_or_never() {
                Some(m) => m,
                None => {
                    // Caught up: publish and settle the run before waiting.
                    if !run.flush(&fanout, &stop).await {
                        return Some(messages);
                    }
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Some(messages),
                        m = messages.next() => m,
                    }
                }
            };
            let Some(msg) = next else { break };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "room event pull status");
                    continue;
                }
            };
            if stop.is_cancelled() {
                run.settle(&fanout, msg, AckKind::Nak(None), &stop).await;
                return Some(messages);
            }
            if !run.received(&fanout, &msg, &stop).await
                || !process(&fanout, msg, &mut run, &stop).await
            {
                return Some(messages);
            }
        }
        if !run.flush(&fanout, &stop).await {
            return None;
        }
    }
    run.flush(&fanout, &stop).await;
    None
}

/// A run of handled events: their deliveries, coalesced, and their acks.
/// Deliveries always go out before any ack that settles their events.
struct Run {
    outbox: Outbox,
    acker: Acker,
}

impl Run {
    /// Publishes the run's deliveries, retrying with backoff until they are
    /// out; false if `stop` came first (the run then stays unacked, and the
    /// partition's next owner gets its events again).
    async fn publish(&mut self, fanout: &Fanout, stop: &Shutdown) -> bool {
        let mut attempt = 0u32;
        while !self.outbox.is_empty() {
            let Err(e) = self.outbox.publish(fanout).await else {
                break;
            };
            tracing::warn!(error = %e, "delivery publish failed; will retry");
            metrics::counter!("chat_fanout_retries_total").increment(1);
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        true
    }

    /// Publishes the run's deliveries, then acks its events.
    async fn flush(&mut self, fanout: &Fanout, stop: &Shutdown) -> bool {
        if !self.publish(fanout, stop).await {
            return false;
        }
        self.acker.flush().await;
        true
    }

    async fn received(&mut self, fanout: &Fanout, m: &Message, stop: &Shutdown) -> bool {
        if self.acker.acks_on_receiving(m) && !self.publish(fanout, stop).await {
            return false;
        }
        self.acker.received(m).await;
        true
    }

    async fn done(&mut self, fanout: &Fanout, m: Message, stop: &Shutdown) -> bool {
        if (self.acker.acks_on_done() || self.outbox.full()) && !self.publish(fanout, stop).await {
            return false;
        }
        self.acker.done(m).await;
        true
    }

    async fn settle(&mut self, fanout: &Fanout, m: Message, kind: AckKind, stop: &Shutdown) {
        if self.publish(fanout, stop).await {
            self.acker.settle(m, kind).await;
        }
    }
}

/// Handles one message to the end: done, term, or — when a dependency fails —
/// retry it here with backoff, keeping it in progress, so no later event
/// overtakes it (a nak would let the open pull hand out later events first).
/// Returns false when `stop` interrupted it (it is then nak'd for the
/// partition's next owner, after the run before it is published and acked).
async fn process(fanout: &Fanout, msg: Message, run: &mut Run, shutdown: &Shutdown) -> bool {
    let mut attempt = 0u32;
    loop {
        match handle(fanout, &msg, &mut run.outbox).await {
            Outcome::Done => return run.done(fanout, msg, shutdown).await,
            Outcome::Poison => {
                run.settle(fanout, msg, AckKind::Term, shutdown).await;
                return true;
            }
            Outcome::Retry => {
                // The events before it are handled: publish and settle them
                // rather than let them wait (and be redelivered) meanwhile.
                if !run.flush(fanout, shutdown).await {
                    return false;
                }
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                metrics::counter!("chat_fanout_retries_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        run.settle(fanout, msg, AckKind::Nak(None), shutdown).await;
                        return false;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                // Keep JetStream from redelivering it elsewhere meanwhile.
                run.acker.progress(&msg).await;
            }
        }
    }
}

/// Handles one room event: recipients, one encoded frame, one delivery per
/// gateway (or one room-wide delivery for a large room), into the run's
/// outbox.
#[instrument(skip_all, fields(room, seq))]
async fn handle(fanout: &Fanout, msg: &Message, outbox: &mut Outbox) -> Outcome {
    let ev: RoomEvent = match serde_json::from_slice(&msg.payload) {
        Ok(ev) => ev,
        Err(e) => {
            metrics::counter!("chat_fanout_malformed_total").increment(1);
            tracing::warn!(error = %e, subject = %msg.subject, "unparseable room event; terminated");
            return Outcome::Poison;
        }
    };
    let span = tracing::Span::current();
    span.record("room", tracing::field::display(&ev.room));
    span.record("seq", ev.seq);
    if ev.v != SCHEMA_VERSION {
        metrics::counter!("chat_fanout_malformed_total").increment(1);
        tracing::warn!(v = ev.v, "room event of unknown schema version; terminated");
        return Outcome::Poison;
    }
    let members = match fanout.members.members(&ev.room).await {
        Ok(m) => m,
        Err(e) => {
            metrics::counter!("chat_fanout_history_errors_total").increment(1);
            tracing::warn!(error = %e, "room members unavailable; will retry");
            return Outcome::Retry;
        }
    };
    let (recipients, membership) = recipients(fanout, &ev, members);
    let frame = match serde_json::to_string(&ServerFrame::Event(ev.clone())) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "room event frame not encodable; terminated");
            return Outcome::Poison;
        }
    };
    let ctx_membership = membership.clone();
    let ctx = Context::event(&ev.room, ev.seq, membership);
    // A large room: one delivery, and no per-member work here (each gateway
    // knows its sessions' rooms).
    if recipients.len() >= fanout.room_wide_min_members {
        outbox.push(
            names::ROOM_DELIVER.to_string(),
            plan::room_wide(&frame, &ctx),
        );
        metrics::counter!("chat_fanout_room_wide_deliveries_total").increment(1);
    } else {
        push_all(
            outbox,
            plan::deliveries(&fanout.view, &recipients, &frame, &ctx),
        );
    }
    metrics::counter!("chat_fanout_events_total").increment(1);
    if let EventBody::Msg { .. } = &ev.body {
        fanout.heads.record(&ev.room, ev.seq);
    }
    if let Some(change) = &ctx_membership {
        // The other instances see only their part of the stream: tell them.
        match serde_json::to_vec(change) {
            Ok(body) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(crate::INSTANCE_HEADER, &*fanout.instance);
                if let Err(e) = fanout
                    .client
                    .publish_with_headers(names::FANOUT_MEMBERSHIP, headers, body.into())
                    .await
                {
                    tracing::warn!(error = %e, "membership change not shared; other instances refresh within a minute");
                }
            }
            Err(e) => tracing::warn!(error = %e, "membership change not encodable"),
        }
    }
    if let EventBody::Member {
        user,
        op: MemberOp::Join,
    } = &ev.body
    {
        // After the join's own deliveries, in the same run.
        push_all(
            outbox,
            crate::relay::presence_on_join(fanout, &recipients, user),
        );
    }
    Outcome::Done
}

fn push_all(outbox: &mut Outbox, out: Vec<(chat_core::GatewayId, chat_core::events::Delivery)>) {
    for (gw, delivery) in out {
        outbox.push(names::gateway_deliver(&gw), delivery);
        metrics::counter!("chat_fanout_deliveries_total").increment(1);
    }
}

/// Who receives `ev`, applying membership events to the cache in stream
/// order: a joiner receives its own join, a leaver its own leave.
fn recipients(
    fanout: &Fanout,
    ev: &RoomEvent,
    members: MemberSet,
) -> (MemberSet, Option<MembershipChange>) {
    match &ev.body {
        EventBody::Msg { .. } => (members, None),
        EventBody::Member { user, op } => {
            match op {
                MemberOp::Join => fanout.members.joined(&ev.room, user),
                MemberOp::Leave => fanout.members.left(&ev.room, user),
            }
            // The members as of this event, plus the user (a leaver
            // receives its own leave).
            let mut with_user = (*members).clone();
            with_user.insert(user.clone());
            let members = Arc::new(with_user);
            let change = MembershipChange {
                room: ev.room.clone(),
                user: user.clone(),
                op: *op,
            };
            (members, Some(change))
        }
    }
}

/// Exponential backoff by retry attempt (0-based), capped.
fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_MAX)
}

async fn pause(shutdown: &Shutdown, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
