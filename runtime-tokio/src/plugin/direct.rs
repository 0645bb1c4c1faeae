//! Direct channels over TCP: the opener dials the target's direct address,
//! the target's listener accepts only the keys and tokens the broker
//! announced. The protocol is the core's [`DirectConn`]; this file moves
//! its bytes.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use plugboard_core::budget::StrangerLimits;
use plugboard_core::control::ErrorCode;
use plugboard_core::direct::{DirectConn, DirectError, DirectEvent, TOKEN_LEN};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::PublicKey;
use plugboard_os::{Place, Strangers};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{Resolved, Shared};
use crate::addr::Addr;
use crate::clock::Clock;

const READ_SIZE: usize = 64 * 1024;
/// Most plaintext sealed per write call.
const WRITE_CHUNK: usize = 64 * 1024;

/// A token the broker told us to expect, for a channel we accepted.
pub(crate) struct Expected {
    pub(crate) from: PublicKey,
    pub(crate) token: [u8; TOKEN_LEN],
    /// Its dialer presented the token and is finishing the handshake.
    pub(crate) claimed: bool,
}

/// An established direct connection, as a byte stream.
pub(crate) struct DirectStream {
    tcp: TcpStream,
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
pub(crate) async fn dial(
    addr: &str,
    config: Arc<HandshakeConfig>,
    server: PublicKey,
    token: [u8; TOKEN_LEN],
    clock: Clock,
) -> Result<DirectStream, String> {
    let host_port = addr.strip_prefix("tcp:").ok_or("not a tcp: address")?;
    let now = clock.now();
    let conn = DirectConn::dial(config, server, token, &mut rand_core::OsRng, now)
        .map_err(|e| e.to_string())?;
    let deadline = clock.to_tokio(conn.poll_timeout().unwrap_or(now));
    let connect = tokio::time::timeout_at(deadline, TcpStream::connect(host_port));
    let tcp = match connect.await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("{addr}: {e}")),
        Err(_) => return Err(format!("{addr}: timed out")),
    };
    let _ = tcp.set_nodelay(true);
    DirectStream::new(tcp, conn, clock)
        .establish(|_, _| true)
        .await
}

/// Serves `listener`: every connection that proves an expected key and
/// presents its token becomes the direct path of the channel it was
/// announced for. Strangers are bounded (in total and per source, with a
/// short deadline: see [`StrangerLimits`]); a failed accept rests a moment.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    config: Arc<HandshakeConfig>,
    limits: StrangerLimits,
) {
    let strangers = Strangers::new(limits);
    let config = Arc::new(HandshakeConfig {
        timeout: limits.deadline,
        ..HandshakeConfig::clone(&config)
    });
    let addr = Addr::Tcp(
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
    plugboard_os::accept_forever(
        &addr,
        || listener.accept(),
        |(tcp, from): (TcpStream, SocketAddr)| {
            // Refused: the socket closes at once (Strangers logs it).
            let Ok(place) = strangers.admit(from.ip()) else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(admit(shared.clone(), tcp, from, config.clone(), place));
        },
        tokio::time::sleep,
    )
    .await
}

/// One stranger at the direct listener: admitted if it proves an expected
/// key and presents that key's token, in time. Its `place` is given back
/// once the handshake is over.
async fn admit(
    shared: Arc<Shared>,
    tcp: TcpStream,
    from: SocketAddr,
    config: Arc<HandshakeConfig>,
    place: Place,
) {
    let clock = shared.lock().clock;
    let conn = DirectConn::listen(config, &mut rand_core::OsRng, clock.now());
    let mut channel = None;
    let established = DirectStream::new(tcp, conn, clock)
        .establish(|event, conn| match event {
            DirectEvent::Authorize(key) => {
                let expected = shared
                    .lock()
                    .expected
                    .values()
                    .any(|e| e.from == *key && !e.claimed);
                let _ = conn.authorize(expected);
                expected
            }
            DirectEvent::Token { peer, token } => {
                let mut inner = shared.lock();
                let id = inner
                    .expected
                    .iter_mut()
                    .find(|(_, e)| !e.claimed && e.from == *peer && same_token(&e.token, token))
                    .map(|(id, e)| {
                        // A reset from now on waits for us (the
                        // opener's own reset, once it is through, is one).
                        e.claimed = true;
                        *id
                    });
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
    // Announced on a connection that was lost since: nothing awaits it.
    let awaited = inner.epoch == epoch && inner.expected.remove(&id).is_some();
    match established {
        // Resolved meanwhile (the relay path came, or the connection
        // ended): this stream is for nobody.
        Ok(stream) if !awaited || !inner.paths.contains_key(&id) => stream.abort(),
        Ok(stream) => {
            // The relayed channel is the fallback no more.
            inner.channels.remove(&id);
            let _ = inner.session.reset(id, ErrorCode::Cancelled, "direct");
            if let Some(tx) = inner.paths.remove(&id) {
                let _ = tx.send(Resolved::Tcp(Box::new(stream)));
            }
            drop(inner);
            shared.flush.notify_one();
        }
        Err(reason) => {
            tracing::info!("direct connection from {from}: {reason}");
            // A reset that came while we held the channel ends its
            // wait now; otherwise the relay path or the deadline will.
            let reset = inner.channels.get(&id).and_then(|c| c.reset.clone());
            if let (true, Some((code, reason))) = (awaited, reset) {
                inner.channels.remove(&id);
                if let Some(tx) = inner.paths.remove(&id) {
                    let _ = tx.send(Resolved::Reset { code, reason });
                }
            }
        }
    }
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl DirectStream {
    fn new(tcp: TcpStream, conn: DirectConn, clock: Clock) -> Self {
        DirectStream {
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
            .map(|at| self.clock.to_tokio(at))
            .unwrap_or_else(tokio::time::Instant::now);
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
        match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(())) => Ok(self),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(DirectError::Timeout.to_string()),
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
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.unsent))?;
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
            match self.tcp.try_write(&self.unsent) {
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
        let mut buf = ReadBuf::new(&mut self.read_buf);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
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

impl AsyncRead for DirectStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.take_events();
            if let Some(front) = this.received.front_mut() {
                let n = buf.remaining().min(front.len());
                buf.put_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    this.received.pop_front();
                }
                return Poll::Ready(Ok(()));
            }
            if this.fin {
                return Poll::Ready(Ok(()));
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
}

impl AsyncWrite for DirectStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let _ = this.conn.finish();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl Drop for DirectStream {
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
                match self.tcp.try_write(&rest) {
                    Ok(n) if n > 0 => rest.advance(n),
                    _ => break,
                }
            }
        }
    }
}

impl DirectStream {
    /// Closes without a goodbye: the peer reads an error, not an end.
    pub(crate) fn abort(mut self) {
        self.aborted = true;
    }
}
