//! Verifying access tokens against a JWKS: EdDSA only, issuer, audience and
//! expiry checked, keys cached by `kid`, with a rate-limited re-fetch when a
//! token names a key the cache does not know (key rotation).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_core::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::key::{Jwk, Jwks};
use crate::signer::{ACCESS_TOKEN_TYP, TokenClaims};

/// Clock skew tolerated on `exp` unless the caller chooses otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// Least time between two JWKS fetches triggered by unknown `kid`s, so
/// tokens with garbage `kid`s cannot make verifiers hammer the auth service.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a JWKS fetch may take before the token is reported unverifiable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `sub` claim.
    pub user: UserId,
    /// The display name at the time the token was issued.
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// The sign-in session (`sid`), when the token was issued for one.
    pub session: Option<String>,
    /// Scopes (service accounts); empty for people.
    pub scopes: Vec<String>,
}

/// Why a token was not accepted. Every variant but `Unavailable` means the
/// token is bad (HTTP 401); `Unavailable` means it could not be checked
/// right now (HTTP 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not allowed (only EdDSA)")]
    AlgorithmNotAllowed(String),
    #[error("not an access token (typ {0:?}, expected \"at+jwt\")")]
    NotAnAccessToken(String),
    #[error("token signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token from the wrong issuer")]
    WrongIssuer,
    #[error("token for the wrong audience")]
    WrongAudience,
    #[error("signing keys unavailable: {0}")]
    Unavailable(String),
}

/// Checks access tokens. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Verifier {
    remote: Option<Remote>,
    validation: Validation,
    min_refetch_interval: Duration,
    cache: Arc<Cache>,
}

#[derive(Clone)]
struct Remote {
    url: String,
    http: reqwest::Client,
}

#[derive(Default)]
struct Cache {
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Held while fetching, so concurrent misses cause one fetch.
    last_fetch: tokio::sync::Mutex<Option<LastFetch>>,
}

struct LastFetch {
    at: Instant,
    /// The failure, if the fetch failed: repeated while rate limited.
    failure: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("jwks_url", &self.remote.as_ref().map(|r| r.url.as_str()))
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish()
    }
}

impl Verifier {
    /// A verifier that fetches keys from the JWKS at `url` (plain HTTP is
    /// fine inside the cluster). Nothing is fetched until the first token.
    pub fn remote(
        url: impl Into<String>,
        issuer: &str,
        audience: &str,
        leeway: Duration,
    ) -> Result<Self, VerifyError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| VerifyError::Unavailable(format!("http client: {e}")))?;
        let mut v = Self::new(issuer, audience, leeway);
        v.remote = Some(Remote {
            url: url.into(),
            http,
        });
        Ok(v)
    }

    /// A verifier with a fixed key set (the auth service checking its own
    /// tokens, and tests). Keys that are not Ed25519 signing keys are skipped.
    pub fn with_jwks(jwks: &Jwks, issuer: &str, audience: &str, leeway: Duration) -> Self {
        let v = Self::new(issuer, audience, leeway);
        v.replace_keys(decoding_keys(jwks.keys.iter().cloned()));
        v
    }

    /// Changes the least time between re-fetches on unknown `kid`s
    /// (default [`DEFAULT_MIN_REFETCH_INTERVAL`]).
    pub fn with_min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    fn new(issuer: &str, audience: &str, leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = leeway.as_secs();
        Self {
            remote: None,
            validation,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            cache: Arc::default(),
        }
    }

    /// Checks `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = parse_header(token)?;
        if header.alg != "EdDSA" {
            return Err(VerifyError::AlgorithmNotAllowed(header.alg));
        }
        let typ = header.typ.unwrap_or_default();
        let typ_ok = typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
            || typ.eq_ignore_ascii_case("application/at+jwt");
        if !typ_ok {
            return Err(VerifyError::NotAnAccessToken(typ));
        }
        let kid = header
            .kid
            .ok_or_else(|| VerifyError::Malformed("no kid in header".into()))?;
        let key = match self.cached(&kid) {
            Some(key) => key,
            None => self.refetch_for(&kid).await?,
        };
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &self.validation)
            .map_err(map_decode_error)?;
        let user = UserId::parse(data.claims.sub)
            .map_err(|e| VerifyError::Malformed(format!("sub: {e}")))?;
        Ok(Claims {
            user,
            name: data.claims.name,
            exp: data.claims.exp,
            session: data.claims.sid,
            scopes: data
                .claims
                .scope
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self
            .cache
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        keys.get(kid).cloned()
    }

    fn replace_keys(&self, fresh: HashMap<String, DecodingKey>) {
        let mut keys = self
            .cache
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *keys = fresh;
    }

    /// Fetches the JWKS again for an unknown `kid`, at most once per
    /// `min_refetch_interval`. The fetched set replaces the cache, so a key
    /// removed from the JWKS stops being accepted.
    async fn refetch_for(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        let unknown = || VerifyError::UnknownKey(kid.to_string());
        let Some(remote) = &self.remote else {
            return Err(unknown());
        };
        let mut last = self.cache.last_fetch.lock().await;
        // Another task may have fetched while this one waited for the lock.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        if let Some(prev) = last.as_ref()
            && prev.at.elapsed() < self.min_refetch_interval
        {
            return Err(match &prev.failure {
                Some(reason) => VerifyError::Unavailable(reason.clone()),
                None => unknown(),
            });
        }
        tracing::debug!(url = %remote.url, kid, "fetching JWKS");
        let fetched = fetch(remote).await;
        *last = Some(LastFetch {
            at: Instant::now(),
            failure: fetched.as_ref().err().cloned(),
        });
        match fetched {
            Ok(keys) => {
                self.replace_keys(keys);
                self.cached(kid).ok_or_else(unknown)
            }
            Err(reason) => {
                tracing::warn!(url = %remote.url, %reason, "JWKS fetch failed");
                Err(VerifyError::Unavailable(reason))
            }
        }
    }
}

/// The JOSE header fields the verifier decides on before touching keys.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Reads the header without trusting it; parsed here rather than by
/// `jsonwebtoken` so `alg: none` and unknown algorithms get their own error.
fn parse_header(token: &str) -> Result<RawHeader, VerifyError> {
    let malformed = |m: &str| VerifyError::Malformed(m.to_string());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JOSE header"))
}

fn map_decode_error(e: jsonwebtoken::errors::Error) -> VerifyError {
    match e.kind() {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
        ErrorKind::InvalidAudience => VerifyError::WrongAudience,
        ErrorKind::InvalidAlgorithm => VerifyError::AlgorithmNotAllowed(e.to_string()),
        _ => VerifyError::Malformed(e.to_string()),
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

async fn fetch(remote: &Remote) -> Result<HashMap<String, DecodingKey>, String> {
    let response = remote
        .http
        .get(&remote.url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {}: {e}", remote.url))?;
    let raw: RawJwks = response
        .json()
        .await
        .map_err(|e| format!("JWKS from {} is not JSON: {e}", remote.url))?;
    let jwks = raw
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok());
    Ok(decoding_keys(jwks))
}

/// The Ed25519 signing keys of a JWKS by `kid`; other entries are skipped.
fn decoding_keys(jwks: impl Iterator<Item = Jwk>) -> HashMap<String, DecodingKey> {
    jwks.filter_map(|jwk| {
        let usable = jwk.kty == "OKP"
            && jwk.crv.as_deref() == Some("Ed25519")
            && jwk.alg.as_deref().is_none_or(|a| a == "EdDSA")
            && jwk.use_.as_deref().is_none_or(|u| u == "sig");
        if !usable {
            return None;
        }
        let (kid, x) = (jwk.kid?, jwk.x?);
        // Checked here: a short `x` would make jsonwebtoken panic later.
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(&x).ok()?.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
        Some((kid, DecodingKey::from_ed_der(&bytes)))
    })
    .collect()
}
