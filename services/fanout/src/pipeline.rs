//! The room pipeline: one task per owned partition of the room stream, on
//! that partition's pinned durable consumer (ADR 0009). Within a partition
//! events are handled strictly in stream order, one by one, and acked
//! (a run at a time) after their deliveries were published; a room always falls in the same
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
/// events are acknowledged when nothing more is waiting, or every
/// `batch_size` events (one ack for the run, `acks::Acker`).
pub async fn serve(
    fanout: Fanout,
    consumer: PullConsumer,
    batch_size: usize,
    stop: Shutdown,
) -> Option<partitions::PullStream> {
    let mut acker = Acker::start(&consumer, batch_size, "fanout").await;
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
                    // Caught up: settle what was handled before waiting.
                    acker.flush().await;
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
                acker.settle(msg, AckKind::Nak(None)).await;
                return Some(messages);
            }
            acker.received(&msg).await;
            if !process(&fanout, msg, &mut acker, &stop).await {
                return Some(messages);
            }
        }
        acker.flush().await;
    }
    acker.flush().await;
    None
}

/// Handles one message to the end: ack, term, or — when a dependency fails —
/// retry it here with backoff, keeping it in progress, so no later event
/// overtakes it (a nak would let the open pull hand out later events first).
/// Returns false when `stop` interrupted it (it is then nak'd for the
/// partition's next owner, after the events handled before it are acked).
async fn process(fanout: &Fanout, msg: Message, acker: &mut Acker, shutdown: &Shutdown) -> bool {
    let mut attempt = 0u32;
    loop {
        match handle(fanout, &msg).await {
            Outcome::Done => {
                acker.done(msg).await;
                return true;
            }
            Outcome::Poison => {
                acker.settle(msg, AckKind::Term).await;
                return true;
            }
            Outcome::Retry => {
                // The events before it are delivered: do not let them wait
                // (and be redelivered) while this one is retried.
                acker.flush().await;
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                metrics::counter!("chat_fanout_retries_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        acker.settle(msg, AckKind::Nak(None)).await;
                        return false;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                // Keep JetStream from redelivering it elsewhere meanwhile.
                acker.progress(&msg).await;
            }
        }
    }
}

/// Handles one room event: recipients, one encoded frame, one delivery per
/// gateway (or one room-wide delivery for a large room).
#[instrument(skip_all, fields(room, seq))]
async fn handle(fanout: &Fanout, msg: &Message) -> Outcome {
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
    // A large room: one publish, and no per-member work here (each gateway
    // knows its sessions' rooms).
    let published = if recipients.len() >= fanout.room_wide_min_members {
        fanout
            .publish_room_wide(plan::room_wide(&frame, &ctx))
            .await
    } else {
        let out = plan::deliveries(&fanout.view, &recipients, &frame, &ctx);
        fanout.publish(out).await
    };
    if let Err(e) = published {
        tracing::warn!(error = %e, "delivery publish failed; will retry");
        return Outcome::Retry;
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
        // Best effort: the event itself is delivered, so a failure here is
        // logged, not retried (a retry would deliver the event twice).
        let out = crate::relay::presence_on_join(fanout, &recipients, user);
        if let Err(e) = fanout.publish(out).await {
            tracing::warn!(error = %e, "presence on join not delivered");
        }
    }
    Outcome::Done
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
