//! Large rooms are delivered room-wide (`rooms.deliver`): fanout publishes
//! each event once and every gateway finds the recipients in its own
//! membership index. With the threshold at 2 members, on two gateways (two
//! instances of every service): the members on both gateways get the
//! room's messages, a connected non-member does not, a leaver gets its own
//! leave and nothing after it, and a joiner gets its own join and what
//! follows.

use chat_e2e::deploy::Deployment;
use chat_e2e::{create_room, join_room, login, send};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// A client of user `name` on gateway `gw`, and its user id.
async fn connect(d: &Deployment, gw: usize, name: &str) -> (WsClient, String) {
    let l = login(&d.gateways[0].http_url(), name).await.expect("login");
    let (c, _) = WsClient::connect_as(&d.gateways[gw].ws_url(), &l.token)
        .await
        .expect("connect");
    (c, l.user_id)
}

fn is_member_event(v: &Value, op: &str, user: &str) -> bool {
    v["type"] == "event" && v["kind"] == "member" && v["op"] == op && v["user"] == user
}

fn is_msg(v: &Value, room: &str, text: &str) -> bool {
    v["type"] == "event" && v["kind"] == "msg" && v["room"] == room && v["text"] == text
}

/// Sends a marker in a room of `c`'s own and reads up to it: every frame
/// queued for `c` before it is returned.
async fn frames_until_marker(c: &mut WsClient, name: &str) -> Vec<Value> {
    let own = create_room(c, &format!("{name}'s own"))
        .await
        .expect("room");
    let marker = format!("marker-{name}");
    c.send_json(&json!({"type": "send", "id": &marker, "room": &own, "text": &marker}))
        .await
        .expect("marker");
    let mut seen = Vec::new();
    loop {
        let v = c.recv().await.expect("frames up to the marker");
        if is_msg(&v, &own, &marker) {
            return seen;
        }
        seen.push(v);
    }
}

#[tokio::test]
async fn a_large_rooms_events_reach_exactly_its_connected_members_on_every_gateway() {
    let nats = chat_testkit::NatsServer::start().await.expect("nats");
    let d = Deployment::start(
        &nats.url(),
        2,
        &[("CHAT_FANOUT_ROOM_WIDE_MIN_MEMBERS", "2")],
    )
    .await
    .expect("two gateways, two of every service");
    let (mut alice, _) = connect(&d, 0, "alice").await;
    let (mut bob, bob_id) = connect(&d, 1, "bob").await;
    let (mut carol, _) = connect(&d, 0, "carol").await;
    let (mut dave, dave_id) = connect(&d, 1, "dave").await;
    // Stays a member on gateway 2, so the room keeps 2 members after bob
    // leaves.
    let (mut erin, _) = connect(&d, 1, "erin").await;

    let room = create_room(&mut alice, "big").await.expect("room");
    join_room(&mut erin, &room).await.expect("erin joins");
    join_room(&mut bob, &room).await.expect("bob joins");
    let ack = send(&mut alice, &room, "m1", "one").await.expect("send");
    assert_eq!(ack["type"], "ack", "{ack}");
    bob.recv_where(|v| is_msg(v, &room, "one"))
        .await
        .expect("bob, on the other gateway, gets it");
    alice
        .recv_where(|v| is_msg(v, &room, "one"))
        .await
        .expect("the sender gets it");

    bob.send_json(&json!({"type": "room.leave", "id": "leave", "room": &room}))
        .await
        .expect("leave");
    bob.recv_where(|v| is_member_event(v, "leave", &bob_id))
        .await
        .expect("the leaver gets its own leave");
    send(&mut alice, &room, "m2", "two").await.expect("send");
    alice
        .recv_where(|v| is_msg(v, &room, "two"))
        .await
        .expect("alice gets two");

    join_room(&mut dave, &room).await.expect("dave joins");
    dave.recv_where(|v| is_member_event(v, "join", &dave_id))
        .await
        .expect("the joiner gets its own join");
    send(&mut alice, &room, "m3", "three").await.expect("send");
    dave.recv_where(|v| is_msg(v, &room, "three"))
        .await
        .expect("the joiner gets what follows");
    // Both gateways have handled "three" (alice on one, dave on the other):
    // anything queued for carol or bob came before their markers.
    alice
        .recv_where(|v| is_msg(v, &room, "three"))
        .await
        .expect("alice gets three");
    for (c, name) in [(&mut carol, "carol"), (&mut bob, "bob")] {
        let leaked: Vec<Value> = frames_until_marker(c, name)
            .await
            .into_iter()
            .filter(|v| v["type"] == "event" && v["kind"] == "msg" && v["room"] == room.as_str())
            .collect();
        assert!(leaked.is_empty(), "{name} is no member: {leaked:?}");
    }

    let mut room_wide = 0.0;
    for f in &d.fanouts {
        room_wide += f
            .metric("chat_fanout_room_wide_deliveries_total")
            .await
            .expect("fanout metrics");
    }
    assert!(
        room_wide >= 7.0,
        "three joins, a leave and three messages went room-wide: {room_wide}"
    );
}
