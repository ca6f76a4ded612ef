//! Hostile client frames: every field of every request with the wrong
//! type, out of range, or past its limit gets its documented error, the
//! connection lives on, and nothing is stored. Also `hello` edges and rooms
//! that do not exist or are someone else's.

use chat_e2e::{System, create_room, send};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// Sends `frame` and returns the reply naming `id` (an error or a result).
async fn ask(c: &mut WsClient, frame: Value, id: &str) -> Value {
    c.send_json(&frame).await.expect("send");
    c.recv_where(|v| v["id"] == id && v["type"] != "event")
        .await
        .unwrap_or_else(|e| panic!("{frame}: {e}"))
}

/// No message text in an error may look like a Rust name or an internal.
fn assert_human(e: &Value) {
    let m = e["message"].as_str().unwrap_or_default();
    assert!(!m.is_empty(), "{e}");
    for leak in [
        "NotFound:",
        "NotMember:",
        "BadRequest:",
        "Unavailable:",
        "svc.",
        "Error::",
        "Some(",
        "None",
    ] {
        assert!(!m.contains(leak), "{e} leaks {leak:?}");
    }
}

#[tokio::test]
async fn every_field_out_of_type_or_range_gets_its_error_and_nothing_is_stored() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_RATE_PER_SEC", "100000"),
        ("CHAT_GATEWAY_RATE_BURST", "100000"),
        ("CHAT_GATEWAY_MAX_TEXT_BYTES", "100"),
    ])
    .await
    .expect("system");
    let (mut c, _) = sys.client("alice").await.expect("client");
    let room = create_room(&mut c, "r").await.expect("room");
    let long_id = "x".repeat(65);
    let cases: Vec<(Value, &str)> = vec![
        // send
        (
            json!({"type": "send", "id": "s1", "room": room, "text": 5}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "s2", "room": 5, "text": "x"}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "s3", "room": "bad room!", "text": "x"}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "s4", "room": room}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "s5", "room": room, "text": ""}),
            "bad_request",
        ),
        (
            json!({"type": "send", "id": "s6", "room": room, "text": "   "}),
            "bad_request",
        ),
        (
            json!({"type": "send", "id": "s7", "room": room, "text": "y".repeat(101)}),
            "too_large",
        ),
        (
            json!({"type": "send", "id": "s8", "room": room, "text": "é".repeat(51)}),
            "too_large",
        ),
        (
            json!({"type": "send", "id": long_id, "room": room, "text": "x"}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "", "room": room, "text": "x"}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": 7, "room": room, "text": "x"}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "s9", "room": room, "text": "x", "retry": "yes"}),
            "malformed",
        ),
        (
            json!({"type": "send", "id": "s10", "room": room, "text": "x", "retry": 1}),
            "malformed",
        ),
        // history
        (
            json!({"type": "history", "id": "h1", "room": room, "limit": 0}),
            "bad_request",
        ),
        (
            json!({"type": "history", "id": "h2", "room": room, "limit": 201}),
            "bad_request",
        ),
        (
            json!({"type": "history", "id": "h3", "room": room, "limit": -1}),
            "malformed",
        ),
        (
            json!({"type": "history", "id": "h4", "room": room, "limit": "5"}),
            "malformed",
        ),
        (
            json!({"type": "history", "id": "h5", "room": room, "limit": 1.5}),
            "malformed",
        ),
        (
            json!({"type": "history", "id": "h6", "room": room, "before": -1}),
            "malformed",
        ),
        (
            json!({"type": "history", "id": "h7", "room": room, "after": "0"}),
            "malformed",
        ),
        (
            json!({"type": "history", "id": "h8", "room": room, "limit": 4_294_967_296u64}),
            "malformed",
        ),
        // rooms
        (
            json!({"type": "room.create", "id": "c1", "name": ""}),
            "bad_request",
        ),
        (
            json!({"type": "room.create", "id": "c2", "name": "n".repeat(101)}),
            "bad_request",
        ),
        (
            json!({"type": "room.create", "id": "c3", "name": 3}),
            "malformed",
        ),
        (json!({"type": "room.create", "id": "c4"}), "malformed"),
        (
            json!({"type": "room.join", "id": "j1", "room": ["r"]}),
            "malformed",
        ),
        (
            json!({"type": "room.join", "id": "j2", "room": "r".repeat(65)}),
            "malformed",
        ),
        (
            json!({"type": "rooms.list", "id": "l1", "limit": 0}),
            "bad_request",
        ),
        (
            json!({"type": "rooms.list", "id": "l2", "limit": 201}),
            "bad_request",
        ),
        (
            json!({"type": "rooms.list", "id": "l3", "after": "not an id"}),
            "malformed",
        ),
        // frames
        (json!({"type": "teleport", "id": "t1"}), "unknown_type"),
        (json!({"id": "t2"}), "malformed"),
        (json!({"type": 5, "id": "t3"}), "malformed"),
        (
            json!({"type": "hello", "id": "t4", "v": 1, "token": "x"}),
            "bad_request",
        ),
        (json!({"type": "ping", "id": long_id}), "bad_request"),
    ];
    for (frame, code) in cases {
        let id = frame["id"].as_str().unwrap_or_default().to_string();
        c.send_json(&frame).await.expect("send");
        let e = c
            .recv_where(|v| v["type"] == "error" && (v["id"] == id.as_str() || v["id"].is_null()))
            .await
            .unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert_eq!(e["code"], code, "{frame} → {e}");
        assert_human(&e);
    }
    // Nesting deeper than the parser allows is malformed, not a crash.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    c.send_text(&deep).await.expect("send");
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "malformed", "{e}");
    // The connection lived through all of it, and nothing was stored.
    let ack = send(&mut c, &room, "real", "the first message")
        .await
        .expect("ack");
    assert_eq!(ack["seq"], 1, "{ack}");
}

#[tokio::test]
async fn a_room_you_cannot_see_is_not_member_whether_or_not_it_exists() {
    let sys = System::start().await.expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let (mut mallory, m) = sys.client("mallory").await.expect("mallory");
    let real = create_room(&mut alice, "private talk").await.expect("room");
    let missing = "r0000000000000000000000000000missing";
    for room in [real.as_str(), missing] {
        for (frame, id) in [
            (
                json!({"type": "send", "id": "s", "room": room, "text": "x"}),
                "s",
            ),
            (
                json!({"type": "send", "id": "r", "room": room, "text": "x", "retry": true}),
                "r",
            ),
            (json!({"type": "history", "id": "h", "room": room}), "h"),
            (json!({"type": "room.leave", "id": "l", "room": room}), "l"),
        ] {
            let e = ask(&mut mallory, frame.clone(), id).await;
            assert_eq!(e["code"], "not_member", "{frame} → {e}");
            assert_human(&e);
        }
    }
    // Joining a room that does not exist says so.
    let e = ask(
        &mut mallory,
        json!({"type": "room.join", "id": "j", "room": missing}),
        "j",
    )
    .await;
    assert_eq!(e["code"], "not_found", "{e}");
    assert_human(&e);
    // A resume of either is refused per room, with the room named.
    let mut c = WsClient::connect(&sys.ws_url(), None)
        .await
        .expect("connect");
    c.send_json(&json!({"type": "hello", "v": 1, "token": m.token,
        "resume": { real.clone(): 0, missing: 0 }}))
        .await
        .expect("hello");
    for _ in 0..2 {
        let e = c.recv_type("error").await.expect("refusal");
        assert_eq!(e["code"], "not_member", "{e}");
        assert!(e["room"] == real.as_str() || e["room"] == missing, "{e}");
    }
    // Nothing was stored in alice's room.
    let ack = send(&mut alice, &real, "a1", "hello").await.expect("ack");
    assert_eq!(ack["seq"], 1, "{ack}");
}

#[tokio::test]
async fn hello_edges_get_their_own_codes() {
    let sys = System::start().await.expect("system");
    let login = sys.login("alice").await.expect("login");
    let hello = |extra: Value| {
        let mut h = json!({"type": "hello", "v": 1, "token": login.token});
        if let (Some(h), Some(x)) = (h.as_object_mut(), extra.as_object()) {
            h.extend(x.clone());
        }
        h
    };
    // A malformed resume is the client's bug, not a token problem.
    for resume in [
        json!({"r1": -1}),
        json!({"r1": "5"}),
        json!([1, 2]),
        json!({"bad id": 1}),
    ] {
        let mut c = WsClient::connect(&sys.ws_url(), None)
            .await
            .expect("connect");
        c.send_json(&hello(json!({ "resume": resume })))
            .await
            .expect("hello");
        let e = c.recv_type("error").await.expect("error");
        assert_eq!(e["code"], "malformed", "{resume}: {e}");
        assert!(
            !e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("must be hello"),
            "{e}"
        );
        assert_eq!(c.closed().await.expect("closed").code, 4005, "{resume}");
    }
    let cases = [
        (hello(json!({"v": 2})), None, 4004),
        (hello(json!({"v": "1"})), Some("malformed"), 4005),
        (json!({"type": "hello", "v": 1}), Some("unauthorized"), 4001),
        (hello(json!({"token": ""})), Some("unauthorized"), 4001),
        (hello(json!({"token": 5})), Some("malformed"), 4005),
        (
            json!({"type": "send", "id": "x", "room": "r", "text": "hi"}),
            Some("not_authenticated"),
            4005,
        ),
        (json!(["hello"]), Some("malformed"), 4005),
    ];
    for (frame, code, close) in cases {
        let mut c = WsClient::connect(&sys.ws_url(), None)
            .await
            .expect("connect");
        c.send_json(&frame).await.expect("hello");
        if let Some(code) = code {
            let e = c.recv_type("error").await.expect("error");
            assert_eq!(e["code"], code, "{frame}: {e}");
            assert_human(&e);
        }
        assert_eq!(c.closed().await.expect("closed").code, close, "{frame}");
    }
    // More than 1000 rooms in one resume: the extra ones are refused, the
    // session works.
    let resume: serde_json::Map<String, Value> =
        (0..1001).map(|i| (format!("r{i:05}"), json!(0))).collect();
    let mut c = WsClient::connect(&sys.ws_url(), None)
        .await
        .expect("connect");
    c.send_json(&hello(json!({ "resume": resume })))
        .await
        .expect("hello");
    let w = c.recv_type("welcome").await.expect("welcome");
    assert_eq!(w["type"], "welcome");
    let e = c
        .recv_where(|v| v["type"] == "error" && v["code"] == "bad_request")
        .await
        .expect("the 1001st room is refused");
    assert!(e["room"].is_string(), "{e}");
    c.send_json(&json!({"type": "ping", "id": "p"}))
        .await
        .expect("ping");
    c.recv_type("pong").await.expect("alive");
}
