//! Raw sockets for hostile-input tests: HTTP requests written byte by byte
//! (half-sent headers, `..` paths a normal client would clean up) and a
//! WebSocket client that writes whatever frames it is given (unmasked,
//! reserved bits, bad UTF-8) and reads the server's frames and close code.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long raw reads wait before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// An HTTP response read off a socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The head (status line and headers) as text.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as-is (it should say `connection: close`) and reads the
/// response to the end of the connection.
pub async fn http(addr: SocketAddr, request: &[u8]) -> anyhow::Result<RawResponse> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .context("no complete response within 10s")??;
    parse_response(&buf)
}

/// `GET <path>` with `Host` and `connection: close`, the path sent as-is.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<RawResponse> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    http(addr, req.as_bytes()).await
}

fn parse_response(buf: &[u8]) -> anyhow::Result<RawResponse> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no response head in {:?}", String::from_utf8_lossy(buf)))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(RawResponse {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

/// Waits until the peer closes `tcp` (EOF or reset); true if it did within
/// `deadline`. Whatever it sends meanwhile is discarded.
pub async fn closed_by_peer(tcp: &mut TcpStream, deadline: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let wait = async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(deadline, wait).await.is_ok()
}

/// A WebSocket connection that writes raw frames.
pub struct RawWs {
    tcp: TcpStream,
    /// Bytes read but not yet parsed into frames.
    pending: Vec<u8>,
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a close frame (1005 when it has none).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8).then(|| match self.payload.get(..2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => 1005,
        })
    }
}

/// How a raw WebSocket connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code (1005: none), then the socket closed.
    Close(u16),
    /// The socket was reset or closed without a close frame.
    NoCloseFrame(String),
}

impl RawWs {
    /// Opens `ws://addr/ws` with a hand-written handshake.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut tcp = TcpStream::connect(addr).await?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
                .await
                .context("handshake answer")??;
            if n == 0 {
                bail!(
                    "closed during the handshake: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf);
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        Ok(Self {
            tcp,
            pending: Vec::new(),
        })
    }

    /// Writes `bytes` as they are.
    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.tcp.write_all(bytes).await?;
        Ok(())
    }

    /// Writes one frame: `first` is the first header byte (FIN, RSV,
    /// opcode), masked with a fixed key when `masked`.
    pub async fn frame(&mut self, first: u8, payload: &[u8], masked: bool) -> anyhow::Result<()> {
        self.write(&encode_frame(first, payload, masked)).await
    }

    /// A masked final text frame.
    pub async fn text(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.frame(0x81, payload, true).await
    }

    /// The next frame from the server.
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            if let Some((frame, used)) = decode_frame(&self.pending) {
                self.pending.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .context("no frame within 10s")??;
            if n == 0 {
                bail!("connection closed");
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until the server closes: its close code, or how the
    /// socket ended without one. Answers the close like a client should.
    pub async fn ending(&mut self) -> Ending {
        loop {
            match self.next_frame().await {
                Ok(f) if f.opcode == 8 => {
                    let code = f.close_code().unwrap_or(1005);
                    let _answered = self
                        .frame(0x88, &f.payload[..f.payload.len().min(2)], true)
                        .await;
                    return Ending::Close(code);
                }
                Ok(_) => continue,
                Err(e) => return Ending::NoCloseFrame(format!("{e:#}")),
            }
        }
    }

    /// The socket, for tests that need to watch it close.
    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }
}

/// A frame's bytes.
pub fn encode_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// One unmasked server frame from the front of `buf`, with its length.
fn decode_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b), 10)
        }
        l => (u64::from(l), 2),
    };
    let end = at + usize::try_from(len).ok()?;
    let payload = buf.get(at..end)?.to_vec();
    Some((
        ServerFrame {
            opcode: b0 & 0x0f,
            payload,
        },
        end,
    ))
}

/// A free-standing helper: the address of a `ws://host:port/…` URL.
pub fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .split("://")
        .nth(1)
        .with_context(|| format!("not a URL: {url}"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .parse()
        .with_context(|| format!("not host:port in {url}"))
}
