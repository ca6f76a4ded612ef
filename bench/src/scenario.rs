//! The scenarios: who connects, which rooms they share, who sends at what
//! rate, and what is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_core::UserId;
use chat_jwt::Signer;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Cmd};
use crate::procs::{self, Usage, Watched};
use crate::stats::{Percentiles, Stats};

/// Connections opened at once during setup.
const CONNECT_CONCURRENCY: usize = 200;

/// Rooms larger than this are joined before their members come online.
const PREJOIN_ABOVE: usize = 100;

/// A scenario's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Connections in rooms, heartbeats only.
    Idle,
    /// Pairs chatting.
    Dm,
    /// Rooms of `room_size` members, every member sending.
    Group,
    /// One room; one member sends.
    Broadcast,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "idle" => Ok(Kind::Idle),
            "dm" => Ok(Kind::Dm),
            "group" => Ok(Kind::Group),
            "broadcast" => Ok(Kind::Broadcast),
            other => Err(format!(
                "unknown scenario {other} (idle, dm, group, broadcast)"
            )),
        }
    }
}

/// A scenario's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub kind: Kind,
    /// Label in reports (e.g. `burst step 3`).
    pub label: String,
    pub connections: usize,
    pub room_size: usize,
    /// Messages per second, all senders together.
    pub rate: f64,
    #[serde(with = "secs")]
    pub warmup: Duration,
    #[serde(with = "secs")]
    pub duration: Duration,
    /// First index of this run's users (distinct runs use distinct users).
    pub first_user: usize,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Where the system under test is.
pub struct Target {
    /// Gateways' WebSocket URLs (or the peer's); connections are spread
    /// over them.
    pub ws: Vec<String>,
    pub server: Server,
    /// Processes whose CPU and memory are reported.
    pub watch: Vec<Watched>,
}

/// What is under test.
pub enum Server {
    /// Ours; the signer has the auth service's key and mints access tokens
    /// (no login round trips).
    Chat(Box<Signer>),
    /// The socket.io peer: rooms are names, joined on connect; nothing to
    /// create, no tokens.
    SocketIo,
}

impl Target {
    fn token(&self, i: usize) -> anyhow::Result<Option<String>> {
        match &self.server {
            Server::Chat(signer) => Ok(Some(token(signer, i)?)),
            Server::SocketIo => Ok(None),
        }
    }

    fn proto(&self) -> client::Proto {
        match self.server {
            Server::Chat(_) => client::Proto::Chat,
            Server::SocketIo => client::Proto::SocketIo,
        }
    }
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    pub connected: u64,
    pub setup_seconds: f64,
    pub measured_seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub acks_per_second: f64,
    pub delivered: u64,
    pub deliveries_per_second: f64,
    pub errors: u64,
    pub disconnects: u64,
    /// Close codes of the disconnects (server's code, or "none").
    pub close_codes: std::collections::BTreeMap<String, u64>,
    pub e2e_latency: Percentiles,
    pub ack_latency: Percentiles,
    pub processes: Vec<Usage>,
    /// Idle only: gateway RSS growth per connection, bytes.
    pub gateway_bytes_per_connection: Option<f64>,
    /// Idle only: kernel TCP memory per connection (both ends on this
    /// machine), bytes.
    pub kernel_tcp_bytes_per_connection: Option<f64>,
}

fn user(i: usize) -> anyhow::Result<UserId> {
    UserId::parse(format!("bench{i}")).context("user id")
}

fn token(signer: &Signer, i: usize) -> anyhow::Result<String> {
    let (t, _) = signer.issue(&user(i)?, &format!("bench {i}"))?;
    Ok(t)
}

fn rss_of_gateways(watch: &[Watched]) -> u64 {
    watch
        .iter()
        .filter(|w| w.name.starts_with("gateway") || w.name == "socket.io")
        .filter_map(|w| procs::read(w.pid))
        .map(|r| r.rss_bytes)
        .sum()
}

/// Connected clients in their rooms, ready to be driven.
pub struct Session {
    stats: Arc<Stats>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    senders: Vec<(mpsc::Sender<Cmd>, Arc<str>)>,
    _admin: Option<client::Ws>,
    setup_seconds: f64,
    gw_rss_before: u64,
    tcp_before: Option<u64>,
}

/// Client `c` of a scenario: its user, gateway and room.
struct Member {
    i: usize,
    url: String,
    /// None for the socket.io peer.
    token: Option<String>,
    room: Arc<str>,
}

impl Member {
    fn new(target: &Target, p: &Params, rooms: &[Arc<str>], c: usize) -> anyhow::Result<Self> {
        let i = p.first_user + c;
        Ok(Self {
            i,
            url: target.ws[c % target.ws.len()].clone(),
            token: target.token(i)?,
            room: rooms[c / p.room_size.max(1)].clone(),
        })
    }

    /// Connects (and joins its room when `join`; the socket.io peer's
    /// rooms are always joined on connect).
    async fn connect(&self, join: bool) -> anyhow::Result<client::Ws> {
        let src = client::source_addr(self.i);
        let Some(token) = &self.token else {
            return crate::socketio::connect(&self.url, src, &self.room).await;
        };
        let (mut ws, _) = client::connect(&self.url, src, token).await?;
        if join {
            client::request(
                &mut ws,
                json!({"type": "room.join", "id": "join", "room": &*self.room}),
            )
            .await?;
        }
        Ok(ws)
    }
}

/// The rooms of `p`: ours are created by one extra user who stays
/// connected; the peer's are names.
async fn create_rooms(
    target: &Target,
    p: &Params,
) -> anyhow::Result<(Option<client::Ws>, Vec<Arc<str>>)> {
    let rooms_n = p.connections.div_ceil(p.room_size.max(1));
    let Server::Chat(signer) = &target.server else {
        let rooms = (0..rooms_n)
            .map(|r| Arc::from(format!("bench{}-{r}", p.first_user)))
            .collect();
        return Ok((None, rooms));
    };
    let admin_i = p.first_user + p.connections;
    let (mut admin, _) = client::connect(
        &target.ws[0],
        client::source_addr(admin_i),
        &token(signer, admin_i)?,
    )
    .await
    .context("admin connection")?;
    let mut rooms: Vec<Arc<str>> = Vec::with_capacity(rooms_n);
    for r in 0..rooms_n {
        let reply = client::request(
            &mut admin,
            json!({"type": "room.create", "id": format!("r{r}"), "name": format!("bench {r}")}),
        )
        .await?;
        let id = reply["room"]["id"].as_str().context("room id")?;
        rooms.push(Arc::from(id));
    }
    Ok((Some(admin), rooms))
}

/// Creates the rooms and connects every client of `p` (each joins its room).
pub async fn setup(target: &Target, p: &Params) -> anyhow::Result<Session> {
    if target.ws.is_empty() {
        bail!("no gateway URL");
    }
    let stats = Arc::new(Stats::new());
    let stop = CancellationToken::new();
    let setup_start = Instant::now();
    let gw_rss_before = rss_of_gateways(&target.watch);
    let tcp_before = procs::kernel_tcp_bytes();

    let (admin, rooms) = create_rooms(target, p).await?;

    // Large rooms: members join first, each over a short connection, and
    // come online afterwards (as when an admin fills a team), so the joins
    // are not delivered to every member already online (n²/2 frames).
    let prejoin = p.room_size > PREJOIN_ABOVE && matches!(target.server, Server::Chat(_));
    if prejoin {
        let mut joining = JoinSet::new();
        for c in 0..p.connections {
            let m = Member::new(target, p, &rooms, c)?;
            joining.spawn(async move {
                let mut ws = m.connect(true).await?;
                let _closed = ws.close(None).await;
                anyhow::Ok(())
            });
            if joining.len() >= CONNECT_CONCURRENCY || c + 1 == p.connections {
                while let Some(res) = joining.join_next().await {
                    res.context("join task")??;
                }
            }
        }
        // Fanout may still be working through the joins; members coming
        // online now would each get every join still queued (n² again). A
        // marker in a room of its own, read back, says it has caught up:
        // one fanout instance handles the stream in order. (A member of the
        // big room would itself be flooded by the queued joins.)
        let i = p.first_user + p.connections + 1;
        let (mut ws, _) = client::connect(
            &target.ws[0],
            client::source_addr(i),
            &target.token(i)?.context("a token")?,
        )
        .await?;
        let reply = client::request(
            &mut ws,
            json!({"type": "room.create", "id": "sync", "name": "bench sync"}),
        )
        .await?;
        let room = reply["room"]["id"].as_str().context("sync room id")?;
        client::sync(&mut ws, room, Duration::from_secs(600)).await?;
        let _closed = ws.close(None).await;
    }

    // Clients: connect, join their room (unless done above), then run.
    let mut senders = Vec::new();
    let mut tasks = JoinSet::new();
    let mut pending = JoinSet::new();
    for c in 0..p.connections {
        let m = Member::new(target, p, &rooms, c)?;
        pending.spawn(async move {
            let ws = m.connect(!prejoin).await?;
            anyhow::Ok((c, ws, m.room))
        });
        if pending.len() >= CONNECT_CONCURRENCY || c + 1 == p.connections {
            while let Some(res) = pending.join_next().await {
                let (c, ws, room) = res.context("connect task")??;
                Stats::add(&stats.connected, 1);
                let sends = match p.kind {
                    Kind::Idle => false,
                    Kind::Dm | Kind::Group => true,
                    Kind::Broadcast => c == 0,
                };
                let (tx, rx) = mpsc::channel(1024);
                if sends {
                    senders.push((tx, room));
                }
                tasks.spawn(client::run(
                    target.proto(),
                    c,
                    ws,
                    rx,
                    stats.clone(),
                    stop.clone(),
                ));
            }
        }
    }
    settle(&stats).await;
    Ok(Session {
        stats,
        stop,
        tasks,
        senders,
        _admin: admin,
        setup_seconds: setup_start.elapsed().as_secs_f64(),
        gw_rss_before,
        tcp_before,
    })
}

impl Session {
    /// Drives the senders at `p.rate` for the warm-up, then measures
    /// `p.duration`.
    pub async fn measure(&self, target: &Target, p: &Params) -> Outcome {
        let stats = &self.stats;
        let window_stop = self.stop.child_token();
        let pacer = tokio::spawn(pace(
            self.senders.clone(),
            p.rate,
            window_stop.clone(),
            stats.clone(),
        ));
        tokio::time::sleep(p.warmup).await;
        stats.reset_window();
        let starts: Vec<_> = target.watch.iter().map(|w| procs::read(w.pid)).collect();
        let window = Instant::now();
        tokio::time::sleep(p.duration).await;
        let measured = window.elapsed().as_secs_f64();
        let (sent, acked, delivered, errors) = (
            Stats::get(&stats.sent),
            Stats::get(&stats.acked),
            Stats::get(&stats.delivered),
            Stats::get(&stats.errors),
        );
        let processes = target
            .watch
            .iter()
            .zip(starts)
            .filter_map(|(w, s)| Some(procs::usage(w, &s?, &procs::read(w.pid)?)))
            .collect();
        window_stop.cancel();
        let _stopped = pacer.await;
        let (gateway_bytes, tcp_bytes) = if p.kind == Kind::Idle && p.connections > 0 {
            let n = p.connections as f64;
            let gw = rss_of_gateways(&target.watch).saturating_sub(self.gw_rss_before) as f64 / n;
            let tcp = match (self.tcp_before, procs::kernel_tcp_bytes()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / n),
                _ => None,
            };
            (Some(gw), tcp)
        } else {
            (None, None)
        };
        Outcome {
            params: p.clone(),
            connected: Stats::get(&stats.connected),
            setup_seconds: self.setup_seconds,
            measured_seconds: measured,
            sent,
            acked,
            acks_per_second: acked as f64 / measured,
            delivered,
            deliveries_per_second: delivered as f64 / measured,
            errors,
            disconnects: Stats::get(&stats.disconnects),
            close_codes: stats.close_codes(),
            e2e_latency: stats.e2e.summary(),
            ack_latency: stats.ack.summary(),
            processes,
            gateway_bytes_per_connection: gateway_bytes,
            kernel_tcp_bytes_per_connection: tcp_bytes,
        }
    }

    /// Closes every client.
    pub async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sets up, measures and closes one scenario.
pub async fn run(target: &Target, p: &Params) -> anyhow::Result<Outcome> {
    let session = setup(target, p).await?;
    let out = session.measure(target, p).await;
    session.close().await;
    Ok(out)
}

/// A rate ramp on one set of connections: from `p.rate`, ×`factor` per
/// step, until acks fall behind the offered rate by more than 10 %, p99
/// exceeds `p99_limit_ms`, or `max_steps`. Returns every step.
pub async fn ramp(
    target: &Target,
    p: &Params,
    factor: f64,
    p99_limit_ms: f64,
    max_steps: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let session = setup(target, p).await?;
    let mut steps = Vec::new();
    let mut rate = p.rate;
    for step in 0..max_steps {
        let mut sp = p.clone();
        sp.rate = rate;
        sp.label = format!("{} step {} ({rate:.0}/s)", p.label, step + 1);
        let out = session.measure(target, &sp).await;
        let behind = out.acks_per_second < rate * 0.9;
        let slow = out.e2e_latency.p99_ms > p99_limit_ms;
        steps.push(out);
        if behind || slow {
            break;
        }
        rate *= factor;
    }
    session.close().await;
    Ok(steps)
}

/// Waits (up to 2 minutes) until clients have read nothing for a second:
/// the joins' own deliveries (each join goes to every member online, so a
/// room of n joined online costs n²/2 frames) must not spill into the
/// measurement.
async fn settle(stats: &Stats) {
    let end = Instant::now() + Duration::from_secs(120);
    let mut last = Stats::get(&stats.frames);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Stats::get(&stats.frames);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Hands out sends at `rate` per second, round robin over `senders`.
async fn pace(
    senders: Vec<(mpsc::Sender<Cmd>, Arc<str>)>,
    rate: f64,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    if senders.is_empty() || rate <= 0.0 {
        return;
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut issued, mut next) = (0u64, 0usize);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            let (tx, room) = &senders[next % senders.len()];
            next += 1;
            issued += 1;
            if tx.try_send(Cmd::Send(room.clone())).is_err() {
                // The client is not keeping up: counted, not queued.
                Stats::add(&stats.errors, 1);
            }
        }
    }
}
