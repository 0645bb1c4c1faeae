//! The `libsodium` feature of this crate reaches every adapter's
//! `default_crypto()` and the suite's own configurations: the
//! `--all-features` run really runs the suite on libsodium, and the default
//! run on RustCrypto.

use plugboard_conformance::{handshake, keys};

#[test]
fn the_feature_reaches_every_adapter() {
    let expected = match cfg!(feature = "libsodium") {
        true => "libsodium",
        false => "rustcrypto",
    };
    assert_eq!(plugboard_tokio::default_crypto().name(), expected);
    assert_eq!(plugboard_smol::default_crypto().name(), expected);
    assert_eq!(plugboard_mio::default_crypto().name(), expected);
    assert_eq!(handshake(keys(1)).crypto.name(), expected);
}
