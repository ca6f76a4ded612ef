//! The room stream's partition layout (ADR 0009): an event published on
//! `chat.room.<room>.<kind>` is stored under one partition the server
//! chose, always the same for a room; a publisher cannot pick a partition
//! itself; and a stream without the partition transform is refused.

use async_nats::jetstream::{self, stream};
use chat_core::names;
use chat_stream::{StreamSettings, setup};
use chat_testkit::NatsServer;

#[tokio::test]
async fn events_land_in_one_server_chosen_partition_per_room_and_publishers_cannot_choose() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    let settings = StreamSettings {
        partitions: 4,
        ..StreamSettings::default()
    };
    let stream = setup::room_stream(&js, &settings).await.expect("stream");
    assert_eq!(setup::room_partitions(&stream), Ok(4));

    let mut seen = std::collections::BTreeSet::new();
    for room in ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"] {
        let mut partition = None;
        for _ in 0..2 {
            js.publish(format!("chat.room.{room}.msg"), "{}".into())
                .await
                .expect("publish")
                .await
                .expect("stored");
            let m = stream
                .direct_get_last_for_subject(format!("chat.room.{room}.msg.*"))
                .await
                .expect("stored under a partition");
            let p: u16 = m
                .subject
                .strip_prefix(&format!("chat.room.{room}.msg."))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("stored as {}", m.subject));
            assert!(p < 4, "partition {p} of 4");
            assert_eq!(*partition.get_or_insert(p), p, "one partition per room");
        }
        seen.insert(partition);
    }
    assert!(seen.len() > 1, "rooms spread over partitions: {seen:?}");

    // A five-token subject (a partition picked by the publisher) is not
    // captured by the stream at all.
    let forged = js
        .publish("chat.room.r1.msg.3", "{}".into())
        .await
        .expect("sent")
        .await;
    assert!(forged.is_err(), "a chosen partition was stored: {forged:?}");
}

#[tokio::test]
async fn a_room_stream_without_the_partition_transform_is_refused() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    js.create_stream(stream::Config {
        name: names::ROOM_STREAM.into(),
        subjects: vec!["chat.room.>".into()],
        ..Default::default()
    })
    .await
    .expect("an old-style stream");
    let err = setup::room_stream(&js, &StreamSettings::default())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("no partition transform"), "{err}");
}
