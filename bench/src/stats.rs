//! What a run counts: counters, and latency histograms (microseconds)
//! sharded by connection so thousands of tasks rarely share a lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 32;
/// Highest latency recorded: 60 s, in microseconds.
const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds, sharded.
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latency {
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(
                    Histogram::new_with_bounds(1, MAX_US, 3)
                        .unwrap_or_else(|e| panic!("histogram bounds are valid: {e}")),
                )
            })
            .collect();
        Self { shards }
    }

    /// Records one latency for connection `conn`.
    pub fn record(&self, conn: usize, micros: u64) {
        let mut h = match self.shards[conn % SHARDS].lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        h.saturating_record(micros.clamp(1, MAX_US));
    }

    /// Forgets everything (end of the warm-up).
    pub fn reset(&self) {
        for s in &self.shards {
            match s.lock() {
                Ok(mut h) => h.reset(),
                Err(p) => p.into_inner().reset(),
            }
        }
    }

    /// The merged percentiles, in milliseconds.
    pub fn summary(&self) -> Percentiles {
        let mut all: Histogram<u64> = Histogram::new_with_bounds(1, MAX_US, 3)
            .unwrap_or_else(|e| panic!("histogram bounds are valid: {e}"));
        for s in &self.shards {
            let h = match s.lock() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            // Same bounds: adding cannot fail.
            let _same_bounds = all.add(&*h);
        }
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: all.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: all.max() as f64 / 1000.0,
        }
    }
}

/// Latency percentiles of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Everything a run counts.
pub struct Stats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    /// Every frame read, of any type (to see when the system is quiet).
    pub frames: AtomicU64,
    pub disconnects: AtomicU64,
    /// Why connections ended: the server's close code ("none" when the
    /// socket ended without one).
    pub close_codes: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Sender's write → each recipient's read.
    pub e2e: Latency,
    /// Sender's write → its ack.
    pub ack: Latency,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            close_codes: Mutex::new(std::collections::BTreeMap::new()),
            e2e: Latency::new(),
            ack: Latency::new(),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counters back to zero and histograms emptied (after the warm-up).
    /// Counts one connection ended with `code`.
    pub fn closed(&self, code: String) {
        let mut m = self.close_codes.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(code).or_default() += 1;
    }

    pub fn close_codes(&self) -> std::collections::BTreeMap<String, u64> {
        self.close_codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn reset_window(&self) {
        for c in [&self.sent, &self.acked, &self.delivered, &self.errors] {
            c.store(0, Ordering::Relaxed);
        }
        self.e2e.reset();
        self.ack.reset();
    }
}
