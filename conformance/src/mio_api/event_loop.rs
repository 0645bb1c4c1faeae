//! A plugin's thread: one `mio::Poll` with the `PluginConn`, the direct
//! listener and the direct connections in it, as an embedder's loop has
//! them; the scenario's commands come in through a `mio::Waker`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use plugboard_core::budget::StrangerLimits;
use plugboard_core::control::{
    ChannelId, ChannelPath, ErrorCode, IncomingPath, Name, OpenedPath, RequestId,
};
use plugboard_core::direct::DirectEvent;
use plugboard_core::session::{Recv, SessionConfig, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::PublicKey;
use plugboard_mio::{Addr, Clock, DirectTcp, PluginConn};
use plugboard_os::{Place, Strangers};
use tokio::sync::{mpsc, oneshot};

use super::pipe::{Broken, End, Feed, Pipe, PIPE_BYTES};
use super::{Command, Inbox, MioIncoming, MioPlugin, Opened, Reply, Shared};
use crate::api::{Connect, Error, Path, Watch};
use crate::broker_keys;

const WAKER: Token = Token(0);
const PLUGIN: Token = Token(1);
const LISTENER: Token = Token(2);
/// Direct connections are numbered from here.
const FIRST_DIRECT: usize = 3;
const BOTH: Interest = Interest::READABLE.add(Interest::WRITABLE);
/// Changes a watch holds unless the scenario says otherwise.
const WATCH_QUEUE: usize = 1024;

/// Starts a plugin's thread; ready once connected (and registered).
pub(super) async fn start(how: Connect) -> Result<MioPlugin, Error> {
    let poll = Poll::new().map_err(|e| Error::Other(e.to_string()))?;
    let waker = mio::Waker::new(poll.registry(), WAKER).map_err(|e| Error::Other(e.to_string()))?;
    let shared = Arc::new(Shared {
        waker,
        woken: Default::default(),
        inbox: Default::default(),
    });
    let (connected, ready) = oneshot::channel();
    let (offers, offered) = mpsc::unbounded_channel();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("mio-plugin-{}", how.seed))
        .spawn(
            move || match Loop::connect(how, poll, thread_shared, offers) {
                Ok(mut plugin) => plugin.run(connected),
                Err(e) => drop(connected.send(Err(e))),
            },
        )
        .map_err(|e| Error::Other(e.to_string()))?;
    match ready.await {
        Ok(Ok(())) => Ok(MioPlugin {
            shared,
            offers: tokio::sync::Mutex::new(offered),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Other("the plugin's thread died".into())),
    }
}

enum Pending {
    Register,
    List(Reply<Vec<plugboard_core::control::Member>>),
    Stats(Reply<Vec<plugboard_core::control::KeyStats>>),
    Watch(Reply<Arc<Feed>>),
    Unwatch(Reply<()>),
    Open(Reply<Opened>),
}

mod direct;

use direct::{Direct, Listener, Role};

struct Loop {
    poll: Poll,
    shared: Arc<Shared>,
    /// `None` once the connection is over (or the plugin dropped).
    conn: Option<PluginConn>,
    clock: Clock,
    handshake: Arc<HandshakeConfig>,
    /// Name, wait, direct address: registered once the broker says hello.
    registration: Option<(Name, bool, Option<String>)>,
    connected: Option<Reply<()>>,
    offers: Option<mpsc::UnboundedSender<MioIncoming>>,
    listener: Option<Listener>,
    watch_queue: usize,
    requests: HashMap<RequestId, Pending>,
    /// Offers not answered yet, with the path they wait for.
    offered: HashMap<ChannelId, IncomingPath>,
    /// Offers reset before the scenario answered them.
    reset_offers: HashMap<ChannelId, (ErrorCode, String)>,
    /// Accepted channels waiting for their path, and their openers.
    accepts: HashMap<ChannelId, (Reply<Opened>, PublicKey)>,
    relayed: HashMap<ChannelId, Arc<Pipe>>,
    directs: HashMap<Token, Direct>,
    next_token: usize,
    feed: Option<Arc<Feed>>,
    dropped: bool,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

fn other(e: impl ToString) -> Error {
    Error::Other(e.to_string())
}

impl Loop {
    /// Connects (blocking, as `PluginConn::connect` does) and binds the
    /// direct listener.
    fn connect(
        how: Connect,
        poll: Poll,
        shared: Arc<Shared>,
        offers: mpsc::UnboundedSender<MioIncoming>,
    ) -> Result<Loop, Error> {
        let addr: Addr = how.addr.parse().map_err(other)?;
        let handshake = HandshakeConfig {
            network_key: how.network_key,
            ..crate::handshake(how.keypair())
        };
        let listener = match &how.direct_listen {
            Some(listen) => Some(Listener::bind(
                listen,
                &poll,
                &handshake,
                how.direct_limits.unwrap_or_default(),
            )?),
            None => None,
        };
        let direct_addr = match (&how.direct_advertise, &listener) {
            (Some(advertised), _) => Some(advertised.clone()),
            (None, Some(l)) => Some(format!("tcp:{}", l.socket.local_addr().map_err(other)?)),
            (None, None) => None,
        };
        let registration = match &how.name {
            Some(name) => Some((Name::new(name).map_err(other)?, how.wait, direct_addr)),
            None => None,
        };
        let config = SessionConfig::new(handshake.clone(), broker_keys().public());
        let mut conn = PluginConn::connect(&addr, config).map_err(|e| match e {
            plugboard_mio::ConnectError::Unreachable { addr, source } => {
                Error::Unreachable(format!("{addr}: {source}"))
            }
            e => other(e),
        })?;
        poll.registry()
            .register(&mut conn, PLUGIN, BOTH)
            .map_err(other)?;
        Ok(Loop {
            poll,
            shared,
            conn: Some(conn),
            clock: Clock::start(),
            handshake: Arc::new(handshake),
            registration,
            connected: None,
            offers: Some(offers),
            listener,
            watch_queue: how.watch_queue.unwrap_or(WATCH_QUEUE),
            requests: HashMap::new(),
            offered: HashMap::new(),
            reset_offers: HashMap::new(),
            accepts: HashMap::new(),
            relayed: HashMap::new(),
            directs: HashMap::new(),
            next_token: FIRST_DIRECT,
            feed: None,
            dropped: false,
            closed: None,
        })
    }

    fn run(&mut self, connected: Reply<()>) {
        self.connected = Some(connected);
        let mut events = Events::with_capacity(256);
        // Until the plugin is dropped and its direct channels are over.
        while !(self.dropped && self.conn.is_none() && self.directs.is_empty()) {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
                continue;
            }
            for event in &events {
                match event.token() {
                    WAKER => {}
                    PLUGIN => {
                        if let Some(conn) = &mut self.conn {
                            conn.handle_ready(event);
                        }
                    }
                    LISTENER => self.accept_strangers(),
                    token => {
                        if let Some(d) = self.directs.get_mut(&token) {
                            d.tcp.handle_ready(event);
                        }
                    }
                }
            }
            if let Some(conn) = &mut self.conn {
                conn.handle_timeout();
            }
            for d in self.directs.values_mut() {
                d.tcp.handle_timeout();
            }
            self.shared.woken.store(false, Ordering::Release);
            self.take_commands();
            // Until nothing more happens: an answer to one event can make
            // another (a direct connection's success, the session's reply).
            while self.session_events()
                | self.direct_events()
                | self.relay_bytes()
                | self.direct_bytes()
            {}
        }
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        let conn = self.conn.as_ref().and_then(|c| c.timeout());
        let directs = self.directs.values().filter_map(|d| d.tcp.timeout());
        conn.into_iter().chain(directs).min()
    }

    // ── commands ──────────────────────────────────────────────────────

    fn take_commands(&mut self) {
        let Inbox { commands, dropped } = std::mem::take(&mut *self.shared.inbox.lock().unwrap());
        if dropped {
            self.hang_up("the plugin was dropped");
            self.dropped = true;
            // Strangers and dials for nobody go too; live channels stay.
            self.directs.retain(|_, d| matches!(d.role, Role::Piped(_)));
            self.listener = None;
        }
        for command in commands {
            self.command(command);
        }
    }

    fn command(&mut self, command: Command) {
        let Some(conn) = &mut self.conn else {
            let why = self.closed.as_deref().unwrap_or("the connection is over");
            return refuse(command, why);
        };
        let mut session = conn.session_mut();
        let now = session.now();
        let (request, pending) = match command {
            Command::List(reply) => (session.list(now), Pending::List(reply)),
            Command::Stats(reply) => (session.stats(now), Pending::Stats(reply)),
            Command::Watch(reply) => (session.watch(now), Pending::Watch(reply)),
            Command::Unwatch(reply) => {
                // The scenario's stream ends at once, as the runtimes' do.
                if let Some(feed) = self.feed.take() {
                    feed.end();
                }
                (session.unwatch(now), Pending::Unwatch(reply))
            }
            Command::Open {
                name,
                protocol,
                metadata,
                direct,
                reply,
            } => {
                let name = match Name::new(&name) {
                    Ok(name) => name,
                    Err(e) => return drop(reply.send(Err(other(e)))),
                };
                let opened = session.open(now, name, &protocol, metadata, direct);
                (opened.map(|(request, _)| request), Pending::Open(reply))
            }
            Command::Accept {
                channel,
                peer,
                reply,
            } => {
                if let Some((code, reason)) = self.reset_offers.remove(&channel) {
                    return drop(reply.send(Err(Error::Reset(code, reason))));
                }
                let path = self.offered.remove(&channel);
                if let Err(e) = session.accept(now, channel) {
                    return drop(reply.send(Err(other(e))));
                }
                drop(session);
                match path {
                    Some(IncomingPath::Relay) => {
                        let pipe = self.relay(channel);
                        let _ = reply.send(Ok(Opened::Pipe(pipe, Path::Relayed, peer)));
                    }
                    _ => drop(self.accepts.insert(channel, (reply, peer))),
                }
                return;
            }
            Command::Reject { channel, reason } => {
                self.offered.remove(&channel);
                self.reset_offers.remove(&channel);
                let _ = session.reject(channel, &reason);
                return;
            }
        };
        match request {
            Ok(request) => drop(self.requests.insert(request, pending)),
            Err(e) => fail(pending, other(e)),
        }
    }

    /// A relayed channel's pipe, new.
    fn relay(&mut self, channel: ChannelId) -> Arc<Pipe> {
        let pipe = Arc::new(Pipe::default());
        self.relayed.insert(channel, pipe.clone());
        pipe
    }

    // ── the session's events ──────────────────────────────────────────

    fn session_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.conn.as_mut().and_then(|c| c.poll_event()) {
            any = true;
            self.session_event(event);
        }
        if let (Some(feed), Some(conn)) = (&self.feed, &self.conn) {
            feed.resync(|| conn.session().watch_view());
        }
        any
    }

    fn session_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Ready { .. } => match self.registration.take() {
                Some((name, wait, direct_addr)) => {
                    let conn = self.conn.as_mut().expect("events come from it");
                    let mut session = conn.session_mut();
                    let now = session.now();
                    let registered = session.register(now, name, wait, direct_addr);
                    drop(session);
                    match registered {
                        Ok(request) => drop(self.requests.insert(request, Pending::Register)),
                        Err(e) => self.connected(Err(other(e))),
                    }
                }
                None => self.connected(Ok(())),
            },
            SessionEvent::Registered { request, .. } => {
                if let Some(Pending::Register) = self.requests.remove(&request) {
                    self.connected(Ok(()));
                }
            }
            SessionEvent::Failed {
                request,
                code,
                message,
            } => match self.requests.remove(&request) {
                Some(Pending::Register) => self.connected(Err(Error::Refused(code, message))),
                Some(pending) => fail(pending, Error::Refused(code, message)),
                None => {}
            },
            SessionEvent::RequestLost { request, .. } => {
                if let Some(pending) = self.requests.remove(&request) {
                    fail(
                        pending,
                        Error::Disconnected("the connection was lost".into()),
                    );
                }
            }
            SessionEvent::Members { request, members } => {
                if let Some(Pending::List(reply)) = self.requests.remove(&request) {
                    let _ = reply.send(Ok(members));
                }
            }
            SessionEvent::Stats { request, keys, .. } => {
                if let Some(Pending::Stats(reply)) = self.requests.remove(&request) {
                    let _ = reply.send(Ok(keys));
                }
            }
            SessionEvent::Done { request } => {
                if let Some(Pending::Unwatch(reply)) = self.requests.remove(&request) {
                    let _ = reply.send(Ok(()));
                }
            }
            SessionEvent::Watching {
                request, members, ..
            } => {
                if let Some(Pending::Watch(reply)) = self.requests.remove(&request) {
                    let feed = Arc::new(Feed::new(self.watch_queue, members));
                    // A watch started again replaces the one before.
                    if let Some(old) = self.feed.replace(feed.clone()) {
                        old.end();
                    }
                    let _ = reply.send(Ok(feed));
                }
            }
            SessionEvent::Resynced { seq, members } => {
                if let Some(feed) = &self.feed {
                    feed.offer(Watch::Resync { seq, members });
                }
            }
            SessionEvent::Presence { seq, presence } => {
                if let Some(feed) = &self.feed {
                    feed.offer(Watch::Change { seq, presence });
                }
            }
            SessionEvent::Incoming {
                channel,
                from_key,
                protocol,
                metadata,
                path,
                ..
            } => self.offer(channel, from_key, protocol, metadata, path),
            SessionEvent::Opened {
                request,
                channel,
                peer,
                path,
                fd,
            } => {
                let Some(Pending::Open(reply)) = self.requests.remove(&request) else {
                    drop(self.take_fd(fd)); // nobody asked: it closes
                    return;
                };
                match path {
                    OpenedPath::Relay => {
                        let pipe = self.relay(channel);
                        let _ = reply.send(Ok(Opened::Pipe(pipe, Path::Relayed, peer)));
                    }
                    OpenedPath::SocketPair => {
                        let _ = reply.send(self.take_fd(fd).map(|fd| Opened::Fd(fd, peer)));
                    }
                    OpenedPath::Dial { addr, token } => {
                        let handshake = self.handshake.clone();
                        match DirectTcp::dial(&addr, handshake, peer, token, self.clock) {
                            Ok(tcp) => {
                                let role = Role::Dialing {
                                    channel,
                                    peer,
                                    reply,
                                };
                                self.add_direct(tcp, role)
                            }
                            Err(_) => self.fall_back(channel, peer, reply),
                        }
                    }
                }
            }
            SessionEvent::ChannelPath { channel, path, fd } => {
                let fd = self.take_fd(fd);
                let Some((reply, peer)) = self.accepts.remove(&channel) else {
                    return; // a socketpair for a channel that is gone: closed
                };
                let opened = match path {
                    ChannelPath::Relay => {
                        let pipe = self.relay(channel);
                        Ok(Opened::Pipe(pipe, Path::Relayed, peer))
                    }
                    ChannelPath::SocketPair => fd.map(|fd| Opened::Fd(fd, peer)),
                };
                let _ = reply.send(opened);
            }
            SessionEvent::Reset {
                channel,
                code,
                reason,
            } => {
                if let Some((reply, _)) = self.accepts.remove(&channel) {
                    let _ = reply.send(Err(Error::Reset(code, reason)));
                } else if self.offered.remove(&channel).is_some() {
                    self.reset_offers.insert(channel, (code, reason));
                }
                // A relayed channel's reset is read from the session.
            }
            SessionEvent::ChannelLost {
                channel, unread, ..
            } => {
                if let Some(pipe) = self.relayed.remove(&channel) {
                    let mut st = pipe.lock();
                    unread.into_iter().for_each(|b| st.deliver(b));
                    st.cut_off("the connection was lost".into());
                }
            }
            SessionEvent::Closed { reason, .. } => self.hang_up(&reason),
            // No reconnection is configured; readiness is looked at anyway.
            SessionEvent::NameAcquired { .. }
            | SessionEvent::Readable { .. }
            | SessionEvent::Writable { .. }
            | SessionEvent::ChannelClosed { .. }
            | SessionEvent::Lost { .. }
            | SessionEvent::AttemptFailed { .. }
            | SessionEvent::Reconnected { .. } => {}
            // This API does not monitor.
            SessionEvent::Monitor(_) => {}
        }
    }

    fn connected(&mut self, result: Result<(), Error>) {
        let failed = result.is_err();
        if let Some(reply) = self.connected.take() {
            // Nobody waits (the scenario gave up): the plugin is not wanted.
            if reply.send(result).is_err() || failed {
                self.hang_up("not connected");
                self.dropped = true;
            }
        }
    }

    fn offer(
        &mut self,
        channel: ChannelId,
        from_key: PublicKey,
        protocol: String,
        metadata: bytes::Bytes,
        path: IncomingPath,
    ) {
        let incoming = MioIncoming {
            channel,
            from_key,
            protocol,
            metadata,
            plugin: self.shared.clone(),
            answered: false,
        };
        self.offered.insert(channel, path);
        if let Some(offers) = &self.offers {
            // Unsent (nobody takes offers any more), it is refused on drop.
            let _ = offers.send(incoming);
        }
    }

    fn take_fd(&mut self, fd: Option<u64>) -> Result<std::os::fd::OwnedFd, Error> {
        let conn = self.conn.as_mut().expect("events come from it");
        fd.and_then(|token| conn.take_fd(token))
            .ok_or_else(|| Error::Other("a socketpair without its descriptor".into()))
    }

    /// The dial failed: the relayed channel it kept is the channel.
    fn fall_back(&mut self, channel: ChannelId, peer: PublicKey, reply: Reply<Opened>) {
        if let Some(conn) = &mut self.conn {
            let _ = conn.session_mut().direct_failed(channel);
        }
        let pipe = self.relay(channel);
        let _ = reply.send(Ok(Opened::Pipe(pipe, Path::Relayed, peer)));
    }

    /// The connection is over: what waited on it fails.
    fn hang_up(&mut self, reason: &str) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn);
        drop(conn);
        self.closed = Some(reason.to_owned());
        self.connected(Err(Error::Disconnected(reason.to_owned())));
        let gone = || Error::Disconnected(reason.to_owned());
        self.requests.drain().for_each(|(_, p)| fail(p, gone()));
        self.accepts
            .drain()
            .for_each(|(_, (r, _))| drop(r.send(Err(gone()))));
        for (_, pipe) in self.relayed.drain() {
            pipe.lock()
                .cut_off(format!("the connection is over: {reason}"));
        }
        self.offers = None;
        if let Some(feed) = self.feed.take() {
            feed.end();
        }
    }

    // ── channel bytes ─────────────────────────────────────────────────

    /// Moves what the scenario wrote to the session, and what arrived to
    /// the scenario, as far as the bounds allow; lets go of what the
    /// scenario dropped.
    fn relay_bytes(&mut self) -> bool {
        let mut any = false;
        if let Some(conn) = &mut self.conn {
            let mut session = conn.session_mut();
            self.relayed.retain(|&channel, pipe| {
                let mut st = pipe.lock();
                if let Some(reason) = st.reset.take() {
                    // At once, both ways; then let go, as a dropped one.
                    let _ = session.reset(channel, ErrorCode::Cancelled, &reason);
                    session.close_channel(channel);
                    any = true;
                    return false;
                }
                any |= relay_out(&mut session, channel, &mut st);
                any |= relay_in(&mut session, channel, &mut st);
                // Let go once what it wrote went to the session.
                let done = st.dropped && (st.outbound.is_empty() || st.broken.is_some());
                if done {
                    session.close_channel(channel);
                }
                !done
            });
        }
        any
    }
}

/// A relayed channel's outgoing bytes, as far as its credit goes.
fn relay_out(
    session: &mut plugboard_core::session::Session,
    channel: ChannelId,
    st: &mut super::pipe::PipeState,
) -> bool {
    let mut sent = false;
    while st.broken.is_none() {
        let Some(mut bytes) = st.take_outbound() else {
            break;
        };
        match session.send(channel, bytes.clone()) {
            Ok(n) => {
                sent |= n > 0;
                let rest = bytes.split_off(n);
                if !rest.is_empty() {
                    st.put_back(rest);
                    break;
                }
            }
            Err(e) => st.cut_off(e.to_string()),
        }
    }
    // (A dropped channel is finished by `close_channel`.)
    let finishing = st.finish && !st.dropped && !st.finish_sent;
    if finishing && st.outbound.is_empty() && st.broken.is_none() {
        st.finish_sent = true;
        sent = true;
        let _ = session.finish(channel);
    }
    if sent {
        st.wake_writer();
    }
    sent
}

/// A relayed channel's incoming bytes, as many as the pipe holds.
fn relay_in(
    session: &mut plugboard_core::session::Session,
    channel: ChannelId,
    st: &mut super::pipe::PipeState,
) -> bool {
    let mut got = false;
    while st.end.is_none() && st.inbound_len < PIPE_BYTES {
        match session.recv(channel, PIPE_BYTES - st.inbound_len) {
            Ok(Recv::Data(bytes)) if !bytes.is_empty() => st.deliver(bytes),
            Ok(Recv::Data(_) | Recv::Blocked) => break,
            Ok(Recv::Finished) => st.end(End::Fin),
            Ok(Recv::Reset { code, reason }) => st.break_off(format!("{code:?}: {reason}")),
            Err(e) => st.cut_off(e.to_string()),
        }
        got = true;
    }
    st.starved = st.inbound_len >= PIPE_BYTES;
    got
}

/// A command that came after the connection ended.
fn refuse(command: Command, why: &str) {
    let gone = || Error::Disconnected(why.to_owned());
    match command {
        Command::List(reply) => drop(reply.send(Err(gone()))),
        Command::Stats(reply) => drop(reply.send(Err(gone()))),
        Command::Watch(reply) => drop(reply.send(Err(gone()))),
        Command::Unwatch(reply) => drop(reply.send(Err(gone()))),
        Command::Open { reply, .. } | Command::Accept { reply, .. } => {
            drop(reply.send(Err(gone())))
        }
        Command::Reject { .. } => {}
    }
}

fn fail(pending: Pending, error: Error) {
    match pending {
        Pending::Register => {}
        Pending::List(reply) => drop(reply.send(Err(error))),
        Pending::Stats(reply) => drop(reply.send(Err(error))),
        Pending::Watch(reply) => drop(reply.send(Err(error))),
        Pending::Unwatch(reply) => drop(reply.send(Err(error))),
        Pending::Open(reply) => drop(reply.send(Err(error))),
    }
}
