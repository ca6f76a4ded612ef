//! Issuing access tokens: EdDSA JWTs of type `at+jwt` (RFC 9068) whose
//! header names the signing key, for a user, optionally bound to a sign-in
//! session (`sid`) and limited to scopes (`scope`, service accounts).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::UserId;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::key::{Jwk, Jwks, KeyError, KeyPair};

/// The JOSE `typ` of our access tokens. ID tokens (`JWT`) and anything else
/// are refused by the verifier, so no other token passes as an access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

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
    /// The sign-in session (refresh family) the token was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Space-separated scopes (service accounts); absent for people, who
    /// act with a user's full rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Whom a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: UserId,
    pub name: String,
    /// The session id (`sid`), for revocation.
    pub session: Option<String>,
    /// Scopes; empty means a person's full rights.
    pub scopes: Vec<String>,
}

/// Issues access tokens for one issuer and audience with a fixed lifetime.
#[derive(Clone)]
pub struct Signer {
    key: KeyPair,
    encoding: EncodingKey,
    issuer: String,
    audience: String,
    ttl: Duration,
    /// Public keys published in the JWKS besides the signing key (the
    /// previous key after a rotation, or the next one before it).
    published: Vec<Jwk>,
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
            published: Vec::new(),
        })
    }

    /// Also publishes `keys` in the JWKS, so tokens they signed keep
    /// verifying (key rotation, `docs/services/auth.md`).
    pub fn with_published_keys(mut self, keys: Vec<Jwk>) -> Self {
        self.published = keys;
        self
    }

    /// The JWKS verifiers need: the signing key first, then the published
    /// ones (a key never appears twice).
    pub fn jwks(&self) -> Jwks {
        let mut keys = vec![self.key.jwk()];
        for k in &self.published {
            if !keys.iter().any(|have| have.kid == k.kid) {
                keys.push(k.clone());
            }
        }
        Jwks { keys }
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

    /// A token for `user` without a session; returns it with its expiry
    /// (Unix seconds, the token's `exp`).
    pub fn issue(&self, user: &UserId, name: &str) -> Result<(String, u64), SignError> {
        self.issue_grant(&Grant {
            user: user.clone(),
            name: name.to_string(),
            session: None,
            scopes: Vec::new(),
        })
    }

    /// A token for `grant`, with its expiry (Unix seconds).
    pub fn issue_grant(&self, grant: &Grant) -> Result<(String, u64), SignError> {
        let exp = unix_now().saturating_add(self.ttl.as_secs());
        let token = self.issue_grant_with_exp(grant, exp)?;
        Ok((token, exp))
    }

    /// A session-less token with a chosen `exp` (Unix seconds). For tests
    /// (e.g. expired tokens); services call [`Signer::issue_grant`].
    pub fn issue_with_exp(&self, user: &UserId, name: &str, exp: u64) -> Result<String, SignError> {
        let grant = Grant {
            user: user.clone(),
            name: name.to_string(),
            session: None,
            scopes: Vec::new(),
        };
        self.issue_grant_with_exp(&grant, exp)
    }

    /// A token for `grant` with a chosen `exp` (Unix seconds).
    pub fn issue_grant_with_exp(&self, grant: &Grant, exp: u64) -> Result<String, SignError> {
        let claims = TokenClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: grant.user.to_string(),
            name: grant.name.clone(),
            iat: unix_now(),
            exp,
            sid: grant.session.clone(),
            scope: (!grant.scopes.is_empty()).then(|| grant.scopes.join(" ")),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_string());
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
