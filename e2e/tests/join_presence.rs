//! Joining a room tells the joining session who in it is online, in one
//! place of its queue: a room with more online members than the session's
//! queue depth does not close the joiner as a slow consumer.

use std::collections::BTreeSet;

use chat_e2e::{System, create_room, join_room};
use serde_json::Value;

const ONLINE: usize = 40;

#[tokio::test]
async fn a_joiner_learns_every_online_member_even_past_its_queue_depth() {
    let sys = System::start_with(&[("CHAT_GATEWAY_QUEUE_DEPTH", "8")])
        .await
        .expect("system");
    let (mut owner, o) = sys.client("owner").await.expect("owner");
    let room = create_room(&mut owner, "crowd").await.expect("room");
    let mut online = BTreeSet::from([o.user_id.clone()]);
    let mut members = Vec::new();
    for i in 0..ONLINE - 1 {
        let (mut c, l) = sys.client(&format!("m{i}")).await.expect("member");
        join_room(&mut c, &room).await.expect("join");
        online.insert(l.user_id.clone());
        members.push(c);
    }
    let (mut joiner, _) = sys.client("late").await.expect("joiner");
    let joined = join_room(&mut joiner, &room).await.expect("join");
    assert_eq!(joined["type"], "room.joined", "{joined}");
    let mut told = BTreeSet::new();
    while told.len() < ONLINE {
        let p: Value = joiner
            .recv_where(|v| v["type"] == "presence" && v["status"] == "online")
            .await
            .expect("an online frame per member (the session stays open)");
        told.insert(p["user"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(told, online, "exactly the room's online members");
    // Still connected: a request is answered.
    let pong = {
        joiner
            .send_json(&serde_json::json!({"type": "ping", "id": "after"}))
            .await
            .expect("ping");
        joiner.recv_type("pong").await.expect("pong")
    };
    assert_eq!(pong["id"], "after");
    drop(members);
}
