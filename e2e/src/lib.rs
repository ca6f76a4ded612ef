//! End-to-end harness: the whole system against a real nats-server, either
//! in this test process (the same `chat::start` the all-in-one binary runs)
//! or as the real `chat` binary in a child process (for kill/restart tests).
//! Clients are real WebSockets; login goes through the gateway's `/auth`.

pub mod deploy;
pub mod lb;
pub mod load;
pub mod oidc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use chat_platform::config::MapSource;
use chat_testkit::{NatsServer, WsClient};
use serde_json::{Value, json};

/// Token issuer and audience the harness configures (the defaults).
pub const ISSUER: &str = "urn:chat:auth";
pub const AUDIENCE: &str = "chat";

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Login {
    pub token: String,
    pub user_id: String,
    /// The session's refresh token (dev login returns it in the body).
    pub refresh_token: String,
}

/// Dev login through `base` (the gateway's HTTP URL).
pub async fn login(base: &str, username: &str) -> anyhow::Result<Login> {
    let resp = reqwest::Client::new()
        .post(format!("{base}/auth/dev/login"))
        .json(&json!({ "username": username }))
        .send()
        .await
        .context("POST /auth/dev/login")?;
    let status = resp.status();
    let body: Value = resp.json().await.context("login reply")?;
    if !status.is_success() {
        bail!("login failed with {status}: {body}");
    }
    Ok(Login {
        token: body["access_token"]
            .as_str()
            .context("access_token")?
            .to_string(),
        user_id: body["user"]["id"].as_str().context("user.id")?.to_string(),
        refresh_token: body["refresh_token"]
            .as_str()
            .context("refresh_token")?
            .to_string(),
    })
}

/// The options every harness system uses, plus `extra`.
fn base_options(nats_url: &str, data: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut opts: Vec<(String, String)> = vec![
        ("CHAT_NATS_URL".into(), nats_url.into()),
        ("CHAT_DATA_DIR".into(), data.display().to_string()),
        ("CHAT_AUTH_DEV_LOGIN".into(), "true".into()),
        ("CHAT_GATEWAY_LISTEN".into(), "127.0.0.1:0".into()),
        ("CHAT_GATEWAY_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
        ("CHAT_GATEWAY_HEARTBEAT_MS".into(), "1000".into()),
        ("CHAT_PRESENCE_TTL_MS".into(), "5000".into()),
        // Tests sign in many users from one address; the limits' own
        // tests lower these.
        ("CHAT_AUTH_RATE_IP_PER_MIN".into(), "1000000".into()),
        ("CHAT_AUTH_RATE_ACCOUNT_PER_MIN".into(), "1000000".into()),
    ];
    opts.extend(chat_testkit::all_services_env());
    for (k, v) in extra {
        opts.retain(|(key, _)| key != k);
        opts.push(((*k).into(), (*v).into()));
    }
    opts
}

/// The options of a harness system on NATS at `nats_url` with its data in
/// `data` (for tests that start the `chat` binary themselves).
pub fn base_env(nats_url: &str, data: &Path) -> Vec<(String, String)> {
    base_options(nats_url, data, &[])
}

/// The whole system in this process.
pub struct System {
    /// The NATS server the harness started (none when given a cluster).
    pub nats: Option<NatsServer>,
    pub data: tempfile::TempDir,
    pub gateway: SocketAddr,
    /// The gateway's admin listener (probes, `/metrics`).
    pub admin: SocketAddr,
    shutdown: chat_platform::Shutdown,
    running: Option<chat::Running>,
}

impl System {
    /// Starts nats-server and all five services with default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts with extra `CHAT_…` options (overriding the harness's).
    pub async fn start_with(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let url = nats.url();
        Self::start_on(Some(nats), &url, extra).await
    }

    /// Starts the services against NATS at `nats_url` (comma-separated
    /// servers, e.g. a [`chat_testkit::NatsCluster`]).
    pub async fn start_on(
        nats: Option<NatsServer>,
        nats_url: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        chat_platform::telemetry::init_for_tests();
        let data = tempfile::tempdir()?;
        let mut src = MapSource::new();
        for (k, v) in base_options(nats_url, data.path(), extra) {
            src = src.with(&k, v);
        }
        let shutdown = chat_platform::Shutdown::new();
        let mut running = chat::start(Box::new(src), shutdown.clone()).await?;
        running.wait_ready(Duration::from_secs(60)).await?;
        Ok(Self {
            nats,
            data,
            gateway: running.gateway_addr,
            admin: running.admin_addr,
            shutdown,
            running: Some(running),
        })
    }

    /// `http://127.0.0.1:<port>`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// `ws://127.0.0.1:<port>/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway)
    }

    /// `http://127.0.0.1:<admin port>`: probes and `/metrics`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The sum of every sample of `metric` on the admin listener.
    pub async fn metric(&self, metric: &str) -> anyhow::Result<f64> {
        let body = reqwest::get(format!("{}/metrics", self.admin_url()))
            .await?
            .text()
            .await?;
        Ok(metric_sum(&body, metric))
    }

    /// Logs `username` in.
    pub async fn login(&self, username: &str) -> anyhow::Result<Login> {
        login(&self.http_url(), username).await
    }

    /// Logs in and opens an authenticated WebSocket.
    pub async fn client(&self, username: &str) -> anyhow::Result<(WsClient, Login)> {
        let l = self.login(username).await?;
        let (c, _welcome) = WsClient::connect_as(&self.ws_url(), &l.token).await?;
        Ok((c, l))
    }

    /// The auth service's signing key file (to mint expired tokens in tests).
    pub fn signing_key_path(&self) -> PathBuf {
        self.data.path().join("auth-signing-key.pem")
    }

    /// Stops every service (graceful shutdown) and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .context("services did not stop within 30s")??;
        }
        Ok(())
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until the gateway's `/readyz` answers 200.
pub async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > end {
            bail!("{base}/readyz not ready within 30s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of the all-in-one binary built by the test command
/// (the test command builds every binary before the tests); `CHAT_BIN` overrides.
pub fn chat_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/chat")
}

/// The real `chat` binary in a child process, killed on drop.
pub struct ChatProcess {
    child: Option<Child>,
    nats_url: String,
    data: PathBuf,
    /// The gateway's port (read from the URL the binary prints).
    pub port: u16,
}

impl ChatProcess {
    /// Starts the binary on a fresh port with data in `data`.
    pub async fn start(nats_url: &str, data: &Path) -> anyhow::Result<Self> {
        let mut p = Self {
            child: None,
            nats_url: nats_url.into(),
            data: data.into(),
            port: 0,
        };
        p.spawn().await?;
        Ok(p)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = chat_bin();
        if !bin.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` first (the test command does)",
                bin.display()
            );
        }
        let mut cmd = Command::new(&bin);
        for (k, v) in base_options(&self.nats_url, &self.data, &[]) {
            cmd.env(k, v);
        }
        // Port 0: the binary binds a free port itself (no race with other
        // tests) and prints the URL, which tells us the port.
        cmd.env("CHAT_GATEWAY_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(
                self.data.join("chat.stdout"),
            )?))
            .stderr(Stdio::from(std::fs::File::create(
                self.data.join("chat.log"),
            )?));
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", bin.display()))?,
        );
        // The binary prints the URL once every service is ready.
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::fs::read_to_string(self.data.join("chat.stdout")).unwrap_or_default();
            if let Some(port) = printed_port(&out) {
                self.port = port;
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.data.join("chat.log")).unwrap_or_default();
                bail!("chat exited with {status}: {log}");
            }
            if tokio::time::Instant::now() > end {
                bail!("chat did not become ready within 60s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// SIGKILL: no graceful shutdown at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _reaped = c.wait();
        }
    }

    /// Starts the binary again on the same data (and a new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for ChatProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port in `chat: open http://127.0.0.1:<port>/`.
fn printed_port(stdout: &str) -> Option<u16> {
    let rest = stdout.split("chat: open http://").nth(1)?;
    let hostport = rest.split('/').next()?;
    hostport.rsplit(':').next()?.parse().ok()
}

/// Sends a message and returns its ack (skipping other frames).
pub async fn send(c: &mut WsClient, room: &str, cmid: &str, text: &str) -> anyhow::Result<Value> {
    send_frame(
        c,
        json!({"type": "send", "id": cmid, "room": room, "text": text}),
    )
    .await
}

/// Re-sends `cmid` marked as a retry (`"retry": true`) and returns the ack
/// or error.
pub async fn resend(c: &mut WsClient, room: &str, cmid: &str, text: &str) -> anyhow::Result<Value> {
    send_frame(
        c,
        json!({"type": "send", "id": cmid, "room": room, "text": text, "retry": true}),
    )
    .await
}

/// Sends a `send` frame and returns the ack or error for its id.
async fn send_frame(c: &mut WsClient, frame: Value) -> anyhow::Result<Value> {
    let cmid = frame["id"].clone();
    c.send_json(&frame).await?;
    c.recv_where(|v| (v["type"] == "ack" || v["type"] == "error") && v["id"] == cmid)
        .await
}

/// Creates a room and returns its id.
pub async fn create_room(c: &mut WsClient, name: &str) -> anyhow::Result<String> {
    c.send_json(&json!({"type": "room.create", "id": "create", "name": name}))
        .await?;
    let r = c.recv_where(|v| v["id"] == "create").await?;
    r["room"]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("room.create reply: {r}"))
}

/// Joins a room.
pub async fn join_room(c: &mut WsClient, room: &str) -> anyhow::Result<Value> {
    c.send_json(&json!({"type": "room.join", "id": "join", "room": room}))
        .await?;
    c.recv_where(|v| v["id"] == "join").await
}

/// Joins `room` as `token`'s user over a short connection, closed at once:
/// the user is a member and (again) offline.
pub async fn join_briefly(ws_url: &str, token: &str, room: &str) -> anyhow::Result<()> {
    let (mut c, _) = WsClient::connect_as(ws_url, token).await?;
    join_room(&mut c, room).await?;
    Ok(())
}

/// Asks for a history page.
pub async fn history(c: &mut WsClient, room: &str, query: Value) -> anyhow::Result<Value> {
    let mut q = json!({"type": "history", "id": "hist", "room": room});
    if let (Some(q), Some(extra)) = (q.as_object_mut(), query.as_object()) {
        q.extend(extra.clone());
    }
    c.send_json(&q).await?;
    c.recv_where(|v| v["id"] == "hist").await
}

/// Sum of every sample of `metric` in a Prometheus text exposition (0 when
/// absent), whatever its labels.
pub fn metric_sum(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let base = name.split('{').next()?;
            (base == metric).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
