//! systemd socket activation: listening sockets a service manager opened
//! for us and passed as descriptors 3, 4, …, as `sd_listen_fds(3)` describes.
//!
//! The manager sets `LISTEN_FDS` (how many), `LISTEN_PID` (for which
//! process: a child that inherits the environment must not take them) and,
//! optionally, `LISTEN_FDNAMES` (colon-separated names, from
//! `FileDescriptorName=`). [`listen_fds`] reads them, unsets them as
//! `sd_listen_fds(1)` does, and checks that each descriptor is a listening
//! stream socket: a unix one becomes a [`UnixListener`], an IPv4 or IPv6 one
//! a [`TcpListener`].
//!
//! Call it early, before the program opens descriptors or starts threads
//! (the tokio runtime, for one): it takes ownership of descriptors by number
//! and changes the environment.
//!
//! ```text
//! # plugboard.socket                 # plugboard.service
//! [Socket]                           [Service]
//! ListenStream=%t/plugboard.sock     ExecStart=/usr/bin/plugboard serve
//! SocketMode=0600
//! ```

use std::net::TcpListener;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use rustix::fs::FileType;
use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};
use rustix::net::{sockopt, AddressFamily, SocketType};

use crate::Addr;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// One listener the service manager passed.
#[derive(Debug)]
pub struct Inherited {
    /// Its name from `LISTEN_FDNAMES`, if the manager gave names.
    pub name: Option<String>,
    /// The socket.
    pub listener: InheritedListener,
}

/// A passed listening socket.
#[derive(Debug)]
pub enum InheritedListener {
    /// A unix stream socket.
    Unix(UnixListener),
    /// A TCP socket, IPv4 or IPv6.
    Tcp(TcpListener),
}

impl Inherited {
    /// Where it listens, when the socket can say (`None` for an unnamed or
    /// abstract unix socket).
    pub fn addr(&self) -> Option<Addr> {
        match &self.listener {
            InheritedListener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| Addr::Unix(p.to_owned()))),
            InheritedListener::Tcp(l) => l.local_addr().ok().map(|a| Addr::Tcp(a.to_string())),
        }
    }
}

/// Why the passed descriptors cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A variable does not say what `sd_listen_fds(3)` says it must.
    #[error("{var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A passed descriptor is not a listening stream socket we can serve on.
    #[error("descriptor {fd}: {reason}")]
    Fd {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead.
        reason: String,
    },
}

/// The listeners passed to this process, in descriptor order; empty when
/// none were (no `LISTEN_PID`, or another process's). Unsets `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` whatever the outcome, so that the
/// processes this one starts do not see them, and marks the descriptors
/// close-on-exec.
pub fn listen_fds() -> Result<Vec<Inherited>, ActivationError> {
    let names = passed(std::process::id(), |var| {
        std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
    });
    for var in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
        std::env::remove_var(var);
    }
    let mut listeners = Vec::new();
    for (fd, name) in (LISTEN_FDS_START..).zip(names?) {
        // SAFETY: the fd is only looked at; a closed one gives EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        fcntl_getfd(borrowed).map_err(|e| ActivationError::Fd {
            fd,
            reason: format!("not open ({e})"),
        })?;
        fcntl_setfd(borrowed, FdFlags::CLOEXEC).map_err(|e| ActivationError::Fd {
            fd,
            reason: e.to_string(),
        })?;
        // SAFETY: the descriptor is open, and the service manager passed it
        // to this process (LISTEN_PID) for it to own; nothing else in this
        // process claims descriptors it did not open.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        listeners.push(adopt(owned, name)?);
    }
    Ok(listeners)
}

/// What the environment says was passed to process `pid`: one entry per
/// descriptor, with its name if names were given. `var` reads a variable.
///
/// As `sd_listen_fds_with_names(3)`: nothing if `LISTEN_PID` or `LISTEN_FDS`
/// is unset or `LISTEN_PID` is another process; an error if a value does not
/// parse or the number of names is not the number of descriptors.
pub fn passed(
    pid: u32,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Option<String>>, ActivationError> {
    let bad = |var: &'static str, value: &str, reason| ActivationError::Env {
        var,
        value: value.to_owned(),
        reason,
    };
    let Some(listen_pid) = var(LISTEN_PID) else {
        return Ok(Vec::new());
    };
    match listen_pid.trim().parse::<u32>() {
        Ok(0) | Err(_) => return Err(bad(LISTEN_PID, &listen_pid, "not a process id")),
        Ok(p) if p != pid => return Ok(Vec::new()), // meant for another process
        Ok(_) => {}
    }
    let Some(listen_fds) = var(LISTEN_FDS) else {
        return Ok(Vec::new());
    };
    let count = listen_fds
        .trim()
        .parse::<usize>()
        .map_err(|_| bad(LISTEN_FDS, &listen_fds, "not a count"))?;
    if count > (RawFd::MAX - LISTEN_FDS_START) as usize {
        return Err(bad(LISTEN_FDS, &listen_fds, "too many"));
    }
    match var(LISTEN_FDNAMES) {
        None => Ok(vec![None; count]),
        Some(names) => {
            let names: Vec<Option<String>> = names.split(':').map(|n| Some(n.into())).collect();
            if names.len() != count {
                return Err(bad(
                    LISTEN_FDNAMES,
                    &names.into_iter().flatten().collect::<Vec<_>>().join(":"),
                    "not one name per descriptor",
                ));
            }
            Ok(names)
        }
    }
}

/// Checks that `fd` is a listening stream socket, unix or TCP, and wraps it.
pub fn adopt(fd: OwnedFd, name: Option<String>) -> Result<Inherited, ActivationError> {
    let raw = fd.as_raw_fd();
    let wrong = |reason: String| ActivationError::Fd { fd: raw, reason };
    let stat = rustix::fs::fstat(&fd).map_err(|e| wrong(e.to_string()))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if !kind.is_socket() {
        return Err(wrong(format!("not a socket but a {kind:?}")));
    }
    let socket_type = sockopt::socket_type(&fd).map_err(|e| wrong(e.to_string()))?;
    if socket_type != SocketType::STREAM {
        return Err(wrong(format!(
            "not a stream socket (type {})",
            socket_type.as_raw()
        )));
    }
    if !sockopt::socket_acceptconn(&fd).map_err(|e| wrong(e.to_string()))? {
        return Err(wrong("a socket that is not listening".into()));
    }
    let family = sockopt::socket_domain(&fd).map_err(|e| wrong(e.to_string()))?;
    let listener = if family == AddressFamily::UNIX {
        InheritedListener::Unix(UnixListener::from(fd))
    } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
        InheritedListener::Tcp(TcpListener::from(fd))
    } else {
        return Err(wrong(format!(
            "a socket of address family {}, neither unix nor IP",
            family.as_raw()
        )));
    };
    Ok(Inherited { name, listener })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn descriptors_are_ours_only_when_listen_pid_is_our_pid() {
        let fds = [(LISTEN_PID, "42"), (LISTEN_FDS, "2")];
        assert_eq!(passed(42, env(&fds)).unwrap(), vec![None, None]);
        // Another process's (we inherited its environment): not ours.
        assert!(passed(43, env(&fds)).unwrap().is_empty());
        // No LISTEN_PID, or no LISTEN_FDS: nothing was passed.
        assert!(passed(42, env(&[(LISTEN_FDS, "2")])).unwrap().is_empty());
        assert!(passed(42, env(&[(LISTEN_PID, "42")])).unwrap().is_empty());
        assert!(passed(42, env(&[])).unwrap().is_empty());
        assert!(passed(42, env(&[(LISTEN_PID, "42"), (LISTEN_FDS, "0")]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn names_are_one_per_descriptor() {
        let named = [
            (LISTEN_PID, "7"),
            (LISTEN_FDS, "3"),
            (LISTEN_FDNAMES, "local:tcp:"),
        ];
        assert_eq!(
            passed(7, env(&named)).unwrap(),
            vec![
                Some("local".into()),
                Some("tcp".into()),
                Some(String::new())
            ]
        );
        let short = [
            (LISTEN_PID, "7"),
            (LISTEN_FDS, "3"),
            (LISTEN_FDNAMES, "local:tcp"),
        ];
        assert!(matches!(
            passed(7, env(&short)),
            Err(ActivationError::Env {
                var: LISTEN_FDNAMES,
                ..
            })
        ));
        // Names for another process are not looked at.
        assert!(passed(8, env(&short)).unwrap().is_empty());
    }

    #[test]
    fn values_that_do_not_parse_are_errors() {
        for (pid, fds, var) in [
            ("x", "1", LISTEN_PID),
            ("0", "1", LISTEN_PID),
            ("-5", "1", LISTEN_PID),
            ("7", "one", LISTEN_FDS),
            ("7", "-1", LISTEN_FDS),
            ("7", "4294967296", LISTEN_FDS),
        ] {
            let result = passed(7, env(&[(LISTEN_PID, pid), (LISTEN_FDS, fds)]));
            assert!(
                matches!(&result, Err(ActivationError::Env { var: v, .. }) if *v == var),
                "{pid} {fds}: {result:?}"
            );
        }
        // Surrounding white space is tolerated, as strtol would.
        assert_eq!(
            passed(7, env(&[(LISTEN_PID, "7 "), (LISTEN_FDS, " 1")])).unwrap(),
            vec![None]
        );
    }

    #[test]
    fn listening_unix_and_tcp_sockets_are_adopted() {
        let dir = std::env::temp_dir().join(format!("plugboard-activation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");

        let unix = UnixListener::bind(&path).unwrap();
        let inherited = adopt(unix.into(), Some("local".into())).unwrap();
        assert!(matches!(inherited.listener, InheritedListener::Unix(_)));
        assert_eq!(inherited.name.as_deref(), Some("local"));
        assert_eq!(inherited.addr(), Some(Addr::Unix(path.clone())));

        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let inherited = adopt(tcp.into(), None).unwrap();
        assert!(matches!(inherited.listener, InheritedListener::Tcp(_)));
        assert_eq!(
            inherited.addr(),
            Some(Addr::Tcp(format!("127.0.0.1:{port}")))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn anything_else_is_refused() {
        let fd_error = |r: Result<Inherited, ActivationError>| match r {
            Err(ActivationError::Fd { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        // A file.
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(fd_error(adopt(file.into(), None)).contains("not a socket"));
        // A connected stream socket, not a listener.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(fd_error(adopt(a.into(), None)).contains("not listening"));
        // A datagram socket.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(fd_error(adopt(udp.into(), None)).contains("not a stream socket"));
    }
}
