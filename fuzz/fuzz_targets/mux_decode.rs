//! The mux under arbitrary peer bytes in arbitrary splits, with a few
//! channels open. Oracles: no panic; every frame the decoder yields encodes
//! back to the bytes it came from; no channel ever receives more than the
//! credit it granted; after a violation nothing more is accepted.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plugboard_core::mux::{frame, FrameDecoder, Mux, MuxConfig, MuxInput, Side};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    splits: Vec<u16>,
    consume: Vec<u16>,
    stream: &'a [u8],
}

fuzz_target!(|input: Input| {
    // The frame decoder alone: what it accepts re-encodes to the same bytes.
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(input.stream);
    let mut at = 0;
    while let Ok(Some(f)) = decoder.next_frame() {
        let mut out = BytesMut::new();
        frame::encode(&f, &mut out);
        let end = at + out.len();
        // Reasons longer than the limit cannot be decoded, so this holds exactly.
        assert_eq!(&out[..], &input.stream[at..end], "{f:?}");
        at = end;
    }

    // The mux: channels 1 and 3 are the peer's, 2 is ours.
    let config = MuxConfig {
        max_frame: 1024,
        initial_window: 4096,
        max_window: 16384,
        max_connection_window: 65536,
    };
    let mut mux = Mux::new(Side::Listener, config);
    mux.open_remote(1).unwrap();
    mux.open_remote(3).unwrap();
    let ours = mux.open_local();
    assert_eq!(ours, 2);
    let mut received = [0usize; 4];
    let mut granted = [4096usize; 4];
    let mut consume = input.consume.iter();
    let mut rest = input.stream;
    let mut failed = false;
    for split in input
        .splits
        .iter()
        .map(|&s| usize::from(s))
        .chain([usize::MAX])
    {
        if failed {
            // A violation ends the connection: the owner stops feeding it.
            break;
        }
        let (mut now, later) = rest.split_at(split.min(rest.len()));
        rest = later;
        loop {
            match mux.poll_input(&mut now) {
                Ok(Some(MuxInput::Data { channel, bytes })) => {
                    assert!(!bytes.is_empty(), "an empty piece");
                    if channel == 0 {
                        continue; // the control channel has no credit
                    }
                    let c = channel as usize;
                    received[c] += bytes.len();
                    assert!(
                        received[c] <= granted[c],
                        "channel {c} got more than its credit"
                    );
                    if let Some(&n) = consume.next() {
                        let n = usize::from(n).min(bytes.len());
                        mux.consume(channel, n);
                    }
                }
                Ok(Some(MuxInput::Event(_))) => {}
                Ok(None) => {
                    assert!(now.is_empty(), "input left over");
                    break;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        // Credit actually granted is what the WINDOW frames we send say.
        while let Some(bytes) = mux.poll_transmit() {
            let mut d = FrameDecoder::new(u32::MAX);
            d.push(&bytes);
            if let Ok(Some(frame::Frame::Window { channel, increment })) = d.next_frame() {
                granted[channel as usize] += increment as usize;
            }
        }
        if rest.is_empty() {
            break;
        }
    }
});
