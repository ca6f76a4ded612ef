//! OpenID Connect sign-in (Google by default, any issuer by
//! configuration): discovery, the authorization request (code flow with
//! PKCE S256, `state`, `nonce`), the code exchange, and full ID-token
//! validation. The browser endpoints are in `routes.rs`.
//!
//! ID tokens are checked by `openidconnect`: signature with the issuer's
//! JWKS (RS256 only), `iss`, `aud` (no other audience), `exp` and `iat`
//! within the leeway, `nonce`. On top: `azp` must be us when present,
//! `email_verified` must be true, and `hd` must be allowed when an
//! allow-list is set. The JWKS is cached; a token naming an unknown `kid`
//! re-fetches it, at most once per [`JWKS_REFETCH_INTERVAL`]; a JWKS that
//! cannot be fetched fails the sign-in (closed).

pub mod routes;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_platform::Secret;
use chat_store::Identity;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    JsonWebKeySet, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, SignatureVerificationError, TokenResponse as _,
};
use tokio::sync::Mutex;

/// Least time between two JWKS fetches caused by unknown `kid`s.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How OIDC sign-in is configured (`CHAT_AUTH_OIDC_*`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// `CHAT_AUTH_OIDC_ISSUER`, e.g. `https://accounts.google.com`.
    pub issuer: String,
    /// `CHAT_AUTH_OIDC_CLIENT_ID`.
    pub client_id: String,
    /// `CHAT_AUTH_OIDC_CLIENT_SECRET_FILE` or `CHAT_AUTH_OIDC_CLIENT_SECRET`.
    pub client_secret: Secret,
    /// `CHAT_AUTH_OIDC_REDIRECT_URI`: registered with the provider exactly,
    /// ending in `/auth/callback`.
    pub redirect_uri: String,
    /// `CHAT_AUTH_OIDC_SCOPES` (`openid` is always asked).
    pub scopes: Vec<String>,
    /// `CHAT_AUTH_OIDC_ALLOWED_DOMAINS`: accepted `hd` values; empty = any
    /// account.
    pub allowed_domains: Vec<String>,
    /// `CHAT_AUTH_OIDC_LEEWAY_MS`: clock skew allowed on `exp` and `iat`.
    pub leeway: Duration,
    /// `CHAT_AUTH_OIDC_HTTP_TIMEOUT_MS`: each call to the provider.
    pub http_timeout: Duration,
    /// `CHAT_AUTH_AFTER_LOGIN_URL`: where the callback sends the browser.
    pub after_login_url: String,
}

/// Why a sign-in failed. `Unavailable` is the provider's fault (503);
/// everything else refuses this sign-in (401).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    #[error("sign-in refused: {0}")]
    Refused(String),
}

/// The provider as discovered, with its cached keys.
pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    metadata: Mutex<Option<CoreProviderMetadata>>,
    last_jwks_fetch: Mutex<Option<Instant>>,
}

/// What `begin` hands back: where to send the browser, and what the
/// callback needs (stored server side, keyed by `state`).
pub struct Begun {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl Oidc {
    pub fn new(cfg: OidcConfig) -> Result<Self, OidcError> {
        // Never follows redirects (SSRF; a token endpoint answer is final).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.http_timeout)
            .timeout(cfg.http_timeout)
            .build()
            .map_err(|e| OidcError::Unavailable(format!("http client: {e}")))?;
        Ok(Self {
            cfg,
            http,
            metadata: Mutex::new(None),
            last_jwks_fetch: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// The discovered metadata (with keys), fetched on first use.
    async fn metadata(&self) -> Result<CoreProviderMetadata, OidcError> {
        let mut held = self.metadata.lock().await;
        if let Some(m) = held.as_ref() {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| OidcError::Unavailable(format!("issuer URL: {e}")))?;
        let m = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery: {}", chain(&e))))?;
        *self.last_jwks_fetch.lock().await = Some(Instant::now());
        *held = Some(m.clone());
        Ok(m)
    }

    /// Re-fetches the JWKS for an unknown `kid` (rate limited); true when
    /// new keys were loaded.
    async fn refresh_keys(&self) -> Result<bool, OidcError> {
        let mut last = self.last_jwks_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let mut held = self.metadata.lock().await;
        let Some(m) = held.as_mut() else {
            return Ok(false);
        };
        let jwks = JsonWebKeySet::fetch_async(m.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("JWKS: {}", chain(&e))))?;
        *m = m.clone().set_jwks(jwks);
        Ok(true)
    }

    fn client(&self, m: CoreProviderMetadata) -> Result<ClientOf, OidcError> {
        let redirect = RedirectUrl::new(self.cfg.redirect_uri.clone())
            .map_err(|e| OidcError::Unavailable(format!("redirect URI: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            m,
            ClientId::new(self.cfg.client_id.clone()),
            Some(ClientSecret::new(
                self.cfg.client_secret.expose().to_string(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the provider URL with fresh `state`, `nonce` and
    /// PKCE challenge.
    pub async fn begin(&self) -> Result<Begun, OidcError> {
        let client = self.client(self.metadata().await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        Ok(Begun {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in: exchanges `code` (with the PKCE verifier) and
    /// validates the ID token against `nonce`.
    pub async fn finish(
        &self,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<Identity, OidcError> {
        let client = self.client(self.metadata().await?)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Refused(format!("code exchange failed: {}", chain(&e))))?;
        let _ = response.access_token();
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::Refused("the provider sent no ID token".into()))?
            .clone();
        let nonce = Nonce::new(nonce.to_string());
        let mut retried = false;
        loop {
            let client = self.client(self.metadata().await?)?;
            let verifier = self.verifier(&client);
            match id_token.claims(&verifier, &nonce) {
                Ok(claims) => {
                    let raw = id_token.to_string();
                    return self.identity(claims, &raw);
                }
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !retried => {
                    retried = true;
                    if !self.refresh_keys().await? {
                        return Err(OidcError::Refused(
                            "ID token signed with an unknown key".into(),
                        ));
                    }
                }
                Err(e) => return Err(OidcError::Refused(format!("ID token: {e}"))),
            }
        }
    }

    fn verifier<'a>(&self, client: &'a ClientOf) -> openidconnect::core::CoreIdTokenVerifier<'a> {
        let leeway = chrono::Duration::from_std(self.cfg.leeway).unwrap_or_default();
        client
            .id_token_verifier()
            .set_allowed_algs([CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256])
            // `exp` may be up to the leeway in the past.
            .set_time_fn(move || chrono::Utc::now() - leeway)
            // `iat` may not be further in the future than the leeway.
            .set_issue_time_verifier_fn(move |iat| {
                if iat > chrono::Utc::now() + leeway {
                    Err(format!("issued in the future ({iat})"))
                } else {
                    Ok(())
                }
            })
    }

    /// The identity of verified `claims`, after our own rules.
    fn identity(
        &self,
        claims: &openidconnect::core::CoreIdTokenClaims,
        raw: &str,
    ) -> Result<Identity, OidcError> {
        let extra = payload(raw);
        let refuse = |m: &str| Err(OidcError::Refused(m.to_string()));
        if let Some(azp) = extra.get("azp").and_then(|v| v.as_str())
            && azp != self.cfg.client_id
        {
            return refuse("the ID token's authorized party (azp) is another client");
        }
        if claims.email_verified() != Some(true) {
            return refuse("the account's email address is not verified");
        }
        if !self.cfg.allowed_domains.is_empty() {
            let hd = extra.get("hd").and_then(|v| v.as_str()).unwrap_or_default();
            if !self.cfg.allowed_domains.iter().any(|d| d == hd) {
                return refuse("the account's domain (hd) is not allowed here");
            }
        }
        let email = claims.email().map(|e| e.to_string());
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string())
            .or_else(|| email.clone())
            .unwrap_or_else(|| claims.subject().to_string());
        Ok(Identity {
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            name: name.chars().take(100).collect(),
            email,
        })
    }
}

/// The client type `from_provider_metadata` + a redirect URI gives.
type ClientOf = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The (already verified) token's payload as JSON, for claims the core
/// types do not carry (`hd`, `azp`).
fn payload(raw: &str) -> serde_json::Map<String, serde_json::Value> {
    raw.split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// An error with its causes, for logs and refusals.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
