//! Rate limits on the sign-in and token endpoints, per client IP and per
//! account (`CHAT_AUTH_RATE_*`), with `governor`'s keyed GCRA limiters.
//! The client IP is the socket's peer, or the `X-Chat-Client-Ip` header
//! (set by the gateway's forward) when the peer is a trusted proxy
//! (`CHAT_AUTH_TRUSTED_PROXIES`, loopback by default). State per key is
//! bounded: idle keys are swept, and beyond `MAX_KEYS` new keys are
//! refused as limited rather than remembered.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use crate::error::AuthError;
use crate::routes::AppState;

/// Keys (IPs or accounts) remembered at once per limiter.
pub const MAX_KEYS: usize = 100_000;
/// Header carrying the browser's address from a trusted proxy.
pub const CLIENT_IP_HEADER: &str = "x-chat-client-ip";

/// The configured limits.
#[derive(Debug, Clone)]
pub struct RateConfig {
    /// `CHAT_AUTH_RATE_IP_PER_MIN`: requests per minute per client IP to
    /// `/auth/login`, `/auth/callback`, `/auth/dev/login`, `/auth/token`
    /// and `/auth/logout` (the burst is the same number).
    pub ip_per_min: NonZeroU32,
    /// `CHAT_AUTH_RATE_ACCOUNT_PER_MIN`: sign-ins and refreshes per minute
    /// per account.
    pub account_per_min: NonZeroU32,
    /// `CHAT_AUTH_TRUSTED_PROXIES`: peers whose `X-Chat-Client-Ip` is
    /// believed (CIDRs).
    pub trusted_proxies: Vec<IpNet>,
}

/// The limiters (shared by all requests).
#[derive(Clone)]
pub struct Limits {
    ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    account: Arc<DefaultKeyedRateLimiter<String>>,
    trusted: Arc<Vec<IpNet>>,
}

impl Limits {
    pub fn new(cfg: &RateConfig) -> Self {
        Self {
            ip: Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_minute(
                cfg.ip_per_min,
            ))),
            account: Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_minute(
                cfg.account_per_min,
            ))),
            trusted: Arc::new(cfg.trusted_proxies.clone()),
        }
    }

    /// The address a request is counted under.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = peer.ip();
        if !self.trusted.iter().any(|n| n.contains(&peer_ip)) {
            return peer_ip;
        }
        headers
            .get(CLIENT_IP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer_ip)
    }

    /// Counts one request from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), AuthError> {
        check(&self.ip, &ip, "requests from this address")
    }

    /// Counts one sign-in or refresh of `account`.
    pub fn check_account(&self, account: &str) -> Result<(), AuthError> {
        check(
            &self.account,
            &account.to_string(),
            "sign-ins and refreshes of this account",
        )
    }

    /// Forgets keys whose budget is full again (call periodically).
    pub fn sweep(&self) {
        self.ip.retain_recent();
        self.ip.shrink_to_fit();
        self.account.retain_recent();
        self.account.shrink_to_fit();
    }
}

fn check<K>(limiter: &DefaultKeyedRateLimiter<K>, key: &K, what: &str) -> Result<(), AuthError>
where
    K: Clone + std::hash::Hash + Eq,
{
    if limiter.len() >= MAX_KEYS {
        limiter.retain_recent();
        if limiter.len() >= MAX_KEYS {
            metrics::counter!("chat_auth_rate_limited_total", "why" => "keys").increment(1);
            return Err(AuthError::RateLimited {
                what: "requests (too many clients at once)".into(),
                retry_after: 60,
            });
        }
    }
    limiter.check_key(key).map_err(|not_until| {
        metrics::counter!("chat_auth_rate_limited_total", "why" => "rate").increment(1);
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        AuthError::RateLimited {
            what: what.to_string(),
            retry_after: wait.as_secs().max(1),
        }
    })
}

/// Middleware of the limited routes: one request of the client's IP.
pub async fn per_ip(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // Requests that did not come through a socket (in-process tests) count
    // under the unspecified address.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let ip = st.limits.client_ip(peer, req.headers());
    match st.limits.check_ip(ip) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(audit = "rate_limited", %ip, path = %req.uri().path(), "rate limited");
            e.into_response()
        }
    }
}
