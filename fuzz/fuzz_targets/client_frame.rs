//! Arbitrary text as a client frame: the decoder never panics, every
//! refusal has a documented code and a message, request ids it reports fit
//! their limit, and what it accepts survives a round trip.
#![no_main]

use chat_core::decode::{decode, decode_hello, request_id};
use chat_core::svc::ErrorCode;
use chat_core::wire::{ClientFrame, MAX_REQUEST_ID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(frame) => {
            let again = serde_json::to_string(&frame).map(|t| decode(&t));
            assert!(
                matches!(&again, Ok(Ok(f)) if *f == frame),
                "{text:?} → {frame:?} → {again:?}"
            );
        }
        Err(e) => {
            assert!(matches!(
                e.code,
                ErrorCode::Malformed | ErrorCode::UnknownType | ErrorCode::BadRequest
            ));
            assert!(!e.message.is_empty());
            assert!(e.id.is_none_or(|id| id.len() <= MAX_REQUEST_ID_LEN));
        }
    }
    match decode_hello(text) {
        Ok(h) => assert!(matches!(
            decode(text),
            Ok(ClientFrame::Hello { v, .. }) if v == h.v
        )),
        Err(e) => assert!(matches!(
            e.code,
            ErrorCode::Malformed | ErrorCode::NotAuthenticated
        )),
    }
    assert!(request_id(text).is_none_or(|id| id.len() <= MAX_REQUEST_ID_LEN));
});
