//! The auth service's one error type and its one mapping to HTTP responses:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_jwt::VerifyError;
use chat_store::StoreError;
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request itself is wrong (body, username).
    #[error("{0}")]
    BadRequest(String),
    /// The route is disabled or the thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A refresh token (or other grant) that is unknown, used, expired or
    /// of an ended session (OAuth2 `invalid_grant`).
    #[error("{0}")]
    InvalidGrant(String),
    /// An OpenID Connect sign-in was refused (bad state, token, claims).
    #[error("{0}")]
    SignIn(String),
    /// A dependency (the identity provider, a limit on work in progress)
    /// cannot serve now.
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests of one client or account.
    #[error("too many {what}; retry in {retry_after} s")]
    RateLimited { what: String, retry_after: u64 },
    /// Client credentials that are unknown, wrong or disabled (OAuth2
    /// `invalid_client`).
    #[error("{0}")]
    InvalidClient(String),
    /// A cookie-authenticated request without the CSRF header.
    #[error("{0}")]
    Csrf(String),
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The bearer token was checked and refused, or could not be checked.
    #[error(transparent)]
    Token(#[from] VerifyError),
    /// The user store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else: a bug or an unexpected failure.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<crate::oidc::OidcError> for AuthError {
    fn from(e: crate::oidc::OidcError) -> Self {
        match e {
            crate::oidc::OidcError::Unavailable(m) => Self::Unavailable(m),
            crate::oidc::OidcError::Refused(m) => Self::SignIn(m),
        }
    }
}

impl AuthError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            Self::Csrf(_) => (StatusCode::FORBIDDEN, "csrf"),
            Self::InvalidClient(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::SignIn(_) => (StatusCode::UNAUTHORIZED, "sign_in_failed"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Token(VerifyError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Token(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Store(StoreError::Backend(_)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Store(_) | Self::Unexpected(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // Internal details go to the log, not to the client.
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "the auth service could not complete the request".to_string()
        } else {
            self.to_string()
        };
        let body = Json(json!({ "error": { "code": code, "message": message } }));
        let mut response = (status, body).into_response();
        if let Self::RateLimited { retry_after, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
