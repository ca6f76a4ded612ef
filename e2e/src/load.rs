//! A small load driver for fault tests: senders that retry with the same
//! client message id until acknowledged (reconnecting when needed), readers
//! that resume after a disconnect, and the checks every fault scenario ends
//! with: each acknowledged message stored exactly once, each reader saw each
//! message once and in order.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// How often a reader pings (the gateway's idle timeout is 60 s by default).
const PING_EVERY: Duration = Duration::from_secs(15);
/// How long one message may take to be acknowledged, retries included.
const ACK_DEADLINE: Duration = Duration::from_secs(60);

/// What a sender got acknowledged: client id → room sequence.
pub type Acked = BTreeMap<String, u64>;

/// A sender's outcome.
#[derive(Debug, Default)]
pub struct Sent {
    pub acked: Acked,
    /// Send frames written, retries included.
    pub attempts: usize,
}

/// Sends `n` messages to `room` as `prefix-<i>`, one at a time; on an error
/// or a dropped connection it retries the same id until acknowledged,
/// reconnecting to the next of `urls` (like a client given several
/// gateway addresses).
pub async fn sender(
    urls: &[String],
    token: &str,
    room: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Sent> {
    let mut acked = Acked::new();
    let mut attempts = 0;
    let mut conn: Option<WsClient> = None;
    let mut next = 0;
    for i in 0..n {
        let cmid = format!("{prefix}-{i}");
        let end = tokio::time::Instant::now() + ACK_DEADLINE;
        loop {
            if tokio::time::Instant::now() > end {
                bail!("{cmid} not acknowledged within {ACK_DEADLINE:?}");
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match WsClient::connect_as(pick(urls, &mut next), token).await {
                    Ok((c, _)) => conn.insert(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            attempts += 1;
            match crate::send(c, room, &cmid, &format!("text of {cmid}")).await {
                Ok(v) if v["type"] == "ack" => {
                    acked.insert(cmid.clone(), v["seq"].as_u64().context("ack seq")?);
                    break;
                }
                Ok(v)
                    if v["code"] == "unavailable"
                        || v["code"] == "internal"
                        || v["code"] == "rate_limited" =>
                {
                    // A backend is failing over (or we are too fast): the
                    // same id again, a little later.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(v) => bail!("{cmid}: unexpected reply {v}"),
                Err(_) => conn = None,
            }
        }
    }
    Ok(Sent { acked, attempts })
}

/// The next URL to connect to, rotating.
fn pick<'a>(urls: &'a [String], next: &mut usize) -> &'a str {
    let url = urls
        .get(*next % urls.len().max(1))
        .map_or("", String::as_str);
    *next += 1;
    url
}

/// What a reader saw.
#[derive(Debug, Default)]
pub struct Read {
    /// Every message sequence, in the order received.
    pub seqs: Vec<u64>,
    /// Connections after the first (each one resumed).
    pub reconnects: usize,
    /// Why each connection ended.
    pub why: Vec<String>,
}

/// Reads `room`'s messages until it has seen sequence `last`, resuming
/// after any disconnect on the next of `urls`.
pub async fn reader_until(
    urls: &[String],
    token: &str,
    room: &str,
    last: u64,
    deadline: Duration,
) -> anyhow::Result<Read> {
    let end = tokio::time::Instant::now() + deadline;
    let mut seen: Vec<u64> = Vec::new();
    let mut conn: Option<WsClient> = None;
    let (mut next, mut connects) = (0, 0usize);
    let mut why = Vec::new();
    let mut last_ping = tokio::time::Instant::now();
    while seen.last().copied().unwrap_or(0) < last {
        if tokio::time::Instant::now() > end {
            bail!(
                "reader saw up to {:?} of {last} in {deadline:?}; {connects} connections, ended by {why:?}",
                seen.last()
            );
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let from = seen.last().copied().unwrap_or(0);
                match resume(pick(urls, &mut next), token, room, from).await {
                    Ok(c) => {
                        connects += 1;
                        last_ping = tokio::time::Instant::now();
                        conn.insert(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        // A reader sends nothing else: ping like a real client, or the
        // gateway's idle timeout closes it.
        if last_ping.elapsed() >= PING_EVERY {
            last_ping = tokio::time::Instant::now();
            if let Err(e) = c
                .send_json(&json!({"type": "ping", "id": "keepalive"}))
                .await
            {
                why.push(format!("after {:?}: ping: {e}", seen.last()));
                conn = None;
                continue;
            }
        }
        match c
            .recv_where(|v| v["type"] == "event" && v["kind"] == "msg" && v["room"] == room)
            .await
        {
            Ok(ev) => seen.push(ev["seq"].as_u64().context("seq")?),
            // A quiet moment, not a broken connection.
            Err(e)
                if e.to_string().contains("no matching frame")
                    || e.to_string().contains("no frame within") => {}
            Err(e) => {
                why.push(format!("after {:?}: {e}", seen.last()));
                conn = None;
            }
        }
    }
    Ok(Read {
        seqs: seen,
        reconnects: connects.saturating_sub(1),
        why,
    })
}

/// Resumes `room` after `after` on a new connection and collects the
/// pushed messages up to the `resumed` frame; returns their sequences and
/// that frame.
pub async fn resume_once(
    ws_url: &str,
    token: &str,
    room: &str,
    after: u64,
) -> anyhow::Result<(Vec<u64>, Value)> {
    let mut c = resume(ws_url, token, room, after).await?;
    let mut seqs = Vec::new();
    loop {
        let f = c
            .recv_where(|v| {
                (v["type"] == "event" && v["kind"] == "msg" && v["room"] == room)
                    || v["type"] == "resumed"
            })
            .await?;
        if f["type"] == "resumed" {
            return Ok((seqs, f));
        }
        seqs.push(f["seq"].as_u64().context("seq")?);
    }
}

async fn resume(ws_url: &str, token: &str, room: &str, after: u64) -> anyhow::Result<WsClient> {
    let mut c = WsClient::connect(ws_url, None).await?;
    c.send_json(&json!({"type": "hello", "v": 1, "token": token, "resume": { room: after }}))
        .await?;
    let w = c.recv().await?;
    if w["type"] != "welcome" {
        bail!("expected welcome, got {w}");
    }
    Ok(c)
}

/// Every stored message of `room` (paging forward), as (seq, client id),
/// through the first of `urls` that answers.
pub async fn stored(
    urls: &[String],
    token: &str,
    room: &str,
) -> anyhow::Result<Vec<(u64, String)>> {
    let mut last = None;
    for url in urls {
        match stored_via(url, token, room).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no gateway URL")))
}

async fn stored_via(ws_url: &str, token: &str, room: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let (mut c, _) = WsClient::connect_as(ws_url, token).await?;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = crate::history(&mut c, room, json!({"after": after, "limit": 200})).await?;
        let events = page["events"].as_array().context("events")?;
        for e in events {
            let seq = e["seq"].as_u64().context("seq")?;
            out.push((seq, e["cmid"].as_str().unwrap_or_default().to_string()));
            after = seq;
        }
        if page["more"] != Value::Bool(true) {
            return Ok(out);
        }
    }
}

/// One line for `docs/reliability.md`: what was sent, acknowledged, stored
/// and delivered, and how many duplicates and losses the checks found.
pub fn report(
    scenario: &str,
    attempts: usize,
    acked: usize,
    stored: usize,
    delivered: usize,
) -> String {
    let lost = acked.saturating_sub(stored);
    let dups = delivered.saturating_sub(acked);
    format!(
        "fault-report | {scenario} | sent {attempts} | acked {acked} | stored {stored} | delivered {delivered} | duplicates shown {dups} | lost {lost} |"
    )
}

/// The checks: acknowledged sequences are exactly 1..=N, history holds each
/// acknowledged message once under its acknowledged sequence, and the reader
/// saw 1..=N once each, in order.
pub fn check_room(acked: &Acked, stored: &[(u64, String)], seen: &[u64]) -> Result<(), String> {
    let n = acked.len() as u64;
    let mut seqs: Vec<u64> = acked.values().copied().collect();
    seqs.sort_unstable();
    if seqs != (1..=n).collect::<Vec<_>>() {
        return Err(format!("acknowledged sequences are not 1..={n}: {seqs:?}"));
    }
    let by_id: BTreeMap<&str, u64> = stored.iter().map(|(s, c)| (c.as_str(), *s)).collect();
    if stored.len() as u64 != n || by_id.len() as u64 != n {
        return Err(format!(
            "history holds {} messages ({} distinct ids), {n} were acknowledged",
            stored.len(),
            by_id.len()
        ));
    }
    for (cmid, seq) in acked {
        if by_id.get(cmid.as_str()) != Some(seq) {
            return Err(format!(
                "{cmid} acknowledged as {seq}, stored as {:?}",
                by_id.get(cmid.as_str())
            ));
        }
    }
    if seen != (1..=n).collect::<Vec<_>>().as_slice() {
        return Err(format!(
            "reader saw {} frames, not 1..={n} once in order: {seen:?}",
            seen.len()
        ));
    }
    Ok(())
}

/// Rooms per scenario, and senders per room (each room also has a reader).
pub const ROOMS: usize = 2;
pub const SENDERS: usize = 2;

/// Messages per sender: 100 in CI (400 in all), or `CHAT_FAULT_PER_SENDER`
/// (2500 is the full load of 10,000 messages; see docs/reliability.md).
pub fn per_sender() -> usize {
    std::env::var("CHAT_FAULT_PER_SENDER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// One room of a scenario: its id and the tokens of its members.
#[derive(Debug, Clone)]
pub struct RoomPlan {
    pub room: String,
    pub senders: Vec<String>,
    pub reader: String,
}

/// The rooms of a scenario, and a token for checking history.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rooms: Vec<RoomPlan>,
    pub checker: String,
}

/// Logs users in through `http` (a gateway's or a load balancer's base
/// URL) and creates [`ROOMS`] rooms with [`SENDERS`] senders and a reader
/// each, over the WebSocket at `ws`.
pub async fn prepare(http: &str, ws: &str) -> anyhow::Result<Plan> {
    let owner = crate::login(http, "owner").await?;
    let (mut oc, _) = WsClient::connect_as(ws, &owner.token).await?;
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let room = crate::create_room(&mut oc, &format!("room{r}")).await?;
        let mut senders = Vec::new();
        for s in 0..SENDERS {
            let l = crate::login(http, &format!("s{r}x{s}")).await?;
            let (mut c, _) = WsClient::connect_as(ws, &l.token).await?;
            crate::join_room(&mut c, &room).await?;
            senders.push(l.token);
        }
        let l = crate::login(http, &format!("reader{r}")).await?;
        let (mut c, _) = WsClient::connect_as(ws, &l.token).await?;
        crate::join_room(&mut c, &room).await?;
        rooms.push(RoomPlan {
            room,
            senders,
            reader: l.token,
        });
    }
    Ok(Plan {
        rooms,
        checker: owner.token,
    })
}

/// What a finished scenario counted.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Send frames written, retries included.
    pub attempts: usize,
    pub acked: usize,
    pub stored: usize,
    pub delivered: usize,
    /// Reader reconnections (each resumed).
    pub reconnects: usize,
    /// Why readers' connections ended.
    pub why: Vec<String>,
}

type SenderTask = tokio::task::JoinHandle<anyhow::Result<Sent>>;
type ReaderTask = tokio::task::JoinHandle<anyhow::Result<Read>>;

/// A running load: senders and readers as tasks.
pub struct Run {
    plan: Plan,
    urls: Vec<String>,
    per_room: u64,
    senders: Vec<(usize, SenderTask)>,
    readers: Vec<ReaderTask>,
}

/// `urls` rotated left by `k`: client `k` starts on its own gateway.
fn rotated(urls: &[String], k: usize) -> Vec<String> {
    let mut v = urls.to_vec();
    if !v.is_empty() {
        v.rotate_left(k % urls.len());
    }
    v
}

impl Run {
    /// Starts every sender and reader of `plan`. Client `k` connects to
    /// `urls[k % len]` first and moves on to the next URL when its
    /// connection fails, so with several gateways the clients are spread
    /// over all of them (senders and the reader of a room on different
    /// gateways).
    pub fn start(plan: Plan, urls: Vec<String>, per_sender: usize, deadline: Duration) -> Self {
        let per_room = (SENDERS * per_sender) as u64;
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        let mut k = 0;
        for (r, rp) in plan.rooms.iter().enumerate() {
            for (i, token) in rp.senders.iter().enumerate() {
                let (u, t, room) = (rotated(&urls, k), token.clone(), rp.room.clone());
                k += 1;
                senders.push((
                    r,
                    tokio::spawn(async move {
                        sender(&u, &t, &room, &format!("{room}-{i}"), per_sender).await
                    }),
                ));
            }
            let (u, t, room) = (rotated(&urls, k), rp.reader.clone(), rp.room.clone());
            k += 1;
            readers.push(tokio::spawn(async move {
                reader_until(&u, &t, &room, per_room, deadline).await
            }));
        }
        Self {
            plan,
            urls,
            per_room,
            senders,
            readers,
        }
    }

    /// The rooms and tokens this load runs with.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Waits until history holds `fraction` of the first room's messages
    /// (the moment to inject a fault).
    pub async fn until_stored(&self, fraction: f64) {
        let want = (self.per_room as f64 * fraction) as usize;
        let (urls, token, room) = (
            self.urls.clone(),
            self.plan.checker.clone(),
            self.plan.rooms[0].room.clone(),
        );
        chat_testkit::eventually(
            Duration::from_secs(120),
            &format!("{want} messages of the first room stored"),
            || {
                let (u, t, r) = (urls.clone(), token.clone(), room.clone());
                async move {
                    let s = stored(&u, &t, &r).await.ok()?;
                    (s.len() >= want).then_some(())
                }
            },
        )
        .await;
    }

    /// Waits for every sender and reader, then checks every room (see
    /// [`check_room`]) and prints a `fault-report` line for `scenario`.
    pub async fn finish(self, scenario: &str) -> anyhow::Result<Outcome> {
        let mut acked_by_room: Vec<Acked> = vec![Acked::new(); self.plan.rooms.len()];
        let mut out = Outcome::default();
        for (r, h) in self.senders {
            let sent = h.await.context("sender task")??;
            out.attempts += sent.attempts;
            acked_by_room[r].extend(sent.acked);
        }
        let mut reads = Vec::new();
        for h in self.readers {
            reads.push(h.await.context("reader task")??);
        }
        let urls = self.urls.clone();
        for ((rp, acked), read) in self.plan.rooms.iter().zip(&acked_by_room).zip(&reads) {
            let per_room = self.per_room as usize;
            let stored = chat_testkit::eventually(
                Duration::from_secs(60),
                "history holds every message",
                || {
                    let (u, t, r) = (urls.clone(), self.plan.checker.clone(), rp.room.clone());
                    async move {
                        let s = stored(&u, &t, &r).await.ok()?;
                        (s.len() >= per_room).then_some(s)
                    }
                },
            )
            .await;
            check_room(acked, &stored, &read.seqs)
                .map_err(|e| anyhow::anyhow!("room {}: {e}", rp.room))?;
            out.acked += acked.len();
            out.stored += stored.len();
            out.delivered += read.seqs.len();
            out.reconnects += read.reconnects;
            out.why.extend(read.why.iter().cloned());
        }
        eprintln!(
            "{} | reader reconnects {}",
            report(scenario, out.attempts, out.acked, out.stored, out.delivered),
            out.reconnects
        );
        Ok(out)
    }
}
