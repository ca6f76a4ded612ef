//! The fanout service binary: config from the environment, then `run`.

use chat_platform::config::EnvSource;

/// mimalloc: no per-allocation header and per-thread free lists; glibc's
/// malloc was an eighth of the gateway's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let log_format = std::env::var("CHAT_LOG_FORMAT").unwrap_or_default();
    chat_platform::telemetry::init(&log_format);
    let source = EnvSource::load()?;
    let config = chat_fanout::Config::from_source(&source)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    chat_fanout::run(config, listener, chat_platform::shutdown::on_signal()).await
}
