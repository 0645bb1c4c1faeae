//! The legacy route (PROTOCOL §11): SSB clients as they are. On a legacy
//! listener the broker is an SSB server under the route's own identity and
//! network key. Once message 3 proved a client's key, the client is offered
//! to the plugin that holds the route's name as an Incoming (protocol
//! `muxrpc`); message 4 goes only if that plugin accepts, and the client's
//! box-stream then carries the channel as a bare byte stream (`bridge.rs`).
//! Its reject, its silence past the route's offer timeout, or nobody
//! holding the name close the socket with nothing more sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand_core::CryptoRngCore;

use crate::budget::Source;
use crate::control::{ChannelId, ErrorCode, Name};
use crate::keys::PublicKey;
use crate::mux::{Mux, Side};
use crate::shs::HandshakeConfig;
use crate::time::Instant;

use super::bridge::Bridge;
use super::connection::Stage;
use super::door::{Origin, Peer};
use super::opens::Opener;
use super::port::PortHandle;
use super::{Cause, ConnId, Event, Hub, Link};

/// The one channel of a legacy connection, as its port's mux numbers it
/// (an id the client side would have picked).
const BRIDGED: ChannelId = 1;

/// What the broker does with the clients of one legacy listener.
#[derive(Clone)]
pub struct LegacyRoute {
    /// The identity SSB clients dial, and the network key they use (SSB's
    /// main network unless the clients were configured otherwise).
    pub handshake: Arc<HandshakeConfig>,
    /// The plugin they are offered to: whoever holds this name.
    pub name: Name,
    /// How long that plugin has to accept a client (which waits for
    /// message 4 meanwhile: ssb-client gives up after 3 s).
    pub offer_timeout: Duration,
    /// A connection with no traffic either way for this long is closed:
    /// muxrpc has no pings (secret-stack's default is 600 s). Output is
    /// seen when the timer looks, so a connection that only receives may
    /// last up to twice this.
    pub idle_timeout: Duration,
    /// No handshake and no box-stream (multiserver's `noauth`, as
    /// ssb-server's `~/.ssb/socket`): for a unix socket only its owner can
    /// reach, whose clients are the route's identity itself.
    pub noauth: bool,
}

impl std::fmt::Debug for LegacyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyRoute")
            .field("key", &self.handshake.keypair.public())
            .field("name", &self.name)
            .field("offer_timeout", &self.offer_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("noauth", &self.noauth)
            .finish_non_exhaustive()
    }
}

impl LegacyRoute {
    /// A route to `name` under `handshake`, with the default timeouts.
    pub fn new(handshake: Arc<HandshakeConfig>, name: Name) -> Self {
        LegacyRoute {
            handshake,
            name,
            offer_timeout: Duration::from_millis(1500),
            idle_timeout: Duration::from_secs(600),
            noauth: false,
        }
    }
}

/// How a connection's [`Link`] starts ([`Hub::link_plan`]).
pub enum LinkPlan {
    /// shs1 as the server with this identity and network key; box-stream
    /// follows if `boxed`.
    Handshake {
        /// The identity and network key.
        config: Arc<HandshakeConfig>,
        /// Box-stream after the handshake.
        boxed: bool,
    },
    /// No handshake: the peer is taken to be this key.
    NoAuth(PublicKey),
}

impl LinkPlan {
    /// The link, with an ephemeral key from `rng` if it handshakes.
    pub fn start(self, rng: &mut impl CryptoRngCore, now: Instant) -> Link {
        match self {
            LinkPlan::Handshake { config, boxed } => Link::new(config, rng, now, boxed),
            LinkPlan::NoAuth(key) => Link::noauth(key),
        }
    }
}

/// Legacy connections per source address, after authentication: any key
/// that completes the handshake gets this far, so one address cannot hold
/// every connection the broker takes.
#[derive(Default)]
pub(super) struct LegacySources {
    by_source: HashMap<Source, usize>,
    total: usize,
}

/// Why a legacy connection was not counted in.
enum Full {
    Source,
    All,
}

impl LegacySources {
    fn add(&mut self, source: Source, per_source: usize, total: usize) -> Result<(), Full> {
        if self.total >= total {
            return Err(Full::All);
        }
        let n = self.by_source.entry(source).or_insert(0);
        if *n >= per_source {
            return Err(Full::Source);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// Sources with a legacy connection.
    pub(super) fn len(&self) -> usize {
        self.by_source.len()
    }

    pub(super) fn remove(&mut self, source: Source) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }
}

impl Hub {
    /// The legacy route of the listener `origin` came through, if it is one.
    pub(super) fn legacy_route(&self, origin: &Origin) -> Option<&LegacyRoute> {
        self.config.legacy.get(&origin.listener)
    }

    /// How to make the link of a socket just accepted from `origin` (see
    /// [`Hub::accept`]): shs1 as the broker, or as a legacy route's
    /// identity; none at all on a `noauth` route.
    pub fn link_plan(&self, origin: &Origin) -> LinkPlan {
        match self.legacy_route(origin) {
            Some(route) if route.noauth => LinkPlan::NoAuth(route.handshake.keypair.public()),
            Some(route) => LinkPlan::Handshake {
                config: route.handshake.clone(),
                boxed: true,
            },
            None => LinkPlan::Handshake {
                config: self.handshake_config(),
                boxed: self.is_boxed(origin),
            },
        }
    }

    /// Whether `conn` came through a legacy listener.
    pub(super) fn is_legacy(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| self.config.legacy.contains_key(&c.origin.listener))
    }

    /// A legacy client proved `key`: it is offered to the route's plugin,
    /// and the verdict waits for its answer (`None`). `Some(false)`: it
    /// was refused now, and the connection dropped.
    pub(super) fn offer_legacy(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: PublicKey,
    ) -> Option<bool> {
        let c = &self.conns[&conn];
        let origin = c.origin;
        let route = self.legacy_route(&origin).expect("a legacy connection");
        let (name, timeout, noauth) = (route.name.clone(), route.offer_timeout, route.noauth);
        let limits = &self.config.limits;
        let (per_source, total) = (
            limits.max_legacy_connections_per_source,
            limits.max_legacy_connections,
        );
        let usage = self.usage.entry(key).or_default();
        let source = origin.rate_source();
        // The socket's mode keeps others out of a noauth socket; its
        // peer's uid says so again.
        let owner = self.config.owner_uid;
        let refusal = if noauth && owner.is_some() && origin.uid() != owner {
            let reason = format!("{} may not use a noauth socket", origin.describe());
            Some((ErrorCode::NotPermitted, reason))
        } else if usage.connections >= limits.max_connections_per_key {
            let n = usage.connections;
            Some((
                ErrorCode::TooManyConnections,
                format!("{key} already has {n} connections"),
            ))
        } else {
            match self.legacy_sources.add(source, per_source, total) {
                Ok(()) => None,
                Err(Full::Source) => {
                    let reason = format!(
                        "{} already has {per_source} legacy connections",
                        origin.describe()
                    );
                    Some((ErrorCode::TooManyConnections, reason))
                }
                Err(Full::All) => {
                    let reason = format!("{total} legacy connections, the most the broker takes");
                    Some((ErrorCode::TooManyConnections, reason))
                }
            }
        };
        if let Some((code, reason)) = refusal {
            self.forget_key_if_idle(&key);
            self.drop_connection(now, conn, Some(key), Cause::Code(code), reason);
            return Some(false);
        }
        let usage = self.usage.entry(key).or_default();
        usage.connections += 1;

        let mut mux = Mux::new(Side::Listener, self.config.limits.mux_config());
        mux.open_remote(BRIDGED)
            .expect("the first id the client side has");
        let mut port = self.new_port(mux, now);
        port.bridge = Some(Bridge::new(BRIDGED));
        let c = self.conns.get_mut(&conn).expect("checked above");
        c.key = Some(key);
        c.legacy_source = Some(source);
        c.port = Some(PortHandle::new(conn, port));

        let opener = Opener {
            conn,
            channel: BRIDGED,
            key,
            request: None,
        };
        let metadata = legacy_metadata(&origin);
        let protocol = "muxrpc".to_owned();
        match self.offer(now, opener, &name, protocol, metadata, false, timeout) {
            Ok(()) => {
                // The offer's own timer answers for the plugin; this one
                // only backs it up (the handshake's may be sooner).
                let backstop = timeout + self.config.limits.handshake_timeout;
                self.set_deadline(conn, Some(now + backstop));
                None
            }
            Err((code, reason)) => {
                self.drop_connection(now, conn, Some(key), Cause::Code(code), reason);
                Some(false)
            }
        }
    }

    /// The plugin accepted a legacy client: the runtime hands its link the
    /// verdict ([`Event::Authorized`]), which makes message 4.
    pub(super) fn legacy_accepted(&mut self, conn: ConnId) {
        self.events.push_back(Event::Authorized(conn));
    }

    /// A legacy connection's handshake is over: its bridge carries the
    /// channel the plugin accepted, and only the idle timer runs.
    pub(super) fn legacy_established(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.stage = Stage::Legacy;
        let origin = c.origin;
        self.door.release(&origin);
        // What the plugin sent before the runtime had this port (its
        // writer could not be found then) is looked at now.
        if let Some(port) = &c.port {
            port.lock().notified = false;
        }
        self.wake(conn);
        let idle = self.legacy_route(&origin).map(|r| r.idle_timeout);
        self.set_deadline(conn, idle.map(|idle| now + idle));
        // The plugin may have ended the channel while message 4 was made.
        self.bridge_gone(conn);
    }

    /// A legacy connection's idle timer: closed after its route's idle
    /// timeout with no traffic either way.
    pub(super) fn on_legacy_timer(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let idle = self.config.legacy[&c.origin.listener].idle_timeout;
        let Some(port) = c.port.clone() else {
            return;
        };
        let (last_input, bytes_out) = {
            let port = port.lock();
            (port.last_input, port.bytes_out)
        };
        // Output counts as traffic: seen moving since the last look, it
        // is as recent as this look.
        if bytes_out != c.legacy_bytes_out {
            c.legacy_bytes_out = bytes_out;
            c.legacy_output_at = now;
        }
        let last = last_input.max(c.legacy_output_at);
        if now >= last + idle {
            let reason = format!("no traffic for {idle:?}");
            self.close(now, conn, ErrorCode::IdleTimeout, reason);
        } else {
            self.set_deadline(conn, Some(last + idle));
        }
    }

    /// The client's stream ended cleanly (box-stream's goodbye, or the
    /// socket's end on a box boundary, which ssb-client does after its
    /// muxrpc goodbye): the channel's FIN, and the connection stays for
    /// what the plugin still sends.
    pub(super) fn legacy_eof(&mut self, now: Instant, conn: ConnId) {
        if let Some(port) = self.port(conn) {
            port.handle_eof(now, self);
        }
    }

    /// A legacy connection whose channel is gone (closed both ways, reset,
    /// or its orphan done) is closed: it has nothing else to carry.
    pub(super) fn bridge_gone(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !matches!(c.stage, Stage::Legacy) {
            return;
        }
        let gone = c
            .port
            .as_ref()
            .is_some_and(|port| !port.lock().mux.contains(BRIDGED));
        if gone {
            self.legacy_done.push(conn);
        }
    }
}

/// What the plugin is told of a legacy client beside its key: the
/// transport and the client's address, as JSON.
fn legacy_metadata(origin: &Origin) -> Bytes {
    let text = match origin.peer {
        Peer::Tcp(ip) => format!(r#"{{"legacy":true,"transport":"tcp","addr":"{ip}"}}"#),
        Peer::Unix(Some(cred)) => {
            format!(r#"{{"legacy":true,"transport":"unix","uid":{}}}"#, cred.uid)
        }
        Peer::Unix(None) => r#"{"legacy":true,"transport":"unix"}"#.to_owned(),
    };
    Bytes::from(text)
}
