//! NATS connection setup shared by services.

use std::time::Duration;

use crate::config::Common;

/// Failure to reach NATS at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {reason}")]
pub struct ConnectError {
    pub url: String,
    pub reason: String,
}

/// Connects with the service's name, retrying forever on later disconnects.
/// The first connection must succeed within `timeout`.
pub async fn connect(
    common: &Common,
    name: &str,
    timeout: Duration,
) -> Result<async_nats::Client, ConnectError> {
    let err = |reason: String| ConnectError {
        url: common.nats_url.clone(),
        reason,
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                // Permission violations arrive here: an operator must see them.
                async_nats::Event::ServerError(e) => {
                    tracing::error!(error = %e, "nats server error")
                }
                other => tracing::info!(event = %other, "nats event"),
            }
        });
    if let Some(login) = &common.nats_login {
        // Each identity may only read its own inboxes (ADR 0006).
        opts = opts
            .user_and_password(login.user.clone(), login.password.expose().to_string())
            .custom_inbox_prefix(format!("_INBOX.{}", login.user));
    }
    if let Some(creds) = &common.nats_creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| err(format!("credentials file: {e}")))?;
    }
    // CHAT_NATS_URL lists servers comma-separated; the client takes a list.
    let servers: Vec<String> = common
        .nats_url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let client = opts
        .connect(servers.as_slice())
        .await
        .map_err(|e| err(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(err(format!("not connected within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(client)
}

/// Waits until the server has processed everything this client sent so far
/// (in particular its subscriptions), by a request/reply round trip on the
/// same connection: `flush` only writes to the socket. Call it before
/// reporting ready, so no message sent afterwards misses a subscription.
pub async fn round_trip(client: &async_nats::Client) -> Result<(), async_nats::Error> {
    let subject = format!("_CHAT.SYNC.{}", client.new_inbox().replace('.', "_"));
    match client.request(subject, bytes::Bytes::new()).await {
        Ok(_) => Ok(()),
        // Nobody listens on that subject: the server's answer is the round trip.
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Handles every message of `sub` in arrival order until `shutdown`; then
/// drains the subscription, so messages the server already sent are still
/// handled, and returns when the drain ends.
pub async fn serve_until_drained<F, Fut>(
    mut sub: async_nats::Subscriber,
    shutdown: &crate::Shutdown,
    what: &str,
    mut handle: F,
) where
    F: FnMut(async_nats::Message) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let mut draining = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                if let Err(e) = sub.drain().await {
                    tracing::warn!(error = %e, "draining {what} failed");
                    return;
                }
            }
            msg = sub.next() => match msg {
                Some(msg) => handle(msg).await,
                None => return,
            },
        }
    }
}
