//! The worked examples of docs/PROTOCOL.md §10, byte for byte: if the code
//! and the document disagree, this fails.

use bytes::BytesMut;
use plugboard_core::broker::Limits;
use plugboard_core::control::{encode, Message, Name, TransportKind};
use plugboard_core::mux::{frame, Frame};

/// A control message inside a DATA frame on channel 0, as hex.
fn on_channel_0(message: &Message) -> String {
    let mut body = BytesMut::new();
    encode(message, &mut body);
    let mut out = BytesMut::new();
    frame::encode(
        &Frame::Data {
            channel: 0,
            fin: false,
            payload: body.freeze(),
        },
        &mut out,
    );
    hex::encode(out)
}

fn doc_hex(text: &str) -> String {
    text.split_whitespace().collect()
}

#[test]
fn client_hello() {
    let hello = Message::ClientHello {
        min_version: 1,
        max_version: 1,
        features: 0,
    };
    assert_eq!(
        on_channel_0(&hello),
        doc_hex("00 00 00 00 00 00 00 00 00 11 00 00 00 0d 01 00 01 00 01 00 00 00 00 00 00 00 00")
    );
}

#[test]
fn broker_hello_with_default_limits() {
    let hello = Message::BrokerHello {
        version: 1,
        features: 0,
        transport: TransportKind::Unix,
        limits: Limits::default().announced(),
    };
    assert_eq!(
        on_channel_0(&hello),
        doc_hex(
            "00 00 00 00 00 00 00 00 00 30 00 00 00 2c 02 00 01 00 00 00 00 00 00 00 00 01
             00 00 40 00 00 04 00 00 01 00 00 00 00 00 10 00 00 00 00 40 00 00 27 10
             00 00 75 30 00 10 00 00"
        )
    );
}

#[test]
fn window_frame() {
    let mut out = BytesMut::new();
    frame::encode(
        &Frame::Window {
            channel: 1,
            increment: 131072,
        },
        &mut out,
    );
    assert_eq!(
        hex::encode(out),
        doc_hex("01 00 00 00 00 01 00 00 00 04 00 02 00 00")
    );
}

#[test]
fn register() {
    let register = Message::Register {
        request: 1,
        name: Name::new("indexer").unwrap(),
        wait: false,
        direct_addr: String::new(),
    };
    assert_eq!(
        on_channel_0(&register),
        doc_hex("00 00 00 00 00 00 00 00 00 14  00 00 00 10  10  00 00 00 01  00  07 69 6e 64 65 78 65 72  00 00")
    );
}
