//! The crypto provider a build runs on, chosen once for every runtime.

use plugboard_core::crypto::Crypto;

/// libsodium when built with the `libsodium` feature, the pure-Rust
/// RustCrypto provider otherwise: what the plugin builders take unless told
/// otherwise, and what the `plugboard` command gives its broker. (A
/// `HandshakeConfig` built with `HandshakeConfig::new`, such as a server's,
/// is on RustCrypto until its `crypto` is set, for example to this.)
/// `conformance/tests/crypto_provider.rs` checks that the feature reaches here.
///
/// # Panics
/// With the `libsodium` feature, if libsodium cannot initialize (see
/// `plugboard_sodium::Sodium::new`).
pub fn default_crypto() -> Crypto {
    #[cfg(feature = "libsodium")]
    let crypto = plugboard_sodium::crypto();
    #[cfg(not(feature = "libsodium"))]
    let crypto = Crypto::default();
    crypto
}
