//! What the session reports, handed to whoever waits for it: request
//! answers to their waiters, watch changes and offers to their queues,
//! channel news to their wakers; and the end of the connection.

use super::*;

/// Hands what the session reports to whoever waits for it. Called by the
/// driver with the lock held.
pub(crate) fn deliver<R: Runtime>(
    shared: &Arc<Shared<R>>,
    inner: &mut Inner<R>,
    event: SessionEvent,
) {
    match event {
        SessionEvent::Ready { .. } | SessionEvent::NameAcquired { .. } => {}
        SessionEvent::ChannelPath { channel, path, fd } => {
            // A descriptor for no awaited channel closes here.
            let fd = fd.and_then(|t| inner.fds.take(t));
            let Some(tx) = inner.paths.remove(&channel) else {
                return;
            };
            let resolved = match (path, fd) {
                (ChannelPath::SocketPair, Some(fd)) => {
                    inner.channels.remove(&channel);
                    Resolved::SocketPair(fd)
                }
                _ => Resolved::Relay,
            };
            let _ = tx.try_send(resolved);
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
            request,
            seq,
            members,
        } => {
            let snapshot = || WatchEvent::Snapshot(members.clone());
            let resync = || WatchEvent::Resync {
                seq,
                members: members.clone(),
            };
            inner.watchers.retain(|w| w.push(snapshot(), resync));
            if let Some(Waiter::Watching(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(()));
            }
        }
        SessionEvent::Resynced { seq, members } => {
            let resync = || WatchEvent::Resync {
                seq,
                members: members.clone(),
            };
            inner.watchers.retain(|w| w.push(resync(), resync));
        }
        SessionEvent::Presence { seq, presence } => {
            // A watcher that fell behind gets the registry as it is now.
            let Inner {
                session, watchers, ..
            } = inner;
            let resync = || {
                let (seq, members) = session.watch_view().unwrap_or_default();
                WatchEvent::Resync { seq, members }
            };
            let change = || WatchEvent::Change {
                seq,
                presence: presence.clone(),
            };
            watchers.retain(|w| w.push(change(), resync));
        }
        SessionEvent::Stats {
            request,
            uids,
            counters,
            keys,
            names,
        } => {
            if let Some(Waiter::Stats(tx)) = inner.waiters.remove(&request) {
                let stats = Stats {
                    uids,
                    counters,
                    keys,
                    names,
                };
                reply(&tx, Ok(stats));
            }
        }
        SessionEvent::Monitor(event) => {
            let item = MonitorItem::Event(event);
            inner
                .monitors
                .retain(|m| m.push(item.clone(), || MonitorItem::Missed));
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
            let fd = fd.and_then(|token| inner.fds.take(token));
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
                answered: false,
            };
            let refused = match &inner.incoming {
                Some(tx) => tx.try_send(incoming).err().map(|refused| match refused {
                    TrySendError::Full(offer) => (offer, "too many offers waiting"),
                    TrySendError::Closed(offer) => (offer, "not accepting channels"),
                }),
                None => Some((incoming, "not accepting channels")),
            };
            if let Some((mut refused, why)) = refused {
                refused.answered = true; // dropped under the lock: no second answer
                                         // The opener is told (Rejected, with why).
                tracing::info!("refused an offer of channel {}: {why}", refused.id);
                let _ = inner.session.reject(refused.id, why);
            }
        }
        SessionEvent::Readable { channel } | SessionEvent::ChannelClosed { channel } => {
            if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_reader();
            }
        }
        SessionEvent::Reset {
            channel,
            code,
            reason,
        } => {
            if inner.paths.contains_key(&channel) {
                // Accepted, still without a path: its accept() ends here.
                inner.channels.remove(&channel);
                if let Some(tx) = inner.paths.remove(&channel) {
                    let _ = tx.try_send(Resolved::Reset { code, reason });
                }
            } else if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_reader();
                c.wake_writer();
            }
        }
        SessionEvent::Writable { channel } => {
            if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_writer();
            }
        }
        SessionEvent::RequestLost {
            request,
            reconnecting,
        } => {
            if let Some(waiter) = inner.waiters.remove(&request) {
                let error = match reconnecting {
                    true => PluginError::Reconnecting(
                        inner.session.outage().unwrap_or("lost").to_owned(),
                    ),
                    false => PluginError::Disconnected("the connection ended".into()),
                };
                waiter.fail(error);
            }
        }
        SessionEvent::ChannelLost {
            channel,
            unread,
            end,
        } => {
            inner.paths.remove(&channel); // an accept waiting for its path fails
            if let Some(mut c) = inner.channels.remove(&channel) {
                // What it had not read stays readable, then it fails.
                let why = inner.session.outage().unwrap_or("lost");
                c.unread = unread;
                c.end = end;
                c.lost = Some(format!("the connection to the broker was lost: {why}"));
                c.wake_reader();
                c.wake_writer();
                inner.orphans.insert((inner.epoch, channel), c);
            }
        }
        SessionEvent::Lost { reason } => {
            lost(inner);
            inner.report(ConnectionEvent::Lost { reason });
        }
        SessionEvent::AttemptFailed { attempt, reason } => {
            lost(inner);
            tracing::info!("reconnecting: attempt {attempt} failed: {reason}");
            inner.report(ConnectionEvent::AttemptFailed { attempt, reason });
        }
        SessionEvent::Reconnected { attempts } => {
            tracing::info!("reconnected after {attempts} attempts");
            inner.report(ConnectionEvent::Reconnected { attempts });
        }
        SessionEvent::Closed { reason, .. } => end(inner, reason),
    }
}

/// A connection (or an attempt) is lost: what the runtime kept for it
/// means nothing to the next one.
fn lost<R: Runtime>(inner: &mut Inner<R>) {
    inner.epoch += 1;
    // A monitor is not restored: its feed ends.
    inner.monitors.clear();
    inner.fds.clear();
    inner.paths.clear();
}

/// The session is over for good: every waiter and channel learns it.
pub(crate) fn end<R: Runtime>(inner: &mut Inner<R>, reason: String) {
    if inner.ended.is_some() {
        return;
    }
    inner.ended = Some(reason.clone());
    inner.waiters.clear(); // dropped senders: the waiters see Disconnected
    inner.watchers.clear();
    inner.monitors.clear();
    inner.incoming = None; // `incoming()` ends
    inner.paths.clear();
    for c in inner.channels.values_mut() {
        c.wake_reader();
        c.wake_writer();
    }
    inner.report(ConnectionEvent::Ended { reason });
}
