//! Configuration of the auth service, read from `CHAT_AUTH_*` options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_platform::{ConfigError, Settings, Source};

/// Everything `run` needs. NATS options (`Common`) are deliberately absent:
/// auth does not talk to NATS yet, and an unused field would suggest it does.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_AUTH_LISTEN`: address of the HTTP API (and `/healthz`,
    /// `/readyz`). Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// `CHAT_AUTH_ADMIN_LISTEN`: address of the ops endpoints (`/healthz`,
    /// `/readyz`, `/metrics`); keep it off the internet. Default
    /// `127.0.0.1:9081`.
    pub admin_listen: SocketAddr,
    /// Bounds of the public listener: `CHAT_AUTH_MAX_CONNECTIONS` (10000),
    /// `CHAT_AUTH_HEADER_TIMEOUT_MS` (10000), `CHAT_AUTH_MAX_HEADER_BYTES`
    /// (16384).
    pub http: chat_platform::http::ServeOptions,
    /// `CHAT_AUTH_DB`: SQLite file holding users. Default `./data/auth.db`.
    pub db: PathBuf,
    /// `CHAT_AUTH_KEY_FILE`: PKCS#8 PEM Ed25519 key that signs access tokens.
    /// Every replica must use the same file. Default
    /// `./data/auth-signing-key.pem`.
    pub key_file: PathBuf,
    /// `CHAT_AUTH_GENERATE_KEY`: create the key file (mode 0600) when it is
    /// missing; when false a missing key file stops the start. Default true.
    pub generate_key: bool,
    /// `CHAT_AUTH_ISSUER`: `iss` of issued tokens. Default `urn:chat:auth`.
    pub issuer: String,
    /// `CHAT_AUTH_AUDIENCE`: `aud` of issued tokens. Default `chat`.
    pub audience: String,
    /// `CHAT_AUTH_ACCESS_TTL_MS`: lifetime of access tokens, at least 1000
    /// (JWT times are whole seconds). Default 900000 (15 minutes).
    pub access_ttl: Duration,
    /// `CHAT_AUTH_DEV_LOGIN`: enable `POST /auth/dev/login`, which signs in
    /// anyone by username. For development only. Default false.
    pub dev_login: bool,
}

impl Config {
    /// Reads and validates the options; errors name the bad option.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let s = Settings::new(src);
        let ttl_ms = s.at_least("CHAT_AUTH_ACCESS_TTL_MS", 900_000u64, 1000)?;
        Ok(Self {
            listen: s.parse("CHAT_AUTH_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            admin_listen: s.parse(
                "CHAT_AUTH_ADMIN_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 9081)),
            )?,
            http: s.http_listener("AUTH", "auth")?,
            db: PathBuf::from(s.string("CHAT_AUTH_DB", "./data/auth.db")),
            key_file: PathBuf::from(s.string("CHAT_AUTH_KEY_FILE", "./data/auth-signing-key.pem")),
            generate_key: s.bool("CHAT_AUTH_GENERATE_KEY", true)?,
            issuer: s.string("CHAT_AUTH_ISSUER", "urn:chat:auth"),
            audience: s.string("CHAT_AUTH_AUDIENCE", "chat"),
            access_ttl: Duration::from_millis(ttl_ms),
            dev_login: s.bool("CHAT_AUTH_DEV_LOGIN", false)?,
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
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8081)));
        assert_eq!(c.db, PathBuf::from("./data/auth.db"));
        assert_eq!(c.key_file, PathBuf::from("./data/auth-signing-key.pem"));
        assert!(c.generate_key);
        assert_eq!(c.issuer, "urn:chat:auth");
        assert_eq!(c.audience, "chat");
        assert_eq!(c.access_ttl, Duration::from_secs(900));
        assert!(!c.dev_login);
    }

    #[test]
    fn options_are_read_from_their_env_names() {
        let src = MapSource::new()
            .with("CHAT_AUTH_LISTEN", "0.0.0.0:9000")
            .with("CHAT_AUTH_DB", "/tmp/a.db")
            .with("CHAT_AUTH_KEY_FILE", "/tmp/k.pem")
            .with("CHAT_AUTH_GENERATE_KEY", "false")
            .with("CHAT_AUTH_ISSUER", "urn:x")
            .with("CHAT_AUTH_AUDIENCE", "y")
            .with("CHAT_AUTH_ACCESS_TTL_MS", "60000")
            .with("CHAT_AUTH_DEV_LOGIN", "true");
        let c = Config::from_source(&src).expect("valid");
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(c.db, PathBuf::from("/tmp/a.db"));
        assert_eq!(c.key_file, PathBuf::from("/tmp/k.pem"));
        assert!(!c.generate_key);
        assert_eq!((c.issuer.as_str(), c.audience.as_str()), ("urn:x", "y"));
        assert_eq!(c.access_ttl, Duration::from_secs(60));
        assert!(c.dev_login);
    }

    #[test]
    fn bad_values_are_errors_naming_the_option() {
        for (key, value) in [
            ("CHAT_AUTH_LISTEN", "nowhere"),
            ("CHAT_AUTH_ADMIN_LISTEN", "nowhere"),
            ("CHAT_AUTH_MAX_CONNECTIONS", "0"),
            ("CHAT_AUTH_HEADER_TIMEOUT_MS", "0"),
            ("CHAT_AUTH_MAX_HEADER_BYTES", "100"),
            ("CHAT_AUTH_ACCESS_TTL_MS", "999"),
            ("CHAT_AUTH_ACCESS_TTL_MS", "soon"),
            ("CHAT_AUTH_DEV_LOGIN", "maybe"),
            ("CHAT_AUTH_GENERATE_KEY", "perhaps"),
        ] {
            let err = Config::from_source(&MapSource::new().with(key, value))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value} gave {err:?}");
        }
    }
}
