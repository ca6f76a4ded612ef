//! Hostile WebSocket framing (RFC 6455) from a raw socket: every violation
//! ends with its close code (1002 protocol, 1007 bad UTF-8, 1009 too big)
//! delivered as a close frame, never a bare reset, and only that
//! connection ends.

use chat_e2e::System;
use chat_testkit::raw::{Ending, RawWs, encode_frame};
use serde_json::json;

/// Opens a raw connection and authenticates it, reading up to `welcome`.
async fn authed(sys: &System, token: &str) -> RawWs {
    let mut ws = RawWs::connect(sys.gateway).await.expect("upgrade");
    let hello = json!({"type": "hello", "v": 1, "token": token}).to_string();
    ws.text(hello.as_bytes()).await.expect("hello");
    loop {
        let f = ws.next_frame().await.expect("welcome");
        if f.opcode == 1 && String::from_utf8_lossy(&f.payload).contains("\"welcome\"") {
            return ws;
        }
    }
}

#[tokio::test]
async fn each_framing_violation_closes_with_its_rfc_6455_code() {
    let sys = System::start().await.expect("system");
    let login = sys.login("alice").await.expect("login");
    let ping = br#"{"type":"ping"}"#;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked text frame", encode_frame(0x81, ping, false), 1002),
        ("RSV1 set", encode_frame(0xC1, ping, true), 1002),
        ("RSV2 set", encode_frame(0xA1, ping, true), 1002),
        ("RSV3 set", encode_frame(0x91, ping, true), 1002),
        (
            "reserved data opcode 0x3",
            encode_frame(0x83, ping, true),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            encode_frame(0x8B, b"", true),
            1002,
        ),
        (
            "ping of 126 bytes",
            encode_frame(0x89, &[b'x'; 126], true),
            1002,
        ),
        ("fragmented ping", encode_frame(0x09, b"x", true), 1002),
        (
            "continuation without a start",
            encode_frame(0x80, ping, true),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [
                encode_frame(0x01, b"{\"ty", true),
                encode_frame(0x81, ping, true),
            ]
            .concat(),
            1002,
        ),
        (
            "close with code 999",
            encode_frame(0x88, &999u16.to_be_bytes(), true),
            1002,
        ),
        (
            "invalid UTF-8",
            encode_frame(0x81, &[0x7b, 0xff, 0xfe, 0x7d], true),
            1007,
        ),
        (
            "UTF-8 broken across fragments",
            [
                encode_frame(0x01, &[0xe2, 0x82], true),
                encode_frame(0x80, &[0x41], true),
            ]
            .concat(),
            1007,
        ),
        (
            "a binary frame",
            encode_frame(0x82, b"\x01\x02", true),
            1003,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut ws = authed(&sys, &login.token).await;
        ws.write(&bytes).await.expect("write");
        assert_eq!(ws.ending().await, Ending::Close(code), "{what}");
    }
    // Before `hello` the same rules hold.
    let mut ws = RawWs::connect(sys.gateway).await.expect("upgrade");
    ws.write(&encode_frame(0x81, ping, false))
        .await
        .expect("write");
    assert_eq!(
        ws.ending().await,
        Ending::Close(1002),
        "unmasked before hello"
    );
    // And a well-behaved connection is untouched.
    let mut ws = authed(&sys, &login.token).await;
    ws.frame(0x89, b"are you there", true).await.expect("ping");
    // The pong takes its turn after frames already queued (the presence
    // snapshot after `welcome`).
    let pong = loop {
        let f = ws.next_frame().await.expect("pong");
        if f.opcode != 1 {
            break f;
        }
    };
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, &b"are you there"[..])
    );
}

#[tokio::test]
async fn a_1_mib_frame_and_8_mib_of_continuations_get_a_1009_close_frame_not_a_reset() {
    let sys = System::start().await.expect("system");
    let login = sys.login("alice").await.expect("login");
    // One frame far over the 64 KiB limit: the client writes all of it
    // (concurrently with reading, as a browser would).
    let mut ws = authed(&sys, &login.token).await;
    let big = encode_frame(0x81, &vec![b'a'; 1024 * 1024], true);
    ws.write(&big)
        .await
        .expect("the gateway keeps reading while it closes");
    assert_eq!(ws.ending().await, Ending::Close(1009), "1 MiB frame");

    // 128 continuation frames of 64 KiB each: the message outgrows the limit.
    let mut ws = authed(&sys, &login.token).await;
    let chunk = vec![b'b'; 64 * 1024];
    let mut bytes = encode_frame(0x01, &chunk, true);
    for _ in 0..127 {
        bytes.extend(encode_frame(0x00, &chunk, true));
    }
    ws.write(&bytes).await.expect("8 MiB written");
    assert_eq!(
        ws.ending().await,
        Ending::Close(1009),
        "8 MiB of continuations"
    );

    // Other sessions are unaffected.
    let mut ok = authed(&sys, &login.token).await;
    ok.text(br#"{"type":"ping","id":"p"}"#).await.expect("ping");
    loop {
        let f = ok.next_frame().await.expect("pong");
        if String::from_utf8_lossy(&f.payload).contains("\"pong\"") {
            break;
        }
    }
}
