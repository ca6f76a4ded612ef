//! Rooms per user are bounded: `welcome` lists a page of them (with each
//! room's head) and `rooms.list` pages the rest; room creation is limited
//! per user, however many connections the user opens.

use std::collections::BTreeMap;

use chat_e2e::{System, create_room, send};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// `rooms.list` after `after`; the reply.
async fn list(c: &mut WsClient, after: Option<&str>) -> Value {
    let mut q = json!({"type": "rooms.list", "id": "list"});
    if let Some(a) = after {
        q["after"] = json!(a);
    }
    c.send_json(&q).await.expect("send");
    c.recv_where(|v| v["id"] == "list").await.expect("reply")
}

fn heads(v: &Value) -> Vec<(String, u64)> {
    v.as_array()
        .expect("a list of rooms")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_string(),
                r["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

#[tokio::test]
async fn welcome_carries_a_page_of_rooms_and_rooms_list_pages_the_rest() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_WELCOME_ROOMS", "5"),
        ("CHAT_GATEWAY_RATE_PER_SEC", "100000"),
        ("CHAT_GATEWAY_RATE_BURST", "100000"),
    ])
    .await
    .expect("system");
    let (mut a, login) = sys.client("alice").await.expect("alice");
    let mut expected = BTreeMap::new();
    for i in 0..12u64 {
        let room = create_room(&mut a, &format!("r{i}")).await.expect("room");
        for m in 0..(i % 3) {
            send(&mut a, &room, &format!("m{m}"), "x")
                .await
                .expect("ack");
        }
        expected.insert(room, i % 3);
    }
    drop(a);
    let (mut c, welcome) = WsClient::connect_as(&sys.ws_url(), &login.token)
        .await
        .expect("reconnect");
    let first = heads(&welcome["rooms"]);
    assert_eq!(first.len(), 5, "{welcome}");
    assert_eq!(welcome["more_rooms"], true);
    let mut seen = first.clone();
    let mut after = first.last().map(|(id, _)| id.clone());
    loop {
        let page = list(&mut c, after.as_deref()).await;
        let rooms = heads(&page["rooms"]);
        assert!(rooms.len() <= 5, "{page}");
        seen.extend(rooms.iter().cloned());
        after = rooms.last().map(|(id, _)| id.clone());
        if page["more"] == false {
            break;
        }
    }
    let got: BTreeMap<String, u64> = seen.into_iter().collect();
    assert_eq!(
        got, expected,
        "every room once, by id, with its last sequence"
    );
    // A page bigger than the welcome page is refused.
    c.send_json(&json!({"type": "rooms.list", "id": "big", "limit": 6}))
        .await
        .expect("send");
    let e = c.recv_where(|v| v["id"] == "big").await.expect("reply");
    assert_eq!(e["code"], "bad_request", "{e}");
}

#[tokio::test]
async fn room_creation_is_limited_per_user_across_connections() {
    let sys = System::start_with(&[("CHAT_HISTORY_ROOMS_PER_HOUR", "3")])
        .await
        .expect("system");
    let login = sys.login("alice").await.expect("alice");
    // Four connections of one account: the limit is the account's.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let (c, _) = WsClient::connect_as(&sys.ws_url(), &login.token)
            .await
            .expect("connect");
        conns.push(c);
    }
    for (i, c) in conns.iter_mut().enumerate().take(3) {
        create_room(c, &format!("r{i}"))
            .await
            .expect("within the limit");
    }
    let last = conns.last_mut().expect("fourth connection");
    last.send_json(&json!({"type": "room.create", "id": "create", "name": "one more"}))
        .await
        .expect("send");
    let e = last
        .recv_where(|v| v["id"] == "create")
        .await
        .expect("reply");
    assert_eq!(e["code"], "rate_limited", "{e}");
    let (mut bob, _) = sys.client("bob").await.expect("bob");
    create_room(&mut bob, "bob's")
        .await
        .expect("another user is not limited");
}
