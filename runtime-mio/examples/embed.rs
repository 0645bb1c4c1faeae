//! Embedding a plugin in an event loop that also does something else: one
//! `mio::Poll` serves a plain TCP echo AND runs a plugin registered as
//! "clock", which answers every channel opened to it with the time (over
//! the relay, or over a socketpair when the opener asked for a direct
//! channel) and then ends it.
//!
//! Run: `cargo run -p plugboard-mio --example embed -- SECRET BROKER [ECHO_ADDR]`
//! (e.g. `~/.plugboard/secret unix:$XDG_RUNTIME_DIR/plugboard.sock
//! 127.0.0.1:7007`), then `plugboard connect clock </dev/null` (add `--direct`
//! for a socketpair) and `nc 127.0.0.1 7007`.
//!
//! The pattern, for any loop: register the [`PluginConn`] beside your own
//! sources, give it its readiness events, let its deadline bound your poll,
//! and after every turn drain its events. Nothing here blocks, and nothing
//! here knows the protocol: the core's `Session` does.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use plugboard_core::control::{ChannelId, ChannelPath, IncomingPath, Name};
use plugboard_core::session::{Recv, SessionConfig, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_mio::{Addr, PluginConn};

const PLUGIN: Token = Token(0);
const ECHO: Token = Token(1);
/// Echo clients take the tokens from here on.
const FIRST_CLIENT: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let secret = args.next().ok_or("SECRET?")?;
    let broker: Addr = args.next().ok_or("BROKER?")?.parse()?;
    let echo_addr = args.next().unwrap_or_else(|| "127.0.0.1:7007".into());

    // The broker runs with the same secret (as SSB's local clients assume).
    let keypair = plugboard_core::keys::secret_file::read(secret.as_ref())?;
    let config = SessionConfig::new(HandshakeConfig::new(keypair.clone()), keypair.public());
    let mut plugin = PluginConn::connect(&broker, config)?;

    let mut poll = Poll::new()?;
    // Both interests: the plugin writes when the socket has room again.
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry().register(&mut plugin, PLUGIN, both)?;
    let mut echo = TcpListener::bind(echo_addr.parse()?)?;
    poll.registry()
        .register(&mut echo, ECHO, Interest::READABLE)?;
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut next_client = FIRST_CLIENT;

    let mut events = Events::with_capacity(256);
    loop {
        // The plugin's next deadline bounds the wait (with no timers of our
        // own, it is the whole timeout).
        poll.poll(&mut events, plugin.timeout())?;
        for event in events.iter() {
            match event.token() {
                PLUGIN => plugin.handle_ready(event),
                ECHO => loop {
                    // Edge-triggered: accept until there is nobody left.
                    match echo.accept() {
                        Ok((mut stream, _)) => {
                            let token = Token(next_client);
                            next_client += 1;
                            poll.registry().register(&mut stream, token, both)?;
                            clients.insert(token, Client::new(stream));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                },
                token => {
                    let done = clients.get_mut(&token).is_none_or(|c| !c.serve());
                    if done {
                        if let Some(mut client) = clients.remove(&token) {
                            poll.registry().deregister(&mut client.stream)?;
                        }
                    }
                }
            }
        }
        // The plugin's side of the turn: timers, then everything it says.
        plugin.handle_timeout();
        while let Some(event) = plugin.poll_event() {
            if let Some(reason) = clock(&mut plugin, event)? {
                eprintln!("the broker connection ended: {reason}");
                return Ok(());
            }
        }
    }
}

/// The plugin's answers to what its session says; `Some(reason)` once the
/// connection is over. Calls through `session_mut()` are written out when
/// the guard it returns is dropped.
fn clock(
    plugin: &mut PluginConn,
    event: SessionEvent,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    match event {
        // Hello done: take the name.
        SessionEvent::Ready { .. } => {
            let mut session = plugin.session_mut();
            let now = session.now();
            session.register(now, Name::new("clock")?, false, None)?;
        }
        SessionEvent::Registered { .. } => eprintln!("registered as clock"),
        SessionEvent::Failed { message, .. } => return Err(message.into()),
        SessionEvent::Incoming { channel, path, .. } => {
            let mut session = plugin.session_mut();
            let now = session.now();
            session.accept(now, channel)?;
            drop(session);
            // A relayed channel is usable at once; one that may go direct
            // waits for its path (next arm).
            if path == IncomingPath::Relay {
                answer_relayed(plugin, channel)?;
            }
        }
        SessionEvent::ChannelPath { channel, path, fd } => match (path, fd) {
            (ChannelPath::SocketPair, Some(token)) => {
                // The broker handed us a socketpair end: the channel is a
                // plain socket between the two plugins now, ours to use (or
                // to register in the poll, for anything longer than this).
                if let Some(fd) = plugin.take_fd(token) {
                    let mut socket = std::os::unix::net::UnixStream::from(fd);
                    socket.write_all(now_text().as_bytes())?;
                } // dropped: the opener reads the end
            }
            _ => answer_relayed(plugin, channel)?,
        },
        // Whatever the opener sends is read and let go: its credit goes back.
        SessionEvent::Readable { channel } => {
            let mut session = plugin.session_mut();
            while let Ok(Recv::Data(_)) = session.recv(channel, usize::MAX) {}
        }
        // The application lets an ended channel go.
        SessionEvent::Reset { channel, .. } | SessionEvent::ChannelClosed { channel } => {
            plugin.session_mut().close_channel(channel)
        }
        SessionEvent::Closed { reason, .. } => return Ok(Some(reason)),
        _ => {}
    }
    Ok(None)
}

/// Sends the time on a relayed channel, then ends our side of it.
fn answer_relayed(
    plugin: &mut PluginConn,
    channel: ChannelId,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut session = plugin.session_mut();
    // A new channel's window is far larger than one line; a longer answer
    // would send what `send` takes and the rest on `SessionEvent::Writable`.
    session.send(channel, Bytes::from(now_text()))?;
    session.finish(channel)?;
    Ok(())
}

fn now_text() -> String {
    let since = std::time::UNIX_EPOCH.elapsed().unwrap_or_default();
    format!("{} seconds since 1970\n", since.as_secs())
}

/// An echo client: what it sent and we have not written back yet.
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    fn new(stream: TcpStream) -> Self {
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads what there is, writes back what the socket takes; `false` once
    /// the client is gone. Holds at most 64 KiB: beyond that it stops
    /// reading until the client reads its echo.
    fn serve(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            // Write back until done or the socket is full (then, and only
            // then, WRITABLE comes: readiness is edge-triggered).
            while !self.pending.is_empty() {
                match self.stream.write(&self.pending) {
                    Ok(0) => return false,
                    Ok(n) => drop(self.pending.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            if self.pending.len() >= 64 * 1024 {
                return true; // WRITABLE brings us back, and we read on
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }
}
