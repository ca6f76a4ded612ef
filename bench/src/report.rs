//! Results as JSON (everything) and a Markdown summary.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::scenario::Outcome;

/// Labels of the socket.io peer's outcomes start with this.
pub const PEER_PREFIX: &str = "socket.io ";

/// A whole run: the machine, then every scenario's outcome.
#[derive(Debug, Serialize)]
pub struct Report {
    pub started_unix: u64,
    pub machine: Machine,
    pub outcomes: Vec<Outcome>,
}

/// What the figures were measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn here() -> Self {
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next().map(str::to_string))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: mem_kib / 1_048_576.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// `338 (4009: 300, none: 38)`: how many, and the close codes.
fn disconnects(o: &Outcome) -> String {
    if o.close_codes.is_empty() {
        return o.disconnects.to_string();
    }
    let codes: Vec<String> = o
        .close_codes
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    format!("{} ({})", o.disconnects, codes.join(", "))
}

/// The Markdown summary of `r`.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} CPUs, {:.0} GiB, Linux {}; load generator on the same machine, loopback.\n",
        m.cpus, m.memory_gib, m.kernel
    );
    let _ = writeln!(
        s,
        "| scenario | conns | offered msg/s | acks/s | deliveries/s | e2e p50 ms | e2e p99 ms | ack p99 ms | errors | disconnects |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for o in &r.outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            o.params.label,
            o.connected,
            o.params.rate,
            o.acks_per_second,
            o.deliveries_per_second,
            o.e2e_latency.p50_ms,
            o.e2e_latency.p99_ms,
            o.ack_latency.p99_ms,
            o.errors,
            disconnects(o),
        );
    }
    peer_table(&mut s, &r.outcomes);
    let idle: Vec<&Outcome> = r
        .outcomes
        .iter()
        .filter(|o| o.gateway_bytes_per_connection.is_some())
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(
            s,
            "\n| idle run | conns | gateway RSS / conn | kernel TCP memory / conn |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for o in idle {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} B | {} |",
                o.params.label,
                o.connected,
                o.gateway_bytes_per_connection.unwrap_or(0.0),
                o.kernel_tcp_bytes_per_connection
                    .map_or("n/a".to_string(), |b| format!("{b:.0} B")),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| scenario | process | CPU % of one core | RSS start → end MiB |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for o in &r.outcomes {
        for p in &o.processes {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.1} → {:.1} |",
                o.params.label, p.name, p.cpu_percent, p.rss_start_mib, p.rss_end_mib
            );
        }
    }
    s
}

/// Ours beside the peer's, scenario by scenario, from the same run.
fn peer_table(s: &mut String, outcomes: &[Outcome]) {
    let pairs: Vec<(&Outcome, &Outcome)> = outcomes
        .iter()
        .filter(|o| !o.params.label.starts_with(PEER_PREFIX))
        .filter_map(|ours| {
            let label = format!("{PEER_PREFIX}{}", ours.params.label);
            Some((ours, outcomes.iter().find(|o| o.params.label == label)?))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n| scenario (same run) | acks/s ours / socket.io | e2e p50 ms ours / socket.io | e2e p99 ms ours / socket.io | p99 ours ÷ socket.io | server CPU % ours / socket.io |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (ours, peer) in pairs {
        let ratio = if peer.e2e_latency.p99_ms > 0.0 {
            format!("{:.1}", ours.e2e_latency.p99_ms / peer.e2e_latency.p99_ms)
        } else {
            "n/a".to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} / {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {:.0} / {:.0} |",
            ours.params.label,
            ours.acks_per_second,
            peer.acks_per_second,
            ours.e2e_latency.p50_ms,
            peer.e2e_latency.p50_ms,
            ours.e2e_latency.p99_ms,
            peer.e2e_latency.p99_ms,
            ratio,
            server_cpu(ours),
            server_cpu(peer),
        );
    }
}

/// CPU of every watched process (the system under test), % of one core.
fn server_cpu(o: &Outcome) -> f64 {
    o.processes.iter().map(|p| p.cpu_percent).sum()
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(dir: &Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    Ok(())
}
