//! Property tests of the control codec: every message survives the wire in
//! any split; cut, extended or arbitrary bytes are errors, never panics, and
//! whatever decodes re-encodes to the same bytes.

use bytes::{Bytes, BytesMut};
use plugboard_core::control::{
    decode, encode, encoded_len, AnnouncedLimits, CauseCount, ChannelPath, ControlDecoder,
    DecodeError, ErrorCode, IncomingPath, KeyStats, Member, Message, MonitorEvent, MonitorKind,
    Name, NameStats, OpenedPath, Outcome, Presence, TransportKind, Usage, MAX_MESSAGE,
    MAX_METADATA, MAX_SHORT_TEXT, MAX_TEXT,
};
use plugboard_core::PublicKey;
use proptest::collection::vec;
use proptest::prelude::*;

// ── strategies ───────────────────────────────────────────────────────────

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        4 => "[a-z0-9._-]{1,12}",
        1 => "[a-z0-9._-]{255}",
        1 => "[a-z0-9._-]{200,255}",
    ]
    .prop_map(|text| Name::new(&text).unwrap())
}

/// The longest prefix of `text` that fits `max` bytes.
fn cut(mut text: String, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Text of up to `max` bytes, often empty or exactly `max` (also in
/// multi-byte characters).
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>().prop_map(move |t| cut(t, max)),
        vec(any::<char>(), 0..=max).prop_map(move |cs| cut(cs.into_iter().collect(), max)),
        Just("x".repeat(max)),
        Just("é".repeat(max / 2)),
    ]
}

fn metadata() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Vec::new()),
        vec(any::<u8>(), 0..64),
        vec(any::<u8>(), MAX_METADATA),
    ]
    .prop_map(Bytes::from)
}

fn key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn transport() -> impl Strategy<Value = TransportKind> {
    prop_oneof![Just(TransportKind::Unix), Just(TransportKind::Tcp)]
}

fn member() -> impl Strategy<Value = Member> {
    (name(), key(), transport(), any::<u64>()).prop_map(|(name, key, transport, connected_ms)| {
        Member {
            name,
            key,
            transport,
            connected_ms,
        }
    })
}

fn members() -> impl Strategy<Value = Vec<Member>> {
    vec(member(), 0..6)
}

fn usage() -> impl Strategy<Value = Usage> {
    any::<(u32, u32, u64, u64, u64)>().prop_map(
        |(connections, channels, bytes_in, bytes_out, queued)| Usage {
            connections,
            channels,
            bytes_in,
            bytes_out,
            queued,
        },
    )
}

fn limits() -> impl Strategy<Value = AnnouncedLimits> {
    any::<[u32; 8]>().prop_map(|l| AnnouncedLimits {
        max_frame: l[0],
        initial_window: l[1],
        max_window: l[2],
        max_channels: l[3],
        max_pending_opens: l[4],
        open_timeout_ms: l[5],
        idle_timeout_ms: l[6],
        max_control_queue: l[7],
    })
}

fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![
        member().prop_map(Presence::Up),
        (name(), key()).prop_map(|(name, key)| Presence::Down { name, key }),
        // The wire carries the name once: the new owner holds the same one.
        (key(), member()).prop_map(|(old_key, new)| Presence::OwnerChanged {
            name: new.name.clone(),
            old_key,
            new,
        }),
    ]
}

fn incoming_path() -> impl Strategy<Value = IncomingPath> {
    prop_oneof![
        Just(IncomingPath::Relay),
        Just(IncomingPath::AwaitPath),
        any::<[u8; 32]>().prop_map(|token| IncomingPath::ExpectDial { token }),
    ]
}

fn opened_path() -> impl Strategy<Value = OpenedPath> {
    prop_oneof![
        Just(OpenedPath::Relay),
        Just(OpenedPath::SocketPair),
        (text(MAX_TEXT), any::<[u8; 32]>())
            .prop_map(|(addr, token)| OpenedPath::Dial { addr, token }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let request = any::<u32>();
    let channel = any::<u32>();
    prop_oneof![
        any::<(u16, u16, u64)>().prop_map(|(min_version, max_version, features)| {
            Message::ClientHello {
                min_version,
                max_version,
                features,
            }
        }),
        (any::<u16>(), any::<u64>(), transport(), limits()).prop_map(
            |(version, features, transport, limits)| Message::BrokerHello {
                version,
                features,
                transport,
                limits,
            }
        ),
        (request, name(), any::<bool>(), text(MAX_TEXT)).prop_map(
            |(request, name, wait, direct_addr)| Message::Register {
                request,
                name,
                wait,
                direct_addr,
            }
        ),
        request.prop_map(|request| Message::List { request }),
        request.prop_map(|request| Message::Watch { request }),
        request.prop_map(|request| Message::Unwatch { request }),
        request.prop_map(|request| Message::Stats { request }),
        (
            request,
            channel,
            any::<bool>(),
            name(),
            text(MAX_SHORT_TEXT),
            metadata()
        )
            .prop_map(|(request, channel, direct, name, protocol, metadata)| {
                Message::Open {
                    request,
                    channel,
                    direct,
                    name,
                    protocol,
                    metadata,
                }
            }),
        channel.prop_map(|channel| Message::Accept { channel }),
        (channel, text(MAX_TEXT)).prop_map(|(channel, reason)| Message::Reject { channel, reason }),
        channel.prop_map(|channel| Message::DirectFailed { channel }),
        (request, any::<u16>(), text(MAX_TEXT)).prop_map(|(request, code, message)| {
            Message::Error {
                request,
                code: ErrorCode::from_u16(code),
                message,
            }
        }),
        request.prop_map(|request| Message::Ok { request }),
        (request, any::<bool>())
            .prop_map(|(request, queued)| Message::Registered { request, queued }),
        name().prop_map(|name| Message::NameAcquired { name }),
        (request, any::<bool>(), members()).prop_map(|(request, last, members)| {
            Message::ListPage {
                request,
                last,
                members,
            }
        }),
        (request, any::<u64>(), any::<bool>(), members()).prop_map(
            |(request, seq, last, members)| Message::Snapshot {
                request,
                seq,
                last,
                members,
            }
        ),
        (any::<u64>(), any::<bool>(), members()).prop_map(|(seq, last, members)| Message::Resync {
            seq,
            last,
            members
        }),
        (any::<u64>(), presence())
            .prop_map(|(seq, presence)| Message::PresenceEvent { seq, presence }),
        (
            request,
            any::<bool>(),
            vec(
                (key(), usage()).prop_map(|(key, usage)| KeyStats { key, usage }),
                0..5
            ),
            vec(
                (name(), key(), usage()).prop_map(|(name, key, usage)| NameStats {
                    name,
                    key,
                    usage
                }),
                0..5
            ),
        )
            .prop_map(|(request, last, keys, names)| Message::StatsPage {
                request,
                last,
                keys,
                names,
            }),
        (
            request,
            vec(
                (any::<bool>(), any::<u64>(), text(MAX_SHORT_TEXT)).prop_map(
                    |(refusal, count, cause)| CauseCount {
                        outcome: match refusal {
                            true => Outcome::Refusal,
                            false => Outcome::Disconnect,
                        },
                        cause,
                        count,
                    }
                ),
                0..5
            ),
        )
            .prop_map(|(request, counters)| Message::CounterPage { request, counters }),
        (
            request,
            proptest::option::of(key()),
            proptest::option::of(name())
        )
            .prop_map(|(request, key, name)| Message::Monitor { request, key, name }),
        (
            (
                1u8..=9,
                any::<u64>(),
                proptest::option::of(key()),
                proptest::option::of(key())
            ),
            (
                proptest::option::of(name()),
                text(MAX_SHORT_TEXT),
                any::<[u64; 3]>(),
                text(MAX_TEXT)
            ),
        )
            .prop_map(|((kind, channel, key, peer), (name, cause, n, detail))| {
                Message::MonitorEvent(MonitorEvent {
                    kind: MonitorKind::from_u8(kind).expect("1..=9"),
                    channel,
                    key,
                    peer,
                    name,
                    cause,
                    to_target: n[0],
                    to_opener: n[1],
                    duration_ms: n[2],
                    detail,
                })
            }),
        (
            channel,
            proptest::option::of(name()),
            key(),
            text(MAX_SHORT_TEXT),
            metadata(),
            incoming_path(),
        )
            .prop_map(|(channel, from_name, from_key, protocol, metadata, path)| {
                Message::Incoming {
                    channel,
                    from_name,
                    from_key,
                    protocol,
                    metadata,
                    path,
                }
            }),
        (request, channel, key(), opened_path()).prop_map(|(request, channel, peer, path)| {
            Message::Opened {
                request,
                channel,
                peer,
                path,
            }
        }),
        (
            channel,
            prop_oneof![Just(ChannelPath::Relay), Just(ChannelPath::SocketPair)]
        )
            .prop_map(|(channel, path)| Message::ChannelPath { channel, path }),
    ]
}

// ── helpers ──────────────────────────────────────────────────────────────

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(message, &mut out);
    out.to_vec()
}

/// Feeds `stream` cut at `cuts` (taken modulo its length) and collects what
/// comes out, stopping at the first error.
fn decode_in_pieces(
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Message>, Result<(), DecodeError>, usize) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.extend([0, stream.len()]);
    points.sort_unstable();
    let mut decoder = ControlDecoder::new();
    let mut messages = Vec::new();
    for w in points.windows(2) {
        decoder.push(&stream[w[0]..w[1]]);
        loop {
            match decoder.next() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => return (messages, Err(error), decoder.buffered()),
            }
        }
    }
    (messages, Ok(()), decoder.buffered())
}

/// Whatever decodes is canonical: it re-encodes to the very bytes it came from.
fn assert_canonical(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = decode(body) {
        let again = encoded(&message);
        prop_assert_eq!(&again[4..], body, "{:?}", message);
    }
    Ok(())
}

// ── properties ───────────────────────────────────────────────────────────

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(message in message()) {
        let bytes = encoded(&message);
        prop_assert!(bytes.len() >= 5);
        prop_assert!(bytes.len() - 4 <= MAX_MESSAGE);
        let prefix = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(prefix, bytes.len() - 4);
        prop_assert_eq!(encoded_len(&message), bytes.len());
        prop_assert_eq!(decode(&bytes[4..]), Ok(message.clone()));

        // Encoding appends: what was in the buffer stays.
        let mut out = BytesMut::from(&b"before"[..]);
        encode(&message, &mut out);
        prop_assert_eq!(&out[..6], b"before");
        prop_assert_eq!(&out[6..], &bytes[..]);
    }

    #[test]
    fn list_members_add_up(request in any::<u32>(), last in any::<bool>(), members in members()) {
        let page = Message::ListPage { request, last, members: members.clone() };
        let sizes: usize = members.iter().map(Member::encoded_len).sum();
        // Prefix, kind, request, last, count.
        prop_assert_eq!(encoded_len(&page), 4 + 1 + 4 + 1 + 4 + sizes);
        for member in &members {
            prop_assert!(member.encoded_len() <= Member::MAX_ENCODED_LEN);
        }
    }

    #[test]
    fn splits_do_not_matter(
        messages in vec(message(), 0..6),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(encoded).collect();
        let (decoded, result, left) = decode_in_pieces(&stream, &cuts);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(decoded, messages);
        prop_assert_eq!(left, 0);
    }

    #[test]
    fn a_cut_stream_holds_back_the_unfinished_message(
        messages in vec(message(), 1..4),
        cut in 1usize..,
        splits in vec(any::<usize>(), 0..8),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(encoded).collect();
        let last_len = encoded(messages.last().unwrap()).len();
        let cut = 1 + cut % last_len; // 1..=last_len bytes missing
        let (decoded, result, left) = decode_in_pieces(&stream[..stream.len() - cut], &splits);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(&decoded[..], &messages[..messages.len() - 1]);
        prop_assert_eq!(left, last_len - cut);
    }

    #[test]
    fn cut_bodies_are_truncated(message in message(), cut in any::<usize>()) {
        let bytes = encoded(&message);
        let body = &bytes[4..];
        let keep = cut % body.len(); // 0..body.len(): at least one byte gone
        let expected = if keep == 0 { DecodeError::Empty } else { DecodeError::Truncated };
        prop_assert_eq!(decode(&body[..keep]), Err(expected));
    }

    #[test]
    fn extended_bodies_have_trailing_bytes(
        message in message(),
        extra in vec(any::<u8>(), 1..50),
    ) {
        let mut body = encoded(&message)[4..].to_vec();
        body.extend_from_slice(&extra);
        prop_assert_eq!(decode(&body), Err(DecodeError::TrailingBytes(extra.len())));
    }

    #[test]
    fn damaged_messages_never_panic_and_stay_canonical(
        message in message(),
        damage in vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut body = encoded(&message)[4..].to_vec();
        for (at, value) in damage {
            let at = at % body.len();
            body[at] = value;
        }
        assert_canonical(&body)?;
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_stay_canonical(
        kind in prop_oneof![0x01u8..=0x02, 0x10u8..=0x2a, any::<u8>()],
        rest in vec(any::<u8>(), 0..400),
    ) {
        let body = [&[kind][..], &rest].concat();
        assert_canonical(&body)?;
        assert_canonical(&rest)?;
    }

    #[test]
    fn arbitrary_streams_never_panic(
        stream in vec(any::<u8>(), 0..2000),
        cuts in vec(any::<usize>(), 0..10),
    ) {
        let (decoded, result, left) = decode_in_pieces(&stream, &cuts);
        // Every message taken was whole and canonical, in stream order.
        let taken: Vec<u8> = decoded.iter().flat_map(encoded).collect();
        prop_assert_eq!(&stream[..taken.len()], &taken[..]);
        if result.is_ok() {
            prop_assert_eq!(taken.len() + left, stream.len());
        }
    }

    #[test]
    fn over_long_prefixes_are_refused_at_once(len in (MAX_MESSAGE as u32 + 1)..) {
        let mut decoder = ControlDecoder::new();
        decoder.push(&len.to_be_bytes());
        prop_assert_eq!(decoder.next(), Err(DecodeError::TooLong { len: len as usize }));
    }
}
