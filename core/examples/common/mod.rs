#![allow(dead_code)] // each example uses a part of this module
//! The blocking loop the examples share: the whole of what a runtime does
//! for a handshake (move bytes, read the clock, honor the deadline).

use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use plugboard_core::shs::{Established, Event, Handshake, HandshakeError};
use plugboard_core::{Instant, PublicKey};

/// The clock `core` never reads: time since this program started.
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(std::time::Instant::now())
    }

    pub fn now(&self) -> Instant {
        Instant::from_duration(self.0.elapsed())
    }
}

/// Something to read from and write to, whose reads can be given a timeout.
pub trait Transport: Read + Write {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Transport for std::net::TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::net::TcpStream::set_read_timeout(
            self,
            timeout.map(|t| t.max(Duration::from_millis(1))),
        )
    }
}

/// Standard input and output as one connection (for shs1-test's adapters).
/// Reads cannot time out: the test suite ends a stuck adapter itself.
pub struct Stdio {
    pub stdin: std::io::Stdin,
    pub stdout: std::io::Stdout,
}

impl Read for Stdio {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdin.read(buf)
    }
}

impl Write for Stdio {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stdout.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdout.flush()
    }
}

impl Transport for Stdio {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// What shs1-test expects on success, from the adapter's side:
/// encrypt key, encrypt nonce, decrypt key, decrypt nonce.
pub fn shs1_test_outcome(keys: &plugboard_core::shs::SessionKeys) -> Vec<u8> {
    [
        &keys.encrypt_key[..],
        &keys.encrypt_nonce,
        &keys.decrypt_key,
        &keys.decrypt_nonce,
    ]
    .concat()
}

/// Drives `handshake` to completion over `io`. `authorize` answers the
/// server's [`Event::Authorize`].
pub fn run_handshake<H: Handshake>(
    handshake: &mut H,
    io: &mut impl Transport,
    clock: &Clock,
    mut authorize: impl FnMut(&mut H, PublicKey) -> Result<(), HandshakeError>,
) -> Result<Established, Box<dyn Error + Send + Sync>> {
    let mut buf = [0u8; 4096];
    loop {
        // Drain everything the state machine has for us, then wait for input.
        while let Some(bytes) = handshake.poll_transmit() {
            io.write_all(&bytes)?;
        }
        while let Some(event) = handshake.poll_event() {
            match event {
                Event::Authorize(key) => authorize(handshake, key)?,
                Event::Established(done) => {
                    // Message 4 may still be queued (server side).
                    while let Some(bytes) = handshake.poll_transmit() {
                        io.write_all(&bytes)?;
                    }
                    io.flush()?;
                    return Ok(done);
                }
            }
        }
        io.flush()?;
        let deadline = handshake.poll_timeout().expect("in progress");
        io.set_read_timeout(Some(deadline - clock.now()))?;
        match io.read(&mut buf) {
            Ok(0) => handshake.handle_eof()?,
            Ok(n) => handshake.handle_input(clock.now(), &buf[..n])?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                handshake.handle_timeout(clock.now())?
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The crypto provider `PLUGBOARD_CRYPTO` names: `rustcrypto` (the default,
/// also when unset) or `libsodium`. Anything else is a mistake worth stopping for.
pub fn crypto_from_env() -> plugboard_core::crypto::Crypto {
    match std::env::var("PLUGBOARD_CRYPTO").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("rustcrypto") => Default::default(),
        Ok("libsodium") => plugboard_sodium::crypto(),
        other => {
            eprintln!("PLUGBOARD_CRYPTO must be rustcrypto or libsodium, not {other:?}");
            std::process::exit(2);
        }
    }
}

/// Parses a 32-byte hex seed.
pub fn parse_seed(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex_decode(text).ok_or("the seed is not hex")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("the seed has {} bytes, not 32", b.len()))
}

pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
