//! Fanout with the real history service (embedded store) on a real
//! nats-server: rooms and memberships made through `svc.history.*`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use chat_core::events::{Delivery, EventBody, MemberOp};
use chat_core::names;
use chat_core::svc::{Membership, MembershipReply, Reply, RoomCreate};
use chat_core::wire::ServerFrame;
use chat_core::{ClientMsgId, GatewayId, SCHEMA_VERSION, UserId};
use chat_platform::Shutdown;
use chat_platform::config::MapSource;
use chat_stream::{RoomLog, StreamSettings, setup};
use chat_testkit::{NatsServer, within};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

const WAIT: Duration = Duration::from_secs(15);

fn u(s: &str) -> UserId {
    UserId::parse(s).expect("valid user id")
}
fn g(s: &str) -> GatewayId {
    GatewayId::parse(s).expect("valid gateway id")
}

async fn call<Q: Serialize, R: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &'static str,
    req: &Q,
) -> R {
    let body = serde_json::to_vec(req).expect("encode");
    let msg = within(WAIT, subject, async {
        loop {
            // History may not be subscribed yet: retry until it answers.
            match tokio::time::timeout(
                Duration::from_millis(500),
                client.request(subject, body.clone().into()),
            )
            .await
            {
                Ok(Ok(m)) => return m,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let reply: Reply<R> = serde_json::from_slice(&msg.payload).expect("reply json");
    reply.into_result().expect("history accepted the request")
}

#[tokio::test]
async fn events_of_a_room_made_through_history_reach_its_online_members() {
    chat_platform::telemetry::init_for_tests();
    let nats = NatsServer::start().await.expect("nats-server");
    let client = nats.admin_client().await.expect("connect");
    let js = jetstream::new(client.clone());
    let presence = setup::presence_bucket(&js, &StreamSettings::default())
        .await
        .expect("presence bucket");
    for (user, gw) in [("alice", "g1"), ("bob", "g2")] {
        presence
            .put(names::presence_key(&u(user), &g(gw)), "{}".into())
            .await
            .expect("presence put");
    }
    let mut deliveries = futures::stream::SelectAll::new();
    for gw in ["g1", "g2"] {
        deliveries.push(
            client
                .subscribe(names::gateway_deliver(&g(gw)))
                .await
                .expect("subscribe"),
        );
    }

    let shutdown = Shutdown::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let history_src = MapSource::new()
        .with("CHAT_NATS_URL", nats.url())
        .with_all(chat_testkit::service_env(chat_testkit::Role::History))
        .with(
            "CHAT_HISTORY_DB",
            dir.path().join("h.db").display().to_string(),
        );
    let history_cfg = chat_history::Config::from_source(&history_src).expect("history config");
    let history = tokio::spawn(chat_history::run(
        history_cfg,
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        shutdown.clone(),
    ));
    let fanout_src = MapSource::new()
        .with("CHAT_NATS_URL", nats.url())
        .with_all(chat_testkit::service_env(chat_testkit::Role::Fanout));
    let fanout_cfg = chat_fanout::Config::from_source(&fanout_src).expect("fanout config");
    let fanout = tokio::spawn(chat_fanout::run(
        fanout_cfg,
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        shutdown.clone(),
    ));

    let created: MembershipReply = call(
        &client,
        names::svc::HISTORY_ROOM_CREATE,
        &RoomCreate {
            v: SCHEMA_VERSION,
            by: u("alice"),
            name: "general".into(),
        },
    )
    .await;
    let room = created.room.id.clone();
    let joined: MembershipReply = call(
        &client,
        names::svc::HISTORY_ROOM_JOIN,
        &Membership {
            v: SCHEMA_VERSION,
            room: room.clone(),
            user: u("bob"),
        },
    )
    .await;
    let join_seq = joined.seq.expect("join appended an event");
    let stream = setup::room_stream(&js, &StreamSettings::default())
        .await
        .expect("room stream");
    let msg = RoomLog::new(js.clone(), stream)
        .append(
            &room,
            &u("alice"),
            EventBody::Msg {
                cmid: ClientMsgId::generate(),
                text: "hi bob".into(),
            },
            None,
        )
        .await
        .expect("append")
        .event;

    // Collect until both gateways have the message.
    let mut by_seq: BTreeMap<u64, Vec<(String, Delivery)>> = BTreeMap::new();
    while by_seq.get(&msg.seq).map_or(0, Vec::len) < 2 {
        let m = within(WAIT, "deliveries", deliveries.next())
            .await
            .expect("subscriptions open");
        for d in Delivery::decode_all(&m.payload).expect("deliveries") {
            // Presence deliveries (sent on join) carry no room sequence.
            let Some(seq) = d.seq else { continue };
            by_seq
                .entry(seq)
                .or_default()
                .push((m.subject.to_string(), d));
        }
    }

    let join = &by_seq[&join_seq];
    let bob_join = join
        .iter()
        // Membership events share the sequence of the message before them:
        // pick bob's own join among them.
        .find(|(s, d)| {
            *s == names::gateway_deliver(&g("g2"))
                && d.membership.as_ref().is_some_and(|m| m.user == u("bob"))
        })
        .map(|(_, d)| d)
        .expect("bob receives his own join");
    let change = bob_join.membership.clone().expect("membership set");
    assert_eq!((change.user, change.op), (u("bob"), MemberOp::Join));
    let frame = serde_json::to_string(&ServerFrame::Event(msg.clone())).expect("frame");
    let mut targets: Vec<_> = by_seq[&msg.seq]
        .iter()
        .map(|(s, d)| {
            assert_eq!(d.frame, frame);
            (s.clone(), d.users.clone())
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (names::gateway_deliver(&g("g1")), vec![u("alice")]),
            (names::gateway_deliver(&g("g2")), vec![u("bob")]),
        ]
    );

    shutdown.cancel();
    within(WAIT, "fanout to stop", fanout)
        .await
        .expect("join")
        .expect("fanout Ok");
    within(WAIT, "history to stop", history)
        .await
        .expect("join")
        .expect("history Ok");
}
