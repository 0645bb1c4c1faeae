//! The simulated workload and the invariants checked after every step.
//!
//! Plugins come and go, register names (several want the same ones, some
//! wait in line), list, watch, open channels to each other, accept, reject
//! or ignore them, and send data whose every byte is predictable, so the
//! receiver can check order and exactly-once delivery. The RNG also kills
//! plugins, cuts links, restarts the broker, makes readers slow, splits and
//! delays writes and moves time. Half the plugins reconnect: their requests
//! are answered once (or lost once), their channels' bytes arrive in order
//! up to the loss, and their name and watch come back after every outage.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::rand_core::RngCore;

mod hostile;

use super::net::{Chaos, Net, NodeId};
use crate::broker::Limits;
use crate::control::RequestId;
use crate::control::{ErrorCode, Name, Presence, TransportKind};
use crate::keys::{Keypair, PublicKey};
use crate::session::{Reconnect, Recv, SessionError, SessionEvent};

/// A broken invariant, with the step it broke at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The step.
    pub step: usize,
    /// What broke.
    pub what: String,
}

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "seed {} step {}: {}", self.seed, self.step, self.what)
    }
}

/// What a run did, for the summary line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    /// Plugins connected.
    pub connects: usize,
    /// Channels opened.
    pub channels: usize,
    /// Channel bytes delivered and checked.
    pub bytes: u64,
    /// Requests refused by a budget (bytes, channels, rates) or channels
    /// relayed for want of descriptors: the hostile nodes met the budgets.
    pub budget_refusals: usize,
    /// Watchers that fell behind and were sent a fresh snapshot.
    pub resyncs: usize,
    /// Outages of plugins that reconnect, and how many ended restored.
    pub outages: usize,
    /// Outages that ended with the name and watch restored.
    pub reconnects: usize,
}

const NAMES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "eps"];
const KEYS: u8 = 12;

/// The byte at `offset` of the stream with `seed`: both ends compute it.
fn stream_byte(seed: u64, offset: u64) -> u8 {
    let x = seed
        .wrapping_add(offset.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .rotate_left(17);
    (x ^ (x >> 29)) as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Opening,
    Offered,
    Open,
}

#[derive(Debug)]
struct AppChannel {
    state: ChannelState,
    send_seed: u64,
    recv_seed: u64,
    sent: u64,
    received: u64,
    fin_sent: bool,
    fin_received: bool,
}

/// What one plugin's application knows.
#[derive(Default)]
struct App {
    channels: BTreeMap<u32, AppChannel>,
    opens: BTreeMap<u32, u32>, // request → channel
    owns: Option<Name>,
    register_pending: Option<(RequestId, Name, bool)>,
    /// Applying snapshot and events: the name → key view of a watcher.
    view: Option<(u64, BTreeMap<Name, PublicKey>)>,
    watch_pending: Option<RequestId>,
    /// Requests the application made and has no outcome for yet.
    asked: BTreeSet<RequestId>,
    /// The name the broker granted (owned or queued for), and whether in line.
    registered: Option<(Name, bool)>,
    /// Between `Lost` and `Reconnected`.
    outage: bool,
    /// In this outage, the watch came back.
    watch_restored: bool,
    /// In this outage, the broker granted the name again (owned or queued).
    name_restored: bool,
    /// A monitor asked for and not answered yet.
    monitor_pending: Option<RequestId>,
    /// The broker sends this connection monitor events.
    monitoring: bool,
}

impl App {
    /// A request without an answer: what it was for is not pending.
    fn forget_request(&mut self, request: RequestId) {
        if self
            .register_pending
            .as_ref()
            .is_some_and(|r| r.0 == request)
        {
            self.register_pending = None;
        }
        if self.watch_pending == Some(request) {
            self.watch_pending = None;
        }
        if self.monitor_pending == Some(request) {
            self.monitor_pending = None;
        }
    }
}

/// Runs one seed for `steps` steps; returns what it did or the first broken invariant.
pub fn run(seed: u64, steps: usize) -> Result<RunStats, Violation> {
    Sim::new(seed).run(steps)
}

struct Sim {
    seed: u64,
    step: usize,
    net: Net,
    apps: BTreeMap<NodeId, App>,
    /// Nodes that attack: not apps, and not checked.
    hostile: BTreeMap<NodeId, hostile::Hostile>,
    stats: RunStats,
}

macro_rules! check {
    ($sim:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Violation { seed: $sim.seed, step: $sim.step, what: format!($($msg)+) });
        }
    };
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut net = Net::new(
            seed,
            Chaos {
                split_and_delay: true,
            },
            |config| {
                // Every unix peer may monitor: monitors see the churn.
                config.policy.unix.monitor = true;
                let limits: &mut Limits = &mut config.limits;
                limits.initial_window = 8 * 1024;
                limits.max_window = 64 * 1024;
                limits.max_control_queue = 4 * 1024;
                limits.max_connections_per_key = 3;
                limits.max_pending_opens_per_key = 4;
                limits.max_channels_per_key = 8;
                // Small enough that the hostile nodes meet every budget
                // (over IPv4 and unix: the IPv6 /48 tiers are the unit
                // tests' to reach).
                limits.max_channels_between_keys = 4;
                limits.max_bytes_per_key = 5 * 2 * 8 * 1024;
                limits.max_grown_bytes_per_key = 48 * 1024;
                limits.max_grown_bytes = 96 * 1024;
                limits.max_bytes = 40 * 2 * 8 * 1024;
                limits.max_descriptors_per_key = 2;
                limits.max_descriptors = 6;
                limits.registrations_per_source_per_s = 10;
                limits.registrations_per_s = 15;
                config.fd_passing = true;
            },
        );
        net.socketpairs_work = seed % 2 == 0;
        Sim {
            seed,
            step: 0,
            net,
            apps: BTreeMap::new(),
            hostile: BTreeMap::new(),
            stats: RunStats::default(),
        }
    }

    fn rand(&mut self, n: u32) -> u32 {
        self.net.rng().next_u32() % n.max(1)
    }

    /// Live honest nodes.
    fn live(&self) -> Vec<NodeId> {
        self.net
            .nodes
            .iter()
            .filter(|(id, n)| !n.closed && !self.hostile.contains_key(id))
            .map(|(id, _)| *id)
            .collect()
    }

    fn pick_live(&mut self) -> Option<NodeId> {
        let live = self.live();
        (!live.is_empty()).then(|| live[self.rand(live.len() as u32) as usize])
    }

    fn run(mut self, steps: usize) -> Result<RunStats, Violation> {
        for step in 0..steps {
            self.step = step;
            self.act();
            for _ in 0..1 + self.rand(4) {
                self.net.round();
                self.react()?;
            }
            self.check_always()?;
        }
        // Wind down: everyone reads, time passes, the links drain.
        self.step = steps;
        for node in self.net.nodes.values_mut() {
            node.slow = false;
        }
        for _ in 0..50 {
            self.net.run();
            self.react()?;
        }
        // Those still in an outage get back (each attempt is at most 2 s
        // apart, and nothing refuses them now but a name taken meanwhile).
        for _ in 0..200 {
            if !self.apps.values().any(|a| a.outage) {
                break;
            }
            self.net.advance(Duration::from_millis(250));
            self.net.run();
            self.react()?;
        }
        for _ in 0..10 {
            self.net.run();
            self.react()?;
        }
        self.check_always()?;
        self.check_settled()?;
        self.check_answered()?;
        let all: Vec<NodeId> = self.net.nodes.keys().copied().collect();
        for id in all {
            self.net.kill(id);
        }
        self.net.run();
        self.net.advance(Duration::from_secs(60));
        self.net.run();
        self.check_empty()?;
        let budgets = [
            ErrorCode::TooManyBytes,
            ErrorCode::TooFast,
            ErrorCode::TooManyChannels,
            ErrorCode::TooManyPendingOpens,
        ];
        self.stats.budget_refusals = (self.net.log.iter())
            .filter(|l| {
                l.code.is_some_and(|c| budgets.contains(&c))
                    || l.message.starts_with("relaying, not a socketpair")
            })
            .count();
        Ok(self.stats)
    }

    /// One random action of the workload.
    fn act(&mut self) {
        let now = self.net.now;
        match self.rand(100) {
            0..=9 => {
                let key = Keypair::from_seed([1 + self.rand(KEYS as u32) as u8; 32]);
                let transport = match self.rand(3) {
                    0 => TransportKind::Tcp,
                    _ => TransportKind::Unix,
                };
                // Over TCP the default policy admits nobody: those are refused in the handshake.
                let reconnect = self.rand(2) == 0;
                let connected = self.net.connect_with(key, transport, |c| {
                    c.reconnect = reconnect.then_some(Reconnect {
                        initial: Duration::from_millis(50),
                        max: Duration::from_secs(2),
                    });
                });
                if let Some(id) = connected {
                    self.stats.connects += 1;
                    self.apps.insert(id, App::default());
                }
            }
            10..=19 => {
                let Some(id) = self.pick_live() else { return };
                let name = Name::new(NAMES[self.rand(NAMES.len() as u32) as usize]).expect("valid");
                let wait = self.rand(2) == 0;
                let app = &self.apps[&id];
                if app.registered.is_none() && app.register_pending.is_none() {
                    let asked = self
                        .net
                        .node(id)
                        .session
                        .register(now, name.clone(), wait, None);
                    if let Ok(request) = asked {
                        let app = self.apps.get_mut(&id).expect("live");
                        app.register_pending = Some((request, name, wait));
                        app.asked.insert(request);
                    }
                }
            }
            20..=24 => {
                let Some(id) = self.pick_live() else { return };
                let app = &self.apps[&id];
                if app.view.is_none() && app.watch_pending.is_none() {
                    if let Ok(request) = self.net.node(id).session.watch(now) {
                        let app = self.apps.get_mut(&id).expect("live");
                        app.watch_pending = Some(request);
                        app.asked.insert(request);
                    }
                }
            }
            25..=26 => {
                let Some(id) = self.pick_live() else { return };
                if let Ok(request) = self.net.node(id).session.list(now) {
                    self.apps.get_mut(&id).expect("live").asked.insert(request);
                }
            }
            27 => {
                let Some(id) = self.pick_live() else { return };
                let app = &self.apps[&id];
                if !app.monitoring && app.monitor_pending.is_none() {
                    if let Ok(request) = self.net.node(id).session.monitor(now, None, None) {
                        let app = self.apps.get_mut(&id).expect("live");
                        app.monitor_pending = Some(request);
                        app.asked.insert(request);
                    }
                }
            }
            28..=44 => {
                let Some(id) = self.pick_live() else { return };
                let name = Name::new(NAMES[self.rand(NAMES.len() as u32) as usize]).expect("valid");
                let seed = self.net.rng().next_u64();
                let direct = self.rand(4) == 0;
                let metadata = Bytes::copy_from_slice(&seed.to_be_bytes());
                if let Ok((request, channel)) = self
                    .net
                    .node(id)
                    .session
                    .open(now, name, "sim", metadata, direct)
                {
                    let app = self.apps.get_mut(&id).expect("live");
                    app.opens.insert(request, channel);
                    app.asked.insert(request);
                    app.channels.insert(
                        channel,
                        AppChannel {
                            state: ChannelState::Opening,
                            send_seed: seed,
                            recv_seed: seed ^ 1,
                            sent: 0,
                            received: 0,
                            fin_sent: false,
                            fin_received: false,
                        },
                    );
                }
            }
            45..=74 => {
                // Send on some open channel.
                let Some(id) = self.pick_live() else { return };
                let open: Vec<u32> = self.apps[&id]
                    .channels
                    .iter()
                    .filter(|(_, c)| c.state == ChannelState::Open && !c.fin_sent)
                    .map(|(ch, _)| *ch)
                    .collect();
                if open.is_empty() {
                    return;
                }
                let ch = open[self.rand(open.len() as u32) as usize];
                let len = 1 + self.rand(40_000) as usize;
                let app = self.apps.get_mut(&id).expect("live");
                let c = app.channels.get_mut(&ch).expect("listed");
                let data: Vec<u8> = (0..len as u64)
                    .map(|i| stream_byte(c.send_seed, c.sent + i))
                    .collect();
                if let Ok(n) = self.net.node(id).session.send(ch, Bytes::from(data)) {
                    self.apps
                        .get_mut(&id)
                        .expect("live")
                        .channels
                        .get_mut(&ch)
                        .expect("listed")
                        .sent += n as u64;
                }
            }
            75..=79 => {
                // Finish or reset a channel.
                let Some(id) = self.pick_live() else { return };
                let open: Vec<u32> = self.apps[&id]
                    .channels
                    .iter()
                    .filter(|(_, c)| c.state == ChannelState::Open)
                    .map(|(ch, _)| *ch)
                    .collect();
                if open.is_empty() {
                    return;
                }
                let ch = open[self.rand(open.len() as u32) as usize];
                if self.rand(3) == 0 {
                    let _ = self
                        .net
                        .node(id)
                        .session
                        .reset(ch, ErrorCode::Cancelled, "sim");
                    self.apps.get_mut(&id).expect("live").channels.remove(&ch);
                } else if !self.apps[&id].channels[&ch].fin_sent
                    && self.net.node(id).session.finish(ch).is_ok()
                {
                    self.apps
                        .get_mut(&id)
                        .expect("live")
                        .channels
                        .get_mut(&ch)
                        .expect("listed")
                        .fin_sent = true;
                }
            }
            80..=82 => {
                if let Some(id) = self.pick_live() {
                    self.net.kill(id);
                }
            }
            83..=84 => {
                if let Some(id) = self.pick_live() {
                    self.net.cut(id);
                }
            }
            85..=87 => {
                if let Some(id) = self.pick_live() {
                    let node = self.net.node(id);
                    node.slow = !node.slow;
                }
            }
            88 => self.hostile_connect(),
            89..=92 => self.hostile_act(),
            _ => {
                let ms = match self.rand(10) {
                    0 => 11_000 + self.rand(30_000),
                    1 if self.rand(8) == 0 => {
                        self.net.restart_broker();
                        return;
                    }
                    _ => self.rand(500),
                };
                self.net.advance(Duration::from_millis(u64::from(ms)));
            }
        }
    }

    /// Each plugin's application handles its events; data is checked here.
    fn react(&mut self) -> Result<(), Violation> {
        let ids: Vec<NodeId> = self.net.nodes.keys().copied().collect();
        for id in ids {
            for event in self.net.events(id) {
                match self.hostile.contains_key(&id) {
                    true => self.hostile_event(id, event),
                    false => self.on_event(id, event)?,
                }
            }
        }
        Ok(())
    }

    fn on_event(&mut self, id: NodeId, event: SessionEvent) -> Result<(), Violation> {
        let app = self.apps.entry(id).or_default();
        match event {
            SessionEvent::Ready { .. } | SessionEvent::Writable { .. } => {}
            SessionEvent::Registered { request, queued } => {
                let mine = app.asked.remove(&request);
                if mine {
                    let asked = app.register_pending.take();
                    app.registered = asked.map(|(_, name, wait)| (name, wait));
                }
                // The session's own, restoring the name in an outage.
                let restoring = !mine && app.outage;
                app.name_restored |= restoring;
                let name = app.registered.as_ref().map(|(name, _)| name.clone());
                app.owns = if queued { None } else { name };
                check!(
                    self,
                    mine || restoring,
                    "node {id}: registered for request {request}, asked by nobody"
                );
            }
            SessionEvent::NameAcquired { name } => app.owns = Some(name),
            SessionEvent::Monitor(event) => {
                check!(
                    self,
                    app.monitoring,
                    "node {id}: a monitor event it did not ask for: {event:?}"
                );
            }
            SessionEvent::Members { request, .. }
            | SessionEvent::Stats { request, .. }
            | SessionEvent::Done { request } => {
                if app.monitor_pending == Some(request) {
                    app.monitor_pending = None;
                    app.monitoring = true;
                }
                let mine = app.asked.remove(&request);
                check!(
                    self,
                    mine,
                    "node {id}: answer to request {request}, asked by nobody or answered before"
                );
            }
            SessionEvent::Failed {
                request,
                code,
                message,
            } => {
                let mine = app.asked.remove(&request);
                app.forget_request(request);
                check!(
                    self,
                    mine,
                    "node {id}: request {request} failed, asked by nobody or answered before"
                );
                check!(
                    self,
                    code != ErrorCode::Malformed && code != ErrorCode::ProtocolViolation,
                    "node {id}: request {request} failed as malformed: {message}"
                );
            }
            SessionEvent::Watching {
                request,
                seq,
                members,
            } => {
                let mine = app.asked.remove(&request);
                if mine {
                    app.watch_pending = None;
                }
                let restoring = !mine && app.outage;
                app.watch_restored |= restoring;
                app.view = Some((seq, members.into_iter().map(|m| (m.name, m.key)).collect()));
                check!(
                    self,
                    mine || restoring,
                    "node {id}: watching for request {request}, asked by nobody"
                );
            }
            SessionEvent::Resynced { seq, members } => {
                let Some((at, view)) = app.view.as_mut() else {
                    return Err(self.violation(format!("node {id}: a resync without a watch")));
                };
                check!(self, seq > *at, "node {id}: resync to {seq} after {at}");
                *at = seq;
                *view = members.into_iter().map(|m| (m.name, m.key)).collect();
                self.stats.resyncs += 1;
            }
            SessionEvent::Presence { seq, presence } => {
                let Some((at, view)) = app.view.as_mut() else {
                    return Err(
                        self.violation(format!("node {id}: a presence event without a watch"))
                    );
                };
                check!(self, seq == *at + 1, "node {id}: presence {seq} after {at}");
                *at = seq;
                match presence {
                    Presence::Up(member) => {
                        check!(
                            self,
                            view.insert(member.name.clone(), member.key).is_none(),
                            "node {id}: {} up twice",
                            member.name
                        );
                    }
                    Presence::Down { name, key } => {
                        check!(
                            self,
                            view.remove(&name) == Some(key),
                            "node {id}: {name} down but not up"
                        );
                    }
                    Presence::OwnerChanged { name, old_key, new } => {
                        check!(
                            self,
                            view.insert(name.clone(), new.key) == Some(old_key),
                            "node {id}: {name} changed owner from an unknown one"
                        );
                    }
                }
            }
            SessionEvent::Incoming {
                channel, metadata, ..
            } => {
                let seed = metadata
                    .get(..8)
                    .map(|m| u64::from_be_bytes(m.try_into().expect("8")));
                let Some(seed) = seed else {
                    return Err(self.violation(format!("node {id}: incoming without its seed")));
                };
                app.channels.insert(
                    channel,
                    AppChannel {
                        state: ChannelState::Offered,
                        send_seed: seed ^ 1,
                        recv_seed: seed,
                        sent: 0,
                        received: 0,
                        fin_sent: false,
                        fin_received: false,
                    },
                );
                match self.net.rng().next_u32() % 10 {
                    0 => {
                        let _ = self.net.node(id).session.reject(channel, "not today");
                        self.apps
                            .get_mut(&id)
                            .expect("exists")
                            .channels
                            .remove(&channel);
                    }
                    1 => {} // never answers: the open times out
                    _ => {
                        let now = self.net.now;
                        if self.net.node(id).session.accept(now, channel).is_ok() {
                            let c = self
                                .apps
                                .get_mut(&id)
                                .expect("exists")
                                .channels
                                .get_mut(&channel)
                                .expect("just added");
                            c.state = ChannelState::Open;
                        }
                    }
                }
            }
            SessionEvent::Opened {
                request,
                channel,
                fd,
                ..
            } => {
                let expected = app.opens.remove(&request);
                let mine = app.asked.remove(&request);
                check!(
                    self,
                    mine && expected == Some(channel),
                    "node {id}: opened {channel} for request {request} (asked: {mine})"
                );
                self.stats.channels += 1;
                match fd {
                    // A socketpair: out of the broker's hands (and of this check).
                    Some(_) => {
                        app.channels.remove(&channel);
                    }
                    None => {
                        if let Some(c) = app.channels.get_mut(&channel) {
                            c.state = ChannelState::Open;
                        }
                    }
                }
            }
            SessionEvent::ChannelPath { channel, fd, .. } => {
                if fd.is_some() {
                    app.channels.remove(&channel);
                }
            }
            SessionEvent::Readable { channel } => return self.read_channel(id, channel),
            SessionEvent::Reset { channel, .. } | SessionEvent::ChannelClosed { channel } => {
                app.channels.remove(&channel);
                app.opens.retain(|_, ch| *ch != channel);
                // The application lets it go (the session keeps an ended
                // channel until then, for what it still had to read).
                self.net.node(id).session.close_channel(channel);
            }
            SessionEvent::Closed { code, reason } => {
                let allowed = matches!(
                    code,
                    None | Some(ErrorCode::SlowReader)
                        | Some(ErrorCode::IdleTimeout)
                        | Some(ErrorCode::HelloTimeout)
                );
                check!(
                    self,
                    allowed || reason.contains("closed the connection"),
                    "node {id}: connection ended: {code:?} {reason}"
                );
                check!(
                    self,
                    !reason.contains("broke the protocol") && !reason.contains("malformed"),
                    "node {id}: {reason}"
                );
                self.apps.remove(&id);
            }
            SessionEvent::RequestLost { request, .. } => {
                let mine = app.asked.remove(&request);
                app.forget_request(request);
                if let Some(ch) = app.opens.remove(&request) {
                    app.channels.remove(&ch);
                }
                check!(
                    self,
                    mine,
                    "node {id}: request {request} lost, asked by nobody or answered before"
                );
            }
            SessionEvent::ChannelLost {
                channel, unread, ..
            } => {
                let known = app.channels.remove(&channel);
                let bytes: usize = unread.iter().map(|b| b.len()).sum();
                let Some(c) = known else {
                    check!(
                        self,
                        bytes == 0,
                        "node {id}: {bytes} bytes of a channel {channel} it let go"
                    );
                    return Ok(());
                };
                check!(
                    self,
                    bytes == 0 || !c.fin_received,
                    "node {id}: lost channel {channel} has data after FIN"
                );
                let all = unread.iter().flat_map(|b| b.iter());
                for (offset, byte) in (c.received..).zip(all) {
                    check!(
                        self,
                        *byte == stream_byte(c.recv_seed, offset),
                        "node {id}: lost channel {channel} byte {offset} is wrong"
                    );
                }
                self.stats.bytes += bytes as u64;
            }
            SessionEvent::Lost { reason } => {
                let reconnects = !app.outage;
                app.outage = true;
                // A new connection does not monitor until asked again.
                app.monitoring = false;
                app.monitor_pending = None;
                app.watch_restored = false;
                app.name_restored = false;
                app.owns = None;
                self.stats.outages += 1;
                check!(
                    self,
                    reconnects,
                    "node {id}: lost twice in one outage: {reason}"
                );
            }
            SessionEvent::AttemptFailed { .. } => {
                // Whatever it had restored on that connection is gone with it.
                app.watch_restored = false;
                app.name_restored = false;
                app.owns = None;
                check!(self, app.outage, "node {id}: an attempt outside an outage");
            }
            SessionEvent::Reconnected { .. } => {
                let conn = self.net.nodes[&id].conn;
                let owned = self.net.broker.hub().registry().name_of(conn).cloned();
                let app = self.apps.get_mut(&id).expect("exists");
                let was_out = std::mem::replace(&mut app.outage, false);
                self.stats.reconnects += 1;
                check!(self, was_out, "node {id}: reconnected without an outage");
                check!(
                    self,
                    app.registered.is_none() || app.name_restored,
                    "node {id}: reconnected without taking its name again"
                );
                // Without waiting in line, it holds the name again (one
                // that waits may have been given it since: that news is
                // on its way).
                if let Some((name, false)) = &app.registered {
                    check!(
                        self,
                        owned.as_ref() == Some(name) && app.owns.as_ref() == Some(name),
                        "node {id}: reconnected without its name {name} (it believes {:?}, the broker says {owned:?})",
                        app.owns
                    );
                }
                check!(
                    self,
                    app.view.is_none() || app.watch_restored,
                    "node {id}: reconnected without its watch"
                );
            }
        }
        Ok(())
    }

    /// Reads what `channel` has: every byte checked against its stream, in
    /// order, none after the peer's FIN; then FIN back once the peer's came.
    fn read_channel(&mut self, id: usize, channel: u32) -> Result<(), Violation> {
        loop {
            let recv = self.net.node(id).session.recv(channel, usize::MAX);
            let Some(app) = self.apps.get_mut(&id) else {
                return Ok(());
            };
            let payload = match recv {
                Ok(Recv::Data(payload)) => payload,
                Ok(Recv::Finished) => break,
                Ok(Recv::Blocked | Recv::Reset { .. }) => return Ok(()),
                // A Readable taken before the connection was lost (the
                // session lost it as it read): ChannelLost brings the rest.
                Err(SessionError::UnknownChannel(_)) if !self.net.node(id).session.is_ready() => {
                    return Ok(())
                }
                Err(e) => return Err(self.violation(format!("node {id}: readable {channel}: {e}"))),
            };
            let Some(c) = app.channels.get_mut(&channel) else {
                return Err(self.violation(format!("node {id}: data on unknown channel {channel}")));
            };
            check!(
                self,
                !c.fin_received,
                "node {id}: data on channel {channel} after FIN"
            );
            for (i, byte) in payload.iter().enumerate() {
                let offset = c.received + i as u64;
                if *byte != stream_byte(c.recv_seed, offset) {
                    return Err(self.violation(format!(
                        "node {id}: channel {channel} byte {offset} is wrong (lost, duplicated or reordered)"
                    )));
                }
            }
            c.received += payload.len() as u64;
            self.stats.bytes += payload.len() as u64;
        }
        let Some(c) = self
            .apps
            .get_mut(&id)
            .and_then(|app| app.channels.get_mut(&channel))
        else {
            return Ok(());
        };
        if c.fin_received {
            return Ok(());
        }
        c.fin_received = true;
        if !c.fin_sent && self.net.node(id).session.finish(channel).is_ok() {
            self.apps
                .get_mut(&id)
                .expect("exists")
                .channels
                .get_mut(&channel)
                .expect("exists")
                .fin_sent = true;
        }
        Ok(())
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            what,
        }
    }

    /// Checked after every step.
    fn check_always(&mut self) -> Result<(), Violation> {
        let broker = &self.net.broker;
        let registry = broker.hub().registry();
        let mut owners = BTreeSet::new();
        for (name, holder) in registry.members() {
            check!(
                self,
                owners.insert(holder.conn),
                "conn {} owns two names ({name})",
                holder.conn
            );
            check!(
                self,
                broker.hub().key_of(holder.conn) == Some(holder.key),
                "{name} is owned by a dead or other connection"
            );
        }
        // Every budget, measured from what the broker holds.
        let budgets = broker.hub().check_budgets();
        check!(self, budgets.is_ok(), "{}", budgets.unwrap_err());
        Ok(())
    }

    /// When all links are drained and everyone reads: views equal the registry.
    fn check_settled(&mut self) -> Result<(), Violation> {
        let registry: BTreeMap<Name, PublicKey> = self
            .net
            .broker
            .hub()
            .registry()
            .members()
            .map(|(n, h)| (n.clone(), h.key))
            .collect();
        let seq = self.net.broker.hub().registry().seq();
        for (id, app) in &self.apps {
            if self.net.nodes[id].session.is_closed() {
                continue;
            }
            if self.net.nodes[id].closed || app.outage {
                continue;
            }
            if let Some((at, view)) = &app.view {
                check!(
                    self,
                    *at == seq && *view == registry,
                    "node {id}'s view at {at} differs from the registry at {seq}"
                );
            }
            let conn = self.net.nodes[id].conn;
            let owned = self.net.broker.hub().registry().name_of(conn);
            let log: Vec<&String> = self
                .net
                .log
                .iter()
                .filter(|l| l.conn == conn)
                .map(|l| &l.message)
                .collect();
            check!(self, owned == app.owns.as_ref(),
                "node {id} believes it owns {:?}, the broker says {owned:?}; session closed {}; log {log:?}", app.owns, self.net.nodes[id].session.is_closed());
        }
        Ok(())
    }

    /// Once every deadline passed, every request the application made has
    /// had its one outcome (answered, failed or lost).
    fn check_answered(&mut self) -> Result<(), Violation> {
        let open_timeout = Limits::default().open_timeout;
        self.net.advance(open_timeout + Duration::from_secs(1));
        self.net.run();
        self.react()?;
        for (id, app) in &self.apps {
            if self.net.nodes[id].session.is_closed() {
                continue;
            }
            check!(
                self,
                app.asked.is_empty(),
                "node {id}: requests {:?} never answered nor lost",
                app.asked
            );
        }
        Ok(())
    }

    /// Everyone is gone: nothing is left.
    fn check_empty(&mut self) -> Result<(), Violation> {
        let empty = self.net.broker.hub().check_empty();
        check!(self, empty.is_ok(), "{}", empty.unwrap_err());
        Ok(())
    }
}
