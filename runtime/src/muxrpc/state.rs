//! What the driver and the handles share: the session, and what its events
//! left for each handle.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use plugboard_core::muxrpc::{
    Body, CallError, CallKind, Config, Event, ReqId, RpcError, Session, SessionError, UseError,
};
use serde_json::Value;

use super::Error;

/// Past this many bytes written and not yet on the wire, senders wait.
pub(super) const SEND_HIGH: usize = 256 * 1024;

pub(super) type Shared = Arc<Mutex<State>>;

pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A call of the peer's, not yet taken by [`super::Calls`].
pub(super) struct Incoming {
    pub(super) id: ReqId,
    pub(super) kind: CallKind,
    pub(super) name: Vec<String>,
    pub(super) args: Value,
    /// What it counts for in `held`.
    cost: usize,
}

enum Answer {
    Waiting(Option<Waker>),
    Done(Result<Body, CallError>),
}

/// What came on one stream and is not yet read.
#[derive(Default)]
struct Inbox {
    items: VecDeque<Result<Body, CallError>>,
    /// The peer's end came (after `items`).
    ended: bool,
    bytes: usize,
    waker: Option<Waker>,
}

pub(super) struct State {
    pub(super) session: Session,
    max_stream_buffer: usize,
    max_held: usize,
    driver: Option<Waker>,
    calls: VecDeque<Incoming>,
    calls_waker: Option<Waker>,
    /// The application dropped its `Calls`.
    calls_dropped: bool,
    answers: HashMap<ReqId, Answer>,
    inboxes: HashMap<ReqId, Inbox>,
    /// Bytes in every inbox: past `max_held` the driver stops reading.
    held: usize,
    senders: Vec<Waker>,
    closers: Vec<Waker>,
    closed: Option<Result<(), SessionError>>,
}

impl State {
    pub(super) fn new(mut config: Config) -> Self {
        // A stream ends on this side when its handle read the peer's end.
        config.end_on_take = false;
        State {
            max_stream_buffer: config.max_stream_buffer,
            max_held: config.max_buffered,
            session: Session::new(config),
            driver: None,
            calls: VecDeque::new(),
            calls_waker: None,
            calls_dropped: false,
            answers: HashMap::new(),
            inboxes: HashMap::new(),
            held: 0,
            senders: Vec::new(),
            closers: Vec::new(),
            closed: None,
        }
    }

    /// Past this many bytes unwritten, the driver reads nothing more.
    pub(super) fn max_unsent(&self) -> usize {
        self.max_held.max(SEND_HIGH)
    }

    /// The application's handles hold as much as they may: the driver
    /// reads nothing more until they take some.
    pub(super) fn is_full(&self) -> bool {
        self.held > self.max_held
    }

    pub(super) fn set_driver(&mut self, waker: &Waker) {
        match &mut self.driver {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Something was queued for the peer (or read room made).
    pub(super) fn wake_driver(&mut self) {
        if let Some(waker) = &self.driver {
            waker.wake_by_ref();
        }
    }

    /// The output drained: senders may go on.
    pub(super) fn wake_senders(&mut self) {
        self.senders.drain(..).for_each(Waker::wake);
    }

    pub(super) fn closed(&self) -> Option<&Result<(), SessionError>> {
        self.closed.as_ref()
    }

    /// Hands what the session says to the handles it concerns.
    pub(super) fn dispatch(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Request {
                    id,
                    kind,
                    name,
                    args,
                } => {
                    if self.calls_dropped {
                        self.refuse(id, kind);
                        continue;
                    }
                    if kind.is_stream() {
                        self.inboxes.insert(id, Inbox::default());
                    }
                    // Held until taken: it counts with the inboxes.
                    let cost = args.to_string().len();
                    self.held += cost;
                    self.calls.push_back(Incoming {
                        id,
                        kind,
                        name,
                        args,
                        cost,
                    });
                    wake(&mut self.calls_waker);
                }
                Event::Response { id, result } => {
                    if let Some(answer) = self.answers.get_mut(&id) {
                        if let Answer::Waiting(mut waker) =
                            std::mem::replace(answer, Answer::Done(result))
                        {
                            wake(&mut waker);
                        }
                    }
                }
                Event::Data { id, body } => self.on_data(id, body),
                Event::End { id, result } => {
                    if let Some(inbox) = self.inboxes.get_mut(&id) {
                        if let Err(e) = result {
                            inbox.items.push_back(Err(e));
                        }
                        inbox.ended = true;
                        wake(&mut inbox.waker);
                    }
                }
                Event::Closed(result) => {
                    self.closed = Some(result);
                    self.wake_all();
                }
            }
        }
    }

    fn on_data(&mut self, id: ReqId, body: Body) {
        let Some(inbox) = self.inboxes.get_mut(&id) else {
            return; // its handle is gone
        };
        let len = body.bytes.len();
        if inbox.bytes + len > self.max_stream_buffer {
            // The session ends the stream and says so in an event; this
            // and what follows are dropped.
            return self.session.overflow(id);
        }
        inbox.items.push_back(Ok(body));
        inbox.bytes += len;
        self.held += len;
        wake(&mut inbox.waker);
    }

    /// `Calls` is gone: the peer's calls are refused, now and from now on.
    pub(super) fn drop_calls(&mut self) {
        self.calls_dropped = true;
        for call in std::mem::take(&mut self.calls) {
            self.release(call.cost);
            self.refuse(call.id, call.kind);
        }
        self.wake_driver();
    }

    fn refuse(&mut self, id: ReqId, kind: CallKind) {
        let refusal = RpcError::new("nobody takes calls here");
        let _ = match kind {
            CallKind::Async => self.session.respond(id, Err(refusal)),
            _ => self.session.end(id, Err(refusal)),
        };
        self.forget_inbox(id);
    }

    /// `n` bytes held for the handles are let go.
    fn release(&mut self, n: usize) {
        let was_full = self.is_full();
        self.held -= n;
        if was_full && !self.is_full() {
            self.wake_driver();
        }
    }

    fn wake_all(&mut self) {
        wake(&mut self.calls_waker);
        for answer in self.answers.values_mut() {
            if let Answer::Waiting(waker) = answer {
                wake(waker);
            }
        }
        for inbox in self.inboxes.values_mut() {
            wake(&mut inbox.waker);
        }
        self.wake_senders();
        self.closers.drain(..).for_each(Waker::wake);
    }

    // ── for the handles ───────────────────────────────────────────────

    pub(super) fn call(
        &mut self,
        kind: CallKind,
        name: &[&str],
        args: Value,
    ) -> Result<ReqId, UseError> {
        let id = self.session.call(kind, name, args)?;
        match kind {
            CallKind::Async => self.answers.insert(id, Answer::Waiting(None)).is_none(),
            _ => self.inboxes.insert(id, Inbox::default()).is_none(),
        };
        self.wake_driver();
        Ok(id)
    }

    pub(super) fn poll_answer(&mut self, id: ReqId, cx: &mut Context) -> Poll<Result<Body, Error>> {
        let answer = self.answers.get_mut(&id).expect("asked once");
        match answer {
            Answer::Done(_) => {
                let Some(Answer::Done(result)) = self.answers.remove(&id) else {
                    unreachable!("matched above")
                };
                Poll::Ready(result.map_err(Error::from))
            }
            Answer::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The caller stopped waiting: the answer is dropped when it comes.
    pub(super) fn forget_answer(&mut self, id: ReqId) {
        self.answers.remove(&id);
    }

    pub(super) fn poll_call(&mut self, cx: &mut Context) -> Poll<Option<Incoming>> {
        if let Some(call) = self.calls.pop_front() {
            self.release(call.cost);
            return Poll::Ready(Some(call));
        }
        if self.closed.is_some() {
            return Poll::Ready(None);
        }
        self.calls_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(super) fn poll_recv(
        &mut self,
        id: ReqId,
        cx: &mut Context,
    ) -> Poll<Option<Result<Body, Error>>> {
        let Some(inbox) = self.inboxes.get_mut(&id) else {
            return Poll::Ready(None);
        };
        match inbox.items.pop_front() {
            Some(item) => {
                if let Ok(body) = &item {
                    inbox.bytes -= body.bytes.len();
                    self.release(body.bytes.len());
                }
                Poll::Ready(Some(item.map_err(Error::from)))
            }
            None if inbox.ended => {
                // Read to the peer's end: this side's ends too (once; an
                // end already sent is refused, and that is fine).
                if self.session.end(id, Ok(())).is_ok() {
                    self.wake_driver();
                }
                Poll::Ready(None)
            }
            None if self.closed.is_some() => Poll::Ready(None),
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(super) fn poll_send_room(&mut self, cx: &mut Context) -> Poll<()> {
        if self.session.queued() < SEND_HIGH || self.closed.is_some() {
            return Poll::Ready(());
        }
        self.senders.push(cx.waker().clone());
        Poll::Pending
    }

    /// A stream's handle is gone: what it held is let go.
    pub(super) fn forget_inbox(&mut self, id: ReqId) {
        if let Some(inbox) = self.inboxes.remove(&id) {
            self.release(inbox.bytes);
        }
    }

    pub(super) fn poll_closed(&mut self, cx: &mut Context) -> Poll<Result<(), Error>> {
        match &self.closed {
            Some(result) => Poll::Ready(result.clone().map_err(Error::Session)),
            None => {
                self.closers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}
