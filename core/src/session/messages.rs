//! What the broker says, message by message: answers matched to their
//! requests (pages gathered), watch events and resyncs checked in order,
//! incoming opens and channel paths. Each becomes a [`SessionEvent`], or a
//! [`SessionError::Protocol`] when the broker breaks the protocol.

use super::*;

impl Session {
    /// Adds a page (`add` says whether the request is of its kind); the
    /// whole answer once the last page is in.
    fn page(
        &mut self,
        request: RequestId,
        last: bool,
        add: impl FnOnce(&mut Pending) -> bool,
    ) -> Result<Option<Pending>, SessionError> {
        let max = self.config.max_reply_entries;
        let Some(pending) = self.requests.get_mut(&request).map(|r| &mut r.pending) else {
            return Err(SessionError::Protocol("a page for another request"));
        };
        if !add(pending) {
            return Err(SessionError::Protocol("a page for another request"));
        }
        if pending.entries() > max {
            return Err(SessionError::ReplyTooLarge(max));
        }
        match last {
            true => Ok(Some(self.take_request(request)?.pending)),
            false => Ok(None),
        }
    }

    /// Takes the request `request` answers; it is the one being answered
    /// (see [`Session::answering`]) until the next message.
    fn take_request(&mut self, request: RequestId) -> Result<Request, SessionError> {
        let r = self
            .requests
            .remove(&request)
            .ok_or(SessionError::Protocol("an answer to no request"))?;
        self.answering = Some((request, r.restore));
        Ok(r)
    }

    pub(super) fn on_message(&mut self, message: Message) -> Result<(), SessionError> {
        if let Link::Hello { .. } = self.link {
            let Message::BrokerHello {
                version,
                limits,
                features,
                ..
            } = message
            else {
                return Err(SessionError::Protocol(
                    "the broker's first message is not its hello",
                ));
            };
            if version != VERSION {
                return Err(SessionError::Protocol(
                    "the broker chose a version we do not speak",
                ));
            }
            if features & !self.config.features != 0 {
                return Err(SessionError::Protocol(
                    "the broker chose a feature we did not offer",
                ));
            }
            if limits.initial_window > self.config.max_window {
                // Every channel would take more than we let one hold.
                return Err(SessionError::Protocol(
                    "the broker's initial window is beyond our largest",
                ));
            }
            let (max_window, max_connection_window) =
                (self.config.max_window, self.config.max_connection_window);
            let wire = self.wire_mut()?;
            wire.mux.configure(MuxConfig {
                max_frame: crate::mux::DEFAULT_MAX_FRAME,
                initial_window: limits.initial_window,
                max_window: max_window.max(limits.initial_window),
                max_connection_window,
            });
            wire.mux.set_peer_max_frame(limits.max_frame);
            self.link.hello_done(self.now, limits, features);
            // On a new connection, `Reconnected` says when it is usable.
            if !std::mem::replace(&mut self.restore.was_ready, true) {
                self.events.push_back(SessionEvent::Ready {
                    broker: self.config.broker,
                    limits,
                });
            }
            if self.outage.is_some() {
                self.restore()?;
            }
            return Ok(());
        }
        let event = match message {
            Message::Error {
                request,
                code,
                message,
            } => {
                let r = self.take_request(request)?;
                if r.restore {
                    let what = match r.pending {
                        Pending::Register(_) => "name",
                        _ => "watch",
                    };
                    self.restore_refused(what, &message);
                    return Ok(());
                }
                if let Pending::Open(channel) = r.pending {
                    self.channels.remove(&channel);
                    self.wire_mut()?.mux.forget(channel);
                }
                SessionEvent::Failed {
                    request,
                    code,
                    message,
                }
            }
            Message::Ok { request } => {
                let r = self.take_request(request)?;
                match r.pending {
                    Pending::Unwatch => {
                        self.watch = None;
                        if let Some(conn) = self.link.conn_mut() {
                            conn.resync = None;
                        }
                    }
                    Pending::Monitor => {
                        if let Some(conn) = self.link.conn_mut() {
                            conn.monitoring = true;
                        }
                    }
                    _ => return Err(SessionError::Protocol("ok for a request that expects more")),
                }
                if r.restore {
                    // The session's own unwatch (see `Snapshot`).
                    self.check_restored();
                    return Ok(());
                }
                SessionEvent::Done { request }
            }
            Message::Registered { request, queued } => {
                let r = self.take_request(request)?;
                let Pending::Register(registration) = r.pending else {
                    return Err(SessionError::Protocol("registered for another request"));
                };
                // Granted: a new connection takes it again.
                self.restore.registration = Some(registration);
                self.events
                    .push_back(SessionEvent::Registered { request, queued });
                self.check_restored();
                return Ok(());
            }
            Message::NameAcquired { name } => SessionEvent::NameAcquired { name },
            Message::MonitorEvent(event) => {
                if !self.link.has_feature(FEATURE_MONITOR)
                    || !self.link.conn_mut().is_some_and(|c| c.monitoring)
                {
                    return Err(SessionError::Protocol("a monitor event without a monitor"));
                }
                SessionEvent::Monitor(event)
            }
            Message::ListPage {
                request,
                last,
                members,
            } => {
                let add = |p: &mut Pending| match p {
                    Pending::List(all) => {
                        all.extend(members);
                        true
                    }
                    _ => false,
                };
                let Some(Pending::List(members)) = self.page(request, last, add)? else {
                    return Ok(());
                };
                SessionEvent::Members { request, members }
            }
            Message::Snapshot {
                request,
                seq,
                last,
                members,
            } => {
                let add = |p: &mut Pending| match p {
                    Pending::Watch(all) => {
                        all.extend(members);
                        true
                    }
                    _ => false,
                };
                let Some(Pending::Watch(members)) = self.page(request, last, add)? else {
                    return Ok(());
                };
                if self.answering == Some((request, true)) && !self.restore.watching {
                    // The application let the watch go while it was being
                    // restored: it ends here, unseen.
                    let now = self.now;
                    let unwatch = |request| Message::Unwatch { request };
                    self.request_as(now, Duration::ZERO, true, Pending::Unwatch, unwatch)?;
                    return Ok(());
                }
                self.watch = Some(watch::WatchView::new(seq, &members));
                self.restore.watching = true;
                self.events.push_back(SessionEvent::Watching {
                    request,
                    seq,
                    members,
                });
                self.check_restored();
                return Ok(());
            }
            Message::Resync { seq, last, members } => {
                if !self.link.has_feature(FEATURE_WATCH_RESYNC) {
                    return Err(SessionError::Protocol("a resync we did not ask for"));
                }
                match self.watch.as_ref().map(|w| w.seq) {
                    Some(seen) if seq > seen => {}
                    Some(_) => return Err(SessionError::Protocol("a resync that goes back")),
                    None => return Err(SessionError::Protocol("a resync without a watch")),
                }
                let conn = self.link.conn_mut().ok_or(SessionError::NotReady)?;
                let (at, mut all) = conn.resync.take().unwrap_or((seq, Vec::new()));
                if at != seq {
                    return Err(SessionError::Protocol("resync pages of two numbers"));
                }
                all.extend(members);
                if all.len() > self.config.max_reply_entries {
                    return Err(SessionError::ReplyTooLarge(self.config.max_reply_entries));
                }
                if !last {
                    conn.resync = Some((seq, all));
                    return Ok(());
                }
                self.watch = Some(watch::WatchView::new(seq, &all));
                SessionEvent::Resynced { seq, members: all }
            }
            Message::PresenceEvent { seq, presence } => {
                if self.link.conn_mut().is_some_and(|c| c.resync.is_some()) {
                    return Err(SessionError::Protocol("a presence event inside a resync"));
                }
                let max = self.config.max_reply_entries;
                match self.watch.as_mut() {
                    Some(view) => view.apply(seq, &presence, max)?,
                    None => return Err(SessionError::Protocol("a presence event without a watch")),
                }
                SessionEvent::Presence { seq, presence }
            }
            Message::UidStatsPage { request, uids } => {
                if !self.link.has_feature(FEATURE_STATS_UIDS) {
                    return Err(SessionError::Protocol("uid stats we did not ask for"));
                }
                let add = |p: &mut Pending| match p {
                    Pending::Stats(all_uids, counters, keys, names)
                        if counters.is_empty() && keys.is_empty() && names.is_empty() =>
                    {
                        all_uids.extend(uids);
                        true
                    }
                    _ => false,
                };
                self.page(request, false, add)?;
                return Ok(());
            }
            Message::CounterPage { request, counters } => {
                if !self.link.has_feature(FEATURE_STATS_COUNTERS) {
                    return Err(SessionError::Protocol("counters we did not ask for"));
                }
                let add = |p: &mut Pending| match p {
                    Pending::Stats(_, all, keys, names)
                        if all.is_empty() && keys.is_empty() && names.is_empty() =>
                    {
                        all.extend(counters);
                        true
                    }
                    _ => false,
                };
                self.page(request, false, add)?;
                return Ok(());
            }
            Message::StatsPage {
                request,
                last,
                keys,
                names,
            } => {
                let add = |p: &mut Pending| match p {
                    Pending::Stats(_, _, all_keys, all_names) => {
                        all_keys.extend(keys);
                        all_names.extend(names);
                        true
                    }
                    _ => false,
                };
                let Some(Pending::Stats(uids, counters, keys, names)) =
                    self.page(request, last, add)?
                else {
                    return Ok(());
                };
                SessionEvent::Stats {
                    request,
                    uids,
                    counters,
                    keys,
                    names,
                }
            }
            Message::Incoming {
                channel,
                from_name,
                from_key,
                protocol,
                metadata,
                path,
            } => {
                self.wire_mut()?.mux.open_remote(channel)?;
                let await_path = !matches!(path, IncomingPath::Relay);
                let mut offered = channels::Channel::new(ChannelStage::Offered { await_path });
                if let IncomingPath::ExpectDial { token } = path {
                    offered.direct = direct::Direct::Expecting {
                        from: from_key,
                        token,
                        claimed: false,
                    };
                }
                if self.channels.insert(channel, offered).is_some() {
                    return Err(SessionError::Protocol("an offer of a channel we hold"));
                }
                SessionEvent::Incoming {
                    channel,
                    from_name,
                    from_key,
                    protocol,
                    metadata,
                    path,
                }
            }
            Message::Opened {
                request,
                channel,
                peer,
                path,
            } => {
                let Pending::Open(expected) = self.take_request(request)?.pending else {
                    return Err(SessionError::Protocol("opened for another request"));
                };
                if expected != channel {
                    return Err(SessionError::Protocol("opened names another channel"));
                }
                let fd = match path {
                    OpenedPath::SocketPair => {
                        self.channels.remove(&channel);
                        self.wire_mut()?.mux.forget(channel);
                        Some(self.take_fd().ok_or(SessionError::Protocol(
                            "a socketpair without its descriptor",
                        ))?)
                    }
                    _ => match self.channels.get_mut(&channel) {
                        Some(c) => {
                            c.stage = ChannelStage::Open;
                            if let OpenedPath::Dial { .. } = path {
                                c.direct = direct::Direct::Dialing;
                            }
                            None
                        }
                        // Reset while the open was on its way: its RESET follows the
                        // broker's answer, so the channel is over already.
                        None => {
                            self.events.push_back(SessionEvent::Failed {
                                request,
                                code: ErrorCode::Cancelled,
                                message: "reset before it opened".into(),
                            });
                            return Ok(());
                        }
                    },
                };
                SessionEvent::Opened {
                    request,
                    channel,
                    peer,
                    path,
                    fd,
                }
            }
            Message::ChannelPath { channel, path } => {
                // A path can cross the channel's reset (ours at its deadline,
                // or the opener's) on the way: then it resolves nothing.
                let awaited = matches!(
                    self.channels.get(&channel).map(|c| c.stage),
                    Some(ChannelStage::AwaitingPath { .. })
                );
                let fd = match path {
                    ChannelPath::SocketPair => {
                        if awaited {
                            self.channels.remove(&channel);
                            self.wire_mut()?.mux.forget(channel);
                        }
                        // Taken off the queue either way, so that later
                        // descriptors line up with their messages; the
                        // runtime closes one that came for no awaited channel.
                        Some(self.take_fd().ok_or(SessionError::Protocol(
                            "a socketpair without its descriptor",
                        ))?)
                    }
                    ChannelPath::Relay if awaited => {
                        if let Some(c) = self.channels.get_mut(&channel) {
                            c.stage = ChannelStage::Open;
                            // Settled: a dialer still finishing gets nothing.
                            c.direct = direct::Direct::None;
                        }
                        None
                    }
                    ChannelPath::Relay => return Ok(()),
                };
                SessionEvent::ChannelPath { channel, path, fd }
            }
            _ => return Err(SessionError::Protocol("a plugin's message from the broker")),
        };
        self.events.push_back(event);
        Ok(())
    }
}
