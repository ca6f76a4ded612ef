//! [`HistoryStore`] on SQLite: rooms, memberships and events (JSON plus the
//! indexed columns room, seq, sender, cmid, ts).

use async_trait::async_trait;
use chat_core::events::{EventBody, RoomEvent};
use chat_core::svc::Room;
use chat_core::{ClientMsgId, RoomId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, db, parse_id, to_i64, to_u64};
use crate::{EventPage, HistoryStore, PageRange, StoreError};

fn decode_event(json: &str) -> Result<RoomEvent, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("stored event: {e}")))
}

fn room_exists(conn: &Connection, room: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM rooms WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row(params![room], |_| Ok(())))
        .optional()
        .map(|r| r.is_some())
        .map_err(db)
}

/// Saturating conversion for query bounds (a bound beyond i64 means "none").
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn create_room(&self, room: &Room) -> Result<(), StoreError> {
        let room = room.clone();
        self.call(move |conn| {
            let created_at = to_i64(room.created_at, "created_at")?;
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO rooms (id, name, created_by, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        room.id.as_str(),
                        room.name,
                        room.created_by.as_str(),
                        created_at
                    ],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists(format!("room {}", room.id)));
            }
            Ok(())
        })
        .await
    }

    async fn get_room(&self, id: &RoomId) -> Result<Option<Room>, StoreError> {
        let id = id.to_string();
        self.call_read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT id, name, created_by, created_at FROM rooms WHERE id = ?1",
                    params![id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)?;
            row.map(|(id, name, created_by, created_at)| {
                Ok(Room {
                    id: parse_id(id, "room id")?,
                    name,
                    created_by: parse_id(created_by, "user id")?,
                    created_at: to_u64(created_at, "created_at")?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn add_member(
        &self,
        room: &RoomId,
        user: &UserId,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        self.call(move |conn| {
            let at = to_i64(at_ms, "joined_at")?;
            let tx = conn.transaction().map_err(db)?;
            if !room_exists(&tx, &room)? {
                return Err(StoreError::NotFound(format!("room {room}")));
            }
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO members (room, user, joined_at) VALUES (?1, ?2, ?3)",
                    params![room, user, at],
                )
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(n > 0)
        })
        .await
    }

    async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            if !room_exists(&tx, &room)? {
                return Err(StoreError::NotFound(format!("room {room}")));
            }
            let n = tx
                .execute(
                    "DELETE FROM members WHERE room = ?1 AND user = ?2",
                    params![room, user],
                )
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(n > 0)
        })
        .await
    }

    async fn is_member(&self, room: &RoomId, user: &UserId) -> Result<bool, StoreError> {
        let (room, user) = (room.to_string(), user.to_string());
        self.call_read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM members WHERE room = ?1 AND user = ?2")
                .and_then(|mut stmt| stmt.query_row(params![room, user], |_| Ok(())))
                .optional()
                .map(|r| r.is_some())
                .map_err(db)
        })
        .await
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<UserId>, StoreError> {
        let room = room.to_string();
        self.call_read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT user FROM members WHERE room = ?1 ORDER BY user")
                .map_err(db)?;
            let rows = stmt
                .query_map(params![room], |r| r.get::<_, String>(0))
                .map_err(db)?;
            rows.map(|r| parse_id(r.map_err(db)?, "user id")).collect()
        })
        .await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomId>, StoreError> {
        let user = user.to_string();
        self.call_read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT room FROM members WHERE user = ?1 ORDER BY room")
                .map_err(db)?;
            let rows = stmt
                .query_map(params![user], |r| r.get::<_, String>(0))
                .map_err(db)?;
            rows.map(|r| parse_id(r.map_err(db)?, "room id")).collect()
        })
        .await
    }

    async fn room_count_of(&self, user: &UserId) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.call_read(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM members WHERE user = ?1")
                .map_err(db)?
                .query_row(params![user], |r| r.get(0))
                .map_err(db)?;
            to_u64(n, "room count")
        })
        .await
    }

    async fn rooms_created_since(&self, user: &UserId, since_ms: u64) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.call_read(move |conn| {
            let since = to_i64(since_ms, "since")?;
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM rooms WHERE created_by = ?1 AND created_at >= ?2",
                )
                .map_err(db)?
                .query_row(params![user, since], |r| r.get(0))
                .map_err(db)?;
            to_u64(n, "room count")
        })
        .await
    }

    async fn append_events(&self, events: &[RoomEvent]) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut rows = Vec::with_capacity(events.len());
        for ev in events {
            let json = serde_json::to_string(ev)
                .map_err(|e| StoreError::Backend(format!("encode event: {e}")))?;
            let cmid = match &ev.body {
                EventBody::Msg { cmid, .. } => Some(cmid.to_string()),
                EventBody::Member { .. } => None,
            };
            rows.push((
                ev.room.to_string(),
                to_i64(ev.seq, "seq")?,
                ev.from.to_string(),
                cmid,
                to_i64(ev.ts, "ts")?,
                json,
            ));
        }
        self.call(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let mut stored = 0;
            {
                // OR IGNORE: a replayed (room, seq) or a re-sent
                // (room, from, cmid) is skipped, not an error.
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO events (room, seq, sender, cmid, ts, json) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(db)?;
                for (room, seq, sender, cmid, ts, json) in &rows {
                    stored += stmt
                        .execute(params![room, seq, sender, cmid, ts, json])
                        .map_err(db)?;
                }
            }
            tx.commit().map_err(db)?;
            Ok(stored)
        })
        .await
    }

    async fn page(&self, room: &RoomId, range: PageRange) -> Result<EventPage, StoreError> {
        let room = room.to_string();
        self.call_read(move |conn| {
            let lower = bound(range.after.unwrap_or(0));
            let upper = range.before.map_or(i64::MAX, bound);
            let fetch = i64::from(range.limit) + 1;
            // Without `after` the page is the newest matching events: read
            // them newest first, then restore ascending order.
            let sql = if range.after.is_some() {
                "SELECT json FROM events WHERE room = ?1 AND seq > ?2 AND seq < ?3 \
                 ORDER BY seq ASC LIMIT ?4"
            } else {
                "SELECT json FROM events WHERE room = ?1 AND seq > ?2 AND seq < ?3 \
                 ORDER BY seq DESC LIMIT ?4"
            };
            let mut stmt = conn.prepare_cached(sql).map_err(db)?;
            let jsons = stmt
                .query_map(params![room, lower, upper, fetch], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(db)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db)?;
            let limit = usize::try_from(range.limit).unwrap_or(usize::MAX);
            let more = jsons.len() > limit;
            let mut events = jsons
                .iter()
                .take(limit)
                .map(|j| decode_event(j))
                .collect::<Result<Vec<_>, _>>()?;
            if range.after.is_none() {
                events.reverse();
            }
            Ok(EventPage { events, more })
        })
        .await
    }

    async fn last_seq(&self, room: &RoomId) -> Result<u64, StoreError> {
        let room = room.to_string();
        self.call_read(move |conn| {
            let max: Option<i64> = conn
                .prepare_cached("SELECT MAX(seq) FROM events WHERE room = ?1")
                .and_then(|mut stmt| stmt.query_row(params![room], |r| r.get(0)))
                .map_err(db)?;
            to_u64(max.unwrap_or(0), "seq")
        })
        .await
    }

    async fn find_message(
        &self,
        room: &RoomId,
        from: &UserId,
        cmid: &ClientMsgId,
    ) -> Result<Option<RoomEvent>, StoreError> {
        let (room, from, cmid) = (room.to_string(), from.to_string(), cmid.to_string());
        self.call_read(move |conn| {
            // Asked once per send: a cached statement, not parsed each time.
            conn.prepare_cached(
                "SELECT json FROM events WHERE room = ?1 AND sender = ?2 AND cmid = ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![room, from, cmid], |r| r.get::<_, String>(0))
            })
            .optional()
            .map_err(db)?
            .map(|j| decode_event(&j))
            .transpose()
        })
        .await
    }
}
