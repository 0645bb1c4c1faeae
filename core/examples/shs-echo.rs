//! shs1 + box-stream over blocking `std::net`: the shortest honest embedding
//! of plugboard's core, and the peer the interop tests drive.
//!
//! ```text
//! shs-echo --listen 127.0.0.1:0 [--network-key HEX|B64] [--seed HEX]
//! shs-echo --connect 127.0.0.1:PORT --server-key @<key>.ed25519 [--network-key ..] [--seed HEX] [--bytes N]
//! ```
//! The server echoes every byte back until the client's goodbye, then says
//! goodbye too. The client sends N pseudo-random bytes, checks the echo byte
//! for byte, and exits 0 only if all of it held. `PLUGBOARD_CRYPTO=libsodium`
//! runs it on the libsodium provider.

mod common;

use std::error::Error;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use common::{parse_seed, run_handshake, Clock};
use plugboard_core::boxstream::{Event as BoxEvent, Opener};
use plugboard_core::shs::{ClientHandshake, HandshakeConfig, ServerHandshake};
use plugboard_core::{Keypair, NetworkKey, PublicKey};
use rand_core::OsRng;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// A dead peer after the handshake is dropped after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(about = "shs1 + box-stream echo server and client")]
struct Args {
    /// Serve on this address (port 0 picks one).
    #[arg(long, conflicts_with = "connect", required_unless_present = "connect")]
    listen: Option<String>,
    /// Connect to this address.
    #[arg(long, requires = "server_key")]
    connect: Option<String>,
    /// The server's id, @<base64>.ed25519.
    #[arg(long)]
    server_key: Option<PublicKey>,
    /// Network key, hex or base64 (default: SSB's main network).
    #[arg(long, default_value_t = NetworkKey::SSB_MAIN)]
    network_key: NetworkKey,
    /// ed25519 seed, 64 hex digits (default: random).
    #[arg(long, value_parser = parse_seed)]
    seed: Option<[u8; 32]>,
    /// Bytes the client sends.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: u64,
}

fn main() {
    let args = Args::parse();
    let keypair = match args.seed {
        Some(seed) => Keypair::from_seed(seed),
        None => Keypair::generate(&mut OsRng),
    };
    let mut config = HandshakeConfig::new(keypair);
    config.network_key = args.network_key;
    config.crypto = common::crypto_from_env();
    let config = Arc::new(config);

    let result = match (&args.listen, &args.connect, args.server_key) {
        (Some(addr), _, _) => serve(addr, config),
        (_, Some(addr), Some(server_key)) => echo_client(addr, config, server_key, args.bytes),
        _ => unreachable!("clap requires --listen or --connect with --server-key"),
    };
    if let Err(e) = result {
        eprintln!("shs-echo: {e}");
        std::process::exit(1);
    }
}

fn serve(addr: &str, config: Arc<HandshakeConfig>) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!(
        "listening {} {}",
        listener.local_addr()?,
        config.keypair.public()
    );
    std::io::stdout().flush()?;
    let clock = Arc::new(Clock::start());
    for stream in listener.incoming() {
        let (stream, config, clock) = (stream?, config.clone(), clock.clone());
        // One thread per connection: a stalled peer does not hold up the others.
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match echo_connection(stream, config, &clock) {
                Ok(client) => eprintln!("{peer}: {client} said goodbye"),
                Err(e) => eprintln!("{peer}: dropped: {e}"),
            }
        });
    }
    Ok(())
}

/// Server side of one connection: handshake, then echo until goodbye.
fn echo_connection(
    mut stream: TcpStream,
    config: Arc<HandshakeConfig>,
    clock: &Clock,
) -> Result<PublicKey> {
    let mut handshake = ServerHandshake::new(config, &mut OsRng, clock.now());
    let session = run_handshake(&mut handshake, &mut stream, clock, |h, _| h.authorize(true))?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;

    let (mut sealer, mut opener) = session.boxstream();
    opener.handle_input(&session.early_data)?;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = opener.poll_event() {
            match event {
                BoxEvent::Data(bytes) => sealer.seal(&bytes, &mut out)?,
                BoxEvent::Goodbye => sealer.goodbye(&mut out)?,
            }
        }
        stream.write_all(&out)?;
        out.clear();
        if opener.is_finished() {
            return Ok(session.peer);
        }
        match stream.read(&mut buf)? {
            0 => opener.handle_eof()?,
            n => opener.handle_input(&buf[..n])?,
        }
    }
}

fn echo_client(
    addr: &str,
    config: Arc<HandshakeConfig>,
    server_key: PublicKey,
    total: u64,
) -> Result<()> {
    let clock = Clock::start();
    let mut handshake = ClientHandshake::new(config, server_key, &mut OsRng, clock.now())?;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let session = run_handshake(&mut handshake, &mut stream, &clock, |_, _| {
        unreachable!("clients are not asked to authorize")
    })?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let (mut sealer, mut opener) = session.boxstream();

    // Write on one thread, read and check on this one, so neither side's
    // buffers fill while the other waits.
    let mut writer = stream.try_clone()?;
    let sending = std::thread::spawn(move || -> Result<()> {
        let mut data = Pattern::new(total);
        let mut out = BytesMut::with_capacity(70 * 1024);
        let mut write_size = 1;
        while let Some(chunk) = data.next_chunk(write_size) {
            sealer.seal(chunk, &mut out)?;
            writer.write_all(&out)?;
            out.clear();
            write_size = write_size * 7 % 65_521 + 1; // varied sizes, up to 64 KiB
        }
        sealer.goodbye(&mut out)?;
        writer.write_all(&out)?;
        Ok(())
    });

    let mut expected = Pattern::new(total);
    opener.handle_input(&session.early_data)?;
    check_echo(&mut stream, &mut opener, &mut expected)?;
    sending
        .join()
        .map_err(|_| "the sending thread panicked")??;
    eprintln!("echoed {total} bytes through {server_key}");
    Ok(())
}

/// Reads the echo until the server's goodbye, comparing it with `expected`.
fn check_echo(stream: &mut TcpStream, opener: &mut Opener, expected: &mut Pattern) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        while let Some(event) = opener.poll_event() {
            match event {
                BoxEvent::Data(bytes) => {
                    let want = expected.next_chunk(bytes.len()).unwrap_or_default();
                    if want != &bytes[..] {
                        return Err(format!("echo differs within bytes {received}..").into());
                    }
                    received += bytes.len() as u64;
                }
                BoxEvent::Goodbye if expected.remaining() == 0 => return Ok(()),
                BoxEvent::Goodbye => {
                    return Err(
                        format!("goodbye after {received} of {} bytes", expected.total).into(),
                    )
                }
            }
        }
        match stream.read(&mut buf)? {
            0 => opener.handle_eof()?,
            n => opener.handle_input(&buf[..n])?,
        }
    }
}

/// Pseudo-random bytes (xorshift), the same on both ends of a check.
struct Pattern {
    total: u64,
    produced: u64,
    state: u64,
    block: Vec<u8>,
}

impl Pattern {
    fn new(total: u64) -> Self {
        Pattern {
            total,
            produced: 0,
            state: 0x9E37_79B9_7F4A_7C15,
            block: Vec::new(),
        }
    }

    fn remaining(&self) -> u64 {
        self.total - self.produced
    }

    /// The next `len` bytes (fewer at the end), or `None` when all are out.
    fn next_chunk(&mut self, len: usize) -> Option<&[u8]> {
        let len = len.min(usize::try_from(self.remaining()).unwrap_or(usize::MAX));
        if len == 0 {
            return None;
        }
        self.block.clear();
        self.block.extend((0..len).map(|_| {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.state as u8
        }));
        self.produced += len as u64;
        Some(&self.block)
    }
}
