//! What a plugin hands the application over time (connection events, a
//! watch's changes, incoming channels), as one receiver type: a
//! [`Stream`], `recv().await`, or (for one item) `.await` itself.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_channel::Receiver;
use futures_core::Stream;

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

    /// An item if one is waiting, without waiting.
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

impl<T: Send + 'static> IntoFuture for Feed<T> {
    type Output = Option<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Option<T>> + Send>>;

    /// The next item, as [`Feed::recv`].
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move { self.recv().await })
    }
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("queued", &self.0.len())
            .finish()
    }
}
