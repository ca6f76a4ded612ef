//! A process that appends to ever more rooms keeps the tails of a bounded
//! number of them, and numbering stays right for a room whose tail was
//! dropped.

use async_nats::jetstream;
use chat_core::events::EventBody;
use chat_core::{ClientMsgId, RoomId, UserId};
use chat_stream::{RoomLog, StreamSettings, setup};
use chat_testkit::NatsServer;

#[tokio::test]
async fn the_tail_cache_is_bounded_and_a_dropped_tail_is_read_again() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(nats.admin_client().await.expect("connect"));
    let stream = setup::room_stream(&js, &StreamSettings::default())
        .await
        .expect("stream");
    let log = RoomLog::new(js, stream).with_tail_cache(3);
    let user = UserId::parse("u").expect("user");
    let msg = |i: usize| EventBody::Msg {
        cmid: ClientMsgId::parse(format!("m{i}")).expect("cmid"),
        text: "x".into(),
    };
    let rooms: Vec<RoomId> = (0..20)
        .map(|i| RoomId::parse(format!("room{i}")).expect("room"))
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        let a = log.append(room, &user, msg(i), None).await.expect("append");
        assert_eq!(a.event.seq, 1);
        assert!(
            log.cached_tails() <= 3,
            "{} tails cached",
            log.cached_tails()
        );
    }
    // The first room's tail was dropped long ago: its next message is
    // still numbered from the stream.
    let again = log
        .append(&rooms[0], &user, msg(99), None)
        .await
        .expect("append");
    assert_eq!(again.event.seq, 2);
}
