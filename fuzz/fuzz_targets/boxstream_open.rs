//! The box-stream opener under honest streams with arbitrary damage, extra
//! bytes and splits. The oracle: whatever is delivered is a prefix of what
//! was sealed, and an undamaged stream is delivered whole. Both crypto
//! providers seal every stream, and must write the same bytes; the input
//! picks which one opens it.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plugboard_core::boxstream::{Event, Opener, Sealer, MAX_BODY};
use plugboard_core::crypto::Crypto;

#[derive(Arbitrary, Debug)]
struct Input {
    open_with_libsodium: bool,
    nonce: [u8; 24],
    writes: Vec<Vec<u8>>,
    goodbye: bool,
    damage: Vec<(u16, u8)>,
    appended: Vec<u8>,
    splits: Vec<u16>,
}

const KEY: [u8; 32] = [9; 32];

fn seal(crypto: &Crypto, input: &Input) -> Vec<u8> {
    let mut sealer = Sealer::new(crypto, &KEY, &input.nonce);
    let mut stream = BytesMut::new();
    for write in &input.writes {
        sealer.seal(write, &mut stream).unwrap();
    }
    if input.goodbye {
        sealer.goodbye(&mut stream).unwrap();
    }
    stream.to_vec()
}

fuzz_target!(|input: Input| {
    let (rust, sodium) = (Crypto::rust_crypto(), plugboard_sodium::crypto());
    let mut stream = seal(&rust, &input);
    assert!(
        stream == seal(&sodium, &input),
        "the providers sealed differently"
    );
    let honest_len = stream.len();
    let mut damaged = false;
    for &(at, xor) in &input.damage {
        if let Some(byte) = stream.get_mut(usize::from(at)) {
            *byte ^= xor;
            damaged |= xor != 0;
        }
    }
    stream.extend_from_slice(&input.appended);

    let crypto = if input.open_with_libsodium {
        &sodium
    } else {
        &rust
    };
    let mut opener = Opener::new(crypto, &KEY, &input.nonce);
    let mut data = Vec::new();
    let mut goodbye = false;
    let mut error = None;
    let mut at = 0usize;
    for split in input
        .splits
        .iter()
        .map(|&s| usize::from(s))
        .chain([usize::MAX])
    {
        let end = at.saturating_add(split).min(stream.len());
        if let Err(e) = opener.handle_input(&stream[at..end]) {
            error.get_or_insert(e);
        }
        while let Some(event) = opener.poll_event() {
            match event {
                Event::Data(bytes) => {
                    assert!(!goodbye && !bytes.is_empty() && bytes.len() <= MAX_BODY);
                    data.extend_from_slice(&bytes);
                }
                Event::Goodbye => goodbye = true,
            }
        }
        at = end;
        if at == stream.len() {
            break;
        }
    }
    let eof = opener.handle_eof();

    let plaintext = input.writes.concat();
    assert!(
        plaintext.starts_with(&data),
        "delivered bytes that were never sealed"
    );
    if !damaged && input.appended.is_empty() {
        assert!(error.is_none() && data == plaintext && goodbye == input.goodbye);
        assert_eq!(eof.is_ok(), input.goodbye);
    }
    if goodbye {
        // Only an authentic goodbye at the honest end of the stream counts.
        assert!(input.goodbye && data == plaintext && stream.len() >= honest_len);
    }
});
