//! The socket side of a [`PluginConn`]: reading into the session (with the
//! descriptors that come along), writing what it has.

use std::io;

use plugboard_core::Instant;

use super::{PluginConn, MAX_UNCLAIMED_FDS, READ_SIZE, WRITE_BATCH};

impl PluginConn {
    /// Reads until the socket is drained: readiness is edge-triggered. The
    /// broker sends no more than the windows this side grants (and its own
    /// bound on control messages), so this ends soon even on a busy
    /// connection.
    pub(super) fn read(&mut self) {
        while !self.session.is_closed() {
            self.buf.reserve(READ_SIZE);
            let now = self.clock.now();
            match self
                .stream
                .read(&mut self.buf, READ_SIZE, Some(&mut self.received))
            {
                Ok(0) => self.session.handle_eof(now),
                Ok(_) => {
                    if let Err(reason) = self.hand_over(now) {
                        self.fail(reason);
                    }
                    self.buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail(format!("read failed: {e}")),
            }
        }
    }

    /// Gives the session what was read, and the descriptors that came with
    /// it (each under a token; they belong to frames in `buf`, in order).
    /// Errors end the session, whose `Closed` event says why.
    fn hand_over(&mut self, now: Instant) -> Result<(), String> {
        let fds = std::mem::take(&mut self.received);
        let last = fds.len().checked_sub(1);
        for (i, fd) in fds.into_iter().enumerate() {
            if self.fds.len() >= MAX_UNCLAIMED_FDS {
                return Err("the broker sent descriptors nobody asked for".into());
            }
            let token = self.next_fd;
            self.next_fd += 1;
            self.fds.insert(token, fd);
            // The session queues the tokens; the bytes go with the last.
            let input = if Some(i) == last { &self.buf[..] } else { &[] };
            let _ = self.session.handle_input_with_fd(now, input, token);
        }
        if last.is_none() {
            let _ = self.session.handle_input(now, &self.buf);
        }
        Ok(())
    }

    /// Writes what the session has, until it has nothing more or the socket
    /// is full (WRITABLE resumes). The rest stays in the session meanwhile.
    pub(super) fn flush(&mut self) {
        while self.writable && !self.shut {
            if self.queue.is_empty() {
                let mut taken = 0;
                while taken < WRITE_BATCH {
                    let Some(bytes) = self.session.poll_transmit() else {
                        break;
                    };
                    taken += bytes.len();
                    self.queue.push(bytes);
                }
                if self.queue.is_empty() {
                    if self.session.is_closed() {
                        self.shut_write();
                    }
                    return;
                }
            }
            match self.stream.flush(&mut self.queue) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) => self.fail(format!("write failed: {e}")),
            }
        }
    }

    /// The socket failed: the session is over.
    fn fail(&mut self, reason: String) {
        if !self.session.is_closed() {
            let _ = self.session.close(&reason);
            self.failed = Some(reason);
        }
        self.queue.clear();
        self.shut_write();
    }

    pub(super) fn shut_write(&mut self) {
        if !self.shut {
            self.shut = true;
            self.stream.shutdown_write();
        }
    }
}
