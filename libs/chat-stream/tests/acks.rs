//! Batched acks on a partition consumer (`acks::Acker`): one ack settles a
//! run of handled events; a new owner first gets back, in stream order,
//! the events an earlier owner received and never acked; and a delivery
//! lost on the way is never settled by a later ack.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use chat_core::names;
use chat_stream::acks::Acker;
use chat_stream::{StreamSettings, partitions, setup};
use chat_testkit::NatsServer;
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

async fn one_partition(js: &jetstream::Context) -> (stream::Stream, PullConsumer) {
    // Far longer than a test: a redelivery can only come from a reset.
    one_partition_waiting(js, Duration::from_secs(120)).await
}

async fn one_partition_waiting(
    js: &jetstream::Context,
    ack_wait: Duration,
) -> (stream::Stream, PullConsumer) {
    let settings = StreamSettings {
        partitions: 1,
        ..StreamSettings::default()
    };
    let stream = setup::room_stream(js, &settings).await.expect("stream");
    let spec = partitions::Spec {
        service: "fanout",
        kind: None,
        ack_wait,
        max_ack_pending: 1_000,
    };
    let mut consumers = partitions::consumers(&stream, &spec, true)
        .await
        .expect("consumers");
    (stream, consumers.remove(0))
}

async fn publish(js: &jetstream::Context, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        js.publish("chat.room.r1.msg", i.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

async fn next(messages: &mut partitions::PullStream) -> jetstream::Message {
    loop {
        match tokio::time::timeout(WAIT, messages.next()).await {
            Ok(Some(Ok(m))) => return m,
            Ok(Some(Err(_status))) => continue,
            other => panic!("no message within {WAIT:?}: {other:?}"),
        }
    }
}

fn body(m: &jetstream::Message) -> u32 {
    std::str::from_utf8(&m.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload {:?}", m.payload))
}

#[tokio::test]
async fn one_ack_settles_a_run_of_handled_events() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    let (_stream, consumer) = one_partition(&js).await;
    assert_eq!(
        consumer.cached_info().config.ack_policy,
        jetstream::consumer::AckPolicy::All
    );
    publish(&js, 1..=20).await;

    let mut acker = Acker::start(&consumer, 64, "test").await;
    assert!(acker.batches() && !acker.waiting_for_others());
    let mut messages = partitions::pull(&consumer, 20).await.expect("pull");
    for want in 1..=20 {
        let m = next(&mut messages).await;
        assert_eq!(body(&m), want);
        acker.done(m).await;
    }
    let info = consumer.get_info().await.expect("info");
    assert_eq!(info.num_ack_pending, 20, "held, not acked one by one");

    settled_up_to(&consumer, &mut acker, 20).await;
}

#[tokio::test]
async fn a_new_owner_first_gets_the_earlier_owners_unacked_events_in_order() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    let (stream, consumer) = one_partition(&js).await;
    publish(&js, 1..=10).await;

    // The earlier owner handles and acks 1..=3, receives 4 and 5, and
    // vanishes without a word.
    {
        let mut acker = Acker::start(&consumer, 64, "test").await;
        let mut messages = partitions::pull(&consumer, 5).await.expect("pull");
        for want in 1..=3 {
            let m = next(&mut messages).await;
            assert_eq!(body(&m), want);
            acker.done(m).await;
        }
        acker.flush().await;
        assert_eq!(body(&next(&mut messages).await), 4);
        assert_eq!(body(&next(&mut messages).await), 5);
    }
    stream
        .unpin_consumer(&consumer.cached_info().name, names::PARTITION_GROUP)
        .await
        .expect("unpin");
    publish(&js, 11..=15).await;

    // The new owner — a fanout instance, with fanout's permissions (it may
    // reset its own durables) — gets 4.. in order, not 6.. first and 4 and
    // 5 after the ack wait; and it acks them all with one ack.
    let fanout = chat_testkit::connect_as(&nats.url(), chat_testkit::Role::Fanout)
        .await
        .expect("fanout connects");
    let consumer: PullConsumer = jetstream::new(fanout)
        .get_stream(names::ROOM_STREAM)
        .await
        .expect("stream, as fanout")
        .get_consumer(&consumer.cached_info().name)
        .await
        .expect("its durable, as fanout");
    let mut acker = Acker::start(&consumer, 64, "test").await;
    assert!(!acker.waiting_for_others());
    let mut messages = partitions::pull(&consumer, 64).await.expect("pull");
    for want in 4..=15 {
        let m = next(&mut messages).await;
        assert_eq!(body(&m), want, "stream order after the takeover");
        acker.done(m).await;
    }
    settled_up_to(&consumer, &mut acker, 15).await;
}

async fn settled_up_to(consumer: &PullConsumer, acker: &mut Acker, seq: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        acker.flush().await;
        let info = consumer.get_info().await.expect("info");
        if info.num_ack_pending == 0 && info.ack_floor.stream_sequence == seq {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_delivery_lost_on_the_way_is_not_settled_by_a_later_ack() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    let (_stream, consumer) = one_partition_waiting(&js, Duration::from_secs(1)).await;
    publish(&js, 1..=5).await;

    let mut acker = Acker::start(&consumer, 64, "test").await;
    let mut messages = partitions::pull(&consumer, 64).await.expect("pull");
    for want in 1..=5 {
        let m = next(&mut messages).await;
        assert_eq!(body(&m), want);
        // Event 3 never reaches the acker: as if lost in flight.
        if want != 3 {
            acker.received(&m).await;
            acker.done(m).await;
        }
    }
    acker.flush().await;
    assert!(acker.waiting_for_others(), "the gap was not noticed");
    let info = consumer.get_info().await.expect("info");
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (2, 3),
        "an ack settled the lost event 3"
    );

    // It comes back after the ack wait; handled, everything is settled.
    let m = next(&mut messages).await;
    assert_eq!(body(&m), 3);
    acker.received(&m).await;
    acker.done(m).await;
    settled_up_to(&consumer, &mut acker, 5).await;
    assert!(!acker.waiting_for_others());
}
