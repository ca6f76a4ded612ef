//! A session's WebSocket on its raw TCP socket, after the handshake: a
//! reader that holds no buffer between frames (bytes are read into the
//! stack and only an incomplete frame is kept, sized to that frame) and a
//! writer that writes queued frames straight from their bytes, a batch per
//! `writev`, holding nothing once written. Both borrow the socket, so one
//! task can read and write at once; an idle connection costs its socket
//! and these two small structs. Framing rules are in `frame`.
//!
//! Written here rather than taken from `tungstenite`, which keeps a read
//! buffer and a write buffer per connection for its whole life (about
//! 2 KB of an idle connection's memory; docs/performance.md).

use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;
use tungstenite::Utf8Bytes;

use crate::frame::{self, Decoded, Decoder, Opcode, Violation};

/// Most bytes taken from the socket per read.
const READ_CHUNK: usize = 4096;
/// Most frames written per `writev` (two slices each).
const WRITE_BATCH: usize = 16;

/// What the next client frame was.
#[derive(Debug)]
pub enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// A ping to answer with a pong of the same payload.
    Ping(Bytes),
    /// The client sent a close frame (with this status code, if any).
    CloseFrame(Option<u16>),
    /// The client broke the WebSocket protocol: close with `code`.
    Violation {
        code: u16,
        reason: String,
    },
    /// The socket closed or failed.
    Closed,
}

impl From<Violation> for Incoming {
    fn from(v: Violation) -> Self {
        match v {
            Violation::TooBig { .. } => {
                metrics::counter!("chat_gateway_frames_too_big_total").increment(1);
            }
            Violation::Protocol(_) => {
                metrics::counter!("chat_gateway_protocol_errors_total").increment(1);
            }
            Violation::Utf8 => {}
        }
        Incoming::Violation {
            code: v.code(),
            reason: v.reason(),
        }
    }
}

/// The reading side.
pub struct Reader<'a> {
    io: &'a TcpStream,
    frames: Decoder,
}

impl<'a> Reader<'a> {
    /// `early` holds bytes read past the HTTP upgrade request; `max` is the
    /// largest frame and message payload.
    pub fn new(io: &'a TcpStream, early: &[u8], max: usize) -> Self {
        let mut frames = Decoder::new(max);
        frames.feed(early);
        Self { io, frames }
    }

    /// The next frame a session must act on (pongs are dropped). Polled
    /// by hand, so a waiting session holds no future but this call's.
    pub async fn next(&mut self) -> Incoming {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        loop {
            match self.frames.take() {
                Ok(Some(Decoded::Text(s))) => return Poll::Ready(Incoming::Text(s.into())),
                Ok(Some(Decoded::Binary)) => return Poll::Ready(Incoming::Binary),
                Ok(Some(Decoded::Ping(p))) => return Poll::Ready(Incoming::Ping(p.into())),
                Ok(Some(Decoded::Close(code))) => return Poll::Ready(Incoming::CloseFrame(code)),
                Ok(None) => {}
                Err(v) => return Poll::Ready(v.into()),
            }
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Incoming::Closed),
                Poll::Ready(Ok(())) => {}
            }
            match self.read_some() {
                Ok(0) => return Poll::Ready(Incoming::Closed),
                // A would-block clears the readiness: the next poll waits.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Incoming::Closed),
            }
        }
    }

    /// One read from the socket, through the stack.
    fn read_some(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.io.try_read(&mut chunk)?;
        self.frames.feed(&chunk[..n]);
        Ok(n)
    }
}

/// A server frame waiting to be written.
struct Pending {
    head: [u8; 10],
    head_len: u8,
    body: Bytes,
}

impl Pending {
    fn new(opcode: Opcode, body: Bytes) -> Self {
        let (head, head_len) = frame::server_header(opcode, body.len());
        Self {
            head,
            head_len,
            body,
        }
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }
}

/// The writing side.
pub struct Writer<'a> {
    io: &'a TcpStream,
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// Bytes of `pending[0]` already written.
    written: usize,
    /// Buffered bytes past which `text` writes before returning.
    limit: usize,
    /// A close frame was queued: nothing may follow it.
    closed: bool,
}

impl<'a> Writer<'a> {
    pub fn new(io: &'a TcpStream, limit: usize) -> Self {
        Self {
            io,
            pending: Vec::new(),
            pending_bytes: 0,
            written: 0,
            limit,
            closed: false,
        }
    }

    /// Buffers a text frame; writes when more than the limit is buffered
    /// (waiting for the socket: flow control).
    pub async fn text(&mut self, frame: Utf8Bytes) -> io::Result<()> {
        self.queue(Opcode::Text, frame.into())?;
        if self.pending_bytes > self.limit {
            self.flush().await?;
        }
        Ok(())
    }

    /// Buffers the answer to a ping.
    pub fn pong(&mut self, payload: Bytes) -> io::Result<()> {
        self.queue(Opcode::Pong, payload)
    }

    /// Writes a close frame (after anything buffered); nothing can be
    /// written after it. `None` sends one without a status code.
    pub async fn close(&mut self, status: Option<(u16, &str)>) -> io::Result<()> {
        let body = match status {
            Some((code, reason)) => {
                let mut b = Vec::with_capacity(2 + reason.len());
                b.extend_from_slice(&code.to_be_bytes());
                b.extend_from_slice(reason.as_bytes());
                Bytes::from(b)
            }
            None => Bytes::new(),
        };
        self.queue(Opcode::Close, body)?;
        self.closed = true;
        self.flush().await
    }

    fn queue(&mut self, opcode: Opcode, body: Bytes) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "close frame sent",
            ));
        }
        let p = Pending::new(opcode, body);
        self.pending_bytes += p.len();
        self.pending.push(p);
        Ok(())
    }

    /// Writes everything buffered, waiting for the socket as needed.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match self.write_some() {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.consume(n),
                // A would-block clears the readiness: this waits for it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.io.poll_write_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // An idle session holds no write buffer.
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// One `writev` of up to [`WRITE_BATCH`] frames. The slices live on
    /// the stack; a single frame (the common case) needs only two.
    fn write_some(&self) -> io::Result<usize> {
        if self.pending.len() == 1 {
            let mut slices = [IoSlice::new(&[]); 2];
            let n = self.slices(&mut slices);
            return self.io.try_write_vectored(&slices[..n]);
        }
        let mut slices = [IoSlice::new(&[]); 2 * WRITE_BATCH];
        let n = self.slices(&mut slices);
        self.io.try_write_vectored(&slices[..n])
    }

    /// Fills `slices` with what is left to write of the first frames; how
    /// many it used.
    fn slices<'s>(&'s self, slices: &mut [IoSlice<'s>]) -> usize {
        let mut n = 0;
        for (i, p) in self.pending.iter().take(slices.len() / 2).enumerate() {
            let head = &p.head[..usize::from(p.head_len)];
            let skip = if i == 0 { self.written } else { 0 };
            if skip < head.len() {
                slices[n] = IoSlice::new(&head[skip..]);
                n += 1;
            }
            let body = &p.body[skip.saturating_sub(head.len())..];
            if !body.is_empty() {
                slices[n] = IoSlice::new(body);
                n += 1;
            }
        }
        n
    }

    /// Drops what `n` written bytes completed.
    fn consume(&mut self, mut n: usize) {
        self.pending_bytes -= n;
        let mut done = 0;
        while n > 0 {
            let rest = self.pending[done].len() - self.written;
            if n >= rest {
                n -= rest;
                self.written = 0;
                done += 1;
            } else {
                self.written += n;
                n = 0;
            }
        }
        self.pending.drain(..done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        (server.expect("accept").0, client.expect("connect"))
    }

    /// Reads one unmasked server frame: opcode and payload.
    async fn server_frame(c: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        c.read_exact(&mut h).await.expect("header");
        let len = match h[1] & 0x7F {
            126 => u64::from(c.read_u16().await.expect("len16")),
            127 => c.read_u64().await.expect("len64"),
            n => u64::from(n),
        };
        let mut p = vec![0u8; usize::try_from(len).expect("len")];
        c.read_exact(&mut p).await.expect("payload");
        (h[0] & 0x0F, p)
    }

    #[tokio::test]
    async fn the_writer_gets_every_frame_out_whole_and_in_order_through_partial_writes() {
        let (server, mut client) = pair().await;
        // Frames of every length form, more than fit the socket's buffers:
        // writes are partial and wait for the reader.
        let sizes: Vec<usize> = (0..300).map(|i| [6, 200, 70_000][i % 3] + i).collect();
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..300 {
                got.push(server_frame(&mut client).await);
            }
            got
        });
        let mut w = Writer::new(&server, 8192);
        for (i, n) in sizes.iter().enumerate() {
            let text = format!("{i:05}{}", "x".repeat(n - 5));
            w.text(text.into()).await.expect("text");
        }
        w.flush().await.expect("flush");
        assert!(
            w.pending.is_empty() && w.pending.capacity() == 0,
            "nothing held"
        );
        let got = reading.await.expect("reader");
        for (i, (opcode, payload)) in got.iter().enumerate() {
            assert_eq!(*opcode, 1);
            assert_eq!(payload.len(), sizes[i], "frame {i}");
            assert_eq!(&payload[..5], format!("{i:05}").as_bytes());
        }
    }

    #[tokio::test]
    async fn the_reader_takes_frames_split_anywhere_and_pongs_and_closes_come_out() {
        let (server, mut client) = pair().await;
        let masked = |b0: u8, payload: &[u8]| {
            let mut v = vec![b0, 0x80 | u8::try_from(payload.len()).expect("short")];
            v.extend_from_slice(&[1, 2, 3, 4]);
            let mut p = payload.to_vec();
            frame::unmask(&mut p, [1, 2, 3, 4]);
            v.extend_from_slice(&p);
            v
        };
        let bytes = [
            masked(0x81, b"{\"type\":\"ping\"}"),
            masked(0x89, b"are you there"),
            masked(0x88, &1000u16.to_be_bytes()),
        ]
        .concat();
        // The first 3 bytes arrived with the upgrade request.
        let mut r = Reader::new(&server, &bytes[..3], 1024);
        let sending = tokio::spawn(async move {
            for chunk in bytes[3..].chunks(5) {
                client.write_all(chunk).await.expect("write");
                client.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
            client
        });
        assert!(matches!(r.next().await, Incoming::Text(t) if t.as_str() == "{\"type\":\"ping\"}"));
        assert!(matches!(r.next().await, Incoming::Ping(p) if &p[..] == b"are you there"));
        assert!(matches!(r.next().await, Incoming::CloseFrame(Some(1000))));
        drop(sending.await.expect("sender"));
        assert!(matches!(r.next().await, Incoming::Closed), "end of stream");
        assert_eq!(r.frames.held(), 0);
    }
}
