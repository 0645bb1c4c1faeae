//! A plugin's received descriptors, each under the token its session knows
//! it by, until the application takes it: the same table for every runtime.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use plugboard_core::session::Session;
use plugboard_core::Instant;

/// Descriptors from the broker beyond this many, unclaimed, end the
/// connection: a broker does not send more than it announces.
pub const MAX_UNCLAIMED_FDS: usize = 64;

/// The descriptors a plugin received, each under the token its session
/// knows it by (`Opened`, `ChannelPath`), until the application takes it.
#[derive(Debug, Default)]
pub struct FdTokens {
    fds: HashMap<u64, OwnedFd>,
    /// Tokens are never reused: events already out may still name old ones.
    next: u64,
}

impl FdTokens {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `session` what was read, and the descriptors that came with
    /// it (each under a new token; they belong to frames in `input`, in
    /// order). An error ends the connection: the session is to hear it
    /// ([`Session::handle_socket_error`]).
    pub fn hand_over(
        &mut self,
        session: &mut Session,
        now: Instant,
        input: &[u8],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(), String> {
        if fds.is_empty() {
            let _ = session.handle_input(now, input);
            return Ok(());
        }
        let last = fds.len() - 1;
        for (i, fd) in fds.drain(..).enumerate() {
            if self.fds.len() >= MAX_UNCLAIMED_FDS {
                return Err("the broker sent descriptors nobody asked for".into());
            }
            let token = self.next;
            self.next += 1;
            self.fds.insert(token, fd);
            // The session queues the tokens; the bytes go with the last.
            let bytes = if i == last { input } else { &[][..] };
            let _ = session.handle_input_with_fd(now, bytes, token);
        }
        Ok(())
    }

    /// Takes the descriptor under `token`.
    pub fn take(&mut self, token: u64) -> Option<OwnedFd> {
        self.fds.remove(&token)
    }

    /// Drops every descriptor not taken (our copies close).
    pub fn clear(&mut self) {
        self.fds.clear();
    }
}
