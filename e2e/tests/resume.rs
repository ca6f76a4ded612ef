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

/// Publishes a delivery for `user` straight to a gateway, as fanout would.
async fn deliver_raw(
    nc: &async_nats::Client,
    gw: &str,
    user: &str,
    room: &str,
    seq: u64,
    text: &str,
) {
    let frame = json!({"type": "event", "v": 1, "room": room, "seq": seq, "ts": 1,
        "from": "someone", "kind": "msg", "cmid": format!("raw{seq}"), "text": text});
    let delivery = json!({"v": 1, "kind": "msg", "users": [user], "frame": frame.to_string(), "room": room, "seq": seq});
    nc.publish(format!("gw.{gw}.deliver"), delivery.to_string().into())
        .await
        .expect("publish delivery");
    nc.flush().await.expect("flush");
}

#[tokio::test]
async fn the_gateway_drops_repeated_deliveries_and_fills_gaps_from_history() {
    let sys = System::start().await.expect("system");
    let nc = sys
        .nats
        .as_ref()
        .expect("own nats")
        .admin_client()
        .await
        .expect("nats client");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let b = sys.login("bob").await.expect("login");
    let (mut bob, welcome) = WsClient::connect_as(&sys.ws_url(), &b.token)
        .await
        .expect("bob");
    let gw = welcome["gateway"].as_str().expect("gateway id").to_string();
    let room = create_room(&mut alice, "r").await.expect("room");
    join_room(&mut bob, &room).await.expect("join");
    for i in 1..=3 {
        send(&mut alice, &room, &format!("m{i}"), &format!("real {i}"))
            .await
            .expect("ack");
    }
    messages_until(&mut bob, &room, 3).await;

    // A repeat of seq 2 (as a redelivery would be) never reaches bob.
    deliver_raw(&nc, &gw, &b.user_id, &room, 2, "repeat of 2").await;
    // Seq 5 arrives before seq 4 (as from two fanout instances): the gateway
    // holds it until 4 is in history, writes 4, then 5.
    deliver_raw(&nc, &gw, &b.user_id, &room, 5, "early 5").await;
    send(&mut alice, &room, "m4", "real 4").await.expect("ack");
    send(&mut alice, &room, "m5", "real 5").await.expect("ack");
    send(&mut alice, &room, "m6", "real 6").await.expect("ack");

    let mut got = Vec::new();
    while got.last().map(|(s, _)| *s) != Some(6) {
        let ev = bob
            .recv_where(|v| v["type"] == "event" && v["kind"] == "msg")
            .await
            .expect("event");
        got.push((
            ev["seq"].as_u64().expect("seq"),
            ev["text"].as_str().unwrap_or_default().to_string(),
        ));
    }
    assert_eq!(
        got,
        vec![
            (4, "real 4".to_string()),
            (5, "early 5".to_string()),
            (6, "real 6".to_string()),
        ],
        "no repeat, the gap filled in order, the late real 5 dropped as a repeat"
    );
}

#[tokio::test]
async fn heads_let_a_gateway_fill_a_room_tail_whose_delivery_never_came() {
    let nats = chat_testkit::NatsServer::start().await.expect("nats");
    let nc = nats.admin_client().await.expect("nats client");
    let mut d = chat_e2e::deploy::Deployment::start(&nats.url(), 1, &[])
        .await
        .expect("every service as a process");
    let (http, ws) = (d.gateways[0].http_url(), d.gateways[0].ws_url());
    let a = chat_e2e::login(&http, "alice").await.expect("alice");
    let b = chat_e2e::login(&http, "bob").await.expect("bob");
    let (mut alice, _) = WsClient::connect_as(&ws, &a.token).await.expect("alice");
    let (mut bob, welcome) = WsClient::connect_as(&ws, &b.token).await.expect("bob");
    let gw = welcome["gateway"].as_str().expect("gateway id").to_string();
    let room = create_room(&mut alice, "r").await.expect("room");
    join_room(&mut bob, &room).await.expect("join");

    // Fanout tells bob's gateway what it delivered there lately.
    let mut heads = nc
        .subscribe(format!("gw.{gw}.heads"))
        .await
        .expect("subscribe heads");
    send(&mut alice, &room, "m1", "one").await.expect("ack");
    messages_until(&mut bob, &room, 1).await;
    let head = chat_testkit::within(
        std::time::Duration::from_secs(10),
        "a heads message",
        async {
            loop {
                let m = futures::StreamExt::next(&mut heads).await.expect("heads");
                let v: Value = serde_json::from_slice(&m.payload).expect("heads json");
                if let Some(h) = v["heads"].as_array().and_then(|hs| {
                    hs.iter()
                        .find(|h| h["room"] == room.as_str() && h["seq"] == 1)
                        .cloned()
                }) {
                    return h;
                }
            }
        },
    )
    .await;
    let users = head["users"].as_array().expect("users");
    assert!(
        users.contains(&json!(b.user_id)),
        "bob is a recipient: {head}"
    );

    // Without fanout, message 2 is stored but never delivered. Heads, sent
    // in rounds as a fanout that delivered it would, make the gateway fill
    // it once bob has stayed behind them for a moment.
    d.fanouts[0].kill();
    send(&mut alice, &room, "m2", "two").await.expect("ack");
    let head = json!({"v": 1, "heads": [{"room": room, "seq": 2, "users": [b.user_id]}]});
    let (nc2, subject) = (nc.clone(), format!("gw.{gw}.heads"));
    let rounds = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tick.tick().await;
            nc2.publish(subject.clone(), head.to_string().into())
                .await
                .expect("publish heads");
        }
    });
    let (seqs, _) = messages_until(&mut bob, &room, 2).await;
    rounds.abort();
    assert_eq!(seqs, vec![2], "the tail filled from history");
}
