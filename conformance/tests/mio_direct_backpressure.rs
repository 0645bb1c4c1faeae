//! A direct TCP peer that sends faster than its embedder takes the events:
//! `DirectTcp` reads no more while what it read is not taken (the sender
//! waits on TCP), and everything arrives once the embedder takes it again.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use mio::{Events, Interest, Poll, Token};
use plugboard_core::direct::DirectEvent;
use plugboard_core::Keypair;
use plugboard_mio::{Clock, DirectTcp};

const DIALER: Token = Token(1);
const TARGET: Token = Token(2);
const SIZE: usize = 32 << 20;
const CHUNK: usize = 64 * 1024;
/// What one read of `DirectTcp` may leave untaken: a read's worth.
const ONE_READ: usize = 64 * 1024;

#[test]
fn a_flooding_direct_peer_waits_for_the_embedder() {
    let target_keys = Keypair::from_seed([7; 32]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp:{}", listener.local_addr().unwrap());
    let clock = Clock::start();
    let dialer_config = Arc::new(plugboard_conformance::handshake(Keypair::from_seed(
        [6; 32],
    )));
    let mut dialer =
        DirectTcp::dial(&addr, dialer_config, target_keys.public(), [5; 32], clock).unwrap();
    let (stream, _) = listener.accept().unwrap();
    stream.set_nonblocking(true).unwrap();
    let stream = mio::net::TcpStream::from_std(stream);
    let mut target = DirectTcp::accept(
        stream,
        Arc::new(plugboard_conformance::handshake(target_keys)),
        clock,
    );
    let mut poll = Poll::new().unwrap();
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry().register(&mut dialer, DIALER, both).unwrap();
    poll.registry().register(&mut target, TARGET, both).unwrap();
    let mut events = Events::with_capacity(16);
    let data = vec![0x42u8; CHUNK];

    let (mut sent, mut received, mut dialer_up, mut fin) = (0, 0, false, false);
    // Until this moment the target's owner takes its events; for a while
    // after it, it does not.
    let mut stall: Option<StdInstant> = None;
    let mut held = None;
    let started = StdInstant::now();
    while !fin {
        assert!(started.elapsed() < Duration::from_secs(60), "stalled");
        let timeout = [dialer.timeout(), target.timeout()]
            .into_iter()
            .flatten()
            .chain([Duration::from_millis(10)])
            .min();
        poll.poll(&mut events, timeout).unwrap();
        for event in &events {
            match event.token() {
                DIALER => dialer.handle_ready(event),
                _ => target.handle_ready(event),
            }
        }
        dialer.handle_timeout();
        target.handle_timeout();
        while let Some(event) = dialer.poll_event() {
            match event {
                DirectEvent::Established { .. } => dialer_up = true,
                DirectEvent::Failed(e) => panic!("the dialer failed: {e}"),
                _ => {}
            }
        }
        while dialer_up && sent < SIZE && dialer.unsent() < 4 * CHUNK {
            dialer.with_conn(|c| c.send(&data)).unwrap();
            sent += CHUNK;
            if sent == SIZE {
                dialer.with_conn(|c| c.finish()).unwrap();
            }
        }
        let stalled = stall.is_some_and(|at| at.elapsed() < Duration::from_millis(300));
        if stalled {
            continue; // the owner is busy elsewhere
        }
        let mut taken = 0;
        while let Some(event) = target.poll_event() {
            match event {
                DirectEvent::Authorize(_) => target.with_conn(|c| c.authorize(true)).unwrap(),
                DirectEvent::Token { .. } => target.with_conn(|c| c.answer_token(true)).unwrap(),
                DirectEvent::Established { .. } => {}
                DirectEvent::Data(bytes) => taken += bytes.len(),
                DirectEvent::Fin => fin = true,
                DirectEvent::Failed(e) => panic!("the target failed: {e}"),
            }
        }
        received += taken;
        if stall.is_some() && held.is_none() {
            // The first taking after the stall: what waited in it.
            held = Some((taken, sent));
        }
        if stall.is_none() && received > 0 {
            stall = Some(StdInstant::now());
        }
    }
    let (held, sent_during) = held.expect("a stall happened");
    assert!(
        held <= ONE_READ,
        "{held} bytes read while the owner took nothing"
    );
    assert!(
        sent_during < SIZE,
        "the sender did not wait: {sent_during} bytes sent during the stall"
    );
    assert_eq!(received, SIZE, "everything arrives once it is taken");
}
