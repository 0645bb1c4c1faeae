//! plugboard's OS glue, written once for every runtime adapter (tokio,
//! smol and the hand-rolled mio loop alike). The socket calls here do not
//! wait: each is one non-blocking system call or a few, and says
//! `WouldBlock` when the socket is not ready (binding may wait for a few
//! system calls of another broker binding beside it; [`accept_forever`]
//! waits by a sleep the runtime gives it). Each runtime wraps these calls in its own
//! way of waiting for readiness (tokio's `async_io`, async-io's
//! `read_with`/`write_with`, a `mio::Poll`), so the glue depends on no
//! async runtime.
//!
//! - [`WriteQueue`]: chunks to write, some carrying a descriptor, sent in
//!   vectored writes; a chunk with a descriptor goes in a `sendmsg` of its own.
//! - [`fdpass`]: reading bytes with the descriptors that came along;
//!   [`FdTokens`] keeps a plugin's under the session's tokens.
//! - [`stream`]: a stream socket's own calls (accept, connect, half-close).
//! - [`SocketPairs`]: the broker's socketpair ends on their way out.
//! - [`poll_event`]: the broker's events, less those every runtime carries
//!   out the same (socketpairs, log lines).
//! - [`Listener`]: binding unix and TCP listeners by the broker's rules
//!   (a unix socket file is mode 0600 from the moment it exists; a stale
//!   one is replaced, a live one refused) or adopting passed ones.
//! - [`activation`]: systemd socket activation (`LISTEN_FDS`).
//! - [`Strangers`]: places for handshakes not done yet, per source and in
//!   total, held until each handshake is over.
//! - [`AcceptPause`]: what to do when `accept` fails (out of descriptors:
//!   pause, and say so once, rather than spin).
//! - [`default_crypto`]: the crypto provider this build chose (libsodium
//!   with the `libsodium` feature).

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod accept;
pub mod activation;
mod broker;
mod clock;
mod crypto;
mod fd_tokens;
pub mod fdpass;
mod listen;
pub mod log_limit;
mod pairs;
mod strangers;
pub mod stream;
mod write_queue;

pub use accept::{accept_forever, AcceptPause};
pub use broker::{
    log_entry, new_broker, new_hub, poll_event, BrokerFace, ConnEvent, ReloadHandle,
    LAST_WORDS_GRACE, SHUTDOWN_GRACE,
};
pub use clock::Clock;
pub use crypto::default_crypto;
pub use fd_tokens::{FdTokens, MAX_UNCLAIMED_FDS};
pub use listen::{
    bind_all_with, bind_tcp, Bound, Listener, ServeError, Socket, SocketFile, BACKLOG,
};
pub use pairs::SocketPairs;
pub use plugboard_core::addr::{Addr, BadAddr};
pub use strangers::{Place, Strangers};
pub use write_queue::{send as send_vectored, WriteQueue};
