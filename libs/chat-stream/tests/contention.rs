//! Many processes appending to one room at once (each with its own
//! connection and `RoomLog`, like gateways) on a 3-node R3 cluster: every
//! append succeeds and the room holds 1..=n exactly once. On R3 the stream
//! leader reports some conflicts as error 10164 rather than 10071; both
//! must be retried as conflicts, not returned as failures.

use std::collections::BTreeSet;

use async_nats::jetstream;
use chat_core::events::EventBody;
use chat_core::{ClientMsgId, RoomId, UserId};
use chat_stream::{RoomLog, StreamSettings, setup};
use chat_testkit::NatsCluster;

const WRITERS: usize = 8;
const PER_WRITER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_an_r3_stream_all_succeed_with_a_gap_free_sequence() {
    let cluster = NatsCluster::start().await.expect("3-node cluster");
    let room = RoomId::parse("hot").expect("room");
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Spread the writers over the nodes, as gateways would be.
        let url = cluster.nodes[w % 3].url();
        let (room, settings) = (room.clone(), settings.clone());
        tasks.push(tokio::spawn(async move {
            let js = jetstream::new(
                chat_testkit::connect_as(&url, chat_testkit::Role::Admin)
                    .await
                    .expect("connect"),
            );
            let stream = setup::room_stream(&js, &settings).await.expect("stream");
            let log = RoomLog::new(js, stream);
            // A new R3 stream answers direct gets once its replicas are up.
            chat_testkit::eventually(
                std::time::Duration::from_secs(30),
                "the stream answers",
                || async { log.last_seq(&room).await.ok() },
            )
            .await;
            let user = UserId::parse(format!("w{w}")).expect("user");
            let mut seqs = Vec::new();
            for i in 0..PER_WRITER {
                let cmid = ClientMsgId::parse(format!("m{i}")).expect("cmid");
                let body = EventBody::Msg {
                    cmid,
                    text: format!("{w}/{i}"),
                };
                let a = log
                    .append(&room, &user, body, Some(&format!("hot.w{w}.m{i}")))
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} message {i}: {e}"));
                seqs.push(a.event.seq);
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for seq in t.await.expect("writer task") {
            assert!(all.insert(seq), "sequence {seq} given twice");
        }
    }
    let n = (WRITERS * PER_WRITER) as u64;
    assert_eq!(all, (1..=n).collect::<BTreeSet<_>>(), "1..={n}, no gap");
}
