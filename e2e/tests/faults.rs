//! Fault scenarios under load (CI load; see docs/reliability.md for the full
//! load): every acknowledged message is stored exactly once, and every
//! reader sees every message of its room once, in order.

use std::time::Duration;

use chat_e2e::load::{self, Acked};
use chat_e2e::{System, create_room, join_room};
use chat_testkit::NatsCluster;

/// Rooms and senders per room.
const ROOMS: usize = 2;
const SENDERS: usize = 2;

/// Messages per sender: 100 in CI (400 in all), or `CHAT_FAULT_PER_SENDER`
/// (2500 is the full load of 10,000 messages; see docs/reliability.md).
fn per_sender() -> usize {
    std::env::var("CHAT_FAULT_PER_SENDER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}
/// R3 streams, and per-connection rates high enough for the load.
const LOAD_OPTIONS: [(&str, &str); 3] = [
    ("CHAT_STREAM_REPLICAS", "3"),
    ("CHAT_GATEWAY_RATE_PER_SEC", "10000"),
    ("CHAT_GATEWAY_RATE_BURST", "10000"),
];

/// Index in `cluster.nodes` of the room stream's leader (nodes are named
/// n1, n2, n3 by the test kit).
async fn stream_leader(cluster: &NatsCluster) -> usize {
    let nc = async_nats::connect(cluster.nodes[1].url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nc);
    let mut stream = js
        .get_stream(chat_core::names::ROOM_STREAM)
        .await
        .expect("room stream");
    let info = stream.info().await.expect("stream info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    leader
        .trim_start_matches('n')
        .parse::<usize>()
        .map(|n| n - 1)
        .unwrap_or_else(|_| panic!("unexpected node name {leader}"))
}

#[tokio::test]
async fn losing_one_nats_node_of_three_loses_no_acknowledged_message() {
    let mut cluster = NatsCluster::start().await.expect("3-node cluster");
    let sys = System::start_on(None, &cluster.urls(), &LOAD_OPTIONS)
        .await
        .expect("system on the cluster");
    let url = sys.ws_url();

    // Rooms, each with its senders and one reader as members.
    let (mut owner, _) = sys.client("owner").await.expect("owner");
    let mut plan = Vec::new();
    for r in 0..ROOMS {
        let room = create_room(&mut owner, &format!("room{r}"))
            .await
            .expect("room");
        let mut senders = Vec::new();
        for s in 0..SENDERS {
            let (mut c, login) = sys.client(&format!("s{r}x{s}")).await.expect("sender");
            join_room(&mut c, &room).await.expect("join");
            senders.push(login.token);
        }
        let (mut c, reader) = sys.client(&format!("reader{r}")).await.expect("reader");
        join_room(&mut c, &room).await.expect("join");
        plan.push((room, senders, reader.token));
    }

    let per_sender = per_sender();
    let total = (SENDERS * per_sender) as u64;
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (room, tokens, reader) in &plan {
        let (u, t, r) = (url.clone(), reader.clone(), room.clone());
        readers.push(tokio::spawn(async move {
            load::reader_until(&u, &t, &r, total, Duration::from_secs(120)).await
        }));
        for (i, token) in tokens.iter().enumerate() {
            let (u, t, r) = (url.clone(), token.clone(), room.clone());
            senders.push((
                room.clone(),
                tokio::spawn(async move {
                    load::sender(&u, &t, &r, &format!("{r}-{i}"), per_sender).await
                }),
            ));
        }
    }

    // Mid-run: SIGKILL one node, and bring it back later.
    let first = sys.login("owner").await.expect("login").token;
    let probe_room = plan[0].0.clone();
    chat_testkit::eventually(
        Duration::from_secs(60),
        "a third of the load acknowledged",
        || {
            let (u, t, r) = (url.clone(), first.clone(), probe_room.clone());
            async move {
                let stored = load::stored(&u, &t, &r).await.ok()?;
                (stored.len() as u64 >= total / 3).then_some(())
            }
        },
    )
    .await;
    // The room stream's leader: losing it forces a leader election while
    // sends are in flight (the hardest single-node loss).
    let leader = stream_leader(&cluster).await;
    cluster.nodes[leader].kill();

    let mut acked_by_room: Vec<(String, Acked)> = Vec::new();
    let mut attempts = 0;
    for (room, h) in senders {
        let sent = h
            .await
            .expect("sender task")
            .expect("every message acknowledged");
        attempts += sent.attempts;
        let acked = sent.acked;
        match acked_by_room.iter_mut().find(|(r, _)| *r == room) {
            Some((_, a)) => a.extend(acked),
            None => acked_by_room.push((room, acked)),
        }
    }
    cluster.nodes[leader].restart().await.expect("node back");

    let (mut acked_n, mut stored_n, mut delivered_n) = (0, 0, 0);
    for ((room, acked), reader) in acked_by_room.iter().zip(readers) {
        let seen = reader
            .await
            .expect("reader task")
            .expect("reader saw everything");
        let stored =
            chat_testkit::eventually(Duration::from_secs(30), "history has every message", || {
                let (u, t, r) = (url.clone(), first.clone(), room.clone());
                async move {
                    let s = load::stored(&u, &t, &r).await.ok()?;
                    (s.len() as u64 >= total).then_some(s)
                }
            })
            .await;
        if let Err(e) = load::check_room(acked, &stored, &seen) {
            panic!("room {room}: {e}");
        }
        acked_n += acked.len();
        stored_n += stored.len();
        delivered_n += seen.len();
    }
    eprintln!(
        "{}",
        load::report(
            "3-node cluster, R3, one node SIGKILLed and restarted",
            attempts,
            acked_n,
            stored_n,
            delivered_n
        )
    );
    sys.stop().await.expect("graceful stop");
}
