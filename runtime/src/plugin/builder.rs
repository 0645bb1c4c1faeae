//! How a plugin connects: the builder's options, the first connection
//! (its handshake, hello and name), and the direct listener it may open.

use super::*;
use plugboard_core::crypto::Crypto;

/// How to connect.
pub struct PluginBuilder<R: Runtime> {
    rt: R,
    keypair: Keypair,
    name: Option<String>,
    wait: bool,
    direct_listen: Option<String>,
    direct_limits: StrangerLimits,
    direct_advertise: Option<String>,
    broker: Option<PublicKey>,
    network_key: NetworkKey,
    crypto: Crypto,
    reconnect: Option<Reconnect>,
    watch_queue: usize,
}

impl<R: Runtime> PluginBuilder<R> {
    /// Registers under this name once connected (a nameless plugin is a client).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Accept direct channels over TCP at `addr` (`tcp:HOST:PORT`; port 0
    /// picks one). The broker tells openers the bound address; only the keys
    /// and tokens it announces get through. Needs a name.
    pub fn direct_listen(mut self, addr: &str) -> Self {
        self.direct_listen = Some(addr.to_owned());
        self
    }

    /// How many strangers the direct listener lets run a handshake at once
    /// (in total and per source address) and for how long; the default is
    /// [`StrangerLimits::default`]. Beyond them a connection is closed at once.
    pub fn direct_limits(mut self, limits: StrangerLimits) -> Self {
        self.direct_limits = limits;
        self
    }

    /// The address openers should dial, when it differs from the bound one
    /// (a listener on `0.0.0.0`, a forwarded port).
    pub fn direct_advertise(mut self, addr: &str) -> Self {
        self.direct_advertise = Some(addr.to_owned());
        self
    }

    /// If the name is taken, wait in line for it instead of failing.
    pub fn wait_for_name(mut self) -> Self {
        self.wait = true;
        self
    }

    /// The broker's key (default: our own, as SSB's local clients do).
    pub fn broker_key(mut self, key: PublicKey) -> Self {
        self.broker = Some(key);
        self
    }

    /// The network key (default: SSB's main network).
    pub fn network_key(mut self, key: NetworkKey) -> Self {
        self.network_key = key;
        self
    }

    /// The crypto provider box-stream and the handshake run on, here and on
    /// direct TCP channels (default: [`default_crypto`](crate::default_crypto),
    /// libsodium with the `libsodium` feature, pure Rust otherwise).
    pub fn crypto(mut self, crypto: Crypto) -> Self {
        self.crypto = crypto;
        self
    }

    /// When the connection to the broker is lost, connect again (with
    /// jittered backoff, until the plugin is dropped) instead of ending. The
    /// core's session does this (`SessionConfig::reconnect`); a broker that
    /// goes quiet is pinged after 20 s and given up after 30 s more.
    ///
    /// On a loss: requests in flight (opens too) fail with
    /// [`PluginError::Reconnecting`], and so do new ones until the plugin is
    /// back; relayed channels give what they had received, then fail
    /// (reads and writes error); direct channels are sockets of their own
    /// and go on; [`Plugin::events`] says [`ConnectionEvent::Lost`]. Each
    /// attempt that fails (no socket within 10 s, no handshake, no hello, a
    /// broker that refuses the name or the watch) is a
    /// [`ConnectionEvent::AttemptFailed`]. On a new connection the plugin
    /// registers its name again (waiting in line if
    /// [`PluginBuilder::wait_for_name`] said so) and restarts its watch (the
    /// receiver gets a fresh [`WatchEvent::Snapshot`]); then
    /// [`ConnectionEvent::Reconnected`].
    ///
    /// Only a connection that got the broker's hello is replaced:
    /// [`PluginBuilder::connect`] itself fails if the broker cannot be
    /// reached or refuses us.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// How many changes a watch holds for an application that does not
    /// read (default 1,024, at least 1). Past that, the changes it did not
    /// read are replaced by one [`WatchEvent::Resync`]: the registry as it
    /// is now.
    pub fn watch_queue(mut self, changes: usize) -> Self {
        self.watch_queue = changes.max(1);
        self
    }

    /// Connects, completes the handshake and the hello, and registers the name if one was given.
    pub async fn connect(self, addr: &str) -> Result<Plugin<R>, PluginError> {
        let addr: Addr =
            addr.parse().map_err(
                |e: plugboard_core::addr::BadAddr| PluginError::Unreachable {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                },
            )?;
        let name = self
            .name
            .as_deref()
            .map(Name::new)
            .transpose()
            .map_err(|e| PluginError::Refused {
                code: ErrorCode::Malformed,
                message: e.to_string(),
            })?;
        let broker = self.broker.unwrap_or_else(|| self.keypair.public());
        let mut handshake = HandshakeConfig::new(self.keypair);
        handshake.network_key = self.network_key;
        handshake.crypto = self.crypto;
        let direct_listener = match (&self.direct_listen, &name) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(PluginError::Direct {
                    reason: "only a named plugin can be reached directly".into(),
                })
            }
            (Some(listen), Some(_)) => Some(direct_listener(&self.rt, listen).await?),
        };
        let mut config = SessionConfig::new(handshake.clone(), broker);
        config.boxstream = matches!(addr, Addr::Tcp(_));
        config.reconnect = self.reconnect;
        let clock = Clock::start();
        let session = Session::new(config, &mut rand_core::OsRng, clock.now())?;
        let (incoming_tx, incoming_rx) = bounded(queue::OFFER_QUEUE);
        let shared = Arc::new(Shared {
            rt: self.rt.clone(),
            inner: Mutex::new(Inner {
                session,
                clock,
                waiters: HashMap::new(),
                channels: HashMap::new(),
                incoming: Some(incoming_tx),
                watchers: Vec::new(),
                monitors: Vec::new(),
                watch_queue: self.watch_queue,
                ended: None,
                epoch: 0,
                orphans: HashMap::new(),
                events: Vec::new(),
                fds: FdTokens::new(),
                paths: HashMap::new(),
                socket: None,
                out: WriteQueue::new(),
            }),
            flush: Notify::default(),
        });
        let (ready_tx, ready_rx) = bounded(1);
        let driver = driver::spawn(shared.clone(), &addr, ready_tx).await?;
        // Until connect returns, a lost connection is the end of it.
        let first = |e| match e {
            PluginError::Reconnecting(reason) => PluginError::Disconnected(reason),
            e => e,
        };
        ready_rx
            .recv()
            .await
            .map_err(|_| PluginError::Disconnected("the driver stopped".into()))?
            .map_err(first)?;
        let handshake = Arc::new(handshake);
        let (direct_addr, direct_task) = match direct_listener {
            Some((listener, bound)) => {
                let addr = self
                    .direct_advertise
                    .unwrap_or_else(|| format!("tcp:{bound}"));
                let task = self.rt.spawn(direct::serve(
                    shared.clone(),
                    listener,
                    bound,
                    handshake.clone(),
                    self.direct_limits,
                ));
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let plugin = Plugin {
            shared,
            incoming: incoming_rx,
            name: name.clone(),
            handshake,
            direct_addr,
            _driver: driver,
            _direct: direct_task,
        };
        if let Some(name) = name {
            plugin.register(name, self.wait).await.map_err(first)?;
        }
        Ok(plugin)
    }
}

/// Binds the direct listener; returns it and the address openers dial.
async fn direct_listener<R: Runtime>(
    rt: &R,
    listen: &str,
) -> Result<(R::Io, std::net::SocketAddr), PluginError> {
    let failed = |reason: String| PluginError::Direct { reason };
    let Ok(Addr::Tcp(host_port)) = listen.parse::<Addr>() else {
        return Err(failed(format!(
            "{listen}: direct channels listen on tcp:HOST:PORT"
        )));
    };
    // The name is looked up off the runtime; binding waits on nothing.
    let addrs = crate::stream::resolve(&host_port)
        .await
        .map_err(|e| failed(format!("{listen}: {e}")))?;
    let listener =
        plugboard_os::bind_tcp(&addrs[..]).map_err(|e| failed(format!("{listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| failed(format!("{listen}: {e}")))?;
    let listener = rt
        .register(listener.into())
        .map_err(|e| failed(format!("{listen}: {e}")))?;
    Ok((listener, bound))
}

impl<R: Runtime> Plugin<R> {
    /// Starts describing a connection made with `keypair`, on the runtime
    /// `R::default()` gives (for tokio, the current one: call it inside the
    /// runtime).
    pub fn builder(keypair: Keypair) -> PluginBuilder<R> {
        PluginBuilder {
            rt: R::default(),
            keypair,
            name: None,
            wait: false,
            direct_listen: None,
            direct_limits: StrangerLimits::default(),
            direct_advertise: None,
            broker: None,
            network_key: NetworkKey::SSB_MAIN,
            crypto: plugboard_os::default_crypto(),
            reconnect: None,
            watch_queue: queue::WATCH_QUEUE,
        }
    }
}
