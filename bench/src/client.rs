//! One benchmark client: a WebSocket from a chosen loopback source address
//! (so one machine can open more than 64k connections to one port), the
//! `hello`, and a task that sends what it is told and measures what it
//! reads.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::socketio;
use crate::stats::Stats;

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How often an otherwise silent client pings (the gateway's idle timeout
/// is 60 s by default).
const PING_EVERY: Duration = Duration::from_secs(25);

/// Unix time in microseconds (one clock for every process on the machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The source address of connection `i`: 127.0.0.2 … 127.0.0.201, so each
/// address needs at most a few thousand ephemeral ports.
pub fn source_addr(i: usize) -> SocketAddr {
    let host = 2 + (i % 200) as u8;
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0))
}

/// The protocol a client speaks: ours, or the socket.io peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Chat,
    SocketIo,
}

/// Opens a WebSocket to `url` (ws://127.0.0.1:port/…) from `src`, with
/// small buffers (the load generator holds many of them).
pub async fn open(url: &str, src: SocketAddr) -> anyhow::Result<Ws> {
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .context("url must be ws://host:port/…")?;
    let addr: SocketAddr = hostport.parse().context("ws host must be an IP:port")?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(src).with_context(|| format!("bind {src}"))?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .context("websocket handshake")?;
    Ok(ws)
}

/// Opens a WebSocket to a gateway (ws://127.0.0.1:port/ws) from `src` and
/// says hello.
pub async fn connect(url: &str, src: SocketAddr, token: &str) -> anyhow::Result<(Ws, Value)> {
    let mut ws = open(url, src).await?;
    ws.send(Message::text(
        json!({"type": "hello", "v": 1, "token": token}).to_string(),
    ))
    .await?;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok((ws, welcome))
}

/// The next JSON text frame, within 30 s.
pub async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no frame within 30 s")?
            .context("connection closed")??;
        match m {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Sends marker messages to `room`, one a second, until one comes back as
/// an event (up to `wait`): fanout has handled what was appended before it.
/// (Fanout may not see a new connection online yet and deliver the first
/// marker to nobody; a later one gets through.)
pub async fn sync(ws: &mut Ws, room: &str, wait: Duration) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + wait;
    let mut n = 0u32;
    loop {
        if tokio::time::Instant::now() >= end {
            bail!("no marker came back within {wait:?}");
        }
        n += 1;
        let marker = format!("sync-{n}");
        ws.send(Message::text(
            json!({"type": "send", "id": &marker, "room": room, "text": &marker}).to_string(),
        ))
        .await?;
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(m) = tokio::time::timeout_at(next, ws.next()).await {
            let m = m.context("connection closed while waiting for a marker")??;
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "event"
                    && v["text"].as_str().is_some_and(|t| t.starts_with("sync-"))
                {
                    return Ok(());
                }
            }
        }
    }
}

/// Sends a request and waits for the reply with the same `id`; an
/// `unavailable` is retried (as the protocol asks), a few times.
pub async fn request(ws: &mut Ws, req: Value) -> anyhow::Result<Value> {
    let id = req["id"].clone();
    let mut attempt = 0u32;
    'send: loop {
        ws.send(Message::text(req.to_string())).await?;
        loop {
            let v = next_json(ws).await?;
            if v["id"] != id {
                continue;
            }
            if v["type"] != "error" {
                return Ok(v);
            }
            if v["code"] == "unavailable" && attempt < 5 {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                continue 'send;
            }
            bail!("request failed: {v}");
        }
    }
}

/// What a client task is told to do.
pub enum Cmd {
    /// Send one message to this room.
    Send(Arc<str>),
}

/// Runs a connected client until `stop`: sends on command (the text carries
/// the send time), records the ack latency of its own sends and the
/// end-to-end latency of every message it reads, and pings when idle (our
/// protocol) or answers the server's pings (socket.io).
pub async fn run(
    proto: Proto,
    conn: usize,
    mut ws: Ws,
    mut cmds: mpsc::Receiver<Cmd>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut n: u64 = 0;
    let mut commands_open = true;
    let mut close = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ping.tick(), if proto == Proto::Chat => {
                if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    break;
                }
            }
            cmd = cmds.recv(), if commands_open => {
                let Some(Cmd::Send(room)) = cmd else {
                    // Not a sender (or the run is over): just read.
                    commands_open = false;
                    continue;
                };
                n += 1;
                let t = now_us();
                // The id carries the send time (for the ack); the text
                // carries it for every recipient.
                let frame = match proto {
                    Proto::Chat => format!(
                        r#"{{"type":"send","id":"c{conn}x{n}t{t}","room":"{room}","text":"t{t}"}}"#
                    ),
                    Proto::SocketIo => socketio::send_packet(
                        n,
                        &format!("c{conn}x{n}t{t}"),
                        &room,
                        &format!("t{t}"),
                    ),
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    break;
                }
                Stats::add(&stats.sent, 1);
            }
            m = ws.next() => {
                match m {
                    Some(Ok(Message::Text(t))) => match proto {
                        Proto::Chat => on_frame(conn, &t, &stats),
                        Proto::SocketIo => {
                            if on_packet(conn, &t, &stats)
                                && ws.send(Message::text("3")).await.is_err()
                            {
                                break;
                            }
                        }
                    },
                    Some(Ok(Message::Close(frame))) => {
                        close = frame.map(|f| u16::from(f.code).to_string());
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }
    if stop.is_cancelled() {
        let _closed = ws.close(None).await;
        return;
    }
    Stats::add(&stats.disconnects, 1);
    stats.closed(close.unwrap_or_else(|| "none".into()));
    let _closed = ws.close(None).await;
}

/// Parses `t<micros>` at the end of `s`.
fn sent_at(s: &str) -> Option<u64> {
    s.rsplit_once('t')?.1.parse().ok()
}

/// What the load generator reads from one of our frames.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// A message event; its text.
    Msg(&'a str),
    /// An ack; its id.
    Ack(&'a str),
    Error,
    Other,
}

/// The string value after `key` (`"name":"`) in `s` (the bench's own ids
/// and texts contain no quotes or escapes).
fn string_field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = s.find(key)? + key.len();
    s[start..].split('"').next()
}

/// Classifies a frame by string matching, without a JSON parse (the
/// generator reads up to 100,000 frames a second on the machine under
/// test; the socket.io client is as cheap). `type` is always the first key.
fn classify(text: &str) -> Frame<'_> {
    if text.starts_with(r#"{"type":"event""#) {
        if !text.contains(r#""kind":"msg""#) {
            return Frame::Other;
        }
        return string_field(text, r#""text":""#).map_or(Frame::Other, Frame::Msg);
    }
    if text.starts_with(r#"{"type":"ack""#) {
        return string_field(text, r#""id":""#).map_or(Frame::Other, Frame::Ack);
    }
    if text.starts_with(r#"{"type":"error""#) {
        return Frame::Error;
    }
    Frame::Other
}

fn on_frame(conn: usize, text: &str, stats: &Stats) {
    let now = now_us();
    Stats::add(&stats.frames, 1);
    match classify(text) {
        Frame::Msg(t) => {
            Stats::add(&stats.delivered, 1);
            if let Some(t) = sent_at(t) {
                stats.e2e.record(conn, now.saturating_sub(t));
            }
        }
        Frame::Ack(id) => {
            Stats::add(&stats.acked, 1);
            if let Some(t) = sent_at(id) {
                stats.ack.record(conn, now.saturating_sub(t));
            }
        }
        Frame::Error => Stats::add(&stats.errors, 1),
        Frame::Other => {}
    }
}

/// One socket.io packet; true when it was a ping (to be answered).
fn on_packet(conn: usize, text: &str, stats: &Stats) -> bool {
    let now = now_us();
    Stats::add(&stats.frames, 1);
    match socketio::classify(text) {
        socketio::Packet::Ping => return true,
        socketio::Packet::Event(t) => {
            Stats::add(&stats.delivered, 1);
            if let Some(t) = sent_at(t) {
                stats.e2e.record(conn, now.saturating_sub(t));
            }
        }
        socketio::Packet::Ack(id) => {
            Stats::add(&stats.acked, 1);
            if let Some(t) = sent_at(id) {
                stats.ack.record(conn, now.saturating_sub(t));
            }
        }
        socketio::Packet::Other => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_are_read_back_from_ids_and_texts() {
        assert_eq!(
            sent_at("c12x3t1700000000123456"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(sent_at("t42"), Some(42));
        assert_eq!(sent_at("hello"), None);
    }

    #[test]
    fn our_frames_are_classified_as_the_server_encodes_them() {
        use chat_core::wire::ServerFrame;
        let ev: chat_core::events::RoomEvent = serde_json::from_value(json!({
            "v": 1, "room": "r1", "seq": 3, "ts": 5, "from": "alice",
            "kind": "msg", "cmid": "c1x1t9", "text": "t9"
        }))
        .expect("event");
        let frame = serde_json::to_string(&ServerFrame::Event(ev)).expect("encode");
        assert_eq!(classify(&frame), Frame::Msg("t9"));
        assert_eq!(
            classify(r#"{"type":"ack","id":"c1x1t9","room":"r1","seq":3}"#),
            Frame::Ack("c1x1t9")
        );
        assert_eq!(
            classify(r#"{"type":"error","code":"malformed"}"#),
            Frame::Error
        );
        assert_eq!(
            classify(r#"{"type":"event","kind":"member","user":"bob"}"#),
            Frame::Other
        );
    }

    #[test]
    fn source_addresses_spread_over_loopback() {
        assert_eq!(source_addr(0).ip().to_string(), "127.0.0.2");
        assert_eq!(source_addr(199).ip().to_string(), "127.0.0.201");
        assert_eq!(source_addr(200).ip().to_string(), "127.0.0.2");
    }
}
