//! What the session reports, handed to whoever waits for it: requests'
//! answers, watch events, offers, channel data and state.

use std::sync::Arc;

use plugboard_core::control::{ChannelPath, ErrorCode};
use plugboard_core::session::SessionEvent;

use super::{reconnect, ConnectionEvent, Waiter};
use super::{reply, Incoming, Inner, Opened, PluginError, Resolved, Shared, Stats, WatchEvent};

/// Hands one session event to its waiter. Called by the driver with the
/// lock held.
pub(crate) fn deliver(shared: &Arc<Shared>, inner: &mut Inner, event: SessionEvent) {
    match event {
        SessionEvent::Ready { .. } | SessionEvent::NameAcquired { .. } => {}
        SessionEvent::ChannelPath { channel, path, fd } => {
            let resolved = match (path, fd.and_then(|t| inner.fds.remove(&t))) {
                (ChannelPath::SocketPair, Some(fd)) => {
                    inner.channels.remove(&channel);
                    Resolved::SocketPair(fd)
                }
                _ => Resolved::Relay,
            };
            inner.expected.remove(&channel);
            if let Some(tx) = inner.paths.remove(&channel) {
                let _ = tx.try_send(resolved);
            }
        }
        SessionEvent::Registered { request, queued } => {
            if let Some(Waiter::Registered(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(queued));
            }
        }
        SessionEvent::Members { request, members } => {
            if let Some(Waiter::Members(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(members));
            }
        }
        SessionEvent::Watching {
            request, members, ..
        } => {
            inner
                .watchers
                .retain(|w| w.try_send(WatchEvent::Snapshot(members.clone())).is_ok());
            if let Some(Waiter::Watching(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(()));
            }
        }
        SessionEvent::Resynced { seq, members } => {
            inner.watchers.retain(|w| {
                w.try_send(WatchEvent::Resync {
                    seq,
                    members: members.clone(),
                })
                .is_ok()
            });
        }
        SessionEvent::Presence { seq, presence } => {
            inner.watchers.retain(|w| {
                w.try_send(WatchEvent::Change {
                    seq,
                    presence: presence.clone(),
                })
                .is_ok()
            });
        }
        SessionEvent::Stats {
            request,
            uids,
            keys,
            names,
        } => {
            if let Some(Waiter::Stats(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(Stats { uids, keys, names }));
            }
        }
        SessionEvent::Done { request } => {
            if let Some(Waiter::Done(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(()));
            }
        }
        SessionEvent::Failed {
            request,
            code,
            message,
        } => {
            if let Some(waiter) = inner.waiters.remove(&request) {
                waiter.fail(PluginError::Refused { code, message });
            }
        }
        SessionEvent::Opened {
            request,
            peer,
            path,
            fd,
            ..
        } => {
            let fd = fd.and_then(|token| inner.fds.remove(&token));
            if let Some(Waiter::Opened(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(Opened { peer, path, fd }));
            }
        }
        SessionEvent::Incoming {
            channel,
            from_name,
            from_key,
            protocol,
            metadata,
            path,
        } => {
            let incoming = Incoming {
                shared: shared.clone(),
                id: channel,
                epoch: inner.epoch,
                from_name,
                from_key,
                protocol,
                metadata,
                path,
            };
            if let Err(refused) = inner.incoming.try_send(incoming) {
                // Nobody takes incoming channels: refuse it.
                let id = refused.into_inner().id;
                let _ = inner.session.reject(id, "not accepting channels");
            }
        }
        SessionEvent::Data { channel, payload } => match inner.channels.get_mut(&channel) {
            Some(c) if c.abandoned => {
                // Nobody will read it.
                inner.channels.remove(&channel);
                let _ = inner.session.reset(channel, ErrorCode::Cancelled, "closed");
            }
            Some(c) => {
                c.received.push_back(payload);
                c.wake_reader();
            }
            None => {}
        },
        SessionEvent::Fin { channel } => {
            if let Some(c) = inner.channels.get_mut(&channel) {
                c.fin = true;
                c.wake_reader();
            }
        }
        SessionEvent::Reset {
            channel,
            code,
            reason,
        } => {
            let claimed = inner.expected.get(&channel).is_some_and(|e| e.claimed);
            if !claimed && inner.paths.contains_key(&channel) {
                // Accepted, still without a path: its accept() ends here.
                inner.channels.remove(&channel);
                inner.expected.remove(&channel);
                if let Some(tx) = inner.paths.remove(&channel) {
                    let _ = tx.try_send(Resolved::Reset { code, reason });
                }
            } else if inner.channels.get(&channel).is_some_and(|c| c.abandoned) {
                inner.channels.remove(&channel);
            } else if let Some(c) = inner.channels.get_mut(&channel) {
                c.reset = Some((code, reason));
                c.wake_reader();
                c.wake_writer();
            }
        }
        SessionEvent::ChannelClosed { channel } => {
            if inner.channels.get(&channel).is_some_and(|c| c.abandoned) {
                inner.channels.remove(&channel);
            } else if let Some(c) = inner.channels.get_mut(&channel) {
                c.closed = true;
                c.wake_reader();
            }
        }
        SessionEvent::Writable { channel } => {
            if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_writer();
            }
        }
        SessionEvent::Closed { reason, .. } => end(inner, reason),
    }
}

/// The connection is over: every waiter, watch, offer stream and channel
/// learns it. A plugin that reconnects has lost it instead (see
/// [`reconnect::lose`]).
pub(crate) fn end(inner: &mut Inner, reason: String) {
    if !inner.live || inner.ended.is_some() {
        return;
    }
    inner.live = false;
    if inner.reconnect {
        reconnect::lose(inner, reason);
        return;
    }
    inner.ended = Some(reason.clone());
    inner.waiters.clear(); // dropped senders: the waiters see Disconnected
    inner.watchers.clear(); // the watch streams end
    inner.incoming.close(); // the offer streams end once drained
    inner.paths.clear();
    inner.expected.clear();
    for c in inner.channels.values_mut() {
        c.wake_reader();
        c.wake_writer();
    }
    inner.report(ConnectionEvent::Ended { reason });
}
