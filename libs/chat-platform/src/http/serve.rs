//! Serving HTTP/1.1 with explicit bounds: at most `max_connections` sockets
//! at once (counted from accept, before any request, and still counted
//! after a WebSocket upgrade while the session holds its [`ConnSlot`]), a
//! header-read timeout (a half-sent request, or a keep-alive connection that
//! never sends its next one, is closed), a cap on header bytes, and
//! graceful shutdown that lets in-flight requests finish.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::Shutdown;

/// Bounds of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Name in metrics and logs (`gateway`, `auth`, `admin`).
    pub name: &'static str,
    /// Sockets open at once, including ones that have not sent a request
    /// yet and upgraded ones whose slot a session holds. Beyond it a new
    /// socket gets `503` and is closed.
    pub max_connections: usize,
    /// Longest time a client may take to send a request's headers, and the
    /// longest a kept-alive connection may wait for its next request.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger gets `431`.
    pub max_header_bytes: usize,
}

impl ServeOptions {
    /// Defaults for an ops (admin) listener: few clients, small requests.
    pub fn admin() -> Self {
        Self {
            name: "admin",
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Most sockets being answered `503` at once; beyond it, sockets over the
/// connection limit are closed without an answer.
const MAX_REJECTING: usize = 256;
/// How long a rejected socket is read (and discarded) after its `503`, so
/// the kernel does not reset the connection before the client reads it.
const REJECT_LINGER: Duration = Duration::from_millis(500);
const REJECT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// A socket's place under the connection limit. Every request carries it
/// (as a request extension); a handler that takes the connection over (a
/// WebSocket upgrade) takes the permit with [`ConnSlot::take`] and holds it
/// for as long as it uses the socket. Otherwise the slot is freed when the
/// HTTP connection ends.
#[derive(Clone, Debug)]
pub struct ConnSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnSlot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }

    /// The permit, once (`None` if already taken).
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then waits for in-flight
/// requests (upgraded connections are their handlers' business).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    opts: &ServeOptions,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let conns = TaskTracker::new();
    let name = opts.name;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("chat_http_connections_rejected_total", "listener" => name)
                .increment(1);
            reject(tcp, &rejecting);
            continue;
        };
        // Frames and replies are written whole; Nagle only delays them.
        let _nodelay = tcp.set_nodelay(true);
        conns.spawn(connection(
            tcp,
            peer,
            ConnSlot::new(permit),
            router.clone(),
            shutdown.clone(),
            opts.clone(),
        ));
    }
    conns.close();
    conns.wait().await;
    Ok(())
}

/// One HTTP/1.1 connection, with upgrades.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    router: Router,
    shutdown: Shutdown,
    opts: ServeOptions,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(slot.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192));
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!("chat_http_header_timeouts_total", "listener" => opts.name)
                .increment(1);
        }
        tracing::debug!(error = %e, %peer, listener = opts.name, "connection ended with an error");
    }
}

/// Answers `503` to a socket over the limit, if few are being answered;
/// otherwise just closes it.
fn reject(mut tcp: TcpStream, rejecting: &Arc<Semaphore>) {
    let Ok(permit) = rejecting.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let answer = async {
            tcp.write_all(REJECT_RESPONSE).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _answered = tokio::time::timeout(REJECT_LINGER, answer).await;
        drop(permit);
    });
}
