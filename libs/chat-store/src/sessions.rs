//! Sign-in sessions and their refresh tokens (one session = one refresh
//! token family): tokens are stored only as hashes, each is used once, and
//! presenting a used one revokes its whole session (reuse detection).

use async_trait::async_trait;
use chat_core::UserId;

use crate::StoreError;

/// A session as stored. `id` is the `sid` claim of its access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user: UserId,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Absolute end of the session (Unix ms): no refresh beyond it.
    pub expires_at: u64,
    /// When it was revoked (Unix ms), if it was.
    pub revoked_at: Option<u64>,
}

impl Session {
    /// Live at `now_ms`: neither revoked nor past its end.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.revoked_at.is_none() && now_ms < self.expires_at
    }
}

/// A refresh token to store: its hash and when it stops being accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// A hash of the token (the token itself is never stored).
    pub hash: String,
    /// Unix milliseconds.
    pub expires_at: u64,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live and is now used; the next one is stored.
    Rotated(Session),
    /// The token had been used before: the session is now revoked.
    Reused(Session),
    /// Unknown, expired, or of a revoked or ended session: nothing changed.
    Invalid,
}

/// A sign-in in progress at an OpenID provider: what the callback needs to
/// finish it. Single use; the `state` sent to the provider is its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub state: String,
    /// A hash of the random value in the browser's login cookie: the
    /// callback must come from the browser that started the sign-in.
    pub binding: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// Sessions and refresh tokens.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a sign-in in progress, first deleting those created before
    /// `expired_before` (Unix ms). When `max_pending` are already stored,
    /// stores nothing and returns false.
    async fn put_login(
        &self,
        login: &PendingLogin,
        expired_before: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError>;

    /// Removes and returns the sign-in with this `state` if it was created
    /// at or after `expired_before`.
    async fn take_login(
        &self,
        state: &str,
        expired_before: u64,
    ) -> Result<Option<PendingLogin>, StoreError>;

    /// Stores a new session with its first refresh token. When the user
    /// then has more than `max_live` live sessions, the oldest ones are
    /// revoked; their ids are returned.
    async fn create_session(
        &self,
        session: &Session,
        first: &RefreshRecord,
        max_live: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Uses the token whose hash is `presented` at `now_ms`: when it is
    /// live, marks it used and stores `next` (its expiry capped at the
    /// session's end) in one transaction.
    async fn rotate_refresh(
        &self,
        presented: &str,
        next: &RefreshRecord,
        now_ms: u64,
    ) -> Result<Rotation, StoreError>;

    /// The session a refresh token (by hash) belongs to, used or not.
    async fn session_of_refresh(&self, hash: &str) -> Result<Option<Session>, StoreError>;

    /// The session with this id.
    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Revokes one session; true if it was live.
    async fn revoke_session(&self, id: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// Revokes every live session of `user`; returns their ids.
    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError>;
}
