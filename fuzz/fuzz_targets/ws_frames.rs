//! Arbitrary bytes from a client after the handshake, fed to the gateway's
//! frame decoder (`chat_gateway::frame::Decoder`, a small limit) in the
//! chunks a socket might deliver them in: it never panics, never yields a
//! message above the limit, holds no more than a frame and a message, and
//! every failure maps to a documented close code (1002, 1007, 1009).
#![no_main]

use chat_gateway::frame::{Decoded, Decoder, MAX_CLIENT_HEADER};
use libfuzzer_sys::fuzz_target;

/// The limit: small, so the fuzzer reaches it.
const MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, the rest is the stream.
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut d = Decoder::new(MAX);
    for part in bytes.chunks(chunk) {
        d.feed(part);
        loop {
            match d.take() {
                Ok(Some(Decoded::Text(t))) => assert!(t.len() <= MAX, "{} bytes", t.len()),
                Ok(Some(Decoded::Ping(p))) => assert!(p.len() <= 125),
                Ok(Some(Decoded::Binary | Decoded::Close(_))) => {}
                Ok(None) => break,
                Err(v) => {
                    assert!(matches!(v.code(), 1002 | 1007 | 1009), "{v:?}");
                    assert!(v.reason().len() < 120);
                    return;
                }
            }
        }
        assert!(
            d.held() <= 4 * (MAX + MAX_CLIENT_HEADER) + 2 * chunk,
            "holds {} bytes",
            d.held()
        );
    }
});
