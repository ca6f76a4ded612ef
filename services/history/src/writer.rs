//! The writer: drains one partition of the room stream (its pinned
//! durable `history-p<n>` consumer, ADR 0009) into the store, one store
//! call per batch, acking (one ack per batch, `acks::Acker`) only after the
//! write succeeded.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use chat_core::events::RoomEvent;
use chat_core::names;
use chat_platform::Shutdown;
use chat_store::HistoryStore;
use chat_stream::acks::Acker;
use chat_stream::partitions;
use futures::{FutureExt, StreamExt};
use tracing::instrument;

/// First back-off after a failed store write or pull.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most events per store transaction.
    pub batch: usize,
    /// Longest back-off between retries.
    pub retry_max: Duration,
}

/// Runs until `stop` (the partition moved, or shutdown); the batch in hand
/// is always finished (written and acked, or nak'ed) before returning the
/// pull stream, whose other messages the caller hands back.
pub async fn run(
    consumer: PullConsumer,
    store: Arc<dyn HistoryStore>,
    settings: WriterSettings,
    stop: Shutdown,
) -> Option<partitions::PullStream> {
    let mut acker = Acker::start(&consumer, settings.batch, "history").await;
    let mut backoff = RETRY_MIN;
    while !stop.is_cancelled() {
        let mut messages = match partitions::pull(&consumer, settings.batch).await {
            Ok(m) => {
                backoff = RETRY_MIN;
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "pull request failed; retrying");
                metrics::counter!("chat_history_pull_errors_total").increment(1);
                sleep_or_shutdown(backoff, &stop).await;
                backoff = (backoff * 2).min(settings.retry_max);
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return Some(messages),
                m = messages.next() => m,
            };
            let Some(first) = first else { break };
            let mut batch = Vec::with_capacity(settings.batch);
            push_message(&mut batch, first, &mut acker).await;
            // Take whatever already arrived, without waiting, so one
            // transaction covers a burst while a lone event is not delayed.
            while batch.len() < settings.batch {
                match messages.next().now_or_never() {
                    Some(Some(m)) => push_message(&mut batch, m, &mut acker).await,
                    _ => break,
                }
            }
            write_batch(store.as_ref(), batch, &mut acker, &settings, &stop).await;
        }
    }
    None
}

async fn push_message(
    batch: &mut Vec<Message>,
    m: Result<Message, async_nats::jetstream::consumer::pull::MessagesError>,
    acker: &mut Acker,
) {
    match m {
        Ok(m) => {
            acker.received(&m).await;
            batch.push(m);
        }
        // Missed heartbeats and pin changes; the pull stream goes on.
        Err(e) => tracing::debug!(error = %e, "pull stream status"),
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &Shutdown) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// Parses a stream message; the subject must agree with the payload's room
/// and kind, so a foreign publisher cannot file an event under another room.
fn parse(m: &Message) -> Result<RoomEvent, String> {
    let event: RoomEvent = serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
    if event.v != chat_core::SCHEMA_VERSION {
        return Err(format!("unsupported schema version {}", event.v));
    }
    match names::parse_room_subject(&m.subject) {
        Some((room, kind)) if room == event.room && kind == event.body.kind() => Ok(event),
        _ => Err(format!(
            "subject {} does not match event room {} / kind {:?}",
            m.subject,
            event.room,
            event.body.kind()
        )),
    }
}

/// Writes one batch and settles every message in it, in stream order. A
/// failed write is retried here, with back-off, keeping the batch in
/// progress: no later event is acked (an ack settles everything before it)
/// while these are unwritten. On `stop` the batch is nak'd for the
/// partition's next owner.
#[instrument(skip_all, fields(messages = batch.len()))]
async fn write_batch(
    store: &dyn HistoryStore,
    batch: Vec<Message>,
    acker: &mut Acker,
    settings: &WriterSettings,
    stop: &Shutdown,
) {
    let mut events = Vec::with_capacity(batch.len());
    let mut parsed = Vec::with_capacity(batch.len());
    for m in batch {
        match parse(&m) {
            Ok(ev) => {
                events.push(ev);
                parsed.push((m, None));
            }
            Err(reason) => parsed.push((m, Some(reason))),
        }
    }
    let mut backoff = RETRY_MIN;
    while !events.is_empty() {
        match store.append_events(&events).await {
            Ok(stored) => {
                let total = events.len();
                metrics::counter!("chat_history_events_stored_total").increment(stored as u64);
                metrics::counter!("chat_history_events_replayed_total")
                    .increment(total.saturating_sub(stored) as u64);
                tracing::debug!(stored, total, "batch written");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "store write failed; retrying the batch");
                metrics::counter!("chat_history_store_failures_total").increment(1);
                acker.flush().await;
                tokio::select! {
                    () = stop.cancelled() => {
                        for (m, _) in parsed {
                            acker.settle(m, AckKind::Nak(None)).await;
                        }
                        return;
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                // Keep JetStream from redelivering them meanwhile.
                for (m, _) in &parsed {
                    acker.progress(m).await;
                }
                backoff = (backoff * 2).min(settings.retry_max);
            }
        }
    }
    for (m, rejected) in parsed {
        match rejected {
            None => acker.done(m).await,
            Some(reason) => {
                // Redelivering a message that can never parse would block
                // nothing but waste work forever: terminate it.
                tracing::warn!(subject = %m.subject, %reason, "unparseable room event dropped");
                metrics::counter!("chat_history_events_rejected_total").increment(1);
                acker.settle(m, AckKind::Term).await;
            }
        }
    }
    acker.flush().await;
}
