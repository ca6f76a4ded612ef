//! Request/reply API on `svc.history.*` (queue group `history`): rooms,
//! memberships and history pages. Replies are always `Reply<T>` JSON.

use std::sync::Arc;

use chat_core::events::{EventBody, MemberOp};
use chat_core::names::svc;
use chat_core::svc::{
    ErrorCode, FoundMessage, MAX_PAGE_LIMIT, Members, Membership, MembershipReply, MessageFind,
    Page, PageQuery, Room, RoomCreate, RoomRef, SvcError, UserRef, UserRooms,
};
use chat_core::{RoomId, SCHEMA_VERSION, UserId};
use chat_store::{HistoryStore, PageRange, StoreError};
use chat_stream::RoomLog;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::instrument;

/// Longest room name, in characters after trimming.
pub const MAX_ROOM_NAME_CHARS: usize = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<dyn HistoryStore>,
    pub log: RoomLog,
    pub limits: crate::config::RoomLimits,
}

/// The rolling window of `CHAT_HISTORY_ROOMS_PER_HOUR`.
const CREATE_WINDOW_MS: u64 = 60 * 60 * 1000;

fn err(code: ErrorCode, message: impl Into<String>) -> SvcError {
    SvcError::new(code, message)
}

/// Every store failure is `unavailable` except a missing room.
fn store_err(e: StoreError) -> SvcError {
    match e {
        StoreError::NotFound(what) => err(ErrorCode::NotFound, format!("{what} not found")),
        other => {
            tracing::warn!(error = %other, "store call failed");
            err(ErrorCode::Unavailable, "history store unavailable")
        }
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, SvcError> {
    serde_json::from_slice(payload).map_err(|e| err(ErrorCode::Malformed, e.to_string()))
}

fn check_version(v: u32) -> Result<(), SvcError> {
    if v == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(err(
            ErrorCode::BadRequest,
            format!("unsupported schema version {v}"),
        ))
    }
}

fn encode<T: Serialize>(r: Result<T, SvcError>) -> Vec<u8> {
    let reply: chat_core::svc::Reply<T> = r.into();
    serde_json::to_vec(&reply).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode reply");
        br#"{"error":{"code":"internal","message":"cannot encode reply"}}"#.to_vec()
    })
}

/// The verb of a `svc.history.*` subject, for metrics and logs.
fn verb(subject: &str) -> &str {
    subject.strip_prefix("svc.history.").unwrap_or(subject)
}

impl Api {
    /// Handles one request and returns the reply body.
    pub async fn handle(&self, subject: &str, payload: &[u8]) -> Vec<u8> {
        let (body, outcome) = match subject {
            svc::HISTORY_ROOM_CREATE => self.respond(payload, Self::room_create).await,
            svc::HISTORY_ROOM_JOIN => self.respond(payload, Self::room_join).await,
            svc::HISTORY_ROOM_LEAVE => self.respond(payload, Self::room_leave).await,
            svc::HISTORY_ROOM_GET => self.respond(payload, Self::room_get).await,
            svc::HISTORY_ROOM_MEMBERS => self.respond(payload, Self::room_members).await,
            svc::HISTORY_USER_ROOMS => self.respond(payload, Self::user_rooms).await,
            svc::HISTORY_PAGE => self.respond(payload, Self::page).await,
            svc::HISTORY_MESSAGE_FIND => self.respond(payload, Self::message_find).await,
            other => {
                let e = err(ErrorCode::UnknownType, format!("unknown subject {other}"));
                (encode::<()>(Err(e)), ErrorCode::UnknownType.as_str())
            }
        };
        metrics::counter!("chat_history_requests_total", "verb" => verb(subject).to_string(), "outcome" => outcome)
            .increment(1);
        body
    }

    async fn respond<'a, Q, T, F, Fut>(&'a self, payload: &[u8], f: F) -> (Vec<u8>, &'static str)
    where
        Q: DeserializeOwned,
        T: Serialize,
        F: FnOnce(&'a Self, Q) -> Fut,
        Fut: Future<Output = Result<T, SvcError>>,
    {
        let result = match decode::<Q>(payload) {
            Ok(q) => f(self, q).await,
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        (encode(result), outcome)
    }

    async fn room_or_not_found(&self, id: &RoomId) -> Result<Room, SvcError> {
        self.store
            .get_room(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| err(ErrorCode::NotFound, format!("room {id} not found")))
    }

    /// Appends a member event; on failure undoes the membership change with
    /// `undo` so the store and the stream do not disagree.
    async fn member_event<U>(
        &self,
        room: &RoomId,
        user: &UserId,
        op: MemberOp,
        undo: U,
    ) -> Result<u64, SvcError>
    where
        U: Future<Output = Result<bool, StoreError>>,
    {
        let body = EventBody::Member {
            user: user.clone(),
            op,
        };
        match self.log.append(room, user, body, None).await {
            Ok(appended) => Ok(appended.event.seq),
            Err(e) => {
                tracing::warn!(error = %e, %room, %user, ?op, "member event not appended; undoing");
                if let Err(u) = undo.await {
                    tracing::error!(error = %u, %room, %user, "undo of membership change failed");
                }
                Err(err(ErrorCode::Unavailable, "room stream unavailable"))
            }
        }
    }

    /// `svc.history.room.create`: a new room with its creator as first member.
    #[instrument(skip_all, fields(by = %q.by))]
    async fn room_create(&self, q: RoomCreate) -> Result<MembershipReply, SvcError> {
        check_version(q.v)?;
        let name = q.name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_ROOM_NAME_CHARS {
            return Err(err(
                ErrorCode::BadRequest,
                format!("room name must be 1..={MAX_ROOM_NAME_CHARS} characters"),
            ));
        }
        let now = chat_core::time::now_ms();
        let created = self
            .store
            .rooms_created_since(&q.by, now.saturating_sub(CREATE_WINDOW_MS))
            .await
            .map_err(store_err)?;
        if created >= self.limits.created_per_hour {
            metrics::counter!("chat_history_room_limits_total", "limit" => "created_per_hour")
                .increment(1);
            return Err(err(
                ErrorCode::RateLimited,
                format!(
                    "at most {} new rooms per hour; try again later",
                    self.limits.created_per_hour
                ),
            ));
        }
        self.check_room_count(&q.by).await?;
        let room = Room {
            id: RoomId::generate(),
            name: name.to_string(),
            created_by: q.by.clone(),
            created_at: now,
        };
        self.store.create_room(&room).await.map_err(store_err)?;
        self.store
            .add_member(&room.id, &q.by, now)
            .await
            .map_err(store_err)?;
        let undo = self.store.remove_member(&room.id, &q.by);
        let seq = self
            .member_event(&room.id, &q.by, MemberOp::Join, undo)
            .await?;
        tracing::info!(room = %room.id, seq, "room created");
        Ok(MembershipReply {
            room,
            changed: true,
            seq: Some(seq),
        })
    }

    /// `limit_reached` when `user` already belongs to the most rooms allowed.
    async fn check_room_count(&self, user: &UserId) -> Result<(), SvcError> {
        let n = self.store.room_count_of(user).await.map_err(store_err)?;
        if n >= self.limits.max_per_user {
            metrics::counter!("chat_history_room_limits_total", "limit" => "max_per_user")
                .increment(1);
            return Err(err(
                ErrorCode::LimitReached,
                format!(
                    "you are in {n} rooms, the most allowed ({}); leave one first",
                    self.limits.max_per_user
                ),
            ));
        }
        Ok(())
    }

    /// `svc.history.room.join`: adds a member; a member event only when new.
    #[instrument(skip_all, fields(room = %q.room, user = %q.user))]
    async fn room_join(&self, q: Membership) -> Result<MembershipReply, SvcError> {
        check_version(q.v)?;
        let room = self.room_or_not_found(&q.room).await?;
        if !self
            .store
            .is_member(&q.room, &q.user)
            .await
            .map_err(store_err)?
        {
            self.check_room_count(&q.user).await?;
        }
        let now = chat_core::time::now_ms();
        if !self
            .store
            .add_member(&q.room, &q.user, now)
            .await
            .map_err(store_err)?
        {
            return Ok(MembershipReply {
                room,
                changed: false,
                seq: None,
            });
        }
        let undo = self.store.remove_member(&q.room, &q.user);
        let seq = self
            .member_event(&q.room, &q.user, MemberOp::Join, undo)
            .await?;
        Ok(MembershipReply {
            room,
            changed: true,
            seq: Some(seq),
        })
    }

    /// `svc.history.room.leave`: removes a member; `not_member` if not one.
    #[instrument(skip_all, fields(room = %q.room, user = %q.user))]
    async fn room_leave(&self, q: Membership) -> Result<MembershipReply, SvcError> {
        check_version(q.v)?;
        let room = self.room_or_not_found(&q.room).await?;
        if !self
            .store
            .remove_member(&q.room, &q.user)
            .await
            .map_err(store_err)?
        {
            return Err(err(
                ErrorCode::NotMember,
                format!("{} is not a member of {}", q.user, q.room),
            ));
        }
        let undo = self
            .store
            .add_member(&q.room, &q.user, chat_core::time::now_ms());
        let seq = self
            .member_event(&q.room, &q.user, MemberOp::Leave, undo)
            .await?;
        Ok(MembershipReply {
            room,
            changed: true,
            seq: Some(seq),
        })
    }

    /// `svc.history.room.get`: a room's metadata.
    #[instrument(skip_all, fields(room = %q.room))]
    async fn room_get(&self, q: RoomRef) -> Result<Room, SvcError> {
        check_version(q.v)?;
        self.room_or_not_found(&q.room).await
    }

    /// `svc.history.room.members`: a room's members, sorted by id.
    #[instrument(skip_all, fields(room = %q.room))]
    async fn room_members(&self, q: RoomRef) -> Result<Members, SvcError> {
        check_version(q.v)?;
        self.room_or_not_found(&q.room).await?;
        let members = self.store.members(&q.room).await.map_err(store_err)?;
        Ok(Members {
            room: q.room,
            members,
        })
    }

    /// `svc.history.user.rooms`: the rooms a user belongs to, sorted by id.
    #[instrument(skip_all, fields(user = %q.user))]
    async fn user_rooms(&self, q: UserRef) -> Result<UserRooms, SvcError> {
        check_version(q.v)?;
        let rooms = self.store.rooms_of(&q.user).await.map_err(store_err)?;
        Ok(UserRooms {
            user: q.user,
            rooms,
        })
    }

    /// `svc.history.page`: stored events by room sequence (see `PageQuery`).
    #[instrument(skip_all, fields(room = %q.room, before = ?q.before, after = ?q.after, limit = q.limit))]
    async fn page(&self, q: PageQuery) -> Result<Page, SvcError> {
        check_version(q.v)?;
        if q.limit == 0 || q.limit > MAX_PAGE_LIMIT {
            return Err(err(
                ErrorCode::BadRequest,
                format!("limit must be 1..={MAX_PAGE_LIMIT}"),
            ));
        }
        self.room_or_not_found(&q.room).await?;
        let page = self
            .store
            .page(&q.room, PageRange::from(&q))
            .await
            .map_err(store_err)?;
        Ok(Page {
            room: q.room,
            events: page.events,
            more: page.more,
        })
    }

    /// `svc.history.message.find`: the stored message with this sender and
    /// client message id (`event: null` if none).
    #[instrument(skip_all, fields(room = %q.room, from = %q.from))]
    async fn message_find(&self, q: MessageFind) -> Result<FoundMessage, SvcError> {
        check_version(q.v)?;
        let event = self
            .store
            .find_message(&q.room, &q.from, &q.cmid)
            .await
            .map_err(store_err)?;
        Ok(FoundMessage { event })
    }
}
