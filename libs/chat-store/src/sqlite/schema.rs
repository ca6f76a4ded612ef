//! Schema migrations, applied in order at open and recorded in
//! `PRAGMA user_version`, so an old database file is upgraded in place.

use rusqlite::Connection;

use super::db;
use crate::StoreError;

/// Migration N (1-based) brings the schema from version N-1 to N.
const MIGRATIONS: &[&str] = &[
    // 1: users, rooms, memberships (both directions), events.
    "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        name TEXT NOT NULL,
        email TEXT,
        created_at INTEGER NOT NULL,
        UNIQUE (issuer, subject)
    );
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        room TEXT NOT NULL REFERENCES rooms (id),
        user TEXT NOT NULL,
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (room, user)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user, room);
    CREATE TABLE events (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender TEXT NOT NULL,
        cmid TEXT,
        ts INTEGER NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX events_by_cmid ON events (room, sender, cmid) WHERE cmid IS NOT NULL;
    CREATE INDEX events_by_ts ON events (room, ts);",
    // 2: rooms by creator and time, for the per-user creation rate.
    "CREATE INDEX rooms_by_creator ON rooms (created_by, created_at);",
    // 3: sign-in sessions and their refresh tokens (hashes only).
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX sessions_by_user ON sessions (user, created_at);
    CREATE TABLE refresh_tokens (
        hash TEXT PRIMARY KEY,
        session TEXT NOT NULL REFERENCES sessions (id),
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    );
    CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session);",
    // 4: sign-ins in progress at an OpenID provider (single use, short-lived).
    "CREATE TABLE pending_logins (
        state TEXT PRIMARY KEY,
        binding TEXT NOT NULL,
        nonce TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX pending_logins_by_time ON pending_logins (created_at);",
    // 5: service accounts (secrets as hashes; scopes as a JSON array).
    "CREATE TABLE service_accounts (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );",
    // 6: no query reads events by time; the index cost a random page write
    // per stored message.
    "DROP INDEX IF EXISTS events_by_ts;",
];

/// Applies every migration newer than the file's `user_version`.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    let current = usize::try_from(current)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {current}")))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i + 1;
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}
