//! `plugboard top`: who holds what, refreshed every second: per key, unix
//! user and name, connections, channels (of the most a key may hold),
//! bytes per second each way and bytes queued. `s` changes the order, `q`
//! quits.

use std::collections::HashMap;
use std::time::Duration;

use plugboard_core::control::Usage;
use plugboard_tokio::plugin::Stats;
use ratatui::layout::Constraint;
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};
use ratatui::Frame;

use crate::{client, fail, BrokerArgs, Failure};

/// Runs the view until `q`.
pub(crate) async fn run(args: BrokerArgs, interval: Duration) -> Result<(), Failure> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let plugin = client(&args, None).await?;
    // Asked once before the screen is taken: a refusal reads as any other.
    let mut stats = plugin.stats().await?;
    let mut view = Top::new(plugin.limits().map(|l| l.max_channels));
    let mut terminal = ratatui::try_init().map_err(|e| fail(format!("the terminal: {e}")))?;
    let mut last = std::time::Instant::now();
    view.update(&stats, interval);
    let outcome = loop {
        if let Err(e) = terminal.draw(|frame| view.render(frame)) {
            break Err(fail(format!("the terminal: {e}")));
        }
        // Keys until the next refresh (crossterm's poll blocks).
        let until = last + interval;
        let key = tokio::task::spawn_blocking(move || {
            let wait = until.saturating_duration_since(std::time::Instant::now());
            match event::poll(wait) {
                Ok(true) => event::read().map(Some),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(fail);
        match key {
            Ok(Ok(Some(Event::Key(k)))) if k.kind == KeyEventKind::Press => match k.code {
                KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break Ok(()),
                KeyCode::Char('s') => view.sort = view.sort.next(),
                _ => {}
            },
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break Err(fail(format!("the terminal: {e}"))),
            Err(e) => break Err(e),
        }
        if last.elapsed() >= interval {
            stats = match plugin.stats().await {
                Ok(stats) => stats,
                Err(e) => break Err(e.into()),
            };
            view.update(&stats, last.elapsed());
            last = std::time::Instant::now();
        }
    };
    ratatui::restore();
    outcome
}

/// What the rows are ordered by, largest first (names: alphabetical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sort {
    In,
    Out,
    Queued,
    Channels,
    Connections,
    Name,
}

impl Sort {
    /// The next order (`s`).
    pub(crate) fn next(self) -> Self {
        match self {
            Sort::In => Sort::Out,
            Sort::Out => Sort::Queued,
            Sort::Queued => Sort::Channels,
            Sort::Channels => Sort::Connections,
            Sort::Connections => Sort::Name,
            Sort::Name => Sort::In,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::In => "in/s",
            Sort::Out => "out/s",
            Sort::Queued => "queued",
            Sort::Channels => "channels",
            Sort::Connections => "conns",
            Sort::Name => "name",
        }
    }
}

/// One row: a key, a user or a name, and its figures now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopRow {
    pub(crate) kind: &'static str,
    pub(crate) label: String,
    pub(crate) connections: u32,
    pub(crate) channels: u32,
    pub(crate) in_per_s: f64,
    pub(crate) out_per_s: f64,
    pub(crate) queued: u64,
}

/// The view: rows from the last two `stats`, and the order.
pub(crate) struct Top {
    pub(crate) sort: Sort,
    /// The most channels a key may hold (the broker's hello), for budgets.
    pub(crate) max_channels: Option<u32>,
    last: HashMap<(&'static str, String), (u64, u64)>,
    rows: Vec<TopRow>,
    refusals: u64,
    disconnects: u64,
}

impl Top {
    pub(crate) fn new(max_channels: Option<u32>) -> Self {
        Top {
            sort: Sort::In,
            max_channels,
            last: HashMap::new(),
            rows: Vec::new(),
            refusals: 0,
            disconnects: 0,
        }
    }

    /// Takes a new `stats`, `elapsed` after the one before: rates are the
    /// bytes since then over the time (a row whose connections closed
    /// meanwhile counts from 0).
    pub(crate) fn update(&mut self, stats: &Stats, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut seen = HashMap::new();
        let mut rows = Vec::new();
        let mut add = |kind: &'static str, label: String, usage: &Usage| {
            let (was_in, was_out) = self
                .last
                .get(&(kind, label.clone()))
                .copied()
                .unwrap_or((usage.bytes_in, usage.bytes_out));
            // Fewer than before: connections closed, and what is there
            // now is new since.
            let rate = |now: u64, was: u64| match now.checked_sub(was) {
                Some(more) => more as f64 / secs,
                None => now as f64 / secs,
            };
            rows.push(TopRow {
                kind,
                label: label.clone(),
                connections: usage.connections,
                channels: usage.channels,
                in_per_s: rate(usage.bytes_in, was_in),
                out_per_s: rate(usage.bytes_out, was_out),
                queued: usage.queued,
            });
            seen.insert((kind, label), (usage.bytes_in, usage.bytes_out));
        };
        for k in &stats.keys {
            add("key", k.key.to_string(), &k.usage);
        }
        for u in &stats.uids {
            add("uid", u.uid.to_string(), &u.usage);
        }
        for n in &stats.names {
            add("name", n.name.as_str().to_owned(), &n.usage);
        }
        self.last = seen;
        self.rows = rows;
        let count = |outcome| {
            stats
                .counters
                .iter()
                .filter(|c| c.outcome == outcome)
                .map(|c| c.count)
                .sum()
        };
        self.refusals = count(plugboard_core::control::Outcome::Refusal);
        self.disconnects = count(plugboard_core::control::Outcome::Disconnect);
    }

    /// The rows in the current order.
    pub(crate) fn rows(&self) -> Vec<TopRow> {
        let mut rows = self.rows.clone();
        let by = |r: &TopRow| -> f64 {
            match self.sort {
                Sort::In => r.in_per_s,
                Sort::Out => r.out_per_s,
                Sort::Queued => r.queued as f64,
                Sort::Channels => r.channels.into(),
                Sort::Connections => r.connections.into(),
                Sort::Name => 0.0,
            }
        };
        rows.sort_by(|a, b| match self.sort {
            Sort::Name => (a.kind, &a.label).cmp(&(b.kind, &b.label)),
            _ => by(b).total_cmp(&by(a)).then_with(|| a.label.cmp(&b.label)),
        });
        rows
    }

    /// Draws the view.
    pub(crate) fn render(&self, frame: &mut Frame<'_>) {
        let title = format!(
            " plugboard top: {} refusals, {} disconnects since the start; sorted by {} (s: next, q: quit) ",
            self.refusals,
            self.disconnects,
            self.sort.label()
        );
        let channels_header = match self.max_channels {
            Some(max) => format!("chans/{max}"),
            None => "chans".into(),
        };
        let header = Row::new([
            "".to_owned(),
            "who".into(),
            "conns".into(),
            channels_header,
            "in/s".into(),
            "out/s".into(),
            "queued".into(),
        ])
        .style(Style::default().add_modifier(Modifier::BOLD));
        let rows = self.rows().into_iter().map(|r| {
            let channels = match (self.max_channels, r.kind) {
                (Some(max), "key") if max > 0 => {
                    format!(
                        "{} {:>3}%",
                        r.channels,
                        u64::from(r.channels) * 100 / u64::from(max)
                    )
                }
                _ => r.channels.to_string(),
            };
            let connections = match r.kind {
                "name" => "-".to_owned(),
                _ => r.connections.to_string(),
            };
            Row::new([
                r.kind.to_owned(),
                r.label,
                connections,
                channels,
                human(r.in_per_s),
                human(r.out_per_s),
                human(r.queued as f64),
            ])
        });
        let widths = [
            Constraint::Length(4),
            Constraint::Min(20),
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
        ];
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(Line::from(title)));
        frame.render_widget(table, frame.area());
    }
}

/// Bytes (or bytes a second) as a person reads them.
fn human(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit < UNITS.len() - 1 {
        n /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n:.0} {}", UNITS[0]),
        _ => format!("{n:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugboard_core::control::{CauseCount, KeyStats, Name, NameStats, Outcome};
    use plugboard_core::Keypair;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn usage(connections: u32, channels: u32, bytes_in: u64, bytes_out: u64) -> Usage {
        Usage {
            connections,
            channels,
            bytes_in,
            bytes_out,
            queued: 0,
        }
    }

    fn stats(a: Usage, b: Usage) -> Stats {
        let key = |seed| Keypair::from_seed([seed; 32]).public();
        Stats {
            uids: Vec::new(),
            counters: vec![CauseCount {
                outcome: Outcome::Refusal,
                cause: "not_permitted".into(),
                count: 3,
            }],
            keys: vec![
                KeyStats {
                    key: key(1),
                    usage: a.clone(),
                },
                KeyStats {
                    key: key(2),
                    usage: b,
                },
            ],
            names: vec![NameStats {
                name: Name::new("echo").unwrap(),
                key: key(1),
                usage: a,
            }],
        }
    }

    fn screen(top: &Top) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 8)).unwrap();
        terminal.draw(|frame| top.render(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn rates_are_bytes_since_the_last_refresh_and_rows_follow_the_order() {
        let mut top = Top::new(Some(4096));
        top.update(
            &stats(usage(1, 2, 1000, 0), usage(2, 1, 0, 0)),
            Duration::from_secs(1),
        );
        // One second later: key 1 took 2 MiB, key 2 sent 10 KiB.
        let later = stats(usage(1, 2, 1000 + (2 << 20), 0), usage(2, 1, 0, 10 << 10));
        top.update(&later, Duration::from_secs(1));
        let text = screen(&top);
        assert!(
            text.contains("plugboard top: 3 refusals, 0 disconnects"),
            "{text}"
        );
        assert!(text.contains("chans/4096"), "{text}");
        let key1 = Keypair::from_seed([1; 32]).public().to_string();
        let key2 = Keypair::from_seed([2; 32]).public().to_string();
        let line_of = |text: &str, what: &str| {
            text.lines()
                .position(|l| l.contains(what))
                .unwrap_or_else(|| panic!("no {what} in\n{text}"))
        };
        let first = text
            .lines()
            .nth(line_of(&text, &key1[..20]))
            .unwrap()
            .to_owned();
        assert!(first.contains("2.0 MiB"), "{first}");
        assert!(first.contains("2   0%"), "{first}");
        // By in/s, key 1 first; by out/s, key 2.
        assert!(
            line_of(&text, &key1[..20]) < line_of(&text, &key2[..20]),
            "{text}"
        );
        top.sort = top.sort.next();
        let text = screen(&top);
        assert!(text.contains("sorted by out/s"), "{text}");
        assert!(
            line_of(&text, &key2[..20]) < line_of(&text, &key1[..20]),
            "{text}"
        );
        let second = text
            .lines()
            .nth(line_of(&text, &key2[..20]))
            .unwrap()
            .to_owned();
        assert!(second.contains("10.0 KiB"), "{second}");
        // The name's row, with no connection count.
        assert!(
            text.lines()
                .any(|l| l.contains("name") && l.contains("echo")),
            "{text}"
        );
    }

    #[test]
    fn a_row_whose_connections_closed_counts_from_zero() {
        let mut top = Top::new(None);
        top.update(
            &stats(usage(1, 0, 5000, 5000), usage(1, 0, 0, 0)),
            Duration::from_secs(1),
        );
        top.update(
            &stats(usage(1, 0, 100, 100), usage(1, 0, 0, 0)),
            Duration::from_secs(2),
        );
        let rows = top.rows();
        assert_eq!((rows[0].in_per_s, rows[0].out_per_s), (50.0, 50.0));
    }
}
