//! A channel someone opens to this plugin, until the application accepts
//! or rejects it (or drops it: that rejects it).

use super::*;

/// A channel someone opens to this plugin: accept or reject it.
pub struct Incoming<R: Runtime> {
    pub(super) shared: Arc<Shared<R>>,
    pub(super) id: ChannelId,
    /// The connection it was offered on.
    pub(super) epoch: u64,
    /// The opener's name, if it has one.
    pub from_name: Option<Name>,
    /// The opener's key.
    pub from_key: PublicKey,
    /// What it will speak.
    pub protocol: String,
    /// What it sent along.
    pub metadata: Bytes,
    pub(super) path: IncomingPath,
    /// Accepted or rejected: dropping it does nothing more.
    pub(super) answered: bool,
}

impl<R: Runtime> Incoming<R> {
    /// Takes the channel. When the opener asked for a direct path, this
    /// waits until the broker says which path the channel takes, and no
    /// longer than the broker's open timeout for the opener to dial (plus
    /// the direct listener's handshake deadline once it has dialed). If no
    /// path comes, or the opener gives up, the channel is reset:
    /// [`PluginError::Reset`], with [`ErrorCode::OpenTimeout`] for the former.
    pub async fn accept(self) -> Result<R::Channel, PluginError> {
        self.accept_raw().await.map(R::Channel::from)
    }

    async fn accept_raw(mut self) -> Result<Channel<R>, PluginError> {
        self.answered = true;
        let resolved = {
            let mut inner = self.shared.lock();
            if inner.epoch != self.epoch {
                return Err(inner.stale());
            }
            let now = inner.clock.now();
            inner.session.accept(now, self.id)?;
            inner
                .channels
                .insert(self.id, relayed::ChannelState::default());
            match self.path {
                IncomingPath::Relay => None,
                IncomingPath::AwaitPath | IncomingPath::ExpectDial { .. } => {
                    let (tx, rx) = bounded(1);
                    inner.paths.insert(self.id, tx);
                    Some(rx)
                }
            }
        };
        self.shared.flush.notify_one();
        let relayed = || {
            Channel::relayed(
                relayed::Relayed::new(self.shared.clone(), self.id, self.epoch),
                self.from_key,
            )
        };
        let Some(resolved) = resolved else {
            return Ok(relayed());
        };
        match resolved.recv().await {
            Ok(Resolved::Relay) => Ok(relayed()),
            Ok(Resolved::Tcp(stream)) => Ok(Channel::tcp(stream, self.id, self.from_key)),
            Ok(Resolved::SocketPair(fd)) => {
                Channel::socketpair(&self.shared.rt, fd, self.id, self.from_key).map_err(|e| {
                    PluginError::Direct {
                        reason: e.to_string(),
                    }
                })
            }
            Ok(Resolved::Reset { code, reason }) => Err(PluginError::Reset { code, reason }),
            Err(_) => {
                let mut inner = self.shared.lock();
                inner.forget(self.epoch, self.id);
                if inner.ended.is_none() && inner.epoch != self.epoch {
                    return Err(inner.stale());
                }
                let reason = inner.ended.clone();
                Err(PluginError::Disconnected(reason.unwrap_or_else(|| {
                    "the channel ended before its path was known".into()
                })))
            }
        }
    }

    /// Refuses it; the opener gets `reason`.
    pub fn reject(mut self, reason: &str) -> Result<(), PluginError> {
        self.answered = true;
        let mut inner = self.shared.lock();
        if inner.epoch != self.epoch {
            return Err(inner.stale());
        }
        inner.session.reject(self.id, reason)?;
        drop(inner);
        self.shared.flush.notify_one();
        Ok(())
    }
}

impl<R: Runtime> Drop for Incoming<R> {
    /// An offer nobody answered is rejected: the opener learns it at once,
    /// and nothing is held for it.
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut inner = self.shared.lock();
        if inner.epoch == self.epoch {
            let _ = inner.session.reject(self.id, "not taken");
            drop(inner);
            self.shared.flush.notify_one();
        }
    }
}
