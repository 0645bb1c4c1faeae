//! `plugboard monitor`: what the broker does, as it happens, one line (or
//! one JSON object) per event.

use plugboard_core::broker::printable;
use plugboard_core::control::{MonitorEvent, MonitorKind};
use plugboard_core::PublicKey;
use plugboard_tokio::plugin::MonitorItem;

use crate::{client, fail, BrokerArgs, Failure};

/// Prints every event the broker sends until it closes the connection.
pub(crate) async fn run(
    args: BrokerArgs,
    key: Option<PublicKey>,
    name: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let name = name
        .map(|n| plugboard_core::control::Name::new(&n))
        .transpose()
        .map_err(fail)?;
    let plugin = client(&args, None).await?;
    let mut events = plugin.monitor(key, name).await?;
    if !json {
        println!(
            "# direct channels are out of the broker's sight once made: no close or bytes for them"
        );
    }
    use std::io::Write as _;
    while let Some(item) = events.recv().await {
        let mut out = std::io::stdout().lock();
        // A reader that went away (`| head`): done.
        if writeln!(out, "{}", print(&item, json)).is_err() || out.flush().is_err() {
            return Ok(());
        }
    }
    Err(fail("the broker closed the connection"))
}

/// One event as a line of text. What it quotes is escaped again: a
/// broker (or a peer's reason it passed on) must not drive the terminal.
pub(crate) fn line(event: &MonitorEvent) -> String {
    let kind = event.kind.label();
    let detail = printable(event.detail.clone());
    let cause = printable(event.cause.clone());
    let key = event.key.map(|k| k.to_string()).unwrap_or_default();
    let name = event.name.as_ref().map_or("-", |n| n.as_str());
    let channel = event.channel;
    match event.kind {
        MonitorKind::Open => {
            let peer = event.peer.map(|k| k.to_string()).unwrap_or_default();
            format!("{kind:<10} #{channel} {key} -> {name} ({peer})")
        }
        MonitorKind::Accept => format!("{kind:<10} #{channel} {name} path {cause}"),
        MonitorKind::Close => {
            let end = match cause.as_str() {
                "" => String::new(),
                cause => format!("  reset {cause}"),
            };
            format!(
                "{kind:<10} #{channel} {name} to_target {} B  to_opener {} B  {} ms{end}",
                event.to_target, event.to_opener, event.duration_ms
            )
        }
        MonitorKind::Reject | MonitorKind::Direct | MonitorKind::Fallback => {
            format!("{kind:<10} #{channel} {name} {cause}: {detail}")
        }
        MonitorKind::Refusal | MonitorKind::Disconnect => {
            format!("{kind:<10} {cause} {key} {detail}")
        }
        MonitorKind::Missed => format!("{kind:<10} {detail}"),
    }
}

/// One event as a JSON object.
pub(crate) fn json(event: &MonitorEvent) -> serde_json::Value {
    serde_json::json!({
        "event": event.kind.label(),
        "channel": event.channel,
        "key": event.key.map(|k| k.to_string()),
        "peer": event.peer.map(|k| k.to_string()),
        "name": event.name.as_ref().map(|n| n.as_str()),
        "cause": printable(event.cause.clone()),
        "to_target": event.to_target,
        "to_opener": event.to_opener,
        "duration_ms": event.duration_ms,
        "detail": printable(event.detail.clone()),
    })
}

/// What to print for an item.
pub(crate) fn print(item: &MonitorItem, as_json: bool) -> String {
    match (item, as_json) {
        (MonitorItem::Event(event), true) => json(event).to_string(),
        (MonitorItem::Event(event), false) => line(event),
        (MonitorItem::Missed, true) => serde_json::json!({"event": "missed"}).to_string(),
        (MonitorItem::Missed, false) => {
            "missed     events were dropped: this monitor did not read in time".into()
        }
    }
}
