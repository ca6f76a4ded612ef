//! Helpers for tests only: hand-crafted hostile tokens that a verifier must
//! reject. Services never call these.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_core::UserId;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::key::KeyPair;
use crate::signer::unix_now;

/// For tests: the claims a [`crate::Signer`] would put in a token.
pub fn claims(issuer: &str, audience: &str, user: &UserId, name: &str, exp: u64) -> Value {
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": user.as_str(),
        "name": name,
        "iat": unix_now(),
        "exp": exp,
    })
}

/// For tests: an unsigned `alg: none` token naming key `kid`.
pub fn alg_none_token(kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "at+jwt", "kid": kid });
    format!("{}.{}.", encode_part(&header), encode_part(claims))
}

/// For tests: an HS256 token with `secret` as the HMAC key, naming `kid`
/// (the classic attack uses the public key bytes as the secret).
pub fn hs256_token(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some(crate::ACCESS_TOKEN_TYP.to_string());
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

/// For tests: an EdDSA token signed by a freshly generated foreign key whose
/// header claims to be key `kid`.
pub fn foreign_key_token(kid: &str, claims: &Value) -> String {
    let Ok(foreign) = KeyPair::generate() else {
        return String::new();
    };
    let Ok(der) = foreign.pkcs8_der() else {
        return String::new();
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(crate::ACCESS_TOKEN_TYP.to_string());
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der)).unwrap_or_default()
}

fn encode_part(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// For tests: a token signed by `key` exactly like an access token, but
/// with JOSE `typ` `typ` (e.g. `JWT`, what ID tokens carry).
pub fn typed_token(key: &KeyPair, typ: &str, claims: &Value) -> String {
    let Ok(der) = key.pkcs8_der() else {
        return String::new();
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(typ.to_string());
    header.kid = Some(key.kid().to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der)).unwrap_or_default()
}
