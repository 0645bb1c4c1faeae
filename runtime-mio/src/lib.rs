//! plugboard on a hand-rolled [mio] event loop: the reference for embedding
//! `plugboard-core` in a loop you already have.
//!
//! - [`Server`]: the broker on one thread, around one `mio::Poll`.
//! - [`PluginConn`]: a plugin's connection to the broker, as one more
//!   source in *your* `mio::Poll`, beside your other sockets. It drives the
//!   core's [`Session`](plugboard_core::session::Session); you make the
//!   requests and handle its events yourself (`examples/embed.rs`).
//!   Socketpair ends for direct channels arrive with it ([`PluginConn::take_fd`]).
//! - [`DirectTcp`]: a direct channel over TCP, dialed by the opener or
//!   accepted by the target, as one more source too.
//!
//! Both do the same three things around a sans-IO state machine, and
//! nothing else: move bytes between sockets and the machine, read the
//! clock, and own sockets (descriptors for direct channels included). Every
//! protocol decision is the core's.

#![warn(missing_docs)]

mod direct;
mod io;
mod plugin;
mod server;

pub use direct::DirectTcp;
pub use plugboard_core::addr::{Addr, BadAddr};
/// systemd socket activation (the listeners [`Server::bind_with`] takes).
pub use plugboard_os::activation;
pub use plugboard_os::{default_crypto, Clock};
pub use plugin::{ConnectError, PluginConn, SessionMut};
pub use server::{ServeError, Server, StopHandle};
