//! A connection after its handshake: the mux, over plain framing (unix
//! sockets) or inside box-stream (TCP). The plugin session sits on a
//! [`Wire`]; the broker's per-connection `Link` frames with the same
//! [`BoxedIo`].

use bytes::{Bytes, BytesMut};

use crate::boxstream::{self, BoxStreamError, Opener, Sealer};
use crate::mux::{Mux, MuxError};
use crate::shs::Established;

/// How plaintext mux bytes travel.
pub enum Framing {
    /// Directly: the kernel protects a unix socket.
    Plain,
    /// Inside SSB's box-stream.
    BoxStream(Box<BoxedIo>),
}

/// Both halves of a box-stream, and the buffer sealed output is built in:
/// what a [`Wire`] and the broker's per-connection `Link` frame with.
pub struct BoxedIo {
    sealer: Sealer,
    opener: Opener,
    sealed: BytesMut,
    plain: BytesMut,
}

impl BoxedIo {
    /// Both halves, from the handshake's keys on its crypto provider.
    pub fn new(established: &Established) -> Self {
        let (sealer, opener) = established.boxstream();
        BoxedIo {
            sealer,
            opener,
            sealed: BytesMut::new(),
            plain: BytesMut::new(),
        }
    }

    /// Opens what the socket said: each box's plaintext to `deliver`, in
    /// order. `Ok(true)` once the peer said goodbye.
    pub fn open<E: From<BoxStreamError>>(
        &mut self,
        input: &[u8],
        mut deliver: impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<bool, E> {
        self.opener.handle_input(input)?;
        while let Some(event) = self.opener.poll_event() {
            match event {
                boxstream::Event::Data(bytes) => deliver(bytes)?,
                boxstream::Event::Goodbye => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The socket ended: fine after a goodbye, truncation otherwise.
    pub fn handle_eof(&mut self) -> Result<(), BoxStreamError> {
        self.opener.handle_eof()
    }

    /// Seals what `next` gives, up to a batch, into one write; `None` when
    /// `next` had nothing (or our goodbye was said: nothing more may go out).
    pub fn seal_from(&mut self, mut next: impl FnMut() -> Option<Bytes>) -> Option<Bytes> {
        while self.plain.len() < SEAL_BATCH {
            let Some(chunk) = next() else {
                break;
            };
            self.plain.extend_from_slice(&chunk);
        }
        if !self.plain.is_empty() {
            let sealed = self.sealer.seal(&self.plain, &mut self.sealed);
            self.plain.clear();
            if sealed.is_err() {
                self.sealed.clear();
            }
        }
        (!self.sealed.is_empty()).then(|| self.sealed.split().freeze())
    }

    /// Seals `plain` (empty after our goodbye).
    pub fn seal(&mut self, plain: &[u8]) -> Bytes {
        if !plain.is_empty() && self.sealer.seal(plain, &mut self.sealed).is_err() {
            self.sealed.clear();
        }
        self.sealed.split().freeze()
    }

    /// Appends box-stream's goodbye to `out` (nothing if it was said).
    pub fn goodbye(&mut self, out: &mut BytesMut) {
        // An error only means the goodbye was said already.
        let _ = self.sealer.goodbye(out);
    }
}

/// Why a wire failed on input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The box-stream was forged, cut, or went on after goodbye.
    #[error("box-stream: {0}")]
    BoxStream(#[from] BoxStreamError),
    /// The peer broke the mux protocol.
    #[error("{0}")]
    Mux(#[from] MuxError),
    /// The peer said goodbye (box-stream): it will send nothing more.
    #[error("the peer said goodbye")]
    Goodbye,
}

/// Most plaintext sealed into one box-stream write.
const SEAL_BATCH: usize = 64 * 1024;

/// A mux over its framing.
pub struct Wire {
    /// The channels.
    pub mux: Mux,
    framing: Framing,
}

impl Wire {
    /// Plain framing.
    pub fn plain(mux: Mux) -> Self {
        Wire {
            mux,
            framing: Framing::Plain,
        }
    }

    /// Box-stream framing, from the handshake's keys on its crypto provider.
    pub fn boxed(mux: Mux, established: &Established) -> Self {
        Wire {
            mux,
            framing: Framing::BoxStream(Box::new(BoxedIo::new(established))),
        }
    }

    /// The mux bytes that bytes from the socket carry, for
    /// [`Mux::poll_input`]: `input` itself on plain framing; on box-stream,
    /// every whole box opened into `plain` (those before a bad one too).
    /// Beside them, how the input ended: [`WireError::Goodbye`] once the
    /// peer said goodbye, or why the box-stream broke.
    pub fn open<'a>(
        &mut self,
        input: &'a [u8],
        plain: &'a mut BytesMut,
    ) -> (&'a [u8], Result<(), WireError>) {
        match &mut self.framing {
            Framing::Plain => (input, Ok(())),
            Framing::BoxStream(io) => {
                let opened = io.open(input, |bytes| {
                    plain.extend_from_slice(&bytes);
                    Ok::<_, BoxStreamError>(())
                });
                let end = match opened {
                    Ok(false) => Ok(()),
                    Ok(true) => Err(WireError::Goodbye),
                    Err(e) => Err(e.into()),
                };
                (&plain[..], end)
            }
        }
    }

    /// Whether mux bytes go to the socket as they are.
    pub fn is_plain(&self) -> bool {
        matches!(self.framing, Framing::Plain)
    }

    /// The next bytes for the socket, with the attachment tag of the mux
    /// frame they start, if any (plain framing only).
    pub fn poll_transmit(&mut self) -> Option<(Bytes, Option<u64>)> {
        match &mut self.framing {
            Framing::Plain => self.mux.poll_transmit_tagged(),
            Framing::BoxStream(io) => io
                .seal_from(|| self.mux.poll_transmit())
                .map(|sealed| (sealed, None)),
        }
    }

    /// Everything still to send, then (box-stream) the goodbye: the last
    /// bytes of a connection that is closing.
    pub fn last_words(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        while let Some((chunk, _)) = self.poll_transmit() {
            out.extend_from_slice(&chunk);
        }
        if let Framing::BoxStream(io) = &mut self.framing {
            io.goodbye(&mut out);
        }
        out.freeze()
    }
}
