//! `serve`'s legacy listeners (PROTOCOL §11): where SSB clients as they are
//! reach the plugin that holds a name. From flags (one route for every
//! `--legacy-listen`) and from a file of `[[legacy]]` tables (one route
//! each, with its own network key, identity and timeouts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use plugboard_core::broker::LegacyRoute;
use plugboard_core::control::Name;
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Keypair, NetworkKey};
use plugboard_tokio::Addr;
use serde::Deserialize;

/// The legacy listeners' flags.
#[derive(Args, Default)]
pub(crate) struct LegacyArgs {
    /// Where SSB clients (ssb-client, secret-stack peers) connect as they
    /// are: tcp:HOST:PORT (or unix:PATH); repeat for more. Needs --legacy-route.
    #[arg(long, value_name = "ADDR")]
    legacy_listen: Vec<String>,
    /// The plugin they are offered to: whoever holds this name accepts or rejects each one.
    #[arg(long, value_name = "NAME")]
    legacy_route: Option<Name>,
    /// The SSB identity the clients dial, an SSB secret file such as
    /// ~/.ssb/secret (default: the broker's own). The broker holds its secret.
    #[arg(long, value_name = "FILE")]
    legacy_key: Option<PathBuf>,
    /// The network key the clients use, hex or base64 (default: SSB's main network).
    #[arg(long, value_name = "KEY")]
    legacy_network_key: Option<NetworkKey>,
    /// How long the plugin has to accept a client, in milliseconds
    /// (default 1500: ssb-client gives up after 3 s).
    #[arg(long, value_name = "MS")]
    legacy_offer_timeout_ms: Option<u64>,
    /// A client with no traffic either way this long is closed, in
    /// milliseconds (default 600000, secret-stack's).
    #[arg(long, value_name = "MS")]
    legacy_idle_timeout_ms: Option<u64>,
    /// A unix socket (mode 0600) where local SSB tools connect with no
    /// handshake, as ssb-server's ~/.ssb/socket; they are presented to the
    /// plugin as the legacy identity's own key. Needs --legacy-route.
    #[arg(long, value_name = "PATH")]
    legacy_noauth_unix: Option<PathBuf>,
    /// A file of [[legacy]] tables (TOML): listen, route, and optionally
    /// key, network_key, offer_timeout_ms, idle_timeout_ms, noauth.
    #[arg(long, value_name = "FILE")]
    legacy_config: Option<PathBuf>,
}

/// A `[[legacy]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    listen: String,
    route: String,
    key: Option<PathBuf>,
    network_key: Option<String>,
    offer_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    #[serde(default)]
    noauth: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    legacy: Vec<Entry>,
}

/// Every legacy listener the flags and the file ask for, with its route.
/// `own` is the broker's identity (the default one) and `base` its
/// handshake settings (the crypto provider); `load` reads a secret file.
pub(crate) fn routes(
    args: &LegacyArgs,
    own: &Keypair,
    base: &HandshakeConfig,
    load: impl Fn(&Path) -> Result<Keypair, String>,
) -> Result<Vec<(Addr, LegacyRoute)>, String> {
    let handshake = |key: Option<&Path>, network: NetworkKey| -> Result<_, String> {
        let keypair = match key {
            Some(path) => load(path)?,
            None => own.clone(),
        };
        let mut config = HandshakeConfig::new(keypair);
        config.network_key = network;
        config.crypto = base.crypto.clone();
        config.timeout = base.timeout;
        Ok(Arc::new(config))
    };
    let mut routes = Vec::new();
    let listens = !args.legacy_listen.is_empty() || args.legacy_noauth_unix.is_some();
    let settings = args.legacy_key.is_some()
        || args.legacy_network_key.is_some()
        || args.legacy_offer_timeout_ms.is_some()
        || args.legacy_idle_timeout_ms.is_some();
    match (&args.legacy_route, listens) {
        (None, true) => {
            return Err("--legacy-listen and --legacy-noauth-unix need --legacy-route NAME".into())
        }
        (Some(_), false) => {
            return Err("--legacy-route needs --legacy-listen or --legacy-noauth-unix".into())
        }
        (None, false) if settings => {
            return Err("the --legacy-* settings are for --legacy-listen and --legacy-noauth-unix (a --legacy-config file has its own)".into())
        }
        _ => {}
    }
    if let Some(name) = &args.legacy_route {
        let network = args.legacy_network_key.unwrap_or(NetworkKey::SSB_MAIN);
        let config = handshake(args.legacy_key.as_deref(), network)?;
        let mut route = LegacyRoute::new(config, name.clone());
        timeouts(
            &mut route,
            args.legacy_offer_timeout_ms,
            args.legacy_idle_timeout_ms,
        )
        .map_err(|e| format!("--legacy-{e}"))?;
        for listen in &args.legacy_listen {
            let addr: Addr = listen
                .parse()
                .map_err(|e| format!("--legacy-listen {listen}: {e}"))?;
            routes.push((addr, route.clone()));
        }
        if let Some(path) = &args.legacy_noauth_unix {
            let mut route = route.clone();
            route.noauth = true;
            routes.push((Addr::Unix(path.clone()), route));
        }
    }
    if let Some(path) = &args.legacy_config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in file.legacy {
            let at = |e: String| format!("{}: [[legacy]] {}: {e}", path.display(), entry.listen);
            let addr: Addr = entry.listen.parse().map_err(|e| at(format!("{e}")))?;
            let name: Name = entry.route.parse().map_err(|e| at(format!("route: {e}")))?;
            let network = match &entry.network_key {
                Some(text) => text.parse().map_err(|e| at(format!("network_key: {e}")))?,
                None => NetworkKey::SSB_MAIN,
            };
            if entry.noauth && !matches!(addr, Addr::Unix(_)) {
                return Err(at(
                    "noauth is for a unix socket only its owner reaches".into()
                ));
            }
            // A relative key file is where the file is.
            let key = entry.key.as_ref().map(|key| match path.parent() {
                Some(dir) => dir.join(key),
                None => key.clone(),
            });
            let mut route = LegacyRoute::new(handshake(key.as_deref(), network)?, name);
            timeouts(&mut route, entry.offer_timeout_ms, entry.idle_timeout_ms)
                .map_err(|e| at(e.replace('-', "_")))?;
            route.noauth = entry.noauth;
            routes.push((addr, route));
        }
    }
    Ok(routes)
}

/// Sets the timeouts given (milliseconds, never 0); the error names the
/// setting (`offer-timeout-ms`...).
fn timeouts(route: &mut LegacyRoute, offer: Option<u64>, idle: Option<u64>) -> Result<(), String> {
    for (name, ms, into) in [
        ("offer-timeout-ms", offer, &mut route.offer_timeout),
        ("idle-timeout-ms", idle, &mut route.idle_timeout),
    ] {
        match ms {
            Some(0) => return Err(format!("{name}: 0 would refuse or close every client")),
            Some(ms) => *into = Duration::from_millis(ms),
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> (Keypair, HandshakeConfig) {
        let own = Keypair::from_seed([1; 32]);
        (own.clone(), HandshakeConfig::new(own))
    }

    fn no_files(_: &Path) -> Result<Keypair, String> {
        Err("no files here".into())
    }

    #[test]
    fn flags_give_one_route_to_every_legacy_listener_and_the_noauth_socket() {
        let (own, base) = base();
        let args = LegacyArgs {
            legacy_listen: vec!["tcp:127.0.0.1:8008".into(), "tcp:[::1]:8008".into()],
            legacy_route: Some("ssb".parse().unwrap()),
            legacy_noauth_unix: Some("/tmp/ssb.sock".into()),
            legacy_offer_timeout_ms: Some(900),
            legacy_idle_timeout_ms: Some(60_000),
            ..LegacyArgs::default()
        };
        let got = routes(&args, &own, &base, no_files).unwrap();
        assert_eq!(got.len(), 3);
        for (_, route) in &got {
            assert_eq!(route.name.as_str(), "ssb");
            assert_eq!(
                route.handshake.keypair.public(),
                own.public(),
                "the broker's own"
            );
            assert_eq!(route.handshake.network_key, NetworkKey::SSB_MAIN);
            assert_eq!(route.offer_timeout, Duration::from_millis(900));
            assert_eq!(route.idle_timeout, Duration::from_secs(60));
        }
        let noauth: Vec<bool> = got.iter().map(|(_, r)| r.noauth).collect();
        assert_eq!(noauth, [false, false, true]);
    }

    #[test]
    fn a_listener_without_a_route_or_a_route_without_a_listener_is_refused() {
        let (own, base) = base();
        let args = LegacyArgs {
            legacy_listen: vec!["tcp:127.0.0.1:8008".into()],
            ..LegacyArgs::default()
        };
        assert!(routes(&args, &own, &base, no_files)
            .unwrap_err()
            .contains("--legacy-route"));
        let args = LegacyArgs {
            legacy_route: Some("ssb".parse().unwrap()),
            ..LegacyArgs::default()
        };
        assert!(routes(&args, &own, &base, no_files).is_err());
        let args = LegacyArgs {
            legacy_network_key: Some(NetworkKey([1; 32])),
            ..LegacyArgs::default()
        };
        assert!(
            routes(&args, &own, &base, no_files).is_err(),
            "a setting for nothing"
        );
        let args = LegacyArgs {
            legacy_listen: vec!["tcp:127.0.0.1:8008".into()],
            legacy_route: Some("ssb".parse().unwrap()),
            legacy_offer_timeout_ms: Some(0),
            ..LegacyArgs::default()
        };
        let error = routes(&args, &own, &base, no_files).unwrap_err();
        assert!(error.starts_with("--legacy-offer-timeout-ms: 0"), "{error}");
    }

    #[test]
    fn a_file_gives_each_listener_its_own_network_key_and_identity() {
        let (own, base) = base();
        let dir = std::env::temp_dir().join(format!("plugboard-legacy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("legacy.toml");
        std::fs::write(
            &file,
            r#"
[[legacy]]
listen = "tcp:127.0.0.1:8008"
route = "ssb"

[[legacy]]
listen = "tcp:127.0.0.1:9009"
route = "testnet"
key = "elsewhere/secret"
network_key = "7777777777777777777777777777777777777777777777777777777777777777"
offer_timeout_ms = 700
"#,
        )
        .unwrap();
        let other = Keypair::from_seed([9; 32]);
        let load = |path: &Path| {
            assert_eq!(path, dir.join("elsewhere/secret"), "beside the file");
            Ok(other.clone())
        };
        let args = LegacyArgs {
            legacy_config: Some(file.clone()),
            ..LegacyArgs::default()
        };
        let got = routes(&args, &own, &base, load).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.handshake.network_key, NetworkKey::SSB_MAIN);
        assert_eq!(got[1].1.handshake.network_key, NetworkKey([0x77; 32]));
        assert_eq!(got[1].1.handshake.keypair.public(), other.public());
        assert_eq!(got[1].1.offer_timeout, Duration::from_millis(700));

        std::fs::write(
            &file,
            "[[legacy]]\nlisten = \"tcp:127.0.0.1:1\"\nroute = \"x\"\nnoauth = true\n",
        )
        .unwrap();
        let error = routes(&args, &own, &base, no_files).unwrap_err();
        assert!(error.contains("noauth is for a unix socket"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
