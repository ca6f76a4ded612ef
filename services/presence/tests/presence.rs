//! The presence service against a real nats-server: entries, online/offline
//! changes, heartbeats (leases, healing, parts), expiry of a silent
//! gateway's lease, queries and shutdown.

mod common;

use std::time::Duration;

use chat_core::SCHEMA_VERSION;
use chat_core::events::{PresenceOp, PresenceReport, PresenceStatus};
use chat_core::names;
use chat_core::svc::{PresenceQueryReply, Reply};
use chat_testkit::eventually;
use common::{WAIT, gw, query, spawn_app, user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_connect_writes_an_entry_and_announces_the_user_online() {
    let mut app = spawn_app(30_000).await;
    app.report("g1", PresenceOp::Connect, &["alice"]).await;

    let change = app.next_change().await;
    assert_eq!(change.user, user("alice"));
    assert_eq!(change.status, PresenceStatus::Online);
    let entry = app
        .store()
        .await
        .get(names::presence_key(&user("alice"), &gw("g1")))
        .await
        .expect("kv get")
        .expect("entry exists");
    let value: serde_json::Value = serde_json::from_slice(&entry).expect("json value");
    assert!(value["since"].as_u64().is_some_and(|ms| ms > 0), "{value}");
    app.stop().await;
}

#[tokio::test]
async fn only_the_first_gateway_announces_online_and_only_the_last_announces_offline() {
    let mut app = spawn_app(30_000).await;
    app.report("g1", PresenceOp::Connect, &["alice"]).await;
    assert_eq!(
        app.next_change().await.status,
        PresenceStatus::Online,
        "first gateway"
    );

    // Reports are applied in order, so zed's change coming next proves the
    // reports before it published nothing.
    app.report("g2", PresenceOp::Connect, &["alice"]).await;
    app.report("g1", PresenceOp::Disconnect, &["alice"]).await;
    app.report("g1", PresenceOp::Connect, &["zed"]).await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("zed"), PresenceStatus::Online)
    );
    let store = app.store().await;
    let key1 = names::presence_key(&user("alice"), &gw("g1"));
    assert!(
        store.get(&key1).await.expect("kv get").is_none(),
        "g1 entry deleted"
    );

    app.report("g2", PresenceOp::Disconnect, &["alice"]).await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("alice"), PresenceStatus::Offline)
    );
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_an_entry_alive_past_the_ttl_and_silence_expires_it() {
    let mut app = spawn_app(1000).await;
    // A heartbeat alone (no connect seen) brings the user online.
    app.report("g1", PresenceOp::Heartbeat, &["bob"]).await;
    let change = app.next_change().await;
    assert_eq!(
        (change.user.clone(), change.status),
        (user("bob"), PresenceStatus::Online)
    );

    // Heartbeat every 250 ms for 2.5 TTLs: the entry never lapses. (The
    // sleeps pace the heartbeat under test; nothing waits on them.)
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        app.report("g1", PresenceOp::Heartbeat, &["bob"]).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let online = query(&app.client, &[user("bob")]).await.expect("query");
    assert_eq!(online, vec![user("bob")]);
    let store = app.store().await;
    let key = names::presence_key(&user("bob"), &gw("g1"));
    assert!(
        store.get(&key).await.expect("kv get").is_some(),
        "entry alive"
    );

    // Silence: the entry expires and bob goes offline — the first change
    // since Online, so none was published while heartbeats flowed.
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("bob"), PresenceStatus::Offline)
    );
    assert!(
        store.get(&key).await.expect("kv get").is_none(),
        "entry expired"
    );
    let online = query(&app.client, &[user("bob")]).await.expect("query");
    assert!(online.is_empty(), "{online:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_crashed_gateways_users_go_offline_but_users_elsewhere_stay_online() {
    let mut app = spawn_app(1000).await;
    app.report("g1", PresenceOp::Connect, &["carol"]).await;
    app.report("g2", PresenceOp::Connect, &["dave"]).await;
    app.report("g1", PresenceOp::Connect, &["dave"]).await;
    let mut online = Vec::new();
    for _ in 0..2 {
        let c = app.next_change().await;
        assert_eq!(c.status, PresenceStatus::Online);
        online.push(c.user);
    }
    online.sort();
    assert_eq!(online, vec![user("carol"), user("dave")]);

    // g2 keeps heartbeating dave; g1 goes silent.
    let client = app.client.clone();
    let hb = tokio::spawn(async move {
        let body = serde_json::to_vec(&PresenceReport {
            v: SCHEMA_VERSION,
            gw: gw("g2"),
            op: PresenceOp::Heartbeat,
            users: vec![user("dave")],
            n: 0,
            part: None,
        })
        .expect("encode");
        loop {
            let sent = client
                .publish(names::presence_in(&gw("g2")), body.clone().into())
                .await;
            if sent.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let change = app.next_change().await;
    assert_eq!(
        (change.user, change.status),
        (user("carol"), PresenceStatus::Offline)
    );
    let store = app.store().await;
    eventually(WAIT, "dave's g1 entry to expire", || {
        let store = store.clone();
        async move {
            let key = names::presence_key(&user("dave"), &gw("g1"));
            store.get(&key).await.ok().flatten().is_none().then_some(())
        }
    })
    .await;
    let online = query(&app.client, &[user("carol"), user("dave")])
        .await
        .expect("query");
    assert_eq!(online, vec![user("dave")], "dave is still on g2");
    hb.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_query_returns_the_online_subset_of_the_asked_users() {
    let mut app = spawn_app(30_000).await;
    app.report("g1", PresenceOp::Connect, &["erin", "frank"])
        .await;
    app.next_change().await;
    app.next_change().await;
    let online = query(&app.client, &[user("erin"), user("gina"), user("frank")])
        .await
        .expect("query");
    assert_eq!(online, vec![user("erin"), user("frank")]);

    let reply = app
        .client
        .request(names::svc::PRESENCE_QUERY, "not json".into())
        .await
        .expect("reply");
    let reply: Reply<PresenceQueryReply> =
        serde_json::from_slice(&reply.payload).expect("reply json");
    assert!(matches!(reply, Reply::Error(e) if e.code == chat_core::svc::ErrorCode::Malformed));
    app.stop().await;
}

#[tokio::test]
async fn ops_endpoints_report_ready_and_shutdown_returns() {
    let app = spawn_app(30_000).await;
    let mut conn = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    app.stop().await;
}

#[tokio::test]
async fn a_clean_disconnect_is_announced_offline_once_not_again_when_its_lease_expires() {
    let mut app = spawn_app(1000).await;
    app.report("g1", PresenceOp::Connect, &["carol"]).await;
    assert_eq!(app.next_change().await.status, PresenceStatus::Online);
    app.report("g1", PresenceOp::Disconnect, &["carol"]).await;
    assert_eq!(app.next_change().await.status, PresenceStatus::Offline);
    // g1 sends nothing more: its lease expires, and takes nobody with it.
    let leases = app.leases().await;
    eventually(WAIT, "g1's lease to expire into a marker", || {
        let leases = leases.clone();
        async move {
            let entry = leases.entry("g1").await.ok().flatten()?;
            (entry.operation == async_nats::jetstream::kv::Operation::Purge).then_some(())
        }
    })
    .await;
    app.report("g2", PresenceOp::Connect, &["dave"]).await;
    let next = app.next_change().await;
    assert_eq!(
        (next.user, next.status),
        (user("dave"), PresenceStatus::Online),
        "nothing about carol in between"
    );
    let next = app.next_change().await;
    assert_eq!(
        (next.user, next.status),
        (user("dave"), PresenceStatus::Offline),
        "g2's lease expired: dave's one offline"
    );
    app.stop().await;
}
