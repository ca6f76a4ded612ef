//! Per-connection limits at their edges: slow consumers, idle timeout.

use chat_e2e::{System, create_room, join_room, send};
use serde_json::json;

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4009_and_others_get_everything() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_QUEUE_DEPTH", "8"),
        ("CHAT_GATEWAY_MAX_TEXT_BYTES", "16384"),
        ("CHAT_GATEWAY_RATE_PER_SEC", "100000"),
        ("CHAT_GATEWAY_RATE_BURST", "100000"),
    ])
    .await
    .expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let (mut slow, slow_login) = sys.client("slow").await.expect("slow");
    let (mut carol, _) = sys.client("carol").await.expect("carol");
    let room = create_room(&mut alice, "busy").await.expect("room");
    join_room(&mut slow, &room).await.expect("join");
    join_room(&mut carol, &room).await.expect("join");

    // Carol reads concurrently, as a healthy client does.
    let total: u64 = 600;
    let carol_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < total {
            let ev = carol
                .recv_where(|v| v["type"] == "event" && v["kind"] == "msg")
                .await
                .expect("carol receives");
            seqs.push(ev["seq"].as_u64().expect("seq"));
        }
        seqs
    });

    // `slow` reads nothing from here on. 16 KB messages fill its socket
    // buffers, then its queue of 8 frames: the gateway must close it rather
    // than buffer without bound.
    let big = "s".repeat(16_000);
    let mut acked = Vec::new();
    for i in 0..total {
        let ack = send(&mut alice, &room, &format!("m{i}"), &big)
            .await
            .expect("ack");
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.push(ack["seq"].as_u64().expect("seq"));
    }

    // Carol got every message, in order.
    let seqs = carol_reader.await.expect("carol's reader");
    assert_eq!(seqs, acked);

    let closed = slow.closed().await.expect("slow consumer closed");
    assert_eq!(closed.code, 4009, "{closed:?}");

    // It resumes on reconnect and gets every message once, in order.
    let (seqs, resumed) = chat_e2e::load::resume_once(&sys.ws_url(), &slow_login.token, &room, 0)
        .await
        .expect("resume after 4009");
    assert_eq!(resumed["complete"], true, "{resumed}");
    assert_eq!(seqs, acked);
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4003_after_the_idle_timeout() {
    let sys = System::start_with(&[("CHAT_GATEWAY_IDLE_TIMEOUT_MS", "400")])
        .await
        .expect("system");
    let (mut quiet, _) = sys.client("quiet").await.expect("client");
    let (mut chatty, _) = sys.client("chatty").await.expect("client");
    // Pings keep `chatty` alive past several idle timeouts.
    for i in 0..6 {
        chatty
            .send_json(&json!({"type": "ping", "id": format!("p{i}")}))
            .await
            .expect("ping");
        chatty.recv_type("pong").await.expect("pong");
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(quiet.closed().await.expect("closed").code, 4003);
    chatty
        .send_json(&json!({"type": "ping", "id": "last"}))
        .await
        .expect("ping");
    chatty.recv_type("pong").await.expect("still connected");
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1001_and_the_services_stop() {
    let sys = System::start().await.expect("system");
    let (mut a, _) = sys.client("alice").await.expect("alice");
    let (mut b, _) = sys.client("bob").await.expect("bob");
    let stop = tokio::spawn(sys.stop());
    for c in [&mut a, &mut b] {
        let closed = c.closed().await.expect("closed");
        assert_eq!(closed.code, 1001, "{closed:?}");
    }
    chat_testkit::within(std::time::Duration::from_secs(30), "graceful stop", stop)
        .await
        .expect("stop task")
        .expect("every service stopped cleanly");
}
