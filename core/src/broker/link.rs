//! One connection's own half of the broker: its handshake and its
//! transport (box-stream or plain). Everything here is per byte or crypto,
//! and touches nothing another connection owns, so a runtime can drive
//! each link on its own thread and take the [`Hub`](super::Hub) only for
//! what its events carry: the plaintext mux bytes, the admission of a key,
//! the end.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use crate::boxstream::BoxStreamError;
use crate::keys::PublicKey;
use crate::shs::{self, HandshakeConfig, HandshakeError, ServerHandshake};
use crate::time::Instant;
use crate::wire::BoxedIo;

/// A connection's handshake and transport, as the broker's server side.
pub struct Link {
    stage: Stage,
    events: VecDeque<LinkEvent>,
}

enum Stage {
    /// shs1 in progress; `boxed` says what the transport will be.
    Handshake {
        shs: Box<ServerHandshake>,
        boxed: bool,
        first_message_seen: bool,
    },
    /// No handshake (a legacy `noauth` socket): the peer's key is taken as
    /// given ([`Link::noauth`]), and what it sends waits for the verdict,
    /// up to `MAX_EARLY`.
    Trusted { early: BytesMut },
    /// Past the handshake. `tail` is message 4, until it is written.
    Plain { tail: Option<Bytes> },
    Boxed {
        io: Box<BoxedIo>,
        tail: Option<Bytes>,
    },
    /// The handshake failed or the box-stream broke: nothing more goes out.
    Broken,
}

/// What a link tells its owner, who carries it to the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The client's first message checked out: the whole handshake's
    /// deadline holds from now on, not the first message's.
    FirstMessage,
    /// The client proved `key`: ask the hub, then [`Link::authorize`].
    Authorize(PublicKey),
    /// The handshake is over; the mux starts.
    Established,
    /// Plaintext mux bytes, in order.
    Input(BytesMut),
    /// The peer ended the connection or broke it. The last event (after
    /// a legacy client's goodbye the link may still send: the hub keeps
    /// the connection for the plugin's answer, see PROTOCOL §11).
    Ended(LinkEnd),
}

/// How a link's peer ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// The handshake failed.
    Handshake(HandshakeError),
    /// The peer said box-stream's goodbye.
    Goodbye,
    /// The box-stream was forged, cut, or went on after goodbye.
    BoxStream(BoxStreamError),
    /// A `noauth` peer sent more than this before it was admitted.
    TooEarly(usize),
}

/// Most a `noauth` peer may send before the plugin's verdict: a client
/// speaks first (muxrpc may), but does not stream before an answer.
const MAX_EARLY: usize = 64 * 1024;

impl Link {
    /// A link with no handshake (a legacy `noauth` socket): its peer is
    /// taken to be `key`, for the hub to authorize as it would a proved one
    /// ([`LinkEvent::Authorize`] comes first); no box-stream follows.
    pub fn noauth(key: PublicKey) -> Self {
        Link {
            stage: Stage::Trusted {
                early: BytesMut::new(),
            },
            events: VecDeque::from([LinkEvent::Authorize(key)]),
        }
    }

    /// A link for a connection just accepted: its handshake starts, with an
    /// ephemeral key from `rng`. `boxed`: box-stream follows the handshake
    /// (TCP, or unix with box-stream asked for).
    pub fn new(
        config: Arc<HandshakeConfig>,
        rng: &mut impl CryptoRngCore,
        now: Instant,
        boxed: bool,
    ) -> Self {
        Link {
            stage: Stage::Handshake {
                shs: Box::new(ServerHandshake::new(config, rng, now)),
                boxed,
                first_message_seen: false,
            },
            events: VecDeque::new(),
        }
    }

    /// Bytes from the socket. Runs the handshake's crypto or opens boxes;
    /// what comes of it is in [`Link::poll_event`]. Past a plain handshake
    /// the bytes are the mux's as they are: they are given back, for the
    /// caller to hand the connection's port
    /// ([`PortHandle::handle_input`](super::PortHandle::handle_input), or
    /// [`Hub::handle_plaintext`](super::Hub::handle_plaintext) on one
    /// thread) after the events it polls, with nothing copied.
    #[must_use = "plaintext passed through goes to the connection's port"]
    pub fn handle_input<'a>(&mut self, now: Instant, input: &'a [u8]) -> Option<&'a [u8]> {
        match &mut self.stage {
            Stage::Handshake {
                shs,
                first_message_seen,
                ..
            } => {
                if let Err(e) = shs.handle_input(now, input) {
                    self.break_with(LinkEnd::Handshake(e));
                    return None;
                }
                if !*first_message_seen && shs.phase() != Some(shs::Phase::ClientHello) {
                    *first_message_seen = true;
                    self.events.push_back(LinkEvent::FirstMessage);
                }
            }
            // Behind events still to carry (never, with an owner that
            // polls after every input), it must wait its turn: a copy.
            Stage::Plain { .. } if !self.events.is_empty() => {
                if !input.is_empty() {
                    let input = BytesMut::from(input);
                    self.events.push_back(LinkEvent::Input(input));
                }
            }
            Stage::Plain { .. } => return (!input.is_empty()).then_some(input),
            Stage::Trusted { early } if early.len() + input.len() <= MAX_EARLY => {
                early.extend_from_slice(input);
            }
            Stage::Trusted { .. } => self.break_with(LinkEnd::TooEarly(MAX_EARLY)),
            Stage::Boxed { .. } => self.open(input),
            Stage::Broken => {}
        }
        None
    }

    /// The hub's verdict on the key [`LinkEvent::Authorize`] named: accepted,
    /// message 4 is made (and [`LinkEvent::Established`] follows); refused,
    /// the handshake ends with nothing more sent.
    pub fn authorize(&mut self, accept: bool) {
        match &mut self.stage {
            Stage::Handshake { shs, .. } => {
                let broken = shs.authorize(accept).is_err() || !accept;
                if broken {
                    self.stage = Stage::Broken;
                }
            }
            Stage::Trusted { early } if accept => {
                let early = std::mem::take(early);
                self.stage = Stage::Plain { tail: None };
                self.events.push_back(LinkEvent::Established);
                if !early.is_empty() {
                    self.events.push_back(LinkEvent::Input(early));
                }
            }
            Stage::Trusted { .. } => self.stage = Stage::Broken,
            _ => {}
        }
    }

    /// The socket ended: whether on a box boundary (or a plain link's:
    /// a clean end of the stream), and why, for the log (a box-stream that
    /// ends without its goodbye was cut). Nothing more goes out (no last
    /// words answer a peer that is gone), unless `half_close` and the end
    /// was clean: a legacy client's socket may still hear the plugin out.
    pub fn handle_eof(&mut self, half_close: bool) -> (bool, String) {
        let (clean, reason) = match &mut self.stage {
            Stage::Handshake { shs, .. } => match shs.handle_eof() {
                Err(e) => (false, e.to_string()),
                Ok(()) => (false, "closed during the handshake".into()),
            },
            Stage::Boxed { io, .. } => match io.handle_eof() {
                Ok(()) => (true, "closed by the peer".into()),
                // On a box boundary, without the goodbye (ssb-client's way).
                Err(e @ BoxStreamError::Truncated(0)) => (true, format!("closed by the peer: {e}")),
                Err(e) => (false, format!("closed by the peer: {e}")),
            },
            Stage::Plain { .. } => (true, "closed by the peer".into()),
            Stage::Trusted { .. } => (false, "closed before it was admitted".into()),
            Stage::Broken => (false, "closed by the peer".into()),
        };
        if !(clean && half_close) {
            self.handle_disconnect();
        }
        (clean, reason)
    }

    /// Box-stream's goodbye now (a legacy client's plugin finished): the
    /// bytes to write after what was sealed before; nothing more is sealed
    /// after it. Empty on a plain link (its runtime shuts the socket's
    /// writing half instead) and once said.
    pub fn goodbye(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if let Stage::Boxed { io, .. } = &mut self.stage {
            io.goodbye(&mut out);
        }
        out.freeze()
    }

    /// The socket failed: nothing more goes out.
    pub fn handle_disconnect(&mut self) {
        self.stage = Stage::Broken;
    }

    /// What happened, in order.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        let Stage::Handshake { shs, boxed, .. } = &mut self.stage else {
            return None;
        };
        match shs.poll_event()? {
            shs::Event::Authorize(key) => Some(LinkEvent::Authorize(key)),
            shs::Event::Established(established) => {
                let tail = shs.poll_transmit();
                self.stage = match boxed {
                    true => Stage::Boxed {
                        io: Box::new(BoxedIo::new(&established)),
                        tail,
                    },
                    false => Stage::Plain { tail },
                };
                // What the client sent after message 3 is the transport's.
                if !established.early_data.is_empty() {
                    let early = BytesMut::from(&established.early_data[..]);
                    match self.stage {
                        Stage::Boxed { .. } => self.open(&early),
                        _ => self.events.push_back(LinkEvent::Input(early)),
                    }
                }
                Some(LinkEvent::Established)
            }
        }
    }

    /// The handshake's next message, or message 4 once it is over: write
    /// these before anything of the mux's.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match &mut self.stage {
            Stage::Handshake { shs, .. } => shs.poll_transmit(),
            Stage::Plain { tail } | Stage::Boxed { tail, .. } => tail.take(),
            Stage::Trusted { .. } | Stage::Broken => None,
        }
    }

    /// Whether [`Link::poll_transmit`] has something.
    pub fn has_output(&self) -> bool {
        match &self.stage {
            Stage::Handshake { shs, .. } => shs.has_output(),
            Stage::Plain { tail } | Stage::Boxed { tail, .. } => tail.is_some(),
            Stage::Trusted { .. } | Stage::Broken => false,
        }
    }

    /// Whether mux bytes go out as they are (no box-stream): they may then
    /// carry descriptors, and need no [`Link::seal`].
    pub fn is_plain(&self) -> bool {
        matches!(self.stage, Stage::Plain { .. })
    }

    /// Mux plaintext made ready for the socket: sealed on a box-stream, as
    /// it is on a plain link (which [`Link::seal_from`] passes on uncopied).
    pub fn seal(&mut self, plain: &[u8]) -> Bytes {
        match &mut self.stage {
            Stage::Boxed { io, .. } => io.seal(plain),
            Stage::Plain { .. } => Bytes::copy_from_slice(plain),
            Stage::Handshake { .. } | Stage::Trusted { .. } | Stage::Broken => Bytes::new(),
        }
    }

    /// As [`Link::seal`], for what `next` gives, up to a batch in one write.
    pub fn seal_from(&mut self, mut next: impl FnMut() -> Option<Bytes>) -> Option<Bytes> {
        match &mut self.stage {
            Stage::Boxed { io, .. } => io.seal_from(next),
            Stage::Plain { .. } => next(),
            Stage::Handshake { .. } | Stage::Trusted { .. } | Stage::Broken => None,
        }
    }

    /// The bytes that end the connection: message 4 if it is still due,
    /// the hub's last plaintext (a GOAWAY), then box-stream's goodbye,
    /// which also answers the peer's. Nothing after a failed handshake or
    /// a broken box-stream.
    pub fn last_words(&mut self, plain: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        match &mut self.stage {
            Stage::Plain { tail } => {
                out.extend_from_slice(&tail.take().unwrap_or_default());
                out.extend_from_slice(plain);
            }
            Stage::Boxed { io, tail, .. } => {
                out.extend_from_slice(&tail.take().unwrap_or_default());
                out.extend_from_slice(&io.seal(plain));
                io.goodbye(&mut out);
            }
            Stage::Handshake { .. } | Stage::Trusted { .. } | Stage::Broken => {}
        }
        out.freeze()
    }

    fn open(&mut self, input: &[u8]) {
        let Stage::Boxed { io, .. } = &mut self.stage else {
            return;
        };
        // One read's boxes become one input for the hub: one call there,
        // however many boxes the read held.
        let mut plain = BytesMut::with_capacity(input.len()); // boxes only shrink
        let opened = io.open(input, |bytes| {
            plain.extend_from_slice(&bytes);
            Ok::<_, BoxStreamError>(())
        });
        if !plain.is_empty() {
            self.events.push_back(LinkEvent::Input(plain));
        }
        match opened {
            Ok(false) => {}
            Ok(true) => self.events.push_back(LinkEvent::Ended(LinkEnd::Goodbye)),
            Err(e) => self.break_with(LinkEnd::BoxStream(e)),
        }
    }

    fn break_with(&mut self, end: LinkEnd) {
        self.stage = Stage::Broken;
        self.events.push_back(LinkEvent::Ended(end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxstream::{Event as BoxEvent, Opener, Sealer};
    use crate::keys::Keypair;
    use crate::shs::ClientHandshake;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const NOW: Instant = Instant::ZERO;

    struct Client {
        hs: ClientHandshake,
        key: PublicKey,
    }

    /// A link (`boxed` or not) and a client that sent message 1.
    fn pair(boxed: bool) -> (Link, Client) {
        let server = Arc::new(HandshakeConfig::new(Keypair::from_seed([1; 32])));
        let client_keys = Keypair::from_seed([2; 32]);
        let key = client_keys.public();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let link = Link::new(server.clone(), &mut rng, NOW, boxed);
        let config = Arc::new(HandshakeConfig::new(client_keys));
        let hs = ClientHandshake::new(config, server.keypair.public(), &mut rng, NOW).unwrap();
        (link, Client { hs, key })
    }

    fn events(link: &mut Link) -> Vec<LinkEvent> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }

    fn input(link: &mut Link, bytes: &[u8]) {
        assert_eq!(link.handle_input(NOW, bytes), None, "passed through");
    }

    /// Runs the handshake to message 3 and returns message 3's events.
    fn to_authorize(link: &mut Link, client: &mut Client) -> Vec<LinkEvent> {
        input(link, &client.hs.poll_transmit().unwrap());
        assert_eq!(events(link), [LinkEvent::FirstMessage]);
        let hello = link.poll_transmit().expect("message 2");
        client.hs.handle_input(NOW, &hello).unwrap();
        input(link, &client.hs.poll_transmit().expect("message 3"));
        events(link)
    }

    /// A link past its handshake, its key admitted (events drained), and
    /// its client still waiting for message 4.
    fn established(boxed: bool) -> (Link, Client) {
        let (mut link, mut client) = pair(boxed);
        to_authorize(&mut link, &mut client);
        link.authorize(true);
        events(&mut link);
        (link, client)
    }

    /// The offsets `cuts` (fractions of `len`) make, as pieces in order.
    fn pieces(len: usize, cuts: &[f64]) -> Vec<std::ops::Range<usize>> {
        let mut at: Vec<usize> = cuts.iter().map(|f| (f * len as f64) as usize).collect();
        at.extend([0, len]);
        at.sort_unstable();
        at.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// The client's view once message 4 arrived: its box-stream halves.
    fn client_established(link: &mut Link, client: &mut Client) -> (Sealer, Opener) {
        let accept = link.poll_transmit().expect("message 4");
        client.hs.handle_input(NOW, &accept).unwrap();
        match client.hs.poll_event() {
            Some(shs::Event::Established(done)) => done.boxstream(),
            other => panic!("not established: {other:?}"),
        }
    }

    fn open_all(opener: &mut Opener, bytes: &[u8]) -> (Vec<u8>, bool) {
        opener.handle_input(bytes).unwrap();
        let mut plain = Vec::new();
        let mut goodbye = false;
        while let Some(event) = opener.poll_event() {
            match event {
                BoxEvent::Data(data) => plain.extend_from_slice(&data),
                BoxEvent::Goodbye => goodbye = true,
            }
        }
        (plain, goodbye)
    }

    #[test]
    fn a_boxed_link_asks_for_admission_then_opens_and_seals() {
        let (mut link, mut client) = pair(true);
        let asked = to_authorize(&mut link, &mut client);
        assert_eq!(asked, [LinkEvent::Authorize(client.key)]);
        assert_eq!(link.poll_transmit(), None, "nothing before the verdict");
        link.authorize(true);
        assert_eq!(events(&mut link), [LinkEvent::Established]);
        let (mut sealer, mut opener) = client_established(&mut link, &mut client);

        // In: the client's boxes come out as one run of plaintext.
        let mut boxes = BytesMut::new();
        sealer.seal(b"hello ", &mut boxes).unwrap();
        sealer.seal(b"hub", &mut boxes).unwrap();
        input(&mut link, &boxes);
        assert_eq!(
            events(&mut link),
            [LinkEvent::Input(BytesMut::from(&b"hello hub"[..]))]
        );

        // Out: sealed, in batches, and the last words end with the goodbye.
        let sealed = link.seal(b"one");
        let mut chunks = vec![Bytes::from_static(b"two"), Bytes::from_static(b"three")];
        let batch = link.seal_from(|| chunks.pop()).unwrap();
        let last = link.last_words(b"bye");
        let (plain, _) = open_all(&mut opener, &[&sealed[..], &batch, &last].concat());
        assert_eq!(plain, b"onethreetwobye");
        assert!(opener.is_finished(), "the last words end with the goodbye");
    }

    #[test]
    fn a_refused_key_gets_nothing_more() {
        let (mut link, mut client) = pair(true);
        to_authorize(&mut link, &mut client);
        link.authorize(false);
        assert_eq!(events(&mut link), []);
        assert_eq!(link.poll_transmit(), None);
        assert!(!link.has_output());
        assert!(link.last_words(b"a GOAWAY").is_empty());
        assert!(link.seal(b"x").is_empty());
    }

    #[test]
    fn what_follows_message_3_is_the_transports() {
        let (mut link, mut client) = pair(false);
        input(&mut link, &client.hs.poll_transmit().unwrap());
        events(&mut link);
        client
            .hs
            .handle_input(NOW, &link.poll_transmit().unwrap())
            .unwrap();
        let mut auth = client.hs.poll_transmit().unwrap().to_vec();
        auth.extend_from_slice(b"early");
        input(&mut link, &auth);
        assert_eq!(events(&mut link), [LinkEvent::Authorize(client.key)]);
        link.authorize(true);
        assert_eq!(
            events(&mut link),
            [
                LinkEvent::Established,
                LinkEvent::Input(BytesMut::from(&b"early"[..]))
            ]
        );
        assert!(link.is_plain());
        // Then plaintext passes through, uncopied.
        let more = b"more".to_vec();
        let passed = link.handle_input(NOW, &more).expect("passed through");
        assert_eq!(passed.as_ptr(), more.as_ptr());
        assert_eq!(events(&mut link), []);
        // Message 4 leads the last words if it was never written.
        let last = link.last_words(b"bye");
        client.hs.handle_input(NOW, &last).unwrap();
        match client.hs.poll_event() {
            Some(shs::Event::Established(done)) => assert_eq!(&done.early_data[..], b"bye"),
            other => panic!("message 4 did not lead the last words: {other:?}"),
        }
        assert_eq!(link.poll_transmit(), None);
    }

    #[test]
    fn the_peers_goodbye_is_answered_and_a_forged_box_is_not() {
        let (mut link, mut client) = established(true);
        let (mut sealer, mut opener) = client_established(&mut link, &mut client);
        let mut bye = BytesMut::new();
        sealer.goodbye(&mut bye).unwrap();
        input(&mut link, &bye);
        assert_eq!(events(&mut link), [LinkEvent::Ended(LinkEnd::Goodbye)]);
        let (_, goodbye) = open_all(&mut opener, &link.last_words(b""));
        assert!(goodbye, "our goodbye answers theirs");

        let (mut link, _) = established(true);
        input(&mut link, &[0x55; 64]);
        let ended = events(&mut link);
        assert!(
            matches!(ended[..], [LinkEvent::Ended(LinkEnd::BoxStream(_))]),
            "{ended:?}"
        );
        assert!(
            link.last_words(b"why").is_empty(),
            "nothing after a broken stream"
        );
        input(&mut link, b"more");
        assert_eq!(events(&mut link), [], "nothing after the end");
    }

    #[test]
    fn a_bad_first_message_fails_the_handshake() {
        let (mut link, _) = pair(true);
        input(&mut link, &[0u8; 64]);
        let ended = events(&mut link);
        assert!(
            matches!(ended[..], [LinkEvent::Ended(LinkEnd::Handshake(_))]),
            "{ended:?}"
        );
        assert_eq!(link.poll_transmit(), None);
        assert_eq!(link.handle_eof(false), (false, "closed by the peer".into()));
    }

    #[test]
    fn a_socket_that_ended_gets_no_last_words() {
        // Regression: the threaded server wrote box-stream's goodbye (and
        // message 4, if due) to a peer whose socket had ended.
        let (mut link, _) = established(true);
        let (clean, reason) = link.handle_eof(false);
        assert!(clean, "on a box boundary: {reason}");
        assert!(reason.starts_with("closed by the peer: the stream ended without a goodbye"));
        assert!(link.last_words(b"").is_empty());
        assert_eq!(
            link.poll_transmit(),
            None,
            "message 4 is not written either"
        );

        let (mut link, _) = established(false);
        link.handle_disconnect();
        assert!(link.last_words(b"GOAWAY").is_empty());
    }

    /// Feeds `bytes` in pieces cut at `cuts` (fractions of its length).
    fn input_in_pieces(link: &mut Link, bytes: &[u8], cuts: &[f64]) -> Vec<LinkEvent> {
        let mut seen = Vec::new();
        for piece in pieces(bytes.len(), cuts) {
            input(link, &bytes[piece]);
            seen.extend(events(link));
        }
        seen
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_the_input_gives_the_same_events(
            cuts1 in proptest::collection::vec(0.0..1.0f64, 0..4),
            cuts3 in proptest::collection::vec(0.0..1.0f64, 0..8),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 1..9000),
        ) {
            let (mut link, mut client) = pair(true);
            let first = input_in_pieces(&mut link, &client.hs.poll_transmit().unwrap(), &cuts1);
            proptest::prop_assert_eq!(first, [LinkEvent::FirstMessage]);
            client.hs.handle_input(NOW, &link.poll_transmit().unwrap()).unwrap();
            // Message 3 and the first boxes, as one stream cut anywhere.
            let mut stream = client.hs.poll_transmit().unwrap().to_vec();
            let (mut sealer, _) = {
                // The client's keys are known once message 4 arrives; seal
                // with a twin that runs the same handshake.
                let (mut twin_link, mut twin) = established(true);
                client_established(&mut twin_link, &mut twin)
            };
            let mut boxes = BytesMut::new();
            for chunk in payload.chunks(3000) {
                sealer.seal(chunk, &mut boxes).unwrap();
            }
            stream.extend_from_slice(&boxes);
            let mut seen = Vec::new();
            let mut plain = Vec::new();
            for piece in pieces(stream.len(), &cuts3) {
                input(&mut link, &stream[piece]);
                while let Some(event) = link.poll_event() {
                    match event {
                        LinkEvent::Authorize(_) => {
                            seen.push("authorize");
                            link.authorize(true);
                        }
                        LinkEvent::Established => seen.push("established"),
                        LinkEvent::Input(bytes) => plain.extend_from_slice(&bytes),
                        other => proptest::prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
            proptest::prop_assert_eq!(seen, ["authorize", "established"]);
            proptest::prop_assert_eq!(plain, payload);
        }
    }
}
