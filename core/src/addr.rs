//! Where a broker listens and a plugin connects: `unix:PATH` or `tcp:HOST:PORT`.
//! Text only: every runtime adapter parses the same flags into the same type.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// A unix socket: plain framing after the handshake.
    Unix(PathBuf),
    /// TCP: box-stream after the handshake. `host:port`.
    Tcp(String),
}

/// Why text is not an [`Addr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address: use unix:PATH or tcp:HOST:PORT")]
pub struct BadAddr(pub String);

impl FromStr for Addr {
    type Err = BadAddr;
    fn from_str(s: &str) -> Result<Self, BadAddr> {
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        match s
            .strip_prefix("tcp:")
            .and_then(|rest| rest.rsplit_once(':'))
        {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Addr::Tcp(format!("{host}:{port}")))
            }
            _ => Err(BadAddr(s.to_owned())),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
            Addr::Tcp(host_port) => write!(f, "tcp:{host_port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for text in [
            "unix:/run/user/1000/plugboard.sock",
            "tcp:127.0.0.1:8008",
            "tcp:[::1]:1",
        ] {
            assert_eq!(text.parse::<Addr>().unwrap().to_string(), text);
        }
        for bad in [
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:h:70000",
            "http://x",
            "",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }
}
