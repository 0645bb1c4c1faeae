//! A plugin session, ready, under arbitrary bytes from "the broker" in
//! arbitrary splits (some with descriptors), mixed with its own API calls
//! (every one, misuse included) and (when it reconnects)
//! socket failures and new sockets, made or not. Oracle: no panic; once the
//! session reports an error its connection is over and input is refused
//! until it is given a new socket.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plugboard_core::control::{ErrorCode, Name, TransportKind};
use plugboard_core::keys::Keypair;
use plugboard_core::session::Reconnect;
use plugboard_core::sim::{Chaos, Net};
use rand_chacha::rand_core::SeedableRng;

#[derive(Arbitrary, Debug)]
enum Op<'a> {
    Bytes(&'a [u8]),
    /// Bytes with a descriptor on their first byte.
    BytesWithFd(&'a [u8]),
    Call {
        what: u8,
        arg: u16,
    },
    Timeout {
        ms: u16,
    },
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (reconnect, ops) = input;
    let mut net = Net::new(3, Chaos::default(), |_| {});
    let id = net
        .connect_with(Keypair::from_seed([1; 32]), TransportKind::Unix, |c| {
            c.reconnect = reconnect.then(Reconnect::default);
        })
        .unwrap();
    net.run();
    let mut now = net.now;
    let session = &mut net.node(id).session;
    assert!(session.is_ready());
    let mut failed = false;
    let mut next_fd = 0;
    for op in ops {
        match op {
            Op::Bytes(bytes) | Op::BytesWithFd(bytes) => {
                let result = match op {
                    Op::BytesWithFd(_) => {
                        next_fd += 1;
                        session.handle_input_with_fd(now, bytes, next_fd)
                    }
                    _ => session.handle_input(now, bytes),
                };
                if failed {
                    assert!(result.is_err(), "input accepted after the session failed");
                }
                if result.is_err() {
                    failed = true;
                    assert!(!session.is_connected());
                    assert!(reconnect || session.is_closed());
                }
            }
            Op::Call { what, arg } => {
                let name = Name::new("x").unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(arg));
                let _ = match what % 21 {
                    0 => session.register(now, name, arg % 2 == 0, None).map(drop),
                    1 => session.list(now).map(drop),
                    2 => session.watch(now).map(drop),
                    3 => session.open(now, name, "p", Bytes::new(), false).map(drop),
                    4 => session.accept(now, u32::from(arg)),
                    5 => session
                        .send(u32::from(arg), Bytes::from_static(b"data"))
                        .map(drop),
                    6 => session.finish(u32::from(arg)),
                    7 => session.recv(u32::from(arg), usize::from(arg)).map(drop),
                    8 => {
                        session.close_channel(u32::from(arg));
                        Ok(())
                    }
                    // Direct dialers: any key, a token made of `arg`.
                    9 => {
                        let key = Keypair::from_seed([arg as u8; 32]).public();
                        let _ = session.direct_expects(&key);
                        let _ = session.direct_claim(&key, &[(arg >> 8) as u8; 32]);
                        Ok(())
                    }
                    10 => {
                        session.direct_established(u32::from(arg));
                        Ok(())
                    }
                    11 => {
                        session.direct_abandoned(u32::from(arg));
                        Ok(())
                    }
                    12 => session.direct_failed(u32::from(arg)),
                    13 => {
                        session.handle_socket_error(now, "fuzzed");
                        failed |= !session.is_connected();
                        Ok(())
                    }
                    // The socket the session asked for: made, or not.
                    14 if arg % 2 == 0 => session
                        .handle_connected(now, &mut rng)
                        .map(|()| failed = false),
                    14 => session.handle_dial_failed(now, "fuzzed", &mut rng),
                    15 => session.unwatch(now).map(drop),
                    16 => session.reject(u32::from(arg), "fuzzed"),
                    17 => session.reset(u32::from(arg), ErrorCode::Cancelled, "fuzzed"),
                    18 => {
                        session.handle_eof(now);
                        failed |= !session.is_connected();
                        Ok(())
                    }
                    19 => {
                        let _ = session.close("fuzzed");
                        failed |= !session.is_connected();
                        Ok(())
                    }
                    _ => session.stats(now).map(drop),
                };
            }
            Op::Timeout { ms } => {
                now += std::time::Duration::from_millis(u64::from(ms) * 100);
                session.handle_timeout(now);
            }
        }
        while session.poll_transmit().is_some() {}
        while session.poll_event().is_some() {}
    }
});
