//! Shared state of one gateway process.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chat_core::names::svc as subjects;
use chat_core::svc::{self, ErrorCode, Reply, SvcError};
use chat_core::{RoomId, SCHEMA_VERSION, UserId};
use chat_stream::RoomLog;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::GatewayError;
use crate::presence::PresenceReporter;
use crate::registry::Registry;

/// Everything a handler or session needs. Cheap to clone: one pointer, so
/// each session (and its writer) holds 8 bytes of it, not a copy of every
/// client handle (which was 2 KiB per task).
#[derive(Clone)]
pub struct AppState(Arc<State>);

impl AppState {
    pub fn new(state: State) -> Self {
        Self(Arc::new(state))
    }
}

impl std::ops::Deref for AppState {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

/// What [`AppState`] points to.
pub struct State {
    pub config: Arc<Config>,
    pub nats: async_nats::Client,
    pub log: RoomLog,
    pub verifier: Arc<chat_jwt::Verifier>,
    pub registry: Registry,
    /// Sends being appended now, at most `max_sends_in_flight`.
    pub send_slots: Arc<tokio::sync::Semaphore>,
    /// Revoked sign-in sessions (`revocation.rs`).
    pub revocations: Arc<crate::revocation::Revocations>,
    pub presence: PresenceReporter,
    /// Tracks session tasks so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Browser origins allowed to open WebSockets.
    pub origins: crate::origin::AllowedOrigins,
    pub next_session: Arc<AtomicU64>,
    pub shutdown: chat_platform::Shutdown,
    /// HTTP client for the optional auth forward.
    pub http: reqwest::Client,
}

impl State {
    /// A request/reply call to another service, decoding its `Reply<T>`.
    pub async fn request<Q: Serialize, T: DeserializeOwned>(
        &self,
        subject: &'static str,
        body: &Q,
    ) -> Result<T, GatewayError> {
        let payload = serde_json::to_vec(body).map_err(|e| GatewayError::Unexpected(e.into()))?;
        let msg = tokio::time::timeout(
            self.config.request_timeout,
            self.nats.request(subject, payload.into()),
        )
        .await
        .map_err(|_| GatewayError::Unavailable(format!("{subject}: no reply in time")))?
        .map_err(|e| GatewayError::Unavailable(format!("{subject}: {e}")))?;
        let reply: Reply<T> = serde_json::from_slice(&msg.payload).map_err(|e| {
            GatewayError::Service(SvcError::new(
                ErrorCode::Internal,
                format!("{subject}: unreadable reply: {e}"),
            ))
        })?;
        reply.into_result().map_err(GatewayError::Service)
    }

    /// Rooms `user` belongs to (from the history service).
    pub async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomId>, GatewayError> {
        let r: svc::UserRooms = self
            .request(
                subjects::HISTORY_USER_ROOMS,
                &svc::UserRef {
                    v: SCHEMA_VERSION,
                    user: user.clone(),
                },
            )
            .await?;
        Ok(r.rooms)
    }
}
