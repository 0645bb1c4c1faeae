//! plugboard on tokio: the broker as a server, and the plugin API.
//!
//! Both are `plugboard-runtime`'s, written once for every runtime; this
//! crate is its [`Runtime`](plugboard_runtime::Runtime) for tokio, and
//! [`Channel`] as tokio's `AsyncRead + AsyncWrite`.

#![warn(missing_docs)]

mod channel;
mod rt;

pub use channel::Channel;
/// systemd socket activation (the listeners [`Server::bind_with`] takes).
pub use plugboard_runtime::activation;
/// muxrpc on a channel ([`Channel::muxrpc`]).
pub use plugboard_runtime::muxrpc;
pub use plugboard_runtime::{
    default_crypto, Addr, BadAddr, Clock, ConnectionEvent, Feed, Offers, PluginError, Reconnect,
    ServeError, WatchEvent,
};
pub use rt::{Tokio, TokioIo, TokioTask};

/// The plugin API's types, by their plain names.
pub mod plugin {
    pub use crate::{Channel, Incoming, Plugin, PluginBuilder};
    pub use plugboard_runtime::{
        ConnectionEvent, MonitorItem, Path, PluginError, Reconnect, Stats, WatchEvent,
    };
}

/// The broker as a server on tokio: see [`plugboard_runtime::Server`].
pub type Server = plugboard_runtime::Server<Tokio>;
/// A connection to the broker: see [`plugboard_runtime::Plugin`].
pub type Plugin = plugboard_runtime::Plugin<Tokio>;
/// How to connect: see [`plugboard_runtime::PluginBuilder`].
pub type PluginBuilder = plugboard_runtime::PluginBuilder<Tokio>;
/// A channel someone opens to this plugin.
pub type Incoming = plugboard_runtime::Incoming<Tokio>;
