use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::nonce::Nonce;
use super::{BoxStreamError, HEADER_LEN, MAX_BODY, TAG_LEN};
use crate::crypto::{Crypto, SecretBox};

/// How much plaintext room the opener takes at a time for bodies that
/// arrive whole: one allocation serves many frames, whose [`Bytes`] share it.
const PLAIN_CHUNK: usize = 64 * 1024;

/// What an [`Opener`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Authentic plaintext, in order: one frame's body.
    Data(Bytes),
    /// The peer said goodbye: the stream ended cleanly. The last event.
    Goodbye,
}

/// The receiving half of a box-stream.
///
/// A body that arrives whole in one input is decrypted straight from it into
/// the plaintext buffer (with no copy before, on a provider that can); one
/// split across inputs is gathered in the read buffer and decrypted there in
/// place. Either way it is handed out as a [`Bytes`] slice of a buffer that
/// serves many frames (64 KiB at a time), so a frame costs no allocation of
/// its own.
pub struct Opener {
    cipher: Box<dyn SecretBox>,
    nonce: Nonce,
    /// The part of a header or body that arrived so far, when it came split.
    buffer: BytesMut,
    /// Plaintext of bodies that arrived whole, handed out in slices.
    plain: BytesMut,
    /// The opened header of the frame whose body is still arriving.
    pending_body: Option<PendingBody>,
    events: VecDeque<Event>,
    state: State,
}

#[derive(Clone, Copy)]
struct PendingBody {
    len: usize,
    tag: [u8; TAG_LEN],
}

enum State {
    Open,
    Goodbye,
    Failed(BoxStreamError),
}

impl Opener {
    /// An opener under `key` starting at `nonce`, on `crypto`'s cipher.
    pub fn new(crypto: &Crypto, key: &[u8; 32], nonce: &[u8; 24]) -> Self {
        Opener {
            cipher: crypto.secretbox(key),
            nonce: Nonce(*nonce),
            buffer: BytesMut::new(),
            plain: BytesMut::new(),
            pending_body: None,
            events: VecDeque::new(),
            state: State::Open,
        }
    }

    /// Takes bytes from the wire, split anywhere. Authentic frames before a
    /// bad one are still delivered; nothing after it is.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<(), BoxStreamError> {
        match &self.state {
            State::Failed(error) => return Err(error.clone()),
            State::Goodbye if input.is_empty() => return Ok(()),
            State::Goodbye => return self.fail(BoxStreamError::DataAfterGoodbye),
            State::Open => {}
        }
        match self.open_frames(input) {
            Ok(()) => Ok(()),
            Err(error) => self.fail(error),
        }
    }

    /// The connection ended: fine after a goodbye, [`BoxStreamError::Truncated`] otherwise.
    pub fn handle_eof(&mut self) -> Result<(), BoxStreamError> {
        match &self.state {
            State::Goodbye => Ok(()),
            State::Failed(error) => Err(error.clone()),
            State::Open => {
                let unfinished = self.buffer.len() + self.pending_body.map_or(0, |_| HEADER_LEN);
                self.fail(BoxStreamError::Truncated(unfinished))
            }
        }
    }

    /// The next body or the goodbye, in stream order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the goodbye has been read.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Goodbye)
    }

    fn fail(&mut self, error: BoxStreamError) -> Result<(), BoxStreamError> {
        self.state = State::Failed(error.clone());
        self.buffer = BytesMut::new();
        Err(error)
    }

    fn open_frames(&mut self, mut input: &[u8]) -> Result<(), BoxStreamError> {
        loop {
            let body = match self.pending_body.take() {
                Some(body) => body,
                None => {
                    let mut header = [0u8; HEADER_LEN];
                    if !self.gather(&mut input, &mut header) {
                        return Ok(());
                    }
                    match self.open_header(header)? {
                        Some(body) => body,
                        None => return self.on_goodbye(input),
                    }
                }
            };
            let plaintext = if self.buffer.is_empty() && input.len() >= body.len {
                // The whole body is here: decrypt it from the input.
                let (ciphertext, rest) = input.split_at(body.len);
                input = rest;
                let nonce = self.nonce.next();
                if self.plain.capacity() < body.len {
                    // Reclaimed if every earlier body was dropped, else new.
                    self.plain.reserve(PLAIN_CHUNK);
                }
                let plain = &mut self.plain;
                if !self
                    .cipher
                    .open_detached_append(&nonce, ciphertext, &body.tag, plain)
                {
                    return Err(BoxStreamError::Forged);
                }
                self.plain.split()
            } else {
                let missing = body.len - self.buffer.len();
                if input.len() < missing {
                    self.buffer.extend_from_slice(input);
                    self.pending_body = Some(body);
                    return Ok(());
                }
                self.buffer.extend_from_slice(&input[..missing]);
                input = &input[missing..];
                let mut plaintext = self.buffer.split();
                if !self
                    .cipher
                    .open_detached(&self.nonce.next(), &mut plaintext, &body.tag)
                {
                    return Err(BoxStreamError::Forged);
                }
                plaintext
            };
            if !plaintext.is_empty() {
                self.events.push_back(Event::Data(plaintext.freeze()));
            }
        }
    }

    /// Fills `header` from what was gathered and `input`; false (keeping
    /// what there is) while it is not all here.
    fn gather(&mut self, input: &mut &[u8], header: &mut [u8; HEADER_LEN]) -> bool {
        let missing = HEADER_LEN - self.buffer.len();
        if input.len() < missing {
            self.buffer.extend_from_slice(input);
            *input = &[];
            return false;
        }
        let gathered = self.buffer.len();
        header[..gathered].copy_from_slice(&self.buffer);
        header[gathered..].copy_from_slice(&input[..missing]);
        self.buffer.clear();
        *input = &input[missing..];
        true
    }

    /// Opens a header; `None` is the goodbye.
    fn open_header(
        &mut self,
        mut header: [u8; HEADER_LEN],
    ) -> Result<Option<PendingBody>, BoxStreamError> {
        let (tag, plaintext) = header.split_at_mut(TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("split at 16");
        if !self
            .cipher
            .open_detached(&self.nonce.next(), plaintext, tag)
        {
            return Err(BoxStreamError::Forged);
        }
        if plaintext.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([plaintext[0], plaintext[1]]));
        if len > MAX_BODY {
            return Err(BoxStreamError::BodyTooLong(len));
        }
        Ok(Some(PendingBody {
            len,
            tag: plaintext[2..].try_into().expect("18 - 2 = 16"),
        }))
    }

    fn on_goodbye(&mut self, rest: &[u8]) -> Result<(), BoxStreamError> {
        if !rest.is_empty() {
            return Err(BoxStreamError::DataAfterGoodbye);
        }
        self.state = State::Goodbye;
        self.events.push_back(Event::Goodbye);
        Ok(())
    }
}
