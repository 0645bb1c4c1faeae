//! plugboard on smol / async-io: the broker as a server, and the plugin API.
//!
//! The same shape as `plugboard-tokio`: [`Server`] binds unix and TCP
//! listeners and serves the broker; [`Plugin`] connects to one, registers,
//! lists, watches, and opens and takes [`Channel`]s (relayed, over a
//! socketpair, or over direct TCP). Channels are futures-io's `AsyncRead +
//! AsyncWrite`; watches, incoming channels and connection events are
//! [`Stream`](futures_core::Stream)s. Every task runs on smol's global
//! executor ([`smol::spawn`]); timers are async-io's.
//!
//! Both are `plugboard-runtime`'s, written once for every runtime; this
//! crate is its [`Runtime`](plugboard_runtime::Runtime) for smol.

#![warn(missing_docs)]

mod rt;

/// systemd socket activation (the listeners [`Server::bind_with`] takes).
pub use plugboard_runtime::activation;
/// muxrpc on a channel ([`Channel::muxrpc`]).
pub use plugboard_runtime::muxrpc;
pub use plugboard_runtime::{
    default_crypto, Addr, BadAddr, Clock, ConnectionEvent, Feed, Path, PluginError, Reconnect,
    ServeError, Stats, WatchEvent,
};
pub use rt::{Smol, SmolIo, SmolSleep, SmolTask};

/// The broker as a server on smol: see [`plugboard_runtime::Server`].
pub type Server = plugboard_runtime::Server<Smol>;
/// A connection to the broker: see [`plugboard_runtime::Plugin`].
pub type Plugin = plugboard_runtime::Plugin<Smol>;
/// How to connect: see [`plugboard_runtime::PluginBuilder`].
pub type PluginBuilder = plugboard_runtime::PluginBuilder<Smol>;
/// A channel to another plugin, futures-io's `AsyncRead + AsyncWrite`.
pub type Channel = plugboard_runtime::Channel<Smol>;
/// A channel someone opens to this plugin.
pub type Incoming = plugboard_runtime::Incoming<Smol>;
/// Changes of the connection ([`Plugin::events`]).
pub type EventStream = Feed<ConnectionEvent>;
/// A watch's snapshot and changes ([`Plugin::watch`]).
pub type WatchStream = Feed<WatchEvent>;
/// Channels others open to this plugin ([`Plugin::incoming`]).
pub type IncomingStream = plugboard_runtime::Offers<Smol>;
