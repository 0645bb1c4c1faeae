//! What the broker says of what it did: log entries (every refusal and
//! disconnect counted by cause, and notes), and the refusals and
//! disconnects monitors see.

use crate::control::{ErrorCode, MonitorEvent, MonitorKind};
use crate::keys::PublicKey;

use super::{monitor, Cause, ConnId, Event, Hub, Outcome};

/// A log line with its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The connection concerned.
    pub conn: ConnId,
    /// Its key, once known.
    pub key: Option<PublicKey>,
    /// The cause, as a code where there is one.
    pub code: Option<ErrorCode>,
    /// What happened.
    pub message: String,
    /// What it counts as, and why: a refusal or a disconnect (both for a
    /// connection refused), or neither for a note.
    pub counted: Option<(Outcome, Cause)>,
    /// Whether an operator should see it by default: the broker turning
    /// sockets away (an attack, or limits too tight) rather than one peer's
    /// business.
    pub warning: bool,
}

/// `text` with its control characters (CR and LF among them) escaped, as
/// `\n`, `\r`, `\u{1b}`...: log lines and close reasons quote what peers
/// sent, and a peer must not be able to forge a line of its own or drive
/// the terminal that reads them.
pub fn printable(text: String) -> String {
    if !text.chars().any(unprintable) {
        return text;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unprintable(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Control characters, and the invisible ones that reorder or break what
/// a terminal shows (bidirectional overrides and isolates, line and
/// paragraph separators, zero-width marks): a quoted text could pass for
/// something else.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
        )
}

impl Hub {
    /// A note: neither a refusal nor a disconnect.
    pub(super) fn log(
        &mut self,
        conn: ConnId,
        key: Option<PublicKey>,
        code: Option<ErrorCode>,
        message: String,
    ) {
        self.events.push_back(Event::Log(LogEntry {
            conn,
            key,
            code,
            message: printable(message),
            counted: None,
            warning: false,
        }));
    }

    /// Counts a refusal or a disconnect, logs it, and tells monitors.
    pub(super) fn record(
        &mut self,
        conn: ConnId,
        key: Option<PublicKey>,
        outcome: Outcome,
        cause: Cause,
        message: String,
    ) {
        self.counters.add(outcome, cause);
        let code = match cause {
            Cause::Code(code) => Some(code),
            _ => None,
        };
        self.observe_outcome(key, outcome, cause, &message);
        self.events.push_back(Event::Log(LogEntry {
            conn,
            key,
            code,
            message: printable(message),
            counted: Some((outcome, cause)),
            warning: false,
        }));
    }

    /// A refusal or a disconnect, for monitors.
    fn observe_outcome(
        &mut self,
        key: Option<PublicKey>,
        outcome: Outcome,
        cause: Cause,
        message: &str,
    ) {
        let kind = match outcome {
            Outcome::Refusal => MonitorKind::Refusal,
            Outcome::Disconnect => MonitorKind::Disconnect,
        };
        self.observe(MonitorEvent {
            kind,
            channel: 0,
            key,
            peer: None,
            name: None,
            cause: cause.label().to_owned(),
            to_target: 0,
            to_opener: 0,
            duration_ms: 0,
            detail: monitor::fit(message.to_owned()),
        });
    }

    /// A line for an operator to see even when only warnings are shown:
    /// the broker turning sockets away (an attack, or limits too tight)
    /// rather than one peer's business. Counted by the caller.
    pub(super) fn warn(
        &mut self,
        conn: ConnId,
        counted: Option<(Outcome, Cause)>,
        message: String,
    ) {
        let code = match counted {
            Some((_, Cause::Code(code))) => Some(code),
            _ => None,
        };
        if let Some((outcome, cause)) = counted {
            self.observe_outcome(None, outcome, cause, &message);
        }
        self.events.push_back(Event::Log(LogEntry {
            conn,
            key: None,
            code,
            message: printable(message),
            counted,
            warning: true,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn text_that_could_pass_for_something_else_is_escaped() {
        let text = "ok\u{202e}gnp.exe\u{061c}\u{2064}\u{feff}naïve 名前".to_owned();
        assert_eq!(
            printable(text),
            "ok\\u{202e}gnp.exe\\u{61c}\\u{2064}\\u{feff}naïve 名前"
        );
    }
}
