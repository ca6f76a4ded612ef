//! The Ed25519 signing key: generation, PKCS#8 PEM storage, its `kid`, and
//! its public half as a JWK / JWKS document.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, OctetKeyPairParameters, OctetKeyPairType,
    ThumbprintHash,
};
use serde::{Deserialize, Serialize};

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness available to generate a key: {0}")]
    Random(String),
    #[error("not a PKCS#8 PEM Ed25519 private key: {0}")]
    Pem(String),
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// An Ed25519 key pair that signs access tokens.
///
/// The `kid` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the
/// public key: derived, never stored, so the same key file always yields the
/// same `kid` and two different keys never share one by accident.
#[derive(Clone)]
pub struct KeyPair {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for KeyPair {
    /// Prints the `kid` only: the private half must never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).finish()
    }
}

impl KeyPair {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_signing_key(SigningKey::from_bytes(&seed)))
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as written by
    /// [`KeyPair::to_pkcs8_pem`] or `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self::from_signing_key)
            .map_err(|e| KeyError::Pem(e.to_string()))
    }

    /// The private key as PKCS#8 PEM, for the key file: version 1 (RFC
    /// 5208, the private key alone), which `openssl pkey`, Python's
    /// `cryptography` and the other usual tools read. (Version 2 with the
    /// public key embedded, `ed25519-dalek`'s default, is not read by
    /// OpenSSL 3; files in that form are still read here.)
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The key id put in token headers and in the JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (OKP, Ed25519, alg EdDSA, use sig).
    pub fn jwk(&self) -> Jwk {
        Jwk::ed25519(self.kid.clone(), self.public_x())
    }

    /// A JWKS holding only this key.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![self.jwk()],
        }
    }

    /// PKCS#8 DER of the private key, as `jsonwebtoken` wants it.
    pub(crate) fn pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        self.key
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    fn public_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        Self {
            kid: thumbprint(&x),
            key,
        }
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key given as base64url `x`.
fn thumbprint(x: &str) -> String {
    let jwk = jsonwebtoken::jwk::Jwk {
        common: CommonParameters::default(),
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: x.to_string(),
        }),
    };
    jwk.thumbprint(ThumbprintHash::SHA256)
}

/// One public key in a JWKS (RFC 7517 / RFC 8037 OKP form).
///
/// Fields are optional on input so a JWKS that also lists other kinds of
/// keys still parses; the verifier skips every key that is not an Ed25519
/// signing key with a `kid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Jwk {
    /// An Ed25519 signing key with id `kid` and base64url public key `x`.
    pub fn ed25519(kid: String, x: String) -> Self {
        Self {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(x),
            kid: Some(kid),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
        }
    }
}

/// A JWK Set: what `/.well-known/jwks.json` serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The published keys; a verifier ignores entries it cannot use.
    pub keys: Vec<Jwk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_a_pem_round_trip_with_the_same_kid() {
        let key = KeyPair::generate().expect("generate");
        let pem = key.to_pkcs8_pem().expect("pem");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = KeyPair::from_pkcs8_pem(&pem).expect("parse");
        assert_eq!(back.kid(), key.kid());
        assert_eq!(back.jwk(), key.jwk());
    }

    #[test]
    fn a_version_2_key_file_written_by_earlier_releases_still_loads() {
        let key = KeyPair::generate().expect("generate");
        // ed25519-dalek's own encoding embeds the public key (PKCS#8 v2).
        let v2 = key.key.to_pkcs8_pem(LineEnding::LF).expect("v2 pem");
        let back = KeyPair::from_pkcs8_pem(&v2).expect("v2 still reads");
        assert_eq!(back.kid(), key.kid());
        let v1 = key.to_pkcs8_pem().expect("v1 pem");
        assert_ne!(v1.as_str(), v2.as_str(), "new files are written as v1");
    }

    #[test]
    fn different_keys_have_different_kids() {
        let a = KeyPair::generate().expect("generate");
        let b = KeyPair::generate().expect("generate");
        assert_ne!(a.kid(), b.kid());
    }

    #[test]
    fn the_jwk_is_an_ed25519_signing_key() {
        let key = KeyPair::generate().expect("generate");
        let json = serde_json::to_value(key.jwks()).expect("json");
        let k = &json["keys"][0];
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["kid"], key.kid());
        assert_eq!(k["x"].as_str().map(str::len), Some(43));
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(matches!(
            KeyPair::from_pkcs8_pem("hello"),
            Err(KeyError::Pem(_))
        ));
    }

    #[test]
    fn debug_output_does_not_show_the_private_key() {
        let key = KeyPair::generate().expect("generate");
        let pem = key.to_pkcs8_pem().expect("pem");
        let body: String = pem.lines().nth(1).unwrap_or_default().to_string();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()));
        assert!(!shown.contains(&body));
    }
}
