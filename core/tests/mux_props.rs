//! Mux frames round-trip; and between two muxes, whatever the write sizes,
//! read pace and transmit splits, the sender never exceeds the credit, the
//! windows stay within their caps, and every byte arrives once, in order.

use bytes::{Bytes, BytesMut};
use plugboard_core::control::ErrorCode;
use plugboard_core::mux::{frame, Frame, FrameDecoder, Mux, MuxConfig, MuxError, MuxInput, Side};
use proptest::prelude::*;

/// Feeds `input` to `mux`: channel bytes to `data`, events dropped.
fn feed(mux: &mut Mux, mut input: &[u8], mut data: impl FnMut(u32, &[u8])) -> Result<(), MuxError> {
    while let Some(next) = mux.poll_input(&mut input)? {
        if let MuxInput::Data { channel, bytes } = next {
            data(channel, bytes);
        }
    }
    Ok(())
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    let code = any::<u16>().prop_map(ErrorCode::from_u16);
    prop_oneof![
        (
            1..u32::MAX,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(channel, fin, p)| Frame::Data {
                channel,
                fin,
                payload: Bytes::from(p)
            }),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(|p| Frame::Data {
            channel: 0,
            fin: false,
            payload: Bytes::from(p)
        }),
        (1..u32::MAX, 1..u32::MAX)
            .prop_map(|(channel, increment)| Frame::Window { channel, increment }),
        (1..u32::MAX, code.clone(), "\\PC{0,200}").prop_map(|(channel, code, reason)| {
            Frame::Reset {
                channel,
                code,
                reason,
            }
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(opaque, pong)| Frame::Ping { opaque, pong }),
        (code, "\\PC{0,200}").prop_map(|(code, reason)| Frame::GoAway { code, reason }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip_in_any_split(
        frames in proptest::collection::vec(frame_strategy(), 1..10),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            frame::encode(f, &mut stream);
        }
        let cut = cut.index(stream.len() + 1);
        let mut decoder = FrameDecoder::new(4096);
        let mut decoded = Vec::new();
        for piece in [&stream[..cut], &stream[cut..]] {
            decoder.push(piece);
            while let Some(f) = decoder.next_frame().unwrap() {
                decoded.push(f);
            }
        }
        // Reset codes keep their number; `Other(n)` for a known n decodes to its name.
        let normalize = |f: &Frame| match f {
            Frame::Reset { channel, code, reason } => Frame::Reset { channel: *channel, code: ErrorCode::from_u16(code.to_u16()), reason: reason.clone() },
            Frame::GoAway { code, reason } => Frame::GoAway { code: ErrorCode::from_u16(code.to_u16()), reason: reason.clone() },
            other => other.clone(),
        };
        prop_assert_eq!(decoded, frames.iter().map(normalize).collect::<Vec<_>>());
        prop_assert_eq!(decoder.buffered(), 0);
    }

    /// However the input is cut, the mux passes on the same bytes per
    /// channel and the same events in the same order, and fails the same.
    #[test]
    fn any_split_of_the_input_says_the_same(
        frames in proptest::collection::vec(frame_strategy(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            // Channels 1 and 3, which the receiver knows, most of the time.
            let f = match f {
                Frame::Data { channel, fin, payload } if *channel != 0 => Frame::Data { channel: 1 + 2 * (channel % 2), fin: *fin, payload: payload.clone() },
                Frame::Window { channel, increment } => Frame::Window { channel: 1 + 2 * (channel % 2), increment: *increment },
                other => other.clone(),
            };
            frame::encode(&f, &mut stream);
        }
        let run = |cuts: &[usize]| {
            let config = MuxConfig { max_frame: 4096, ..MuxConfig::default() };
            let mut rx = Mux::new(Side::Listener, config);
            rx.open_remote(1).unwrap();
            rx.open_remote(3).unwrap();
            let mut said: Vec<String> = Vec::new();
            let mut bytes = [Vec::new(), Vec::new(), Vec::new()];
            let mut at = 0;
            for &cut in cuts.iter().chain([stream.len()].iter()) {
                let mut input = &stream[at..cut.max(at)];
                at = cut.max(at);
                loop {
                    match rx.poll_input(&mut input) {
                        Ok(Some(MuxInput::Data { channel, bytes: b })) => {
                            prop_assert!(!b.is_empty());
                            bytes[channel as usize / 2 + usize::from(channel != 0)].extend_from_slice(b);
                        }
                        Ok(Some(MuxInput::Event(event))) => said.push(format!("{event:?}")),
                        Ok(None) => break,
                        Err(e) => {
                            said.push(format!("{e}"));
                            return Ok((said, bytes));
                        }
                    }
                }
            }
            Ok((said, bytes))
        };
        let whole = run(&[])?;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(run(&cuts)?, whole);
    }

    #[test]
    fn flow_control_holds_under_any_schedule(
        writes in proptest::collection::vec(1..20_000usize, 1..30),
        reads in proptest::collection::vec(0..30_000usize, 1..60),
        pulls in proptest::collection::vec(0..8usize, 1..60),
    ) {
        let config = MuxConfig { max_frame: 4096, initial_window: 8192, max_window: 65536, max_connection_window: 100_000 };
        let mut tx = Mux::new(Side::Dialer, config);
        let mut rx = Mux::new(Side::Listener, config);
        tx.set_peer_max_frame(4096);
        rx.set_peer_max_frame(4096);
        let channels = [tx.open_local(), tx.open_local()];
        for id in channels {
            rx.open_remote(id).unwrap();
        }
        let total: usize = writes.iter().sum();
        let mut sent = [0usize; 2];
        let mut received = [Vec::new(), Vec::new()];
        let mut unread = [0usize; 2];
        let mut writes = writes.into_iter();
        let (mut reads, mut pulls) = (reads.iter().cycle(), pulls.iter().cycle());
        for round in 0..5_000 {
            // The writer writes what credit allows, alternating channels.
            let which = round % 2;
            let id = channels[which];
            if let Some(len) = writes.next() {
                let len = len.min(tx.send_capacity(id));
                let data: Vec<u8> = (sent[which]..sent[which] + len).map(|i| (i % 251) as u8).collect();
                tx.send(id, Bytes::from(data)).unwrap();
                sent[which] += len;
            }
            // Some of the writer's output reaches the reader.
            for _ in 0..*pulls.next().unwrap() {
                let Some(chunk) = tx.poll_transmit() else { break };
                feed(&mut rx, &chunk, |channel, bytes| {
                    let i = channels.iter().position(|c| *c == channel).unwrap();
                    received[i].extend_from_slice(bytes);
                    unread[i] += bytes.len();
                })
                .expect("the sender stays within its credit");
            }
            // The reader consumes at its own pace; credit flows back.
            for i in 0..2 {
                let n = unread[i].min(*reads.next().unwrap());
                rx.consume(channels[i], n);
                unread[i] -= n;
            }
            while let Some(chunk) = rx.poll_transmit() {
                feed(&mut tx, &chunk, |_, _| {}).unwrap();
            }
            prop_assert!(rx.recv_credit(channels[0]) <= 65536 && rx.recv_credit(channels[1]) <= 65536);
            if received[0].len() + received[1].len() == total && writes.len() == 0 {
                break;
            }
            if writes.len() == 0 && received[0].len() == sent[0] && received[1].len() == sent[1] {
                break;
            }
        }
        // Drain: everything sent arrives, once, in order.
        for _ in 0..10_000 {
            let mut moved = false;
            let mut arrived = Vec::new();
            while let Some(chunk) = tx.poll_transmit() {
                feed(&mut rx, &chunk, |channel, bytes| {
                    let i = channels.iter().position(|c| *c == channel).unwrap();
                    received[i].extend_from_slice(bytes);
                    arrived.push((channel, bytes.len()));
                })
                .expect("the sender stays within its credit");
                moved = true;
            }
            for (channel, n) in arrived {
                rx.consume(channel, n);
            }
            for i in 0..2 {
                rx.consume(channels[i], unread[i]);
                unread[i] = 0;
            }
            while let Some(chunk) = rx.poll_transmit() {
                feed(&mut tx, &chunk, |_, _| {}).unwrap();
                moved = true;
            }
            if !moved {
                break;
            }
        }
        for i in 0..2 {
            prop_assert_eq!(received[i].len(), sent[i]);
            prop_assert!(received[i].iter().enumerate().all(|(n, b)| *b == (n % 251) as u8));
        }
    }
}
