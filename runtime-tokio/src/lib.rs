//! plugboard on tokio: the broker as a server, and the plugin API.
//!
//! This crate only moves bytes, reads the clock and owns sockets; every
//! protocol decision is made by `plugboard-core`'s state machines.

mod addr;
mod clock;
mod io;
pub mod plugin;
mod rt;

pub use addr::{Addr, BadAddr};
pub use clock::Clock;
/// systemd socket activation (the listeners [`Server::bind_with`] takes).
pub use plugboard_os::activation;
pub use plugboard_runtime::ServeError;
pub use plugin::{
    Channel, ConnectionEvent, Incoming, Plugin, PluginBuilder, PluginError, Reconnect, WatchEvent,
};
pub use rt::{Tokio, TokioIo, TokioTask};

/// The broker as a server on tokio: see [`plugboard_runtime::Server`].
pub type Server = plugboard_runtime::Server<Tokio>;
