//! Every way a box-stream can be attacked or cut, each a typed error, never data.

use bytes::BytesMut;

use super::*;

const KEY: [u8; 32] = [7; 32];
const NONCE: [u8; 24] = [0xab; 24];

fn sealed(writes: &[&[u8]], goodbye: bool) -> Vec<u8> {
    let mut sealer = Sealer::new(&Crypto::default(), &KEY, &NONCE);
    let mut out = BytesMut::new();
    for write in writes {
        sealer.seal(write, &mut out).unwrap();
    }
    if goodbye {
        sealer.goodbye(&mut out).unwrap();
    }
    out.to_vec()
}

/// Feeds `stream`; returns the data delivered and the result.
fn open(stream: &[u8]) -> (Vec<u8>, Result<(), BoxStreamError>) {
    let mut opener = Opener::new(&Crypto::default(), &KEY, &NONCE);
    let result = opener.handle_input(stream);
    let mut data = Vec::new();
    while let Some(event) = opener.poll_event() {
        if let Event::Data(bytes) = event {
            data.extend_from_slice(&bytes);
        }
    }
    (data, result)
}

/// A frame header boxed with the right key and nonce, saying anything.
fn header_saying(len: u16, body_tag: [u8; 16]) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_LEN];
    header[16..18].copy_from_slice(&len.to_be_bytes());
    header[18..].copy_from_slice(&body_tag);
    let tag = Crypto::default()
        .secretbox(&KEY)
        .seal_detached(&NONCE, &mut header[16..]);
    header[..16].copy_from_slice(&tag);
    header
}

#[test]
fn round_trip_and_frame_sizes() {
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let stream = sealed(&[&data], true);
    assert_eq!(stream.len(), Sealer::sealed_len(data.len()) + HEADER_LEN);
    assert_eq!(Sealer::sealed_len(4096), 4096 + 34);
    assert_eq!(Sealer::sealed_len(4097), 4097 + 68);
    assert_eq!(Sealer::sealed_len(0), 0);
    let (opened, result) = open(&stream);
    assert_eq!(result, Ok(()));
    assert_eq!(opened, data);
}

#[test]
fn every_flipped_bit_is_refused() {
    let stream = sealed(&[b"hello", b"world"], true);
    for bit in 0..stream.len() * 8 {
        let mut bad = stream.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let (data, result) = open(&bad);
        let frame = bit / 8 / (HEADER_LEN + 5);
        assert_eq!(result, Err(BoxStreamError::Forged), "bit {bit}");
        // Frames before the damaged one are delivered; nothing after.
        assert_eq!(data, b"helloworld"[..5 * frame.min(2)], "bit {bit}");
    }
}

#[test]
fn reordered_and_replayed_frames_are_refused() {
    let stream = sealed(&[b"one", b"two"], false);
    let (first, second) = stream.split_at(HEADER_LEN + 3);
    assert_eq!(
        open(&[second, first].concat()).1,
        Err(BoxStreamError::Forged)
    );
    assert_eq!(
        open(&[first, first].concat()).1,
        Err(BoxStreamError::Forged)
    );
}

#[test]
fn authentic_oversized_body_is_refused() {
    let header = header_saying(4097, [0; 16]);
    assert_eq!(open(&header).1, Err(BoxStreamError::BodyTooLong(4097)));
}

#[test]
fn authentic_empty_frame_is_no_data() {
    // A body of zero bytes still carries a tag: the secretbox of nothing.
    let mut nothing = [];
    let mut body_nonce = nonce::Nonce(NONCE);
    body_nonce.next();
    let tag = Crypto::default()
        .secretbox(&KEY)
        .seal_detached(&body_nonce.next(), &mut nothing);
    let header = header_saying(0, tag);
    let mut opener = Opener::new(&Crypto::default(), &KEY, &NONCE);
    opener.handle_input(&header).unwrap();
    assert_eq!(opener.poll_event(), None);
    assert!(!opener.is_finished());
}

#[test]
fn anything_after_goodbye_is_an_error() {
    let stream = sealed(&[b"bye"], true);
    let (data, result) = open(&[&stream[..], b"x"].concat());
    assert_eq!(result, Err(BoxStreamError::DataAfterGoodbye));
    assert_eq!(data, b"bye");

    let mut opener = Opener::new(&Crypto::default(), &KEY, &NONCE);
    opener.handle_input(&stream).unwrap();
    assert!(opener.is_finished());
    assert_eq!(opener.handle_input(&[]), Ok(()));
    assert_eq!(
        opener.handle_input(b"late"),
        Err(BoxStreamError::DataAfterGoodbye)
    );
    assert_eq!(opener.handle_eof(), Err(BoxStreamError::DataAfterGoodbye));
}

#[test]
fn end_without_goodbye_is_truncation() {
    let stream = sealed(&[b"abc"], false);
    for cut in [0, 10, HEADER_LEN, stream.len()] {
        let mut opener = Opener::new(&Crypto::default(), &KEY, &NONCE);
        opener.handle_input(&stream[..cut]).unwrap();
        let unfinished = if cut == stream.len() { 0 } else { cut };
        assert_eq!(
            opener.handle_eof(),
            Err(BoxStreamError::Truncated(unfinished)),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_failed_stream_stays_failed() {
    let mut stream = sealed(&[b"abc", b"def"], true);
    stream[0] ^= 1;
    let mut opener = Opener::new(&Crypto::default(), &KEY, &NONCE);
    assert_eq!(opener.handle_input(&stream), Err(BoxStreamError::Forged));
    let good = sealed(&[b"abc"], true);
    assert_eq!(opener.handle_input(&good), Err(BoxStreamError::Forged));
    assert_eq!(opener.poll_event(), None);
}

#[test]
fn nothing_is_sealed_after_goodbye() {
    let mut sealer = Sealer::new(&Crypto::default(), &KEY, &NONCE);
    let mut out = BytesMut::new();
    sealer.goodbye(&mut out).unwrap();
    assert_eq!(sealer.seal(b"x", &mut out), Err(BoxStreamError::Closed));
    assert_eq!(sealer.goodbye(&mut out), Err(BoxStreamError::Closed));
    assert_eq!(out.len(), HEADER_LEN);
}

#[test]
fn bodies_that_arrive_whole_share_an_allocation() {
    // Regression: each body once took an allocation of its own (two, with
    // its split), because the plaintext buffer reserved exactly one body.
    let writes: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1000]).collect();
    let stream = sealed(&writes.iter().map(Vec::as_slice).collect::<Vec<_>>(), false);
    let mut opener = Opener::new(&Crypto::default(), &KEY, &NONCE);
    opener.handle_input(&stream).unwrap();
    let bodies: Vec<_> = std::iter::from_fn(|| opener.poll_event()).collect();
    assert_eq!(bodies.len(), 8);
    for pair in bodies.windows(2) {
        let (Event::Data(a), Event::Data(b)) = (&pair[0], &pair[1]) else {
            panic!("data expected");
        };
        assert_eq!(
            a.as_ptr().wrapping_add(a.len()),
            b.as_ptr(),
            "one buffer, in order"
        );
    }
}
