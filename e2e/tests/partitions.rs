//! Partitioned consumers (ADR 0009) with processes: two instances of fanout
//! and history share the room stream's partitions, one instance leaving
//! (SIGTERM) hands its share to the other and coming back takes a share
//! again, all under load; every room's deliveries leave fanout in order
//! while both instances run, and every reader still sees every message of
//! its room once and in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_core::events::{Delivery, DeliveryKind};
use chat_e2e::deploy::{Deployment, ServiceProcess};
use chat_e2e::load::{self, Run};
use chat_testkit::NatsServer;
use futures::StreamExt;

const OPTIONS: [(&str, &str); 5] = [
    ("CHAT_GATEWAY_RATE_PER_SEC", "10000"),
    ("CHAT_GATEWAY_RATE_BURST", "10000"),
    ("CHAT_GATEWAY_RESUME_MAX", "100000"),
    ("CHAT_WORKER_HEARTBEAT_MS", "300"),
    ("CHAT_ROOM_PARTITIONS", "8"),
];
const PARTITIONS: f64 = 8.0;
const WAIT: Duration = Duration::from_secs(30);

/// Waits until the instances at `running` own every partition between
/// them, each at least one.
async fn wait_shared(instances: &[ServiceProcess], running: &[usize], what: &str) {
    chat_testkit::eventually(WAIT, what, || async {
        let mut sum = 0.0;
        for &i in running {
            let n = instances[i].metric("chat_partitions_owned").await.ok()?;
            if n < 1.0 {
                return None;
            }
            sum += n;
        }
        (sum == PARTITIONS).then_some(())
    })
    .await;
}

/// Counts message deliveries that leave fanout behind an earlier one of
/// the same room to the same gateway (what two instances handling one
/// room at once produce), as seen by one subscriber of every gateway's
/// deliveries.
fn count_reorders(nats: &NatsServer) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    let (reorders, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, s, url) = (reorders.clone(), seen.clone(), nats.url());
    tokio::spawn(async move {
        let nc = chat_testkit::connect_as(&url, chat_testkit::Role::Admin)
            .await
            .expect("admin");
        let mut sub = nc.subscribe("gw.*.deliver").await.expect("subscribe");
        let mut last: HashMap<(String, String), u64> = HashMap::new();
        while let Some(m) = sub.next().await {
            let all = Delivery::decode_all(&m.payload).expect("deliveries");
            for d in all {
                let (DeliveryKind::Msg, Some(room), Some(seq)) = (d.kind, d.room, d.seq) else {
                    continue;
                };
                s.fetch_add(1, Ordering::Relaxed);
                let prev = last
                    .entry((m.subject.to_string(), room.to_string()))
                    .or_insert(0);
                if seq < *prev {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                *prev = (*prev).max(seq);
            }
        }
    });
    (reorders, seen)
}

#[tokio::test]
async fn instances_share_partitions_hand_them_over_and_keep_every_room_in_order() {
    let nats = NatsServer::start().await.expect("nats");
    let mut d = Deployment::start(&nats.url(), 2, &OPTIONS)
        .await
        .expect("two instances of every service");
    wait_shared(&d.fanouts, &[0, 1], "both fanouts to own a share").await;
    wait_shared(&d.histories, &[0, 1], "both histories to own a share").await;
    let (reorders, seen) = count_reorders(&nats);

    let plan = load::prepare(&d.gateways[0].http_url(), &d.gateways[0].ws_url())
        .await
        .expect("rooms");
    let run = Run::start(
        plan,
        d.ws_urls(),
        load::per_sender() * 2,
        Duration::from_secs(180),
    );
    run.until_stored(0.25).await;
    let steady = (
        reorders.load(Ordering::Relaxed),
        seen.load(Ordering::Relaxed),
    );

    // One fanout and one history leave: the others take everything.
    for group in [&mut d.fanouts, &mut d.histories] {
        let status = group[0]
            .terminate(Duration::from_secs(20))
            .await
            .expect("drains within its grace period");
        assert!(status.success(), "{} exited with {status}", group[0].name);
    }
    wait_shared(
        &d.fanouts,
        &[1],
        "the remaining fanout to own every partition",
    )
    .await;
    wait_shared(
        &d.histories,
        &[1],
        "the remaining history to own every partition",
    )
    .await;
    run.until_stored(0.5).await;

    // They come back and take a share again.
    for group in [&mut d.fanouts, &mut d.histories] {
        group[0].start().await.expect("back");
    }
    wait_shared(&d.fanouts, &[0, 1], "the fanouts to share again").await;
    wait_shared(&d.histories, &[0, 1], "the histories to share again").await;

    run.finish("two fanouts and histories, one of each SIGTERMed and restarted")
        .await
        .expect("nothing lost, nothing repeated, every room in order");
    println!(
        "partition-report | deliveries {} | reordered {} ({} of {} while both ran, before any handover) |",
        seen.load(Ordering::Relaxed),
        reorders.load(Ordering::Relaxed),
        steady.0,
        steady.1
    );
    assert!(steady.1 > 0, "deliveries were seen");
    // Each room has one owner at a time: its deliveries leave in order.
    // (Handovers keep the order too, by pausing the consumer while the
    // leaving instance hands back what it holds: 0 reordered in all in 8
    // of 8 runs here; not asserted, as a stall of the old owner's socket
    // beyond the hand-back's quiet period would let one through.)
    assert_eq!(steady.0, 0, "deliveries reordered while both fanouts ran");
}
