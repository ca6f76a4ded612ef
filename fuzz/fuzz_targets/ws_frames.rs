//! Arbitrary bytes from a client after the handshake, read by the WebSocket
//! parser with the gateway's settings: it never panics, never yields a
//! message above the frame limit, and every failure maps to a documented
//! close code (1002, 1007, 1009) or to a closed socket.
#![no_main]

use std::io::{Read, Write};
use std::sync::OnceLock;

use chat_gateway::session::{Incoming, violation};
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocket};

/// The client's bytes in; whatever the server writes is dropped.
struct Wire(std::io::Cursor<Vec<u8>>);

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn limits() -> &'static chat_gateway::Limits {
    static LIMITS: OnceLock<chat_gateway::Limits> = OnceLock::new();
    LIMITS.get_or_init(|| {
        // Small limits, so the fuzzer reaches them.
        let src = chat_platform::config::MapSource::new()
            .with("CHAT_GATEWAY_MAX_FRAME_BYTES", "1024")
            .with("CHAT_GATEWAY_MAX_TEXT_BYTES", "512")
            .with("CHAT_GATEWAY_READ_BUFFER_BYTES", "256");
        match chat_gateway::Config::from_source(&src) {
            Ok(c) => c.limits,
            Err(e) => panic!("fuzz config: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = limits();
    let config = chat_gateway::upgrade::ws_config(limits);
    let mut ws = WebSocket::from_raw_socket(
        Wire(std::io::Cursor::new(data.to_vec())),
        Role::Server,
        Some(config),
    );
    for _ in 0..1024 {
        match ws.read() {
            Ok(msg) => assert!(msg.len() <= limits.max_frame_bytes, "{} bytes", msg.len()),
            Err(e) => {
                if let Incoming::Violation { code, reason } = violation(e) {
                    assert!(matches!(code, 1002 | 1007 | 1009), "{code}: {reason}");
                    assert!(reason.len() < 1000);
                }
                return;
            }
        }
    }
});
