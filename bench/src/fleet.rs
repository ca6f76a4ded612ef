//! `chat-bench fleet`: idle connections beyond one process's file limit.
//! Starts a system with several gateways and one `chat-bench run --scenario
//! idle` child process per gateway (each process here may open at most
//! 20,000 files), and watches the total the gateways report while every
//! child holds its connections.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use crate::{System, get};

/// The fleet run's results.
#[derive(Debug, Serialize)]
pub struct FleetReport {
    pub gateways: usize,
    pub per_gateway: usize,
    /// Most connections the gateways reported at once (their
    /// `chat_gateway_connections` gauges, summed).
    pub peak_connections: u64,
    /// Seconds from start until the peak was first seen.
    pub seconds_to_peak: f64,
    /// Every gateway's RSS at the peak, MiB.
    pub gateway_rss_mib: Vec<f64>,
    /// Per child: connections it opened and the RSS growth of its gateway
    /// per connection, bytes.
    pub children: Vec<Child>,
    /// Kernel TCP memory at the peak, MiB (`/proc/net/sockstat`).
    pub kernel_tcp_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Child {
    pub gateway: String,
    pub connected: u64,
    pub disconnects: u64,
    pub gateway_bytes_per_connection: Option<f64>,
}

/// `chat-bench fleet [--gateways N] [--per-gateway C] [--hold S] [--out DIR]`.
pub async fn run(f: &HashMap<String, String>) -> anyhow::Result<()> {
    let gateways: usize = get(f, "gateways", 6)?;
    let per_gateway: usize = get(f, "per-gateway", 17_000)?;
    let hold: f64 = get(f, "hold", 30.0)?;
    let out: PathBuf = get(f, "out", PathBuf::from("bench/results/fleet"))?;
    if per_gateway > 19_000 {
        bail!("--per-gateway {per_gateway}: at most 19,000 (20,000 files per process)");
    }
    let sys = System::start(gateways, 1).await?;
    let exe = std::env::current_exe().context("own executable")?;
    let started = Instant::now();
    let mut children = Vec::new();
    for (i, gw) in sys.deployment.gateways.iter().enumerate() {
        let pid = gw.pid().context("gateway pid")?;
        let dir = out.join(format!("gw-{}", i + 1));
        let child = tokio::process::Command::new(&exe)
            .args(["run", "--scenario", "idle", "--ws"])
            .arg(gw.ws_url())
            .arg("--key-file")
            .arg(sys.key_file())
            .args(["--connections", &per_gateway.to_string()])
            .args(["--first-user", &(i * (per_gateway + 2)).to_string()])
            .args(["--warmup", "0", "--duration", &hold.to_string()])
            .args(["--watch", &format!("{}={pid}", gw.name)])
            .arg("--out")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn a chat-bench child")?;
        children.push((gw.name.clone(), dir, child));
    }

    // Watch the gateways' own count until every child has finished.
    let (mut peak, mut at_peak, mut rss_at_peak, mut tcp_at_peak) = (0u64, 0.0, Vec::new(), None);
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut total = 0u64;
        for gw in &sys.deployment.gateways {
            total += gw
                .metric("chat_gateway_connections")
                .await
                .unwrap_or(0.0)
                .max(0.0) as u64;
        }
        if total > peak {
            peak = total;
            at_peak = started.elapsed().as_secs_f64();
            rss_at_peak = sys
                .deployment
                .gateways
                .iter()
                .map(|g| {
                    g.pid()
                        .and_then(crate::procs::read)
                        .map_or(0.0, |r| r.rss_bytes as f64 / 1_048_576.0)
                })
                .collect();
            tcp_at_peak = crate::procs::kernel_tcp_bytes().map(|b| b as f64 / 1_048_576.0);
            eprintln!("chat-bench fleet: {total} connections after {at_peak:.0} s");
        }
        for (i, (_, _, child)) in children.iter_mut().enumerate() {
            if !done[i] && child.try_wait()?.is_some() {
                done[i] = true;
            }
        }
    }

    let mut results = Vec::new();
    for (name, dir, mut child) in children {
        let status = child.wait().await?;
        let outcome = std::fs::read_to_string(dir.join("report.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["outcomes"].get(0).cloned());
        let Some(o) = outcome else {
            bail!("the chat-bench child for {name} failed ({status}); see its stderr above");
        };
        results.push(Child {
            gateway: name,
            connected: o["connected"].as_u64().unwrap_or(0),
            disconnects: o["disconnects"].as_u64().unwrap_or(0),
            gateway_bytes_per_connection: o["gateway_bytes_per_connection"].as_f64(),
        });
    }
    let report = FleetReport {
        gateways,
        per_gateway,
        peak_connections: peak,
        seconds_to_peak: at_peak,
        gateway_rss_mib: rss_at_peak,
        children: results,
        kernel_tcp_mib: tcp_at_peak,
    };
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("fleet.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report);
    std::fs::write(out.join("fleet.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn markdown(r: &FleetReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Idle fleet: {} gateways × {} connections; peak {} connections held at once \
         ({:.0} s after start); kernel TCP memory {} MiB.\n",
        r.gateways,
        r.per_gateway,
        r.peak_connections,
        r.seconds_to_peak,
        r.kernel_tcp_mib.map_or("?".into(), |m| format!("{m:.0}")),
    );
    let _ = writeln!(
        s,
        "| gateway | connected | disconnects | RSS at peak MiB | gateway bytes/conn |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (i, c) in r.children.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} |",
            c.gateway,
            c.connected,
            c.disconnects,
            r.gateway_rss_mib.get(i).copied().unwrap_or(0.0),
            c.gateway_bytes_per_connection
                .map_or("?".into(), |b| format!("{b:.0}")),
        );
    }
    s
}
