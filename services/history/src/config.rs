//! History service configuration (`CHAT_HISTORY_*` plus the shared NATS
//! options), validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_platform::config::{Common, ConfigError, Settings, Source};

/// History service settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_HISTORY_LISTEN` (127.0.0.1:8082): address of `/healthz`,
    /// `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// `CHAT_HISTORY_DB` (./data/history.db): the embedded SQLite file;
    /// its directory is created if missing.
    pub db: PathBuf,
    /// `CHAT_HISTORY_BATCH` (256, 1..=10000): most room events written to the
    /// store in one transaction; larger batches mean fewer commits under load.
    pub batch: usize,
    /// `CHAT_HISTORY_ACK_WAIT_MS` (30000): how long JetStream waits for the
    /// writer's ack before redelivering; must exceed a slow store write.
    pub ack_wait: Duration,
    /// `CHAT_HISTORY_RETRY_MAX_MS` (30000): longest back-off between retries
    /// of a failing store write (starts at 100 ms and doubles).
    pub retry_max: Duration,
    /// Per-user room limits.
    pub rooms: RoomLimits,
    /// NATS connection and stream management (`CHAT_NATS_URL`, …).
    pub common: Common,
}

/// Bounds on the rooms one user has, enforced here for every gateway at
/// once (the store counts, so all history instances agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// `CHAT_HISTORY_ROOMS_PER_HOUR` (100, at least 1): rooms one user may
    /// create in any rolling hour; one more is `rate_limited`.
    pub created_per_hour: u64,
    /// `CHAT_HISTORY_MAX_ROOMS_PER_USER` (10000, at least 1): rooms one
    /// user may belong to; creating or joining one more is `limit_reached`.
    pub max_per_user: u64,
}

/// Upper bound of `CHAT_HISTORY_BATCH`: beyond it a transaction holds the
/// store lock for long and a redelivered batch repeats a lot of work.
const MAX_BATCH: usize = 10_000;

impl Config {
    /// Reads and validates every option; errors name the option.
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigError> {
        let s = Settings::new(src);
        let batch = s.at_least("CHAT_HISTORY_BATCH", 256usize, 1)?;
        if batch > MAX_BATCH {
            return Err(ConfigError::Invalid {
                key: "CHAT_HISTORY_BATCH".into(),
                value: batch.to_string(),
                reason: format!("must be at most {MAX_BATCH}"),
            });
        }
        Ok(Config {
            listen: s.parse(
                "CHAT_HISTORY_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8082)),
            )?,
            db: PathBuf::from(s.string("CHAT_HISTORY_DB", "./data/history.db")),
            batch,
            ack_wait: s.millis("CHAT_HISTORY_ACK_WAIT_MS", Duration::from_secs(30))?,
            retry_max: s.millis("CHAT_HISTORY_RETRY_MAX_MS", Duration::from_secs(30))?,
            rooms: RoomLimits {
                created_per_hour: s.at_least("CHAT_HISTORY_ROOMS_PER_HOUR", 100u64, 1)?,
                max_per_user: s.at_least("CHAT_HISTORY_MAX_ROOMS_PER_USER", 10_000u64, 1)?,
            },
            common: Common::from_settings(&s, "HISTORY")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use chat_platform::config::MapSource;

    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = Config::from_source(&MapSource::new()).expect("defaults are valid");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8082)));
        assert_eq!(c.db, PathBuf::from("./data/history.db"));
        assert_eq!(c.batch, 256);
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.common.nats_url, "nats://127.0.0.1:4222");
    }

    #[test]
    fn set_options_are_used() {
        let src = MapSource::new()
            .with("CHAT_HISTORY_LISTEN", "0.0.0.0:9000")
            .with("CHAT_HISTORY_DB", "/var/lib/chat/h.db")
            .with("CHAT_HISTORY_BATCH", "10")
            .with("CHAT_NATS_URL", "nats://n:4222");
        let c = Config::from_source(&src).expect("valid");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.db, PathBuf::from("/var/lib/chat/h.db"));
        assert_eq!(c.batch, 10);
        assert_eq!(c.common.nats_url, "nats://n:4222");
    }

    #[test]
    fn invalid_values_name_the_option() {
        for (key, value) in [
            ("CHAT_HISTORY_LISTEN", "nowhere"),
            ("CHAT_HISTORY_BATCH", "0"),
            ("CHAT_HISTORY_BATCH", "10001"),
            ("CHAT_HISTORY_BATCH", "many"),
            ("CHAT_HISTORY_ACK_WAIT_MS", "0"),
        ] {
            let err = Config::from_source(&MapSource::new().with(key, value))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(key),
                "{key}={value} should be rejected naming it, got {err:?}"
            );
        }
    }
}
