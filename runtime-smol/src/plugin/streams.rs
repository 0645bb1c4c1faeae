//! A watch's events and the offers of incoming channels, as
//! [`Stream`]s.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use smol::channel::Receiver;

use super::{Incoming, WatchEvent};

/// What [`Plugin::watch`](super::Plugin::watch) sees: a snapshot, then
/// every change. Ends when the watch or the connection does.
#[derive(Debug)]
pub struct WatchStream(Pin<Box<Receiver<WatchEvent>>>);

impl WatchStream {
    pub(super) fn new(rx: Receiver<WatchEvent>) -> Self {
        WatchStream(Box::pin(rx))
    }
}

impl Stream for WatchStream {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// Channels others open to this plugin ([`Plugin::incoming`](super::Plugin::incoming)):
/// accept or reject each. Ends when the connection does.
#[derive(Debug)]
pub struct IncomingStream(Pin<Box<Receiver<Incoming>>>);

impl IncomingStream {
    pub(super) fn new(rx: Receiver<Incoming>) -> Self {
        IncomingStream(Box::pin(rx))
    }
}

impl Stream for IncomingStream {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.0.as_mut().poll_next(cx)
    }
}
