//! The system as separate processes: each service is its own binary
//! (`chat-auth`, `chat-gateway`, `chat-fanout`, `chat-history`,
//! `chat-presence`), as in a real deployment, so tests can run several
//! instances of each and SIGKILL, SIGTERM or restart any one of them.
//!
//! All instances share one data directory: the auth database and signing
//! key, and the history database (SQLite in WAL mode, which several
//! processes on one machine may share; production uses MongoDB).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use chat_testkit::{Role, free_port};

/// How long a started service may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Directory of the service binaries (`cargo build --bins` puts them there;
/// the test command builds them first). `CHAT_BIN_DIR` overrides.
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAT_BIN_DIR") {
        return PathBuf::from(p);
    }
    crate::chat_bin()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// One service process.
pub struct ServiceProcess {
    /// e.g. `gateway-1`.
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// Where its public HTTP endpoints (for a gateway, WebSockets) listen;
    /// for fanout, history and presence the same as `admin`.
    pub addr: SocketAddr,
    /// Where its ops endpoints (`/readyz`, `/metrics`) listen.
    pub admin: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    fn new(
        name: String,
        bin: &str,
        env: Vec<(String, String)>,
        (addr, admin): (SocketAddr, SocketAddr),
        dir: &Path,
    ) -> Self {
        Self {
            log: dir.join(format!("{name}.log")),
            name,
            bin: bin_dir().join(bin),
            env,
            addr,
            admin,
            child: None,
        }
    }

    /// Starts the process and waits until its `/readyz` answers 200.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if !self.bin.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` first (the test command does)",
                self.bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", self.bin.display()))?,
        );
        let http = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.admin);
        let end = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("{} exited with {status}: {}", self.name, self.log_tail());
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > end {
                bail!(
                    "{} not ready within {READY_WITHIN:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://<addr>`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://<addr>/ws` (gateways).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The end of its log (for failure messages), after the first
    /// `Error:` line (what a failed start printed before its backtrace).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        let error = log
            .lines()
            .find(|l| l.starts_with("Error:"))
            .map(|l| format!("{l}\n…\n"))
            .unwrap_or_default();
        format!("{error}{}", log.get(start..).unwrap_or_default())
    }

    /// SIGKILL: no shutdown work at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _reaped = c.wait();
        }
    }

    /// SIGSTOP: the process stays, but does nothing (a stalled instance).
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT after [`ServiceProcess::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let Some(c) = self.child.as_ref() else {
            bail!("{} is not running", self.name);
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for it to exit; returns its status.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let end = tokio::time::Instant::now() + grace;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > end {
                let _killed = c.kill();
                let _reaped = c.wait();
                bail!("{} did not exit within {grace:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fetches `/metrics` and returns the sum of every sample of `metric`
    /// (0 when absent).
    pub async fn metric(&self, metric: &str) -> anyhow::Result<f64> {
        let body = reqwest::get(format!("http://{}/metrics", self.admin))
            .await?
            .text()
            .await?;
        Ok(crate::metric_sum(&body, metric))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every service as its own process(es), on one NATS deployment.
pub struct Deployment {
    pub data: tempfile::TempDir,
    pub auth: ServiceProcess,
    pub gateways: Vec<ServiceProcess>,
    pub fanouts: Vec<ServiceProcess>,
    pub histories: Vec<ServiceProcess>,
    pub presences: Vec<ServiceProcess>,
}

impl Deployment {
    /// Starts auth once and `instances` of every other service against
    /// `nats_url` (comma-separated servers), with `extra` options for all.
    pub async fn start(
        nats_url: &str,
        instances: usize,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_sized(nats_url, instances, instances, extra).await
    }

    /// Like [`Deployment::start`], with `gateways` gateways and `instances`
    /// of each other service (e.g. many gateways to hold many connections).
    pub async fn start_sized(
        nats_url: &str,
        gateway_count: usize,
        instances: usize,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let dir = data.path();
        let d = dir.display();
        let mut common: Vec<(String, String)> = vec![
            ("CHAT_NATS_URL".into(), nats_url.into()),
            ("CHAT_GATEWAY_HEARTBEAT_MS".into(), "1000".into()),
            ("CHAT_PRESENCE_TTL_MS".into(), "5000".into()),
            ("CHAT_AUTH_DB".into(), format!("{d}/auth.db")),
            (
                "CHAT_AUTH_KEY_FILE".into(),
                format!("{d}/auth-signing-key.pem"),
            ),
            ("CHAT_AUTH_DEV_LOGIN".into(), "true".into()),
            ("CHAT_AUTH_RATE_IP_PER_MIN".into(), "1000000".into()),
            ("CHAT_AUTH_RATE_ACCOUNT_PER_MIN".into(), "1000000".into()),
            ("CHAT_HISTORY_DB".into(), format!("{d}/history.db")),
        ];
        for (k, v) in extra {
            common.retain(|(key, _)| key != k);
            common.push(((*k).into(), (*v).into()));
        }
        let with = |key: &str, addr: SocketAddr, more: &[(&str, String)]| {
            let mut env = common.clone();
            env.push((key.into(), addr.to_string()));
            env.extend(more.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
            env
        };

        // Gateways and auth have a public and an admin listener; the other
        // services only the admin one.
        // Each process knows only its own NATS login, as in production.
        let make = |name: String, bin: &str, key: &str, more: &[(&str, String)]| {
            let a = local_addr();
            let role = role_of(bin);
            let (admin, mut env) = match key.strip_suffix("_LISTEN") {
                Some(prefix @ ("CHAT_GATEWAY" | "CHAT_AUTH")) => {
                    let admin = local_addr();
                    let mut env = with(key, a, more);
                    env.push((format!("{prefix}_ADMIN_LISTEN"), admin.to_string()));
                    (admin, env)
                }
                _ => (a, with(key, a, more)),
            };
            env.extend(chat_testkit::service_env(role));
            ServiceProcess::new(name, bin, env, (a, admin), dir)
        };
        let mut auth = make("auth".into(), "chat-auth", "CHAT_AUTH_LISTEN", &[]);
        auth.start().await?;
        let upstream = [
            (
                "CHAT_GATEWAY_AUTH_UPSTREAM",
                format!("http://{}", auth.addr),
            ),
            (
                "CHAT_GATEWAY_JWKS_URL",
                format!("http://{}/.well-known/jwks.json", auth.addr),
            ),
        ];

        // Start order as in a deployment: history and presence first (the
        // gateway asks them), then fanout, then the gateways.
        let (mut histories, mut presences, mut fanouts, mut gateways) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 1..=gateway_count {
            gateways.push(make(
                format!("gateway-{i}"),
                "chat-gateway",
                "CHAT_GATEWAY_LISTEN",
                &upstream,
            ));
        }
        for i in 1..=instances {
            histories.push(make(
                format!("history-{i}"),
                "chat-history",
                "CHAT_HISTORY_LISTEN",
                &[],
            ));
            presences.push(make(
                format!("presence-{i}"),
                "chat-presence",
                "CHAT_PRESENCE_LISTEN",
                &[],
            ));
            fanouts.push(make(
                format!("fanout-{i}"),
                "chat-fanout",
                "CHAT_FANOUT_LISTEN",
                &[],
            ));
        }
        for p in histories
            .iter_mut()
            .chain(presences.iter_mut())
            .chain(fanouts.iter_mut())
            .chain(gateways.iter_mut())
        {
            p.start().await?;
        }
        Ok(Self {
            data,
            auth,
            gateways,
            fanouts,
            histories,
            presences,
        })
    }

    /// Every gateway's WebSocket URL.
    pub fn ws_urls(&self) -> Vec<String> {
        self.gateways.iter().map(ServiceProcess::ws_url).collect()
    }

    /// The history database every history instance shares.
    pub fn history_db(&self) -> PathBuf {
        self.data.path().join("history.db")
    }
}

/// The NATS role a service binary connects as.
fn role_of(bin: &str) -> Role {
    match bin {
        "chat-gateway" => Role::Gateway,
        "chat-fanout" => Role::Fanout,
        "chat-history" => Role::History,
        "chat-presence" => Role::Presence,
        _ => Role::Auth,
    }
}

/// A loopback address with a port that was free a moment ago. Services get
/// fixed ports so a restarted instance (and a load balancer in front of
/// it) keeps its address.
fn local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
