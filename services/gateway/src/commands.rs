//! Client requests after authentication: each frame type is handled here and
//! answered with exactly one frame (its result or an error), sometimes with
//! room positions the writer must start from before that frame.

use chat_core::events::{EventBody, MemberOp};
use chat_core::names::svc as subjects;
use chat_core::svc::{self, SvcError};
use chat_core::wire::{ClientFrame, ServerFrame};
use chat_core::{ClientMsgId, RoomId, SCHEMA_VERSION, UserId};

use crate::error::GatewayError;
use crate::state::AppState;

/// Default page size of `history` when the client gives none.
const DEFAULT_PAGE: u32 = 50;
/// Longest room name.
const MAX_ROOM_NAME: usize = 100;
/// Longest wait for the idempotency lookup in history before sending anyway.
const IDEMPOTENCY_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub use chat_core::decode::request_id;

/// The answer to one request.
pub struct Answer {
    pub frame: ServerFrame,
    /// Rooms whose position the reply tells the client (`rooms.list`, a
    /// join): the writer starts them there, so no later message is skipped.
    pub positions: Vec<(RoomId, u64)>,
    /// A valid `auth` renewed the session: its new `sid`, expiry and
    /// scopes.
    pub renewed: Option<(Option<String>, u64, crate::scopes::Scopes)>,
    /// A join succeeded: the session is then told who in the room is online.
    pub joined: Option<RoomId>,
}

impl From<ServerFrame> for Answer {
    fn from(frame: ServerFrame) -> Self {
        Self {
            frame,
            positions: Vec::new(),
            renewed: None,
            joined: None,
        }
    }
}

/// Handles one text frame from an authenticated client.
#[tracing::instrument(skip_all)]
pub async fn handle(
    st: &AppState,
    user: &UserId,
    scopes: &crate::scopes::Scopes,
    text: &str,
) -> Answer {
    let frame = match chat_core::decode::decode(text) {
        Ok(f) => f,
        Err(e) => {
            metrics::counter!("chat_gateway_request_errors_total", "code" => e.code.as_str())
                .increment(1);
            return ServerFrame::Error {
                id: e.id,
                code: e.code,
                message: e.message,
                room: None,
            }
            .into();
        }
    };
    let id = match &frame {
        ClientFrame::Send { id, .. } => Some(id.to_string()),
        ClientFrame::RoomCreate { id, .. }
        | ClientFrame::RoomJoin { id, .. }
        | ClientFrame::RoomLeave { id, .. }
        | ClientFrame::History { id, .. }
        | ClientFrame::RoomsList { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Auth { id, .. } => id.clone(),
        ClientFrame::Hello { .. } => None,
    };
    // The token's scopes first (service accounts), then the request.
    if let Err(e) = scopes.check(&frame) {
        metrics::counter!("chat_gateway_request_errors_total", "code" => e.code().as_str())
            .increment(1);
        return e.frame(id).into();
    }
    let result = match frame {
        ClientFrame::Hello { .. } => Err(GatewayError::BadRequest("already authenticated".into())),
        ClientFrame::Ping { id } => Ok(ServerFrame::Pong { id }.into()),
        ClientFrame::Auth { id, token } => reauth(st, user, id, &token).await,
        ClientFrame::Send {
            id,
            room,
            text,
            retry,
        } => send(st, user, id, room, text, retry).await.map(Into::into),
        ClientFrame::RoomCreate { id, name } => create(st, user, id, name).await,
        ClientFrame::RoomJoin { id, room } => membership(st, user, id, room, MemberOp::Join).await,
        ClientFrame::RoomLeave { id, room } => {
            membership(st, user, id, room, MemberOp::Leave).await
        }
        ClientFrame::History {
            id,
            room,
            before,
            after,
            limit,
        } => history(st, user, id, room, before, after, limit)
            .await
            .map(Into::into),
        ClientFrame::RoomsList { id, after, limit } => rooms_list(st, user, id, after, limit).await,
    };
    result.unwrap_or_else(|e| {
        if e.is_backend_failure() {
            tracing::warn!(error = %e, "request failed");
        }
        metrics::counter!("chat_gateway_request_errors_total", "code" => e.code().as_str())
            .increment(1);
        e.frame(id).into()
    })
}

/// `auth`: a fresh token for the same user renews the session; anything
/// else is refused and the session keeps its current token (and expiry).
async fn reauth(
    st: &AppState,
    user: &UserId,
    id: Option<String>,
    token: &str,
) -> Result<Answer, GatewayError> {
    let claims = st
        .verifier
        .verify(token)
        .await
        .map_err(|e| GatewayError::Unauthorized(format!("invalid token: {e}")))?;
    if &claims.user != user {
        return Err(GatewayError::Unauthorized(
            "the token is for another user".into(),
        ));
    }
    if claims
        .session
        .as_deref()
        .is_some_and(|s| st.revocations.is_revoked(s))
    {
        return Err(GatewayError::Unauthorized(
            "invalid token: its session was revoked".into(),
        ));
    }
    Ok(Answer {
        frame: ServerFrame::Authenticated {
            id,
            exp: claims.exp,
        },
        positions: Vec::new(),
        joined: None,
        renewed: Some((
            claims.session,
            claims.exp,
            crate::scopes::Scopes::from_claims(claims.scopes),
        )),
    })
}

async fn send(
    st: &AppState,
    user: &UserId,
    id: ClientMsgId,
    room: RoomId,
    text: String,
    retry: bool,
) -> Result<ServerFrame, GatewayError> {
    let max = st.config.limits.max_text_bytes;
    if text.len() > max {
        return Err(GatewayError::TextTooLarge {
            len: text.len(),
            max,
        });
    }
    if text.trim().is_empty() {
        return Err(GatewayError::BadRequest("text must not be empty".into()));
    }
    if !st.registry.is_member(user, &room) {
        return Err(GatewayError::NotMember(room.to_string()));
    }
    // Bounded work in flight: past the knee, shed at once rather than
    // queue behind the stream (the client retries with the same id).
    let Ok(_slot) = st.send_slots.try_acquire() else {
        metrics::counter!("chat_gateway_sends_shed_total").increment(1);
        return Err(GatewayError::Overloaded(
            st.config.limits.max_sends_in_flight,
        ));
    };
    // Beyond the stream's de-duplication window, the store remembers every
    // (room, sender, client id): a late retry is answered from there. Only
    // a send marked as a retry can be one, so only it pays for the lookup.
    if retry {
        metrics::counter!("chat_gateway_retry_lookups_total").increment(1);
        if let Some(stored) = find_stored(st, user, &id, &room).await {
            return duplicate_ack(user, id, room, &text, stored);
        }
    }
    // Scoped by room and sender, so two users (or rooms) may reuse ids.
    let dedup = format!("{room}.{user}.{id}");
    let appended = st
        .log
        .append(
            &room,
            user,
            EventBody::Msg {
                cmid: id.clone(),
                text: text.clone(),
            },
            Some(&dedup),
        )
        .await
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    if appended.duplicate {
        return duplicate_ack(user, id, room, &text, appended.event);
    }
    metrics::counter!("chat_gateway_messages_sent_total").increment(1);
    Ok(ServerFrame::Ack {
        id,
        room,
        seq: appended.event.seq,
        ts: appended.event.ts,
        duplicate: false,
    })
}

/// The ack for a repeated send: the stored message's sequence, or
/// `id_conflict` when the id was used for different content.
fn duplicate_ack(
    user: &UserId,
    id: ClientMsgId,
    room: RoomId,
    text: &str,
    stored: chat_core::events::RoomEvent,
) -> Result<ServerFrame, GatewayError> {
    let same = stored.from == *user
        && matches!(&stored.body, EventBody::Msg { cmid, text: t } if *cmid == id && t == text);
    if !same {
        return Err(GatewayError::IdConflict(id.to_string()));
    }
    metrics::counter!("chat_gateway_duplicate_sends_total").increment(1);
    Ok(ServerFrame::Ack {
        id,
        room,
        seq: stored.seq,
        ts: stored.ts,
        duplicate: true,
    })
}

/// The stored message with this client id, if history has one. History
/// being unavailable is not fatal: the stream's de-duplication still covers
/// recent retries.
async fn find_stored(
    st: &AppState,
    user: &UserId,
    id: &ClientMsgId,
    room: &RoomId,
) -> Option<chat_core::events::RoomEvent> {
    let query = svc::MessageFind {
        v: SCHEMA_VERSION,
        room: room.clone(),
        from: user.clone(),
        cmid: id.clone(),
    };
    // A hung history service must not hold every send for the full request
    // timeout: this lookup gives up sooner.
    let lookup = st.request::<_, svc::FoundMessage>(subjects::HISTORY_MESSAGE_FIND, &query);
    match tokio::time::timeout(IDEMPOTENCY_LOOKUP_TIMEOUT, lookup)
        .await
        .unwrap_or_else(|_| Err(GatewayError::Unavailable("lookup timed out".into())))
    {
        Ok(found) => found.event,
        Err(e) => {
            tracing::warn!(error = %e, "idempotency lookup in history failed; relying on the stream window");
            None
        }
    }
}

async fn create(
    st: &AppState,
    user: &UserId,
    id: Option<String>,
    name: String,
) -> Result<Answer, GatewayError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_ROOM_NAME {
        return Err(GatewayError::BadRequest(format!(
            "room name must be 1 to {MAX_ROOM_NAME} characters"
        )));
    }
    let reply: svc::MembershipReply = st
        .request(
            subjects::HISTORY_ROOM_CREATE,
            &svc::RoomCreate {
                v: SCHEMA_VERSION,
                by: user.clone(),
                name: trimmed.to_string(),
            },
        )
        .await?;
    st.registry.set_member(user, &reply.room.id, MemberOp::Join);
    Ok(Answer {
        positions: position(&reply.room.id, reply.seq),
        renewed: None,
        joined: None,
        frame: ServerFrame::RoomCreated {
            id,
            room: reply.room,
            seq: reply.seq,
        },
    })
}

/// The position a membership reply tells the client, if any.
fn position(room: &RoomId, seq: Option<u64>) -> Vec<(RoomId, u64)> {
    seq.map(|s| vec![(room.clone(), s)]).unwrap_or_default()
}

async fn membership(
    st: &AppState,
    user: &UserId,
    id: Option<String>,
    room: RoomId,
    op: MemberOp,
) -> Result<Answer, GatewayError> {
    // Leaving a room you are not in is `not_member` whether or not it
    // exists, like every other request on such a room.
    if op == MemberOp::Leave && !st.registry.is_member(user, &room) {
        return Err(GatewayError::NotMember(room.to_string()));
    }
    let subject = match op {
        MemberOp::Join => subjects::HISTORY_ROOM_JOIN,
        MemberOp::Leave => subjects::HISTORY_ROOM_LEAVE,
    };
    let reply: svc::MembershipReply = st
        .request(
            subject,
            &svc::Membership {
                v: SCHEMA_VERSION,
                room: room.clone(),
                user: user.clone(),
            },
        )
        .await?;
    st.registry.set_member(user, &room, op);
    Ok(match op {
        MemberOp::Join => Answer {
            positions: position(&room, reply.seq),
            renewed: None,
            joined: Some(room.clone()),
            frame: ServerFrame::RoomJoined {
                id,
                room: reply.room,
                seq: reply.seq,
            },
        },
        MemberOp::Leave => ServerFrame::RoomLeft {
            id,
            room: reply.room,
            seq: reply.seq,
        }
        .into(),
    })
}

/// `rooms.list`: a page of the caller's rooms by id with their heads; the
/// writer starts each at its head, as for `welcome`.
async fn rooms_list(
    st: &AppState,
    user: &UserId,
    id: Option<String>,
    after: Option<RoomId>,
    limit: Option<u32>,
) -> Result<Answer, GatewayError> {
    let max = st.config.welcome_rooms;
    let limit = match limit {
        None => max,
        Some(l) if l >= 1 && (l as usize) <= max => l as usize,
        Some(_) => {
            return Err(GatewayError::BadRequest(format!(
                "limit must be 1 to {max}"
            )));
        }
    };
    let (page, more) = st.registry.rooms_page(user, after.as_ref(), limit);
    let heads = crate::start::read_heads(st, &page).await?;
    let rooms = heads
        .iter()
        .map(|(id, seq)| chat_core::wire::RoomHead {
            id: id.clone(),
            seq: *seq,
        })
        .collect();
    Ok(Answer {
        positions: heads,
        renewed: None,
        joined: None,
        frame: ServerFrame::Rooms { id, rooms, more },
    })
}

async fn history(
    st: &AppState,
    user: &UserId,
    id: Option<String>,
    room: RoomId,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
) -> Result<ServerFrame, GatewayError> {
    if !st.registry.is_member(user, &room) {
        return Err(GatewayError::NotMember(room.to_string()));
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > svc::MAX_PAGE_LIMIT {
        return Err(GatewayError::BadRequest(format!(
            "limit must be 1 to {}",
            svc::MAX_PAGE_LIMIT
        )));
    }
    let page: svc::Page = st
        .request(
            subjects::HISTORY_PAGE,
            &svc::PageQuery {
                v: SCHEMA_VERSION,
                room: room.clone(),
                before,
                after,
                limit,
            },
        )
        .await?;
    Ok(ServerFrame::History {
        id,
        room,
        events: page.events,
        more: page.more,
    })
}

impl From<SvcError> for GatewayError {
    fn from(e: SvcError) -> Self {
        GatewayError::Service(e)
    }
}
