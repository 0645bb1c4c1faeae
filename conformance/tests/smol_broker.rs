//! The suite against the smol broker, with the smol plugin API and with the
//! tokio one; and the smol plugin API against the tokio broker.

use plugboard_conformance::api::{SmolApi, TokioApi};
use plugboard_conformance::broker::{SmolBroker, TokioBroker};

plugboard_conformance::suite!(smol_api, SmolBroker, SmolApi);
plugboard_conformance::suite!(tokio_api, SmolBroker, TokioApi);
plugboard_conformance::suite!(smol_api_on_tokio, TokioBroker, SmolApi);
plugboard_conformance::hostile_suite!(hostile, SmolBroker);
