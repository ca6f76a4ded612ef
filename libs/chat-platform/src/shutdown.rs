//! The shutdown contract: one token per process, cancelled by SIGTERM or
//! ctrl-c; each service stops accepting, tells sessions why, drains NATS and
//! returns within its grace period.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Completes on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled when [`shutdown_signal`] completes.
pub fn on_signal() -> Shutdown {
    let token = Shutdown::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
    });
    token
}

/// Waits until `flag` is set (true) or `shutdown` (false).
pub async fn wait_until_set(flag: &std::sync::atomic::AtomicBool, shutdown: &Shutdown) -> bool {
    while !flag.load(std::sync::atomic::Ordering::Acquire) {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
    }
    true
}
