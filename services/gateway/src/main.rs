//! `chat-gateway`: reads config, binds, runs until SIGTERM/ctrl-c.

use anyhow::Context;
use chat_platform::config::EnvSource;

/// mimalloc: no per-allocation header and per-thread free lists; glibc's
/// malloc was an eighth of the gateway's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_platform::telemetry::init(&std::env::var("CHAT_LOG_FORMAT").unwrap_or_default());
    let config = chat_gateway::Config::from_source(&EnvSource::load()?)?;
    let public = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind CHAT_GATEWAY_LISTEN={}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind CHAT_GATEWAY_ADMIN_LISTEN={}", config.admin_listen))?;
    let listeners = chat_platform::http::Listeners { public, admin };
    chat_gateway::run(config, listeners, chat_platform::shutdown::on_signal()).await
}
