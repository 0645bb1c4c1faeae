//! One connection as the broker holds it.

use std::collections::BTreeSet;

use crate::control::{ChannelId, ControlDecoder, Features, TransportKind};
use crate::keys::PublicKey;
use crate::mux::Mux;
use crate::time::Instant;

use super::door::Origin;
use super::policy::Permissions;
use super::port::Port;
use super::ConnId;

pub(super) enum Stage {
    /// shs1 in progress (in the connection's link).
    Handshake,
    /// Authenticated; waiting for the plugin's hello.
    Hello,
    /// Talking.
    Ready,
}

/// Where a connection's watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    Off,
    /// Every change is queued for it.
    Live,
    /// It fell behind (it offered `FEATURE_WATCH_RESYNC`): changes are
    /// dropped until its control queue drains, then a `Resync` replaces them.
    Behind {
        /// The first change it did not get.
        from_seq: u64,
    },
}

pub(super) struct Connection {
    pub(super) origin: Origin,
    pub(super) transport: TransportKind,
    pub(super) stage: Stage,
    /// Its mux and relay ends, once the handshake is over.
    pub(super) port: Option<Port>,
    /// Its link runs box-stream: no descriptors can cross it.
    pub(super) boxed: bool,
    /// Known once the handshake authorized it.
    pub(super) key: Option<PublicKey>,
    pub(super) rights: Permissions,
    pub(super) control: ControlDecoder,
    /// When the hello arrived (what `list` counts from).
    pub(super) since: Instant,
    pub(super) last_input: Instant,
    pub(super) ping_sent: Option<Instant>,
    /// The one timer this connection has in the broker's timer set.
    pub(super) deadline: Option<Instant>,
    /// When the handshake must be over (the first message's is sooner).
    pub(super) handshake_deadline: Instant,
    pub(super) watch: Watch,
    /// Feature bits both sides support, from the hellos.
    pub(super) features: Features,
    /// Where it accepts direct channels (`tcp:HOST:PORT`), from its register.
    pub(super) direct_addr: Option<String>,
    /// A `Transmit` event is out and not yet drained.
    pub(super) notified: bool,
    /// Opens this connection made that await an answer: (target, target channel).
    pub(super) opens_out: BTreeSet<(ConnId, ChannelId)>,
    /// Opens to this connection that it has not answered (its channel ids).
    pub(super) opens_in: BTreeSet<ChannelId>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
}

impl Connection {
    pub(super) fn new(
        origin: Origin,
        boxed: bool,
        now: Instant,
        handshake_deadline: Instant,
    ) -> Self {
        Connection {
            origin,
            transport: origin.transport(),
            stage: Stage::Handshake,
            port: None,
            boxed,
            key: None,
            rights: super::policy::Permissions::none(),
            control: ControlDecoder::default(),
            since: now,
            last_input: now,
            ping_sent: None,
            deadline: None,
            handshake_deadline,
            watch: Watch::Off,
            features: 0,
            direct_addr: None,
            notified: false,
            opens_out: BTreeSet::new(),
            opens_in: BTreeSet::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Its mux, once the handshake is over.
    pub(super) fn mux(&self) -> Option<&Mux> {
        self.port.as_ref().map(|p| &p.mux)
    }

    pub(super) fn mux_mut(&mut self) -> Option<&mut Mux> {
        self.port.as_mut().map(|p| &mut p.mux)
    }

    pub(super) fn has_output(&self) -> bool {
        self.mux().is_some_and(Mux::has_output)
    }

    /// Bytes queued for this connection and not yet handed to the runtime.
    pub(super) fn queued(&self) -> usize {
        self.mux()
            .map_or(0, |mux| mux.queued_urgent() + mux.queued_data())
    }
}
