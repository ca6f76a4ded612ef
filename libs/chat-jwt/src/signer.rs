//! Issuing access tokens: EdDSA JWTs whose header names the signing key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::UserId;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::key::{KeyError, KeyPair};

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// The claims as they travel inside a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub name: String,
    pub iat: u64,
    pub exp: u64,
}

/// Issues access tokens for one issuer and audience with a fixed lifetime.
#[derive(Clone)]
pub struct Signer {
    key: KeyPair,
    encoding: EncodingKey,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.key.kid())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Signer {
    /// A signer whose tokens live `ttl` (rounded down to whole seconds, as
    /// JWT times are seconds).
    pub fn new(
        key: KeyPair,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, SignError> {
        let encoding = EncodingKey::from_ed_der(&key.pkcs8_der()?);
        Ok(Self {
            key,
            encoding,
            issuer: issuer.into(),
            audience: audience.into(),
            ttl,
        })
    }

    /// The key this signer uses (its JWKS is what verifiers need).
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of issued tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// How long issued tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `user`; returns it with its expiry (Unix seconds, the
    /// token's `exp`).
    pub fn issue(&self, user: &UserId, name: &str) -> Result<(String, u64), SignError> {
        let exp = unix_now().saturating_add(self.ttl.as_secs());
        let token = self.issue_with_exp(user, name, exp)?;
        Ok((token, exp))
    }

    /// A token with a chosen `exp` (Unix seconds). For tests (e.g. expired
    /// tokens); services call [`Signer::issue`].
    pub fn issue_with_exp(&self, user: &UserId, name: &str, exp: u64) -> Result<String, SignError> {
        let claims = TokenClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.to_string(),
            name: name.to_string(),
            iat: unix_now(),
            exp,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_string());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| SignError::Sign(e.to_string()))
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
