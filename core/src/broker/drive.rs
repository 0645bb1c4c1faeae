//! Driving a connection's port, written once for every runtime: its input
//! (plaintext from its link) and its output, with relayed data and credit
//! going from one port to the other directly, and only what needs the
//! hub's books handed to the hub. [`Broker`](super::Broker) drives it on
//! one thread; a threaded runtime drives each connection's port from that
//! connection's tasks, with the hub behind a lock it takes only in
//! [`PortDriver::with_hub`].

use crate::time::Instant;

use super::opens::decode_pair_tag;
use super::port::{HubInput, PortHandle, Step};
use super::{Hub, Transmit};

/// What a port needs from whoever drives it.
pub trait PortDriver {
    /// Runs `f` on the hub (under its lock, if it has one), then carries
    /// out the events it made.
    fn with_hub<R>(&mut self, f: impl FnOnce(&mut Hub) -> R) -> R;
    /// `port`'s connection has output: its writer must look. Called at most
    /// once until [`PortHandle::poll_transmit`] returns `None` (a writer
    /// that stops before that comes back by itself), and possibly before
    /// the writer waits: the runtime latches it.
    fn wake(&mut self, port: &PortHandle);
    /// Whether [`PortDriver::write_through`] can write to `port`'s
    /// connection (its link is plain, and the driver has its socket).
    fn can_write_through(&mut self, port: &PortHandle) -> bool {
        let _ = port;
        false
    }
    /// Writes `parts`, in order, to `port`'s connection now, if nothing is
    /// waiting to be written there before them: returns how many bytes its
    /// socket took (0 if none; the port queues what is left). Called
    /// holding `port`'s lock, so it must not wait for one of its own.
    fn write_through(&mut self, port: &PortHandle, parts: &[&[u8]]) -> usize {
        let _ = (port, parts);
        0
    }
    /// `port` (a legacy connection's) takes input again
    /// ([`PortHandle::input_room`]): its runtime reads the socket again.
    fn resume(&mut self, port: &PortHandle) {
        let _ = port;
    }
}

impl PortHandle {
    /// Plaintext mux bytes from the connection's link, arrived at `now`.
    /// What the broker keeps of them it copies.
    pub fn handle_input(&self, now: Instant, mut input: &[u8], driver: &mut impl PortDriver) {
        self.lock().note_input(now, input.len());
        match self.is_bridge() {
            true => self.bridge_input(Some(now), input, driver),
            false => self.run(Some(now), &mut input, driver),
        }
    }

    /// Runs the port's input (and the events its own actions left) until
    /// both are used up. `now` is `None` while taking output (which no
    /// runtime times): the hub takes the latest time it was given.
    pub(super) fn run(
        &self,
        now: Option<Instant>,
        input: &mut &[u8],
        driver: &mut impl PortDriver,
    ) {
        loop {
            let step = self.lock().step(input);
            let Some(step) = step else {
                break;
            };
            self.apply(now, step, driver);
        }
        // Input can queue output of its own (a PONG, a WINDOW), counted
        // under the control queue's bound like any answer.
        let (wake, slow) = {
            let mut port = self.lock();
            (port.take_wake(), port.is_slow())
        };
        if slow {
            driver.with_hub(|hub| hub.handle_port(now, self.conn(), HubInput::Slow));
        }
        if wake {
            driver.wake(self);
        }
    }

    pub(super) fn apply(&self, now: Option<Instant>, step: Step<'_>, driver: &mut impl PortDriver) {
        match step {
            Step::Deliver { to, channel, bytes } => {
                let (grant, wake) = {
                    let through = driver.can_write_through(&to);
                    let mut port = to.lock();
                    let mut write = |parts: &[&[u8]]| driver.write_through(&to, parts);
                    let grant = port.deliver(channel, bytes, through.then_some(&mut write));
                    (grant, port.take_wake())
                };
                if wake {
                    driver.wake(&to);
                }
                if let Some(grant) = grant {
                    to.apply(now, grant, driver);
                }
            }
            Step::Finish { to, channel } => {
                let (give_back, wake) = {
                    let mut port = to.lock();
                    (port.finish(channel), port.take_wake())
                };
                if wake {
                    driver.wake(&to);
                }
                if give_back {
                    let input = HubInput::Credit(channel);
                    driver.with_hub(|hub| hub.handle_port(now, to.conn(), input));
                }
            }
            Step::Grant {
                to,
                channel,
                increment,
            } => {
                if to.is_bridge() {
                    // No WINDOW goes to a legacy client: its socket is read again.
                    return to.grant_bridge(now, channel, increment, driver);
                }
                let (wake, slow) = {
                    let mut port = to.lock();
                    port.grant(channel, increment);
                    (port.take_wake(), port.is_slow())
                };
                if wake {
                    driver.wake(&to);
                }
                // A WINDOW frame counts under the sender's control queue
                // bound like any answer.
                if slow {
                    driver.with_hub(|hub| hub.handle_port(now, to.conn(), HubInput::Slow));
                }
            }
            Step::Hub(input) => driver.with_hub(|hub| hub.handle_port(now, self.conn(), input)),
        }
    }

    /// The next plaintext for the connection: for its link to seal, unless
    /// the link is plain (then it goes out as it is). `None` once there is
    /// nothing (the next [`PortDriver::wake`] says when there is again).
    pub fn poll_transmit(&self, driver: &mut impl PortDriver) -> Option<Transmit> {
        // A watcher that fell behind gets its resync once it has read most
        // of its queue.
        if self.lock().resync_ready() {
            driver.with_hub(|hub| hub.resync_port(self.conn()));
        }
        if self.is_bridge() {
            return self.poll_bridge_transmit(driver);
        }
        let (data, tag, was_data) = self.lock().poll_transmit()?;
        let fd = tag.map(decode_pair_tag);
        if let Some((pair, end)) = fd {
            // The end is the runtime's to send now.
            driver.with_hub(|hub| hub.release_fd(pair, end));
        }
        let now = None;
        // Credit held back waits for channel data to drain: retried when a
        // data chunk went out, not for every PONG or control message (a
        // peer's pings would each cost a pass over every waiting channel).
        if was_data {
            let waiting = self.lock().waiting();
            for channel in waiting {
                let step = self.lock().credit_step(channel);
                if let Some(step) = step {
                    self.apply(now, step, driver);
                }
            }
        }
        // Sending a FIN can retire a channel: its route goes with it.
        if self.lock().mux.has_events() {
            self.run(now, &mut &[][..], driver);
        }
        Some(Transmit { data, fd })
    }

    /// [`PortHandle::poll_transmit`] for a legacy connection: the payloads
    /// alone, each one credit given back as the client's (see `bridge.rs`).
    fn poll_bridge_transmit(&self, driver: &mut impl PortDriver) -> Option<Transmit> {
        let out = {
            let mut port = self.lock();
            let channel = port.bridge.as_ref().map(|b| b.channel)?;
            port.poll_bridge_transmit().map(|out| (channel, out))
        };
        let Some((channel, (data, credit))) = out else {
            // Taking the last frames can retire the channel.
            if self.lock().mux.has_events() {
                self.run(None, &mut &[][..], driver);
            }
            return None;
        };
        self.bridge_window(channel, credit, driver);
        Some(Transmit { data, fd: None })
    }
}
