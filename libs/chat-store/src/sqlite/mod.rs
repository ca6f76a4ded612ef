//! The embedded backend: one SQLite file in WAL mode, schema migrated at
//! open, every call run on the blocking pool behind one connection mutex.

mod history;
mod schema;
mod service_accounts;
mod sessions;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_core::UserId;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Identity, StoreError, User, UserStore};

/// Reads through a memory map instead of a `pread` per page missing from
/// SQLite's page cache (messages of many rooms land on many B-tree pages:
/// with `pread` an eighth of the writer's time went to re-reading them).
/// A larger page cache did the same but costs a scan of it per commit.
const MMAP_BYTES: i64 = 256 * 1024 * 1024;
/// WAL pages before a checkpoint (SQLite's default is 1000, 4 MiB): a page
/// rewritten by many commits is copied into the database once per
/// checkpoint, and each checkpoint costs an fsync.
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// SQLite-backed [`UserStore`] and [`crate::HistoryStore`]. Cheap to clone.
///
/// One connection serialises all writes (a single writer is what SQLite
/// wants); reads of history go through a second one, so in WAL mode they
/// never wait behind a write that waits for a lock (another process's, or
/// a busy database).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Read-only; the same connection as `conn` for an in-memory database.
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

/// Maps a SQLite error to the backend arm.
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Converts a stored integer back to the u64 it was written from.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// Converts a u64 for storage; values above i64::MAX cannot be stored.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} exceeds i64::MAX")))
}

/// Parses a stored id, reporting corruption with context.
pub(crate) fn parse_id<T>(s: String, what: &str) -> Result<T, StoreError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

impl SqliteStore {
    /// Opens (creating it and its parent directory if needed) the database at
    /// `path`, switches it to WAL mode and migrates the schema. Blocking:
    /// call from `spawn_blocking` in async code.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(db)?;
        // WAL lets readers of other processes (backups, tools) run alongside
        // the writer; NORMAL sync is durable across process crashes in WAL.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)
            .map_err(db)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(db)?;
        let mut store = Self::init(conn)?;
        // After the migration, so the reader sees the schema.
        let reader = Connection::open(path).map_err(db)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        reader
            .pragma_update(None, "mmap_size", MMAP_BYTES)
            .map_err(db)?;
        reader.pragma_update(None, "query_only", "ON").map_err(db)?;
        store.reader = Arc::new(Mutex::new(reader));
        Ok(store)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        schema::migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Self {
            reader: conn.clone(),
            conn,
        })
    }

    /// Runs `f` with the writing connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Self::on(self.conn.clone(), f).await
    }

    /// Runs a read-only `f` with the reading connection.
    pub(crate) async fn call_read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Self::on(self.reader.clone(), f).await
    }

    async fn on<T, F>(conn: Arc<Mutex<Connection>>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a transaction open
            // (rusqlite rolls back on drop), so a poisoned lock is still usable.
            let mut guard = match conn.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

fn user_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, Option<String>, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn to_user(
    (id, issuer, subject, name, email, created_at): (
        String,
        String,
        String,
        String,
        Option<String>,
        i64,
    ),
) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id(id, "user id")?,
        issuer,
        subject,
        name,
        email,
        created_at: to_u64(created_at, "created_at")?,
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn upsert_user(&self, identity: &Identity) -> Result<User, StoreError> {
        let identity = identity.clone();
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let existing = tx
                .query_row(
                    "SELECT id, created_at FROM users WHERE issuer = ?1 AND subject = ?2",
                    params![identity.issuer, identity.subject],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()
                .map_err(db)?;
            let (id, created_at) = match existing {
                Some((id, created_at)) => {
                    tx.execute(
                        "UPDATE users SET name = ?2, email = ?3 WHERE id = ?1",
                        params![id, identity.name, identity.email],
                    )
                    .map_err(db)?;
                    (id, created_at)
                }
                None => {
                    let id = UserId::generate().to_string();
                    let now = to_i64(chat_core::time::now_ms(), "created_at")?;
                    tx.execute(
                        "INSERT INTO users (id, issuer, subject, name, email, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            id,
                            identity.issuer,
                            identity.subject,
                            identity.name,
                            identity.email,
                            now
                        ],
                    )
                    .map_err(db)?;
                    (id, now)
                }
            };
            tx.commit().map_err(db)?;
            to_user((
                id,
                identity.issuer,
                identity.subject,
                identity.name,
                identity.email,
                created_at,
            ))
        })
        .await
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.call(move |conn| {
            conn.query_row(
                "SELECT id, issuer, subject, name, email, created_at FROM users WHERE id = ?1",
                params![id],
                user_from_row,
            )
            .optional()
            .map_err(db)?
            .map(to_user)
            .transpose()
        })
        .await
    }
}
