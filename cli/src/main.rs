//! The `plugboard` command: run a broker, and talk to one.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use plugboard_core::broker::BrokerConfig;
use plugboard_core::control::{ErrorCode, Member, Presence, TransportKind};
use plugboard_core::keys::secret_file;
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Keypair, NetworkKey, PublicKey};
use plugboard_os::activation::{self, Inherited};
use plugboard_tokio::{Addr, Plugin, PluginError, Server, WatchEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod check;
mod docs;
mod legacy;
mod metrics;
mod monitor;
mod service;
mod top;

/// Exit codes a script can tell apart.
mod exit {
    pub const FAILED: u8 = 1;
    pub const NO_SUCH_PLUGIN: u8 = 3;
    pub const REJECTED: u8 = 4;
    pub const TIMED_OUT: u8 = 5;
    pub const UNREACHABLE: u8 = 6;
}

#[derive(Parser)]
#[command(
    name = "plugboard",
    version,
    about = "A plugin bus for Secure Scuttlebutt-style servers"
)]
struct Cli {
    /// More log output (-v info, -vv debug; `serve` logs at info already,
    /// -v is debug there); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new identity (SSB secret format, mode 0600; never overwrites).
    Keygen {
        /// Where (default: $PLUGBOARD_HOME/secret, or ~/.plugboard/secret).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print an identity's id, @<base64>.ed25519.
    Id {
        /// The secret file.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Run the broker.
    Serve(ServeArgs),
    /// List the named plugins.
    List {
        #[command(flatten)]
        broker: BrokerArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show who is there, then every change as it happens.
    Watch {
        #[command(flatten)]
        broker: BrokerArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// What the broker does, as it happens: opens, accepts, closes (with
    /// bytes each way for relayed channels), direct channels, refusals and
    /// disconnects with their cause (the policy's `monitor` right).
    Monitor {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Only events of this key (opener, target or connection).
        #[arg(long = "of", value_name = "KEY")]
        of: Option<PublicKey>,
        /// Only events about this name.
        #[arg(long)]
        name: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// A terminal view of who holds what, refreshed every second: per key,
    /// user and name, connections, channels, bytes per second each way,
    /// bytes queued (s: next order, q: quit).
    Top {
        #[command(flatten)]
        broker: BrokerArgs,
        /// How often to refresh, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
    },
    /// Who holds what, per key, user and name; refusals and disconnects by cause.
    Stats {
        #[command(flatten)]
        broker: BrokerArgs,
        /// One JSON object per line (as --format json).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// text, json (one object per line), openmetrics, or prometheus
        /// (the older text format node_exporter's textfile collector reads).
        #[arg(long, value_enum, default_value_t = StatsFormat::Text)]
        format: StatsFormat,
    },
    /// Open a channel to NAME and connect it to stdin and stdout.
    Connect {
        /// The plugin's name.
        name: String,
        /// What this side will speak.
        #[arg(long, default_value = "stdio")]
        protocol: String,
        /// Sent along with the open (an exposed command reads it as
        /// PLUGBOARD_METADATA).
        #[arg(long, default_value = "")]
        metadata: String,
        /// Ask for a direct channel (a socketpair on one host, TCP across
        /// hosts); relayed if the broker cannot arrange one.
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Register as NAME; each incoming channel runs CMD with the channel as its stdin and stdout.
    Expose {
        /// The name to take.
        name: String,
        /// Also take direct channels over TCP here (tcp:HOST:PORT): openers
        /// on other hosts dial it with the broker's one-time token.
        #[arg(long, value_name = "ADDR")]
        direct_listen: Option<String>,
        /// The address openers should dial, if not the bound one.
        #[arg(long, value_name = "ADDR", requires = "direct_listen")]
        direct_advertise: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a shell's completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; `plugboard manpage | man -l -`).
    Manpage,
}

#[derive(Args)]
struct BrokerArgs {
    /// The broker (default: $PLUGBOARD_BROKER, or the default socket).
    #[arg(long)]
    broker: Option<String>,
    /// The broker's id (default: this identity's own, as SSB's local clients do).
    #[arg(long)]
    broker_key: Option<PublicKey>,
    /// The secret file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The network key, hex or base64 (default: SSB's main network).
    #[arg(long, default_value_t = NetworkKey::SSB_MAIN)]
    network_key: NetworkKey,
}

#[derive(Args)]
struct ServeArgs {
    /// Where to listen: unix:PATH or tcp:HOST:PORT; repeat for more (default: the default socket).
    #[arg(long)]
    listen: Vec<String>,
    /// The secret file (created if absent, and said so).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The network key, hex or base64 (default: SSB's main network).
    #[arg(long, default_value_t = NetworkKey::SSB_MAIN)]
    network_key: NetworkKey,
    /// A policy file (TOML); see docs/PROTOCOL.md §5.16.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A limits file (TOML, keys as in docs/PROTOCOL.md §7).
    #[arg(long)]
    limits: Option<PathBuf>,
    /// Most connections in all.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most connections per key.
    #[arg(long)]
    max_connections_per_key: Option<usize>,
    /// The event loop that runs the broker: every one serves the same
    /// protocol from the same flags.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
    #[command(flatten)]
    legacy: legacy::LegacyArgs,
    /// Load everything (identity, policy, limits, legacy routes, listen
    /// addresses), print the configuration in force (flags, files and
    /// defaults merged) and exit; on an error, say where and why, and exit 1.
    #[arg(long)]
    check: bool,
}

/// How `stats` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StatsFormat {
    /// A line per row.
    Text,
    /// One JSON object per line.
    Json,
    /// The OpenMetrics text format.
    Openmetrics,
    /// The Prometheus text format (0.0.4).
    Prometheus,
}

/// The runtime adapters `serve` can run the broker on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    /// tokio, multi-threaded.
    Tokio,
    /// smol / async-io.
    Smol,
    /// One thread around one mio::Poll.
    Mio,
}

/// A failure: one line, and an exit code.
struct Failure(u8, String);

impl From<PluginError> for Failure {
    fn from(e: PluginError) -> Self {
        // A refusal or a reset says why in its code.
        let code = match (&e, e.code()) {
            (PluginError::Unreachable { .. }, _) => exit::UNREACHABLE,
            (_, Some(ErrorCode::NoSuchName)) => exit::NO_SUCH_PLUGIN,
            (_, Some(ErrorCode::Rejected)) => exit::REJECTED,
            (_, Some(ErrorCode::OpenTimeout)) => exit::TIMED_OUT,
            _ => exit::FAILED,
        };
        Failure(code, e.to_string())
    }
}

fn fail(message: impl std::fmt::Display) -> Failure {
    Failure(exit::FAILED, message.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Listeners a service manager passed (systemd socket activation), taken
    // first: before any descriptor or thread of ours exists.
    let inherited = match &cli.command {
        Command::Serve(_) => match activation::listen_fds() {
            Ok(inherited) => inherited,
            Err(e) => {
                eprintln!("plugboard: socket activation: {e}");
                return ExitCode::from(exit::FAILED);
            }
        },
        _ => Vec::new(),
    };
    // A broker says what it does, refusals and disconnects included (the
    // log is rate-limited per cause); a client speaks only of trouble.
    let serving = matches!(cli.command, Command::Serve(_));
    let level = match cli.verbose + u8::from(serving) {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(cli.command, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("plugboard: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(command: Command, inherited: Vec<Inherited>) -> Result<(), Failure> {
    match command {
        Command::Keygen { key } => {
            println!("{}", keygen(&key_path(key))?.public());
            Ok(())
        }
        Command::Id { key } => {
            println!("{}", load_key(&key_path(key))?.public());
            Ok(())
        }
        Command::Serve(args) => serve(args, inherited).await,
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => match docs::manpage(&mut std::io::stdout()) {
            // `plugboard manpage | head`: the reader had enough.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(fail(e)),
            _ => Ok(()),
        },
        Command::List { broker, json } => list(broker, json).await,
        Command::Watch { broker, json } => watch(broker, json).await,
        Command::Monitor {
            broker,
            of,
            name,
            json,
        } => monitor::run(broker, of, name, json).await,
        Command::Top {
            broker,
            interval_ms,
        } => top::run(broker, Duration::from_millis(interval_ms)).await,
        Command::Stats {
            broker,
            json,
            format,
        } => {
            let format = if json { StatsFormat::Json } else { format };
            metrics::run(broker, format).await
        }
        Command::Connect {
            name,
            protocol,
            metadata,
            direct,
            broker,
        } => connect(name, protocol, metadata, direct, broker).await,
        Command::Expose {
            name,
            direct_listen,
            direct_advertise,
            broker,
            command,
        } => {
            let direct = Direct {
                listen: direct_listen,
                advertise: direct_advertise,
            };
            expose(name, direct, broker, command).await
        }
    }
}

// ── paths and identities ──────────────────────────────────────────────

fn home() -> PathBuf {
    if let Some(home) = std::env::var_os("PLUGBOARD_HOME") {
        return PathBuf::from(home);
    }
    let user = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user.join(".plugboard")
}

fn key_path(key: Option<PathBuf>) -> PathBuf {
    key.unwrap_or_else(|| home().join("secret"))
}

fn default_broker() -> String {
    if let Ok(addr) = std::env::var("PLUGBOARD_BROKER") {
        return addr;
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(home);
    format!("unix:{}", dir.join("plugboard.sock").display())
}

fn keygen(path: &Path) -> Result<Keypair, Failure> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let keypair = Keypair::generate(&mut rand_core::OsRng);
    secret_file::create(path, &keypair).map_err(fail)?;
    Ok(keypair)
}

fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(format!("{}: {e}", dir.display())))
}

fn load_key(path: &Path) -> Result<Keypair, Failure> {
    secret_file::read(path).map_err(|e| fail(format!("{e} (create one with: plugboard keygen)")))
}

// ── serve ─────────────────────────────────────────────────────────────

async fn serve(args: ServeArgs, inherited: Vec<Inherited>) -> Result<(), Failure> {
    let signals = service::Signals::install().map_err(|e| fail(format!("signals: {e}")))?;
    let path = key_path(args.key);
    if args.check && !path.exists() {
        return Err(fail(format!(
            "{}: no identity (serve creates one; plugboard keygen makes it now)",
            path.display()
        )));
    }
    if !path.exists() {
        let keypair = keygen(&path)?;
        eprintln!(
            "plugboard: created a new identity {} in {}",
            keypair.public(),
            path.display()
        );
    }
    let keypair = load_key(&path)?;
    let owner = keypair.public();
    let mut handshake = HandshakeConfig::new(keypair.clone());
    handshake.network_key = args.network_key;
    handshake.crypto = plugboard_os::default_crypto();
    tracing::info!("box-stream and shs1 run on {}", handshake.crypto.name());
    let load = |path: &Path| load_key(path).map_err(|Failure(_, message)| message);
    let legacy = legacy::routes(&args.legacy, &keypair, &handshake, load).map_err(fail)?;
    let mut config = BrokerConfig::new(handshake);
    let sources = service::Sources {
        policy: args.policy.clone(),
        limits: args.limits.clone(),
        max_connections: args.max_connections,
        max_connections_per_key: args.max_connections_per_key,
        owner,
        base: config.limits.clone(),
    };
    (config.policy, config.limits) = sources.load().map_err(fail)?;
    let settings = (config.policy.clone(), config.limits.clone());
    raise_file_limit(config.limits.max_connections + config.limits.max_descriptors);

    // Inherited listeners come in addition to --listen; the default socket
    // only when there are neither.
    let listen = if args.listen.is_empty() && inherited.is_empty() {
        vec![default_broker()]
    } else {
        args.listen
    };
    let mut addrs: Vec<Addr> = listen
        .iter()
        .map(|a| a.parse().map_err(fail))
        .collect::<Result<_, _>>()?;
    // Legacy listeners are bound after the broker's own: their ids follow.
    let mut legacy_lines = std::collections::HashMap::new();
    for (addr, route) in legacy {
        let id = addrs.len();
        let line = format!(
            " (legacy{}: SSB clients of {} reach {})",
            if route.noauth { ", no handshake" } else { "" },
            route.handshake.keypair.public(),
            route.name
        );
        legacy_lines.insert(id, line);
        config.legacy.insert(id as u32, route);
        addrs.push(addr);
    }
    if args.check {
        let files = check::Files {
            identity: &path,
            policy: args.policy.as_deref(),
            limits: args.limits.as_deref(),
        };
        let runtime = format!("{:?}", args.runtime).to_lowercase();
        print!(
            "{}",
            check::effective(&config, files, &runtime, &addrs, inherited.len())
        );
        return Ok(());
    }
    for addr in &addrs {
        if let Addr::Unix(path) = addr {
            if let Some(dir) = path.parent() {
                create_private_dir(dir)?;
            }
        }
    }
    let passed: Vec<String> = inherited
        .iter()
        .map(|i| {
            let addr = i
                .addr()
                .map_or("an unnamed socket".into(), |a| a.to_string());
            match &i.name {
                Some(name) => format!("{addr} (passed by the service manager as {name:?})"),
                None => format!("{addr} (passed by the service manager)"),
            }
        })
        .collect();
    // Every runtime serves the bound addresses first, in order, then the
    // inherited listeners, in the order they were passed.
    let announce = |local: Vec<Addr>, key: PublicKey, runtime: &str| {
        let bound = local.into_iter().take(addrs.len()).enumerate();
        let bound = bound.map(|(i, a)| match legacy_lines.get(&i) {
            Some(line) => format!("{a}{line}"),
            None => a.to_string(),
        });
        for addr in bound.chain(passed.iter().cloned()) {
            eprintln!("plugboard: listening on {addr} as {key}{runtime}");
        }
    };
    let stopped = |reload| service::until_stopped(signals, sources, settings, reload);
    match args.runtime {
        Runtime::Tokio => {
            let server = Server::bind_with(config, &addrs, inherited).map_err(fail)?;
            announce(server.local_addrs(), server.public_key(), "");
            let reload = server.reload_handle();
            server.run(stopped(reload)).await;
            Ok(())
        }
        Runtime::Smol => {
            let server =
                plugboard_smol::Server::bind_with(config, &addrs, inherited).map_err(fail)?;
            announce(server.local_addrs(), server.public_key(), " (smol)");
            let reload = server.reload_handle();
            serve_smol(server, stopped(reload)).await
        }
        Runtime::Mio => {
            let server =
                plugboard_mio::Server::bind_with(config, &addrs, inherited).map_err(fail)?;
            announce(server.local_addrs(), server.public_key(), " (mio)");
            let reload = server.reload_handle();
            serve_mio(server, stopped(reload)).await
        }
    }
}

/// The broker on the mio adapter, on a thread of its own, until `stopped`.
async fn serve_mio(
    server: plugboard_mio::Server,
    stopped: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let stop = server.stop_handle();
    let serving = std::thread::spawn(move || server.run());
    stopped.await;
    stop.stop();
    match serving.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(fail(format!("the mio loop: {e}"))),
        Err(_) => Err(fail("the mio loop panicked")),
    }
}

/// The broker on the smol adapter, on a thread of its own, until `stopped`.
async fn serve_smol(
    server: plugboard_smol::Server,
    stopped: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let (stop, stop_seen) = tokio::sync::oneshot::channel::<()>();
    let serving = std::thread::spawn(move || {
        smol::block_on(server.run(async {
            let _ = stop_seen.await;
        }))
    });
    stopped.await;
    let _ = stop.send(());
    serving.join().map_err(|_| fail("the smol loop panicked"))
}

/// Raises the open-file limit to `descriptors` (a socket per connection,
/// and the socketpair ends in flight) and some headroom.
fn raise_file_limit(descriptors: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let wanted = descriptors as u64 + 64;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    let target = limit.maximum.map_or(wanted, |max| wanted.min(max));
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) if target >= wanted => {}
        Ok(()) => tracing::warn!("open-file limit raised to {target}, short of the {wanted} that the limits need (max_connections + max_descriptors + 64)"),
        Err(e) => tracing::warn!("could not raise the open-file limit to {wanted}: {e}"),
    }
}

// ── clients ───────────────────────────────────────────────────────────

/// Where a plugin takes direct TCP channels, if it does.
#[derive(Default)]
struct Direct {
    listen: Option<String>,
    advertise: Option<String>,
}

async fn client(args: &BrokerArgs, name: Option<&str>) -> Result<Plugin, Failure> {
    named(args, name, Direct::default()).await
}

async fn named(args: &BrokerArgs, name: Option<&str>, direct: Direct) -> Result<Plugin, Failure> {
    let keypair = load_key(&key_path(args.key.clone()))?;
    let mut builder = Plugin::builder(keypair).network_key(args.network_key);
    if let Some(addr) = &direct.listen {
        builder = builder.direct_listen(addr);
    }
    if let Some(addr) = &direct.advertise {
        builder = builder.direct_advertise(addr);
    }
    if let Some(key) = args.broker_key {
        builder = builder.broker_key(key);
    }
    if let Some(name) = name {
        builder = builder.name(name);
    }
    let addr = args.broker.clone().unwrap_or_else(default_broker);
    let connect = builder.connect(&addr);
    match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Failure(
            exit::TIMED_OUT,
            format!("{addr}: no answer in time"),
        )),
    }
}

fn transport(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Unix => "unix",
        TransportKind::Tcp => "tcp",
    }
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::json!({
        "name": m.name.as_str(),
        "key": m.key.to_string(),
        "transport": transport(m.transport),
        "connected_ms": m.connected_ms,
    })
}

async fn list(args: BrokerArgs, json: bool) -> Result<(), Failure> {
    let plugin = client(&args, None).await?;
    let members = plugin.list().await?;
    if json {
        for m in &members {
            println!("{}", member_json(m));
        }
        return Ok(());
    }
    let width = members
        .iter()
        .map(|m| m.name.as_str().len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<53}  {:<9}  {:>10}",
        "NAME", "KEY", "TRANSPORT", "SINCE"
    );
    for m in &members {
        println!(
            "{:<width$}  {:<53}  {:<9}  {:>9}s",
            m.name.as_str(),
            m.key.to_string(),
            transport(m.transport),
            m.connected_ms / 1000
        );
    }
    Ok(())
}

async fn watch(args: BrokerArgs, json: bool) -> Result<(), Failure> {
    let plugin = client(&args, None).await?;
    let mut events = plugin.watch().await?;
    while let Some(event) = events.recv().await {
        match event {
            WatchEvent::Snapshot(members) => print_present(&members, json),
            WatchEvent::Resync { seq, members } => {
                // Changes were dropped while we did not read: start over.
                match json {
                    true => println!("{}", serde_json::json!({"seq": seq, "event": "resync"})),
                    false => println!("{seq} resync"),
                }
                print_present(&members, json);
            }
            WatchEvent::Change { seq, presence } => {
                let line = match (&presence, json) {
                    (Presence::Up(m), true) => serde_json::json!({"seq": seq, "event": "up", "member": member_json(m)}).to_string(),
                    (Presence::Down { name, key }, true) => {
                        serde_json::json!({"seq": seq, "event": "down", "name": name.as_str(), "key": key.to_string()}).to_string()
                    }
                    (Presence::OwnerChanged { name, old_key, new }, true) => serde_json::json!({
                        "seq": seq, "event": "owner", "name": name.as_str(),
                        "old_key": old_key.to_string(), "member": member_json(new),
                    })
                    .to_string(),
                    (Presence::Up(m), false) => format!("{seq} up {} {}", m.name, m.key),
                    (Presence::Down { name, key }, false) => format!("{seq} down {name} {key}"),
                    (Presence::OwnerChanged { name, old_key, new }, false) => {
                        format!("{seq} owner {name} {old_key} -> {}", new.key)
                    }
                };
                println!("{line}");
            }
        }
    }
    Err(fail("the broker closed the connection"))
}

/// Who is there, one line each (a watch's snapshot or resync).
fn print_present(members: &[Member], json: bool) {
    for m in members {
        match json {
            true => println!(
                "{}",
                serde_json::json!({"event": "present", "member": member_json(m)})
            ),
            false => println!("present {} {}", m.name, m.key),
        }
    }
}

async fn connect(
    name: String,
    protocol: String,
    metadata: String,
    direct: bool,
    args: BrokerArgs,
) -> Result<(), Failure> {
    let plugin = client(&args, None).await?;
    let channel = plugin
        .open_with(&name, &protocol, metadata.into_bytes().into(), direct)
        .await?;
    tracing::info!("channel to {name}: {:?}", channel.path());
    let (mut from_peer, mut to_peer) = tokio::io::split(channel);
    let upload = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut to_peer).await?;
        to_peer.shutdown().await
    };
    let download = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0; 64 * 1024];
        // Whoever reads our stdout may stop (as JS muxrpc does after its
        // goodbye, and `head` after its lines): nothing more to deliver,
        // not a failure. A channel that breaks is one, read side only.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
        loop {
            let n = from_peer.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            // Flushed each time: tokio's stdout holds what it is given
            // until then, and the other end may be waiting for it.
            match stdout.write_all(&buf[..n]).await {
                Ok(()) => {}
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
            match stdout.flush().await {
                Ok(()) => {}
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let (up, down) = tokio::join!(upload, download);
    up.and(down)
        .map_err(|e| fail(format!("channel to {name}: {e}")))
}

/// Who opened a channel, for the command `expose` runs on it: the
/// opener's key (as the broker authenticated it) and name (empty for a
/// client), the protocol it named, and what it sent along, as text when
/// that is UTF-8 and in hex always. The values come from the opener: NUL
/// (which no environment can hold) and other control characters in the
/// protocol are escaped as in log lines, and metadata that is not text is
/// only in hex.
fn caller_env(
    from_name: Option<&str>,
    from_key: &PublicKey,
    protocol: &str,
    metadata: &[u8],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PLUGBOARD_FROM_KEY", from_key.to_string()),
        ("PLUGBOARD_FROM_NAME", from_name.unwrap_or("").to_owned()),
        (
            "PLUGBOARD_PROTOCOL",
            plugboard_core::broker::printable(protocol.to_owned()),
        ),
        ("PLUGBOARD_METADATA_HEX", hex::encode(metadata)),
    ];
    let text = std::str::from_utf8(metadata)
        .ok()
        .filter(|t| !t.contains('\0'));
    env.push(("PLUGBOARD_METADATA", text.unwrap_or("").to_owned()));
    env
}

async fn expose(
    name: String,
    direct: Direct,
    args: BrokerArgs,
    command: Vec<String>,
) -> Result<(), Failure> {
    let plugin = named(&args, Some(&name), direct).await?;
    eprintln!("plugboard: {name} is exposed; each channel runs {command:?}");
    // A command that cannot run ends `expose`; the channel tasks say so here.
    let (cannot_run, mut fatal) = tokio::sync::mpsc::unbounded_channel();
    loop {
        let incoming = tokio::select! {
            incoming = plugin.incoming() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            Some(failure) = fatal.recv() => return Err(failure),
        };
        let from = incoming.from_key;
        let caller = caller_env(
            incoming.from_name.as_ref().map(|n| n.as_str()),
            &from,
            &incoming.protocol,
            &incoming.metadata,
        );
        let (command, cannot_run) = (command.clone(), cannot_run.clone());
        tokio::spawn(async move {
            // A direct channel's path takes a moment: wait for it here, not
            // in the loop that takes the next channel.
            let channel = match incoming.accept().await {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!("accepting a channel from {from}: {e}");
                    return;
                }
            };
            // Only now: an opener that never completes its channel must
            // not leave a process behind.
            let child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .envs(caller)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) => {
                    channel.reset(&format!("cannot run {}", command[0]));
                    let _ = cannot_run.send(fail(format!("{}: {e}", command[0])));
                    return;
                }
            };
            tracing::info!("channel from {from}: {:?}", channel.path());
            let (mut from_peer, mut to_peer) = tokio::io::split(channel);
            let mut stdin = child.stdin.take().expect("piped");
            let mut stdout = child.stdout.take().expect("piped");
            let feed = async {
                let _ = tokio::io::copy(&mut from_peer, &mut stdin).await;
                drop(stdin); // EOF for the command
            };
            let drain = async {
                let _ = tokio::io::copy(&mut stdout, &mut to_peer).await;
                let _ = to_peer.shutdown().await;
            };
            tokio::join!(feed, drain);
            let _ = child.wait().await;
        });
    }
    Err(fail("the broker closed the connection"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_s_values_reach_the_command_as_an_environment_can_hold_them() {
        let key = Keypair::from_seed([7; 32]).public();
        let env: std::collections::HashMap<_, _> =
            caller_env(Some("alpha"), &key, "muxrpc", b"{\"a\":1}")
                .into_iter()
                .collect();
        assert_eq!(env["PLUGBOARD_FROM_KEY"], key.to_string());
        assert_eq!(env["PLUGBOARD_FROM_NAME"], "alpha");
        assert_eq!(env["PLUGBOARD_PROTOCOL"], "muxrpc");
        assert_eq!(env["PLUGBOARD_METADATA"], "{\"a\":1}");
        assert_eq!(env["PLUGBOARD_METADATA_HEX"], "7b2261223a317d");
        // A client has no name; bytes no environment holds are escaped or
        // left to the hex.
        let env: std::collections::HashMap<_, _> = caller_env(None, &key, "a\0b\nc", &[0, 0xff])
            .into_iter()
            .collect();
        assert_eq!(env["PLUGBOARD_FROM_NAME"], "");
        assert_eq!(env["PLUGBOARD_PROTOCOL"], "a\\u{0}b\\nc");
        assert_eq!(env["PLUGBOARD_METADATA"], "");
        assert_eq!(env["PLUGBOARD_METADATA_HEX"], "00ff");
        assert!(env.values().all(|v| !v.contains('\0')));
    }
}
