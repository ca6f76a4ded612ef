//! Sign-in sessions: each sign-in starts a session whose refresh tokens
//! form one family. Refresh tokens are opaque (`crt_` + 32 random bytes),
//! stored as SHA-256 hashes, and rotated on every use; presenting a used
//! one revokes the session. Every revocation is announced to the gateways
//! (`revocations.rs`), which close that session's connections.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_core::UserId;
use chat_jwt::{Grant, Signer};
use chat_store::{RefreshRecord, Rotation, Session, SessionStore, User};
use sha2::Digest as _;

use crate::error::AuthError;

/// Prefix of refresh tokens (makes leaked ones easy to scan for).
const REFRESH_PREFIX: &str = "crt_";

/// Where revocations are announced.
#[async_trait]
pub trait Revoker: Send + Sync {
    /// Announces that these sessions of `user` are revoked. An error means
    /// gateways may not know: the caller reports it.
    async fn revoked(&self, user: &UserId, sessions: &[String]) -> Result<(), String>;
}

/// Lifetimes and limits of sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Absolute lifetime of a session.
    pub session_ttl: Duration,
    /// Lifetime of one refresh token (renewed by each refresh, capped by
    /// the session's end).
    pub refresh_ttl: Duration,
    /// Live sessions per user; a new one beyond revokes the oldest.
    pub max_live: usize,
}

/// What a sign-in or a refresh hands out.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: User,
}

/// Starts, refreshes and ends sessions.
#[derive(Clone)]
pub struct SessionService {
    store: Arc<dyn SessionStore>,
    revoker: Arc<dyn Revoker>,
    policy: SessionPolicy,
}

impl SessionService {
    pub fn new(
        store: Arc<dyn SessionStore>,
        revoker: Arc<dyn Revoker>,
        policy: SessionPolicy,
    ) -> Self {
        Self {
            store,
            revoker,
            policy,
        }
    }

    /// A new session for `user` and its first tokens.
    pub async fn start(&self, signer: &Signer, user: &User) -> Result<Issued, AuthError> {
        let now = chat_core::time::now_ms();
        let session = Session {
            id: format!("s{}", random_token()?),
            user: user.id.clone(),
            created_at: now,
            expires_at: now.saturating_add(millis(self.policy.session_ttl)),
            revoked_at: None,
        };
        let (refresh_token, record) = self.new_refresh(now)?;
        let evicted = self
            .store
            .create_session(&session, &record, self.policy.max_live)
            .await?;
        if !evicted.is_empty() {
            tracing::info!(
                audit = "session_evicted",
                user = %user.id,
                sessions = ?evicted,
                "oldest sessions revoked: live sessions per user limit"
            );
            self.announce(&user.id, &evicted).await?;
        }
        tracing::info!(audit = "session_started", user = %user.id, session = %session.id, "sign-in");
        self.issue(signer, user, session.id, refresh_token)
    }

    /// Rotates `refresh_token`: new tokens for its session, or why not.
    /// A reused token revokes the session and is announced.
    pub async fn refresh(
        &self,
        signer: &Signer,
        users: &dyn chat_store::UserStore,
        refresh_token: &str,
    ) -> Result<Issued, AuthError> {
        let invalid = || AuthError::InvalidGrant("the refresh token is not valid".into());
        if !refresh_token.starts_with(REFRESH_PREFIX) || refresh_token.len() > 128 {
            return Err(invalid());
        }
        let now = chat_core::time::now_ms();
        let (next_token, next) = self.new_refresh(now)?;
        match self
            .store
            .rotate_refresh(&hash(refresh_token), &next, now)
            .await?
        {
            Rotation::Rotated(session) => {
                let user = users.get_user(&session.user).await?.ok_or_else(invalid)?;
                tracing::info!(audit = "refresh", user = %user.id, session = %session.id, "tokens refreshed");
                self.issue(signer, &user, session.id, next_token)
            }
            Rotation::Reused(session) => {
                metrics::counter!("chat_auth_refresh_reuse_total").increment(1);
                tracing::warn!(
                    audit = "refresh_reuse",
                    user = %session.user,
                    session = %session.id,
                    "a used refresh token was presented again: session revoked"
                );
                self.announce(&session.user, std::slice::from_ref(&session.id))
                    .await?;
                Err(AuthError::InvalidGrant(
                    "the refresh token was already used: the session is revoked".into(),
                ))
            }
            Rotation::Invalid => Err(invalid()),
        }
    }

    /// The store (pending sign-ins live there too).
    pub fn store(&self) -> &dyn SessionStore {
        self.store.as_ref()
    }

    /// The session a refresh token belongs to, if it is live.
    pub async fn session_of(&self, refresh_token: &str) -> Result<Option<Session>, AuthError> {
        let now = chat_core::time::now_ms();
        Ok(self
            .store
            .session_of_refresh(&hash(refresh_token))
            .await?
            .filter(|s| s.is_live(now)))
    }

    /// Ends one session; true when it was live.
    pub async fn revoke(&self, user: &UserId, session: &str, why: &str) -> Result<bool, AuthError> {
        let now = chat_core::time::now_ms();
        let live = self.store.revoke_session(session, now).await?;
        if live {
            tracing::info!(audit = "session_revoked", %user, session, why, "session revoked");
            self.announce(user, &[session.to_string()]).await?;
        }
        Ok(live)
    }

    /// Ends every session of `user`; returns how many were live.
    pub async fn revoke_all(&self, user: &UserId, why: &str) -> Result<usize, AuthError> {
        let now = chat_core::time::now_ms();
        let ids = self.store.revoke_user_sessions(user, now).await?;
        tracing::info!(audit = "sessions_revoked", %user, count = ids.len(), why, "all sessions revoked");
        if !ids.is_empty() {
            self.announce(user, &ids).await?;
        }
        Ok(ids.len())
    }

    async fn announce(&self, user: &UserId, sessions: &[String]) -> Result<(), AuthError> {
        self.revoker.revoked(user, sessions).await.map_err(|e| {
            AuthError::Unexpected(anyhow::anyhow!(
                "sessions revoked but the gateways could not be told: {e}"
            ))
        })
    }

    fn new_refresh(&self, now: u64) -> Result<(String, RefreshRecord), AuthError> {
        let token = format!("{REFRESH_PREFIX}{}", random_token()?);
        let record = RefreshRecord {
            hash: hash(&token),
            expires_at: now.saturating_add(millis(self.policy.refresh_ttl)),
        };
        Ok((token, record))
    }

    fn issue(
        &self,
        signer: &Signer,
        user: &User,
        session: String,
        refresh_token: String,
    ) -> Result<Issued, AuthError> {
        let grant = Grant {
            user: user.id.clone(),
            name: user.name.clone(),
            session: Some(session),
            scopes: Vec::new(),
        };
        let (access_token, _exp) = signer
            .issue_grant(&grant)
            .map_err(|e| AuthError::Unexpected(e.into()))?;
        Ok(Issued {
            access_token,
            expires_in: signer.ttl().as_secs(),
            refresh_token,
            user: user.clone(),
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// 32 random bytes, base64url.
pub(crate) fn random_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| AuthError::Unexpected(anyhow::anyhow!("no randomness: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a refresh token: SHA-256, hex. The tokens are
/// 256 random bits, so a fast hash is enough (nothing to brute-force).
pub(crate) fn hash(token: &str) -> String {
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
