//! `serve` as a service: its policy and limits, loaded from the files and
//! flags at the start and again on SIGHUP, and what it does on each signal.

use std::path::PathBuf;

use plugboard_core::broker::{Limits, Policy};
use plugboard_core::PublicKey;
use plugboard_os::ReloadHandle;
use tokio::signal::unix::{signal, SignalKind};

/// Where the policy and limits come from: what a reload reads again.
pub(crate) struct Sources {
    pub(crate) policy: Option<PathBuf>,
    pub(crate) limits: Option<PathBuf>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_key: Option<usize>,
    /// The broker's key: a policy must not lock it out.
    pub(crate) owner: PublicKey,
    /// The limits before the files and flags (the handshake's timeout).
    pub(crate) base: Limits,
}

impl Sources {
    /// The policy and limits the files and flags say, or the file, line
    /// and reason they cannot be used.
    pub(crate) fn load(&self) -> Result<(Policy, Limits), String> {
        let read = |file: &PathBuf| {
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
        };
        let policy = match &self.policy {
            Some(file) => Policy::from_toml(&read(file)?)
                .and_then(|policy| policy.check(&self.owner).map(|()| policy))
                .map_err(|e| format!("{}: {e}", file.display()))?,
            None => Policy::default(),
        };
        let mut limits = match &self.limits {
            Some(file) => toml::from_str::<Limits>(&read(file)?)
                .map_err(|e| format!("{}: {e}", file.display()))?,
            None => self.base.clone(),
        };
        if let Some(n) = self.max_connections {
            limits.max_connections = n;
        }
        if let Some(n) = self.max_connections_per_key {
            limits.max_connections_per_key = n;
        }
        Ok((policy, limits))
    }
}

/// What a reload from `old` to `new` changes, one line each: the limits
/// that change, those a running broker keeps (they need a restart), and
/// whether the policy changes.
pub(crate) fn changes(
    old: &(Policy, Limits),
    new: &(Policy, Limits),
) -> (Vec<String>, (Policy, Limits)) {
    let (merged, kept) = old.1.keep_fixed(new.1.clone());
    let table = |limits: &Limits| match toml::Value::try_from(limits) {
        Ok(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    };
    let (before, after, wanted) = (table(&old.1), table(&merged), table(&new.1));
    let mut lines = Vec::new();
    for (key, value) in &after {
        if before.get(key) != Some(value) {
            let was = before.get(key).map_or("unset".into(), |v| v.to_string());
            lines.push(format!("{key}: {was} -> {value}"));
        }
    }
    for key in kept {
        let wanted = wanted.get(key).map_or("?".into(), |v| v.to_string());
        let now = after.get(key).map_or("?".into(), |v| v.to_string());
        lines.push(format!(
            "{key}: stays {now} until a restart (asked for {wanted}; every connection was told it)"
        ));
    }
    if old.0 != new.0 {
        lines.push(
            "the policy changed: it decides the connections and requests that come next \
             (connections keep the rights they were admitted with)"
                .into(),
        );
    }
    (lines, (new.0.clone(), merged))
}

/// The signals `serve` acts on, taken over from their default actions
/// (which end the process) before anything is bound: a service manager may
/// send one as soon as the socket exists.
pub(crate) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Waits for SIGINT or SIGTERM, and says what the broker will do; on
/// SIGHUP, reloads the policy and limits (a file that fails to load
/// leaves the configuration in force, and the log says why).
pub(crate) async fn until_stopped(
    mut signals: Signals,
    sources: Sources,
    mut current: (Policy, Limits),
    reload: ReloadHandle,
) {
    let name = loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break "SIGINT",
            _ = signals.terminate.recv() => break "SIGTERM",
            _ = signals.hangup.recv() => {
                current = reload_once(&sources, current, &reload);
            }
        }
    };
    tracing::info!(
        "{name}: shutting down: no new connections; every connection is told the broker is \
         shutting down and has {:?} to take its last words; the socket files this broker made \
         are removed",
        plugboard_os::SHUTDOWN_GRACE
    );
}

fn reload_once(
    sources: &Sources,
    current: (Policy, Limits),
    reload: &ReloadHandle,
) -> (Policy, Limits) {
    let new = match sources.load() {
        Ok(new) => new,
        Err(e) => {
            tracing::warn!("SIGHUP: not reloaded, the configuration in force stays: {e}");
            return current;
        }
    };
    let (lines, merged) = changes(&current, &new);
    if lines.is_empty() {
        tracing::info!("SIGHUP: reloaded; nothing changed");
        return current;
    }
    reload.reload(merged.0.clone(), merged.1.clone());
    for line in lines {
        tracing::info!("SIGHUP: reloaded: {line}");
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_limits_are_every_key_at_its_default() {
        let text = include_str!("../../contrib/limits.example.toml");
        let limits: Limits = toml::from_str(text).unwrap();
        assert_eq!(limits, Limits::default());
        // Every key is written out, not left to its default.
        let keys = toml::Value::try_from(Limits::default()).unwrap();
        for key in keys.as_table().unwrap().keys() {
            let line = format!("\n{key} = ");
            assert!(text.contains(&line), "{key} is not in the example");
        }
    }

    #[test]
    fn the_example_policy_loads() {
        let text = include_str!("../../contrib/policy.example.toml");
        let policy = Policy::from_toml(text).unwrap();
        let owner = plugboard_core::Keypair::from_seed([9; 32]).public();
        policy.check(&owner).unwrap();
        assert_ne!(policy, Policy::default(), "the example shows something");
    }

    #[test]
    fn changes_name_each_limit_and_what_stays_until_a_restart() {
        let old = (Policy::default(), Limits::default());
        let new_limits = Limits {
            max_connections: 7,
            initial_window: 1024,
            ..Limits::default()
        };
        let (lines, merged) = changes(&old, &(Policy::default(), new_limits));
        assert_eq!(merged.1.max_connections, 7);
        assert_eq!(merged.1.initial_window, Limits::default().initial_window);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "max_connections: 10000 -> 7");
        assert!(
            lines[1].starts_with("initial_window: stays 262144 until a restart (asked for 1024")
        );
        let (lines, _) = changes(&old, &old.clone());
        assert!(lines.is_empty());
    }
}
