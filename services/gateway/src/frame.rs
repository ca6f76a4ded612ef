//! WebSocket frames (RFC 6455 §5) as a server reads and writes them: a
//! client frame's header with every check the RFC asks of a server
//! (reserved bits and opcodes, masking, control frame rules, the size
//! limit before any payload is read), unmasking, close payloads, and the
//! headers of the server's own (unmasked) frames. No I/O: `ws` does that.

use chat_core::wire::close;

/// Longest client frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_CLIENT_HEADER: usize = 14;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// The opcode's value in a frame's first byte.
    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    /// Payload length (at most the limit it was parsed with).
    pub len: usize,
    /// Bytes the header itself takes.
    pub header_len: usize,
}

/// Why a client's framing ends its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Broken framing: close 1002.
    Protocol(&'static str),
    /// A frame or message over the limit: close 1009.
    TooBig { size: u64, max: usize },
    /// A text message or close reason that is not UTF-8: close 1007.
    Utf8,
}

impl Violation {
    /// The close code RFC 6455 §7.4.1 gives it.
    pub fn code(&self) -> u16 {
        match self {
            Violation::Protocol(_) => close::PROTOCOL_ERROR,
            Violation::TooBig { .. } => close::TOO_BIG,
            Violation::Utf8 => close::INVALID_PAYLOAD,
        }
    }

    /// The close frame's reason.
    pub fn reason(&self) -> String {
        match self {
            Violation::Protocol(why) => format!("protocol error: {why}"),
            Violation::TooBig { size, max } => {
                format!("frame too large: {size} bytes, at most {max}")
            }
            Violation::Utf8 => "text frame is not valid UTF-8".into(),
        }
    }
}

/// Parses the client frame header at the start of `buf`: `None` while more
/// bytes are needed. A payload longer than `max` is refused here, before
/// any of it is read.
pub fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, Violation> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let opcode = match b0 & 0x0F {
        0x0 => Opcode::Continuation,
        0x1 => Opcode::Text,
        0x2 => Opcode::Binary,
        0x8 => Opcode::Close,
        0x9 => Opcode::Ping,
        0xA => Opcode::Pong,
        _ => return Err(Violation::Protocol("reserved opcode")),
    };
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("unmasked frame from a client"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(Violation::Protocol("length with its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(Violation::Protocol("fragmented control frame"));
        }
        if len > 125 {
            return Err(Violation::Protocol("control frame longer than 125 bytes"));
        }
    }
    let len = match usize::try_from(len) {
        Ok(l) if l <= max => l,
        _ => return Err(Violation::TooBig { size: len, max }),
    };
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        len,
        header_len: at + 4,
    }))
}

/// Removes a client's mask (RFC 6455 §5.3).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The status code of a client's close frame (`None` when it has none),
/// refusing a one-byte payload, a code no endpoint may send, and a reason
/// that is not UTF-8.
pub fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(Violation::Protocol("close code not allowed on the wire"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::Utf8);
            }
            Ok(Some(code))
        }
    }
}

/// A complete client frame a session acts on (pongs are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    /// A close frame, with its status code if it has one.
    Close(Option<u16>),
}

/// Client bytes in, frames out: holds the bytes of a frame not yet
/// complete (empty and unallocated between frames) and a fragmented
/// message being put together, each bounded by the limit.
pub struct Decoder {
    buf: Vec<u8>,
    partial: Option<(Opcode, Vec<u8>)>,
    /// Largest frame and message payload.
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            partial: None,
            max,
        }
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the bytes so far hold one.
    pub fn take(&mut self) -> Result<Option<Decoded>, Violation> {
        loop {
            let Some(h) = parse_header(&self.buf, self.max)? else {
                return Ok(None);
            };
            let total = h.header_len + h.len;
            if self.buf.len() < total {
                // Room for exactly this frame, which is within the limit.
                self.buf.reserve_exact(total - self.buf.len());
                return Ok(None);
            }
            let mut payload = if self.buf.len() == total {
                // The usual case, one whole frame: its buffer becomes the
                // payload (no second allocation), and none is left held.
                let mut whole = std::mem::take(&mut self.buf);
                whole.drain(..h.header_len);
                whole
            } else {
                let p = self.buf[h.header_len..total].to_vec();
                self.buf.drain(..total);
                p
            };
            unmask(&mut payload, h.mask);
            let (opcode, message) = match h.opcode {
                Opcode::Ping => return Ok(Some(Decoded::Ping(payload))),
                Opcode::Pong => continue,
                Opcode::Close => return Ok(Some(Decoded::Close(close_code(&payload)?))),
                Opcode::Text | Opcode::Binary => {
                    if self.partial.is_some() {
                        return Err(Violation::Protocol("a new message inside a fragmented one"));
                    }
                    (h.opcode, payload)
                }
                Opcode::Continuation => {
                    let Some((opcode, mut message)) = self.partial.take() else {
                        return Err(Violation::Protocol("continuation without a start"));
                    };
                    let size = message.len() + payload.len();
                    if size > self.max {
                        return Err(Violation::TooBig {
                            size: size as u64,
                            max: self.max,
                        });
                    }
                    message.extend_from_slice(&payload);
                    (opcode, message)
                }
            };
            if !h.fin {
                self.partial = Some((opcode, message));
                continue;
            }
            return match opcode {
                Opcode::Text => String::from_utf8(message)
                    .map(|s| Some(Decoded::Text(s)))
                    .map_err(|_| Violation::Utf8),
                _ => Ok(Some(Decoded::Binary)),
            };
        }
    }

    /// Bytes held (an incomplete frame and a fragmented message).
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |(_, m)| m.capacity())
    }
}

/// The header of a server frame (final, unmasked) of `len` payload bytes,
/// and how many of the 10 bytes it uses.
pub fn server_header(opcode: Opcode, len: usize) -> ([u8; 10], u8) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode.bits();
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(l) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&l.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, len_bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        v.extend_from_slice(len_bytes);
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn headers_of_each_length_form_parse_and_need_all_their_bytes() {
        let short = masked(0x81, &[0x80 | 5]);
        assert_eq!(parse_header(&short[..5], 100), Ok(None));
        let h = parse_header(&short, 100).expect("ok").expect("whole");
        assert_eq!(
            (h.fin, h.opcode, h.len, h.header_len),
            (true, Opcode::Text, 5, 6)
        );
        assert_eq!(h.mask, [1, 2, 3, 4]);

        let mid = masked(0x01, &[0x80 | 126, 0x01, 0x00]);
        let h = parse_header(&mid, 1000).expect("ok").expect("whole");
        assert_eq!((h.fin, h.len, h.header_len), (false, 256, 8));
        assert_eq!(parse_header(&mid[..3], 1000), Ok(None));

        let long = masked(0x80, &[0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let h = parse_header(&long, 1 << 20).expect("ok").expect("whole");
        assert_eq!(
            (h.opcode, h.len, h.header_len),
            (Opcode::Continuation, 65536, 14)
        );
    }

    #[test]
    fn the_limit_is_enforced_from_the_header_alone() {
        // 1 MiB announced, only the first 4 bytes present: refused already.
        let big = [0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0];
        assert_eq!(
            parse_header(&big, 65536),
            Err(Violation::TooBig {
                size: 1 << 20,
                max: 65536
            })
        );
        let at_limit = masked(0x81, &[0x80 | 126, 0xFF, 0xFF]);
        assert!(matches!(parse_header(&at_limit, 65535), Ok(Some(_))));
        assert_eq!(Violation::TooBig { size: 2, max: 1 }.code(), 1009);
    }

    #[test]
    fn each_rfc_violation_is_refused_with_its_code() {
        let cases: [(&[u8], u16); 7] = [
            (&[0x81, 0x05], 1002),                                  // unmasked
            (&[0xC1, 0x85], 1002),                                  // RSV1
            (&[0x83, 0x85], 1002),                                  // reserved data opcode
            (&[0x8B, 0x80], 1002),                                  // reserved control opcode
            (&[0x09, 0x81], 1002),                                  // fragmented ping
            (&[0x89, 0x80 | 126, 0, 126], 1002),                    // control frame of 126
            (&[0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0], 1002), // top bit
        ];
        for (bytes, code) in cases {
            let v = parse_header(bytes, usize::MAX).expect_err("refused");
            assert_eq!(v.code(), code, "{bytes:?}: {v:?}");
        }
    }

    #[test]
    fn unmasking_twice_restores_the_payload() {
        let mut p = b"hello, world".to_vec();
        unmask(&mut p, [9, 8, 7, 6]);
        assert_ne!(p, b"hello, world");
        unmask(&mut p, [9, 8, 7, 6]);
        assert_eq!(p, b"hello, world");
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(close_code(&[]), Ok(None));
        assert_eq!(close_code(&[0x03]).map_err(|v| v.code()), Err(1002));
        assert_eq!(close_code(&1000u16.to_be_bytes()), Ok(Some(1000)));
        assert_eq!(close_code(&4001u16.to_be_bytes()), Ok(Some(4001)));
        for bad in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert_eq!(
                close_code(&bad.to_be_bytes()).map_err(|v| v.code()),
                Err(1002)
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff]);
        assert_eq!(close_code(&bad_reason), Err(Violation::Utf8));
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        assert_eq!(
            server_header(Opcode::Text, 5),
            ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        let (h, n) = server_header(Opcode::Text, 300);
        assert_eq!((&h[..n as usize], n), (&[0x81, 126, 0x01, 0x2C][..], 4));
        let (h, n) = server_header(Opcode::Close, 70_000);
        assert_eq!(&h[..n as usize], &[0x88, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7, 1, 9, 3];
        let (h, n) = server_header(Opcode::Text, payload.len());
        let mut v = h[..usize::from(n)].to_vec();
        v[0] = b0;
        v[1] |= 0x80;
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn the_decoder_joins_fragments_answers_pings_and_holds_nothing_between_frames() {
        let mut d = Decoder::new(100);
        let bytes = [
            client(0x01, b"{\"ty"),
            client(0x89, b"hi"),
            client(0x8A, b"ignored pong"),
            client(0x80, b"pe\":1}"),
            client(0x88, &1000u16.to_be_bytes()),
        ]
        .concat();
        // One byte at a time: every split point.
        let mut out = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b));
            while let Some(f) = d.take().expect("valid") {
                out.push(f);
            }
        }
        assert_eq!(
            out,
            vec![
                Decoded::Ping(b"hi".to_vec()),
                Decoded::Text("{\"type\":1}".into()),
                Decoded::Close(Some(1000)),
            ]
        );
        assert_eq!(d.held(), 0, "no buffer between frames");
    }

    #[test]
    fn a_message_over_the_limit_across_fragments_is_refused() {
        let mut d = Decoder::new(10);
        d.feed(&client(0x01, b"123456"));
        d.feed(&client(0x80, b"78901"));
        assert_eq!(d.take(), Err(Violation::TooBig { size: 11, max: 10 }));
        let mut d = Decoder::new(10);
        d.feed(&client(0x81, &[0xff, 0xfe]));
        assert_eq!(d.take(), Err(Violation::Utf8));
        let mut d = Decoder::new(10);
        d.feed(&client(0x82, b"\x01"));
        assert_eq!(d.take(), Ok(Some(Decoded::Binary)));
    }
}
