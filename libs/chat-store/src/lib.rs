//! Storage of users, sign-in sessions, rooms, memberships and room history behind object-safe
//! traits, so services hold `Arc<dyn UserStore>` / `Arc<dyn HistoryStore>` and
//! the backend (embedded SQLite locally, MongoDB in production) is chosen at
//! start. Every backend must pass the [`conformance`] suites.

use async_trait::async_trait;
use chat_core::events::RoomEvent;
use chat_core::svc::{PageQuery, Room};
use chat_core::{ClientMsgId, RoomId, UserId};

pub mod conformance;
mod service_accounts;
mod sessions;
mod sqlite;

pub use service_accounts::{ServiceAccount, ServiceAccountStore};
pub use sessions::{PendingLogin, RefreshRecord, Rotation, Session, SessionStore};
pub use sqlite::SqliteStore;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The referenced entity (e.g. a room) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An entity with the same identity already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Stored data could not be decoded (a bug or a foreign writer).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, connection, lock); retrying may help.
    #[error("store backend failed: {0}")]
    Backend(String),
}

/// Who a person is according to an identity provider (an OIDC `iss`/`sub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub name: String,
    pub email: Option<String>,
}

/// A user as stored: our id for an (issuer, subject) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub issuer: String,
    pub subject: String,
    pub name: String,
    pub email: Option<String>,
    /// Unix milliseconds of the first sign-in.
    pub created_at: u64,
}

/// Users, keyed by our [`UserId`] and by their provider identity.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Finds the user with (issuer, subject) or creates one with a fresh
    /// `UserId::generate()`; updates name/email to the given ones.
    async fn upsert_user(&self, identity: &Identity) -> Result<User, StoreError>;
    /// The user with this id, if any.
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError>;
}

/// Bounds of a history page; the same semantics as [`PageQuery`]:
/// events with `after < seq < before`, at most `limit`, the oldest such
/// events when `after` is given and the newest otherwise, always ascending.
///
/// The store does not validate `limit` (the service rejects 0 and values
/// above `MAX_PAGE_LIMIT`): `limit == 0` returns no events and `more` tells
/// whether any event matches; a large limit is honoured as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageRange {
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: u32,
}

impl From<&PageQuery> for PageRange {
    fn from(q: &PageQuery) -> Self {
        Self {
            before: q.before,
            after: q.after,
            limit: q.limit,
        }
    }
}

/// A page of room events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventPage {
    /// Ascending by room sequence.
    pub events: Vec<RoomEvent>,
    /// True when more events match the range beyond this page (older ones
    /// without `after`, newer ones with it).
    pub more: bool,
}

/// Rooms, memberships (both directions) and room history.
///
/// Membership is authoritative here; member events in history are only a
/// record of changes. Lists are sorted by id so every backend agrees.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Creates a room; `AlreadyExists` if its id is taken.
    async fn create_room(&self, room: &Room) -> Result<(), StoreError>;
    /// The room with this id, if any.
    async fn get_room(&self, id: &RoomId) -> Result<Option<Room>, StoreError>;
    /// Adds `user` to `room`; true if newly added. `NotFound` for an unknown room.
    async fn add_member(
        &self,
        room: &RoomId,
        user: &UserId,
        at_ms: u64,
    ) -> Result<bool, StoreError>;
    /// Removes `user` from `room`; true if they were a member. `NotFound` for
    /// an unknown room.
    async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError>;
    /// Whether `user` is a member of `room` (false for an unknown room).
    async fn is_member(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError>;
    /// Members of `room`, ascending by user id (empty for an unknown room).
    async fn members(&self, room: &RoomId) -> Result<Vec<UserId>, StoreError>;
    /// Rooms `user` belongs to, ascending by room id.
    async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomId>, StoreError>;
    /// How many rooms `user` belongs to.
    async fn room_count_of(&self, user: &UserId) -> Result<u64, StoreError>;
    /// How many rooms `user` created at or after `since_ms` (for the
    /// per-user creation rate, counted across every history instance).
    async fn rooms_created_since(&self, user: &UserId, since_ms: u64) -> Result<u64, StoreError>;
    /// Stores `events` in one transaction and returns how many were new.
    /// Idempotent: an event whose (room, seq) is stored is ignored, and so is
    /// a message whose (room, from, cmid) is stored under another seq.
    async fn append_events(&self, events: &[RoomEvent]) -> Result<usize, StoreError>;
    /// A page of `room`'s events (see [`PageRange`]).
    async fn page(&self, room: &RoomId, range: PageRange) -> Result<EventPage, StoreError>;
    /// Highest stored room sequence of `room` (0 if none).
    async fn last_seq(&self, room: &RoomId) -> Result<u64, StoreError>;
    /// The message `from` sent to `room` with client message id `cmid`, so a
    /// re-send is recognised beyond the stream's de-duplication window.
    async fn find_message(
        &self,
        room: &RoomId,
        from: &UserId,
        cmid: &ClientMsgId,
    ) -> Result<Option<RoomEvent>, StoreError>;
}
