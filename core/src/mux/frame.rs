//! Mux frames: a 10-byte header, then the payload.
//!
//! ```text
//! offset  size  field
//! 0       1     type     0 DATA, 1 WINDOW, 2 RESET, 3 PING, 4 GOAWAY
//! 1       1     flags    DATA: 0x01 FIN; PING: 0x01 PONG; others 0
//! 2       4     channel  u32 BE; 0 is the control channel
//! 6       4     length   u32 BE, of the payload
//! 10      len   payload  DATA: bytes; WINDOW: u32 increment; RESET, GOAWAY:
//!                        u16 code + UTF-8 reason (<= 1024); PING: 8 opaque bytes
//! ```

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use crate::control::{ErrorCode, MAX_TEXT};

/// Size of a frame header.
pub const HEADER_LEN: usize = 10;
/// Frame payload limit unless the peer announced another.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024;

pub(crate) const DATA: u8 = 0;
const WINDOW: u8 = 1;
const RESET: u8 = 2;
const PING: u8 = 3;
const GOAWAY: u8 = 4;
pub(crate) const FIN: u8 = 0x01;
const PONG: u8 = 0x01;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Channel bytes; `fin` ends the sender's direction after them.
    Data {
        /// Channel id.
        channel: u32,
        /// Last data in this direction.
        fin: bool,
        /// The bytes (a slice of the read buffer).
        payload: Bytes,
    },
    /// The sender may receive `increment` more bytes on `channel`.
    Window {
        /// Channel id (never 0).
        channel: u32,
        /// Added credit, at least 1.
        increment: u32,
    },
    /// The channel is over in both directions.
    Reset {
        /// Channel id (never 0).
        channel: u32,
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
    /// Liveness probe, or (`pong`) the answer to one.
    Ping {
        /// Echoed in the answer.
        opaque: u64,
        /// This is the answer.
        pong: bool,
    },
    /// The sender ends the connection after this frame.
    GoAway {
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
}

/// Why bytes are not a valid frame: always a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The type byte is not one of the five.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Flags this frame type does not define.
    #[error("frame type {kind} with undefined flags {flags:#04x}")]
    BadFlags {
        /// Frame type.
        kind: u8,
        /// Flags seen.
        flags: u8,
    },
    /// A payload over the announced maximum.
    #[error("a {len}-byte frame payload; the limit is {max}")]
    TooLong {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A payload of the wrong size for its type.
    #[error("frame type {kind} with a {len}-byte payload")]
    BadLength {
        /// Frame type.
        kind: u8,
        /// Its payload length.
        len: u32,
    },
    /// WINDOW or RESET on channel 0, FIN on channel 0, PING or GOAWAY elsewhere.
    #[error("frame type {kind} is not allowed on channel {channel}")]
    WrongChannel {
        /// Frame type.
        kind: u8,
        /// The channel.
        channel: u32,
    },
    /// A WINDOW of zero.
    #[error("a window increment of zero")]
    ZeroWindow,
    /// A reason that is not UTF-8.
    #[error("a reason that is not UTF-8")]
    BadUtf8,
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) channel: u32,
    pub(super) len: u32,
}

impl Header {
    /// Parses and checks a header: everything that can be refused before
    /// the payload arrives is refused here.
    pub(super) fn parse(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<Self, FrameError> {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let header = Header {
            kind: bytes[0],
            flags: bytes[1],
            channel: word(2),
            len: word(6),
        };
        check_header(
            header.kind,
            header.flags,
            header.channel,
            header.len,
            max_payload,
        )?;
        Ok(header)
    }

    /// The frame a whole payload makes, for every type but DATA (whose
    /// payload the decoder passes on as it arrives).
    pub(super) fn into_frame(self, mut payload: Bytes) -> Result<Frame, FrameError> {
        let Header {
            kind,
            flags,
            channel,
            ..
        } = self;
        Ok(match kind {
            DATA => Frame::Data {
                channel,
                fin: flags & FIN != 0,
                payload,
            },
            WINDOW => match payload.get_u32() {
                0 => return Err(FrameError::ZeroWindow),
                increment => Frame::Window { channel, increment },
            },
            RESET => {
                let code = ErrorCode::from_u16(payload.get_u16());
                let reason = utf8(payload)?;
                Frame::Reset {
                    channel,
                    code,
                    reason,
                }
            }
            PING => Frame::Ping {
                opaque: payload.get_u64(),
                pong: flags & PONG != 0,
            },
            _ => {
                let code = ErrorCode::from_u16(payload.get_u16());
                Frame::GoAway {
                    code,
                    reason: utf8(payload)?,
                }
            }
        })
    }
}

fn utf8(bytes: Bytes) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::BadUtf8)
}

/// Everything that can be checked from the header alone, so that a bad
/// frame is refused before its payload is buffered.
fn check_header(kind: u8, flags: u8, channel: u32, len: u32, max: u32) -> Result<(), FrameError> {
    let (allowed_flags, on_control, elsewhere) = match kind {
        DATA => (FIN, true, true),
        WINDOW | RESET => (0, false, true),
        PING | GOAWAY => (if kind == PING { PONG } else { 0 }, true, false),
        _ => return Err(FrameError::UnknownType(kind)),
    };
    if flags & !allowed_flags != 0 || (kind == DATA && channel == 0 && flags != 0) {
        return Err(FrameError::BadFlags { kind, flags });
    }
    if !(if channel == 0 { on_control } else { elsewhere }) {
        return Err(FrameError::WrongChannel { kind, channel });
    }
    let length_ok = match kind {
        DATA => true,
        WINDOW => len == 4,
        PING => len == 8,
        _ => (2..=2 + MAX_TEXT as u32).contains(&len),
    };
    if !length_ok {
        return Err(FrameError::BadLength { kind, len });
    }
    // The limit is on data: the other types have fixed bounds of their own.
    if kind == DATA && len > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok(())
}

/// Appends a DATA header; the caller sends `len` payload bytes after it.
pub fn encode_data_header(channel: u32, fin: bool, len: u32, out: &mut BytesMut) {
    put_header(DATA, if fin { FIN } else { 0 }, channel, len, out);
}

/// Appends a whole frame other than DATA.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Data {
            channel,
            fin,
            payload,
        } => {
            encode_data_header(*channel, *fin, payload.len() as u32, out);
            out.extend_from_slice(payload);
        }
        Frame::Window { channel, increment } => {
            put_header(WINDOW, 0, *channel, 4, out);
            out.put_u32(*increment);
        }
        Frame::Reset {
            channel,
            code,
            reason,
        } => put_coded(RESET, *channel, *code, reason, out),
        Frame::Ping { opaque, pong } => {
            put_header(PING, if *pong { PONG } else { 0 }, 0, 8, out);
            out.put_u64(*opaque);
        }
        Frame::GoAway { code, reason } => put_coded(GOAWAY, 0, *code, reason, out),
    }
}

fn put_header(kind: u8, flags: u8, channel: u32, len: u32, out: &mut BytesMut) {
    out.reserve(HEADER_LEN + len as usize);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(channel);
    out.put_u32(len);
}

fn put_coded(kind: u8, channel: u32, code: ErrorCode, reason: &str, out: &mut BytesMut) {
    let reason = truncate_utf8(reason, MAX_TEXT);
    put_header(kind, 0, channel, 2 + reason.len() as u32, out);
    out.put_u16(code.to_u16());
    out.extend_from_slice(reason.as_bytes());
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::FrameDecoder;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        assert_eq!(decoder.buffered(), 0, "left over");
        Ok(frames)
    }

    #[test]
    fn layout_is_pinned() {
        let mut out = BytesMut::new();
        encode(
            &Frame::Data {
                channel: 3,
                fin: true,
                payload: Bytes::from_static(b"hi"),
            },
            &mut out,
        );
        encode(
            &Frame::Window {
                channel: 3,
                increment: 0x10000,
            },
            &mut out,
        );
        assert_eq!(
            hex::encode(&out),
            "0001000000030000000268690100000000030000000400010000"
        );
        out.clear();
        encode(
            &Frame::Reset {
                channel: 2,
                code: ErrorCode::PeerGone,
                reason: "x".into(),
            },
            &mut out,
        );
        assert_eq!(hex::encode(&out), "02000000000200000003000c78");
    }

    #[test]
    fn round_trips_and_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(600); // 1200 bytes
        let frames = [
            Frame::Ping {
                opaque: 7,
                pong: true,
            },
            Frame::GoAway {
                code: ErrorCode::Other(999),
                reason: long.clone(),
            },
            Frame::Data {
                channel: 0,
                fin: false,
                payload: Bytes::from(vec![1; 100]),
            },
        ];
        let mut out = BytesMut::new();
        for frame in &frames {
            encode(frame, &mut out);
        }
        let decoded = decode_all(&out).unwrap();
        assert_eq!(decoded[0], frames[0]);
        assert_eq!(
            decoded[1],
            Frame::GoAway {
                code: ErrorCode::Other(999),
                reason: "é".repeat(512)
            }
        );
        assert_eq!(decoded[2], frames[2]);
    }

    #[test]
    fn violations_are_typed() {
        let header = |kind: u8, flags: u8, channel: u32, len: u32| {
            let mut out = BytesMut::new();
            put_header(kind, flags, channel, len, &mut out);
            out.resize(HEADER_LEN + len as usize, 0);
            out
        };
        let err = |bytes: BytesMut| decode_all(&bytes).unwrap_err();
        assert_eq!(err(header(9, 0, 1, 0)), FrameError::UnknownType(9));
        assert_eq!(
            err(header(DATA, 2, 1, 0)),
            FrameError::BadFlags { kind: 0, flags: 2 }
        );
        assert_eq!(
            err(header(DATA, FIN, 0, 0)),
            FrameError::BadFlags { kind: 0, flags: 1 }
        );
        assert_eq!(
            err(header(WINDOW, 0, 0, 4)),
            FrameError::WrongChannel {
                kind: 1,
                channel: 0
            }
        );
        assert_eq!(
            err(header(PING, 0, 5, 8)),
            FrameError::WrongChannel {
                kind: 3,
                channel: 5
            }
        );
        assert_eq!(
            err(header(WINDOW, 0, 1, 5)),
            FrameError::BadLength { kind: 1, len: 5 }
        );
        assert_eq!(
            err(header(RESET, 0, 1, 1)),
            FrameError::BadLength { kind: 2, len: 1 }
        );
        assert_eq!(err(header(WINDOW, 0, 1, 4)), FrameError::ZeroWindow);
        let mut bad_utf8 = header(GOAWAY, 0, 0, 3);
        bad_utf8[HEADER_LEN + 2] = 0xff;
        assert_eq!(err(bad_utf8), FrameError::BadUtf8);
        // Refused from the header alone: the payload never has to arrive.
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(&header(DATA, 0, 1, DEFAULT_MAX_FRAME + 1)[..HEADER_LEN]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLong {
                len: DEFAULT_MAX_FRAME + 1,
                max: DEFAULT_MAX_FRAME
            })
        );
    }

    #[test]
    fn split_input_waits_for_the_whole_frame() {
        let mut out = BytesMut::new();
        encode(
            &Frame::Data {
                channel: 1,
                fin: false,
                payload: Bytes::from_static(b"abcdef"),
            },
            &mut out,
        );
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        for byte in &out[..out.len() - 1] {
            decoder.push(&[*byte]);
            assert_eq!(decoder.next_frame(), Ok(None));
        }
        decoder.push(&out[out.len() - 1..]);
        assert!(matches!(decoder.next_frame(), Ok(Some(Frame::Data { .. }))));
    }
}
