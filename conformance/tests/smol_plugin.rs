//! What the plugin builder refuses before it connects, and the name a
//! plugin keeps. The builder is plugboard-runtime's, the same on every
//! runtime, and mio's `PluginConn` has none: tested here, once. (The plugin
//! API's behaviour is the conformance suite's, with every broker.)

use plugboard_conformance::api::{Connect, SmolApi};
use plugboard_conformance::broker::{start, SmolBroker};
use plugboard_conformance::keys;
use plugboard_conformance::scenarios::{connect, run};
use plugboard_smol::{Plugin, PluginError};

#[test]
fn the_builder_refuses_what_cannot_work_and_a_plugin_keeps_its_name() {
    let broker = start::<SmolBroker>("builder", |_| {});
    let addr = broker.unix.clone();
    run::<SmolApi, _>(async move {
        let bad = Plugin::builder(keys(3)).connect("http://x").await;
        assert!(matches!(bad, Err(PluginError::Unreachable { .. })));
        // Only a name can be reached directly.
        let nameless_direct = Plugin::builder(keys(3))
            .direct_listen("tcp:127.0.0.1:0")
            .connect(&addr)
            .await;
        assert!(matches!(nameless_direct, Err(PluginError::Direct { .. })));

        let alpha = connect::<SmolApi>(Connect::new(&addr, 2).name("alpha")).await;
        let standby = connect::<SmolApi>(Connect::new(&addr, 4).name("alpha").wait()).await;
        let nameless = connect::<SmolApi>(Connect::new(&addr, 5)).await;
        assert_eq!(alpha.name().map(|n| n.as_str()), Some("alpha"));
        assert_eq!(standby.name().map(|n| n.as_str()), Some("alpha"));
        assert_eq!(nameless.name(), None);
    });
}
