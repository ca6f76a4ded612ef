//! The whole message path through real WebSockets, a real nats-server and
//! all five services.

use std::time::Duration;

use chat_e2e::{ChatProcess, System, create_room, history, join_room, login, send};
use chat_testkit::{NatsServer, WsClient, eventually};
use serde_json::json;

#[tokio::test]
async fn two_users_chat_in_order_see_presence_and_read_history() {
    let sys = System::start().await.expect("system");
    let (mut alice, a) = sys.client("alice").await.expect("alice");
    let room = create_room(&mut alice, "general").await.expect("room");

    let (mut bob, b) = sys.client("bob").await.expect("bob");
    let joined = join_room(&mut bob, &room).await.expect("join");
    assert_eq!(joined["type"], "room.joined", "{joined}");

    // Alice sees Bob join (a member event).
    let ev = alice
        .recv_where(|v| {
            v["type"] == "event" && v["kind"] == "member" && v["user"] == b.user_id.as_str()
        })
        .await
        .expect("member event");
    assert_eq!(ev["op"], "join");
    // Joining tells each side who is online.
    let p = alice
        .recv_where(|v| v["type"] == "presence" && v["user"] == b.user_id.as_str())
        .await
        .expect("bob's presence reaches alice when he joins");
    assert_eq!(p["status"], "online");
    let p = bob
        .recv_where(|v| v["type"] == "presence" && v["user"] == a.user_id.as_str())
        .await
        .expect("alice's presence reaches bob when he joins");
    assert_eq!(p["status"], "online");

    let mut seqs = Vec::new();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let ack = send(&mut alice, &room, &format!("m{i}"), text)
            .await
            .expect("ack");
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["duplicate"], false);
        seqs.push(ack["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, vec![1, 2, 3]);

    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = bob
            .recv_where(|v| v["type"] == "event" && v["kind"] == "msg")
            .await
            .expect("bob receives the messages");
        assert_eq!(ev["from"], a.user_id.as_str());
        got.push((
            ev["seq"].as_u64().expect("seq"),
            ev["text"].as_str().expect("text").to_string(),
        ));
    }
    assert_eq!(
        got,
        vec![
            (1, "one".to_string()),
            (2, "two".to_string()),
            (3, "three".to_string())
        ]
    );

    // Bob's presence reaches Alice, as they share a room: he goes offline
    // when his connection closes and online when he comes back.
    drop(bob);
    let p = alice
        .recv_where(|v| {
            v["type"] == "presence" && v["user"] == b.user_id.as_str() && v["status"] == "offline"
        })
        .await
        .expect("bob's offline presence reaches alice");
    assert_eq!(p["status"], "offline");
    let (bob, welcome) = WsClient::connect_as(&sys.ws_url(), &b.token)
        .await
        .expect("bob again");
    assert!(
        welcome["rooms"]
            .as_array()
            .is_some_and(|r| r.iter().any(|h| h["id"] == json!(room))),
        "{welcome}"
    );
    let p = alice
        .recv_where(|v| {
            v["type"] == "presence" && v["user"] == b.user_id.as_str() && v["status"] == "online"
        })
        .await
        .expect("bob's online presence reaches alice");
    assert_eq!(p["status"], "online");

    // History is written asynchronously: wait (with a deadline) until it has all three.
    let page = eventually(
        Duration::from_secs(10),
        "history has the three messages",
        || {
            let url = sys.ws_url();
            let token = b.token.clone();
            let room = room.clone();
            async move {
                let (mut c, _) = WsClient::connect_as(&url, &token).await.ok()?;
                let page = history(&mut c, &room, json!({})).await.ok()?;
                (page["events"].as_array()?.len() == 3).then_some(page)
            }
        },
    )
    .await;
    let texts: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, vec!["one", "two", "three"]);
    assert_eq!(page["more"], false);

    drop(alice);
    drop(bob);
    sys.stop().await.expect("graceful stop");
}

#[tokio::test]
async fn history_survives_sigkill_and_the_sequence_continues() {
    let nats = NatsServer::start().await.expect("nats");
    let data = tempfile::tempdir().expect("data dir");
    let mut chat = ChatProcess::start(&nats.url(), data.path())
        .await
        .expect("chat binary");

    let a = login(&chat.http_url(), "alice").await.expect("login");
    let (mut alice, _) = WsClient::connect_as(&chat.ws_url(), &a.token)
        .await
        .expect("ws");
    let room = create_room(&mut alice, "durable").await.expect("room");
    for (i, t) in ["one", "two", "three"].iter().enumerate() {
        let ack = send(&mut alice, &room, &format!("c{i}"), t)
            .await
            .expect("ack");
        assert_eq!(ack["seq"], json!(i as u64 + 1), "{ack}");
    }
    // Wait until history has stored them before the kill, so the check
    // after restart is about durability of the store, not timing.
    eventually(Duration::from_secs(10), "history stored 3 messages", || {
        let alice_tok = a.token.clone();
        let url = chat.ws_url();
        let room = room.clone();
        async move {
            let (mut c, _) = WsClient::connect_as(&url, &alice_tok).await.ok()?;
            let p = history(&mut c, &room, json!({})).await.ok()?;
            (p["events"]
                .as_array()?
                .iter()
                .filter(|e| e["kind"] == "msg")
                .count()
                == 3)
                .then_some(())
        }
    })
    .await;
    drop(alice);

    chat.restart().await.expect("restart after SIGKILL");

    // Same user (same signing key and user store), same room, same history.
    let a2 = login(&chat.http_url(), "alice").await.expect("login again");
    assert_eq!(a2.user_id, a.user_id);
    let (mut alice, welcome) = WsClient::connect_as(&chat.ws_url(), &a2.token)
        .await
        .expect("ws");
    assert!(
        welcome["rooms"]
            .as_array()
            .is_some_and(|r| r.iter().any(|h| h["id"] == json!(room))),
        "room membership survives: {welcome}"
    );
    let p = history(&mut alice, &room, json!({}))
        .await
        .expect("history");
    let texts: Vec<&str> = p["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, vec!["one", "two", "three"]);

    let ack = send(&mut alice, &room, "c3", "four").await.expect("ack");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        ack["seq"], 4,
        "the fourth message continues the room sequence"
    );
}

/// `welcome` is always a session's first frame, even when the room is busy
/// while the client connects (a delivery queued between registering the
/// session and queuing its `welcome` once came first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_comes_first_while_the_room_is_busy() {
    // Senders send as fast as acks come: not what the rate limit is about.
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_RATE_PER_SEC", "100000"),
        ("CHAT_GATEWAY_RATE_BURST", "100000"),
    ])
    .await
    .expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let room = create_room(&mut alice, "busy").await.expect("room");
    let bob = sys.login("bob").await.expect("bob");
    {
        let (mut b, _) = WsClient::connect_as(&sys.ws_url(), &bob.token)
            .await
            .expect("bob connects");
        join_room(&mut b, &room).await.expect("join");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = vec![alice];
    for s in 1..4 {
        let (mut c, _) = sys.client(&format!("sender{s}")).await.expect("sender");
        join_room(&mut c, &room).await.expect("join");
        clients.push(c);
    }
    let mut senders = Vec::new();
    for (s, mut c) in clients.into_iter().enumerate() {
        let (stop, room) = (stop.clone(), room.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ack = send(&mut c, &room, &format!("m{s}-{sent}"), "busy")
                    .await
                    .expect("ack");
                assert_eq!(ack["type"], "ack", "{ack}");
                sent += 1;
            }
            sent
        }));
    }
    let mut connecting = Vec::new();
    for t in 0..8 {
        let (url, token) = (sys.ws_url(), bob.token.clone());
        connecting.push(tokio::spawn(async move {
            for i in 0..40 {
                if let Err(e) = WsClient::connect_as(&url, &token).await {
                    return Err(format!("task {t}, connection {i}: {e}"));
                }
            }
            Ok(())
        }));
    }
    for c in connecting {
        let r = c.await.expect("connect task");
        assert!(r.is_ok(), "{r:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        assert!(s.await.expect("sender") > 0, "the room was not busy");
    }
}
