//! Access tokens: EdDSA (Ed25519) JWTs that name their key with `kid`, the
//! JWKS that publishes the public keys, and a verifier that caches keys by
//! `kid` and re-fetches the JWKS (rate limited) when keys rotate.
//!
//! The auth service holds a [`KeyPair`] and issues tokens with a [`Signer`];
//! every other service checks them with a [`Verifier`] pointed at the auth
//! service's `/.well-known/jwks.json`.

mod key;
mod signer;
pub mod testing;
mod verifier;

pub use key::{Jwk, Jwks, KeyError, KeyPair};
pub use signer::{ACCESS_TOKEN_TYP, Grant, SignError, Signer};
pub use verifier::{Claims, DEFAULT_LEEWAY, DEFAULT_MIN_REFETCH_INTERVAL, Verifier, VerifyError};
