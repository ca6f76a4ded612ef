//! Heartbeats against a real nats-server: leases, healing of lost reports
//! by report number, parts, an idle gateway's cost, and the bucket upgrade.

mod common;

use std::time::Duration;

use chat_core::events::{PresenceOp, PresenceStatus};
use chat_core::names;
use chat_testkit::NatsServer;
use common::{gw, query, spawn_app, spawn_app_on, user};

#[tokio::test]
async fn a_heartbeat_removes_entries_older_than_it_that_it_does_not_list() {
    let mut app = spawn_app(30_000).await;
    app.numbered("g1", PresenceOp::Connect, &["alice"], 10, None)
        .await;
    assert_eq!(app.next_change().await.status, PresenceStatus::Online);
    // alice's disconnect was lost: the next heartbeat (taken after her
    // connect) does not list her.
    app.numbered("g1", PresenceOp::Heartbeat, &[], 20, Some([0, 1]))
        .await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("alice"), PresenceStatus::Offline)
    );
    let key = names::presence_key(&user("alice"), &gw("g1"));
    assert!(app.store().await.get(&key).await.expect("get").is_none());

    // bob connected after a heartbeat was taken that arrives later: his
    // entry is newer than it and stays.
    app.numbered("g1", PresenceOp::Connect, &["bob"], 30, None)
        .await;
    assert_eq!(app.next_change().await.user, user("bob"));
    app.numbered("g1", PresenceOp::Heartbeat, &[], 25, Some([0, 1]))
        .await;
    app.numbered("g1", PresenceOp::Connect, &["zed"], 31, None)
        .await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("zed"), PresenceStatus::Online),
        "nothing about bob in between"
    );
    // A heartbeat that lists someone presence never heard of brings them
    // online (a lost connect).
    app.numbered(
        "g1",
        PresenceOp::Heartbeat,
        &["bob", "zed", "yan"],
        40,
        Some([0, 1]),
    )
    .await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("yan"), PresenceStatus::Online)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_heartbeat_part_touches_only_the_users_of_its_part() {
    let mut app = spawn_app(30_000).await;
    // Two users, one in each of two parts.
    let names_in = |want: u32| {
        (0..100)
            .map(|i| format!("p{i}"))
            .find(|n| chat_core::events::presence_part(&user(n), 2) == want)
            .expect("a user in that part")
    };
    let (a, b) = (names_in(0), names_in(1));
    app.numbered(
        "g1",
        PresenceOp::Connect,
        &[a.as_str(), b.as_str()],
        1,
        None,
    )
    .await;
    app.next_change().await;
    app.next_change().await;
    // Part 1 of 2 lists nobody: only b (part 1) goes.
    app.numbered("g1", PresenceOp::Heartbeat, &[], 5, Some([1, 2]))
        .await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user(&b), PresenceStatus::Offline)
    );
    let online = query(&app.client, &[user(&a), user(&b)])
        .await
        .expect("query");
    assert_eq!(online, vec![user(&a)]);
    // A part out of range is refused and changes nothing.
    app.numbered("g1", PresenceOp::Heartbeat, &[], 9, Some([2, 2]))
        .await;
    app.numbered("g1", PresenceOp::Heartbeat, &[], 9, Some([0, 0]))
        .await;
    app.report("g1", PresenceOp::Connect, &["zed"]).await;
    assert_eq!(app.next_change().await.user, user("zed"), "a is untouched");
    assert_eq!(
        query(&app.client, &[user(&a)]).await.expect("query"),
        vec![user(&a)]
    );
    app.stop().await;
}

#[tokio::test]
async fn idle_heartbeats_write_only_the_gateways_lease() {
    let mut app = spawn_app(30_000).await;
    let users: Vec<String> = (0..200).map(|i| format!("idle{i}")).collect();
    let listed: Vec<&str> = users.iter().map(String::as_str).collect();
    app.numbered("g1", PresenceOp::Connect, &listed, 1, None)
        .await;
    for _ in 0..200 {
        app.next_change().await;
    }
    let before = app.entry_writes().await;
    for n in 2..12 {
        app.numbered("g1", PresenceOp::Heartbeat, &listed, n, Some([0, 1]))
            .await;
    }
    // Applied in order: once a later connect is announced, the heartbeats
    // before it were handled.
    app.numbered("g1", PresenceOp::Connect, &["marker"], 12, None)
        .await;
    assert_eq!(app.next_change().await.user, user("marker"));
    assert_eq!(
        app.entry_writes().await,
        before + 1,
        "ten heartbeats of 200 users wrote no entry (only marker's connect did)"
    );
    let lease = app.leases().await.get("g1").await.expect("get");
    assert!(lease.is_some(), "the heartbeats renewed g1's lease");
    app.stop().await;
}

#[tokio::test]
async fn a_bucket_whose_entries_expired_is_updated_to_keep_them() {
    chat_platform::telemetry::init_for_tests();
    let nats = NatsServer::start().await.expect("nats-server starts");
    // The bucket as earlier versions made it: entries expire after the TTL.
    let js = async_nats::jetstream::new(nats.admin_client().await.expect("admin"));
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: names::PRESENCE_BUCKET.into(),
        history: 1,
        max_age: Duration::from_secs(30),
        limit_markers: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .await
    .expect("old bucket");
    let mut app = spawn_app_on(nats, 1000).await;
    let mut stream = js
        .get_stream(format!("KV_{}", names::PRESENCE_BUCKET))
        .await
        .expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.max_age, Duration::ZERO, "entries are kept");
    app.report("g1", PresenceOp::Connect, &["olga"]).await;
    assert_eq!(app.next_change().await.status, PresenceStatus::Online);
    app.stop().await;
}
