//! `serve --check`: the configuration a broker would run with, flags,
//! files and defaults merged, as TOML an operator can read (and diff).

use std::fmt::Write as _;
use std::path::Path;

use plugboard_core::broker::BrokerConfig;
use plugboard_tokio::Addr;

/// Where the configuration came from.
pub(crate) struct Files<'a> {
    pub(crate) identity: &'a Path,
    pub(crate) policy: Option<&'a Path>,
    pub(crate) limits: Option<&'a Path>,
}

/// The configuration in force. `addrs` are the addresses to bind, in
/// order (each listener's id is its place; legacy ones are in
/// `config.legacy`); `inherited` counts the service manager's listeners.
pub(crate) fn effective(
    config: &BrokerConfig,
    files: Files<'_>,
    runtime: &str,
    addrs: &[Addr],
    inherited: usize,
) -> String {
    let mut out = String::new();
    let from = |file: Option<&Path>| match file {
        Some(path) => format!("from {}", path.display()),
        None => "the defaults".to_owned(),
    };
    let handshake = &config.handshake;
    let _ = writeln!(
        out,
        "# plugboard serve --check: the configuration in force (flags, files and defaults merged)"
    );
    let _ = writeln!(
        out,
        "identity = \"{}\"  # {}",
        handshake.keypair.public(),
        files.identity.display()
    );
    let _ = writeln!(out, "network_key = \"{}\"", handshake.network_key.to_hex());
    let _ = writeln!(out, "runtime = \"{runtime}\"");
    let _ = writeln!(out, "crypto = \"{}\"", handshake.crypto.name());
    let own: Vec<String> = (0..addrs.len())
        .filter(|id| !config.legacy.contains_key(&(*id as u32)))
        .map(|id| format!("\"{}\"", addrs[id]))
        .collect();
    let _ = writeln!(out, "listen = [{}]", own.join(", "));
    let _ = writeln!(out, "listeners_from_the_service_manager = {inherited}");
    let mut legacy: Vec<_> = config.legacy.iter().collect();
    legacy.sort_by_key(|(id, _)| **id);
    for (id, route) in legacy {
        let _ = writeln!(out, "\n[[legacy]]");
        let _ = writeln!(out, "listen = \"{}\"", addrs[*id as usize]);
        let _ = writeln!(out, "route = \"{}\"", route.name);
        let _ = writeln!(out, "identity = \"{}\"", route.handshake.keypair.public());
        let _ = writeln!(
            out,
            "network_key = \"{}\"",
            route.handshake.network_key.to_hex()
        );
        let _ = writeln!(
            out,
            "offer_timeout_ms = {}",
            route.offer_timeout.as_millis()
        );
        let _ = writeln!(out, "idle_timeout_ms = {}", route.idle_timeout.as_millis());
        let _ = writeln!(out, "noauth = {}", route.noauth);
    }
    let limits = toml::to_string(&config.limits).unwrap_or_else(|e| format!("# {e}\n"));
    let _ = writeln!(out, "\n[limits]  # {}, and flags", from(files.limits));
    out.push_str(&limits);
    let policy = toml::to_string(&config.policy).unwrap_or_else(|e| format!("# {e}\n"));
    let _ = writeln!(out, "\n# the policy, {}", from(files.policy));
    out.push_str(&policy);
    out
}
