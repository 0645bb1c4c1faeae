//! What a plugin hands the application over time (connection events, a
//! watch's changes, incoming channels), as one receiver type: a
//! [`Stream`], or `recv().await`. Offers of incoming channels can also be
//! awaited themselves (`plugin.incoming().await`): every [`Offers`] takes
//! from one shared queue, so a dropped one loses nothing.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_channel::Receiver;
use futures_core::Stream;

use super::Incoming;
use crate::rt::Runtime;

/// A stream of `T`; it ends when its source does (the watch or the
/// connection, for good).
pub struct Feed<T>(Pin<Box<Receiver<T>>>);

impl<T> Feed<T> {
    pub(crate) fn new(rx: Receiver<T>) -> Self {
        Feed(Box::pin(rx))
    }

    /// The next item; `None` once the feed ended.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.ok()
    }

    /// An item if one is waiting, without waiting: `None` when nothing is
    /// (or the feed ended).
    pub fn try_next(&mut self) -> Option<T> {
        self.0.try_recv().ok()
    }
}

impl<T> Stream for Feed<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// Channels others open to this plugin, from the plugin's one queue of
/// offers: a [`Stream`], `recv().await`, or `.await` for the next one.
pub struct Offers<R: Runtime>(Feed<Incoming<R>>);

impl<R: Runtime> Offers<R> {
    pub(crate) fn new(rx: Receiver<Incoming<R>>) -> Self {
        Offers(Feed::new(rx))
    }

    /// The next offer; `None` once the connection is over for good.
    pub async fn recv(&mut self) -> Option<Incoming<R>> {
        self.0.recv().await
    }

    /// An offer if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Incoming<R>> {
        self.0.try_next()
    }
}

impl<R: Runtime> Stream for Offers<R> {
    type Item = Incoming<R>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming<R>>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

impl<R: Runtime> IntoFuture for Offers<R> {
    type Output = Option<Incoming<R>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Option<Incoming<R>>> + Send>>;

    /// The next offer, as [`Offers::recv`].
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move { self.recv().await })
    }
}

impl<R: Runtime> std::fmt::Debug for Offers<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Offers").field(&self.0).finish()
    }
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("queued", &self.0.len())
            .finish()
    }
}
