//! CPU and memory of the measured processes, from `/proc`, and the
//! kernel's TCP socket memory (`/proc/net/sockstat`).

use std::time::Instant;

use serde::Serialize;

/// One process to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// A reading of one process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub rss_bytes: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub at: Instant,
}

/// Reads `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime, stime).
pub fn read(pid: u32) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Reading {
        rss_bytes: rss_kib * 1024,
        cpu_ticks: utime + stime,
        at: Instant::now(),
    })
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// A process over a measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub name: String,
    pub pid: u32,
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    /// Average CPU over the window, in percent of one core.
    pub cpu_percent: f64,
}

/// Usage between two readings.
pub fn usage(w: &Watched, start: &Reading, end: &Reading) -> Usage {
    let secs = end.at.duration_since(start.at).as_secs_f64().max(1e-6);
    let cpu = end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / ticks_per_second();
    Usage {
        name: w.name.clone(),
        pid: w.pid,
        rss_start_mib: start.rss_bytes as f64 / 1_048_576.0,
        rss_end_mib: end.rss_bytes as f64 / 1_048_576.0,
        cpu_percent: cpu / secs * 100.0,
    }
}

/// Memory the kernel holds for TCP sockets (`TCP: … mem <pages>`), bytes.
pub fn kernel_tcp_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            let pages: u64 = it.next()?.parse().ok()?;
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .map_or(4096, |p| p as u64);
            return Some(pages * page);
        }
    }
    None
}
