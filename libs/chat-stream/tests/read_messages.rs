//! Reading a room's message range straight from the stream (what a gateway
//! does when history lags or is down): exact range, in order, interleaved
//! with other rooms, and stopping at a hole the stream no longer holds.

use async_nats::jetstream;
use chat_core::events::EventBody;
use chat_core::{ClientMsgId, RoomId, UserId, names};
use chat_stream::{RoomLog, StreamSettings, setup};
use chat_testkit::NatsServer;

fn seqs(events: &[chat_core::events::RoomEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn a_rooms_range_is_read_from_the_stream_in_order_up_to_a_hole() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    let stream = setup::room_stream(&js, &StreamSettings::default())
        .await
        .expect("stream");
    let log = RoomLog::new(js, stream.clone());
    let (a, b) = (
        RoomId::parse("a").expect("a"),
        RoomId::parse("b").expect("b"),
    );
    let user = UserId::parse("u").expect("user");
    for i in 1..=10 {
        for room in [&a, &b] {
            let body = EventBody::Msg {
                cmid: ClientMsgId::parse(format!("m{i}")).expect("cmid"),
                text: format!("{room} {i}"),
            };
            log.append(room, &user, body, None).await.expect("append");
        }
    }

    let all = log.read_messages(&a, 0, u64::MAX, 100).await.expect("read");
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    assert!(all.iter().all(|e| e.room == a), "only room a");
    let mid = log.read_messages(&a, 3, 8, 100).await.expect("read");
    assert_eq!(seqs(&mid), vec![4, 5, 6, 7], "after < seq < before");
    let few = log.read_messages(&a, 3, 100, 2).await.expect("read");
    assert_eq!(seqs(&few), vec![4, 5], "at most the limit");
    let none = log.read_messages(&a, 10, 100, 5).await.expect("read");
    assert!(none.is_empty(), "nothing after the tail");
    let empty = log
        .read_messages(&RoomId::parse("c").expect("c"), 0, 100, 5)
        .await
        .expect("read");
    assert!(empty.is_empty(), "a room without messages");

    // The stream lost room a's first five messages (retention): a read from
    // the start stops at once, the rest is still read.
    stream
        .purge()
        .filter(names::stored_room_filter(&a, names::EventKind::Msg))
        .keep(5)
        .await
        .expect("purge");
    let from_start = log.read_messages(&a, 0, 100, 100).await.expect("read");
    assert!(from_start.is_empty(), "1..5 are gone: a hole at once");
    let rest = log.read_messages(&a, 5, 100, 100).await.expect("read");
    assert_eq!(seqs(&rest), vec![6, 7, 8, 9, 10]);
}
