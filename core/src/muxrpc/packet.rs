//! packet-stream's framing, as muxrpc 8 and packet-stream-codec 1.2 write it.
//!
//! A packet is a 9-byte header, then the body:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | flags: bit 3 stream, bit 2 end or error, bits 0–1 body type (0 binary, 1 UTF-8 text, 2 JSON) |
//! | 4 | body length, u32 big-endian |
//! | 4 | request number, i32 big-endian |
//!
//! A header whose length is zero is the goodbye, whatever else it says (the
//! JS decoder takes it so), so an empty body can never be sent: [`encode`]
//! refuses one.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// Size of a packet header.
pub const HEADER_LEN: usize = 9;
/// The goodbye: nine zero bytes.
pub const GOODBYE: [u8; HEADER_LEN] = [0; HEADER_LEN];
/// The largest body [`PacketDecoder::new`] takes by default. muxrpc has no
/// limit of its own; SSB's largest messages are 8 KiB and blob chunks 64 KiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

const FLAG_STREAM: u8 = 0b1000;
const FLAG_END: u8 = 0b0100;
const TYPE_MASK: u8 = 0b0011;

/// How a body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// Bytes (a JS `Buffer`).
    Binary = 0,
    /// UTF-8 text (a JS string).
    Text = 1,
    /// JSON (any other JS value).
    Json = 2,
}

/// A packet's body: its type and its bytes, as they are on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Body {
    /// How to read `bytes`.
    pub kind: BodyType,
    /// The bytes (never empty on the wire).
    pub bytes: Bytes,
}

impl Body {
    /// Binary bytes.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Body {
            kind: BodyType::Binary,
            bytes: bytes.into(),
        }
    }

    /// UTF-8 text.
    pub fn text(text: impl Into<String>) -> Self {
        Body {
            kind: BodyType::Text,
            bytes: Bytes::from(text.into().into_bytes()),
        }
    }

    /// A JSON value.
    pub fn json(value: &serde_json::Value) -> Self {
        Body {
            kind: BodyType::Json,
            bytes: Bytes::from(value.to_string().into_bytes()),
        }
    }

    /// The body as JSON, whatever its type says: text and binary bodies are
    /// strings (binary ones must be UTF-8 too; JS would render them so).
    pub fn to_json(&self) -> Result<serde_json::Value, BodyError> {
        match self.kind {
            BodyType::Json => serde_json::from_slice(&self.bytes).map_err(|_| BodyError::NotJson),
            BodyType::Text | BodyType::Binary => {
                let text = std::str::from_utf8(&self.bytes).map_err(|_| BodyError::NotUtf8)?;
                Ok(serde_json::Value::String(text.to_owned()))
            }
        }
    }

    /// The body as text, if it is UTF-8.
    pub fn as_str(&self) -> Result<&str, BodyError> {
        std::str::from_utf8(&self.bytes).map_err(|_| BodyError::NotUtf8)
    }
}

/// A body that does not read as what it was asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON.
    #[error("the body is not JSON")]
    NotJson,
    /// Not UTF-8.
    #[error("the body is not UTF-8")]
    NotUtf8,
}

/// One packet, the goodbye aside.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Packet {
    /// The request number: positive from the side that made the request,
    /// negated in the answers to it.
    pub req: i32,
    /// Part of a stream (not a single request and its answer).
    pub stream: bool,
    /// The last packet of its side of a stream, or an error answer.
    pub end: bool,
    /// The body.
    pub body: Body,
}

/// What the front of a byte stream held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A packet.
    Packet(Packet),
    /// The goodbye: the peer sends nothing more.
    Goodbye,
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An empty body would read as the goodbye.
    #[error("an empty body reads as the goodbye")]
    EmptyBody,
    /// Longer than a u32 can say.
    #[error("a {0}-byte body does not fit in a packet")]
    TooLarge(usize),
}

/// Why a byte stream is not packet-stream. The stream is broken after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Flag bits packet-stream does not define.
    #[error("undefined packet flags {0:#04x}")]
    UndefinedFlags(u8),
    /// Body type 3.
    #[error("undefined body type 3")]
    UndefinedBodyType,
    /// A body over the decoder's limit.
    #[error("a {len}-byte packet body; the limit is {max}")]
    TooLarge {
        /// What the header said.
        len: u32,
        /// The limit.
        max: usize,
    },
}

/// Appends `packet` to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    let len = packet.body.bytes.len();
    if len == 0 {
        return Err(EncodeError::EmptyBody);
    }
    let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLarge(len))?;
    let flags = (u8::from(packet.stream) << 3) | (u8::from(packet.end) << 2);
    out.reserve(HEADER_LEN + len);
    out.put_u8(flags | packet.body.kind as u8);
    out.put_u32(len32);
    out.put_i32(packet.req);
    out.put_slice(&packet.body.bytes);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Header {
    flags: u8,
    len: u32,
    req: i32,
}

/// Splits a byte stream into packets. It holds at most one packet's
/// header and body (the limit set at [`PacketDecoder::new`]); after the
/// goodbye it takes no more input, and after an error it decodes nothing.
pub struct PacketDecoder {
    max_body: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    /// The header read, while its body gathers in `body`.
    pending: Option<Header>,
    body: BytesMut,
    done: bool,
}

impl PacketDecoder {
    /// A decoder that refuses bodies over `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        PacketDecoder {
            max_body,
            header: [0; HEADER_LEN],
            have: 0,
            pending: None,
            body: BytesMut::new(),
            done: false,
        }
    }

    /// Bytes held of a packet not yet whole.
    pub fn buffered(&self) -> usize {
        match self.pending {
            Some(_) => HEADER_LEN + self.body.len(),
            None => self.have,
        }
    }

    /// It read the goodbye or an error: it takes no more input.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next packet from the front of `input`, which it advances past
    /// what it took; `None` once `input` is used up inside a packet (or the
    /// stream is done).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Decoded>, DecodeError> {
        if self.done {
            return Ok(None);
        }
        let header = match self.pending {
            Some(header) => header,
            None => {
                let take = (HEADER_LEN - self.have).min(input.len());
                self.header[self.have..self.have + take].copy_from_slice(&input[..take]);
                input.advance(take);
                self.have += take;
                if self.have < HEADER_LEN {
                    return Ok(None);
                }
                self.have = 0;
                let header = self.read_header()?;
                if header.len == 0 {
                    self.done = true;
                    return Ok(Some(Decoded::Goodbye));
                }
                header
            }
        };
        let len = header.len as usize;
        let missing = len - self.body.len();
        let body = if self.body.is_empty() && input.len() >= len {
            // The whole body is here: one copy, no gathering.
            let body = Bytes::copy_from_slice(&input[..len]);
            input.advance(len);
            body
        } else {
            let take = missing.min(input.len());
            self.body.extend_from_slice(&input[..take]);
            input.advance(take);
            if self.body.len() < len {
                self.pending = Some(header);
                return Ok(None);
            }
            self.body.split().freeze()
        };
        self.pending = None;
        Ok(Some(Decoded::Packet(Packet {
            req: header.req,
            stream: header.flags & FLAG_STREAM != 0,
            end: header.flags & FLAG_END != 0,
            body: Body {
                kind: match header.flags & TYPE_MASK {
                    0 => BodyType::Binary,
                    1 => BodyType::Text,
                    _ => BodyType::Json,
                },
                bytes: body,
            },
        })))
    }

    fn read_header(&mut self) -> Result<Header, DecodeError> {
        let mut bytes = &self.header[..];
        let header = Header {
            flags: bytes.get_u8(),
            len: bytes.get_u32(),
            req: bytes.get_i32(),
        };
        // A zero length is the goodbye whatever the rest says.
        let fail = if header.len == 0 {
            None
        } else if header.flags & !(FLAG_STREAM | FLAG_END | TYPE_MASK) != 0 {
            Some(DecodeError::UndefinedFlags(header.flags))
        } else if header.flags & TYPE_MASK == TYPE_MASK {
            Some(DecodeError::UndefinedBodyType)
        } else if header.len as usize > self.max_body {
            Some(DecodeError::TooLarge {
                len: header.len,
                max: self.max_body,
            })
        } else {
            None
        };
        match fail {
            Some(e) => {
                self.done = true;
                Err(e)
            }
            None => Ok(header),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut PacketDecoder, mut input: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(d) = decoder.decode(&mut input).expect("valid") {
            out.push(d);
        }
        out
    }

    #[test]
    fn a_packet_is_laid_out_as_packet_stream_codec_writes_it() {
        // {req: 1, stream: false, end: false, value: {name: ["whoami"], args: []}}
        // as packet-stream-codec 1.2 encodes it.
        let body = br#"{"name":["whoami"],"args":[]}"#;
        let packet = Packet {
            req: 1,
            stream: false,
            end: false,
            body: Body {
                kind: BodyType::Json,
                bytes: Bytes::from_static(body),
            },
        };
        let mut out = BytesMut::new();
        encode(&packet, &mut out).unwrap();
        let mut expected = vec![0x02, 0, 0, 0, body.len() as u8, 0, 0, 0, 1];
        expected.extend_from_slice(body);
        assert_eq!(&out[..], &expected[..]);
        // An error answer to request 3 on a stream: stream | end | JSON, req -3.
        let answer = Packet {
            req: -3,
            stream: true,
            end: true,
            body: Body::json(&serde_json::Value::Bool(true)),
        };
        out.clear();
        encode(&answer, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &[0x0e, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfd, b't', b'r', b'u', b'e']
        );
    }

    #[test]
    fn an_empty_body_is_refused_because_it_reads_as_the_goodbye() {
        let packet = Packet {
            req: 1,
            stream: true,
            end: false,
            body: Body::binary(Bytes::new()),
        };
        assert_eq!(
            encode(&packet, &mut BytesMut::new()),
            Err(EncodeError::EmptyBody)
        );
    }

    #[test]
    fn any_zero_length_header_is_the_goodbye_and_ends_the_stream() {
        let mut decoder = PacketDecoder::new(DEFAULT_MAX_BODY);
        let mut input: &[u8] = &[0x0e, 0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff];
        assert_eq!(decoder.decode(&mut input), Ok(Some(Decoded::Goodbye)));
        assert_eq!(input.len(), 2, "nothing after the goodbye is taken");
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert!(decoder.is_done());
    }

    #[test]
    fn undefined_flags_a_fourth_body_type_and_oversized_bodies_are_refused() {
        let cases: [(&[u8], DecodeError); 3] = [
            (
                &[0x12, 0, 0, 0, 1, 0, 0, 0, 1],
                DecodeError::UndefinedFlags(0x12),
            ),
            (
                &[0x03, 0, 0, 0, 1, 0, 0, 0, 1],
                DecodeError::UndefinedBodyType,
            ),
            (
                &[0x00, 0, 0, 0, 17, 0, 0, 0, 1],
                DecodeError::TooLarge { len: 17, max: 16 },
            ),
        ];
        for (mut input, error) in cases {
            let mut decoder = PacketDecoder::new(16);
            assert_eq!(decoder.decode(&mut input), Err(error));
            assert_eq!(
                decoder.decode(&mut &[1u8, 2, 3][..]),
                Ok(None),
                "broken for good"
            );
        }
    }

    #[test]
    fn a_body_arriving_in_pieces_is_held_only_until_whole() {
        let packet = Packet {
            req: -7,
            stream: true,
            end: false,
            body: Body::binary(vec![9u8; 100]),
        };
        let mut wire = BytesMut::new();
        encode(&packet, &mut wire).unwrap();
        let mut decoder = PacketDecoder::new(DEFAULT_MAX_BODY);
        assert!(decode_all(&mut decoder, &wire[..50]).is_empty());
        assert_eq!(decoder.buffered(), 50);
        let rest = decode_all(&mut decoder, &wire[50..]);
        assert_eq!(rest, vec![Decoded::Packet(packet)]);
        assert_eq!(decoder.buffered(), 0);
    }

    fn any_body() -> impl Strategy<Value = Body> {
        (0..3u8, proptest::collection::vec(any::<u8>(), 1..64)).prop_map(|(kind, bytes)| Body {
            kind: match kind {
                0 => BodyType::Binary,
                1 => BodyType::Text,
                _ => BodyType::Json,
            },
            bytes: Bytes::from(bytes),
        })
    }

    fn any_packet() -> impl Strategy<Value = Packet> {
        (any::<i32>(), any::<bool>(), any::<bool>(), any_body()).prop_map(
            |(req, stream, end, body)| Packet {
                req,
                stream,
                end,
                body,
            },
        )
    }

    proptest! {
        #[test]
        fn packets_round_trip_through_any_split_of_the_stream(
            packets in proptest::collection::vec(any_packet(), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = BytesMut::new();
            for packet in &packets {
                encode(packet, &mut wire).unwrap();
            }
            wire.extend_from_slice(&GOODBYE);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut decoder = PacketDecoder::new(DEFAULT_MAX_BODY);
            let mut out = Vec::new();
            let mut from = 0;
            for to in cuts.into_iter().chain([wire.len()]) {
                out.extend(decode_all(&mut decoder, &wire[from..to]));
                from = to;
            }
            let mut expected: Vec<Decoded> = packets.into_iter().map(Decoded::Packet).collect();
            expected.push(Decoded::Goodbye);
            prop_assert_eq!(out, expected);
        }
    }
}
