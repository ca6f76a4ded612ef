//! The gateway's one error type for client requests, mapped once to an
//! error frame with a stable code.

use chat_core::svc::{ErrorCode, SvcError};
use chat_core::wire::ServerFrame;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not a member of room {0}")]
    NotMember(String),
    #[error("message text is {len} bytes; the limit is {max}")]
    TextTooLarge { len: usize, max: usize },
    #[error("client message id {0} was already used for a different message")]
    IdConflict(String),
    /// An error reply from another service, passed through with its code.
    #[error("{0}")]
    Service(SvcError),
    #[error("a backend is unavailable, retry later: {0}")]
    Unavailable(String),
    #[error("unexpected error: {0}")]
    Unexpected(#[from] anyhow::Error),
}

impl GatewayError {
    /// The stable error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::BadRequest(_) => ErrorCode::BadRequest,
            GatewayError::NotMember(_) => ErrorCode::NotMember,
            GatewayError::TextTooLarge { .. } => ErrorCode::TooLarge,
            GatewayError::IdConflict(_) => ErrorCode::IdConflict,
            GatewayError::Service(e) => e.code,
            GatewayError::Unavailable(_) => ErrorCode::Unavailable,
            GatewayError::Unexpected(_) => ErrorCode::Internal,
        }
    }

    /// The error frame for this failure, answering request `id`.
    pub fn frame(&self, id: Option<String>) -> ServerFrame {
        let message = match self {
            // Internal details stay in the logs.
            GatewayError::Unexpected(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        ServerFrame::Error {
            id,
            code: self.code(),
            message,
        }
    }
}
