//! Reading frames from a byte stream.
//!
//! [`Deframer`] passes a DATA frame's payload on as it arrives, as slices of
//! the input: it buffers nothing but a header and the small body of the
//! other frame types. So a relayed byte is copied once, from the read buffer
//! to where it goes, and no read buffer is kept alive by a frame cut from it.
//! [`FrameDecoder`] gathers whole frames on top of it, for tools and tests.

use bytes::{Buf as _, BytesMut};

use super::frame::{Frame, FrameError, Header, DATA, FIN, HEADER_LEN};

/// What the front of the input held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A DATA frame begins: `len` bytes of payload follow, as
    /// [`Piece::Payload`]s, then [`Piece::DataEnd`].
    DataStart {
        /// The channel.
        channel: u32,
        /// Its payload's length.
        len: u32,
        /// The sender's last data on the channel.
        fin: bool,
    },
    /// Payload of the DATA frame begun (never empty).
    Payload(&'a [u8]),
    /// The DATA frame begun is whole.
    DataEnd,
    /// A whole frame of another type.
    Frame(Frame),
}

#[derive(Debug, Clone)]
enum State {
    /// `have` bytes of a header are in `header`.
    Header { have: usize },
    /// The body of a frame other than DATA is gathering in `body`.
    Body(Header),
    /// `left` bytes of a DATA payload are to come.
    Payload { left: u32 },
    /// A DATA frame's payload is all passed on.
    End,
    /// The stream broke the framing: every call says so again.
    Broken(FrameError),
}

/// Splits a byte stream into frames, passing DATA payload on uncopied.
/// After an error the stream is broken: every later call returns the same
/// error and takes no input.
pub struct Deframer {
    max_payload: u32,
    header: [u8; HEADER_LEN],
    body: BytesMut,
    state: State,
}

impl Deframer {
    /// A deframer that refuses DATA payloads over `max_payload`.
    pub fn new(max_payload: u32) -> Self {
        Deframer {
            max_payload,
            header: [0; HEADER_LEN],
            body: BytesMut::new(),
            state: State::Header { have: 0 },
        }
    }

    /// Bytes held: part of a header, or of a body other than DATA's.
    pub fn buffered(&self) -> usize {
        match self.state {
            State::Header { have } => have,
            State::Body(_) => HEADER_LEN + self.body.len(),
            State::Payload { .. } | State::End | State::Broken(_) => 0,
        }
    }

    /// Whether it is between frames.
    pub fn is_between_frames(&self) -> bool {
        matches!(self.state, State::Header { have: 0 })
    }

    /// The next piece from the front of `input`, which it advances past
    /// what it used; `None` once `input` is used up (a partial header or
    /// body is kept for the next call).
    pub fn decode<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<Piece<'a>>, FrameError> {
        if let State::Broken(e) = &self.state {
            return Err(e.clone());
        }
        let piece = self.decode_piece(input);
        if let Err(e) = &piece {
            self.state = State::Broken(e.clone());
        }
        piece
    }

    fn decode_piece<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<Piece<'a>>, FrameError> {
        loop {
            match &mut self.state {
                State::Header { have } => {
                    let n = (HEADER_LEN - *have).min(input.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    self.header[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input.advance(n);
                    if *have < HEADER_LEN {
                        return Ok(None);
                    }
                    let header = Header::parse(&self.header, self.max_payload)?;
                    if header.kind == DATA {
                        self.state = match header.len {
                            0 => State::End,
                            left => State::Payload { left },
                        };
                        return Ok(Some(Piece::DataStart {
                            channel: header.channel,
                            len: header.len,
                            fin: header.flags & FIN != 0,
                        }));
                    }
                    // Bounded by the type (at most a reason's length).
                    self.body.reserve(header.len as usize);
                    self.state = State::Body(header);
                }
                State::Body(header) => {
                    let header = *header;
                    let n = (header.len as usize - self.body.len()).min(input.len());
                    self.body.extend_from_slice(&input[..n]);
                    input.advance(n);
                    if self.body.len() < header.len as usize {
                        return Ok(None);
                    }
                    self.state = State::Header { have: 0 };
                    let frame = header.into_frame(self.body.split().freeze())?;
                    return Ok(Some(Piece::Frame(frame)));
                }
                State::Payload { left } => {
                    let n = (*left as usize).min(input.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    *left -= n as u32;
                    if *left == 0 {
                        self.state = State::End;
                    }
                    let (piece, rest) = input.split_at(n);
                    *input = rest;
                    return Ok(Some(Piece::Payload(piece)));
                }
                State::End => {
                    self.state = State::Header { have: 0 };
                    return Ok(Some(Piece::DataEnd));
                }
                State::Broken(e) => return Err(e.clone()),
            }
        }
    }
}

/// Whole frames from a byte stream, DATA payloads gathered: for tools and
/// tests that look at frames one by one (the mux itself uses [`Deframer`]).
pub struct FrameDecoder {
    deframer: Deframer,
    input: BytesMut,
    /// The DATA frame being gathered: channel, FIN, payload so far.
    data: Option<(u32, bool, BytesMut)>,
}

impl FrameDecoder {
    /// A decoder that refuses DATA payloads over `max_payload`.
    pub fn new(max_payload: u32) -> Self {
        FrameDecoder {
            deframer: Deframer::new(max_payload),
            input: BytesMut::new(),
            data: None,
        }
    }

    /// Appends input.
    pub fn push(&mut self, input: &[u8]) {
        self.input.extend_from_slice(input);
    }

    /// Bytes taken and not yet part of a frame handed out.
    pub fn buffered(&self) -> usize {
        let data = self
            .data
            .as_ref()
            .map_or(0, |(_, _, d)| HEADER_LEN + d.len());
        self.input.len() + self.deframer.buffered() + data
    }

    /// The next complete frame, or `None` if more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let mut rest = &self.input[..];
            let piece = self.deframer.decode(&mut rest);
            let used = self.input.len() - rest.len();
            let frame = match piece? {
                None => {
                    self.input.advance(used);
                    return Ok(None);
                }
                Some(Piece::DataStart { channel, len, fin }) => {
                    self.data = Some((channel, fin, BytesMut::with_capacity(len as usize)));
                    None
                }
                Some(Piece::Payload(bytes)) => {
                    if let Some((_, _, payload)) = &mut self.data {
                        payload.extend_from_slice(bytes);
                    }
                    None
                }
                Some(Piece::DataEnd) => {
                    self.data.take().map(|(channel, fin, payload)| Frame::Data {
                        channel,
                        fin,
                        payload: payload.freeze(),
                    })
                }
                Some(Piece::Frame(frame)) => Some(frame),
            };
            self.input.advance(used);
            if frame.is_some() {
                return Ok(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::control::ErrorCode;
    use crate::mux::frame::{encode, DEFAULT_MAX_FRAME};

    fn stream() -> BytesMut {
        let mut out = BytesMut::new();
        for frame in [
            Frame::Data {
                channel: 3,
                fin: false,
                payload: Bytes::from_static(b"hello"),
            },
            Frame::Window {
                channel: 3,
                increment: 9,
            },
            Frame::Data {
                channel: 3,
                fin: true,
                payload: Bytes::new(),
            },
            Frame::Reset {
                channel: 5,
                code: ErrorCode::Cancelled,
                reason: "no".into(),
            },
        ] {
            encode(&frame, &mut out);
        }
        out
    }

    #[test]
    fn payload_comes_as_slices_of_the_input_and_nothing_else_is_held() {
        let input = stream();
        let mut deframer = Deframer::new(DEFAULT_MAX_FRAME);
        let mut rest = &input[..];
        let mut pieces = Vec::new();
        while let Some(piece) = deframer.decode(&mut rest).unwrap() {
            if let Piece::Payload(bytes) = &piece {
                // A slice of the input itself, not a copy.
                let offset = bytes.as_ptr() as usize - input.as_ptr() as usize;
                assert_eq!(&input[offset..offset + bytes.len()], *bytes);
            }
            pieces.push(piece);
        }
        assert!(rest.is_empty() && deframer.is_between_frames());
        assert_eq!(
            pieces,
            [
                Piece::DataStart {
                    channel: 3,
                    len: 5,
                    fin: false
                },
                Piece::Payload(b"hello"),
                Piece::DataEnd,
                Piece::Frame(Frame::Window {
                    channel: 3,
                    increment: 9
                }),
                Piece::DataStart {
                    channel: 3,
                    len: 0,
                    fin: true
                },
                Piece::DataEnd,
                Piece::Frame(Frame::Reset {
                    channel: 5,
                    code: ErrorCode::Cancelled,
                    reason: "no".into()
                }),
            ]
        );
    }

    #[test]
    fn a_payload_cut_anywhere_comes_in_pieces_as_it_arrives() {
        let input = stream();
        for cut in 0..input.len() {
            let mut deframer = Deframer::new(DEFAULT_MAX_FRAME);
            let mut payload = Vec::new();
            let mut held = 0;
            for part in [&input[..cut], &input[cut..]] {
                let mut rest = part;
                while let Some(piece) = deframer.decode(&mut rest).unwrap() {
                    if let Piece::Payload(bytes) = piece {
                        payload.extend_from_slice(bytes);
                    }
                }
                held = held.max(deframer.buffered());
            }
            assert_eq!(payload, b"hello", "cut at {cut}");
            assert!(held < HEADER_LEN + 8, "held {held} bytes, cut at {cut}");
        }
    }

    #[test]
    fn a_broken_stream_says_so_again_and_takes_nothing() {
        let mut deframer = Deframer::new(16);
        // A DATA header announcing 17 bytes, over the maximum of 16.
        let mut bad = BytesMut::new();
        encode(
            &Frame::Data {
                channel: 1,
                fin: false,
                payload: Bytes::from(vec![0; 17]),
            },
            &mut bad,
        );
        let mut rest = &bad[..];
        let error = deframer.decode(&mut rest).unwrap_err();
        let good = stream();
        let mut rest = &good[..];
        assert_eq!(deframer.decode(&mut rest), Err(error));
        assert_eq!(rest.len(), good.len(), "no input taken once broken");
        assert_eq!(deframer.buffered(), 0);
    }

    #[test]
    fn whole_frames_come_out_of_any_split() {
        let input = stream();
        let mut whole = FrameDecoder::new(DEFAULT_MAX_FRAME);
        whole.push(&input);
        let mut expected = Vec::new();
        while let Some(frame) = whole.next_frame().unwrap() {
            expected.push(frame);
        }
        assert_eq!(expected.len(), 4);
        for cut in 0..input.len() {
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut frames = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                decoder.push(part);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, expected, "cut at {cut}");
            assert_eq!(decoder.buffered(), 0);
        }
    }
}
