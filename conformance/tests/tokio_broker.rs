//! The suite against the tokio broker, with the tokio plugin API and mio's
//! `PluginConn` (smol's runs against it from `smol_broker.rs`).

use plugboard_conformance::api::TokioApi;
use plugboard_conformance::broker::TokioBroker;
use plugboard_conformance::mio_api::MioApi;

plugboard_conformance::suite!(tokio_api, TokioBroker, TokioApi);
plugboard_conformance::suite!(mio_api, TokioBroker, MioApi);
plugboard_conformance::hostile_suite!(hostile, TokioBroker);
