//! The crypto provider a build runs on, chosen once for every runtime.

use plugboard_core::crypto::Crypto;

/// libsodium when built with the `libsodium` feature, the pure-Rust
/// RustCrypto provider otherwise. What the plugin builders, the `plugboard`
/// command and the tests take when nobody chose.
pub fn default_crypto() -> Crypto {
    #[cfg(feature = "libsodium")]
    let crypto = plugboard_sodium::crypto();
    #[cfg(not(feature = "libsodium"))]
    let crypto = Crypto::default();
    crypto
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_feature_chooses() {
        let expected = match cfg!(feature = "libsodium") {
            true => "libsodium",
            false => "rustcrypto",
        };
        assert_eq!(super::default_crypto().name(), expected);
    }
}
