//! Direct paths and the descriptors they leave, for each broker with each
//! plugin API. The scenario looks at this process's open descriptors: the
//! tests in this binary run one at a time.

use std::sync::Mutex;

use plugboard_conformance::api::{SmolApi, TokioApi};
use plugboard_conformance::broker::{MioBroker, SmolBroker, TokioBroker};
use plugboard_conformance::descriptors::direct_paths_leave_no_descriptor_behind;
use plugboard_conformance::mio_api::MioApi;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

macro_rules! alone {
    ($($test:ident: $broker:ty, $api:ty;)*) => {
        $(
            #[test]
            fn $test() {
                // A test that failed before does not stop the others.
                let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
                direct_paths_leave_no_descriptor_behind::<$broker, $api>();
            }
        )*
    };
}

alone! {
    tokio_broker_tokio_api: TokioBroker, TokioApi;
    tokio_broker_smol_api: TokioBroker, SmolApi;
    tokio_broker_mio_api: TokioBroker, MioApi;
    smol_broker_tokio_api: SmolBroker, TokioApi;
    smol_broker_smol_api: SmolBroker, SmolApi;
    smol_broker_mio_api: SmolBroker, MioApi;
    mio_broker_tokio_api: MioBroker, TokioApi;
    mio_broker_smol_api: MioBroker, SmolApi;
    mio_broker_mio_api: MioBroker, MioApi;
}
