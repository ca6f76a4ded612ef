//! Configuration of the fanout service (`CHAT_FANOUT_*` plus the shared NATS
//! options), validated at start.

use std::net::SocketAddr;
use std::time::Duration;

use chat_platform::config::Common;
use chat_platform::{ConfigError, Settings, Source};

/// Default listen address of the ops endpoints.
const DEFAULT_LISTEN: &str = "127.0.0.1:8083";
/// Default number of room events fetched per pull.
const DEFAULT_BATCH: usize = 256;
/// Largest batch accepted: one pull's messages are all pending at once.
pub const MAX_BATCH: usize = 10_000;

/// Everything the fanout service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_FANOUT_LISTEN`: where `/healthz`, `/readyz` and `/metrics` are
    /// served (default `127.0.0.1:8083`).
    pub listen: SocketAddr,
    /// `CHAT_FANOUT_BATCH`: room events fetched per pull from the durable
    /// consumer (default 256, 1..=10000). Larger batches mean fewer round
    /// trips under load; events are still handled one by one, in order.
    pub batch: usize,
    /// `CHAT_FANOUT_HEADS_INTERVAL_MS` (2000, at least 100): how often each
    /// gateway is sent the latest message sequence delivered to it per
    /// recently active room (`gw.<id>.heads`), so a lost delivery of a
    /// room's last message is noticed and filled.
    pub heads_interval: Duration,
    /// `CHAT_FANOUT_HEADS_WINDOW_MS` (30000, at least the interval): how long
    /// after its last message a room's head keeps being sent.
    pub heads_window: Duration,
    /// `CHAT_FANOUT_PRESENCE_MAX_ROOM` (500): presence is pushed to
    /// co-members of rooms with at most this many members. In larger rooms
    /// it is not: when n members come online, pushing each to all others
    /// costs n² frames (a room of 2,000 coming online: 4 million). 0 turns
    /// presence pushes off.
    pub presence_max_room: usize,
    /// `CHAT_FANOUT_PRESENCE_SNAPSHOT_MAX` (1000, at least 1): most users a
    /// `presence.snapshot` lists (the online co-members a connecting
    /// session is told about); beyond it the list is cut and says so.
    pub presence_snapshot_max: usize,
    /// `CHAT_FANOUT_MEMBER_CACHE_ROOMS` (100000, at least 1): rooms whose
    /// members an instance caches; beyond it one is evicted (and read from
    /// history again on its next event).
    pub member_cache_rooms: usize,
    /// `CHAT_FANOUT_ROOM_WIDE_MIN_MEMBERS` (256, at least 1): an event of a
    /// room with at least this many members is published once on
    /// `rooms.deliver`, to every gateway, which finds the recipients in its
    /// own membership index; smaller rooms get one delivery per gateway
    /// naming the online recipients there.
    pub room_wide_min_members: usize,
    /// NATS connection and resource management options.
    pub common: Common,
}

impl Config {
    /// Reads and validates every option; errors name the offending option.
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigError> {
        let s = Settings::new(src);
        let listen = s.parse(
            "CHAT_FANOUT_LISTEN",
            DEFAULT_LISTEN
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    key: "CHAT_FANOUT_LISTEN".into(),
                    value: DEFAULT_LISTEN.into(),
                    reason: e.to_string(),
                })?,
        )?;
        let batch = s.at_least("CHAT_FANOUT_BATCH", DEFAULT_BATCH, 1)?;
        if batch > MAX_BATCH {
            return Err(ConfigError::Invalid {
                key: "CHAT_FANOUT_BATCH".into(),
                value: batch.to_string(),
                reason: format!("must be at most {MAX_BATCH}"),
            });
        }
        let heads_interval =
            Duration::from_millis(s.at_least("CHAT_FANOUT_HEADS_INTERVAL_MS", 2000u64, 100)?);
        let heads_window = s.millis("CHAT_FANOUT_HEADS_WINDOW_MS", Duration::from_secs(30))?;
        if heads_window < heads_interval {
            return Err(ConfigError::Invalid {
                key: "CHAT_FANOUT_HEADS_WINDOW_MS".into(),
                value: heads_window.as_millis().to_string(),
                reason: "must be at least CHAT_FANOUT_HEADS_INTERVAL_MS".into(),
            });
        }
        Ok(Config {
            presence_snapshot_max: s.at_least("CHAT_FANOUT_PRESENCE_SNAPSHOT_MAX", 1000usize, 1)?,
            member_cache_rooms: s.at_least("CHAT_FANOUT_MEMBER_CACHE_ROOMS", 100_000usize, 1)?,
            listen,
            batch,
            heads_interval,
            heads_window,
            presence_max_room: s.at_least("CHAT_FANOUT_PRESENCE_MAX_ROOM", 500usize, 0)?,
            room_wide_min_members: s.at_least("CHAT_FANOUT_ROOM_WIDE_MIN_MEMBERS", 256usize, 1)?,
            common: Common::from_settings(&s, "FANOUT")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_platform::config::MapSource;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = Config::from_source(&MapSource::new()).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8083");
        assert_eq!(c.batch, 256);
        assert_eq!(c.heads_interval, Duration::from_secs(2));
        assert_eq!(c.heads_window, Duration::from_secs(30));
        assert_eq!(c.presence_max_room, 500);
        assert_eq!(c.room_wide_min_members, 256);
    }

    #[test]
    fn room_wide_deliveries_start_at_one_member_at_the_least() {
        let one = MapSource::new().with("CHAT_FANOUT_ROOM_WIDE_MIN_MEMBERS", "1");
        let c = Config::from_source(&one).expect("1 is the smallest");
        assert_eq!(c.room_wide_min_members, 1);
        let zero = MapSource::new().with("CHAT_FANOUT_ROOM_WIDE_MIN_MEMBERS", "0");
        let err = Config::from_source(&zero).expect_err("0 is refused");
        assert!(
            err.to_string()
                .contains("CHAT_FANOUT_ROOM_WIDE_MIN_MEMBERS"),
            "{err}"
        );
    }

    #[test]
    fn heads_options_are_checked_at_their_edges() {
        let ok = MapSource::new()
            .with("CHAT_FANOUT_HEADS_INTERVAL_MS", "100")
            .with("CHAT_FANOUT_HEADS_WINDOW_MS", "100");
        let c = Config::from_source(&ok).expect("window equal to the interval");
        assert_eq!(c.heads_interval, Duration::from_millis(100));
        let fast = MapSource::new().with("CHAT_FANOUT_HEADS_INTERVAL_MS", "99");
        let err = Config::from_source(&fast).expect_err("below 100 ms");
        assert!(
            err.to_string().contains("CHAT_FANOUT_HEADS_INTERVAL_MS"),
            "{err}"
        );
        let short = MapSource::new()
            .with("CHAT_FANOUT_HEADS_INTERVAL_MS", "5000")
            .with("CHAT_FANOUT_HEADS_WINDOW_MS", "4999");
        let err = Config::from_source(&short).expect_err("window below the interval");
        assert!(
            err.to_string().contains("CHAT_FANOUT_HEADS_WINDOW_MS"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_or_huge_batch_is_rejected_naming_the_option() {
        for bad in ["0", "10001", "many"] {
            let src = MapSource::new().with("CHAT_FANOUT_BATCH", bad);
            let err = Config::from_source(&src).expect_err("invalid batch");
            assert!(
                err.to_string().contains("CHAT_FANOUT_BATCH"),
                "{bad}: {err}"
            );
        }
    }
}
