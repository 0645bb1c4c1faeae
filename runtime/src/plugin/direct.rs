//! Direct channels over TCP: the opener dials the target's direct address,
//! the target's listener accepts only the keys and tokens the broker
//! announced. The protocol is the core's [`DirectConn`]; this file moves
//! its bytes.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_lite::future;
use plugboard_core::addr::Addr;
use plugboard_core::budget::StrangerLimits;
use plugboard_core::direct::{DirectConn, DirectError, DirectEvent, TOKEN_LEN};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::PublicKey;
use plugboard_os::{Place, Strangers};

use super::{Resolved, Shared};
use crate::rt::{Runtime, Task as _};
use crate::stream::{accept_tcp, Stream};
use plugboard_os::Clock;

const READ_SIZE: usize = 64 * 1024;
/// Most plaintext sealed per write call.
const WRITE_CHUNK: usize = 64 * 1024;

/// An established direct connection, as a byte stream.
pub(crate) struct DirectStream<R: Runtime> {
    rt: R,
    tcp: Stream<R>,
    conn: DirectConn,
    clock: Clock,
    received: VecDeque<Bytes>,
    fin: bool,
    failed: Option<DirectError>,
    /// Sealed bytes the socket has not taken yet.
    unsent: Bytes,
    read_buf: BytesMut,
    /// Close without a goodbye.
    aborted: bool,
}

/// Dials `addr`, proves our key to `server`, presents `token`; returns once
/// the target accepted, or why not.
pub(crate) async fn dial<R: Runtime>(
    rt: &R,
    addr: &str,
    config: Arc<HandshakeConfig>,
    server: PublicKey,
    token: [u8; TOKEN_LEN],
    clock: Clock,
) -> Result<DirectStream<R>, String> {
    let host_port = addr.strip_prefix("tcp:").ok_or("not a tcp: address")?;
    let now = clock.now();
    let conn = DirectConn::dial(config, server, token, &mut rand_core::OsRng, now)
        .map_err(|e| e.to_string())?;
    let deadline = clock.to_std(conn.poll_timeout().unwrap_or(now));
    let connect = async { Some(Stream::connect(rt, &Addr::Tcp(host_port.into())).await) };
    let timeout = async {
        rt.sleep_until(deadline).await;
        None
    };
    let tcp = match future::or(connect, timeout).await {
        Some(Ok(tcp)) => tcp,
        Some(Err(e)) => return Err(format!("{addr}: {e}")),
        None => return Err(format!("{addr}: timed out")),
    };
    DirectStream::new(rt.clone(), tcp, conn, clock)
        .establish(|_, _| true)
        .await
}

/// Serves `listener`: every connection that proves an expected key and
/// presents its token becomes the direct path of the channel it was
/// announced for. Strangers are bounded (in total and per source, with a
/// short deadline: see [`StrangerLimits`]); a failed accept rests a moment.
pub(crate) async fn serve<R: Runtime>(
    shared: Arc<Shared<R>>,
    listener: R::Io,
    bound: SocketAddr,
    config: Arc<HandshakeConfig>,
    limits: StrangerLimits,
) {
    let strangers = Strangers::new(limits);
    let config = Arc::new(HandshakeConfig {
        timeout: limits.deadline,
        ..HandshakeConfig::clone(&config)
    });
    let addr = Addr::Tcp(bound.to_string());
    let rt = shared.rt.clone();
    plugboard_os::accept_forever(
        &addr,
        || accept_tcp(&rt, &listener),
        |(tcp, from): (Stream<R>, SocketAddr)| {
            // Refused: the socket closes at once (Strangers logs it).
            let Ok(place) = strangers.admit(from.ip()) else {
                return;
            };
            rt.spawn(admit(shared.clone(), tcp, from, config.clone(), place))
                .detach();
        },
        |rest| rt.sleep_until(std::time::Instant::now() + rest),
    )
    .await
}

/// One stranger at the direct listener: admitted if it proves an expected
/// key and presents that key's token, in time. Its `place` is given back
/// once the handshake is over.
async fn admit<R: Runtime>(
    shared: Arc<Shared<R>>,
    tcp: Stream<R>,
    from: SocketAddr,
    config: Arc<HandshakeConfig>,
    place: Place,
) {
    let clock = shared.lock().clock;
    let conn = DirectConn::listen(config, &mut rand_core::OsRng, clock.now());
    let mut channel = None;
    let established = DirectStream::new(shared.rt.clone(), tcp, conn, clock)
        .establish(|event, conn| match event {
            DirectEvent::Authorize(key) => {
                let expected = shared.lock().session.direct_expects(key);
                let _ = conn.authorize(expected);
                expected
            }
            DirectEvent::Token { peer, token } => {
                let mut inner = shared.lock();
                let id = inner.session.direct_claim(peer, token);
                channel = id.map(|id| (id, inner.epoch));
                let _ = conn.answer_token(id.is_some());
                id.is_some()
            }
            _ => true,
        })
        .await;
    drop(place); // the handshake is over
    let Some((id, epoch)) = channel else {
        if let Err(reason) = established {
            tracing::info!("direct connection from {from}: {reason}");
        }
        return;
    };
    let mut inner = shared.lock();
    if inner.epoch != epoch {
        return; // announced on a connection lost since: nothing awaits it
    }
    match established {
        Ok(stream) => {
            // The relayed channel is the fallback no more; unless its path
            // came meanwhile, and then this stream is for nobody.
            if !inner.session.direct_established(id) {
                stream.abort();
                return;
            }
            inner.channels.remove(&id);
            match inner.paths.remove(&id) {
                Some(tx) => drop(tx.try_send(Resolved::Tcp(Box::new(stream)))),
                None => stream.abort(),
            }
            drop(inner);
            shared.flush.notify_one();
        }
        Err(reason) => {
            tracing::info!("direct connection from {from}: {reason}");
            // A reset that came while the dialer held the channel ends
            // its wait now (a Reset event); otherwise the relay path or
            // the deadline will.
            inner.session.direct_abandoned(id);
            drop(inner);
            shared.flush.notify_one();
        }
    }
}

impl<R: Runtime> DirectStream<R> {
    fn new(rt: R, tcp: Stream<R>, conn: DirectConn, clock: Clock) -> Self {
        DirectStream {
            rt,
            tcp,
            conn,
            clock,
            received: VecDeque::new(),
            fin: false,
            failed: None,
            unsent: Bytes::new(),
            read_buf: BytesMut::new(),
            aborted: false,
        }
    }

    /// Runs the handshake and the token until the channel is up. `decide`
    /// answers the listener's questions (and says whether to go on).
    async fn establish(
        mut self,
        mut decide: impl FnMut(&DirectEvent, &mut DirectConn) -> bool,
    ) -> Result<Self, String> {
        let deadline = self
            .conn
            .poll_timeout()
            .map(|at| self.clock.to_std(at))
            .unwrap_or_else(std::time::Instant::now);
        let sleep = self.rt.sleep_until(deadline);
        let run = std::future::poll_fn(|cx| loop {
            while let Some(event) = self.conn.poll_event() {
                match event {
                    DirectEvent::Established { .. } => {
                        // Flush the acceptance before handing the stream over.
                        ready!(self.poll_send(cx))?;
                        return Poll::Ready(Ok(()));
                    }
                    DirectEvent::Failed(e) => {
                        let _ = self.poll_send(cx);
                        return Poll::Ready(Err(io::Error::other(e.to_string())));
                    }
                    DirectEvent::Data(bytes) => self.received.push_back(bytes),
                    DirectEvent::Fin => self.fin = true,
                    event => {
                        if !decide(&event, &mut self.conn) {
                            let _ = self.poll_send(cx);
                            return Poll::Ready(Err(io::Error::other("not expected")));
                        }
                    }
                }
            }
            // What the last input or answer produced goes out before we wait.
            let _ = self.poll_send(cx)?;
            ready!(self.poll_receive(cx))?;
        });
        let timeout = async {
            sleep.await;
            Err(io::Error::other(DirectError::Timeout.to_string()))
        };
        match future::or(run, timeout).await {
            Ok(()) => Ok(self),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes what the connection has sealed; ready once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.unsent.is_empty() {
                match self.conn.poll_transmit() {
                    Some(bytes) => self.unsent = bytes,
                    None => return Poll::Ready(Ok(())),
                }
            }
            let n = ready!(self.tcp.poll_write_slice(cx, &self.unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent.advance(n);
        }
    }

    /// Writes what the socket takes without waiting.
    fn try_send(&mut self) -> io::Result<()> {
        loop {
            if self.unsent.is_empty() {
                match self.conn.poll_transmit() {
                    Some(bytes) => self.unsent = bytes,
                    None => return Ok(()),
                }
            }
            match self.tcp.try_write_slice(&self.unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.unsent.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads once from the socket into the connection, and takes its news.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.read_buf.resize(READ_SIZE, 0);
        let n = ready!(self.tcp.poll_read_slice(cx, &mut self.read_buf))?;
        let now = self.clock.now();
        let _ = match n {
            0 => self.conn.handle_eof(),
            _ => self.conn.handle_input(now, &self.read_buf[..n]),
        };
        Poll::Ready(Ok(()))
    }

    fn take_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                DirectEvent::Data(bytes) => self.received.push_back(bytes),
                DirectEvent::Fin => self.fin = true,
                DirectEvent::Failed(e) => self.failed = Some(e),
                _ => {}
            }
        }
    }
}

fn broken(e: &DirectError) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e.to_string())
}

impl<R: Runtime> DirectStream<R> {
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self;
        loop {
            this.take_events();
            if let Some(n) = super::read_front(&mut this.received, buf) {
                return Poll::Ready(Ok(n));
            }
            if this.fin {
                return Poll::Ready(Ok(0));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(broken(e)));
            }
            // What was written but not flushed goes out while we wait, if
            // the socket takes it now. (Waiting for it here would take the
            // write waker from a task that writes through the other half.)
            this.try_send()?;
            ready!(this.poll_receive(cx))?;
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self;
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(broken(e)));
        }
        // Sealed bytes wait for the socket before more are taken.
        ready!(this.poll_send(cx))?;
        let n = data.len().min(WRITE_CHUNK);
        this.conn
            .send(&data[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(n))
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    pub(crate) fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.conn.finish();
        ready!(self.poll_send(cx))?;
        self.tcp.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

impl<R: Runtime> Drop for DirectStream<R> {
    /// Dropping closes gracefully where the socket takes the goodbye at
    /// once; [`DirectStream::abort`] (a reset) skips it.
    fn drop(&mut self) {
        if !self.aborted && self.conn.is_open() && self.conn.finish().is_ok() {
            let mut rest = std::mem::take(&mut self.unsent);
            while let Some(more) = self.conn.poll_transmit() {
                let mut joined = BytesMut::from(&rest[..]);
                joined.extend_from_slice(&more);
                rest = joined.freeze();
            }
            while !rest.is_empty() {
                match self.tcp.try_write_slice(&rest) {
                    Ok(n) if n > 0 => rest.advance(n),
                    _ => break,
                }
            }
        }
    }
}

impl<R: Runtime> DirectStream<R> {
    /// Closes without a goodbye: the peer reads an error, not an end.
    pub(crate) fn abort(mut self) {
        self.aborted = true;
    }
}
