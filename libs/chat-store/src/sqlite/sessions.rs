//! SQLite implementation of [`SessionStore`].

use async_trait::async_trait;
use chat_core::UserId;
use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, db, parse_id, to_i64, to_u64};
use crate::StoreError;
use crate::sessions::{PendingLogin, RefreshRecord, Rotation, Session, SessionStore};

const SESSION_COLUMNS: &str = "id, user, created_at, expires_at, revoked_at";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_session(
    (id, user, created_at, expires_at, revoked_at): (String, String, i64, i64, Option<i64>),
) -> Result<Session, StoreError> {
    Ok(Session {
        id,
        user: parse_id::<UserId>(user, "session user")?,
        created_at: to_u64(created_at, "created_at")?,
        expires_at: to_u64(expires_at, "expires_at")?,
        revoked_at: revoked_at.map(|t| to_u64(t, "revoked_at")).transpose()?,
    })
}

fn load(conn: &rusqlite::Connection, id: &str) -> Result<Option<Session>, StoreError> {
    conn.query_row(
        &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
        params![id],
        session_row,
    )
    .optional()
    .map_err(db)?
    .map(to_session)
    .transpose()
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn put_login(
        &self,
        login: &PendingLogin,
        expired_before: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError> {
        let login = login.clone();
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "DELETE FROM pending_logins WHERE created_at < ?1",
                params![to_i64(expired_before, "expired_before")?],
            )
            .map_err(db)?;
            let held: i64 = tx
                .query_row("SELECT COUNT(*) FROM pending_logins", [], |r| r.get(0))
                .map_err(db)?;
            if to_u64(held, "count")? >= max_pending as u64 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO pending_logins (state, binding, nonce, pkce_verifier, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    login.state,
                    login.binding,
                    login.nonce,
                    login.pkce_verifier,
                    to_i64(login.created_at, "created_at")?
                ],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(true)
        })
        .await
    }

    async fn take_login(
        &self,
        state: &str,
        expired_before: u64,
    ) -> Result<Option<PendingLogin>, StoreError> {
        let state = state.to_string();
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let row = tx
                .query_row(
                    "SELECT state, binding, nonce, pkce_verifier, created_at FROM pending_logins \
                     WHERE state = ?1",
                    params![state],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)?;
            tx.execute(
                "DELETE FROM pending_logins WHERE state = ?1",
                params![state],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            let Some((state, binding, nonce, pkce_verifier, created_at)) = row else {
                return Ok(None);
            };
            let created_at = to_u64(created_at, "created_at")?;
            Ok((created_at >= expired_before).then_some(PendingLogin {
                state,
                binding,
                nonce,
                pkce_verifier,
                created_at,
            }))
        })
        .await
    }

    async fn create_session(
        &self,
        session: &Session,
        first: &RefreshRecord,
        max_live: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (session, first) = (session.clone(), first.clone());
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let now = to_i64(session.created_at, "created_at")?;
            tx.execute(
                "INSERT INTO sessions (id, user, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    session.id,
                    session.user.to_string(),
                    now,
                    to_i64(session.expires_at, "expires_at")?
                ],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO refresh_tokens (hash, session, expires_at) VALUES (?1, ?2, ?3)",
                params![
                    first.hash,
                    session.id,
                    to_i64(first.expires_at.min(session.expires_at), "expires_at")?
                ],
            )
            .map_err(db)?;
            // Live sessions of the user beyond the limit, oldest first.
            let evicted: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id FROM sessions WHERE user = ?1 AND revoked_at IS NULL \
                         AND expires_at > ?2 ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?3",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(
                        params![
                            session.user.to_string(),
                            now,
                            to_i64(max_live as u64, "max")?
                        ],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            for id in &evicted {
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)?;
            Ok(evicted)
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        presented: &str,
        next: &RefreshRecord,
        now_ms: u64,
    ) -> Result<Rotation, StoreError> {
        let (presented, next) = (presented.to_string(), next.clone());
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let now = to_i64(now_ms, "now")?;
            let token = tx
                .query_row(
                    "SELECT session, expires_at, used_at FROM refresh_tokens WHERE hash = ?1",
                    params![presented],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)?;
            let Some((sid, expires_at, used_at)) = token else {
                return Ok(Rotation::Invalid);
            };
            let Some(session) = load(&tx, &sid)? else {
                return Err(StoreError::Corrupt(format!(
                    "refresh token of missing session {sid}"
                )));
            };
            if !session.is_live(now_ms) {
                return Ok(Rotation::Invalid);
            }
            if used_at.is_some() {
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1",
                    params![sid, now],
                )
                .map_err(db)?;
                tx.commit().map_err(db)?;
                let revoked = Session {
                    revoked_at: Some(now_ms),
                    ..session
                };
                return Ok(Rotation::Reused(revoked));
            }
            if expires_at <= now {
                return Ok(Rotation::Invalid);
            }
            tx.execute(
                "UPDATE refresh_tokens SET used_at = ?2 WHERE hash = ?1",
                params![presented, now],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO refresh_tokens (hash, session, expires_at) VALUES (?1, ?2, ?3)",
                params![
                    next.hash,
                    sid,
                    to_i64(next.expires_at.min(session.expires_at), "expires_at")?
                ],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Rotation::Rotated(session))
        })
        .await
    }

    async fn session_of_refresh(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        let hash = hash.to_string();
        self.call(move |conn| {
            let sid: Option<String> = conn
                .query_row(
                    "SELECT session FROM refresh_tokens WHERE hash = ?1",
                    params![hash],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            match sid {
                Some(sid) => load(conn, &sid),
                None => Ok(None),
            }
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let id = id.to_string();
        self.call(move |conn| load(conn, &id)).await
    }

    async fn revoke_session(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |conn| {
            let n = conn
                .execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL \
                     AND expires_at > ?2",
                    params![id, to_i64(now_ms, "now")?],
                )
                .map_err(db)?;
            Ok(n > 0)
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let user = user.to_string();
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let now = to_i64(now_ms, "now")?;
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id FROM sessions WHERE user = ?1 AND revoked_at IS NULL \
                         AND expires_at > ?2 ORDER BY created_at",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![user, now], |r| r.get(0))
                    .map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            tx.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE user = ?1 AND revoked_at IS NULL \
                 AND expires_at > ?2",
                params![user, now],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(ids)
        })
        .await
    }
}
