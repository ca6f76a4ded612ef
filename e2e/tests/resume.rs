//! Resume: a client reconnects with its last seen sequence per room and gets
//! exactly what it missed, then live messages — no gap, no duplicate.

use chat_e2e::{System, create_room, join_room, send};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// Connects `token` with `hello.resume`; returns the client after `welcome`.
async fn resume(sys: &System, token: &str, resume: Value) -> WsClient {
    let mut c = WsClient::connect(&sys.ws_url(), None)
        .await
        .expect("connect");
    c.send_json(&json!({"type": "hello", "v": 1, "token": token, "resume": resume}))
        .await
        .expect("hello");
    let w = c.recv().await.expect("welcome");
    assert_eq!(w["type"], "welcome", "{w}");
    c
}

/// Message sequences of `room` received until (and including) `until`, and
/// every `resumed` frame seen on the way.
async fn messages_until(c: &mut WsClient, room: &str, until: u64) -> (Vec<u64>, Vec<Value>) {
    let mut seqs = Vec::new();
    let mut resumed = Vec::new();
    loop {
        let f = c
            .recv_where(|v| {
                (v["type"] == "event" && v["kind"] == "msg" && v["room"] == room)
                    || v["type"] == "resumed"
            })
            .await
            .expect("frame");
        if f["type"] == "resumed" {
            resumed.push(f);
            continue;
        }
        let seq = f["seq"].as_u64().expect("seq");
        seqs.push(seq);
        if seq >= until {
            return (seqs, resumed);
        }
    }
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed_then_live_messages() {
    let sys = System::start().await.expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let (mut bob, b) = sys.client("bob").await.expect("bob");
    let room = create_room(&mut alice, "r").await.expect("room");
    join_room(&mut bob, &room).await.expect("join");

    send(&mut alice, &room, "m1", "one").await.expect("ack");
    let (seen, _) = messages_until(&mut bob, &room, 1).await;
    assert_eq!(seen, vec![1]);
    drop(bob);

    for i in 2..=6 {
        let ack = send(&mut alice, &room, &format!("m{i}"), "while away")
            .await
            .expect("ack");
        assert_eq!(ack["seq"], i);
    }

    let mut bob = resume(&sys, &b.token, json!({ room.clone(): 1 })).await;
    let first = bob
        .recv_where(|v| v["type"] == "resumed")
        .await
        .expect("resumed");
    assert_eq!(
        (
            first["after"].as_u64(),
            first["to"].as_u64(),
            first["complete"].as_bool()
        ),
        (Some(1), Some(6), Some(true)),
        "{first}"
    );
    send(&mut alice, &room, "m7", "live").await.expect("ack");
    let (seqs, resumed) = messages_until(&mut bob, &room, 7).await;
    assert_eq!(
        seqs,
        vec![2, 3, 4, 5, 6, 7],
        "each missed message once, in order, then live"
    );
    assert!(resumed.is_empty(), "one resumed frame: {resumed:?}");
}

#[tokio::test]
async fn a_gap_larger_than_the_resume_limit_is_reported_incomplete() {
    let sys = System::start_with(&[("CHAT_GATEWAY_RESUME_MAX", "3")])
        .await
        .expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let (mut bob, b) = sys.client("bob").await.expect("bob");
    let room = create_room(&mut alice, "r").await.expect("room");
    join_room(&mut bob, &room).await.expect("join");
    drop(bob);
    for i in 1..=5 {
        send(&mut alice, &room, &format!("m{i}"), "x")
            .await
            .expect("ack");
    }

    let mut bob = resume(&sys, &b.token, json!({ room.clone(): 0 })).await;
    let r = bob.recv_type("resumed").await.expect("resumed");
    assert_eq!(
        (
            r["after"].as_u64(),
            r["to"].as_u64(),
            r["complete"].as_bool()
        ),
        (Some(0), Some(5), Some(false)),
        "{r}"
    );
    // Live messages continue after the tail; the client pages 1..=5 itself.
    send(&mut alice, &room, "m6", "live").await.expect("ack");
    let (seqs, _) = messages_until(&mut bob, &room, 6).await;
    assert_eq!(seqs, vec![6]);
}

#[tokio::test]
async fn resuming_a_room_you_are_not_in_is_refused() {
    let sys = System::start().await.expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let m = sys.login("mallory").await.expect("login");
    let room = create_room(&mut alice, "private").await.expect("room");
    let mut c = resume(&sys, &m.token, json!({ room.clone(): 0 })).await;
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "not_member", "{e}");
}

#[tokio::test]
async fn a_draining_gateway_tells_clients_where_to_resume_from() {
    let sys = System::start().await.expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let room = create_room(&mut alice, "r").await.expect("room");
    for i in 1..=3 {
        send(&mut alice, &room, &format!("m{i}"), "x")
            .await
            .expect("ack");
    }
    messages_until(&mut alice, &room, 3).await;
    let stop = tokio::spawn(sys.stop());
    let bye = alice.recv_type("reconnect").await.expect("reconnect frame");
    assert_eq!(bye["resume"], json!({ room.clone(): 3 }), "{bye}");
    assert_eq!(alice.closed().await.expect("closed").code, 1001);
    stop.await.expect("stop task").expect("stopped");
}
