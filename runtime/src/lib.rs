//! plugboard's async layer, written once: the broker as a server and the
//! plugin API, generic over a small [`Runtime`] trait (spawn, timers, and
//! readiness of non-blocking sockets), as quinn writes its endpoint once
//! over its own. It depends on no runtime: `plugboard-tokio` and
//! `plugboard-smol` implement the trait and re-export what is here.
//!
//! This crate only moves bytes, reads the clock and owns sockets (and looks
//! host names up, each on a short-lived thread of its own, at most eight
//! at once); every protocol decision is made by `plugboard-core`'s state
//! machines.

#![warn(missing_docs)]

pub mod muxrpc;
mod notify;
pub mod plugin;
mod rt;
mod server;
mod stream;

pub use plugboard_core::addr::{Addr, BadAddr};
/// systemd socket activation (the listeners [`Server::bind_with`] takes).
pub use plugboard_os::activation;
pub use plugboard_os::{default_crypto, Clock};
pub use plugin::{
    Channel, ConnectionEvent, Feed, Incoming, MonitorItem, Offers, Path, Plugin, PluginBuilder,
    PluginError, Reconnect, Stats, WatchEvent,
};
pub use rt::{io, Interest, Io, Op, Runtime, Task};
pub use server::{ServeError, Server};
pub use stream::{resolve, Stream};
