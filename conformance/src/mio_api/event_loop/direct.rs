//! The plugin's direct TCP connections: the dials it makes for its opens,
//! and the strangers its listener admits (bounded, as every runtime's
//! listener bounds them) when they prove a key and token the session
//! expects.

use super::*;

/// A direct TCP connection and what it is for.
pub(super) struct Direct {
    pub(super) tcp: DirectTcp,
    pub(super) role: Role,
}

pub(super) enum Role {
    /// We opened `channel` and dial its target.
    Dialing {
        channel: ChannelId,
        peer: PublicKey,
        reply: Reply<Opened>,
    },
    /// A stranger at our listener, holding a `place` until its handshake is
    /// over; `channel` once it presented the token of one.
    Admitting {
        place: Option<Place>,
        channel: Option<ChannelId>,
    },
    /// Up: the scenario's channel.
    Piped(Arc<Pipe>),
}

pub(super) struct Listener {
    pub(super) socket: TcpListener,
    strangers: Strangers,
    /// Strangers get `limits.deadline` for their handshake.
    handshake: Arc<HandshakeConfig>,
}

impl Loop {
    pub(super) fn add_direct(&mut self, mut tcp: DirectTcp, role: Role) {
        let token = Token(self.next_token);
        self.next_token += 1;
        if self.poll.registry().register(&mut tcp, token, BOTH).is_ok() {
            self.directs.insert(token, Direct { tcp, role });
        } else if let Role::Dialing {
            channel,
            peer,
            reply,
        } = role
        {
            self.fall_back(channel, peer, reply);
        }
    }

    pub(super) fn accept_strangers(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (socket, from) = match listener.socket.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Out of descriptors: readiness is edge-triggered, so what waits
                // stays until the next connection (the mio server rests and
                // retries with AcceptPause; a test bridge need not).
                Err(_) => return,
            };
            // Beyond the bounds the socket closes at once.
            let Ok(place) = listener.strangers.admit(from.ip()) else {
                continue;
            };
            let tcp = DirectTcp::accept(socket, listener.handshake.clone(), self.clock);
            let role = Role::Admitting {
                place: Some(place),
                channel: None,
            };
            self.add_direct(tcp, role);
        }
    }

    pub(super) fn direct_events(&mut self) -> bool {
        let mut any = false;
        let tokens: Vec<Token> = self.directs.keys().copied().collect();
        for token in tokens {
            let mut d = self.directs.remove(&token).expect("listed");
            while let Some(event) = d.tcp.poll_event() {
                any = true;
                self.direct_event(&mut d, event);
            }
            let over = d.tcp.is_done() || matches!(&d.role, Role::Admitting { place: None, .. });
            if over {
                let _ = self.poll.registry().deregister(&mut d.tcp);
                if let Role::Piped(pipe) = &d.role {
                    let ended = Broken::reset("the direct connection ended".into());
                    pipe.lock().end(End::Broken(ended));
                }
            } else {
                self.directs.insert(token, d);
            }
        }
        any
    }

    fn direct_event(&mut self, d: &mut Direct, event: DirectEvent) {
        let session = self.conn.as_mut().map(|c| c.session_mut());
        match (event, &mut d.role) {
            (DirectEvent::Authorize(key), _) => {
                let expected = session.is_some_and(|s| s.direct_expects(&key));
                let _ = d.tcp.with_conn(|c| c.authorize(expected));
            }
            (DirectEvent::Token { peer, token }, Role::Admitting { channel, .. }) => {
                *channel = session.and_then(|mut s| s.direct_claim(&peer, &token));
                let _ = d.tcp.with_conn(|c| c.answer_token(channel.is_some()));
            }
            (DirectEvent::Established { peer }, _) => {
                let role = std::mem::replace(
                    &mut d.role,
                    Role::Admitting {
                        place: None,
                        channel: None,
                    },
                );
                let (channel, reply, dialed) = match role {
                    Role::Dialing { channel, reply, .. } => (channel, Some(reply), true),
                    Role::Admitting {
                        channel: Some(channel),
                        ..
                    } => (
                        channel,
                        self.accepts.remove(&channel).map(|(r, _)| r),
                        false,
                    ),
                    _ => return,
                };
                let ours = session.is_some_and(|mut s| s.direct_established(channel));
                // A dialer's channel is up even if the relay was reset while it
                // dialed: the target's own success resets it, and that reset
                // can cross the acceptance.
                match (ours || dialed, reply) {
                    (true, Some(reply)) => {
                        let pipe = Arc::new(Pipe::default());
                        // The key the handshake with the peer proved.
                        if reply
                            .send(Ok(Opened::Pipe(pipe.clone(), Path::Tcp, peer)))
                            .is_ok()
                        {
                            d.role = Role::Piped(pipe);
                        }
                    }
                    // The channel is gone: so is this connection.
                    (false, Some(reply)) => {
                        let gone = "the channel was reset while its direct path was made";
                        let _ = reply.send(Err(Error::Reset(ErrorCode::Cancelled, gone.into())));
                    }
                    (_, None) => {}
                }
            }
            (DirectEvent::Data(bytes), Role::Piped(pipe)) => pipe.lock().deliver(bytes),
            (DirectEvent::Fin, Role::Piped(pipe)) => pipe.lock().end(End::Fin),
            (DirectEvent::Failed(e), _) => {
                drop(session);
                let role = std::mem::replace(
                    &mut d.role,
                    Role::Admitting {
                        place: None,
                        channel: None,
                    },
                );
                match role {
                    Role::Dialing {
                        channel,
                        peer,
                        reply,
                    } => self.fall_back(channel, peer, reply),
                    Role::Admitting {
                        channel: Some(channel),
                        ..
                    } => {
                        if let Some(conn) = &mut self.conn {
                            conn.session_mut().direct_abandoned(channel);
                        }
                    }
                    Role::Piped(pipe) => pipe.lock().break_off(e.to_string()),
                    Role::Admitting { .. } => {}
                }
            }
            _ => {}
        }
    }

    /// Moves what the scenario wrote to the direct connections (as far as
    /// their sockets take it); cuts those the scenario reset.
    pub(super) fn direct_bytes(&mut self) -> bool {
        let mut any = false;
        let registry = self.poll.registry();
        self.directs.retain(|_, d| {
            let Role::Piped(pipe) = &d.role else {
                return true;
            };
            if pipe.lock().reset.take().is_none() {
                return true;
            }
            // No goodbye: the peer reads an error, not an end.
            let _ = registry.deregister(&mut d.tcp);
            any = true;
            false
        });
        for d in self.directs.values_mut() {
            let Role::Piped(pipe) = &d.role else {
                continue;
            };
            let mut st = pipe.lock();
            let mut sent = false;
            while d.tcp.unsent() < PIPE_BYTES {
                let Some(bytes) = st.take_outbound() else {
                    break;
                };
                sent = true;
                if let Err(e) = d.tcp.with_conn(|c| c.send(&bytes)) {
                    st.break_off(e.to_string());
                }
            }
            if (st.finish || st.dropped) && st.outbound.is_empty() && !st.finish_sent {
                st.finish_sent = true;
                sent = true;
                let _ = d.tcp.with_conn(|c| c.finish());
            }
            if sent {
                st.wake_writer();
            }
            any |= sent;
        }
        any
    }
}

impl Listener {
    pub(super) fn bind(
        listen: &str,
        poll: &Poll,
        handshake: &HandshakeConfig,
        limits: StrangerLimits,
    ) -> Result<Listener, Error> {
        let host_port = listen
            .strip_prefix("tcp:")
            .ok_or_else(|| Error::Other(format!("{listen}: not a tcp: address")))?;
        let std = std::net::TcpListener::bind(host_port).map_err(other)?;
        std.set_nonblocking(true).map_err(other)?;
        let mut socket = TcpListener::from_std(std);
        poll.registry()
            .register(&mut socket, LISTENER, Interest::READABLE)
            .map_err(other)?;
        Ok(Listener {
            socket,
            strangers: Strangers::new(limits),
            handshake: Arc::new(HandshakeConfig {
                timeout: limits.deadline,
                ..handshake.clone()
            }),
        })
    }
}
