//! A client never silently misses a message at the edges of a session: a
//! resume position beyond the room, a resume of hundreds of rooms, the
//! first moments after `welcome`; and a connecting client learns who is
//! already online.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_e2e::{System, create_room, join_briefly, join_room, send};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// Opens a session with `hello.resume`; returns it and its `welcome`.
async fn connect_resuming(url: &str, token: &str, resume: Value) -> (WsClient, Value) {
    let mut c = WsClient::connect(url, None).await.expect("connect");
    c.send_json(&json!({"type": "hello", "v": 1, "token": token, "resume": resume}))
        .await
        .expect("hello");
    let w = c.recv().await.expect("welcome");
    assert_eq!(w["type"], "welcome", "{w}");
    (c, w)
}

/// The message sequences of `room` received until `until`.
async fn seqs_until(c: &mut WsClient, room: &str, until: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last().copied().unwrap_or(0) < until {
        let ev = c
            .recv_where(|v| v["type"] == "event" && v["kind"] == "msg" && v["room"] == room)
            .await
            .unwrap_or_else(|e| panic!("{room} up to {until}, got {seqs:?}: {e}"));
        seqs.push(ev["seq"].as_u64().expect("seq"));
    }
    seqs
}

#[tokio::test]
async fn a_resume_beyond_the_rooms_last_message_is_clamped_and_loses_nothing_after() {
    let sys = System::start().await.expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let b = sys.login("bob").await.expect("bob");
    let room = create_room(&mut alice, "r").await.expect("room");
    join_briefly(&sys.ws_url(), &b.token, &room)
        .await
        .expect("bob joins");
    for i in 1..=3 {
        send(&mut alice, &room, &format!("m{i}"), "before")
            .await
            .expect("ack");
    }
    let (mut bob, _) =
        connect_resuming(&sys.ws_url(), &b.token, json!({ room.clone(): 1000 })).await;
    let resumed = bob.recv_type("resumed").await.expect("resumed");
    assert_eq!(
        (
            resumed["after"].as_u64(),
            resumed["to"].as_u64(),
            resumed["complete"].as_bool(),
            resumed["clamped"].as_bool()
        ),
        (Some(3), Some(3), Some(true), Some(true)),
        "{resumed}"
    );
    // Before the clamp, every later message was dropped as "already seen".
    for i in 4..=7 {
        let ack = send(&mut alice, &room, &format!("m{i}"), "after")
            .await
            .expect("ack");
        assert_eq!(ack["seq"], i, "{ack}");
    }
    assert_eq!(seqs_until(&mut bob, &room, 7).await, vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn resuming_300_rooms_and_naming_300_foreign_ones_is_paced_not_a_slow_consumer_close() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_RATE_PER_SEC", "100000"),
        ("CHAT_GATEWAY_RATE_BURST", "100000"),
        ("CHAT_HISTORY_ROOMS_PER_HOUR", "1000"),
    ])
    .await
    .expect("system");
    let (mut alice, a) = sys.client("alice").await.expect("alice");
    let (mut mallory, _) = sys.client("mallory").await.expect("mallory");
    let mut resume = BTreeMap::new();
    let mut mine = Vec::new();
    for i in 0..300 {
        let room = create_room(&mut alice, &format!("r{i}"))
            .await
            .expect("room");
        let ack = send(&mut alice, &room, "m1", "hello").await.expect("ack");
        assert_eq!(ack["seq"], 1, "{ack}");
        resume.insert(room.clone(), 0u64);
        mine.push(room);
        let foreign = create_room(&mut mallory, &format!("m{i}"))
            .await
            .expect("room");
        resume.insert(foreign, 0u64);
    }
    drop(alice);
    // The default queue holds 256 frames: 300 resumes and 300 refusals
    // used to overflow it before `welcome` was even written.
    let (mut c, _) = connect_resuming(&sys.ws_url(), &a.token, json!(resume)).await;
    let (mut resumed, mut refused, mut events) = (0, 0, BTreeMap::new());
    while resumed < 300 || refused < 300 {
        let f = c
            .recv()
            .await
            .unwrap_or_else(|e| panic!("after {resumed} resumed and {refused} refused: {e}"));
        match f["type"].as_str() {
            Some("resumed") => {
                assert_eq!(f["complete"], true, "{f}");
                assert_eq!(f["to"], 1, "{f}");
                resumed += 1;
            }
            Some("error") => {
                assert_eq!(f["code"], "not_member", "{f}");
                assert!(f["room"].is_string(), "the refusal names its room: {f}");
                refused += 1;
            }
            Some("event") if f["kind"] == "msg" => {
                *events
                    .entry(f["room"].as_str().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
            _ => {}
        }
    }
    assert_eq!(events.len(), 300, "every room's message came once");
    assert!(events.values().all(|n| *n == 1), "{events:?}");
    c.send_json(&json!({"type": "ping", "id": "p"}))
        .await
        .expect("ping");
    c.recv_type("pong").await.expect("the session lives on");
}

#[tokio::test]
async fn a_message_sent_before_fanout_sees_a_new_connection_still_reaches_it() {
    let nats = chat_testkit::NatsServer::start().await.expect("nats");
    let d = chat_e2e::deploy::Deployment::start(&nats.url(), 1, &[])
        .await
        .expect("every service as a process");
    let (http, ws) = (d.gateways[0].http_url(), d.gateways[0].ws_url());
    let a = chat_e2e::login(&http, "alice").await.expect("alice");
    let b = chat_e2e::login(&http, "bob").await.expect("bob");
    let (mut alice, _) = WsClient::connect_as(&ws, &a.token).await.expect("alice");
    let room = create_room(&mut alice, "r").await.expect("room");
    join_briefly(&ws, &b.token, &room).await.expect("bob joins");
    send(&mut alice, &room, "m1", "one").await.expect("ack");
    // Presence stalls: bob's connection stays invisible to fanout, so the
    // next message is delivered to nobody on bob's gateway.
    d.presences[0].pause().expect("SIGSTOP presence");
    let (mut bob, welcome) = WsClient::connect_as(&ws, &b.token)
        .await
        .expect("bob again");
    let head = welcome["rooms"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == room.as_str()))
        .and_then(|r| r["seq"].as_u64());
    assert_eq!(head, Some(1), "welcome says where the room is: {welcome}");
    let ack = send(&mut alice, &room, "m2", "while invisible")
        .await
        .expect("ack");
    assert_eq!(ack["seq"], 2);
    d.presences[0].resume().expect("SIGCONT presence");
    // Once fanout sees bob, its heads show his gateway that he is behind
    // the position welcome gave him; the gateway fills it in.
    let ev = bob
        .recv_where(|v| v["type"] == "event" && v["kind"] == "msg")
        .await
        .expect("the message sent in the first moments arrives");
    assert_eq!(ev["seq"], 2, "{ev}");
    send(&mut alice, &room, "m3", "later").await.expect("ack");
    assert_eq!(seqs_until(&mut bob, &room, 3).await, vec![3]);
}

#[tokio::test]
async fn a_connecting_session_is_told_which_co_members_are_online() {
    let sys = System::start().await.expect("system");
    let (mut alice, a) = sys.client("alice").await.expect("alice");
    let (mut carol, c) = sys.client("carol").await.expect("carol");
    let b = sys.login("bob").await.expect("bob");
    let _stranger = sys
        .client("stranger")
        .await
        .expect("a user in no shared room");
    let room = create_room(&mut alice, "r").await.expect("room");
    join_room(&mut carol, &room).await.expect("join");
    join_briefly(&sys.ws_url(), &b.token, &room)
        .await
        .expect("bob joins");
    // Alice and carol were online before bob (re)connects: nothing changes
    // for them, so no presence change would ever tell him.
    let (mut bob, _) = WsClient::connect_as(&sys.ws_url(), &b.token)
        .await
        .expect("bob again");
    let snap = bob.recv_type("presence.snapshot").await.expect("snapshot");
    let mut online: Vec<String> = snap["online"]
        .as_array()
        .expect("online list")
        .iter()
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    online.sort();
    let mut expected = vec![a.user_id.clone(), c.user_id.clone()];
    expected.sort();
    assert_eq!(online, expected, "{snap}");
    assert_eq!(snap["more"], false);
}

#[tokio::test]
async fn one_account_gets_a_bounded_number_of_connections_per_gateway() {
    let sys = System::start_with(&[("CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER", "3")])
        .await
        .expect("system");
    let a = sys.login("alice").await.expect("alice");
    let mut open = Vec::new();
    for _ in 0..3 {
        let (c, _) = WsClient::connect_as(&sys.ws_url(), &a.token)
            .await
            .expect("within the cap");
        open.push(c);
    }
    let mut fourth = WsClient::connect(&sys.ws_url(), None).await.expect("tcp");
    fourth
        .send_json(&json!({"type": "hello", "v": 1, "token": a.token}))
        .await
        .expect("hello");
    let e = fourth.recv_type("error").await.expect("refusal");
    assert_eq!(e["code"], "limit_reached", "{e}");
    assert_eq!(fourth.closed().await.expect("closed").code, 4008);
    // Someone else is not affected, and a freed place is usable again.
    sys.client("bob").await.expect("another account");
    drop(open.pop());
    chat_testkit::eventually(Duration::from_secs(10), "a freed place", || {
        let (url, token) = (sys.ws_url(), a.token.clone());
        async move { WsClient::connect_as(&url, &token).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn the_presence_snapshot_is_cut_at_its_limit_and_says_so() {
    let sys = System::start_with(&[("CHAT_FANOUT_PRESENCE_SNAPSHOT_MAX", "2")])
        .await
        .expect("system");
    let (mut owner, _) = sys.client("owner").await.expect("owner");
    let room = create_room(&mut owner, "r").await.expect("room");
    let mut online = vec![owner];
    for name in ["m1", "m2"] {
        let (mut c, _) = sys.client(name).await.expect("member");
        join_room(&mut c, &room).await.expect("join");
        online.push(c);
    }
    let b = sys.login("bob").await.expect("bob");
    join_briefly(&sys.ws_url(), &b.token, &room)
        .await
        .expect("bob joins");
    // Three co-members are online; the snapshot lists two and says more.
    let (mut bob, _) = WsClient::connect_as(&sys.ws_url(), &b.token)
        .await
        .expect("bob again");
    let snap = bob.recv_type("presence.snapshot").await.expect("snapshot");
    assert_eq!(snap["online"].as_array().map(Vec::len), Some(2), "{snap}");
    assert_eq!(snap["more"], true, "{snap}");
}
