//! One connection as the broker holds it.

use std::collections::BTreeSet;

use crate::budget::Source;
use crate::control::{ChannelId, ControlDecoder, Features, TransportKind};
use crate::keys::PublicKey;
use crate::time::Instant;

use super::door::Origin;
use super::policy::Permissions;
use super::port::PortHandle;
use super::ConnId;

pub(super) enum Stage {
    /// shs1 in progress (in the connection's link).
    Handshake,
    /// Authenticated; waiting for the plugin's hello.
    Hello,
    /// Talking.
    Ready,
    /// A legacy client past message 4: its bridge carries one channel.
    Legacy,
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
    pub(super) port: Option<PortHandle>,
    /// Its link runs box-stream: no descriptors can cross it.
    pub(super) boxed: bool,
    /// Known once the handshake authorized it.
    pub(super) key: Option<PublicKey>,
    pub(super) rights: Permissions,
    pub(super) control: ControlDecoder,
    /// When the hello arrived (what `list` counts from).
    pub(super) since: Instant,
    /// The one timer this connection has in the broker's timer set.
    pub(super) deadline: Option<Instant>,
    /// When the handshake must be over (the first message's is sooner).
    pub(super) handshake_deadline: Instant,
    pub(super) watch: Watch,
    /// Feature bits both sides support, from the hellos.
    pub(super) features: Features,
    /// Where it accepts direct channels (`tcp:HOST:PORT`), from its register.
    pub(super) direct_addr: Option<String>,
    /// Opens this connection made that await an answer: (target, target channel).
    pub(super) opens_out: BTreeSet<(ConnId, ChannelId)>,
    /// Opens to this connection that it has not answered (its channel ids).
    pub(super) opens_in: BTreeSet<ChannelId>,
    /// A legacy client's source, counted once its key is known.
    pub(super) legacy_source: Option<Source>,
    /// A legacy connection's output as its idle timer last saw it, and
    /// when it saw it move.
    pub(super) legacy_bytes_out: u64,
    pub(super) legacy_output_at: Instant,
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
            deadline: None,
            handshake_deadline,
            watch: Watch::Off,
            features: 0,
            direct_addr: None,
            opens_out: BTreeSet::new(),
            opens_in: BTreeSet::new(),
            legacy_source: None,
            legacy_bytes_out: 0,
            legacy_output_at: now,
        }
    }

    /// Bytes queued for this connection and not yet handed to the runtime.
    pub(super) fn queued(&self) -> usize {
        self.port.as_ref().map_or(0, |port| {
            let port = port.lock();
            port.mux.queued_urgent() + port.mux.queued_data()
        })
    }
}
