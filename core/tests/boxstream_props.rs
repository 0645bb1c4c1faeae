//! Property tests of box-stream: write sizes and read splits do not change
//! what arrives; garbage never becomes data; every provider writes the same
//! bytes and opens the other's.

use bytes::BytesMut;
use plugboard_core::boxstream::{BoxStreamError, Event, Opener, Sealer, MAX_BODY};
use plugboard_core::crypto::Crypto;
use proptest::prelude::*;

fn open_in_pieces(
    crypto: &Crypto,
    key: &[u8; 32],
    nonce: &[u8; 24],
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, bool) {
    let mut opener = Opener::new(crypto, key, nonce);
    let mut data = Vec::new();
    let mut goodbye = false;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.extend([0, stream.len()]);
    points.sort_unstable();
    for w in points.windows(2) {
        opener.handle_input(&stream[w[0]..w[1]]).unwrap();
        while let Some(event) = opener.poll_event() {
            match event {
                Event::Data(bytes) => {
                    assert!(!bytes.is_empty() && bytes.len() <= MAX_BODY);
                    data.extend_from_slice(&bytes);
                }
                Event::Goodbye => goodbye = true,
            }
        }
    }
    opener.handle_eof().unwrap();
    (data, goodbye)
}

fn seal_all(crypto: &Crypto, key: &[u8; 32], nonce: &[u8; 24], writes: &[Vec<u8>]) -> BytesMut {
    let mut sealer = Sealer::new(crypto, key, nonce);
    let mut stream = BytesMut::new();
    for write in writes {
        sealer.seal(write, &mut stream).unwrap();
    }
    sealer.goodbye(&mut stream).unwrap();
    stream
}

proptest! {
    #[test]
    fn write_sizes_and_split_points_do_not_matter(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        writes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..9000), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let stream = seal_all(&Crypto::rust_crypto(), &key, &nonce, &writes);
        let (data, goodbye) = open_in_pieces(&Crypto::rust_crypto(), &key, &nonce, &stream, &cuts);
        prop_assert!(goodbye);
        prop_assert_eq!(data, writes.concat());
    }

    #[test]
    fn providers_write_identical_frames_and_open_each_other(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        writes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..9000), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        flip in any::<(usize, u8)>(),
    ) {
        let (rust, sodium) = (Crypto::rust_crypto(), plugboard_sodium::crypto());
        let stream = seal_all(&rust, &key, &nonce, &writes);
        prop_assert_eq!(&stream, &seal_all(&sodium, &key, &nonce, &writes));
        for crypto in [&rust, &sodium] {
            let (data, goodbye) = open_in_pieces(crypto, &key, &nonce, &stream, &cuts);
            prop_assert!(goodbye);
            prop_assert_eq!(data, writes.concat());
        }
        // One flipped bit is refused by both, after the same frames.
        let (at, bit) = (flip.0 % stream.len(), 1u8 << (flip.1 % 8));
        let mut forged = stream.to_vec();
        forged[at] ^= bit;
        let outcomes: Vec<_> = [&rust, &sodium]
            .into_iter()
            .map(|crypto| {
                let mut opener = Opener::new(crypto, &key, &nonce);
                let result = opener.handle_input(&forged);
                (result, std::iter::from_fn(|| opener.poll_event()).collect::<Vec<_>>())
            })
            .collect();
        prop_assert_eq!(&outcomes[0].0, &Err(BoxStreamError::Forged));
        prop_assert_eq!(&outcomes[0], &outcomes[1]);
    }

    #[test]
    fn garbage_is_never_data(
        input in proptest::collection::vec(any::<u8>(), 0..5000),
        cut in any::<usize>(),
    ) {
        let mut opener = Opener::new(&Crypto::default(), &[1; 32], &[2; 24]);
        let cut = cut % (input.len() + 1);
        let first = opener.handle_input(&input[..cut]);
        let second = opener.handle_input(&input[cut..]);
        prop_assert!(opener.poll_event().is_none());
        if input.len() >= 34 {
            prop_assert_eq!(first.and(second), Err(BoxStreamError::Forged));
        } else {
            prop_assert_eq!(opener.handle_eof(), Err(BoxStreamError::Truncated(input.len())));
        }
    }
}
