//! Arbitrary text as an access token: the verifier never panics and never
//! accepts it (only a token signed with the published key verifies).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use chat_jwt::{KeyPair, Verifier};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let key = match KeyPair::generate() {
            Ok(k) => k,
            Err(e) => panic!("key: {e}"),
        };
        Verifier::with_jwks(&key.jwks(), "urn:chat:auth", "chat", Duration::from_secs(5))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verified = futures::executor::block_on(verifier().verify(token));
    assert!(verified.is_err(), "a forged token verified: {token:?}");
});
