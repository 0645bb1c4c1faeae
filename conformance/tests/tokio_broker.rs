//! The suite against the tokio broker, with the tokio plugin API.

use plugboard_conformance::api::TokioApi;
use plugboard_conformance::broker::TokioBroker;

plugboard_conformance::suite!(tokio_api, TokioBroker, TokioApi);
plugboard_conformance::hostile_suite!(hostile, TokioBroker);
