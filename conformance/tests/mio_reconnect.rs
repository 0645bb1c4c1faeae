//! `PluginConn` with reconnection on, in a mio loop of its own: the broker
//! stops and starts again on the same socket; the connection is replaced,
//! the name taken again and the watch restarted, driven by the core's
//! session alone.

#[path = "mio/common.rs"]
mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{broker_keys, keys, plugin, Broker, PATIENCE};
use mio::{Events, Interest, Poll, Token};
use plugboard_core::control::Name;
use plugboard_core::session::{Reconnect, SessionConfig, SessionEvent};
use plugboard_mio::{Addr, PluginConn};

const PLUGIN: Token = Token(3);

/// Runs a reconnecting plugin named `name`: registers and watches on the
/// first `Ready`, and reports every event until told to stop (or the
/// session ends).
fn serve(addr: Addr, name: &str, events: mpsc::Sender<SessionEvent>, stop: mpsc::Receiver<()>) {
    let mut config = SessionConfig::new(
        plugboard_conformance::handshake(keys(1)),
        broker_keys().public(),
    );
    config.reconnect = Some(Reconnect {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    });
    let mut conn = PluginConn::connect(&addr, config).unwrap();
    let mut poll = Poll::new().unwrap();
    let interest = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut conn, PLUGIN, interest)
        .unwrap();
    let mut polled = Events::with_capacity(64);
    let mut first = true;
    while stop.try_recv().is_err() {
        // Woken at least every 50 ms to look at `stop`.
        let wait = conn.timeout().unwrap_or(Duration::MAX);
        poll.poll(&mut polled, Some(wait.min(Duration::from_millis(50))))
            .unwrap();
        for event in &polled {
            conn.handle_ready(event);
        }
        conn.handle_timeout();
        while let Some(event) = conn.poll_event() {
            if let (SessionEvent::Ready { .. }, true) = (&event, first) {
                first = false;
                let mut session = conn.session_mut();
                let now = session.now();
                session
                    .register(now, Name::new(name).unwrap(), false, None)
                    .unwrap();
                session.watch(now).unwrap();
            }
            let closed = matches!(event, SessionEvent::Closed { .. });
            if events.send(event).is_err() || closed {
                return;
            }
        }
    }
}

/// Waits for the first event that `pick` likes.
fn wait_for(
    events: &mpsc::Receiver<SessionEvent>,
    what: &str,
    pick: impl Fn(&SessionEvent) -> bool,
) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(event) if pick(&event) => return,
            Ok(SessionEvent::Closed { reason, .. }) => {
                panic!("closed waiting for {what}: {reason}")
            }
            Ok(_) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_plugin_conn_reconnects_to_a_broker_started_again() {
    let broker = Broker::start("reconnect");
    let addr: Addr = broker.unix.parse().unwrap();
    let (events_tx, events) = mpsc::channel();
    let (stop_tx, stop) = mpsc::channel();
    let thread = std::thread::spawn(move || serve(addr, "phoenix", events_tx, stop));
    wait_for(&events, "the watch", |e| {
        matches!(e, SessionEvent::Watching { .. })
    });

    broker.stop();
    wait_for(&events, "the loss", |e| {
        matches!(e, SessionEvent::Lost { .. })
    });
    let broker = Broker::start("reconnect");
    let mut watched_again = false;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left).expect("reconnected in time") {
            SessionEvent::Watching { members, .. } => {
                watched_again = members.iter().any(|m| m.name.as_str() == "phoenix");
            }
            SessionEvent::Reconnected { attempts } => {
                assert!(attempts >= 1);
                break;
            }
            SessionEvent::Lost { reason } => panic!("a second outage: {reason}"),
            SessionEvent::Closed { reason, .. } => panic!("closed: {reason}"),
            _ => {}
        }
    }
    assert!(watched_again, "the watch restarted with the name in it");
    // The new broker knows the name again.
    let client = plugin(&broker.unix, 2, None).await;
    let members = client.list().await.unwrap();
    assert!(members.iter().any(|m| m.name.as_str() == "phoenix"));

    stop_tx.send(()).unwrap();
    thread.join().unwrap();
    broker.stop();
}
