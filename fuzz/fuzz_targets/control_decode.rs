//! The control decoder under arbitrary bytes in arbitrary splits, and
//! `decode` under arbitrary bodies. The oracle: every message yielded was
//! whole and canonical (it re-encodes to exactly the bytes it came from, and
//! `encoded_len` agrees); the decoder waits only on an acceptable, unfinished
//! length; and what `decode` accepts re-encodes to the body it was given.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plugboard_core::control::{decode, encode, encoded_len, ControlDecoder, Message, MAX_MESSAGE};

/// The stream is one slice that takes the rest of the input, so the fuzzer's
/// byte mutations land on it directly; `splits` cut it into pushes.
#[derive(Arbitrary, Debug)]
struct Input<'a> {
    splits: Vec<u16>,
    stream: &'a [u8],
}

fn encoded(message: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out);
    assert_eq!(out.len(), encoded_len(message));
    out
}

fuzz_target!(|input: Input<'_>| {
    let stream = input.stream;

    if let Ok(message) = decode(stream) {
        let again = encoded(&message);
        assert_eq!(&again[4..], stream, "{message:?}");
    }

    let mut decoder = ControlDecoder::new();
    let mut pushed = 0usize;
    let pieces = input
        .splits
        .iter()
        .map(|&s| usize::from(s))
        .chain([usize::MAX]);
    'feed: for split in pieces {
        let end = pushed.saturating_add(split).min(stream.len());
        decoder.push(&stream[pushed..end]);
        pushed = end;
        loop {
            let start = pushed - decoder.buffered();
            match decoder.next() {
                Ok(Some(message)) => {
                    let frame = &stream[start..pushed - decoder.buffered()];
                    assert_eq!(&encoded(&message)[..], frame, "{message:?}");
                    assert_eq!(decode(&frame[4..]), Ok(message));
                }
                Ok(None) => {
                    let held = &stream[start..pushed];
                    if let Some(prefix) = held.first_chunk::<4>() {
                        let len = u32::from_be_bytes(*prefix) as usize;
                        assert!((1..=MAX_MESSAGE).contains(&len), "waited on length {len}");
                        assert!(held.len() < 4 + len, "a whole message held back");
                    }
                    break;
                }
                Err(_) => break 'feed,
            }
        }
        if pushed == stream.len() {
            break;
        }
    }
});
