//! `plugboard stats --format openmetrics|prometheus`: the same figures as
//! `stats`, and the broker's refusals and disconnects by cause, in the
//! OpenMetrics text format, or Prometheus' own (0.0.4, which
//! node_exporter's textfile collector reads).

use std::fmt::Write as _;

use plugboard_core::broker::printable;
use plugboard_core::control::{Outcome, Usage};
use plugboard_tokio::plugin::Stats;

use crate::{client, BrokerArgs, Failure, StatsFormat};

/// One family: its name, type, help, unit, and samples (labels, value).
struct Family {
    name: String,
    kind: &'static str,
    help: String,
    unit: Option<&'static str>,
    samples: Vec<(String, u64)>,
}

/// A figure `stats` gives for each key, user and name.
struct Gauge {
    what: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    figure: fn(&Usage) -> u64,
}

const GAUGES: [Gauge; 5] = [
    Gauge {
        what: "connections",
        help: "Connections held now",
        unit: None,
        figure: |u| u.connections.into(),
    },
    Gauge {
        what: "channels",
        help: "Channels open or being opened now",
        unit: None,
        figure: |u| u.channels.into(),
    },
    Gauge {
        what: "received_bytes",
        help: "Bytes received from it over the connections it holds now",
        unit: Some("bytes"),
        figure: |u| u.bytes_in,
    },
    Gauge {
        what: "sent_bytes",
        help: "Bytes sent to it over the connections it holds now",
        unit: Some("bytes"),
        figure: |u| u.bytes_out,
    },
    Gauge {
        what: "queued_bytes",
        help: "Bytes queued for it and not yet written",
        unit: Some("bytes"),
        figure: |u| u.queued,
    },
];

/// Which text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exposition {
    /// OpenMetrics 1.0: a counter's family has no `_total`, units are
    /// declared, and it ends in `# EOF`.
    OpenMetrics,
    /// Prometheus 0.0.4: a counter's family is its samples' name, `_total`
    /// and all; no units, no end marker.
    Prometheus,
}

/// The whole exposition.
pub(crate) fn exposition(stats: &Stats, format: Exposition) -> String {
    let keys: Vec<_> = stats
        .keys
        .iter()
        .map(|k| (k.key.to_string(), &k.usage))
        .collect();
    let uids: Vec<_> = stats
        .uids
        .iter()
        .map(|u| (u.uid.to_string(), &u.usage))
        .collect();
    let names: Vec<_> = stats
        .names
        .iter()
        .map(|n| (n.name.as_str().to_owned(), &n.usage))
        .collect();
    let mut families = Vec::new();
    for (scope, rows, whose) in [
        ("key", keys, "per key"),
        ("uid", uids, "per unix user"),
        ("name", names, "per name, on its holder's connection"),
    ] {
        for gauge in &GAUGES {
            // A name is held on one connection: its count says nothing.
            if scope == "name" && gauge.what == "connections" {
                continue;
            }
            let samples = rows
                .iter()
                .map(|(value, usage)| {
                    let labels = format!("{scope}=\"{}\"", escape(value));
                    (labels, (gauge.figure)(usage))
                })
                .collect();
            families.push(Family {
                name: format!("plugboard_{scope}_{}", gauge.what),
                kind: "gauge",
                help: format!("{}, {whose}.", gauge.help),
                unit: gauge.unit,
                samples,
            });
        }
    }
    for (outcome, name, help) in [
        (
            Outcome::Refusal,
            "refusals",
            "Refusals since the broker started, by cause.",
        ),
        (
            Outcome::Disconnect,
            "disconnects",
            "Connections ended since the broker started, by cause.",
        ),
    ] {
        let samples = stats
            .counters
            .iter()
            .filter(|c| c.outcome == outcome)
            .map(|c| (format!("cause=\"{}\"", escape(&c.cause)), c.count))
            .collect();
        families.push(Family {
            name: format!("plugboard_{name}"),
            kind: "counter",
            help: help.to_owned(),
            unit: None,
            samples,
        });
    }
    let mut out = String::new();
    for family in &families {
        write_family(&mut out, family, format);
    }
    if format == Exposition::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn write_family(out: &mut String, family: &Family, format: Exposition) {
    let suffix = if family.kind == "counter" {
        "_total"
    } else {
        ""
    };
    let sample = format!("{}{suffix}", family.name);
    let name = match format {
        Exposition::OpenMetrics => &family.name,
        Exposition::Prometheus => &sample,
    };
    let _ = writeln!(out, "# TYPE {name} {}", family.kind);
    if let (Some(unit), Exposition::OpenMetrics) = (family.unit, format) {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
    let _ = writeln!(out, "# HELP {name} {}", family.help);
    for (labels, value) in &family.samples {
        let _ = writeln!(out, "{sample}{{{labels}}} {value}");
    }
}

/// A label value as OpenMetrics quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `plugboard stats`: asks once and prints.
pub(crate) async fn run(args: BrokerArgs, format: StatsFormat) -> Result<(), Failure> {
    let plugin = client(&args, None).await?;
    let stats = plugin.stats().await?;
    match format {
        StatsFormat::Openmetrics => {
            print!("{}", exposition(&stats, Exposition::OpenMetrics))
        }
        StatsFormat::Prometheus => {
            print!("{}", exposition(&stats, Exposition::Prometheus))
        }
        StatsFormat::Json => {
            for line in stats_rows(&stats) {
                println!("{}", line.json);
            }
        }
        StatsFormat::Text => {
            for line in stats_rows(&stats) {
                println!("{}", line.text);
            }
        }
    }
    Ok(())
}

/// A row of `stats`, as text and as JSON.
struct StatsRow {
    text: String,
    json: serde_json::Value,
}

fn stats_rows(stats: &plugboard_tokio::plugin::Stats) -> Vec<StatsRow> {
    use serde_json::json;
    let mut rows = Vec::new();
    let figures = |u: &plugboard_core::control::Usage| {
        format!(
            "conns {}  channels {}  in {}  out {}  queued {}",
            u.connections, u.channels, u.bytes_in, u.bytes_out, u.queued
        )
    };
    for u in &stats.uids {
        let (uid, u) = (u.uid, &u.usage);
        rows.push(StatsRow {
            text: format!("uid  {uid}  {}", figures(u)),
            json: json!({"uid": uid, "connections": u.connections, "channels": u.channels, "bytes_in": u.bytes_in, "bytes_out": u.bytes_out, "queued": u.queued}),
        });
    }
    for k in &stats.keys {
        let u = &k.usage;
        rows.push(StatsRow {
            text: format!("key  {}  {}", k.key, figures(u)),
            json: json!({"key": k.key.to_string(), "connections": u.connections, "channels": u.channels, "bytes_in": u.bytes_in, "bytes_out": u.bytes_out, "queued": u.queued}),
        });
    }
    for n in &stats.names {
        let u = &n.usage;
        rows.push(StatsRow {
            text: format!(
                "name {}  {}  channels {}  in {}  out {}  queued {}",
                n.name, n.key, u.channels, u.bytes_in, u.bytes_out, u.queued
            ),
            json: json!({"name": n.name.as_str(), "key": n.key.to_string(), "channels": u.channels, "bytes_in": u.bytes_in, "bytes_out": u.bytes_out, "queued": u.queued}),
        });
    }
    for c in &stats.counters {
        let outcome = c.outcome.label();
        rows.push(StatsRow {
            text: format!("{outcome:<10}  {}  {}", printable(c.cause.clone()), c.count),
            json: json!({"outcome": outcome, "cause": c.cause, "count": c.count}),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_core::control::{CauseCount, KeyStats, Name, NameStats};
    use plugboard_core::Keypair;

    #[test]
    fn families_are_whole_typed_and_the_exposition_ends_in_eof() {
        let key = Keypair::from_seed([1; 32]).public();
        let usage = Usage {
            connections: 2,
            channels: 3,
            bytes_in: 10,
            bytes_out: 20,
            queued: 0,
        };
        let stats = Stats {
            uids: Vec::new(),
            counters: vec![
                CauseCount {
                    outcome: Outcome::Refusal,
                    cause: "not_permitted".into(),
                    count: 4,
                },
                CauseCount {
                    outcome: Outcome::Disconnect,
                    cause: "weird\"cause\n".into(),
                    count: 1,
                },
            ],
            keys: vec![KeyStats {
                key,
                usage: usage.clone(),
            }],
            names: vec![NameStats {
                name: Name::new("echo").unwrap(),
                key,
                usage,
            }],
        };
        let prometheus = exposition(&stats, Exposition::Prometheus);
        assert!(prometheus.contains("# TYPE plugboard_refusals_total counter\n"));
        assert!(prometheus.contains("plugboard_refusals_total{cause=\"not_permitted\"} 4\n"));
        assert!(!prometheus.contains("# UNIT") && !prometheus.contains("# EOF"));
        let text = exposition(&stats, Exposition::OpenMetrics);
        assert!(text.ends_with("# EOF\n"));
        assert!(
            text.contains(&format!("plugboard_key_connections{{key=\"{key}\"}} 2\n")),
            "{text}"
        );
        assert!(text.contains("# UNIT plugboard_key_received_bytes bytes\n"));
        assert!(text.contains("plugboard_name_channels{name=\"echo\"} 3\n"));
        assert!(text.contains("# TYPE plugboard_refusals counter\n"));
        assert!(text.contains("plugboard_refusals_total{cause=\"not_permitted\"} 4\n"));
        assert!(text.contains("plugboard_disconnects_total{cause=\"weird\\\"cause\\n\"} 1\n"));
        // Every sample belongs to the family declared last before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} outside {family}");
            }
        }
    }
}
