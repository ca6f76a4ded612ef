//! Service accounts: other services (bots, moderation, push) get scoped
//! access tokens with the OAuth2 client-credentials grant at
//! `POST /auth/token`. Accounts are made with `chat-auth service-account
//! create` (`cli.rs`); the secret is shown once and stored as a hash.
//!
//! Scopes: `rooms:post` (send), `rooms:read` (history), `rooms:join`
//! (join and leave), `rooms:create`, and one `room:<id>` per room the
//! account may act in. The gateway enforces them on every request.

use chat_core::RoomId;
use chat_jwt::Grant;
use chat_store::{Identity, ServiceAccount, ServiceAccountStore, UserStore};

use crate::error::AuthError;
use crate::routes::AppState;
use crate::sessions::{hash, random_token};

/// `iss` of the users that service accounts act as.
pub const SERVICE_ISSUER: &str = "service";
/// Most scopes one account may hold.
pub const MAX_SCOPES: usize = 1000;
/// The capabilities a scope may name (besides `room:<id>`).
pub const CAPABILITIES: [&str; 4] = ["rooms:post", "rooms:read", "rooms:join", "rooms:create"];

/// Checks a scope list: known capabilities and valid room ids only.
pub fn validate_scopes(scopes: &[String]) -> Result<(), String> {
    if scopes.is_empty() || scopes.len() > MAX_SCOPES {
        return Err(format!("give 1 to {MAX_SCOPES} scopes"));
    }
    for s in scopes {
        let ok = CAPABILITIES.contains(&s.as_str())
            || s.strip_prefix("room:")
                .is_some_and(|r| RoomId::parse(r).is_ok());
        if !ok {
            return Err(format!(
                "unknown scope {s:?}: use {} or room:<room id>",
                CAPABILITIES.join(", ")
            ));
        }
    }
    Ok(())
}

/// Creates an account acting as a new user named `name`; returns it and
/// its secret (shown once).
pub async fn create(
    accounts: &dyn ServiceAccountStore,
    users: &dyn UserStore,
    name: &str,
    scopes: Vec<String>,
) -> Result<(ServiceAccount, String), AuthError> {
    validate_scopes(&scopes).map_err(AuthError::BadRequest)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AuthError::BadRequest(
            "a name is 1 to 100 characters".into(),
        ));
    }
    let id = format!("sa_{}", &random_token()?[..22]);
    let secret = format!("css_{}", random_token()?);
    let user = users
        .upsert_user(&Identity {
            issuer: SERVICE_ISSUER.into(),
            subject: id.clone(),
            name: name.to_string(),
            email: None,
        })
        .await?;
    let account = ServiceAccount {
        id,
        user: user.id,
        name: name.to_string(),
        secret_hash: hash(&secret),
        scopes,
        created_at: chat_core::time::now_ms(),
        disabled: false,
    };
    accounts.create_service_account(&account).await?;
    tracing::info!(audit = "service_account_created", account = %account.id, scopes = ?account.scopes, "service account created");
    Ok((account, secret))
}

/// The client-credentials grant: a scoped access token for a valid id and
/// secret (no refresh token: ask again).
pub async fn token(
    st: &AppState,
    client_id: &str,
    client_secret: &str,
    requested: Option<&str>,
) -> Result<(String, u64, ServiceAccount), AuthError> {
    let invalid = || AuthError::InvalidClient("unknown client or wrong secret".into());
    if client_id.len() > 64 || client_secret.len() > 128 {
        return Err(invalid());
    }
    let account = st
        .service_accounts
        .get_service_account(client_id)
        .await?
        .ok_or_else(invalid)?;
    // Comparing hashes: equal prefixes of a SHA-256 tell nothing about the
    // secret, so a plain comparison leaks nothing useful.
    if account.disabled || account.secret_hash != hash(client_secret) {
        tracing::warn!(audit = "client_credentials_refused", account = %client_id, "bad service account credentials");
        return Err(invalid());
    }
    st.limits.check_account(&account.id)?;
    let mut account = account;
    if let Some(requested) = requested {
        let wanted: Vec<String> = requested.split_whitespace().map(str::to_string).collect();
        if let Some(extra) = wanted.iter().find(|s| !account.scopes.contains(s)) {
            return Err(AuthError::BadRequest(format!(
                "invalid_scope: {extra:?} is not one of this account's scopes"
            )));
        }
        account.scopes = wanted;
    }
    let grant = Grant {
        user: account.user.clone(),
        name: account.name.clone(),
        session: None,
        scopes: account.scopes.clone(),
    };
    let (access, _exp) = st
        .signer
        .issue_grant(&grant)
        .map_err(|e| AuthError::Unexpected(e.into()))?;
    metrics::counter!("chat_auth_logins_total", "method" => "client_credentials").increment(1);
    tracing::info!(audit = "client_credentials", account = %account.id, "service token issued");
    Ok((access, st.signer.ttl().as_secs(), account))
}
