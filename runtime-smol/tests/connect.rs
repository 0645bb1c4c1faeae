//! `Stream::connect` is done only once the connection is: a TCP connect
//! still in progress is waited for, not taken as made.

use std::time::Duration;

use async_io::Timer;
use futures_lite::future;
use plugboard_runtime::{Addr, Stream};
use plugboard_smol::Smol;

/// A listener whose accept queue is full: one more connect gets no answer
/// (its SYN is dropped and retried), so it stays in progress.
fn full_listener() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    let listener = plugboard_os::bind_tcp("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The backlog is the OS's; fill it (never accepting) until a connect
    // does not complete at once.
    let mut held = Vec::new();
    for _ in 0..2048 {
        let socket = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50));
        match socket {
            Ok(socket) => held.push(socket),
            Err(_) => return (listener, held),
        }
    }
    panic!("the accept queue never filled");
}

#[test]
fn a_connect_in_progress_is_not_taken_as_made() {
    let (listener, _held) = full_listener();
    let addr = Addr::Tcp(listener.local_addr().unwrap().to_string());
    smol::block_on(async {
        let connect = async { Some(Stream::<Smol>::connect(&Smol, &addr).await) };
        let later = async {
            Timer::after(Duration::from_millis(300)).await;
            None
        };
        // Before, `SO_ERROR` was read before the reactor said the connect
        // was over: 0, so the connect "succeeded" at once.
        match future::or(connect, later).await {
            None => {}
            Some(Ok(_)) => panic!("a connect nobody answered succeeded"),
            Some(Err(e)) => panic!("the connect failed at once: {e}"),
        }
    });
}
