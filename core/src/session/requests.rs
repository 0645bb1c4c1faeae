//! Requests to the broker: each gets an id, a deadline, and (in
//! `messages.rs`) exactly one answer assembled from its pages.

use super::*;

impl Session {
    /// Takes `name`; with `wait`, queues for it if taken.
    /// `direct_addr` (`tcp:HOST:PORT`) is where direct channels may reach us.
    pub fn register(
        &mut self,
        now: Instant,
        name: Name,
        wait: bool,
        direct_addr: Option<String>,
    ) -> Result<RequestId, SessionError> {
        if direct_addr
            .as_ref()
            .is_some_and(|a| a.len() > control::MAX_TEXT)
        {
            return Err(SessionError::TooLong("direct address"));
        }
        let registration = link::Registration {
            name,
            wait,
            direct_addr,
        };
        let pending = Pending::Register(registration.clone());
        self.request(now, pending, |request| registration.message(request))
    }

    /// Who is registered.
    pub fn list(&mut self, now: Instant) -> Result<RequestId, SessionError> {
        self.request(now, Pending::List(Vec::new()), |request| Message::List {
            request,
        })
    }

    /// A snapshot of who is registered, then every change.
    pub fn watch(&mut self, now: Instant) -> Result<RequestId, SessionError> {
        self.request(now, Pending::Watch(Vec::new()), |request| Message::Watch {
            request,
        })
    }

    /// Stop watching. A new connection does not restore the watch, even
    /// if this call fails (during an outage, say).
    pub fn unwatch(&mut self, now: Instant) -> Result<RequestId, SessionError> {
        self.restore.watching = false;
        self.request(now, Pending::Unwatch, |request| Message::Unwatch {
            request,
        })
    }

    /// Every [`crate::control::MonitorEvent`] from now on (the policy's
    /// `monitor` right), of one key and one name if given:
    /// [`SessionEvent::Done`], then [`SessionEvent::Monitor`]s. A new
    /// connection does not monitor until asked again.
    pub fn monitor(
        &mut self,
        now: Instant,
        key: Option<PublicKey>,
        name: Option<Name>,
    ) -> Result<RequestId, SessionError> {
        self.ensure_usable()?;
        if !self.link.has_feature(FEATURE_MONITOR) {
            return Err(SessionError::Unsupported("monitoring (feature bit 3)"));
        }
        self.request(now, Pending::Monitor, |request| Message::Monitor {
            request,
            key,
            name,
        })
    }

    /// Who holds what.
    pub fn stats(&mut self, now: Instant) -> Result<RequestId, SessionError> {
        let parts = Pending::Stats(Vec::new(), Vec::new(), Vec::new(), Vec::new());
        self.request(now, parts, |request| Message::Stats { request })
    }

    /// Opens a channel to `name`. The channel id is ours at once; it is usable
    /// after [`SessionEvent::Opened`].
    pub fn open(
        &mut self,
        now: Instant,
        name: Name,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> Result<(RequestId, ChannelId), SessionError> {
        if protocol.len() > control::MAX_SHORT_TEXT {
            return Err(SessionError::TooLong("protocol"));
        }
        if metadata.len() > control::MAX_METADATA {
            return Err(SessionError::TooLong("metadata"));
        }
        self.ensure_usable()?;
        if !self.wire_mut()?.mux.can_open_local() {
            return Err(SessionError::ChannelIdsExhausted);
        }
        let channel = self.wire_mut()?.mux.open_local();
        self.channels
            .insert(channel, channels::Channel::new(ChannelStage::Opening));
        // The broker answers an open within its own deadline: wait that long more.
        let open_timeout = self.link.limits().map_or(Duration::ZERO, |l| {
            Duration::from_millis(u64::from(l.open_timeout_ms))
        });
        let pending = Pending::Open(channel);
        let request =
            self.request_as(now, open_timeout, false, pending, |request| Message::Open {
                request,
                channel,
                direct,
                name,
                protocol: protocol.to_owned(),
                metadata,
            })?;
        Ok((request, channel))
    }

    /// An application's request: refused while a new connection restores
    /// the name and the watch.
    pub(super) fn request(
        &mut self,
        now: Instant,
        pending: Pending,
        message: impl FnOnce(RequestId) -> Message,
    ) -> Result<RequestId, SessionError> {
        self.ensure_usable()?;
        self.request_as(now, Duration::ZERO, false, pending, message)
    }

    /// Sends a request, answered by `request_timeout` plus `more`;
    /// `restore` marks the session's own.
    pub(super) fn request_as(
        &mut self,
        now: Instant,
        more: Duration,
        restore: bool,
        pending: Pending,
        message: impl FnOnce(RequestId) -> Message,
    ) -> Result<RequestId, SessionError> {
        self.ensure_ready()?;
        self.now = now;
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.send_message(&message(request))?;
        let deadline = now + more + self.config.request_timeout;
        let r = Request {
            pending,
            deadline,
            restore,
        };
        self.requests.insert(request, r);
        Ok(request)
    }

    /// Ready, and not restoring.
    fn ensure_usable(&self) -> Result<(), SessionError> {
        self.ensure_ready()?;
        match self.outage {
            Some(_) => Err(SessionError::Reconnecting),
            None => Ok(()),
        }
    }

    pub(super) fn send_message(&mut self, message: &Message) -> Result<(), SessionError> {
        let Some(wire) = self.link.wire_mut() else {
            // Why not: closed, reconnecting, or not there yet.
            return Err(self.ensure_ready().err().unwrap_or(SessionError::NotReady));
        };
        control::encode(message, &mut self.scratch);
        wire.mux.send_control(&self.scratch);
        self.scratch.clear();
        Ok(())
    }
}
