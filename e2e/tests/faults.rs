//! Fault scenarios under load (CI load; see docs/reliability.md for the full
//! load): every acknowledged message is stored exactly once, and every
//! reader sees every message of its room once, in order.

use std::time::Duration;

use chat_e2e::System;
use chat_e2e::deploy::Deployment;
use chat_e2e::load::{self, Run};
use chat_testkit::{NatsCluster, NatsServer};

/// Per-connection rates high enough for the load, and resumes of a whole
/// room at full load.
const LOAD_OPTIONS: [(&str, &str); 3] = [
    ("CHAT_GATEWAY_RATE_PER_SEC", "10000"),
    ("CHAT_GATEWAY_RATE_BURST", "10000"),
    ("CHAT_GATEWAY_RESUME_MAX", "100000"),
];

/// How long a reader may take to see its whole room: 3 minutes, plus 50 ms
/// per message of the load.
fn read_deadline() -> Duration {
    Duration::from_secs(180) + Duration::from_millis(50) * load::per_sender() as u32
}

/// Index in `cluster.nodes` of the room stream's leader (nodes are named
/// n1, n2, n3 by the test kit), asked through any node but `skip`.
async fn stream_leader(cluster: &NatsCluster, skip: Option<usize>) -> Option<usize> {
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, n)| n.url())
        .collect();
    let nc = chat_testkit::connect_as(&urls.join(","), chat_testkit::Role::Admin)
        .await
        .ok()?;
    let js = async_nats::jetstream::new(nc);
    let mut stream = js.get_stream(chat_core::names::ROOM_STREAM).await.ok()?;
    let info = stream.info().await.ok()?;
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone())?;
    let n = leader.trim_start_matches('n').parse::<usize>().ok()?;
    Some(n - 1)
}

/// One NATS server, `instances` of every service as processes, and the
/// load running with its clients spread over all gateways.
async fn deployed_under_load(instances: usize) -> (NatsServer, Deployment, Run) {
    deployed_under_load_of(instances, load::per_sender()).await
}

/// Like [`deployed_under_load`] with `per_sender` messages per sender.
async fn deployed_under_load_of(
    instances: usize,
    per_sender: usize,
) -> (NatsServer, Deployment, Run) {
    let nats = NatsServer::start().await.expect("nats");
    let d = Deployment::start(&nats.url(), instances, &LOAD_OPTIONS)
        .await
        .expect("every service as processes");
    let plan = load::prepare(&d.gateways[0].http_url(), &d.gateways[0].ws_url())
        .await
        .expect("rooms");
    let run = Run::start(plan, d.ws_urls(), per_sender, read_deadline());
    (nats, d, run)
}

#[tokio::test]
async fn losing_one_nats_node_of_three_loses_no_acknowledged_message() {
    let mut cluster = NatsCluster::start().await.expect("3-node cluster");
    let mut opts = LOAD_OPTIONS.to_vec();
    opts.push(("CHAT_STREAM_REPLICAS", "3"));
    let sys = System::start_on(None, &cluster.urls(), &opts)
        .await
        .expect("system on the cluster");
    let urls = vec![sys.ws_url()];
    let plan = load::prepare(&sys.http_url(), &sys.ws_url())
        .await
        .expect("rooms");
    let run = Run::start(plan, urls, load::per_sender(), read_deadline());

    // Mid-run, SIGKILL the room stream's leader: that forces a leader
    // election while sends are in flight (the hardest single-node loss).
    run.until_stored(1.0 / 3.0).await;
    let leader = stream_leader(&cluster, None).await.expect("stream leader");
    cluster.nodes[leader].kill();
    run.until_stored(2.0 / 3.0).await;
    cluster.nodes[leader].restart().await.expect("node back");

    run.finish("3-node cluster, R3, one node SIGKILLed and restarted")
        .await
        .expect("nothing lost, nothing repeated");
    sys.stop().await.expect("graceful stop");
}

#[tokio::test]
async fn killing_one_instance_of_every_service_loses_nothing() {
    let (_nats, mut d, run) = deployed_under_load(2).await;

    run.until_stored(1.0 / 3.0).await;
    d.gateways[0].kill();
    d.fanouts[0].kill();
    d.histories[0].kill();
    d.presences[0].kill();

    let out = run
        .finish("two instances of each service, one of each SIGKILLed mid-run")
        .await
        .expect("nothing lost, nothing repeated");
    // Clients were spread over both gateways: the killed one's reader had
    // to resume on the other.
    assert!(out.reconnects >= 1, "no reader was on the killed gateway");
}

#[tokio::test]
async fn a_rolling_restart_of_both_gateways_resumes_every_client() {
    // Enough messages that the load outlasts the first gateway's restart,
    // so the second restart still finds readers connected.
    let (_nats, mut d, run) = deployed_under_load_of(2, load::per_sender() * 4).await;

    // One gateway at a time: SIGTERM (clients get `reconnect` and 1001 and
    // move to the other gateway), wait for a clean exit, start it again.
    for (i, at) in [(0, 0.25), (1, 0.5)] {
        run.until_stored(at).await;
        let status = d.gateways[i]
            .terminate(Duration::from_secs(20))
            .await
            .expect("gateway drains within its grace period");
        assert!(status.success(), "gateway {i} exited with {status}");
        d.gateways[i].start().await.expect("gateway back");
    }

    let out = run
        .finish("rolling restart of both gateways (SIGTERM, restart)")
        .await
        .expect("nothing lost, nothing repeated");
    assert!(
        out.reconnects >= 2,
        "each reader resumed at least once: {} reconnects",
        out.reconnects
    );
}

#[tokio::test]
async fn a_failing_history_store_holds_the_backlog_and_drains_it_once() {
    let (nats, d, run) = deployed_under_load(1).await;

    // Mid-run, another process takes the store's write lock and keeps it:
    // every write of history fails (after its busy timeout) until released.
    run.until_stored(0.25).await;
    let db = rusqlite::Connection::open(d.history_db()).expect("open the history db");
    db.execute_batch("BEGIN EXCLUSIVE").expect("write lock");
    let history = &d.histories[0];
    let metric =
        |name: &'static str| async move { history.metric(name).await.expect("history /metrics") };
    chat_testkit::eventually(Duration::from_secs(30), "history's writes fail", || async {
        (metric("chat_history_store_failures_total").await >= 1.0).then_some(())
    })
    .await;
    let stored_before = metric("chat_history_events_stored_total").await;
    chat_testkit::eventually(Duration::from_secs(30), "more failed retries", || async {
        (metric("chat_history_store_failures_total").await >= 3.0).then_some(())
    })
    .await;
    assert_eq!(
        metric("chat_history_events_stored_total").await,
        stored_before,
        "nothing is written while the store fails"
    );
    // The backlog is held in the stream for history, not dropped.
    let js = async_nats::jetstream::new(nats.admin_client().await.expect("nats"));
    let stream = js
        .get_stream(chat_core::names::ROOM_STREAM)
        .await
        .expect("room stream");
    let backlog = chat_testkit::partition_backlog(&stream, chat_core::names::HISTORY_DURABLE)
        .await
        .expect("history consumers");
    assert!(backlog > 0, "history's backlog is held: {backlog}");
    // A client resuming from the start meanwhile still gets every message:
    // the gateway reads what history cannot give from the stream.
    let (room, token) = (&run.plan().rooms[0].room, &run.plan().rooms[0].reader);
    let (seqs, resumed) = load::resume_once(&d.ws_urls()[0], token, room, 0)
        .await
        .expect("resume while history is down");
    assert_eq!(resumed["complete"], true, "{resumed}");
    let to = resumed["to"].as_u64().expect("to");
    assert_eq!(
        seqs,
        (1..=to).collect::<Vec<_>>(),
        "1..={to} once, in order"
    );
    db.execute_batch("COMMIT").expect("release the lock");

    let out = run
        .finish("history store failing for a while (write lock held by another process)")
        .await
        .expect("the backlog drained exactly once");
    assert_eq!(
        out.reconnects, 0,
        "live readers were disturbed: {:?}",
        out.why
    );
}

#[tokio::test]
async fn partitioning_one_nats_node_away_and_healing_loses_nothing() {
    let cluster = NatsCluster::start_partitionable()
        .await
        .expect("3-node cluster with cuttable routes");
    let mut opts = LOAD_OPTIONS.to_vec();
    opts.push(("CHAT_STREAM_REPLICAS", "3"));
    // Two of each service: their NATS connections land on different nodes,
    // so some are cut off with the partitioned node.
    let d = Deployment::start(&cluster.urls(), 2, &opts)
        .await
        .expect("two instances of every service on the cluster");
    let plan = load::prepare(&d.gateways[0].http_url(), &d.gateways[0].ws_url())
        .await
        .expect("rooms");
    let run = Run::start(plan, d.ws_urls(), load::per_sender(), read_deadline());

    // Mid-run, cut the room stream leader's routes. Its clients stay
    // connected to it (a partition, not a crash) and see JetStream fail
    // until the partition heals; the other two nodes elect a new leader.
    run.until_stored(1.0 / 3.0).await;
    let leader = stream_leader(&cluster, None).await.expect("stream leader");
    cluster.partition(leader);
    chat_testkit::eventually(
        Duration::from_secs(30),
        "the majority elects a new stream leader",
        || async {
            let l = stream_leader(&cluster, Some(leader)).await?;
            (l != leader).then_some(())
        },
    )
    .await;
    // The partition lasts a few seconds of load (the fault's length, not a
    // synchronisation).
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.heal(leader);

    run.finish("3-node cluster, R3, the stream leader partitioned away, then healed")
        .await
        .expect("nothing lost, nothing repeated");
}
