//! `chat-history`: the history service as its own process.

use chat_platform::config::EnvSource;

/// mimalloc: no per-allocation header and per-thread free lists; glibc's
/// malloc was an eighth of the gateway's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_platform::telemetry::init(&std::env::var("CHAT_LOG_FORMAT").unwrap_or_default());
    let source = EnvSource::load()?;
    let config = chat_history::Config::from_source(&source)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %config.listen, "chat-history listening");
    chat_history::run(config, listener, chat_platform::shutdown::on_signal()).await
}
