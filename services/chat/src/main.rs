//! `chat`: all five services in one process (see the library for the
//! composition). Prints the URL to open.

use chat_platform::config::EnvSource;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_platform::telemetry::init(&std::env::var("CHAT_LOG_FORMAT").unwrap_or_default());
    let mut running = chat::start(
        Box::new(EnvSource::load()?),
        chat_platform::shutdown::on_signal(),
    )
    .await?;
    running
        .wait_ready(std::time::Duration::from_secs(60))
        .await?;
    let url = running.public_url.clone();
    tracing::info!(url = %url, admin = %running.admin_addr, "chat is up");
    println!(
        "chat: metrics and probes on http://{}/ (admin, keep private)",
        running.admin_addr
    );
    // The last line, for people and scripts: the URL to open.
    println!("chat: open {url}/");
    running.wait().await
}
