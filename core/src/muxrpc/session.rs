//! One muxrpc session: the calls open each way, and what the peer may make
//! it hold.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::packet::{
    encode, Body, DecodeError, Decoded, EncodeError, Packet, PacketDecoder, GOODBYE,
};
use super::request::{self, Request};
use super::{CallKind, Config, ReqId, RpcError};

/// What the session tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer calls a method the manifest serves. Answer an async call
    /// with [`Session::respond`]; on a stream, [`Session::send`] and
    /// [`Session::end`].
    Request {
        /// The call.
        id: ReqId,
        /// Its kind.
        kind: CallKind,
        /// The method's path.
        name: Vec<String>,
        /// Its arguments (an array).
        args: Value,
    },
    /// The answer to an async call this side made.
    Response {
        /// The call.
        id: ReqId,
        /// The answer.
        result: Result<Body, CallError>,
    },
    /// Data on a stream, either side's.
    Data {
        /// The stream.
        id: ReqId,
        /// The data.
        body: Body,
    },
    /// The peer's side of a stream is over. If this side had not ended
    /// it, the session does so as this event is taken (after the data the
    /// application sent in answer to what came before), unless
    /// [`Config::end_on_take`] is off.
    End {
        /// The stream.
        id: ReqId,
        /// How.
        result: Result<(), CallError>,
    },
    /// The session is over: the last event. `Ok` after a goodbye.
    Closed(Result<(), SessionError>),
}

/// How a call ended without its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(RpcError),
    /// The session ended first.
    #[error("the session ended")]
    Ended,
    /// The peer sent more on the stream than the application took in time
    /// (more than [`Config::max_stream_buffer`] waiting): the stream was
    /// ended with an error.
    #[error("the peer sent more than the stream may hold")]
    Flooded,
}

/// Why the session ended without a goodbye.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The bytes are not packet-stream.
    #[error("bad packet: {0}")]
    Decode(#[from] DecodeError),
    /// The peer reused the number of a request still open.
    #[error("request {0} reused while open")]
    Reused(i32),
    /// More waiting for the application than [`Config::max_buffered`].
    #[error("the peer sent more than the session may hold ({0} bytes)")]
    Flooded(usize),
    /// The byte stream ended without a goodbye.
    #[error("the stream ended without a goodbye")]
    NoGoodbye,
    /// The session had an answer of its own to make (a refusal, the
    /// manifest) while more than [`Config::max_buffered`] waited to be
    /// written: the peer calls and does not read.
    #[error("the peer does not read its answers")]
    NotReading,
}

/// The application's mistake: nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UseError {
    /// After [`Session::close`], no new calls.
    #[error("the session is closing")]
    Closing,
    /// The session is over.
    #[error("the session is closed")]
    Closed,
    /// No such call open (or not of the kind the method needs).
    #[error("no open {0:?} for this")]
    NotOpen(ReqId),
    /// This side already ended the stream.
    #[error("the stream {0:?} is already ended on this side")]
    Ended(ReqId),
    /// The body cannot be sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Every request number is used.
    #[error("no request numbers left")]
    Exhausted,
}

/// Whether the peer sends data on a stream: not on a source it called (this
/// side sends) nor on a sink this side called.
fn peer_sends(kind: CallKind, id: ReqId) -> bool {
    match kind {
        CallKind::Source => id.is_ours(),
        CallKind::Sink => !id.is_ours(),
        CallKind::Duplex => true,
        CallKind::Async => false,
    }
}

/// One call open.
struct Open {
    kind: CallKind,
    /// Tells this call from an earlier one under the same number.
    generation: u64,
    /// This side sent its end (streams), or its answer is due (the peer's
    /// async calls): nothing more to send.
    we_ended: bool,
    /// Data bytes of this stream in events not yet taken.
    waiting: usize,
    /// Ended for sending too much: further data is dropped.
    flooded: bool,
    /// The peer ended its side (streams); this side ends when the
    /// application takes the [`Event::End`].
    they_ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// [`Session::close`] was called: the goodbye goes when nothing is open.
    Closing,
    /// This side said goodbye; the peer's is awaited.
    GoodbyeSent,
    Closed,
}

/// A muxrpc session over one byte stream. Feed it what the peer sent
/// ([`Session::handle_input`]), write what [`Session::poll_transmit`]
/// gives, and act on [`Session::poll_event`]. It has no timers.
pub struct Session {
    config: Config,
    decoder: PacketDecoder,
    phase: Phase,
    next_req: i32,
    open: HashMap<ReqId, Open>,
    /// The peer's calls among `open`.
    peer_open: usize,
    /// Each with the bytes it holds (a body, a request's arguments) and
    /// the generation of the call it concerns: a number the peer reuses
    /// after a call ended names another call, which the old call's events
    /// must not be charged to.
    events: VecDeque<(Event, usize, u64)>,
    /// The generation the next call open gets.
    generation: u64,
    /// Bytes held in `events`.
    events_bytes: usize,
    out: BytesMut,
    scratch: BytesMut,
}

impl Session {
    /// A session serving `config.manifest`.
    pub fn new(config: Config) -> Self {
        Session {
            decoder: PacketDecoder::new(config.max_body),
            config,
            phase: Phase::Open,
            next_req: 1,
            open: HashMap::new(),
            peer_open: 0,
            events: VecDeque::new(),
            generation: 0,
            events_bytes: 0,
            out: BytesMut::new(),
            scratch: BytesMut::new(),
        }
    }

    /// Bytes from the peer. After the goodbye or a fault nothing more is
    /// read.
    pub fn handle_input(&mut self, mut input: &[u8]) {
        while self.phase != Phase::Closed {
            match self.decoder.decode(&mut input) {
                Ok(None) => return,
                Ok(Some(Decoded::Goodbye)) => return self.on_goodbye(),
                Ok(Some(Decoded::Packet(packet))) => self.on_packet(packet),
                Err(e) => return self.fail(e.into()),
            }
            if self.events_bytes > self.config.max_buffered {
                self.fail(SessionError::Flooded(self.events_bytes));
            }
        }
    }

    /// Bytes to write to the peer.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// What happened, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        let (event, cost, generation) = self.events.pop_front()?;
        self.events_bytes -= cost;
        let same_call = |open: &&mut Open| open.generation == generation;
        match &event {
            Event::Data { id, .. } => {
                if let Some(open) = self.open.get_mut(id).filter(same_call) {
                    open.waiting -= cost;
                }
            }
            Event::End { id, .. }
                if self.config.end_on_take
                    && self
                        .open
                        .get_mut(id)
                        .filter(same_call)
                        .is_some_and(|open| open.they_ended) =>
            {
                self.send_end(*id, None);
                self.remove(*id);
            }
            _ => {}
        }
        Some(event)
    }

    /// The session is over (both goodbyes, or a fault): the
    /// [`Event::Closed`] is queued.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Bytes the peer made it hold: events not yet taken and a packet not
    /// yet whole. At most [`Config::max_buffered`] plus one packet.
    pub fn held(&self) -> usize {
        self.events_bytes + self.decoder.buffered()
    }

    /// Calls `name` on the peer: for an async call, an
    /// [`Event::Response`] follows; for a stream, its [`Event::Data`] and
    /// [`Event::End`]. `args` is the array of arguments (`null` is none,
    /// any other value the one argument).
    pub fn call(&mut self, kind: CallKind, name: &[&str], args: Value) -> Result<ReqId, UseError> {
        match self.phase {
            Phase::Open => {}
            Phase::Closing | Phase::GoodbyeSent => return Err(UseError::Closing),
            Phase::Closed => return Err(UseError::Closed),
        }
        let args = match args {
            args @ Value::Array(_) => args,
            Value::Null => Value::Array(Vec::new()),
            other => Value::Array(vec![other]),
        };
        let id = ReqId(self.next_req);
        self.next_req = self.next_req.checked_add(1).ok_or(UseError::Exhausted)?;
        self.push(
            id.0,
            kind.is_stream(),
            false,
            &request::body(kind, name, &args),
        )?;
        self.insert_open(id, kind);
        Ok(id)
    }

    /// Answers the peer's async call.
    pub fn respond(&mut self, id: ReqId, result: Result<Body, RpcError>) -> Result<(), UseError> {
        self.writable()?;
        match self.open.get(&id) {
            Some(open) if !id.is_ours() && open.kind == CallKind::Async => {}
            _ => return Err(UseError::NotOpen(id)),
        }
        match result {
            Ok(body) => self.push(id.0, false, false, &body)?,
            Err(error) => self.push(id.0, false, true, &Body::json(&error.to_json()))?,
        }
        self.remove(id);
        Ok(())
    }

    /// Sends data on a stream.
    pub fn send(&mut self, id: ReqId, body: Body) -> Result<(), UseError> {
        self.writable()?;
        self.stream_to_send(id)?;
        self.push(id.0, true, false, &body)
    }

    /// Ends this side of a stream, with an error or without.
    pub fn end(&mut self, id: ReqId, result: Result<(), RpcError>) -> Result<(), UseError> {
        self.writable()?;
        self.stream_to_send(id)?;
        self.send_end(id, result.err().as_ref());
        if self.open.get(&id).is_some_and(|open| open.they_ended) {
            self.remove(id);
        }
        Ok(())
    }

    /// Ends a stream whose data the application cannot keep up with (an
    /// owner that queues [`Event::Data`] itself bounds its queue so): this
    /// side ends it with an error if it had not, what the peer still sends
    /// on it is dropped, and [`Event::End`] with [`CallError::Flooded`]
    /// follows. The session does this itself past
    /// [`Config::max_stream_buffer`].
    pub fn overflow(&mut self, id: ReqId) {
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        if open.flooded || open.they_ended || !open.kind.is_stream() {
            return;
        }
        open.flooded = true;
        let ended = open.we_ended;
        let event = Event::End {
            id,
            result: Err(CallError::Flooded),
        };
        self.queue_event(event, 0);
        if !ended {
            let error = RpcError::new("stream buffer full: the reader is behind");
            self.send_end(id, Some(&error));
        }
    }

    /// The byte stream ended. Without a goodbye before, every call open is
    /// over and the session ends with [`SessionError::NoGoodbye`].
    pub fn handle_end(&mut self) {
        self.fail(SessionError::NoGoodbye);
    }

    /// Says goodbye once every call open is over; new calls are refused
    /// from now (the peer's are still served).
    pub fn close(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
            self.maybe_goodbye();
        }
    }

    // ── input ─────────────────────────────────────────────────────────

    fn on_packet(&mut self, packet: Packet) {
        // Request 0 was muxrpc's `emit`, removed in muxrpc 8: ignored.
        if packet.req == 0 {
            return;
        }
        // i32::MIN answers a request no side can number: nothing is open.
        let Some(id) = packet.req.checked_neg().map(ReqId) else {
            return;
        };
        let Some(open) = self.open.get(&id) else {
            // Answers to calls no longer open are dropped, as JS does, and
            // so is the end of a stream refused at its first packet.
            if packet.req > 0 && !(packet.stream && packet.end) {
                self.on_request(id, packet);
            }
            return;
        };
        match (open.kind.is_stream(), packet.stream) {
            (false, false) if id.is_ours() => {
                let result = match packet.end {
                    true => Err(CallError::Remote(RpcError::from_body(&packet.body))),
                    false => Ok(packet.body),
                };
                self.remove(id);
                self.queue_event(Event::Response { id, result }, 0);
            }
            (false, false) => self.fail(SessionError::Reused(packet.req)),
            (true, true) if packet.end => self.on_stream_end(id, &packet.body),
            (true, true) => self.on_stream_data(id, packet.body),
            // A packet that does not match its call's kind: dropped, as JS
            // drops what it has no handler for.
            _ => {}
        }
    }

    fn on_request(&mut self, id: ReqId, packet: Packet) {
        if self.phase == Phase::GoodbyeSent {
            // Nothing can be answered after the goodbye; the peer's comes.
            return;
        }
        // Refused before its body is parsed: a flood costs no parsing.
        let parsed = match self.peer_open >= self.config.max_open {
            true => Err(RpcError::new("too many calls open")),
            false => request::parse(&packet.body, packet.stream),
        };
        let checked = match parsed {
            Ok(request) if request.kind == CallKind::Async && request.name == ["manifest"] => {
                let manifest = Body::json(&self.config.manifest);
                return self.answer(id, false, false, &manifest);
            }
            Ok(request) => {
                request::check(&self.config.manifest, request.kind, &request.name).map(|()| request)
            }
            Err(error) => Err(error),
        };
        match checked {
            Ok(request) => self.accept_request(id, request, packet.body.bytes.len()),
            // A refused stream is not kept: its end, when the peer sends
            // it, finds nothing open and is dropped.
            Err(error) => self.answer(id, packet.stream, true, &Body::json(&error.to_json())),
        }
    }

    fn accept_request(&mut self, id: ReqId, request: Request, cost: usize) {
        self.insert_open(id, request.kind);
        self.peer_open += 1;
        let event = Event::Request {
            id,
            kind: request.kind,
            name: request.name,
            args: request.args,
        };
        self.queue_event(event, cost);
    }

    fn on_stream_data(&mut self, id: ReqId, body: Body) {
        let max = self.config.max_stream_buffer;
        let open = self.open.get_mut(&id).expect("looked up");
        if open.flooded || open.they_ended || !peer_sends(open.kind, id) {
            return;
        }
        if open.waiting + body.bytes.len() > max {
            return self.overflow(id);
        }
        let cost = body.bytes.len();
        open.waiting += cost;
        self.queue_event(Event::Data { id, body }, cost);
    }

    fn on_stream_end(&mut self, id: ReqId, body: &Body) {
        let open = self.open.get_mut(&id).expect("looked up");
        if open.they_ended {
            return; // a second end says nothing new
        }
        if open.flooded {
            // The application was told; this side ended it then.
            return self.remove(id);
        }
        open.they_ended = true;
        // Where only this side sends, the peer's end is an abort: nothing
        // can come that the application would answer, so this side ends
        // now, whoever queues the events.
        let we_ended = open.we_ended;
        let end_now = !we_ended && !peer_sends(open.kind, id);
        let (result, cost) = match body.to_json() {
            Ok(Value::Bool(true)) => (Ok(()), 0),
            _ => {
                let error = CallError::Remote(RpcError::from_body(body));
                (Err(error), body.bytes.len())
            }
        };
        self.queue_event(Event::End { id, result }, cost);
        if end_now {
            self.send_end(id, None);
        }
        if we_ended || end_now {
            self.remove(id);
        }
        // Otherwise this side ends when the application takes the event,
        // after the data before it (JS ends its side when the peer's end
        // reaches it, in order).
    }

    fn on_goodbye(&mut self) {
        self.end_all();
        if self.phase != Phase::GoodbyeSent {
            self.out.extend_from_slice(&GOODBYE);
        }
        self.phase = Phase::Closed;
        self.queue_event(Event::Closed(Ok(())), 0);
    }

    /// The peer broke a rule: every call ends, the session says goodbye.
    fn fail(&mut self, error: SessionError) {
        if self.phase == Phase::Closed {
            return;
        }
        self.end_all();
        if self.phase != Phase::GoodbyeSent {
            self.out.extend_from_slice(&GOODBYE);
        }
        self.phase = Phase::Closed;
        self.queue_event(Event::Closed(Err(error)), 0);
    }

    /// Tells the application every call open is over.
    fn end_all(&mut self) {
        let mut ids: Vec<ReqId> = self.open.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let open = self.open.remove(&id).expect("listed");
            let event = match (open.kind, id.is_ours()) {
                (_, _) if open.flooded => continue,
                (CallKind::Async, true) => Event::Response {
                    id,
                    result: Err(CallError::Ended),
                },
                (CallKind::Async, false) => continue,
                _ => Event::End {
                    id,
                    result: Err(CallError::Ended),
                },
            };
            self.queue_event(event, 0);
        }
        self.peer_open = 0;
    }

    // ── output ────────────────────────────────────────────────────────

    fn writable(&self) -> Result<(), UseError> {
        match self.phase {
            Phase::Closed => Err(UseError::Closed),
            _ => Ok(()),
        }
    }

    fn stream_to_send(&self, id: ReqId) -> Result<(), UseError> {
        match self.open.get(&id) {
            Some(open) if open.kind.is_stream() && open.we_ended => Err(UseError::Ended(id)),
            Some(open) if open.kind.is_stream() => Ok(()),
            _ => Err(UseError::NotOpen(id)),
        }
    }

    fn send_end(&mut self, id: ReqId, error: Option<&RpcError>) {
        if self.phase == Phase::Closed {
            return;
        }
        let body = match error {
            Some(error) => Body::json(&error.to_json()),
            None => Body::json(&Value::Bool(true)),
        };
        self.push(id.0, true, true, &body)
            .expect("an end's body is not empty");
        if let Some(open) = self.open.get_mut(&id) {
            open.we_ended = true;
        }
    }

    /// An answer the session makes itself, charged to the peer: if its
    /// answers pile up unread, the session ends.
    fn answer(&mut self, id: ReqId, stream: bool, end: bool, body: &Body) {
        if self.out.len() > self.config.max_buffered {
            return self.fail(SessionError::NotReading);
        }
        self.push(id.0, stream, end, body)
            .expect("the session's answers are not empty");
    }

    fn push(&mut self, req: i32, stream: bool, end: bool, body: &Body) -> Result<(), UseError> {
        let packet = Packet {
            req,
            stream,
            end,
            body: body.clone(),
        };
        self.scratch.clear();
        encode(&packet, &mut self.scratch)?;
        self.out.extend_from_slice(&self.scratch);
        Ok(())
    }

    fn queue_event(&mut self, event: Event, cost: usize) {
        let generation = match &event {
            Event::Data { id, .. } | Event::End { id, .. } => {
                self.open.get(id).map_or(u64::MAX, |open| open.generation)
            }
            _ => u64::MAX,
        };
        self.events_bytes += cost;
        self.events.push_back((event, cost, generation));
    }

    fn insert_open(&mut self, id: ReqId, kind: CallKind) {
        self.generation += 1;
        let open = Open {
            kind,
            generation: self.generation,
            we_ended: false,
            waiting: 0,
            flooded: false,
            they_ended: false,
        };
        self.open.insert(id, open);
    }

    fn remove(&mut self, id: ReqId) {
        if self.open.remove(&id).is_some() && !id.is_ours() {
            self.peer_open -= 1;
        }
        self.maybe_goodbye();
    }

    fn maybe_goodbye(&mut self) {
        if self.phase == Phase::Closing && self.open.is_empty() {
            self.out.extend_from_slice(&GOODBYE);
            self.phase = Phase::GoodbyeSent;
        }
    }
}
