//! The suite against the mio broker, with each plugin API.

use plugboard_conformance::api::{SmolApi, TokioApi};
use plugboard_conformance::broker::MioBroker;
use plugboard_conformance::mio_api::MioApi;

plugboard_conformance::suite!(tokio_api, MioBroker, TokioApi);
plugboard_conformance::suite!(smol_api, MioBroker, SmolApi);
plugboard_conformance::suite!(mio_api, MioBroker, MioApi);
plugboard_conformance::hostile_suite!(hostile, MioBroker);
