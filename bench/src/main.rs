//! `chat-bench`: a load generator that speaks the client protocol and runs
//! named scenarios against a running system on loopback, or starts a system
//! itself and runs a suite. Figures are reported, never asserted.
//!
//! ```text
//! chat-bench suite [--scale short|full] [--peer socketio|none] [--out DIR]
//! chat-bench system [--gateways N] [--instances N]  # start a system, keep it up
//! chat-bench peer                           # start the socket.io peer
//! chat-bench fleet [--gateways N] [--per-gateway C] [--hold S] [--out DIR]
//! chat-bench run --scenario idle|dm|group|broadcast --ws URL[,URL…]
//!                [--server chat|socketio] [--key-file PEM (chat)]
//!                [--connections N] [--room-size N] [--rate MSG_PER_S]
//!                [--warmup S] [--duration S] [--ramp FACTOR]
//!                [--watch NAME=PID,…] [--issuer I] [--audience A] [--out DIR]
//! ```

mod client;
mod fleet;
mod procs;
mod report;
mod scenario;
mod socketio;
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chat_jwt::{KeyPair, Signer};

use crate::procs::Watched;
use crate::report::{Machine, Report};
use crate::scenario::{Kind, Outcome, Params, Server, Target};

const USAGE: &str = "usage:
  chat-bench suite [--scale short|full] [--peer socketio|none] [--out DIR]
  chat-bench system [--gateways N] [--instances N]
  chat-bench peer
  chat-bench fleet [--gateways N] [--per-gateway C] [--hold S] [--out DIR]
  chat-bench run --scenario idle|dm|group|broadcast --ws URL[,URL...]
                 [--server chat|socketio] [--key-file PEM (chat)]
                 [--connections N] [--room-size N] [--rate MSG_PER_S] [--warmup S]
                 [--duration S] [--ramp FACTOR] [--watch NAME=PID,...]
                 [--issuer I] [--audience A] [--out DIR]";

/// `--name value` pairs after the subcommand.
fn flags(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            bail!("unexpected argument {a}\n{USAGE}");
        };
        let value = it
            .next()
            .with_context(|| format!("--{name} needs a value\n{USAGE}"))?;
        out.insert(name.to_string(), value.clone());
    }
    Ok(out)
}

fn get<T: std::str::FromStr>(
    f: &HashMap<String, String>,
    name: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match f.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}\n{USAGE}")),
    }
}

fn signer(key_file: &std::path::Path, issuer: &str, audience: &str) -> anyhow::Result<Signer> {
    let pem = std::fs::read_to_string(key_file)
        .with_context(|| format!("read the auth signing key {}", key_file.display()))?;
    let key = KeyPair::from_pkcs8_pem(&pem)?;
    Ok(Signer::new(
        key,
        issuer,
        audience,
        Duration::from_secs(6 * 3600),
    )?)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    let f = flags(rest)?;
    let started_unix = unix_now();
    let (outcomes, out_dir) = match cmd.as_str() {
        "suite" => {
            let scale: String = get(&f, "scale", "short".to_string())?;
            let with_peer = match get(&f, "peer", "socketio".to_string())?.as_str() {
                "socketio" => true,
                "none" => false,
                other => bail!("--peer {other}: socketio or none\n{USAGE}"),
            };
            (
                suite(&scale, with_peer).await?,
                get(&f, "out", PathBuf::from("bench/results"))?,
            )
        }
        "run" => (
            run(&f).await?,
            get(&f, "out", PathBuf::from("bench/results"))?,
        ),
        "system" => return system(&f).await,
        "peer" => return peer().await,
        "fleet" => return fleet::run(&f).await,
        _ => bail!("{USAGE}"),
    };
    let report = Report {
        started_unix,
        machine: Machine::here(),
        outcomes,
    };
    report::write(&out_dir, &report)?;
    println!("{}", report::markdown(&report));
    println!(
        "(written to {}/report.json and report.md)",
        out_dir.display()
    );
    Ok(())
}

/// One scenario (or a ramp) against a running system.
async fn run(f: &HashMap<String, String>) -> anyhow::Result<Vec<Outcome>> {
    let kind: Kind = get(f, "scenario", Kind::Idle)?;
    let ws: Vec<String> = f
        .get("ws")
        .context("--ws is required")?
        .split(',')
        .map(str::to_string)
        .collect();
    let mut watch = Vec::new();
    if let Some(w) = f.get("watch") {
        for item in w.split(',') {
            let (name, pid) = item.split_once('=').context("--watch takes NAME=PID")?;
            watch.push(Watched {
                name: name.into(),
                pid: pid.parse().context("--watch pid")?,
            });
        }
    }
    let server = match f.get("server").map(String::as_str) {
        None | Some("chat") => {
            let key: PathBuf = f.get("key-file").context("--key-file is required")?.into();
            Server::Chat(Box::new(signer(
                &key,
                &get(f, "issuer", "urn:chat:auth".to_string())?,
                &get(f, "audience", "chat".to_string())?,
            )?))
        }
        Some("socketio") => Server::SocketIo,
        Some(other) => bail!("--server {other}: chat or socketio\n{USAGE}"),
    };
    let target = Target { ws, server, watch };
    let default_room = match kind {
        Kind::Idle => 10,
        Kind::Dm => 2,
        Kind::Group => 100,
        Kind::Broadcast => usize::MAX,
    };
    let connections = get(f, "connections", 1000)?;
    let p = Params {
        kind,
        label: format!("{kind:?}").to_lowercase(),
        connections,
        room_size: get(f, "room-size", default_room)?.min(connections.max(1)),
        rate: get(f, "rate", 1000.0)?,
        warmup: Duration::from_secs_f64(get(f, "warmup", 2.0)?),
        duration: Duration::from_secs_f64(get(f, "duration", 10.0)?),
        first_user: get(f, "first-user", 0)?,
    };
    match f.get("ramp") {
        Some(factor) => {
            let factor: f64 = factor.parse().context("--ramp FACTOR")?;
            scenario::ramp(&target, &p, factor, 200.0, 12).await
        }
        None => Ok(vec![scenario::run(&target, &p).await?]),
    }
}

/// A system started by the bench: nats-server and every service as its own
/// (release) process.
struct System {
    nats: chat_testkit::NatsServer,
    deployment: chat_e2e::deploy::Deployment,
}

impl System {
    async fn start(gateways: usize, instances: usize) -> anyhow::Result<Self> {
        let nats = chat_testkit::NatsServer::start().await?;
        let deployment = chat_e2e::deploy::Deployment::start_sized(
            &nats.url(),
            gateways,
            instances,
            &[
                ("CHAT_GATEWAY_RATE_PER_SEC", "100000"),
                ("CHAT_GATEWAY_RATE_BURST", "100000"),
                ("CHAT_GATEWAY_MAX_CONNECTIONS", "19500"),
                // Production presence timing (the test kit's 1 s heartbeat
                // would multiply the idle cost by ten).
                ("CHAT_GATEWAY_HEARTBEAT_MS", "10000"),
                ("CHAT_PRESENCE_TTL_MS", "30000"),
                // One bench user creates every room of a scenario.
                ("CHAT_HISTORY_ROOMS_PER_HOUR", "1000000"),
                ("CHAT_HISTORY_MAX_ROOMS_PER_USER", "1000000"),
                ("RUST_LOG", "warn"),
            ],
        )
        .await
        .context("start the system (build it first: cargo build --release --workspace --bins)")?;
        Ok(Self { nats, deployment })
    }

    fn key_file(&self) -> PathBuf {
        self.deployment.data.path().join("auth-signing-key.pem")
    }

    fn watched(&self) -> Vec<Watched> {
        let d = &self.deployment;
        let mut watch: Vec<Watched> = d
            .gateways
            .iter()
            .chain(&d.fanouts)
            .chain(&d.histories)
            .chain(&d.presences)
            .filter_map(|p| {
                Some(Watched {
                    name: p.name.clone(),
                    pid: p.pid()?,
                })
            })
            .collect();
        if let Some(pid) = self.nats.pid() {
            watch.push(Watched {
                name: "nats-server".into(),
                pid,
            });
        }
        watch
    }

    fn target(&self) -> anyhow::Result<Target> {
        Ok(Target {
            ws: self.deployment.ws_urls(),
            server: Server::Chat(Box::new(signer(
                &self.key_file(),
                chat_e2e::ISSUER,
                chat_e2e::AUDIENCE,
            )?)),
            watch: self.watched(),
        })
    }
}

/// `chat-bench system`: starts a system and keeps it up until Ctrl-C, for
/// `run`, profilers and hand checks.
async fn system(f: &HashMap<String, String>) -> anyhow::Result<()> {
    let sys = System::start(get(f, "gateways", 1)?, get(f, "instances", 1)?).await?;
    println!("nats:     {}", sys.nats.url());
    println!("ws:       {}", sys.deployment.ws_urls().join(","));
    println!("key-file: {}", sys.key_file().display());
    let watch: Vec<String> = sys
        .watched()
        .iter()
        .map(|w| format!("{}={}", w.name, w.pid))
        .collect();
    println!("watch:    {}", watch.join(","));
    println!("(Ctrl-C stops it)");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// `chat-bench peer`: starts the socket.io peer and keeps it up until
/// Ctrl-C, for `run --server socketio`.
async fn peer() -> anyhow::Result<()> {
    let peer = socketio::Peer::start(&socketio::default_dir()).await?;
    println!("ws:    {}", peer.url());
    println!("watch: socket.io={}", peer.pid().unwrap_or(0));
    println!("(Ctrl-C stops it)");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The suite's scenarios at one scale; the burst ramp comes last.
fn plan(full: bool) -> (Vec<Params>, Params) {
    let secs = Duration::from_secs;
    let (idle_n, dm_n, dm_rate, group_n, group_rate, bc_n, bc_rate, window) = if full {
        (
            19_000,
            10_000,
            15_000.0,
            10_000,
            2_000.0,
            10_000,
            20.0,
            secs(20),
        )
    } else {
        (2_000, 1_000, 2_000.0, 1_000, 500.0, 2_000, 20.0, secs(10))
    };
    let mut next_user = 0;
    let mut params = |kind: Kind, label: &str, connections: usize, room_size: usize, rate: f64| {
        let p = Params {
            kind,
            label: label.to_string(),
            connections,
            room_size,
            rate,
            warmup: secs(3),
            duration: if kind == Kind::Idle { secs(5) } else { window },
            first_user: next_user,
        };
        // Each run's users, its admin and its sync user are its own.
        next_user += connections + 2;
        p
    };
    let plan = vec![
        params(Kind::Idle, "idle", idle_n, 10, 0.0),
        params(Kind::Dm, "dm", dm_n, 2, dm_rate),
        params(
            Kind::Group,
            "group (rooms of 100)",
            group_n,
            100,
            group_rate,
        ),
        params(Kind::Broadcast, "broadcast", bc_n, bc_n, bc_rate),
    ];
    let mut burst = params(Kind::Group, "burst (rooms of 20)", 1_000, 20, 500.0);
    burst.duration = secs(5);
    burst.warmup = secs(2);
    (plan, burst)
}

/// Runs `plan` and the burst ramp against `target`, labels prefixed.
async fn run_plan(
    target: &Target,
    plan: &[Params],
    burst: &Params,
    steps: usize,
    prefix: &str,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for p in plan {
        let mut p = p.clone();
        p.label = format!("{prefix}{}", p.label);
        eprintln!("chat-bench: {} ({} connections)", p.label, p.connections);
        outcomes.push(scenario::run(target, &p).await?);
    }
    let mut b = burst.clone();
    b.label = format!("{prefix}{}", b.label);
    eprintln!("chat-bench: {}", b.label);
    outcomes.extend(scenario::ramp(target, &b, 1.5, 200.0, steps).await?);
    Ok(outcomes)
}

/// Starts the system and runs the suite's scenarios against it; then stops
/// it, starts the socket.io peer and runs the same scenarios against that.
async fn suite(scale: &str, with_peer: bool) -> anyhow::Result<Vec<Outcome>> {
    let full = match scale {
        "short" => false,
        "full" => true,
        other => bail!("--scale {other}: short or full"),
    };
    let (plan, burst) = plan(full);
    let steps = if full { 12 } else { 6 };
    let sys = System::start(1, 1).await?;
    let mut outcomes = run_plan(&sys.target()?, &plan, &burst, steps, "").await?;
    drop(sys);
    if with_peer {
        let peer = socketio::Peer::start(&socketio::default_dir()).await?;
        let target = Target {
            ws: vec![peer.url()],
            server: Server::SocketIo,
            watch: peer
                .pid()
                .map(|pid| Watched {
                    name: "socket.io".into(),
                    pid,
                })
                .into_iter()
                .collect(),
        };
        outcomes.extend(run_plan(&target, &plan, &burst, steps, report::PEER_PREFIX).await?);
    }
    Ok(outcomes)
}
