//! The tokio server over real sockets, driven by the core's plugin session
//! (a bare driver here; the plugin API comes with its own tests).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plugboard_core::broker::BrokerConfig;
use plugboard_core::control::{Name, OpenedPath};
use plugboard_core::session::{Recv, Session, SessionConfig, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Keypair, PublicKey};
use plugboard_tokio::{Addr, Clock, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A session on a socket: writes what it has, reads until `until` says stop.
struct Driver<S> {
    session: Session,
    stream: S,
    clock: Clock,
    events: Vec<SessionEvent>,
    /// What the channels received, read as it came (its credit given back).
    received: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    async fn new(stream: S, seed: u8, broker: PublicKey, boxstream: bool) -> Self {
        let clock = Clock::start();
        let mut config =
            SessionConfig::new(HandshakeConfig::new(Keypair::from_seed([seed; 32])), broker);
        config.boxstream = boxstream;
        let session = Session::new(config, &mut rand_core::OsRng, clock.now()).unwrap();
        let mut driver = Driver {
            session,
            stream,
            clock,
            events: Vec::new(),
            received: Vec::new(),
        };
        driver
            .until(|e| matches!(e, SessionEvent::Ready { .. }))
            .await;
        driver
    }

    async fn flush(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.stream.write_all(&bytes).await.unwrap();
        }
    }

    /// Runs until an event matches; returns it (earlier events are kept).
    async fn until(&mut self, mut wanted: impl FnMut(&SessionEvent) -> bool) -> SessionEvent {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            self.flush().await;
            while let Some(event) = self.session.poll_event() {
                if let SessionEvent::Readable { channel } = &event {
                    while let Ok(Recv::Data(bytes)) = self.session.recv(*channel, usize::MAX) {
                        self.received.extend_from_slice(&bytes);
                    }
                }
                if wanted(&event) {
                    return event;
                }
                self.events.push(event);
            }
            self.flush().await;
            buf.clear();
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut buf))
                .await
                .expect("the broker answered in time")
                .unwrap();
            if n == 0 {
                self.session.handle_eof(self.clock.now());
                continue;
            }
            self.session.handle_input(self.clock.now(), &buf).unwrap();
        }
    }
}

async fn start(
    addrs: &[Addr],
) -> (
    PublicKey,
    Vec<Addr>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let config = BrokerConfig::new(HandshakeConfig::new(Keypair::from_seed([0xB0; 32])));
    let server = Server::bind(config, addrs).unwrap();
    let key = server.public_key();
    let bound = server.local_addrs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (key, bound, stop, task)
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("plugboard-test-{}-{name}.sock", std::process::id()))
}

#[tokio::test]
async fn register_open_and_relay_a_megabyte_over_unix() {
    let path = socket_path("relay");
    let (broker, _, stop, task) = start(&[Addr::Unix(path.clone())]).await;
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut b = Driver::new(UnixStream::connect(&path).await.unwrap(), 2, broker, false).await;
    let now = b.clock.now();
    b.session
        .register(now, Name::new("sink").unwrap(), false, None)
        .unwrap();
    b.until(|e| matches!(e, SessionEvent::Registered { .. }))
        .await;

    let mut a = Driver::new(UnixStream::connect(&path).await.unwrap(), 1, broker, false).await;
    let now = a.clock.now();
    let (_, channel) = a
        .session
        .open(now, Name::new("sink").unwrap(), "test", Bytes::new(), false)
        .unwrap();
    a.flush().await;
    let SessionEvent::Incoming {
        channel: theirs, ..
    } = b
        .until(|e| matches!(e, SessionEvent::Incoming { .. }))
        .await
    else {
        unreachable!()
    };
    let now = b.clock.now();
    b.session.accept(now, theirs).unwrap();
    b.flush().await;
    let opened = a.until(|e| matches!(e, SessionEvent::Opened { .. })).await;
    assert!(matches!(
        opened,
        SessionEvent::Opened {
            path: OpenedPath::Relay,
            ..
        }
    ));

    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let receiver = tokio::spawn(async move {
        while b.received.len() < 1_000_000 {
            b.until(|e| matches!(e, SessionEvent::Readable { .. }))
                .await;
        }
        b.received
    });
    let mut sent = 0;
    while sent < data.len() {
        let n = a
            .session
            .send(channel, Bytes::copy_from_slice(&data[sent..]))
            .unwrap();
        sent += n;
        a.flush().await;
        if sent < data.len() {
            a.until(|e| matches!(e, SessionEvent::Writable { .. }))
                .await;
        }
    }
    assert_eq!(receiver.await.unwrap(), data);

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!path.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn tcp_refuses_keys_the_policy_does_not_name() {
    let (broker, addrs, stop, task) = start(&[Addr::Tcp("127.0.0.1:0".into())]).await;
    let Addr::Tcp(host_port) = &addrs[0] else {
        unreachable!()
    };
    let stream = TcpStream::connect(host_port).await.unwrap();
    let clock = Clock::start();
    let mut config = SessionConfig::new(HandshakeConfig::new(Keypair::from_seed([5; 32])), broker);
    config.boxstream = true;
    let mut session = Session::new(config, &mut rand_core::OsRng, clock.now()).unwrap();
    let mut stream = stream;
    let mut buf = vec![0u8; 4096];
    let mut ended = false;
    for _ in 0..10 {
        while let Some(bytes) = session.poll_transmit() {
            let _ = stream.write_all(&bytes).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) | Err(_) => {
                ended = true;
                break;
            }
            Ok(n) => {
                if session.handle_input(clock.now(), &buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    assert!(ended, "the broker closed the connection");
    assert!(!session.is_ready());
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_live_socket_is_not_replaced_a_stale_one_is() {
    let path = socket_path("stale");
    let (_, _, stop, task) = start(&[Addr::Unix(path.clone())]).await;
    let config = BrokerConfig::new(HandshakeConfig::new(Keypair::from_seed([0xB1; 32])));
    let second = Server::bind(config.clone(), &[Addr::Unix(path.clone())]);
    assert!(matches!(second, Err(plugboard_tokio::ServeError::InUse(_))));
    stop.send(()).unwrap();
    task.await.unwrap();

    // A leftover file nobody listens on.
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(_listener);
    assert!(path.exists());
    let third = Server::bind(config, &[Addr::Unix(path.clone())]);
    assert!(third.is_ok());
    let _ = std::fs::remove_file(&path);
}
