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
/// or a dropped connection it retries the same id until acknowledged.
pub async fn sender(
    ws_url: &str,
    token: &str,
    room: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Sent> {
    let mut acked = Acked::new();
    let mut attempts = 0;
    let mut conn: Option<WsClient> = None;
    for i in 0..n {
        let cmid = format!("{prefix}-{i}");
        let end = tokio::time::Instant::now() + ACK_DEADLINE;
        loop {
            if tokio::time::Instant::now() > end {
                bail!("{cmid} not acknowledged within {ACK_DEADLINE:?}");
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match WsClient::connect_as(ws_url, token).await {
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

/// Reads `room`'s messages until it has seen sequence `last`, resuming
/// after any disconnect; returns every sequence in the order received.
pub async fn reader_until(
    ws_url: &str,
    token: &str,
    room: &str,
    last: u64,
    deadline: Duration,
) -> anyhow::Result<Vec<u64>> {
    let end = tokio::time::Instant::now() + deadline;
    let mut seen: Vec<u64> = Vec::new();
    let mut conn: Option<WsClient> = None;
    while seen.last().copied().unwrap_or(0) < last {
        if tokio::time::Instant::now() > end {
            bail!(
                "reader saw up to {:?} of {last} in {deadline:?}",
                seen.last()
            );
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let from = seen.last().copied().unwrap_or(0);
                match resume(ws_url, token, room, from).await {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        match c
            .recv_where(|v| v["type"] == "event" && v["kind"] == "msg" && v["room"] == room)
            .await
        {
            Ok(ev) => seen.push(ev["seq"].as_u64().context("seq")?),
            Err(e) if e.to_string().contains("no matching frame") => {}
            Err(_) => conn = None,
        }
    }
    Ok(seen)
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

/// Every stored message of `room` (paging forward), as (seq, client id).
pub async fn stored(ws_url: &str, token: &str, room: &str) -> anyhow::Result<Vec<(u64, String)>> {
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
