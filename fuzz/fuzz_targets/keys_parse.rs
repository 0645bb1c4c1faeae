//! The text decoders: SSB ids, network keys, secret files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugboard_core::keys::secret_file;
use plugboard_core::{NetworkKey, PublicKey};

fuzz_target!(|text: &str| {
    if let Ok(key) = text.parse::<PublicKey>() {
        assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
    }
    if let Ok(key) = text.parse::<NetworkKey>() {
        assert_eq!(key.to_string().parse::<NetworkKey>(), Ok(key));
    }
    if let Ok(keypair) = secret_file::parse(text) {
        let again = secret_file::parse(&secret_file::format(&keypair)).unwrap();
        assert_eq!(again.public(), keypair.public());
    }
});
