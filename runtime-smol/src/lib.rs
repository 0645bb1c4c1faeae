//! plugboard on smol / async-io: the broker as a server, and the plugin API.
//!
//! The same shape as `plugboard-tokio`: [`Server`] binds unix and TCP
//! listeners and serves the broker; [`Plugin`] connects to one, registers,
//! lists, watches, and opens and takes [`Channel`]s (relayed, over a
//! socketpair, or over direct TCP). Channels are futures-io's `AsyncRead +
//! AsyncWrite`; watches and incoming channels are
//! [`Stream`](futures_core::Stream)s. Every task runs on smol's global
//! executor ([`smol::spawn`]); timers are async-io's.
//!
//! This crate only moves bytes, reads the clock and owns sockets; every
//! protocol decision is made by `plugboard-core`'s state machines.

#![warn(missing_docs)]

mod addr;
mod clock;
mod io;
mod notify;
pub mod plugin;
mod rt;

pub use addr::{Addr, BadAddr};
pub use clock::Clock;
/// systemd socket activation (the listeners [`Server::bind_with`] takes).
pub use plugboard_os::activation;
pub use plugboard_runtime::ServeError;
pub use plugin::{
    Channel, ConnectionEvent, EventStream, Incoming, IncomingStream, Path, Plugin, PluginBuilder,
    PluginError, Reconnect, Stats, WatchEvent, WatchStream,
};
pub use rt::{Smol, SmolIo, SmolSleep, SmolTask};

/// The broker as a server on smol: see [`plugboard_runtime::Server`].
pub type Server = plugboard_runtime::Server<Smol>;
