//! The all-in-one composition: all five services in one process, for a laptop or a small
//! deployment. Each service runs exactly as its own binary would (same
//! `run`, same config); this only picks local defaults: data under
//! `CHAT_DATA_DIR`, internal services on loopback ports, and the gateway
//! forwarding `/auth/*` to the in-process auth service.

pub mod nats_setup;

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use chat_platform::Shutdown;
use chat_platform::config::Source;
use chat_platform::http::Listeners;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Environment (or any source) first, then the all-in-one's defaults.
struct Layered {
    env: Box<dyn Source>,
    defaults: HashMap<String, String>,
}

impl Source for Layered {
    fn get(&self, key: &str) -> Option<String> {
        self.env
            .get(key)
            .or_else(|| self.defaults.get(key).cloned())
    }
}

async fn bind(src: &dyn Source, key: &str, default: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = src
        .get(key)
        .unwrap_or_else(|| default.to_string())
        .parse()
        .with_context(|| format!("invalid address in {key}"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {key}={addr}"))
}

/// The running services.
pub struct Running {
    /// Where the gateway (and the web client) listens.
    pub gateway_addr: SocketAddr,
    /// The gateway's admin listener: probes and `/metrics` (of every
    /// service: they share the process's metrics registry).
    pub admin_addr: SocketAddr,
    /// The URL people open (`CHAT_GATEWAY_PUBLIC_URL`, else the gateway's
    /// address), without a trailing slash.
    pub public_url: String,
    /// Where the auth service listens.
    pub auth_addr: SocketAddr,
    /// Every service's ops address (for `/readyz`).
    pub services: Vec<(&'static str, SocketAddr)>,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: Shutdown,
}

/// Binds every listener, then starts the five services; they stop when
/// `shutdown` is cancelled (or when any of them fails).
pub async fn start(env: Box<dyn Source>, shutdown: Shutdown) -> anyhow::Result<Running> {
    let data = env.get("CHAT_DATA_DIR").unwrap_or_else(|| "./data".into());
    std::fs::create_dir_all(&data).with_context(|| format!("create CHAT_DATA_DIR={data}"))?;

    let auth_l = bind(env.as_ref(), "CHAT_AUTH_LISTEN", "127.0.0.1:0").await?;
    let auth_admin_l = bind(env.as_ref(), "CHAT_AUTH_ADMIN_LISTEN", "127.0.0.1:0").await?;
    let auth_addr = auth_l.local_addr()?;
    let mut defaults = HashMap::new();
    for (k, v) in [
        ("CHAT_AUTH_DB", format!("{data}/auth.db")),
        ("CHAT_AUTH_KEY_FILE", format!("{data}/auth-signing-key.pem")),
        ("CHAT_HISTORY_DB", format!("{data}/history.db")),
        ("CHAT_GATEWAY_AUTH_UPSTREAM", format!("http://{auth_addr}")),
        (
            "CHAT_GATEWAY_JWKS_URL",
            format!("http://{auth_addr}/.well-known/jwks.json"),
        ),
    ] {
        defaults.insert(k.to_string(), v);
    }
    let src = Layered { env, defaults };

    let auth = chat_auth::Config::from_source(&src)?;
    let gateway = chat_gateway::Config::from_source(&src)?;
    let fanout = chat_fanout::Config::from_source(&src)?;
    let history = chat_history::Config::from_source(&src)?;
    let presence = chat_presence::Config::from_source(&src)?;

    let gateway_l = bind(&src, "CHAT_GATEWAY_LISTEN", "127.0.0.1:8080").await?;
    let gateway_admin_l = bind(&src, "CHAT_GATEWAY_ADMIN_LISTEN", "127.0.0.1:9080").await?;
    let fanout_l = bind(&src, "CHAT_FANOUT_LISTEN", "127.0.0.1:0").await?;
    let history_l = bind(&src, "CHAT_HISTORY_LISTEN", "127.0.0.1:0").await?;
    let presence_l = bind(&src, "CHAT_PRESENCE_LISTEN", "127.0.0.1:0").await?;
    let gateway_addr = gateway_l.local_addr()?;
    let admin_addr = gateway_admin_l.local_addr()?;
    let public_url = chat_gateway::origin::public_url(gateway.public_url.as_deref(), gateway_addr);
    let services = vec![
        ("auth", auth_admin_l.local_addr()?),
        ("history", history_l.local_addr()?),
        ("presence", presence_l.local_addr()?),
        ("fanout", fanout_l.local_addr()?),
        ("gateway", admin_addr),
    ];

    let mut tasks = JoinSet::new();
    let sd = shutdown.clone();
    tasks.spawn(async move { ("history", chat_history::run(history, history_l, sd).await) });
    let sd = shutdown.clone();
    tasks.spawn(async move {
        (
            "presence",
            chat_presence::run(presence, presence_l, sd).await,
        )
    });
    let sd = shutdown.clone();
    tasks.spawn(async move { ("fanout", chat_fanout::run(fanout, fanout_l, sd).await) });
    let sd = shutdown.clone();
    let listeners = Listeners {
        public: auth_l,
        admin: auth_admin_l,
    };
    tasks.spawn(async move { ("auth", chat_auth::run(auth, listeners, sd).await) });
    let sd = shutdown.clone();
    let listeners = Listeners {
        public: gateway_l,
        admin: gateway_admin_l,
    };
    tasks.spawn(async move { ("gateway", chat_gateway::run(gateway, listeners, sd).await) });
    Ok(Running {
        gateway_addr,
        admin_addr,
        public_url,
        auth_addr,
        services,
        tasks,
        shutdown,
    })
}

impl Running {
    /// Waits until every service answers `/readyz` with 200, or `timeout`.
    pub async fn wait_ready(&mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let end = tokio::time::Instant::now() + timeout;
        for (name, addr) in &self.services {
            loop {
                let (ok, why) = match http.get(format!("http://{addr}/readyz")).send().await {
                    Ok(r) => (r.status().is_success(), r.text().await.unwrap_or_default()),
                    Err(e) => (false, e.to_string()),
                };
                if ok {
                    break;
                }
                // A service that already stopped will never be ready.
                if let Some(joined) = self.tasks.try_join_next() {
                    let (stopped, result) = joined.context("service task panicked")?;
                    self.shutdown.cancel();
                    result.with_context(|| format!("{stopped} stopped while starting"))?;
                    anyhow::bail!("{stopped} stopped while starting");
                }
                if tokio::time::Instant::now() > end {
                    anyhow::bail!(
                        "{name} not ready within {timeout:?} (http://{addr}/readyz): {}",
                        why.trim()
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// Waits until every service has stopped; the first failure is returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failed = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = joined.context("service task panicked")?;
            match result {
                Ok(()) => tracing::info!(service = name, "stopped"),
                Err(e) => {
                    tracing::error!(service = name, error = %format!("{e:#}"), "failed; stopping the others");
                    failed.get_or_insert_with(|| e.context(name));
                }
            }
            // One service ending ends them all.
            self.shutdown.cancel();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
