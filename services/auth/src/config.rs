//! Configuration of the auth service, read from `CHAT_AUTH_*` options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_platform::config::Common;
use chat_platform::{ConfigError, Settings, Source};

/// Longest allowed access-token lifetime: 15 minutes.
pub const MAX_ACCESS_TTL_MS: u64 = 900_000;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS (revocations go to the `chat_revoked` bucket); the login is
    /// `CHAT_AUTH_NATS_PASSWORD_FILE` / `CHAT_AUTH_NATS_USER`.
    pub common: Common,
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
    /// `CHAT_AUTH_PUBLISHED_KEY_FILES`: comma-separated PEM key files whose
    /// public keys the JWKS also serves (the previous key after a rotation,
    /// or the next one before it). Default none.
    pub published_key_files: Vec<PathBuf>,
    /// `CHAT_AUTH_ISSUER`: `iss` of issued tokens. Default `urn:chat:auth`.
    pub issuer: String,
    /// `CHAT_AUTH_AUDIENCE`: `aud` of issued tokens. Default `chat`.
    pub audience: String,
    /// `CHAT_AUTH_ACCESS_TTL_MS`: lifetime of access tokens, 1000 (JWT
    /// times are whole seconds) to 900000. Default 900000 (15 minutes).
    pub access_ttl: Duration,
    /// `CHAT_AUTH_SESSION_TTL_MS`: absolute lifetime of a sign-in session.
    /// Default 2592000000 (30 days).
    pub session_ttl: Duration,
    /// `CHAT_AUTH_REFRESH_TTL_MS`: lifetime of one refresh token (each
    /// refresh renews it, up to the session's end). Default 1209600000
    /// (14 days).
    pub refresh_ttl: Duration,
    /// `CHAT_AUTH_MAX_SESSIONS_PER_USER`: live sessions per user; signing in
    /// beyond revokes the oldest. Default 50.
    pub max_sessions_per_user: usize,
    /// `CHAT_AUTH_COOKIE_SECURE`: mark the refresh cookie `Secure`. Turn off
    /// only for plain-HTTP hosts other than localhost. Default true.
    pub cookie_secure: bool,
    /// `CHAT_AUTH_DEV_LOGIN`: enable `POST /auth/dev/login`, which signs in
    /// anyone by username. For development only. Default false. Refused
    /// together with an OIDC issuer unless `CHAT_AUTH_DEV_LOGIN_FORCE=true`.
    pub dev_login: bool,
    /// OpenID Connect sign-in; `None` unless `CHAT_AUTH_OIDC_ISSUER` is set.
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// `CHAT_AUTH_NATS_CALLOUT_SEED_FILE` / `CHAT_AUTH_NATS_CALLOUT_SEED`:
    /// the account nkey seed the NATS auth callout answers are signed with
    /// (the server config's callout `issuer` is its public key). Unset: no
    /// callout (service accounts cannot connect to NATS).
    pub nats_callout_seed: Option<chat_platform::Secret>,
    /// Rate limits (`CHAT_AUTH_RATE_IP_PER_MIN` 30,
    /// `CHAT_AUTH_RATE_ACCOUNT_PER_MIN` 10, `CHAT_AUTH_TRUSTED_PROXIES`
    /// loopback).
    pub rates: crate::limits::RateConfig,
}

fn rates(s: &Settings<'_>) -> Result<crate::limits::RateConfig, ConfigError> {
    let per_min = |key: &str, default: u32| {
        let n = s.at_least(key, default, 1)?;
        std::num::NonZeroU32::new(n).ok_or_else(|| ConfigError::Invalid {
            key: key.into(),
            value: n.to_string(),
            reason: "must be at least 1".into(),
        })
    };
    let mut trusted = Vec::new();
    let listed = s.list("CHAT_AUTH_TRUSTED_PROXIES");
    let listed = if listed.is_empty() {
        vec!["127.0.0.0/8".to_string(), "::1/128".to_string()]
    } else {
        listed
    };
    for item in listed {
        let net = item
            .parse::<ipnet::IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|e| ConfigError::Invalid {
                key: "CHAT_AUTH_TRUSTED_PROXIES".into(),
                value: item.clone(),
                reason: format!("not an IP address or CIDR: {e}"),
            })?;
        trusted.push(net);
    }
    Ok(crate::limits::RateConfig {
        ip_per_min: per_min("CHAT_AUTH_RATE_IP_PER_MIN", 30)?,
        account_per_min: per_min("CHAT_AUTH_RATE_ACCOUNT_PER_MIN", 10)?,
        trusted_proxies: trusted,
    })
}

/// Reads the `CHAT_AUTH_OIDC_*` options: none without an issuer; with one,
/// the client id, secret and redirect URI are required.
fn oidc_config(s: &Settings<'_>) -> Result<Option<crate::oidc::OidcConfig>, ConfigError> {
    let Some(issuer) = s.raw("CHAT_AUTH_OIDC_ISSUER") else {
        return Ok(None);
    };
    let required = |key: &str| {
        s.raw(key).ok_or_else(|| ConfigError::Missing {
            key: key.into(),
            reason: "needed with CHAT_AUTH_OIDC_ISSUER".into(),
        })
    };
    let client_id = required("CHAT_AUTH_OIDC_CLIENT_ID")?;
    let client_secret = match s.password_file("CHAT_AUTH_OIDC_CLIENT_SECRET_FILE")? {
        Some(secret) => secret,
        None => s
            .secret("CHAT_AUTH_OIDC_CLIENT_SECRET")
            .ok_or_else(|| ConfigError::Missing {
                key: "CHAT_AUTH_OIDC_CLIENT_SECRET_FILE".into(),
                reason: "needed with CHAT_AUTH_OIDC_ISSUER (or CHAT_AUTH_OIDC_CLIENT_SECRET)"
                    .into(),
            })?,
    };
    let redirect_uri = required("CHAT_AUTH_OIDC_REDIRECT_URI")?;
    let url_ok = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    for (key, value) in [
        ("CHAT_AUTH_OIDC_ISSUER", &issuer),
        ("CHAT_AUTH_OIDC_REDIRECT_URI", &redirect_uri),
    ] {
        if !url_ok(value) {
            return Err(ConfigError::Invalid {
                key: key.into(),
                value: value.clone(),
                reason: "must be an http(s) URL".into(),
            });
        }
    }
    if !redirect_uri.ends_with("/auth/callback") {
        return Err(ConfigError::Invalid {
            key: "CHAT_AUTH_OIDC_REDIRECT_URI".into(),
            value: redirect_uri,
            reason: "must end in /auth/callback (where the callback is served)".into(),
        });
    }
    let mut scopes = s.list("CHAT_AUTH_OIDC_SCOPES");
    if scopes.is_empty() {
        scopes = vec!["openid".into(), "email".into(), "profile".into()];
    }
    Ok(Some(crate::oidc::OidcConfig {
        issuer,
        client_id,
        client_secret,
        redirect_uri,
        scopes,
        allowed_domains: s.list("CHAT_AUTH_OIDC_ALLOWED_DOMAINS"),
        leeway: s.millis("CHAT_AUTH_OIDC_LEEWAY_MS", Duration::from_secs(30))?,
        http_timeout: s.millis("CHAT_AUTH_OIDC_HTTP_TIMEOUT_MS", Duration::from_secs(10))?,
        after_login_url: s.string("CHAT_AUTH_AFTER_LOGIN_URL", "/"),
    }))
}

impl Config {
    /// Reads and validates the options; errors name the bad option.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let s = Settings::new(src);
        let ttl_ms = s.at_least("CHAT_AUTH_ACCESS_TTL_MS", MAX_ACCESS_TTL_MS, 1000)?;
        if ttl_ms > MAX_ACCESS_TTL_MS {
            return Err(ConfigError::Invalid {
                key: "CHAT_AUTH_ACCESS_TTL_MS".into(),
                value: ttl_ms.to_string(),
                reason: format!("access tokens live at most {MAX_ACCESS_TTL_MS} ms (15 minutes)"),
            });
        }
        let session_ttl = s.millis("CHAT_AUTH_SESSION_TTL_MS", Duration::from_secs(30 * 86_400))?;
        let refresh_ttl = s.millis("CHAT_AUTH_REFRESH_TTL_MS", Duration::from_secs(14 * 86_400))?;
        let dev_login = s.bool("CHAT_AUTH_DEV_LOGIN", false)?;
        let oidc = oidc_config(&s)?;
        if dev_login && oidc.is_some() && !s.bool("CHAT_AUTH_DEV_LOGIN_FORCE", false)? {
            return Err(ConfigError::Invalid {
                key: "CHAT_AUTH_DEV_LOGIN".into(),
                value: "true".into(),
                reason: "dev login lets anyone be anyone: refused together with \
                         CHAT_AUTH_OIDC_ISSUER unless CHAT_AUTH_DEV_LOGIN_FORCE=true"
                    .into(),
            });
        }
        Ok(Self {
            common: Common::from_settings(&s, "AUTH")?,
            published_key_files: s
                .list("CHAT_AUTH_PUBLISHED_KEY_FILES")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            session_ttl,
            refresh_ttl,
            max_sessions_per_user: s.at_least("CHAT_AUTH_MAX_SESSIONS_PER_USER", 50usize, 1)?,
            cookie_secure: s.bool("CHAT_AUTH_COOKIE_SECURE", true)?,
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
            dev_login,
            oidc,
            rates: rates(&s)?,
            nats_callout_seed: match s.password_file("CHAT_AUTH_NATS_CALLOUT_SEED_FILE")? {
                Some(seed) => Some(seed),
                None => s.secret("CHAT_AUTH_NATS_CALLOUT_SEED"),
            },
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
    fn oidc_needs_its_client_and_refuses_dev_login_unless_forced() {
        let oidc = MapSource::new()
            .with("CHAT_AUTH_OIDC_ISSUER", "https://accounts.google.com")
            .with("CHAT_AUTH_OIDC_CLIENT_ID", "id")
            .with("CHAT_AUTH_OIDC_CLIENT_SECRET", "secret")
            .with(
                "CHAT_AUTH_OIDC_REDIRECT_URI",
                "https://chat.example/auth/callback",
            );
        let c = Config::from_source(&oidc).expect("valid");
        let o = c.oidc.expect("oidc on");
        assert_eq!(o.scopes, vec!["openid", "email", "profile"]);
        assert_eq!(o.leeway, Duration::from_secs(30));
        let err = |src: &MapSource| {
            Config::from_source(src)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let dev = oidc.clone().with("CHAT_AUTH_DEV_LOGIN", "true");
        assert!(
            err(&dev).contains("CHAT_AUTH_DEV_LOGIN_FORCE"),
            "{}",
            err(&dev)
        );
        let forced = dev.with("CHAT_AUTH_DEV_LOGIN_FORCE", "true");
        assert!(Config::from_source(&forced).is_ok());
        let no_id = MapSource::new().with("CHAT_AUTH_OIDC_ISSUER", "https://a.example");
        assert!(err(&no_id).contains("CHAT_AUTH_OIDC_CLIENT_ID"));
        let bad_uri = oidc.with("CHAT_AUTH_OIDC_REDIRECT_URI", "https://chat.example/cb");
        assert!(err(&bad_uri).contains("/auth/callback"));
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
            ("CHAT_AUTH_ACCESS_TTL_MS", "900001"),
            ("CHAT_AUTH_MAX_SESSIONS_PER_USER", "0"),
            ("CHAT_AUTH_SESSION_TTL_MS", "0"),
            ("CHAT_AUTH_DEV_LOGIN", "maybe"),
            ("CHAT_AUTH_GENERATE_KEY", "perhaps"),
            ("CHAT_AUTH_RATE_IP_PER_MIN", "0"),
            ("CHAT_AUTH_RATE_ACCOUNT_PER_MIN", "x"),
            ("CHAT_AUTH_TRUSTED_PROXIES", "10.0.0.0/99"),
        ] {
            let err = Config::from_source(&MapSource::new().with(key, value))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value} gave {err:?}");
        }
    }
}
