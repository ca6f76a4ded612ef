//! Batched acknowledgements: on a consumer with `AckPolicy::All` one ack
//! settles every message before it, so a run of handled messages costs one
//! ack instead of one each.
//!
//! One ack-all also settles messages this task never saw: those a previous
//! owner of the partition received and did not ack (it was killed, or
//! handed them back with a nak), and deliveries lost on the way (a NATS
//! node died with them in flight). JetStream redelivers those only after
//! the ack wait, behind later messages. So an [`Acker`] acks a run only
//! while it knows that every message pending on the consumer is one it
//! handled:
//! - at its start, if anything is pending, it resets the consumer to its
//!   ack floor, so the pending events are delivered again, in order, to it;
//! - it checks that the deliveries it receives are numbered without a gap
//!   (the consumer sequence counts every delivery); after a gap, or a
//!   failed reset, it holds its acks until the server's pending count equals
//!   the number it holds — the missing delivery came back and was handled.
//!
//! Holding costs redeliveries and duplicates at worst (at most the
//! consumer's `max_ack_pending` are held), never a loss.
//!
//! Consumers made by versions before batched acks ack explicitly; the
//! acker follows the policy the consumer actually has, so an old durable
//! keeps working with one ack per message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};

/// Least time between two asks of the server for the pending count while
/// messages of another owner may be pending.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Acknowledges the handled messages of one pull consumer.
pub struct Acker {
    consumer: PullConsumer,
    all: bool,
    /// Every message pending on the consumer is one this acker handled (or
    /// is handling): an ack-all cannot settle someone else's.
    exclusive: bool,
    /// Most handled messages left unacknowledged before one ack settles them.
    max: usize,
    /// The handled message with the highest stream sequence not yet acked.
    last: Option<(u64, Message)>,
    /// Stream sequences handled and not yet acked (ack-all only).
    held: BTreeSet<u64>,
    /// The consumer sequence the next delivery must carry (None: unknown).
    next_delivery: Option<u64>,
    next_check: Instant,
    /// Labels the `chat_stream_acks_total` counter.
    service: &'static str,
}

impl Acker {
    /// An acker for `consumer`'s messages, holding at most `max` (≥ 1)
    /// handled messages before acknowledging them. Call it before pulling:
    /// it asks the server whether anything is pending already.
    pub async fn start(consumer: &PullConsumer, max: usize, service: &'static str) -> Self {
        let all = consumer.cached_info().config.ack_policy == AckPolicy::All;
        let mut acker = Self {
            consumer: consumer.clone(),
            all,
            exclusive: false,
            max: max.max(1),
            last: None,
            held: BTreeSet::new(),
            next_delivery: None,
            next_check: Instant::now(),
            service,
        };
        if all {
            acker.exclusive = acker.pending_are_ours().await || acker.reset().await;
            if !acker.exclusive {
                metrics::counter!("chat_stream_acks_held_total", "service" => service).increment(1);
            }
        }
        acker
    }

    /// Messages of an earlier owner are pending (it was killed, or handed
    /// them back): reset the consumer to its ack floor, so they are
    /// delivered again, in stream order, to this owner (nats-server ≥ 2.14).
    /// Without it they would come back only after the ack wait, behind
    /// later events.
    async fn reset(&mut self) -> bool {
        let name = self.consumer.cached_info().name.clone();
        match self.consumer.reset(None).await {
            Ok(r) => {
                // Delivery numbers start again after a reset.
                self.next_delivery = Some(r.info.delivered.consumer_sequence + 1);
                metrics::counter!("chat_stream_consumer_resets_total", "service" => self.service)
                    .increment(1);
                tracing::info!(consumer = %name, from = r.reset_seq, "took over a partition with pending events; redelivering them in order");
                true
            }
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "consumer reset failed; acks held until the earlier owner's events come back");
                false
            }
        }
    }

    /// Whether one ack settles a run of messages (the consumer acks all).
    pub fn batches(&self) -> bool {
        self.all
    }

    /// Whether acks are being held because another owner's messages may be
    /// pending.
    pub fn waiting_for_others(&self) -> bool {
        self.all && !self.exclusive
    }

    /// Whether [`Acker::received`] of `m` will ack the run in hand (it
    /// notices a gap): a caller that must do something before any ack (e.g.
    /// publish what the run produced) does it first.
    pub fn acks_on_receiving(&self, m: &Message) -> bool {
        self.all
            && self.exclusive
            && self
                .next_delivery
                .is_some_and(|e| m.info().ok().is_some_and(|i| i.consumer_sequence != e))
    }

    /// Whether [`Acker::done`] will send an ack (explicit acks, or the run
    /// is full).
    pub fn acks_on_done(&self) -> bool {
        !self.all || self.held.len() + 1 >= self.max
    }

    /// `m` was received: call it for every message, before handling it. A
    /// delivery numbered past the one expected means one went missing (to
    /// another client, or lost in flight): the run before it is acked, and
    /// acks are held from then on until the missing one was handled.
    pub async fn received(&mut self, m: &Message) {
        if !self.all {
            return;
        }
        let Some(d) = m.info().ok().map(|i| i.consumer_sequence) else {
            return;
        };
        let expected = self.next_delivery.replace(d + 1);
        if expected.is_some_and(|e| e != d) && self.exclusive {
            tracing::warn!(service = self.service, consumer = %self.consumer.cached_info().name, expected = ?expected, got = d, "a delivery went missing; acks held until it comes back");
            self.flush().await;
            self.exclusive = false;
            self.next_check = Instant::now();
            metrics::counter!("chat_stream_delivery_gaps_total", "service" => self.service)
                .increment(1);
        }
    }

    /// `m` was handled: acknowledge it now (explicit acks), or hold it until
    /// [`Acker::flush`] or until `max` are waiting (ack-all).
    pub async fn done(&mut self, m: Message) {
        if !self.all {
            self.send(&m, AckKind::Ack).await;
            return;
        }
        let Some(seq) = m.info().ok().map(|i| i.stream_sequence) else {
            // Not a JetStream message (cannot happen on a pull consumer).
            self.send(&m, AckKind::Ack).await;
            return;
        };
        self.held.insert(seq);
        if self.last.as_ref().is_none_or(|(s, _)| seq > *s) {
            self.last = Some((seq, m));
        }
        if self.held.len() >= self.max {
            self.flush().await;
        }
    }

    /// Acknowledges every handled message held, when that cannot settle
    /// anyone else's. Call it before waiting for more, before settling a
    /// message any other way, and before giving the pull stream up.
    pub async fn flush(&mut self) {
        if self.last.is_none() {
            return;
        }
        if !self.exclusive {
            if Instant::now() < self.next_check {
                return;
            }
            self.exclusive = self.pending_are_ours().await;
            if !self.exclusive {
                metrics::counter!("chat_stream_acks_held_total", "service" => self.service)
                    .increment(1);
                return;
            }
        }
        if let Some((_, m)) = self.last.take() {
            self.send(&m, AckKind::Ack).await;
        }
        self.held.clear();
    }

    /// Settles `m` another way (term, nak). A term is an ack to the server, which with
    /// ack-all would settle everything before it: while others' messages
    /// may be pending it is held as handled instead.
    pub async fn settle(&mut self, m: Message, kind: AckKind) {
        if self.all && matches!(kind, AckKind::Term) {
            self.flush().await;
            if self.exclusive && self.last.is_none() {
                self.send(&m, kind).await;
            } else {
                self.done(m).await;
            }
            return;
        }
        self.send(&m, kind).await;
    }

    /// `m` is still being worked on: keep the server from redelivering it.
    pub async fn progress(&self, m: &Message) {
        self.send(m, AckKind::Progress).await;
    }

    /// Whether the server's pending count is the number held here (so all
    /// pending messages are ours). Only this task settles this consumer's
    /// messages, so nothing held changes while the answer is awaited; a
    /// message delivered meanwhile only makes the answer "no".
    async fn pending_are_ours(&mut self) -> bool {
        self.next_check = Instant::now() + CHECK_EVERY;
        match self.consumer.get_info().await {
            Ok(info) => {
                if self.next_delivery.is_none() && self.held.is_empty() {
                    // At the start: nothing received yet.
                    self.next_delivery = Some(info.delivered.consumer_sequence + 1);
                }
                info.num_ack_pending == self.held.len()
            }
            Err(e) => {
                tracing::debug!(error = %e, "consumer info failed; acks held");
                false
            }
        }
    }

    async fn send(&self, m: &Message, kind: AckKind) {
        if matches!(kind, AckKind::Ack) {
            metrics::counter!("chat_stream_acks_total", "service" => self.service).increment(1);
        }
        if let Err(e) = m.ack_with(kind).await {
            tracing::warn!(error = %e, subject = %m.subject, "ack failed; redelivered after the ack wait");
        }
    }
}
