//! The gateway's one error type for client requests, mapped once to an
//! error frame with a stable code.

use chat_core::svc::{ErrorCode, SvcError};
use chat_core::wire::ServerFrame;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
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
    /// More sends in flight on this gateway than it takes: shed, nothing
    /// stored.
    #[error(
        "this gateway is at its limit of {0} sends in flight; nothing was stored: retry with the same id shortly"
    )]
    Overloaded(usize),
    #[error("unexpected error: {0}")]
    Unexpected(#[from] anyhow::Error),
}

impl GatewayError {
    /// The stable error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::BadRequest(_) => ErrorCode::BadRequest,
            GatewayError::Unauthorized(_) => ErrorCode::Unauthorized,
            GatewayError::Forbidden(_) => ErrorCode::Forbidden,
            GatewayError::NotMember(_) => ErrorCode::NotMember,
            GatewayError::TextTooLarge { .. } => ErrorCode::TooLarge,
            GatewayError::IdConflict(_) => ErrorCode::IdConflict,
            GatewayError::Service(e) => e.code,
            GatewayError::Unavailable(_) | GatewayError::Overloaded(_) => ErrorCode::Unavailable,
            GatewayError::Unexpected(_) => ErrorCode::Internal,
        }
    }

    /// A backend (NATS, history, the stream) failed, not the request:
    /// worth a log line, and its details are not the client's business.
    pub fn is_backend_failure(&self) -> bool {
        match self {
            GatewayError::Unexpected(_) | GatewayError::Unavailable(_) => true,
            GatewayError::Service(e) => {
                matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal)
            }
            _ => false,
        }
    }

    /// The one mapping of a failure to what the client reads: human text
    /// for its own mistakes, a fixed sentence for backend failures (their
    /// details stay in the logs).
    pub fn client_message(&self) -> String {
        match self {
            GatewayError::Unexpected(_) => "internal error; retry".to_string(),
            GatewayError::Service(e) if e.code == ErrorCode::Internal => {
                "internal error; retry".to_string()
            }
            _ if self.is_backend_failure() => {
                "a backend is unavailable; retry (a send with the same id)".to_string()
            }
            other => other.to_string(),
        }
    }

    /// The error frame for this failure, answering request `id`.
    pub fn frame(&self, id: Option<String>) -> ServerFrame {
        ServerFrame::Error {
            id,
            code: self.code(),
            message: self.client_message(),
            room: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_human_text_without_rust_names_or_internals() {
        let cases = [
            GatewayError::Service(SvcError::new(ErrorCode::NotFound, "room r1 not found")),
            GatewayError::Service(SvcError::new(
                ErrorCode::NotMember,
                "u1 is not a member of r1",
            )),
            GatewayError::Unavailable("svc.history.page: no reply in time".into()),
            GatewayError::Service(SvcError::new(
                ErrorCode::Unavailable,
                "history store unavailable: disk I/O error",
            )),
            GatewayError::Unexpected(anyhow::anyhow!("NatsError::Timeout")),
        ];
        for e in cases {
            let m = e.client_message();
            for leak in [
                "NotFound",
                "NotMember",
                "svc.",
                "Error::",
                "disk",
                "Timeout",
            ] {
                assert!(!m.contains(leak), "{m:?} leaks {leak:?}");
            }
        }
        let e = GatewayError::Service(SvcError::new(ErrorCode::NotFound, "room r1 not found"));
        assert_eq!(e.client_message(), "room r1 not found");
    }
}
