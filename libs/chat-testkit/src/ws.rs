//! A WebSocket client for tests that speaks the JSON protocol.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

type Inner =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One client connection.
pub struct WsClient {
    inner: Inner,
    /// Frames received but not yet taken by `recv_where`.
    backlog: Vec<Value>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    /// Connects to `url` (ws://…), optionally with an `Origin` header.
    pub async fn connect(url: &str, origin: Option<&str>) -> anyhow::Result<Self> {
        match origin {
            Some(o) => Self::connect_with(url, &[("origin", o)]).await,
            None => Self::connect_with(url, &[]).await,
        }
    }

    /// Connects to `url` with extra (or replaced) request headers, such as
    /// `Origin` and `Host`.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut req = url.into_client_request()?;
        for (name, value) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
                value.parse()?,
            );
        }
        let (inner, _resp) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("connect {url}"))?;
        Ok(Self {
            inner,
            backlog: Vec::new(),
        })
    }

    /// Connects and authenticates with `token`; returns the `welcome` frame.
    pub async fn connect_as(url: &str, token: &str) -> anyhow::Result<(Self, Value)> {
        let mut c = Self::connect(url, None).await?;
        c.send_json(&serde_json::json!({"type": "hello", "v": 1, "token": token}))
            .await?;
        let welcome = c.recv().await?;
        if welcome["type"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        Ok((c, welcome))
    }

    /// Sends one JSON frame.
    pub async fn send_json(&mut self, v: &Value) -> anyhow::Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.inner.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a raw message (binary, oversized…).
    pub async fn send_raw(&mut self, m: Message) -> anyhow::Result<()> {
        self.inner.send(m).await?;
        Ok(())
    }

    /// The next JSON frame (from the backlog first), within 10 s.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        if !self.backlog.is_empty() {
            return Ok(self.backlog.remove(0));
        }
        self.recv_wire(Duration::from_secs(10)).await
    }

    async fn recv_wire(&mut self, wait: Duration) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(wait, self.inner.next())
                .await
                .map_err(|_| anyhow!("no frame within {wait:?}"))?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(c) => {
                    let (code, reason) = close_parts(c);
                    bail!("closed with {code}: {reason}")
                }
                _ => continue,
            }
        }
    }

    /// The first frame matching `pred` within 10 s; other frames stay queued.
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Ok(self.backlog.remove(i));
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("no matching frame within 10s; queued: {:?}", self.backlog);
            }
            let v = self.recv_wire(left).await?;
            if pred(&v) {
                return Ok(v);
            }
            self.backlog.push(v);
        }
    }

    /// The first frame of `type` within 10 s.
    pub async fn recv_type(&mut self, ty: &str) -> anyhow::Result<Value> {
        self.recv_where(|v| v["type"] == ty).await
    }

    /// Waits until the server closes the connection, skipping other frames.
    pub async fn closed(&mut self) -> anyhow::Result<Closed> {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.inner.next())
                .await
                .map_err(|_| anyhow!("not closed within 10s"))?;
            match msg {
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) = close_parts(c);
                    return Ok(Closed { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection error before close frame: {e}"),
                None => bail!("connection ended without a close frame"),
            }
        }
    }
}

fn close_parts(c: Option<CloseFrame>) -> (u16, String) {
    match c {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (1005, String::new()),
    }
}
