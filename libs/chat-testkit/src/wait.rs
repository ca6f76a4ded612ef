//! Waiting on conditions with deadlines: the only synchronisation tests use.

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut backoff = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `deadline`.
pub async fn within<T>(deadline: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}
