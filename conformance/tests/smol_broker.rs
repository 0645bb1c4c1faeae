//! The suite against the smol broker, with each plugin API; and the smol
//! plugin API against the tokio broker.

use plugboard_conformance::api::{SmolApi, TokioApi};
use plugboard_conformance::broker::{SmolBroker, TokioBroker};
use plugboard_conformance::mio_api::MioApi;

plugboard_conformance::suite!(smol_api, SmolBroker, SmolApi);
plugboard_conformance::suite!(tokio_api, SmolBroker, TokioApi);
plugboard_conformance::suite!(mio_api, SmolBroker, MioApi);
plugboard_conformance::suite!(smol_api_on_tokio, TokioBroker, SmolApi);
plugboard_conformance::hostile_suite!(hostile, SmolBroker);
