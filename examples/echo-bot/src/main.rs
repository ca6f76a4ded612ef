//! An example bot: signs in as a service account (OAuth2 client
//! credentials at `POST /auth/token`), joins its rooms over the gateway's
//! WebSocket, and answers every message there with `echo: <text>`.
//! It renews its token in band before it expires and reconnects with
//! `resume` when the connection drops. See `README.md` next to this crate.
//!
//! Options (environment): `CHAT_URL` (the gateway, default
//! `http://127.0.0.1:8080`), `CHAT_CLIENT_ID`, `CHAT_CLIENT_SECRET`,
//! `CHAT_ROOMS` (comma-separated room ids to join).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

struct Bot {
    base: String,
    client_id: String,
    client_secret: String,
    rooms: Vec<String>,
    http: reqwest::Client,
    /// Last message sequence seen per room: the resume position.
    seen: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is required"));
    let mut bot = Bot {
        base: std::env::var("CHAT_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string(),
        client_id: var("CHAT_CLIENT_ID")?,
        client_secret: var("CHAT_CLIENT_SECRET")?,
        rooms: var("CHAT_ROOMS")?
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        seen: BTreeMap::new(),
    };
    loop {
        match bot.session().await {
            Ok(()) => eprintln!("echo-bot: connection closed; reconnecting"),
            Err(e) => eprintln!("echo-bot: {e:#}; reconnecting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Bot {
    /// A fresh access token and its lifetime in seconds.
    async fn token(&self) -> anyhow::Result<(String, u64)> {
        let resp = self
            .http
            .post(format!("{}/auth/token", self.base))
            .json(&json!({
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }))
            .send()
            .await
            .context("POST /auth/token")?;
        let status = resp.status();
        let body: Value = resp.json().await.context("token reply")?;
        if !status.is_success() {
            bail!("token refused ({status}): {body}");
        }
        let token = body["access_token"].as_str().context("access_token")?;
        Ok((token.to_string(), body["expires_in"].as_u64().unwrap_or(60)))
    }

    /// One connection: hello (resuming what was seen), join the rooms,
    /// then answer messages until the connection ends.
    async fn session(&mut self) -> anyhow::Result<()> {
        let (token, ttl) = self.token().await?;
        let ws_url = format!("{}/ws", self.base.replacen("http", "ws", 1));
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .context("connect")?;
        let hello = json!({"type": "hello", "v": 1, "token": token, "resume": self.seen});
        ws.send(Message::text(hello.to_string())).await?;
        let mut me = String::new();
        for room in self.rooms.clone() {
            let join = json!({"type": "room.join", "id": format!("join-{room}"), "room": room});
            ws.send(Message::text(join.to_string())).await?;
        }
        // Renew a minute before expiry (or halfway for short tokens).
        let renew_every = Duration::from_secs(ttl.saturating_sub(60).max(ttl / 2).max(1));
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        let mut ping = tokio::time::interval(Duration::from_secs(20));
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let (fresh, _) = self.token().await?;
                    ws.send(Message::text(json!({"type": "auth", "token": fresh}).to_string())).await?;
                }
                _ = ping.tick() => {
                    ws.send(Message::text(json!({"type": "ping"}).to_string())).await?;
                }
                msg = ws.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let Message::Text(text) = msg? else { continue };
                    let frame: Value = serde_json::from_str(&text)?;
                    match frame["type"].as_str() {
                        Some("welcome") => {
                            me = frame["user"].as_str().unwrap_or_default().to_string();
                            eprintln!("echo-bot: signed in as {me}");
                        }
                        Some("event") if frame["kind"] == "msg" => {
                            let (room, seq) = (frame["room"].as_str().unwrap_or_default(), frame["seq"].as_u64().unwrap_or(0));
                            self.seen.insert(room.to_string(), seq);
                            if frame["from"] != me.as_str() {
                                let text = frame["text"].as_str().unwrap_or_default();
                                let reply = json!({
                                    "type": "send",
                                    "id": format!("echo-{room}-{seq}"),
                                    "room": room,
                                    "text": format!("echo: {text}"),
                                });
                                ws.send(Message::text(reply.to_string())).await?;
                            }
                        }
                        Some("error") => eprintln!("echo-bot: {frame}"),
                        _ => {}
                    }
                }
            }
        }
    }
}
