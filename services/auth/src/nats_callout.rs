//! The NATS auth callout (ADR 0006): nats-server asks auth, on
//! `$SYS.REQ.USER.AUTH`, about every connection that is not one of our
//! service users. A service account connects with its access token as the
//! NATS token and gets a NATS user that may **read** the events of the
//! rooms its token grants (`rooms:read` plus `room:<id>` → subscribe
//! `chat.room.<id>.>`), publish nothing (room messages need the sequence
//! headers only the gateway sets), and expires with the token. Anything
//! else is refused.
//!
//! Requests and answers are NATS JWTs (`alg: ed25519-nkey`): the request
//! is checked against the server's key that signed it; answers are signed
//! with the account nkey the server config names as the callout `issuer`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_jwt::Verifier;
use serde_json::{Value, json};

/// The callout: the signing key and the verifier of our own tokens.
pub struct Callout {
    key: nkeys::KeyPair,
    verifier: Verifier,
}

impl Callout {
    /// A callout signing with the account `seed`; `None` if it is not one.
    pub fn new(seed: &str, verifier: Verifier) -> Result<Self, String> {
        let key = nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|e| format!("CHAT_AUTH_NATS_CALLOUT_SEED is not an nkey seed: {e}"))?;
        if !key.public_key().starts_with('A') {
            return Err("CHAT_AUTH_NATS_CALLOUT_SEED must be an account seed (SA…)".into());
        }
        Ok(Self { key, verifier })
    }

    /// Answers every authorization request until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        nats: async_nats::Client,
        shutdown: chat_platform::Shutdown,
    ) -> anyhow::Result<()> {
        let sub = nats
            .queue_subscribe(
                chat_platform::nats_security::CALLOUT_SUBJECT,
                chat_core::names::queue::AUTH.to_string(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("subscribe to the auth callout: {e}"))?;
        chat_platform::nats::serve_until_drained(sub, &shutdown, "auth callout", |msg| {
            let (this, nats) = (self.clone(), nats.clone());
            async move {
                let Some(reply) = msg.reply else { return };
                let answer = this.answer(&msg.payload).await;
                if let Err(e) = nats.publish(reply, answer.into()).await {
                    tracing::warn!(error = %e, "auth callout answer not sent");
                }
            }
        })
        .await;
        Ok(())
    }

    /// The signed answer to one request (an empty answer if the request is
    /// not a valid server request: the server then refuses the client).
    async fn answer(&self, request: &[u8]) -> String {
        let Some(req) = std::str::from_utf8(request)
            .ok()
            .and_then(|r| verified_claims(r).ok())
        else {
            tracing::warn!("auth callout: unreadable or unsigned request");
            return String::new();
        };
        let nats = &req["nats"];
        let user_nkey = nats["user_nkey"].as_str().unwrap_or_default();
        let server = nats["server_id"]["id"].as_str().unwrap_or_default();
        let token = nats["connect_opts"]["auth_token"]
            .as_str()
            .unwrap_or_default();
        let outcome = match self.user_jwt(user_nkey, token).await {
            Ok(jwt) => {
                metrics::counter!("chat_auth_nats_callouts_total", "result" => "allowed")
                    .increment(1);
                json!({ "jwt": jwt })
            }
            Err(reason) => {
                metrics::counter!("chat_auth_nats_callouts_total", "result" => "refused")
                    .increment(1);
                tracing::info!(audit = "nats_refused", %reason, "NATS connection refused");
                json!({ "error": reason })
            }
        };
        let mut body = outcome;
        body["type"] = json!("authorization_response");
        body["version"] = json!(2);
        let claims = json!({
            "jti": jti(),
            "iat": now(),
            "iss": self.key.public_key(),
            "aud": server,
            "sub": user_nkey,
            "nats": body,
        });
        encode(&claims, &self.key).unwrap_or_default()
    }

    /// The NATS user for a service account's token, or why not.
    async fn user_jwt(&self, user_nkey: &str, token: &str) -> Result<String, String> {
        if !user_nkey.starts_with('U') {
            return Err("no user nkey in the request".into());
        }
        if token.is_empty() {
            return Err("connect with a service account's access token as the NATS token".into());
        }
        let claims = self
            .verifier
            .verify(token)
            .await
            .map_err(|e| format!("invalid token: {e}"))?;
        if claims.scopes.is_empty() {
            return Err("only service accounts connect to NATS".into());
        }
        let subjects: Vec<String> = if claims.scopes.iter().any(|s| s == "rooms:read") {
            claims
                .scopes
                .iter()
                .filter_map(|s| s.strip_prefix("room:"))
                .map(|room| format!("{}.{room}.>", chat_core::names::ROOM_SUBJECT_PREFIX))
                .collect()
        } else {
            Vec::new()
        };
        if subjects.is_empty() {
            return Err("the token grants no room to read (rooms:read and room:<id>)".into());
        }
        tracing::info!(audit = "nats_allowed", user = %claims.user, rooms = subjects.len(), "service account on NATS");
        let user = json!({
            "jti": jti(),
            "iat": now(),
            "exp": claims.exp,
            "iss": self.key.public_key(),
            "aud": "$G",
            "name": claims.name,
            "sub": user_nkey,
            "nats": {
                "pub": { "deny": [">"] },
                "sub": { "allow": subjects },
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            },
        });
        encode(&user, &self.key)
    }
}

/// The claims of a NATS JWT whose signature checks out against its own
/// `iss` (a server key, for requests).
fn verified_claims(jwt: &str) -> Result<Value, String> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let claims: Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("payload")?;
    let iss = claims["iss"].as_str().ok_or("no iss")?;
    if !iss.starts_with('N') {
        return Err("not signed by a server".into());
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "signature")?;
    nkeys::KeyPair::from_public_key(iss)
        .and_then(|k| k.verify(format!("{h}.{p}").as_bytes(), &sig))
        .map_err(|e| format!("bad signature: {e}"))?;
    Ok(claims)
}

/// A NATS JWT of `claims`, signed with `key`.
fn encode(claims: &Value, key: &nkeys::KeyPair) -> Result<String, String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let sig = key.sign(input.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

fn now() -> u64 {
    chat_core::time::now_ms() / 1000
}

fn jti() -> String {
    crate::sessions::random_token().unwrap_or_default()
}
