//! Gateway configuration (`CHAT_GATEWAY_*`), validated at start.

use std::net::SocketAddr;
use std::time::Duration;

use chat_core::GatewayId;
use chat_core::wire::Limits as WireLimits;
use chat_platform::config::{Common, ConfigError, Settings, Source};

/// Per-connection limits. Each is announced to clients in `welcome`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `CHAT_GATEWAY_MAX_FRAME_BYTES` (65536): largest WebSocket message
    /// accepted; a larger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// `CHAT_GATEWAY_MAX_TEXT_BYTES` (4096): largest message text (UTF-8
    /// bytes); a larger one gets a `too_large` error and is not stored.
    pub max_text_bytes: usize,
    /// `CHAT_GATEWAY_RATE_PER_SEC` (20): sustained frames per second per
    /// connection; frames beyond it get a `rate_limited` error and are dropped.
    pub rate_per_sec: u32,
    /// `CHAT_GATEWAY_RATE_BURST` (40): frames a connection may send at once.
    pub rate_burst: u32,
    /// `CHAT_GATEWAY_QUEUE_DEPTH` (256): frames queued for one connection; on
    /// overflow it is closed with 4009 (slow consumer).
    pub queue_depth: usize,
    /// `CHAT_GATEWAY_AUTH_TIMEOUT_MS` (10000): time to send `hello`; 4002 after.
    pub auth_timeout: Duration,
    /// `CHAT_GATEWAY_IDLE_TIMEOUT_MS` (60000): time without any frame from the
    /// client; 4003 after. Clients send `ping` to stay connected.
    pub idle_timeout: Duration,
    /// `CHAT_GATEWAY_RESUME_MAX` (1000): most missed messages a resume
    /// pushes per room; beyond it the client gets `complete: false` and
    /// pages history itself.
    pub resume_max: u64,
    /// `CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER` (16): sessions one account
    /// may hold on this gateway; one more is refused with `limit_reached`
    /// and closed with 4008. Each gateway counts its own.
    pub max_connections_per_user: usize,
    /// `CHAT_GATEWAY_MAX_CHANGES_WHILE_CONNECTING` (1024, at least 1):
    /// membership changes of a user kept while one of its sessions starts
    /// (between reading its rooms and registering it); one more and that
    /// session is refused with `unavailable` and close 1011, to retry.
    pub max_changes_while_connecting: usize,
    /// `CHAT_GATEWAY_WRITE_BUFFER_BYTES` (8192): bytes of frames a
    /// session's writer holds before writing them to the socket (it also
    /// writes at the end of each batch of up to 64 queued frames, one
    /// `writev`); it holds nothing once they are written. 0 writes every
    /// frame on its own.
    pub write_buffer_bytes: usize,
    /// `CHAT_GATEWAY_MAX_SENDS_IN_FLIGHT` (1024, at least 1): sends this
    /// gateway appends at once; one more is refused at once with
    /// `unavailable` (nothing stored; retry with the same id), so past the
    /// knee the excess is shed early instead of queueing behind the stream.
    pub max_sends_in_flight: usize,
}

impl Limits {
    /// What `welcome` tells the client.
    pub fn wire(&self) -> WireLimits {
        WireLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_text_bytes: self.max_text_bytes,
            msgs_per_sec: self.rate_per_sec,
            burst: self.rate_burst,
            idle_timeout_ms: u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_GATEWAY_LISTEN` (127.0.0.1:8080): HTTP/WebSocket address.
    pub listen: SocketAddr,
    /// `CHAT_GATEWAY_ADMIN_LISTEN` (127.0.0.1:9080): `/healthz`, `/readyz`
    /// and `/metrics`; keep it off the internet.
    pub admin_listen: SocketAddr,
    /// `CHAT_GATEWAY_PUBLIC_URL` (unset): the URL people open, e.g.
    /// `https://chat.example.com`; its origin is the default allowed
    /// browser origin. Unset: `http://` + the bound address.
    pub public_url: Option<String>,
    /// Bounds of the public listener: `CHAT_GATEWAY_MAX_CONNECTIONS` (10000
    /// sockets, upgraded or not; beyond gets HTTP 503),
    /// `CHAT_GATEWAY_HEADER_TIMEOUT_MS` (10000) and
    /// `CHAT_GATEWAY_MAX_HEADER_BYTES` (16384).
    pub http: chat_platform::http::ServeOptions,
    /// `CHAT_GATEWAY_ID` (random per start): this process's gateway id.
    pub gateway_id: GatewayId,
    /// `CHAT_GATEWAY_JWKS_URL` (http://127.0.0.1:8081/.well-known/jwks.json).
    pub jwks_url: String,
    /// `CHAT_GATEWAY_TOKEN_ISSUER` (urn:chat:auth): required `iss` of tokens.
    pub token_issuer: String,
    /// `CHAT_GATEWAY_TOKEN_AUDIENCE` (chat): required `aud` of tokens.
    pub token_audience: String,
    /// `CHAT_GATEWAY_TOKEN_LEEWAY_MS` (5000): clock skew tolerated on `exp`.
    pub token_leeway: Duration,
    /// `CHAT_GATEWAY_AUTH_UPSTREAM` (unset): when set, `/auth/*` and
    /// `/.well-known/jwks.json` are forwarded to this base URL, so a browser
    /// needs only the gateway's origin.
    pub auth_upstream: Option<String>,
    /// `CHAT_GATEWAY_ALLOWED_ORIGINS` (empty): browser origins allowed to open
    /// WebSockets (`scheme://host[:port]`), comma-separated; `*` allows any.
    /// When empty, only the public URL's origin is allowed. Requests without
    /// `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// `CHAT_GATEWAY_WELCOME_ROOMS` (200, 1..=1000): rooms `welcome` lists
    /// (by id, with their heads), and the largest `rooms.list` page. Each
    /// costs one read of the room stream when a session starts.
    pub welcome_rooms: usize,
    /// `CHAT_GATEWAY_HEARTBEAT_MS` (10000): presence heartbeat interval; must
    /// be well below the presence TTL.
    pub heartbeat: Duration,
    /// `CHAT_GATEWAY_REQUEST_TIMEOUT_MS` (5000): NATS request/reply timeout.
    pub request_timeout: Duration,
    /// `CHAT_GATEWAY_SHUTDOWN_GRACE_MS` (10000): how long shutdown waits for
    /// sessions to close.
    pub shutdown_grace: Duration,
    /// Per-connection limits.
    pub limits: Limits,
    /// NATS and stream settings shared by all services.
    pub common: Common,
}

impl Config {
    /// Reads and validates every option.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let s = Settings::new(src);
        let listen = s.parse(
            "CHAT_GATEWAY_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        )?;
        let public_url = s.raw("CHAT_GATEWAY_PUBLIC_URL");
        if let Some(url) = &public_url
            && crate::origin::normalize(url).is_none()
        {
            return Err(ConfigError::Invalid {
                key: "CHAT_GATEWAY_PUBLIC_URL".into(),
                value: url.clone(),
                reason: "must be an absolute URL such as https://chat.example.com".into(),
            });
        }
        let allowed_origins = s.list("CHAT_GATEWAY_ALLOWED_ORIGINS");
        if let Some(bad) = allowed_origins
            .iter()
            .find(|o| *o != "*" && crate::origin::normalize(o).is_none())
        {
            return Err(ConfigError::Invalid {
                key: "CHAT_GATEWAY_ALLOWED_ORIGINS".into(),
                value: bad.clone(),
                reason: "each entry must be an origin such as https://chat.example.com, or *"
                    .into(),
            });
        }
        let gateway_id = match s.parse_opt::<GatewayId>("CHAT_GATEWAY_ID")? {
            Some(id) => id,
            None => GatewayId::generate(),
        };
        let limits = Limits {
            max_frame_bytes: s.at_least("CHAT_GATEWAY_MAX_FRAME_BYTES", 65536usize, 256)?,
            max_text_bytes: s.at_least("CHAT_GATEWAY_MAX_TEXT_BYTES", 4096usize, 1)?,
            rate_per_sec: s.at_least("CHAT_GATEWAY_RATE_PER_SEC", 20u32, 1)?,
            rate_burst: s.at_least("CHAT_GATEWAY_RATE_BURST", 40u32, 1)?,
            queue_depth: s.at_least("CHAT_GATEWAY_QUEUE_DEPTH", 256usize, 1)?,
            auth_timeout: s.millis("CHAT_GATEWAY_AUTH_TIMEOUT_MS", Duration::from_secs(10))?,
            idle_timeout: s.millis("CHAT_GATEWAY_IDLE_TIMEOUT_MS", Duration::from_secs(60))?,
            resume_max: s.at_least("CHAT_GATEWAY_RESUME_MAX", 1000u64, 1)?,
            max_connections_per_user: s.at_least(
                "CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER",
                16usize,
                1,
            )?,
            max_changes_while_connecting: s.at_least(
                "CHAT_GATEWAY_MAX_CHANGES_WHILE_CONNECTING",
                crate::registry::MAX_WATCHED_CHANGES,
                1,
            )?,
            write_buffer_bytes: s.at_least("CHAT_GATEWAY_WRITE_BUFFER_BYTES", 8192usize, 0)?,
            max_sends_in_flight: s.at_least("CHAT_GATEWAY_MAX_SENDS_IN_FLIGHT", 1024usize, 1)?,
        };
        if limits.max_text_bytes >= limits.max_frame_bytes {
            return Err(ConfigError::Invalid {
                key: "CHAT_GATEWAY_MAX_TEXT_BYTES".into(),
                value: limits.max_text_bytes.to_string(),
                reason: "must be smaller than CHAT_GATEWAY_MAX_FRAME_BYTES".into(),
            });
        }
        Ok(Self {
            listen,
            admin_listen: s.parse(
                "CHAT_GATEWAY_ADMIN_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 9080)),
            )?,
            public_url,
            http: s.http_listener("GATEWAY", "gateway")?,
            gateway_id,
            jwks_url: s.string(
                "CHAT_GATEWAY_JWKS_URL",
                "http://127.0.0.1:8081/.well-known/jwks.json",
            ),
            token_issuer: s.string("CHAT_GATEWAY_TOKEN_ISSUER", "urn:chat:auth"),
            token_audience: s.string("CHAT_GATEWAY_TOKEN_AUDIENCE", "chat"),
            token_leeway: Duration::from_millis(s.parse("CHAT_GATEWAY_TOKEN_LEEWAY_MS", 5000u64)?),
            auth_upstream: s
                .raw("CHAT_GATEWAY_AUTH_UPSTREAM")
                .map(|u| u.trim_end_matches('/').to_string()),
            allowed_origins,
            welcome_rooms: welcome_rooms(&s)?,
            heartbeat: s.millis("CHAT_GATEWAY_HEARTBEAT_MS", Duration::from_secs(10))?,
            request_timeout: s.millis("CHAT_GATEWAY_REQUEST_TIMEOUT_MS", Duration::from_secs(5))?,
            shutdown_grace: s.millis("CHAT_GATEWAY_SHUTDOWN_GRACE_MS", Duration::from_secs(10))?,
            limits,
            common: Common::from_settings(&s, "GATEWAY")?,
        })
    }
}

fn welcome_rooms(s: &Settings<'_>) -> Result<usize, ConfigError> {
    let n = s.at_least("CHAT_GATEWAY_WELCOME_ROOMS", 200usize, 1)?;
    if n > 1000 {
        return Err(ConfigError::Invalid {
            key: "CHAT_GATEWAY_WELCOME_ROOMS".into(),
            value: n.to_string(),
            reason: "must be at most 1000".into(),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_platform::config::MapSource;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_source(&MapSource::new()).expect("defaults");
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(c.limits.write_buffer_bytes, 8192);
        assert_eq!(c.limits.max_sends_in_flight, 1024);
        assert!(c.allowed_origins.is_empty());
    }

    #[test]
    fn text_limit_must_fit_in_a_frame() {
        let src = MapSource::new()
            .with("CHAT_GATEWAY_MAX_FRAME_BYTES", "1000")
            .with("CHAT_GATEWAY_MAX_TEXT_BYTES", "1000");
        let err = Config::from_source(&src).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CHAT_GATEWAY_MAX_TEXT_BYTES")));
    }

    #[test]
    fn origins_and_the_public_url_must_be_origins() {
        for (key, value) in [
            ("CHAT_GATEWAY_PUBLIC_URL", "chat.example.com"),
            (
                "CHAT_GATEWAY_ALLOWED_ORIGINS",
                "https://ok.example,/relative",
            ),
            ("CHAT_GATEWAY_ADMIN_LISTEN", "nowhere"),
            ("CHAT_GATEWAY_HEADER_TIMEOUT_MS", "0"),
            ("CHAT_GATEWAY_WELCOME_ROOMS", "1001"),
            ("CHAT_GATEWAY_WELCOME_ROOMS", "0"),
            ("CHAT_GATEWAY_MAX_CONNECTIONS_PER_USER", "0"),
        ] {
            let err = Config::from_source(&MapSource::new().with(key, value))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value}: {err:?}");
        }
    }

    #[test]
    fn a_bad_gateway_id_names_the_option() {
        let src = MapSource::new().with("CHAT_GATEWAY_ID", "has.dot");
        let err = Config::from_source(&src).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CHAT_GATEWAY_ID")));
    }

    /// `key` accepts `ok` (read back by `get` as `want`) and refuses `bad`
    /// with an error naming it.
    fn edge<T: PartialEq + std::fmt::Debug>(
        key: &str,
        ok: &str,
        get: fn(&Config) -> T,
        want: T,
        bad: &str,
    ) {
        let c = Config::from_source(&MapSource::new().with(key, ok))
            .unwrap_or_else(|e| panic!("{key}={ok}: {e}"));
        assert_eq!(get(&c), want, "{key}={ok}");
        let err = Config::from_source(&MapSource::new().with(key, bad))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{key}={bad}: {err:?}");
    }

    #[test]
    fn limits_are_checked_at_their_edges() {
        // 0 writes each frame at once; a negative size is no size.
        edge(
            "CHAT_GATEWAY_WRITE_BUFFER_BYTES",
            "0",
            |c| c.limits.write_buffer_bytes,
            0,
            "-1",
        );
        // 0 would refuse every send.
        edge(
            "CHAT_GATEWAY_MAX_SENDS_IN_FLIGHT",
            "1",
            |c| c.limits.max_sends_in_flight,
            1,
            "0",
        );
        edge(
            "CHAT_GATEWAY_MAX_CHANGES_WHILE_CONNECTING",
            "1",
            |c| c.limits.max_changes_while_connecting,
            1,
            "0",
        );
    }
}
