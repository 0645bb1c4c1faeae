//! plugboard's end-to-end suite, written once.
//!
//! A scenario is generic over the broker it runs against ([`Broker`]: the
//! tokio, smol or mio server, each on its own thread) and over the plugin
//! API it drives ([`Api`]: tokio's, smol's, or mio's `PluginConn` through
//! the bridge in [`mio_api`]). The test files instantiate the suite with
//! [`suite!`] for every broker with every API (`tests/*_broker.rs`; smol's
//! API against the tokio broker is in `smol_broker.rs`); nothing here is
//! specific to one runtime but the adapters in `broker` and `api`, and the
//! loop in `mio_api` that drives a `PluginConn`.

pub mod api;
pub mod broker;
pub mod descriptors;
pub mod ends;
pub mod hostile;
pub mod mio_api;
pub mod muxrpc;
pub mod scenarios;
pub mod strangers;
pub mod stream;

pub use api::{Api, Connect, Error, Path, Watch};
pub use broker::{Broker, Running};

use plugboard_core::Keypair;

/// The broker's identity in every scenario.
pub fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

/// A test identity.
pub fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

/// A handshake configuration on the build's crypto provider (libsodium with
/// the `libsodium` feature), as the plugin builders make theirs.
pub fn handshake(keypair: Keypair) -> plugboard_core::shs::HandshakeConfig {
    let mut config = plugboard_core::shs::HandshakeConfig::new(keypair);
    config.crypto = plugboard_os::default_crypto();
    config
}

/// Instantiates the client-side scenarios as `#[test]`s for one broker and
/// one plugin API, in a module named after them.
#[macro_export]
macro_rules! suite {
    ($module:ident, $broker:ty, $api:ty) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::suite!(@each $broker, $api, [
                names_list_and_watch,
                a_watcher_that_falls_behind_is_resynced,
                opens_and_refusals_are_typed,
                an_unanswered_open_times_out,
                relayed_over_unix_64_mib_each_way,
                relayed_over_tcp_64_mib_each_way,
                socketpairs_64_mib_each_way,
                direct_tcp_64_mib_each_way,
                direct_tcp_refuses_strangers_and_falls_back,
                openers_that_never_dial_cannot_hold_an_accept,
                a_plugin_killed_mid_transfer,
                policy_refusals_over_tcp,
            ]);
            $crate::suite!(@each_in strangers, $broker, $api, [
                the_direct_listener_bounds_strangers,
            ]);
            $crate::suite!(@each_in muxrpc, $broker, $api, [
                muxrpc_between_plugins,
            ]);
            $crate::suite!(@each_in ends, $broker, $api, [
                dropping_closes_gracefully_and_reset_aborts,
                a_dropped_plugin_resets_its_channels,
                a_stopped_broker_says_why,
            ]);
        }
    };
    (@each $broker:ty, $api:ty, [$($scenario:ident),* $(,)?]) => {
        $crate::suite!(@each_in scenarios, $broker, $api, [$($scenario),*]);
    };
    (@each_in $file:ident, $broker:ty, $api:ty, [$($scenario:ident),* $(,)?]) => {
        $(
            #[test]
            fn $scenario() {
                $crate::$file::$scenario::<$broker, $api>();
            }
        )*
    };
}

/// Instantiates the broker-side scenarios (hostile input) as `#[test]`s for
/// one broker, in a module named after it.
#[macro_export]
macro_rules! hostile_suite {
    ($module:ident, $broker:ty) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::hostile_suite!(@each $broker, [
                attackers_are_cut_beside_a_transfer,
                truncated_handshakes_and_writes_past_credit,
                a_watcher_that_never_reads_is_cut,
                a_watcher_that_falls_behind_is_resynchronised,
                a_thousand_connections_of_one_key,
                a_peer_that_floods_after_it_is_cut_is_hung_up,
                last_words_read_with_the_goodbye_are_heard,
            ]);
        }
    };
    (@each $broker:ty, [$($scenario:ident),* $(,)?]) => {
        $(
            #[test]
            fn $scenario() {
                $crate::hostile::$scenario::<$broker>();
            }
        )*
    };
}
