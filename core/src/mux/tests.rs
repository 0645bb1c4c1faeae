//! Two muxes talking in memory.

use bytes::{Bytes, BytesMut};

use super::*;

fn small_config() -> MuxConfig {
    MuxConfig {
        max_frame: 1024,
        initial_window: 4096,
        max_window: 16 * 1024,
        max_connection_window: 64 * 1024,
    }
}

fn pair() -> (Mux, Mux) {
    let mut a = Mux::new(Side::Dialer, small_config());
    let mut b = Mux::new(Side::Listener, small_config());
    a.set_peer_max_frame(1024);
    b.set_peer_max_frame(1024);
    (a, b)
}

/// What a mux said: bytes on a channel, or an event.
#[derive(Debug, PartialEq)]
enum Got {
    Data(ChannelId, Vec<u8>),
    Event(MuxEvent),
}

/// Feeds `input` to `mux`; returns everything it said, in order.
fn feed(mux: &mut Mux, mut input: &[u8]) -> Result<Vec<Got>, MuxError> {
    let mut got = Vec::new();
    while let Some(next) = mux.poll_input(&mut input)? {
        got.push(match next {
            MuxInput::Data { channel, bytes } => Got::Data(channel, bytes.to_vec()),
            MuxInput::Event(event) => Got::Event(event),
        });
    }
    Ok(got)
}

/// Moves everything `from` has to send into `to`; returns what `to` said.
fn pump(from: &mut Mux, to: &mut Mux) -> Vec<Got> {
    let mut got = Vec::new();
    while let Some(chunk) = from.poll_transmit() {
        got.extend(feed(to, &chunk).unwrap());
    }
    got.extend(events(to));
    got
}

/// The events waiting with no input.
fn events(mux: &mut Mux) -> Vec<Got> {
    std::iter::from_fn(|| mux.poll_event())
        .map(Got::Event)
        .collect()
}

fn data_of(got: &[Got], id: ChannelId) -> Vec<u8> {
    got.iter()
        .filter_map(|g| match g {
            Got::Data(channel, bytes) if *channel == id => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A channel opened by `a` and announced to `b`.
fn open(a: &mut Mux, b: &mut Mux) -> ChannelId {
    let id = a.open_local();
    b.open_remote(id).unwrap();
    id
}

#[test]
fn ids_never_collide() {
    let (mut a, mut b) = pair();
    assert_eq!([a.open_local(), a.open_local()], [1, 3]);
    assert_eq!([b.open_local(), b.open_local()], [2, 4]);
    assert_eq!(b.open_remote(1), Ok(()));
    assert_eq!(b.open_remote(1), Err(MuxError::BadChannelId(1)), "reused");
    assert_eq!(
        b.open_remote(6),
        Err(MuxError::BadChannelId(6)),
        "b's parity"
    );
    assert_eq!(b.open_remote(0), Err(MuxError::BadChannelId(0)));
    assert_eq!(b.open_remote(5), Ok(()), "gaps are fine, going back is not");
    assert_eq!(b.open_remote(3), Err(MuxError::BadChannelId(3)));
}

#[test]
fn sender_stops_at_credit_and_resumes_on_grant() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    a.send(id, Bytes::from(data.clone())).unwrap();
    assert_eq!(a.send_capacity(id), 0);
    let got = pump(&mut a, &mut b);
    assert_eq!(
        data_of(&got, id),
        data[..4096],
        "exactly the initial window"
    );
    assert_eq!(a.queued(id), 10_000 - 4096);

    // The reader consumes: credit goes back, more flows, until all arrived.
    let mut received = data_of(&got, id);
    let mut consumed = 0;
    while received.len() < data.len() {
        b.consume(id, received.len() - consumed);
        consumed = received.len();
        pump(&mut b, &mut a);
        let more = data_of(&pump(&mut a, &mut b), id);
        assert!(!more.is_empty(), "stalled at {}", received.len());
        received.extend(more);
    }
    assert_eq!(received, data);
}

#[test]
fn window_grows_while_the_reader_keeps_up_and_stops_at_the_cap() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    let mut delivered = 0usize;
    for _ in 0..50 {
        a.send(id, Bytes::from(vec![7; a.send_capacity(id)]))
            .unwrap();
        let n = data_of(&pump(&mut a, &mut b), id).len();
        delivered += n;
        b.consume(id, n);
        pump(&mut b, &mut a);
    }
    let window = b.channels[&id].window;
    assert_eq!(window, 16 * 1024, "grew from 4 KiB to max_window");
    assert!(delivered > 50 * 4096);
}

#[test]
fn a_slow_reader_keeps_its_window() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    for _ in 0..20 {
        a.send(id, Bytes::from(vec![7; a.send_capacity(id)]))
            .unwrap();
        let n = data_of(&pump(&mut a, &mut b), id).len();
        // Consumes only half of what arrived: never caught up.
        b.consume(id, n / 2 + 1);
        pump(&mut b, &mut a);
    }
    assert_eq!(b.channels[&id].window, 4096);
}

#[test]
fn urgent_frames_overtake_bulk_data_and_channels_take_turns() {
    let (mut a, mut b) = pair();
    let one = open(&mut a, &mut b);
    let two = open(&mut a, &mut b);
    a.send(one, Bytes::from(vec![1; 4096])).unwrap();
    a.send(two, Bytes::from(vec![2; 4096])).unwrap();
    // Take one frame's worth, then queue a control message and a ping.
    a.poll_transmit().unwrap();
    a.poll_transmit().unwrap();
    a.send_control(b"hello");
    a.ping(9);
    let next = a.poll_transmit().unwrap();
    assert_eq!(next[0], 0, "DATA");
    assert_eq!(&next[2..6], &[0, 0, 0, 0], "on the control channel");
    assert_eq!(a.poll_transmit().unwrap()[0], 3, "then the PING");
    // Then data frames alternate between the two channels.
    let mut order = Vec::new();
    while let Some(chunk) = a.poll_transmit() {
        if chunk.len() == HEADER_LEN && chunk[0] == 0 {
            order.push(u32::from_be_bytes(chunk[2..6].try_into().unwrap()));
        }
    }
    assert_eq!(&order[..4], &[two, one, two, one]);
}

#[test]
fn half_close_then_close() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    a.send(id, Bytes::from_static(b"request")).unwrap();
    a.finish(id).unwrap();
    assert_eq!(
        a.send(id, Bytes::from_static(b"x")),
        Err(ChannelError::Finished(id))
    );
    let got = pump(&mut a, &mut b);
    assert_eq!(data_of(&got, id), b"request");
    assert!(got.contains(&Got::Event(MuxEvent::Fin { channel: id })));
    // b still answers on its half.
    b.send(id, Bytes::from_static(b"response")).unwrap();
    b.finish(id).unwrap();
    let got = pump(&mut b, &mut a);
    assert_eq!(data_of(&got, id), b"response");
    assert!(got.contains(&Got::Event(MuxEvent::Fin { channel: id })));
    assert!(got.contains(&Got::Event(MuxEvent::Closed { channel: id })));
    assert!(events(&mut b).contains(&Got::Event(MuxEvent::Closed { channel: id })));
    assert!(!a.contains(id) && !b.contains(id));
}

#[test]
fn reset_drops_queued_data_and_late_frames() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    b.send(id, Bytes::from(vec![5; 3000])).unwrap();
    let in_flight: Vec<Bytes> = std::iter::from_fn(|| b.poll_transmit()).collect();
    a.send(id, Bytes::from(vec![1; 100])).unwrap();
    a.reset(id, ErrorCode::Cancelled, "bye");
    assert_eq!(a.queued(id), 0);
    let got = pump(&mut a, &mut b);
    assert_eq!(
        got,
        vec![Got::Event(MuxEvent::Reset {
            channel: id,
            code: ErrorCode::Cancelled,
            reason: "bye".into()
        })]
    );
    // What b sent before it learned of the reset is dropped, not an error.
    for chunk in in_flight {
        assert_eq!(feed(&mut a, &chunk), Ok(vec![]));
    }
}

#[test]
fn reset_when_sent_sends_the_queue_and_fin_first() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    a.send(id, Bytes::from(vec![3; 6000])).unwrap();
    a.finish(id).unwrap();
    a.reset_when_sent(id, ErrorCode::PeerGone, "gone");
    // Beyond the initial window: the rest waits for credit.
    let got = pump(&mut a, &mut b);
    assert_eq!(data_of(&got, id).len(), 4096);
    assert!(a.contains(id) && a.has_unsent(id));
    b.consume(id, 4096);
    let got = pump(&mut b, &mut a);
    assert!(
        matches!(got[..], [Got::Event(MuxEvent::Credit { .. })]),
        "{got:?}"
    );
    let got = pump(&mut a, &mut b);
    assert_eq!(data_of(&got, id).len(), 6000 - 4096);
    let reset = Got::Event(MuxEvent::Reset {
        channel: id,
        code: ErrorCode::PeerGone,
        reason: "gone".into(),
    });
    let fin = got
        .iter()
        .position(|g| *g == Got::Event(MuxEvent::Fin { channel: id }));
    assert_eq!(fin, Some(got.len() - 2), "FIN, then the reset: {got:?}");
    assert_eq!(got.last(), Some(&reset));
    assert_eq!(
        events(&mut a),
        vec![Got::Event(MuxEvent::Closed { channel: id })]
    );
    assert!(!a.contains(id) && !b.contains(id));
}

#[test]
fn reset_when_sent_to_a_peer_that_finished_resets_in_place_of_the_fin() {
    for finished_before in [true, false] {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        let b_finishes = |a: &mut Mux, b: &mut Mux| {
            b.finish(id).unwrap();
            pump(b, a);
        };
        if finished_before {
            b_finishes(&mut a, &mut b);
        }
        a.send(id, Bytes::from_static(b"last words")).unwrap();
        a.finish(id).unwrap();
        a.reset_when_sent(id, ErrorCode::PeerGone, "gone");
        if !finished_before {
            b_finishes(&mut a, &mut b);
        }
        let got = pump(&mut a, &mut b);
        assert_eq!(data_of(&got, id), b"last words");
        // b's direction went unheard: no FIN to close it cleanly.
        assert!(
            !got.contains(&Got::Event(MuxEvent::Fin { channel: id })),
            "{got:?}"
        );
        assert!(
            matches!(got.last(), Some(Got::Event(MuxEvent::Reset { .. }))),
            "{got:?}"
        );
        assert_eq!(
            events(&mut a),
            vec![Got::Event(MuxEvent::Closed { channel: id })]
        );
        assert!(!a.contains(id) && !b.contains(id));
    }
}

#[test]
fn reset_when_sent_with_nothing_left_resets_now() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    assert!(!a.has_unsent(id));
    a.reset_when_sent(id, ErrorCode::PeerGone, "gone");
    assert!(!a.contains(id));
    assert_eq!(
        events(&mut a),
        vec![Got::Event(MuxEvent::Closed { channel: id })]
    );
    let got = pump(&mut a, &mut b);
    assert!(
        matches!(got[..], [Got::Event(MuxEvent::Reset { .. })]),
        "{got:?}"
    );
}

/// Everything `mux` has to send, as one stream.
fn output(mux: &mut Mux) -> Vec<u8> {
    std::iter::from_fn(|| mux.poll_transmit())
        .flatten()
        .collect()
}

#[test]
fn credit_is_taken_as_payload_passes() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    a.send(id, Bytes::from(vec![7; 1000])).unwrap();
    let frame = output(&mut a);
    let initial = b.recv_credit(id);
    // The header and 300 bytes of the payload: only those are charged, the
    // rest is still the sender's (a relay counts it as owed, not queued).
    let cut = HEADER_LEN + 300;
    assert_eq!(data_of(&feed(&mut b, &frame[..cut]).unwrap(), id), [7; 300]);
    assert_eq!(b.recv_credit(id), initial - 300);
    assert_eq!(data_of(&feed(&mut b, &frame[cut..]).unwrap(), id), [7; 700]);
    assert_eq!(b.recv_credit(id), initial - 1000);
}

#[test]
fn a_channel_reset_mid_frame_takes_no_more_of_it() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    let other = open(&mut a, &mut b);
    a.send(id, Bytes::from(vec![7; 1000])).unwrap();
    a.send(other, Bytes::from(vec![8; 10])).unwrap();
    let stream = output(&mut a);
    let cut = HEADER_LEN + 300;
    assert_eq!(
        data_of(&feed(&mut b, &stream[..cut]).unwrap(), id),
        [7; 300]
    );
    b.reset(id, ErrorCode::Cancelled, "enough");
    // The rest of the frame is dropped; the frame after it reads as usual.
    assert_eq!(
        feed(&mut b, &stream[cut..]).unwrap(),
        [Got::Data(other, vec![8; 10])]
    );
}

#[test]
fn going_away_mid_frame_passes_no_more_of_it_even_on_the_control_channel() {
    let (mut a, mut b) = pair();
    a.send_control(&[3; 100]);
    let stream = output(&mut a);
    let cut = HEADER_LEN + 40;
    assert_eq!(data_of(&feed(&mut b, &stream[..cut]).unwrap(), 0), [3; 40]);
    b.go_away(ErrorCode::Shutdown, "closing");
    assert_eq!(feed(&mut b, &stream[cut..]).unwrap(), []);
}

#[test]
fn ping_is_answered() {
    let (mut a, mut b) = pair();
    a.ping(42);
    assert!(pump(&mut a, &mut b).is_empty());
    assert_eq!(
        pump(&mut b, &mut a),
        vec![Got::Event(MuxEvent::Pong { opaque: 42 })]
    );
}

#[test]
fn go_away_is_the_last_frame() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    a.send(id, Bytes::from(vec![1; 100])).unwrap();
    a.go_away(ErrorCode::Shutdown, "closing");
    assert_eq!(
        pump(&mut a, &mut b),
        vec![Got::Event(MuxEvent::GoAway {
            code: ErrorCode::Shutdown,
            reason: "closing".into()
        })]
    );
    assert!(b.is_going_away());
}

/// Raw frames a misbehaving peer could send.
fn raw(frame: Frame) -> BytesMut {
    let mut out = BytesMut::new();
    frame::encode(&frame, &mut out);
    out
}

#[test]
fn violations_end_the_connection() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    let data = |channel, len, fin| {
        raw(Frame::Data {
            channel,
            fin,
            payload: Bytes::from(vec![0; len]),
        })
    };
    assert_eq!(
        feed(&mut b, &data(7, 1, false)),
        Err(MuxError::UnknownChannel(7))
    );
    // Broken: whatever comes next is taken and ignored.
    let mut next = &data(id, 1, false)[..];
    assert_eq!(b.poll_input(&mut next), Ok(None));
    assert!(next.is_empty());
    let (_, mut b) = pair();
    assert_eq!(
        feed(&mut b, &data(4, 1, false)),
        Err(MuxError::UnknownChannel(4)),
        "b's own id space, never allocated"
    );

    let (_, mut b) = pair();
    b.open_remote(id).unwrap();
    for _ in 0..4 {
        feed(&mut b, &data(id, 1024, false)).unwrap();
    }
    assert_eq!(
        feed(&mut b, &data(id, 1, false)),
        Err(MuxError::BeyondCredit {
            channel: id,
            len: 1,
            credit: 0
        })
    );

    let (_, mut b) = pair();
    b.open_remote(id).unwrap();
    feed(&mut b, &data(id, 1, true)).unwrap();
    assert_eq!(
        feed(&mut b, &data(id, 1, false)),
        Err(MuxError::DataAfterFin(id))
    );

    let (_, mut b) = pair();
    b.open_remote(id).unwrap();
    let window = |increment| {
        raw(Frame::Window {
            channel: id,
            increment,
        })
    };
    feed(&mut b, &window(u32::MAX - 4096)).unwrap();
    assert_eq!(feed(&mut b, &window(1)), Err(MuxError::CreditOverflow(id)));

    let (_, mut b) = pair();
    assert!(matches!(
        feed(
            &mut b,
            &raw(Frame::Data {
                channel: 1,
                fin: false,
                payload: Bytes::from(vec![0; 1025])
            })
        ),
        Err(MuxError::Frame(FrameError::TooLong {
            len: 1025,
            max: 1024
        }))
    ));
}

#[test]
fn go_away_finishes_a_frame_already_begun() {
    // Regression: the payload of a DATA frame whose header was written was
    // dropped, and the peer read the GOAWAY as that payload.
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    a.send(id, Bytes::from(vec![1; 100])).unwrap();
    let header = a.poll_transmit().unwrap();
    assert_eq!(header.len(), HEADER_LEN);
    a.go_away(ErrorCode::Shutdown, "bye");
    assert_eq!(feed(&mut b, &header), Ok(vec![]));
    let got = pump(&mut a, &mut b);
    assert_eq!(data_of(&got, id), vec![1; 100]);
    assert!(got.contains(&Got::Event(MuxEvent::GoAway {
        code: ErrorCode::Shutdown,
        reason: "bye".into()
    })));
}

#[test]
fn no_credit_for_a_finished_direction() {
    // Regression: the relay passed WINDOW frames on after the sender's FIN.
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    a.finish(id).unwrap();
    pump(&mut a, &mut b);
    assert!(b.recv_finished(id));
    b.grant(id, 1000);
    assert!(b.poll_transmit().is_none());
}

/// Regression: credit owed but not yet written grew by plain addition, and
/// a peer that sends without reading can make it pass 2^32 (a panic with
/// debug assertions). It saturates now, and one WINDOW still goes out.
#[test]
fn credit_owed_past_u32_saturates() {
    let (mut a, mut b) = pair();
    let id = open(&mut a, &mut b);
    b.grant(id, u32::MAX - 10);
    b.grant(id, 100);
    let mut frames = FrameDecoder::new(1 << 20);
    frames.push(&b.poll_transmit().expect("a WINDOW"));
    assert_eq!(
        frames.next_frame().unwrap(),
        Some(Frame::Window {
            channel: id,
            increment: u32::MAX
        })
    );
    assert!(b.poll_transmit().is_none(), "one WINDOW for both grants");
}
