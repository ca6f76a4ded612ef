//! Bad input gets its documented answer, and the connection (or the others)
//! carries on where it should.

use std::time::Duration;

use chat_e2e::{AUDIENCE, ISSUER, System, create_room, send};
use chat_jwt::{KeyPair, Signer, testing};
use chat_testkit::WsClient;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The connection still works: a ping gets its pong.
async fn still_alive(c: &mut WsClient) {
    c.send_json(&json!({"type": "ping", "id": "alive"}))
        .await
        .expect("ping");
    let pong = c.recv_where(|v| v["id"] == "alive").await.expect("pong");
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_error_frames_and_the_connection_lives() {
    let sys = System::start().await.expect("system");
    let (mut c, _) = sys.client("alice").await.expect("client");

    c.send_text("{not json").await.expect("send");
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "malformed");
    still_alive(&mut c).await;

    c.send_json(&json!({"type": "teleport", "id": "t1"}))
        .await
        .expect("send");
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "unknown_type");
    assert_eq!(e["id"], "t1", "the error names the request");
    still_alive(&mut c).await;

    c.send_json(&json!({"type": "send", "id": "x"}))
        .await
        .expect("send");
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "malformed", "missing fields: {e}");
    still_alive(&mut c).await;

    c.send_json(&json!({"type": "send", "id": "bad id!", "room": "r", "text": "x"}))
        .await
        .expect("send");
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "malformed", "invalid id: {e}");
    still_alive(&mut c).await;
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection_with_1009() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_MAX_FRAME_BYTES", "2048"),
        ("CHAT_GATEWAY_MAX_TEXT_BYTES", "1024"),
    ])
    .await
    .expect("system");
    let (mut a, _) = sys.client("alice").await.expect("alice");
    let (mut b, _) = sys.client("bob").await.expect("bob");
    let room = create_room(&mut a, "r").await.expect("room");

    // Text over the text limit but within the frame limit: an error, not a close.
    let e = send(&mut a, &room, "big", &"x".repeat(1500))
        .await
        .expect("reply");
    assert_eq!(e["code"], "too_large", "{e}");
    // Exactly at the limit is fine.
    let ok = send(&mut a, &room, "edge", &"y".repeat(1024))
        .await
        .expect("reply");
    assert_eq!(ok["type"], "ack", "{ok}");

    let huge = json!({"type": "send", "id": "h", "room": room, "text": "z".repeat(4096)});
    a.send_text(&huge.to_string()).await.expect("send");
    let closed = a.closed().await.expect("closed");
    assert_eq!(closed.code, 1009, "{closed:?}");

    still_alive(&mut b).await;
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let sys = System::start().await.expect("system");
    let (mut c, _) = sys.client("alice").await.expect("client");
    c.send_raw(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(c.closed().await.expect("closed").code, 1003);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_4001() {
    let sys = System::start().await.expect("system");
    let good = sys.login("alice").await.expect("login");
    let key = KeyPair::from_pkcs8_pem(
        &std::fs::read_to_string(sys.signing_key_path()).expect("key file"),
    )
    .expect("key");
    let user = chat_core::UserId::parse(good.user_id.clone()).expect("user id");
    let now = chat_core::time::now_ms() / 1000;

    let expired = Signer::new(key.clone(), ISSUER, AUDIENCE, Duration::from_secs(60))
        .expect("signer")
        .issue_with_exp(&user, "alice", now - 3600)
        .expect("token");
    let claims = testing::claims(ISSUER, AUDIENCE, &user, "alice", now + 600);
    let forged = testing::foreign_key_token(key.kid(), &claims);
    let none = testing::alg_none_token(key.kid(), &claims);
    let wrong_aud = testing::claims(ISSUER, "someone-else", &user, "alice", now + 600);
    let wrong_aud = Signer::new(key.clone(), ISSUER, "someone-else", Duration::from_secs(60))
        .map(|_| testing::foreign_key_token(key.kid(), &wrong_aud))
        .expect("token");

    for (what, token) in [
        ("missing", String::new()),
        ("garbage", "not.a.jwt".to_string()),
        ("expired", expired),
        ("forged", forged),
        ("alg none", none),
        ("wrong audience", wrong_aud),
    ] {
        let mut c = WsClient::connect(&sys.ws_url(), None)
            .await
            .expect("connect");
        c.send_json(&json!({"type": "hello", "v": 1, "token": token}))
            .await
            .expect("hello");
        let e = c
            .recv_type("error")
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(e["code"], "unauthorized", "{what}: {e}");
        let closed = c.closed().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(closed.code, 4001, "{what}: {closed:?}");
    }

    // A frame other than hello first is not an authentication failure: it
    // is a client that skipped hello (4005, not 4001).
    let mut c = WsClient::connect(&sys.ws_url(), None)
        .await
        .expect("connect");
    c.send_json(&json!({"type": "ping"})).await.expect("ping");
    let e = c.recv_type("error").await.expect("error");
    assert_eq!(e["code"], "not_authenticated", "{e}");
    assert_eq!(c.closed().await.expect("closed").code, 4005);

    // The good token still works.
    WsClient::connect_as(&sys.ws_url(), &good.token)
        .await
        .expect("good token");
}

#[tokio::test]
async fn no_hello_in_time_closes_with_4002() {
    let sys = System::start_with(&[("CHAT_GATEWAY_AUTH_TIMEOUT_MS", "300")])
        .await
        .expect("system");
    let mut c = WsClient::connect(&sys.ws_url(), None)
        .await
        .expect("connect");
    assert_eq!(c.closed().await.expect("closed").code, 4002);
}

#[tokio::test]
async fn sending_to_a_room_you_are_not_in_is_refused_and_not_stored() {
    let sys = System::start().await.expect("system");
    let (mut a, _) = sys.client("alice").await.expect("alice");
    let (mut m, _) = sys.client("mallory").await.expect("mallory");
    let room = create_room(&mut a, "private").await.expect("room");

    let e = send(&mut m, &room, "sneak", "hi").await.expect("reply");
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "not_member");
    m.send_json(&json!({"type": "history", "id": "h", "room": room}))
        .await
        .expect("send");
    let e = m.recv_where(|v| v["id"] == "h").await.expect("reply");
    assert_eq!(e["code"], "not_member");

    // Alice's first message is seq 1: nothing was stored for mallory.
    let ack = send(&mut a, &room, "a1", "hello").await.expect("ack");
    assert_eq!(ack["seq"], 1, "{ack}");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_at_the_upgrade() {
    let sys = System::start().await.expect("system");
    let err = WsClient::connect(&sys.ws_url(), Some("http://evil.example"))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(err.as_deref().is_some_and(|e| e.contains("403")), "{err:?}");
    // Same origin is allowed.
    let own = sys.http_url();
    WsClient::connect(&sys.ws_url(), Some(&own))
        .await
        .expect("same origin");
}

#[tokio::test]
async fn resending_the_same_client_id_acks_once_and_stores_once() {
    let sys = System::start().await.expect("system");
    let (mut a, _) = sys.client("alice").await.expect("alice");
    let room = create_room(&mut a, "r").await.expect("room");

    let first = send(&mut a, &room, "same", "hello").await.expect("ack");
    let again = send(&mut a, &room, "same", "hello").await.expect("ack");
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);

    // Different content under the same id is a conflict, not a new message.
    let e = send(&mut a, &room, "same", "changed").await.expect("reply");
    assert_eq!(e["code"], "id_conflict", "{e}");

    let next = send(&mut a, &room, "other", "next").await.expect("ack");
    assert_eq!(
        next["seq"].as_u64(),
        first["seq"].as_u64().map(|s| s + 1),
        "exactly one message was stored for the repeated id"
    );
}

#[tokio::test]
async fn frames_beyond_the_rate_limit_get_rate_limited_errors() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_RATE_PER_SEC", "1"),
        ("CHAT_GATEWAY_RATE_BURST", "3"),
    ])
    .await
    .expect("system");
    let (mut c, _) = sys.client("alice").await.expect("client");
    for i in 0..5 {
        c.send_json(&json!({"type": "ping", "id": format!("p{i}")}))
            .await
            .expect("ping");
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..5 {
        let f = c
            .recv_where(|v| v["type"] == "pong" || v["type"] == "error")
            .await
            .expect("frame");
        match f["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if f["code"] == "rate_limited" => limited += 1,
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    assert_eq!((pongs, limited), (3, 2));
}

#[tokio::test]
async fn a_retry_after_the_stream_dedup_window_is_still_one_message() {
    let window = Duration::from_millis(500);
    let sys = System::start_with(&[("CHAT_STREAM_DEDUP_WINDOW_MS", "500")])
        .await
        .expect("system");
    let (mut a, _) = sys.client("alice").await.expect("alice");
    let room = create_room(&mut a, "r").await.expect("room");
    let first = send(&mut a, &room, "late", "hello").await.expect("ack");
    assert_eq!(first["seq"], 1, "{first}");
    // History has it …
    chat_testkit::eventually(
        Duration::from_secs(10),
        "history stores the message",
        || {
            let url = sys.ws_url();
            let token = sys.login("alice");
            let room = room.clone();
            async move {
                let token = token.await.ok()?.token;
                let (mut c, _) = WsClient::connect_as(&url, &token).await.ok()?;
                let p = chat_e2e::history(&mut c, &room, json!({})).await.ok()?;
                (p["events"].as_array()?.len() == 1).then_some(())
            }
        },
    )
    .await;
    // … and the stream has forgotten the id: the window is a time policy, so
    // waiting it out is the condition itself.
    tokio::time::sleep(window * 2).await;

    // Unmarked sends never asked the store; a resend marked as a retry is
    // looked up there.
    assert_eq!(
        sys.metric("chat_gateway_retry_lookups_total")
            .await
            .expect("metrics"),
        0.0,
        "a first send pays no lookup"
    );
    let again = chat_e2e::resend(&mut a, &room, "late", "hello")
        .await
        .expect("ack");
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(1), Some(true)),
        "{again}"
    );
    let e = chat_e2e::resend(&mut a, &room, "late", "other text")
        .await
        .expect("reply");
    assert_eq!(e["code"], "id_conflict", "{e}");
    let next = send(&mut a, &room, "new", "next").await.expect("ack");
    assert_eq!(next["seq"], 2, "no second copy was stored: {next}");
    assert_eq!(
        sys.metric("chat_gateway_retry_lookups_total")
            .await
            .expect("metrics"),
        2.0,
        "the two marked resends were looked up, the new send was not"
    );
}
