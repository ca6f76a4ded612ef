//! A TCP link that can be cut: a loopback proxy in front of one address.
//! Cutting it closes every connection through it and refuses new ones
//! (accepted and closed at once) until it is restored — a network partition
//! of that one link, without root or network namespaces.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generation of the link: cancelled when the link is cut.
#[derive(Default)]
struct State {
    cut: bool,
    generation: CancellationToken,
}

/// A cuttable proxy `127.0.0.1:<port>` → `target`; stops on drop.
pub struct Link {
    /// Where to connect to go through the link.
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts forwarding from a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let generation = {
                    let s = lock(&st);
                    if s.cut {
                        // Partitioned: the connection goes nowhere.
                        drop(inbound);
                        continue;
                    }
                    s.generation.clone()
                };
                tokio::spawn(pipe(inbound, target, generation));
            }
        });
        Ok(Self { port, state, task })
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub fn cut(&self) {
        let mut s = lock(&self.state);
        s.cut = true;
        s.generation.cancel();
        s.generation = CancellationToken::new();
    }

    /// Restores the link.
    pub fn restore(&self) {
        lock(&self.state).cut = false;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Copies both ways until either side closes or the link is cut.
async fn pipe(mut inbound: TcpStream, target: SocketAddr, generation: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = generation.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
