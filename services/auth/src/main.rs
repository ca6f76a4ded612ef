//! The auth service binary: config from the environment, then `run`; or
//! `chat-auth service-account …` to manage service accounts (`cli.rs`).

use anyhow::Context as _;
use chat_auth::{Config, run};
use chat_platform::config::EnvSource;

/// mimalloc: no per-allocation header and per-thread free lists; glibc's
/// malloc was an eighth of the gateway's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let format = std::env::var("CHAT_LOG_FORMAT").unwrap_or_default();
    chat_platform::telemetry::init(&format);
    let source = EnvSource::load()?;
    let config = Config::from_source(&source)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((first, rest)) = args.split_first() {
        if first == "service-account" {
            return chat_auth::cli::run(rest, &config).await;
        }
        anyhow::bail!("usage: chat-auth [service-account …]");
    }
    let public = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (CHAT_AUTH_LISTEN)", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding {} (CHAT_AUTH_ADMIN_LISTEN)", config.admin_listen))?;
    let listeners = chat_platform::http::Listeners { public, admin };
    run(config, listeners, chat_platform::shutdown::on_signal()).await
}
