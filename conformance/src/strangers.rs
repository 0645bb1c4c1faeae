//! Strangers at a plugin's direct TCP listener: whoever can reach the port
//! can connect, so what they can make the plugin hold is bounded (places
//! for handshakes per source and in total, each for a short deadline), and
//! an honest direct channel still opens beside them.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard_core::budget::StrangerLimits;
use tokio::sync::mpsc;

use crate::api::{Api, Connect, Path};
use crate::broker::{start_for, Broker};
use crate::scenarios::{connect, free_port, run};
use crate::stream::{hashed_exchanges, serve_hasher, MIB};

/// A connection from `source` (a loopback address) to `port`, that says nothing.
fn dial_from(source: Ipv4Addr, port: u16) -> TcpStream {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("a socket");
    rustix::net::bind(&socket, &SocketAddrV4::new(source, 0)).expect("a loopback source");
    rustix::net::connect(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .expect("the listener's backlog takes it");
    let stream = TcpStream::from(socket);
    stream.set_nonblocking(true).expect("non-blocking");
    stream
}

/// Whether the listener still holds `stream` open (nothing came, no end).
fn held(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn count_held(crowd: &[TcpStream]) -> usize {
    crowd.iter().filter(|s| held(s)).count()
}

/// Waits (blocking) until at most `most` of `crowd` are held, or `patience`
/// passed; returns how many are held then.
fn settle(crowd: &[TcpStream], most: usize, patience: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = count_held(crowd);
        if n <= most || start.elapsed() > patience {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 200 idle connections from one source, then 8 more from each of 20
/// others: the listener keeps at most 8 per source and 64 in all (the rest
/// are closed at once), and drops those it kept at their deadline; an
/// honest direct channel opens while the first crowd waits.
///
/// The deadline is shortened to 3 s so that the test can tell it from the
/// handshake timeouts that would end a stranger anyway; each bound is looked
/// at well before the deadline could have made it true.
pub fn the_direct_listener_bounds_strangers<B: Broker, A: Api>() {
    let limits = StrangerLimits {
        deadline: Duration::from_secs(3),
        ..StrangerLimits::default()
    };
    // Refusals beyond the bounds are at once: this long is plenty for them.
    let at_once = Duration::from_millis(1000);
    crate::hostile::raise_open_files(4096).expect("open files for the crowd");
    let broker = start_for::<B, A>("strangers", |_| {});
    let (unix, tcp) = (broker.unix.clone(), broker.tcp.clone());
    run::<A, _>(async {
        let port = free_port();
        let far = Connect::new(&unix, 4)
            .name("far")
            .direct(&format!("tcp:127.0.0.1:{port}"))
            .direct_limits(limits);
        let (tx, mut reports) = mpsc::unbounded_channel();
        let _far = serve_hasher::<A>(connect::<A>(far).await, tx);

        let one = Ipv4Addr::new(127, 0, 0, 2);
        let crowd: Vec<TcpStream> = (0..200).map(|_| dial_from(one, port)).collect();
        let kept = settle(&crowd, limits.per_source, at_once);
        assert!(
            kept <= limits.per_source,
            "one source holds {kept} handshakes at the direct listener"
        );
        // Beside them, an honest opener from another address gets its
        // direct channel.
        let client = Arc::new(connect::<A>(Connect::new(&tcp, 2)).await);
        hashed_exchanges::<A>(client, "far", &mut reports, &[MIB], Path::Tcp).await;

        let many: Vec<TcpStream> = (3..23)
            .flat_map(|last| {
                (0..limits.per_source).map(move |_| dial_from(Ipv4Addr::new(127, 0, 0, last), port))
            })
            .collect();
        let dialed = Instant::now();
        let everyone: Vec<TcpStream> = crowd.into_iter().chain(many).collect();
        let kept = settle(&everyone, limits.total, at_once);
        assert!(
            kept <= limits.total,
            "strangers hold {kept} handshakes at the direct listener"
        );
        // Whoever was kept is let go at the deadline (not at some longer
        // handshake timeout).
        let since = dialed.elapsed();
        let kept = settle(
            &everyone,
            0,
            (limits.deadline + Duration::from_secs(2)).saturating_sub(since),
        );
        assert_eq!(kept, 0, "strangers outlived the handshake deadline");
    });
}
