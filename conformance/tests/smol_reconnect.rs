//! Reconnection on smol, a smoke test: smol's timers pace the attempts and
//! its sockets make the new connection. Reconnection itself is
//! plugboard-runtime's, the same on every runtime: `tokio_reconnect.rs`
//! tests it in full.

use std::time::Duration;

use futures_lite::StreamExt;
use plugboard_conformance::api::{Connect, SmolApi};
use plugboard_conformance::broker::{start, SmolBroker};
use plugboard_conformance::scenarios::{connect, run};
use plugboard_conformance::{broker_keys, keys};
use plugboard_smol::{ConnectionEvent, Plugin, Reconnect};

#[test]
fn a_plugin_reconnects_to_a_broker_started_again() {
    let broker = start::<SmolBroker>("reconnect", |_| {});
    let unix = broker.unix.clone();
    run::<SmolApi, _>(async move {
        let phoenix = Plugin::builder(keys(1))
            .broker_key(broker_keys().public())
            .name("phoenix")
            .reconnect(Reconnect {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(50),
            })
            .connect(&unix)
            .await
            .unwrap();
        let mut events = phoenix.events();
        broker.stop();
        let lost = events.next().await;
        assert!(
            matches!(lost, Some(ConnectionEvent::Lost { .. })),
            "{lost:?}"
        );

        let broker = start::<SmolBroker>("reconnect", |_| {});
        loop {
            match events.next().await {
                Some(ConnectionEvent::AttemptFailed { .. }) => {}
                Some(ConnectionEvent::Reconnected { attempts }) => break assert!(attempts >= 1),
                other => panic!("{other:?} before reconnecting"),
            }
        }
        // The new broker knows the name, and whose it is.
        let other = connect::<SmolApi>(Connect::new(&broker.unix, 2)).await;
        let members = other.list().await.unwrap();
        let listed: Vec<_> = members.iter().map(|m| (m.name.as_str(), m.key)).collect();
        assert_eq!(listed, [("phoenix", keys(1).public())]);
    });
}
