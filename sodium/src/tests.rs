//! The two providers agree at the primitive: the same ciphertext and tag for
//! any key, nonce and message, and each opens what the other sealed.

use bytes::BytesMut;
use plugboard_core::crypto::{Crypto, SecretBox};
use proptest::prelude::*;

fn boxes(key: &[u8; 32]) -> [Box<dyn SecretBox>; 2] {
    [
        Crypto::rust_crypto().secretbox(key),
        super::crypto().secretbox(key),
    ]
}

proptest! {
    #[test]
    fn seal_and_open_agree(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        message in proptest::collection::vec(any::<u8>(), 0..5000),
        flip in any::<(usize, u8)>(),
    ) {
        let [rust, sodium] = boxes(&key);
        let (mut by_rust, mut by_sodium) = (message.clone(), message.clone());
        let tag = rust.seal_detached(&nonce, &mut by_rust);
        prop_assert_eq!(tag, sodium.seal_detached(&nonce, &mut by_sodium));
        prop_assert_eq!(&by_rust, &by_sodium);

        for (opener, sealed) in [(&rust, by_sodium.clone()), (&sodium, by_rust.clone())] {
            let mut opened = sealed;
            prop_assert!(opener.open_detached(&nonce, &mut opened, &tag));
            prop_assert_eq!(&opened, &message);
        }

        // A flipped bit in the ciphertext or the tag fails both.
        let (mut forged, mut forged_tag) = (by_rust.clone(), tag);
        let at = flip.0 % (forged.len() + forged_tag.len());
        match at.checked_sub(forged.len()) {
            None => forged[at] ^= 1 << (flip.1 % 8),
            Some(i) => forged_tag[i] ^= 1 << (flip.1 % 8),
        }
        for opener in [&rust, &sodium] {
            prop_assert!(!opener.open_detached(&nonce, &mut forged.clone(), &forged_tag));
        }

        // Appending (from one buffer into another) gives the same bytes,
        // after what `out` held; a forgery leaves `out` as it was.
        for cipher in [&rust, &sodium] {
            let mut out = BytesMut::from(&b"before"[..]);
            prop_assert_eq!(cipher.seal_detached_append(&nonce, &message, &mut out), tag);
            prop_assert_eq!(&out[..6], b"before");
            prop_assert_eq!(&out[6..], &by_rust[..]);
            let mut out = BytesMut::from(&b"before"[..]);
            prop_assert!(cipher.open_detached_append(&nonce, &by_rust, &tag, &mut out));
            prop_assert_eq!(&out[6..], &message[..]);
            let mut out = BytesMut::from(&b"before"[..]);
            prop_assert!(!cipher.open_detached_append(&nonce, &forged, &forged_tag, &mut out));
            prop_assert_eq!(&out[..], b"before");
        }
    }
}

#[test]
fn named() {
    let (a, b) = (super::crypto(), super::Sodium::new());
    assert_eq!(a.name(), "libsodium");
    assert_eq!(
        plugboard_core::crypto::CryptoProvider::name(&b),
        "libsodium"
    );
}
