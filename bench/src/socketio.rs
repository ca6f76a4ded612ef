//! The peer: a socket.io server (`bench/socketio/server.js`, its documented
//! chat pattern, one process, nothing persisted) started by the bench, and
//! the few Engine.IO v4 / socket.io v5 packets a load-generator client
//! needs (text packets over a WebSocket; no polling, no binary).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use futures::SinkExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};

/// A running socket.io peer; killed on drop.
pub struct Peer {
    child: Child,
    pub port: u16,
}

impl Peer {
    /// The peer's WebSocket URL (socket.io's path, WebSocket transport).
    pub fn url(&self) -> String {
        format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
            self.port
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Installs the peer's npm packages if missing (`npm ci`), starts
    /// `node server.js` on a free port and waits for its `listening` line.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        if !dir.join("node_modules/socket.io").is_dir() {
            eprintln!(
                "chat-bench: installing the socket.io peer (npm ci in {})",
                dir.display()
            );
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir)
                .status()
                .await
                .context("run npm (the socket.io peer needs Node.js and npm)")?;
            if !status.success() {
                bail!("npm ci in {} failed: {status}", dir.display());
            }
        }
        let mut child = Command::new("node")
            .arg("server.js")
            .arg("0")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start node (the socket.io peer needs Node.js)")?;
        let stdout = child.stdout.take().context("peer stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .context("the socket.io peer did not start within 30 s")??
            .context("the socket.io peer exited before listening")?;
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected first line from the peer: {line}"))?;
        Ok(Self { child, port })
    }
}

/// Where the peer lives: `bench/socketio` next to this crate.
pub fn default_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio")
}

/// What a client does with one text packet from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO ping: answer `3`.
    Ping,
    /// A socket.io acknowledgement; its argument (our send id).
    Ack(&'a str),
    /// An `event` emit; its `text`.
    Event(&'a str),
    /// Anything else (open, connect, other events).
    Other,
}

/// Classifies one packet without a JSON parse on the hot path: `2`,
/// `43<n>["<id>"]`, `42["event",{"room":…,"text":"<text>"}]`.
pub fn classify(p: &str) -> Packet<'_> {
    if p == "2" {
        return Packet::Ping;
    }
    if let Some(rest) = p.strip_prefix("43") {
        let args = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        return match args.strip_prefix("[\"").and_then(|a| a.strip_suffix("\"]")) {
            Some(id) => Packet::Ack(id),
            None => Packet::Other,
        };
    }
    if let Some(rest) = p.strip_prefix("42[\"event\",") {
        return match rest.rsplit_once("\"text\":\"") {
            Some((_, t)) => Packet::Event(t.split('"').next().unwrap_or_default()),
            None => Packet::Other,
        };
    }
    Packet::Other
}

/// A `send` emit with acknowledgement number `n`.
pub fn send_packet(n: u64, id: &str, room: &str, text: &str) -> String {
    format!(r#"42{n}["send",{{"id":"{id}","room":"{room}","text":"{text}"}}]"#)
}

/// Opens a socket.io connection from `src` and joins `room` (waiting for
/// the join's acknowledgement).
pub async fn connect(url: &str, src: std::net::SocketAddr, room: &str) -> anyhow::Result<Ws> {
    let mut ws = client::open(url, src).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open}");
    }
    ws.send(Message::text("40")).await?;
    let connected = next_text(&mut ws).await?;
    if !connected.starts_with("40") {
        bail!("expected a socket.io connect packet, got {connected}");
    }
    ws.send(Message::text(format!(r#"420["join","{room}"]"#)))
        .await?;
    loop {
        let p = next_text(&mut ws).await?;
        if p.starts_with("430") {
            return Ok(ws);
        }
        if p == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    use futures::StreamExt;
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .context("no packet within 30 s")?
            .context("connection closed")??;
        match m {
            Message::Text(t) => return Ok(t.to_string()),
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_classified_as_the_peer_sends_them() {
        assert_eq!(classify("2"), Packet::Ping);
        assert_eq!(classify(r#"4317["c1x2t99"]"#), Packet::Ack("c1x2t99"));
        assert_eq!(
            classify(r#"42["event",{"room":"r0","text":"t123"}]"#),
            Packet::Event("t123")
        );
        assert_eq!(classify(r#"40{"sid":"x"}"#), Packet::Other);
        assert_eq!(classify(r#"43["#), Packet::Other);
    }

    #[test]
    fn a_send_is_an_event_with_an_ack_number() {
        assert_eq!(
            send_packet(7, "c1x7t5", "r0", "t5"),
            r#"427["send",{"id":"c1x7t5","room":"r0","text":"t5"}]"#
        );
    }
}
