//! Measures the room append path (`RoomLog::append` of a message) against
//! real nats-servers it starts itself, and prints a Markdown table:
//!
//! - the cost of `jetstream { sync_interval: always }` versus the server
//!   default (fsync every 2 min), on one node and on a 3-node R3 cluster;
//! - the cost of the per-room sequence under contention: 16 writers with
//!   separate `RoomLog`s (like 16 gateways) into one room, versus 16 rooms,
//!   versus one writer.
//!
//! Every writer has its own NATS connection and its own `RoomLog` unless the
//! row says "shared" (one connection and one `RoomLog` for all writers, i.e.
//! one gateway). On the cluster, writers connect to the three nodes in
//! turn. A writer appends back to back: the next append starts when the
//! previous one is acknowledged. Conflicts are counted from RoomLog's
//! `chat_room_append_conflicts_total` counter. After each scenario the
//! example checks on the stream leader that every room holds exactly the
//! messages reported stored, numbered 1..n.
//!
//! ```text
//! cargo run --release -p chat-stream --example append_cost [-- SECONDS] [--no-cluster]
//! ```
//!
//! SECONDS is the measured time per scenario (default 10), after a 2 s
//! warm-up. The nats-server binary is `CHAT_NATS_SERVER`, else
//! `.local/pip/bin/nats-server` in the workspace, else `nats-server` on PATH.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::stream::Stream;
use chat_core::events::EventBody;
use chat_core::ids::{ClientMsgId, RoomId, UserId};
use chat_core::names::{self, EventKind, headers};
use chat_stream::setup::{self, StreamSettings};
use chat_stream::{AppendError, RoomLog};
use futures::StreamExt as _;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const WARM_UP: Duration = Duration::from_secs(2);
const TEXT: &str = "benchmark message, about the size of a short chat line: 0123456789";
const CONFLICTS: &str = "chat_room_append_conflicts_total";

// ---------------------------------------------------------------- metrics

/// Records RoomLog's conflict counter; every other metric is dropped.
struct ConflictRecorder(Arc<AtomicU64>);

impl Recorder for ConflictRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == CONFLICTS {
            Counter::from_arc(self.0.clone())
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

// ---------------------------------------------------------------- servers

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAT_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.local/pip/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// One nats-server started from a generated config file; SIGKILLed on drop.
struct Server {
    child: Child,
    port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// Starts `nodes` servers (3: a routed cluster) and waits until a client
/// can reach JetStream on each.
async fn start_servers(nodes: usize, sync_always: bool) -> anyhow::Result<Vec<Server>> {
    let mut last = None;
    // A port can be taken between choosing and binding it: try again.
    for _ in 0..3 {
        match start_servers_once(nodes, sync_always).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
}

async fn start_servers_once(nodes: usize, sync_always: bool) -> anyhow::Result<Vec<Server>> {
    let cluster_ports = (0..nodes)
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()?;
    let mut servers = Vec::new();
    for i in 0..nodes {
        let dir = tempfile::Builder::new().prefix("append-cost-").tempdir()?;
        let port = free_port()?;
        let http_port = free_port()?;
        let mut conf = String::new();
        writeln!(conf, "server_name: n{i}")?;
        writeln!(conf, "listen: 127.0.0.1:{port}")?;
        writeln!(conf, "http: 127.0.0.1:{http_port}")?;
        writeln!(conf, "jetstream {{")?;
        writeln!(conf, "  store_dir: {:?}", dir.path().join("js"))?;
        if sync_always {
            writeln!(conf, "  sync_interval: always")?;
        }
        writeln!(conf, "}}")?;
        if nodes > 1 {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            writeln!(conf, "cluster {{")?;
            writeln!(conf, "  name: bench")?;
            writeln!(conf, "  listen: 127.0.0.1:{}", cluster_ports[i])?;
            writeln!(conf, "  routes: [{}]", routes.join(", "))?;
            writeln!(conf, "}}")?;
        }
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {:?} (set CHAT_NATS_SERVER)", nats_server_bin()))?;
        servers.push(Server {
            child,
            port,
            http_port,
            dir,
        });
    }
    for s in &mut servers {
        wait_ready(s).await?;
        let reported = sync_always_reported(s.http_port).await?;
        if reported != sync_always {
            bail!("server on {} reports sync_always={reported}", s.port);
        }
    }
    Ok(servers)
}

async fn wait_ready(s: &mut Server) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = s.child.try_wait() {
            bail!("nats-server exited with {status}: {}", s.log());
        }
        if let Ok(Ok(nc)) =
            tokio::time::timeout(Duration::from_secs(1), async_nats::connect(s.url())).await
        {
            let js = async_nats::jetstream::new(nc);
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), js.query_account()).await
            {
                return Ok(());
            }
        }
        if Instant::now() > end {
            bail!("nats-server on {} not ready in 20s: {}", s.port, s.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server's `/varz` says it fsyncs every write.
async fn sync_always_reported(http_port: u16) -> anyhow::Result<bool> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await?;
    conn.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(compact.contains("\"sync_always\":true"))
}

// ---------------------------------------------------------------- scenarios

struct Scenario {
    name: &'static str,
    nodes: usize,
    sync_always: bool,
    writers: usize,
    /// All writers append to one room (else one room each).
    one_room: bool,
    /// One connection and RoomLog for all writers (else one each).
    shared_log: bool,
}

#[derive(Default)]
struct WriterResult {
    /// Latencies of successful appends started in the measured window.
    latencies: Vec<Duration>,
    /// This writer's successful, non-duplicate appends (warm-up included).
    stored: u64,
    duplicates: u64,
    gave_up: u64,
    /// Other failed appends, by error text.
    errors: BTreeMap<String, u64>,
}

struct Row {
    name: &'static str,
    nodes: usize,
    sync_always: bool,
    writers: usize,
    rooms: usize,
    logs: &'static str,
    msgs_per_s: f64,
    p50: Duration,
    p99: Duration,
    conflicts_per_msg: f64,
    gave_up: u64,
    errors: BTreeMap<String, u64>,
}

async fn run(scn: &Scenario, secs: u64, conflicts: &AtomicU64) -> anyhow::Result<Row> {
    let servers = start_servers(scn.nodes, scn.sync_always).await?;
    let settings = StreamSettings {
        replicas: scn.nodes,
        ..Default::default()
    };
    // Create the stream once (an R3 stream waits for the cluster's leaders).
    {
        let nc = async_nats::connect(servers[0].url()).await?;
        let js = async_nats::jetstream::new(nc);
        setup::room_stream(&js, &settings).await?;
    }
    let mut logs = Vec::new();
    let log_count = if scn.shared_log { 1 } else { scn.writers };
    for i in 0..log_count {
        let nc = async_nats::connect(servers[i % servers.len()].url()).await?;
        let js = async_nats::jetstream::new(nc);
        let stream = setup::room_stream(&js, &settings).await?;
        logs.push(RoomLog::new(js, stream));
    }
    // Scenario-specific room names, so rows never share a room.
    let room_of = |w: usize| -> anyhow::Result<RoomId> {
        let n = if scn.one_room { 0 } else { w };
        Ok(RoomId::parse(format!("{}-r{n}", scn.name))?)
    };

    let start = Instant::now();
    let warm_end = start + WARM_UP;
    let end = warm_end + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..scn.writers {
        let log = logs[w % logs.len()].clone();
        let room = room_of(w)?;
        let user = UserId::parse(format!("u{w}"))?;
        tasks.push(tokio::spawn(async move {
            let mut r = WriterResult::default();
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                n += 1;
                let cmid = match ClientMsgId::parse(format!("c{w}-{n}")) {
                    Ok(c) => c,
                    Err(e) => {
                        *r.errors.entry(e.to_string()).or_default() += 1;
                        break;
                    }
                };
                let dedup = format!("{room}.{user}.{cmid}");
                let body = EventBody::Msg {
                    cmid,
                    text: TEXT.into(),
                };
                let res = log.append(&room, &user, body, Some(&dedup)).await;
                let dt = t0.elapsed();
                match res {
                    Ok(a) if a.duplicate => r.duplicates += 1,
                    Ok(_) => {
                        r.stored += 1;
                        if t0 >= warm_end {
                            r.latencies.push(dt);
                        }
                    }
                    Err(AppendError::Contention) => r.gave_up += 1,
                    Err(e) => *r.errors.entry(e.to_string()).or_default() += 1,
                }
            }
            (room, r)
        }));
    }
    tokio::time::sleep_until(warm_end).await;
    let c0 = conflicts.load(Ordering::Relaxed);
    tokio::time::sleep_until(end).await;
    let c1 = conflicts.load(Ordering::Relaxed);

    let mut latencies = Vec::new();
    let mut stored_per_room = BTreeMap::<RoomId, u64>::new();
    let mut gave_up = 0;
    let mut errors = BTreeMap::<String, u64>::new();
    for t in tasks {
        let (room, r) = t.await?;
        if r.duplicates > 0 {
            eprintln!("{}: {} unexpected duplicates", scn.name, r.duplicates);
        }
        gave_up += r.gave_up;
        for (e, n) in r.errors {
            *errors.entry(e).or_default() += n;
        }
        *stored_per_room.entry(room).or_default() += r.stored;
        latencies.extend(r.latencies);
    }
    for (room, stored) in &stored_per_room {
        check_room(logs[0].stream(), room, *stored)
            .await
            .with_context(|| format!("{}: room {room}", scn.name))?;
        // RoomLog reads the tail with a direct get, which any replica may
        // answer; note when that read lags the leader.
        let direct = logs[0].last_seq(room).await?;
        if direct != *stored {
            eprintln!(
                "{}: direct get of room {room}'s tail said seq {direct}, the leader {stored}",
                scn.name
            );
        }
    }
    drop(logs);
    drop(servers);

    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let measured = latencies.len() as f64;
    Ok(Row {
        name: scn.name,
        nodes: scn.nodes,
        sync_always: scn.sync_always,
        writers: scn.writers,
        rooms: stored_per_room.len(),
        logs: if scn.shared_log { "1 shared" } else { "1 each" },
        msgs_per_s: measured / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        conflicts_per_msg: if measured > 0.0 {
            (c1 - c0) as f64 / measured
        } else {
            0.0
        },
        gave_up,
        errors,
    })
}

/// Checks on the stream leader that `room` holds exactly the `stored`
/// messages its writers were told were stored, numbered without gaps: the
/// subject's message count and the last message's `Chat-Seq` both equal it.
async fn check_room(stream: &Stream, room: &RoomId, stored: u64) -> anyhow::Result<()> {
    let subject = names::room_subject(room, EventKind::Msg);
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .context("last message from the leader")?;
    let last_seq: u64 = last
        .headers
        .get(headers::ROOM_SEQ)
        .context("no Chat-Seq header")?
        .as_str()
        .parse()?;
    let mut count = 0;
    let mut subjects = stream.info_with_subjects(&subject).await?;
    while let Some(entry) = subjects.next().await {
        let (s, n) = entry?;
        if s == subject {
            count = n as u64;
        }
    }
    if last_seq != stored || count != stored {
        bail!(
            "{stored} appends stored, but the subject holds {count} messages ending at seq {last_seq}"
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut secs = 10u64;
    let mut cluster = true;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-cluster" => cluster = false,
            s => {
                secs = s
                    .parse()
                    .context("usage: append_cost [SECONDS] [--no-cluster]")?
            }
        }
    }
    let conflicts = Arc::new(AtomicU64::new(0));
    metrics::set_global_recorder(ConflictRecorder(conflicts.clone()))
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;

    let one = |name, nodes, sync_always, writers, one_room, shared_log| Scenario {
        name,
        nodes,
        sync_always,
        writers,
        one_room,
        shared_log,
    };
    let mut scenarios = vec![
        one("a-16rooms", 1, false, 16, false, false),
        one("b-16rooms-sync", 1, true, 16, false, false),
        one("a1-1writer", 1, false, 1, true, false),
        one("b1-1writer-sync", 1, true, 1, true, false),
    ];
    if cluster {
        scenarios.push(one("c-r3-16rooms", 3, false, 16, false, false));
        scenarios.push(one("c-r3-16rooms-sync", 3, true, 16, false, false));
    }
    scenarios.push(one("d-1room-16logs", 1, false, 16, true, false));
    scenarios.push(one("d-1room-shared", 1, false, 16, true, true));
    if cluster {
        scenarios.push(one("e-r3-1room-16logs", 3, false, 16, true, false));
    }

    let version = Command::new(nats_server_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "{version}; {secs} s per scenario after {} s warm-up",
        WARM_UP.as_secs()
    );

    let mut rows = Vec::new();
    for scn in &scenarios {
        eprintln!("running {} ...", scn.name);
        let row = run(scn, secs, &conflicts).await?;
        eprintln!(
            "  {:.0} msg/s, p50 {} ms, p99 {} ms",
            row.msgs_per_s,
            ms(row.p50),
            ms(row.p99)
        );
        rows.push(row);
    }

    println!(
        "| scenario | nodes | sync | writers | rooms | RoomLogs | msg/s | p50 ms | p99 ms | conflicts/msg | gave up | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {} | {} |",
            r.name,
            if r.nodes > 1 {
                format!("{} (R{})", r.nodes, r.nodes)
            } else {
                "1".into()
            },
            if r.sync_always { "always" } else { "default" },
            r.writers,
            r.rooms,
            r.logs,
            r.msgs_per_s,
            ms(r.p50),
            ms(r.p99),
            r.conflicts_per_msg,
            r.gave_up,
            r.errors.values().sum::<u64>(),
        );
    }
    println!();
    println!(
        "msg/s and latency: appends started in the {secs} s after a {} s warm-up; conflicts/msg: \
         `wrong last sequence` retries per stored message in that window; gave up (after 64 \
         conflicts) and errors: whole run. Every room held exactly its stored appends, numbered 1..n (checked on the stream leader).",
        WARM_UP.as_secs()
    );
    let failures: Vec<_> = rows
        .iter()
        .flat_map(|r| r.errors.iter().map(move |(e, n)| (r.name, e, n)))
        .collect();
    if !failures.is_empty() {
        println!();
        println!("Errors (whole run, warm-up included):");
        println!();
        for (name, e, n) in failures {
            println!("- {name}: {n} × `{e}`");
        }
    }
    Ok(())
}
