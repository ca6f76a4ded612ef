//! Configuration of the presence service (`CHAT_PRESENCE_*` plus the shared
//! NATS options), validated at start.

use std::net::SocketAddr;
use std::time::Duration;

use chat_platform::config::Common;
use chat_platform::{ConfigError, Settings, Source};

/// Default listen address of the ops endpoints.
const DEFAULT_LISTEN: &str = "127.0.0.1:8084";
/// Default lifetime of a (user, gateway) entry without heartbeat.
const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Shortest accepted TTL: the expiry markers' own lifetime is at least 1 s,
/// and a shorter TTL would expire users between two ordinary heartbeats.
pub const MIN_TTL_MS: u64 = 1000;

/// Everything the presence service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_PRESENCE_LISTEN`: where `/healthz`, `/readyz` and `/metrics` are
    /// served (default `127.0.0.1:8084`).
    pub listen: SocketAddr,
    /// `CHAT_PRESENCE_TTL_MS`: how long a (user, gateway) entry lives without a
    /// heartbeat (default 30000, at least 1000). Gateways must heartbeat well
    /// within it; it bounds how long a crashed gateway's users look online.
    /// Applies when the bucket is created; an existing bucket keeps its own.
    pub ttl: Duration,
    /// NATS connection and resource management options.
    pub common: Common,
}

impl Config {
    /// Reads and validates every option; errors name the offending option.
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigError> {
        let s = Settings::new(src);
        let listen = s.parse(
            "CHAT_PRESENCE_LISTEN",
            DEFAULT_LISTEN
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    key: "CHAT_PRESENCE_LISTEN".into(),
                    value: DEFAULT_LISTEN.into(),
                    reason: e.to_string(),
                })?,
        )?;
        let ttl_ms = s.at_least(
            "CHAT_PRESENCE_TTL_MS",
            u64::try_from(DEFAULT_TTL.as_millis()).unwrap_or(u64::MAX),
            MIN_TTL_MS,
        )?;
        Ok(Config {
            listen,
            ttl: Duration::from_millis(ttl_ms),
            common: Common::from_settings(&s, "PRESENCE")?,
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
        assert_eq!(c.listen.to_string(), "127.0.0.1:8084");
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert!(c.common.manage_nats);
    }

    #[test]
    fn a_ttl_below_one_second_is_rejected_naming_the_option() {
        let src = MapSource::new().with("CHAT_PRESENCE_TTL_MS", "999");
        let err = Config::from_source(&src).expect_err("999 ms is too short");
        assert!(err.to_string().contains("CHAT_PRESENCE_TTL_MS"), "{err}");
    }

    #[test]
    fn a_bad_listen_address_is_rejected_naming_the_option() {
        let src = MapSource::new().with("CHAT_PRESENCE_LISTEN", "nowhere");
        let err = Config::from_source(&src).expect_err("not an address");
        assert!(err.to_string().contains("CHAT_PRESENCE_LISTEN"), "{err}");
    }
}
