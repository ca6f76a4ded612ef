//! Graceful overload: a gateway appends at most
//! `CHAT_GATEWAY_MAX_SENDS_IN_FLIGHT` sends at once and sheds the rest at
//! once with `unavailable` (nothing stored); retrying with the same id
//! stores each message exactly once, in a gap-free sequence.

use std::collections::BTreeSet;

use chat_e2e::{System, create_room, join_room};
use chat_testkit::WsClient;
use serde_json::json;

const SENDERS: usize = 8;
const EACH: usize = 25;

/// Sends `EACH` messages at once, then retries each shed one (same id)
/// until acked. Returns (sequences acked, sends shed).
async fn send_all(mut c: WsClient, room: String, who: usize) -> anyhow::Result<(Vec<u64>, usize)> {
    let id = |i: usize| format!("s{who}-{i}");
    for i in 0..EACH {
        c.send_json(&json!({"type": "send", "id": id(i), "room": room, "text": format!("m{i}")}))
            .await?;
    }
    let mut acked = Vec::new();
    let mut shed = Vec::new();
    for _ in 0..EACH {
        let r = c
            .recv_where(|v| v["type"] == "ack" || v["type"] == "error")
            .await?;
        match (r["type"].as_str(), r["code"].as_str()) {
            (Some("ack"), _) => acked.push(r["seq"].as_u64().unwrap_or(0)),
            (Some("error"), Some("unavailable")) => {
                let i = r["id"].as_str().map(str::to_string).unwrap_or_default();
                shed.push(i);
            }
            _ => anyhow::bail!("unexpected reply {r}"),
        }
    }
    let shed_count = shed.len();
    for cmid in shed {
        let text = cmid
            .rsplit_once('-')
            .map_or(String::new(), |(_, i)| format!("m{i}"));
        loop {
            let r = chat_e2e::resend(&mut c, &room, &cmid, &text).await?;
            if r["type"] == "ack" {
                anyhow::ensure!(r["duplicate"] == false, "a shed send was not stored: {r}");
                acked.push(r["seq"].as_u64().unwrap_or(0));
                break;
            }
            anyhow::ensure!(r["code"] == "unavailable", "unexpected reply {r}");
        }
    }
    Ok((acked, shed_count))
}

#[tokio::test]
async fn sends_beyond_the_in_flight_limit_are_shed_and_a_retry_stores_each_once() {
    let sys = System::start_with(&[
        ("CHAT_GATEWAY_MAX_SENDS_IN_FLIGHT", "1"),
        ("CHAT_GATEWAY_RATE_PER_SEC", "10000"),
        ("CHAT_GATEWAY_RATE_BURST", "10000"),
    ])
    .await
    .expect("system");
    let (mut owner, _) = sys.client("owner").await.expect("owner");
    let room = create_room(&mut owner, "busy").await.expect("room");
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let (mut c, _) = sys.client(&format!("sender{i}")).await.expect("sender");
        join_room(&mut c, &room).await.expect("join");
        senders.push(c);
    }
    let runs = senders
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(send_all(c, room.clone(), i)));
    let mut seqs = BTreeSet::new();
    let mut shed = 0;
    for run in futures::future::join_all(runs).await {
        let (acked, s) = run.expect("task").expect("sender run");
        shed += s;
        for seq in acked {
            assert!(seqs.insert(seq), "sequence {seq} acked twice");
        }
    }
    assert!(
        shed > 0,
        "{SENDERS} connections sending at once never exceeded 1 send in flight"
    );
    let total = (SENDERS * EACH) as u64;
    assert_eq!(
        seqs,
        (1..=total).collect::<BTreeSet<_>>(),
        "every message stored once, gap-free"
    );
    let counted = sys
        .metric("chat_gateway_sends_shed_total")
        .await
        .expect("metrics");
    assert!(counted >= shed as f64, "{counted} < {shed}");
}
