//! The suite against the mio broker, with the tokio plugin API.

use plugboard_conformance::api::TokioApi;
use plugboard_conformance::broker::MioBroker;

plugboard_conformance::suite!(tokio_api, MioBroker, TokioApi);
plugboard_conformance::hostile_suite!(hostile, MioBroker);
