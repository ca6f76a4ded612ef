//! `chat`: all five services in one process (see the library for the
//! composition). Prints the URL to open. `chat nats-setup <dir>` writes the
//! NATS identities instead (see `chat::nats_setup`).

use chat_platform::config::EnvSource;

/// mimalloc: no per-allocation header and per-thread free lists; glibc's
/// malloc was an eighth of the gateway's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, dir] = args.as_slice()
        && cmd == "nats-setup"
    {
        let conf = chat::nats_setup::run(std::path::Path::new(dir))?;
        println!("{}", conf.display());
        return Ok(());
    }
    if !args.is_empty() {
        anyhow::bail!("usage: chat [nats-setup <dir>]");
    }
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
