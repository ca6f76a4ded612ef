//! Configuration: typed settings read through a [`Source`] (process env plus
//! an optional TOML file, or a map in tests), validated at start with errors
//! that name the option.
//!
//! A file given by `CHAT_CONFIG_FILE` is flat or nested TOML; nested keys are
//! joined with `_` and upper-cased under `CHAT_`, so `[gateway] listen = "…"`
//! is the same option as `CHAT_GATEWAY_LISTEN`. Environment wins over the file.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A configuration option that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{key} is required: {reason}")]
    Missing { key: String, reason: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Where option values come from.
pub trait Source: Send + Sync {
    /// The raw value of `key` (e.g. `CHAT_NATS_URL`), if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// Options from a map (tests, composition).
#[derive(Debug, Default, Clone)]
pub struct MapSource(pub HashMap<String, String>);

impl MapSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one option (builder style).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    /// Adds several options (builder style).
    pub fn with_all(mut self, options: impl IntoIterator<Item = (String, String)>) -> Self {
        self.0.extend(options);
        self
    }
}

impl Source for MapSource {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// Process environment over an optional TOML file named by `CHAT_CONFIG_FILE`.
#[derive(Debug, Default)]
pub struct EnvSource {
    file: HashMap<String, String>,
}

impl EnvSource {
    /// Reads `CHAT_CONFIG_FILE` if set.
    pub fn load() -> Result<Self, ConfigError> {
        let Ok(path) = std::env::var("CHAT_CONFIG_FILE") else {
            return Ok(Self::default());
        };
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            file: parse_toml(&text).map_err(|reason| ConfigError::File { path, reason })?,
        })
    }
}

impl Source for EnvSource {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key)
            .ok()
            .or_else(|| self.file.get(key).cloned())
    }
}

/// Flattens a TOML document into `CHAT_…` keys.
pub fn parse_toml(text: &str) -> Result<HashMap<String, String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = HashMap::new();
    flatten("CHAT", &toml::Value::Table(table), &mut out);
    Ok(out)
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut HashMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = format!("{prefix}_{}", k.to_ascii_uppercase().replace('-', "_"));
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        toml::Value::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_string(), joined.join(","));
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Typed access to options with defaults; every error names its option.
pub struct Settings<'a> {
    src: &'a dyn Source,
}

impl<'a> Settings<'a> {
    pub fn new(src: &'a dyn Source) -> Self {
        Self { src }
    }

    /// The raw value, if set and not blank.
    pub fn raw(&self, key: &str) -> Option<String> {
        self.src
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A string option.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_string())
    }

    /// Any option that parses with `FromStr`.
    pub fn parse<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
                key: key.to_string(),
                value: v.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// An optional option that parses with `FromStr`.
    pub fn parse_opt<T>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError::Invalid {
                    key: key.to_string(),
                    value: v.clone(),
                    reason: e.to_string(),
                }),
        }
    }

    /// A number that must be at least `min`.
    pub fn at_least<T>(&self, key: &str, default: T, min: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let v = self.parse(key, default)?;
        if v < min {
            return Err(ConfigError::Invalid {
                key: key.to_string(),
                value: v.to_string(),
                reason: format!("must be at least {min}"),
            });
        }
        Ok(v)
    }

    /// A boolean: true/false/1/0/yes/no/on/off.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    key: key.to_string(),
                    value: v,
                    reason: "expected true or false".into(),
                }),
            },
        }
    }

    /// A duration in milliseconds (option names end in `_MS`), at least 1 ms.
    pub fn millis(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        let ms = self.at_least(
            key,
            u64::try_from(default.as_millis()).unwrap_or(u64::MAX),
            1,
        )?;
        Ok(Duration::from_millis(ms))
    }

    /// A comma-separated list (blank entries dropped).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bounds of a public HTTP listener, from `CHAT_<PREFIX>_MAX_CONNECTIONS`
    /// (10000), `CHAT_<PREFIX>_HEADER_TIMEOUT_MS` (10000) and
    /// `CHAT_<PREFIX>_MAX_HEADER_BYTES` (16384, at least 8192).
    pub fn http_listener(
        &self,
        prefix: &str,
        name: &'static str,
    ) -> Result<crate::http::ServeOptions, ConfigError> {
        Ok(crate::http::ServeOptions {
            name,
            max_connections: self.at_least(
                &format!("CHAT_{prefix}_MAX_CONNECTIONS"),
                10_000usize,
                1,
            )?,
            header_read_timeout: self.millis(
                &format!("CHAT_{prefix}_HEADER_TIMEOUT_MS"),
                Duration::from_secs(10),
            )?,
            max_header_bytes: self.at_least(
                &format!("CHAT_{prefix}_MAX_HEADER_BYTES"),
                16_384usize,
                8192,
            )?,
        })
    }

    /// A secret option.
    pub fn secret(&self, key: &str) -> Option<Secret> {
        self.raw(key).map(Secret::new)
    }

    /// A secret read from the file named by option `key` (surrounding
    /// whitespace trimmed); an unreadable or empty file is an error.
    pub fn password_file(&self, key: &str) -> Result<Option<Secret>, ConfigError> {
        let Some(path) = self.raw(key) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            key: key.to_string(),
            value: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(e.to_string()))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(invalid("the file is empty".into()));
        }
        Ok(Some(Secret::new(secret)))
    }
}

/// Options every service shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// `CHAT_NATS_URL`: NATS servers, comma-separated. Default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `CHAT_NATS_CREDS`: optional path of a NATS credentials file
    /// (operator/JWT mode).
    pub nats_creds: Option<PathBuf>,
    /// The NATS user and password this service connects as (ADR 0006):
    /// `CHAT_<SVC>_NATS_USER` or `CHAT_NATS_USER` (default: the service's
    /// name), password from `CHAT_<SVC>_NATS_PASSWORD_FILE`,
    /// `CHAT_<SVC>_NATS_PASSWORD`, `CHAT_NATS_PASSWORD_FILE` or
    /// `CHAT_NATS_PASSWORD`, first found. Without a password the service
    /// connects without credentials (a NATS with no authorization).
    pub nats_login: Option<NatsLogin>,
    /// `CHAT_MANAGE_NATS`: create streams, consumers and buckets at start
    /// (default true). Off for platforms that manage them declaratively.
    pub manage_nats: bool,
    /// `CHAT_STREAM_REPLICAS`: replicas of streams and buckets (default 1; 3 in production).
    pub stream_replicas: usize,
    /// `CHAT_STREAM_DEDUP_WINDOW_MS`: the room stream's publish
    /// de-duplication window (default 120000). Beyond it, the history store
    /// keeps sends marked `retry` idempotent.
    pub dedup_window: std::time::Duration,
    /// `CHAT_ROOM_TAIL_CACHE`: rooms whose last stream position a process
    /// that appends to rooms (gateway, history) keeps, to number the next
    /// message without a read (default 100000). Beyond it, idle rooms'
    /// positions are dropped and re-read on their next message.
    pub room_tail_cache: usize,
    /// `CHAT_ROOM_PARTITIONS`: partitions of the room stream, used when a
    /// service creates it (default 4, 1 to 32; ADR 0009). Consumers follow
    /// the stream's own setting, so changing this later changes nothing.
    pub room_partitions: u16,
    /// `CHAT_WORKER_HEARTBEAT_MS`: how often an instance of a partitioned
    /// service (fanout, history) renews its entry in `chat_workers`
    /// (default 2000); an entry not renewed for three heartbeats expires and
    /// its partitions move to the other instances.
    pub worker_heartbeat: std::time::Duration,
}

/// A NATS user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsLogin {
    pub user: String,
    pub password: Secret,
}

impl NatsLogin {
    /// Reads the login of service `svc` (`GATEWAY`, …; its NATS user name by
    /// default is `svc` lower-cased).
    fn from_settings(s: &Settings<'_>, svc: &str) -> Result<Option<Self>, ConfigError> {
        let own = |k: &str| format!("CHAT_{svc}_NATS_{k}");
        let password = match s.password_file(&own("PASSWORD_FILE"))? {
            Some(p) => Some(p),
            None => match s.secret(&own("PASSWORD")) {
                Some(p) => Some(p),
                None => match s.password_file("CHAT_NATS_PASSWORD_FILE")? {
                    Some(p) => Some(p),
                    None => s.secret("CHAT_NATS_PASSWORD"),
                },
            },
        };
        let Some(password) = password else {
            return Ok(None);
        };
        let (key, user) = match s.raw(&own("USER")) {
            Some(u) => (own("USER"), u),
            None => (
                "CHAT_NATS_USER".to_string(),
                s.string("CHAT_NATS_USER", &svc.to_ascii_lowercase()),
            ),
        };
        let valid = !user.is_empty()
            && user.len() <= 64
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ConfigError::Invalid {
                key,
                value: user,
                reason: "a NATS user is 1 to 64 of A-Z a-z 0-9 _ -".into(),
            });
        }
        Ok(Some(Self { user, password }))
    }
}

impl Common {
    /// The shared options of service `svc` (`AUTH`, `GATEWAY`, `FANOUT`,
    /// `HISTORY`, `PRESENCE`: it picks the service's own NATS login).
    pub fn from_settings(s: &Settings<'_>, svc: &str) -> Result<Self, ConfigError> {
        let stream_replicas = s.at_least("CHAT_STREAM_REPLICAS", 1usize, 1)?;
        if stream_replicas > 5 {
            return Err(ConfigError::Invalid {
                key: "CHAT_STREAM_REPLICAS".into(),
                value: stream_replicas.to_string(),
                reason: "JetStream allows at most 5 replicas".into(),
            });
        }
        let room_partitions = s.at_least("CHAT_ROOM_PARTITIONS", 4u16, 1)?;
        if room_partitions > chat_core::names::MAX_ROOM_PARTITIONS {
            return Err(ConfigError::Invalid {
                key: "CHAT_ROOM_PARTITIONS".into(),
                value: room_partitions.to_string(),
                reason: format!(
                    "at most {} partitions (each is named in the NATS permissions)",
                    chat_core::names::MAX_ROOM_PARTITIONS
                ),
            });
        }
        let worker_heartbeat = s.millis(
            "CHAT_WORKER_HEARTBEAT_MS",
            std::time::Duration::from_millis(2000),
        )?;
        if worker_heartbeat < std::time::Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "CHAT_WORKER_HEARTBEAT_MS".into(),
                value: worker_heartbeat.as_millis().to_string(),
                reason: "at least 100".into(),
            });
        }
        Ok(Self {
            nats_url: s.string("CHAT_NATS_URL", "nats://127.0.0.1:4222"),
            nats_creds: s.raw("CHAT_NATS_CREDS").map(PathBuf::from),
            nats_login: NatsLogin::from_settings(s, svc)?,
            manage_nats: s.bool("CHAT_MANAGE_NATS", true)?,
            stream_replicas,
            dedup_window: s.millis(
                "CHAT_STREAM_DEDUP_WINDOW_MS",
                std::time::Duration::from_secs(120),
            )?,
            room_tail_cache: s.at_least("CHAT_ROOM_TAIL_CACHE", 100_000usize, 1)?,
            room_partitions,
            worker_heartbeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_nests_into_chat_keys() {
        let m = parse_toml(
            "[gateway]\nlisten = \"0.0.0.0:80\"\nmax-frame-bytes = 10\norigins = [\"a\", \"b\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m["CHAT_GATEWAY_LISTEN"], "0.0.0.0:80");
        assert_eq!(m["CHAT_GATEWAY_MAX_FRAME_BYTES"], "10");
        assert_eq!(m["CHAT_GATEWAY_ORIGINS"], "a,b");
    }

    #[test]
    fn partition_and_worker_options_are_checked_at_their_edges() {
        let common = |k: &str, v: &str| {
            Common::from_settings(&Settings::new(&MapSource::new().with(k, v)), "FANOUT")
                .map(|c| (c.room_partitions, c.worker_heartbeat.as_millis()))
                .map_err(|e| e.to_string())
        };
        let defaults = Common::from_settings(&Settings::new(&MapSource::new()), "FANOUT")
            .map(|c| (c.room_partitions, c.worker_heartbeat.as_millis()))
            .map_err(|e| e.to_string());
        assert_eq!(defaults, Ok((4, 2000)));
        assert_eq!(common("CHAT_ROOM_PARTITIONS", "1"), Ok((1, 2000)));
        assert_eq!(common("CHAT_ROOM_PARTITIONS", "32"), Ok((32, 2000)));
        for bad in ["0", "33", "x"] {
            let e = common("CHAT_ROOM_PARTITIONS", bad).expect_err(bad);
            assert!(e.contains("CHAT_ROOM_PARTITIONS"), "{e}");
        }
        assert_eq!(common("CHAT_WORKER_HEARTBEAT_MS", "100"), Ok((4, 100)));
        let e = common("CHAT_WORKER_HEARTBEAT_MS", "99").expect_err("99 ms");
        assert!(e.contains("CHAT_WORKER_HEARTBEAT_MS"), "{e}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let src = MapSource::new()
            .with("CHAT_X_MS", "soon")
            .with("CHAT_N", "0");
        let s = Settings::new(&src);
        let err = s
            .millis("CHAT_X_MS", Duration::from_secs(1))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CHAT_X_MS") && e.contains("soon")));
        let err = s.at_least("CHAT_N", 5u32, 1).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CHAT_N") && e.contains("at least 1")));
        assert_eq!(s.parse("CHAT_UNSET", 7u32).ok(), Some(7));
    }

    #[test]
    fn nats_login_prefers_the_services_own_options() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap_or_else(|e| panic!("{e}"));
        let login = |src: &MapSource| {
            Common::from_settings(&Settings::new(src), "GATEWAY").map(|c| {
                c.nats_login
                    .map(|l| (l.user, l.password.expose().to_string()))
            })
        };
        assert_eq!(login(&MapSource::new()).ok(), Some(None));
        let shared = MapSource::new().with("CHAT_NATS_PASSWORD", "shared");
        assert_eq!(
            login(&shared).ok().flatten(),
            Some(("gateway".into(), "shared".into()))
        );
        let own = shared.clone().with("CHAT_GATEWAY_NATS_USER", "gw-1").with(
            "CHAT_GATEWAY_NATS_PASSWORD_FILE",
            file.display().to_string(),
        );
        assert_eq!(
            login(&own).ok().flatten(),
            Some(("gw-1".into(), "from-file".into()))
        );
        let bad = shared.clone().with("CHAT_NATS_USER", "a.b");
        let err = login(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("CHAT_NATS_USER"), "{err}");
        let missing = MapSource::new().with("CHAT_NATS_PASSWORD_FILE", "/nonexistent/pw");
        let err = login(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("CHAT_NATS_PASSWORD_FILE"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
