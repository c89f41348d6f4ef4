//! systemd's readiness protocol (`sd_notify`): one datagram to the unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). With `Type=notify`, systemd starts the units ordered after
//! this one (containerd) only once `READY=1` arrives. With `WatchdogSec=`,
//! systemd sets `$WATCHDOG_USEC` and restarts the service when no
//! `WATCHDOG=1` arrives within that time; [`watchdog_interval`] reads it.
//!
//! Written by hand rather than with the `sd-notify` crate: it is one
//! datagram, and the abstract-namespace case needs the same few lines.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The service is up: its sockets are bound and answer.
pub const READY: &str = "READY=1";
/// The service is shutting down.
pub const STOPPING: &str = "STOPPING=1";
/// The service is alive (the watchdog keep-alive).
pub const WATCHDOG: &str = "WATCHDOG=1";

/// How often to send [`WATCHDOG`]: half of `$WATCHDOG_USEC`, when systemd
/// watches this process (`$WATCHDOG_PID` unset or this process) and
/// `$NOTIFY_SOCKET` is set; `None` otherwise.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        std::process::id(),
    )
}

fn watchdog_from(
    usec: Option<&str>,
    pid: Option<&str>,
    notify: bool,
    me: u32,
) -> Option<std::time::Duration> {
    if !notify {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(std::time::Duration::from_micros(usec / 2))
}

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when it is not set (not
/// started by systemd, or not `Type=notify`).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` as one datagram to `socket` (a path or `@abstract`).
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("notifying systemd at {}: {e}", socket.to_string_lossy()),
        )
    })?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notifying systemd: datagram cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn watchdog_interval_is_half_of_what_systemd_asks_for_this_process() {
        use std::time::Duration;
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_from(Some("30000000"), None, true, 7), half);
        assert_eq!(watchdog_from(Some("30000000"), Some("7"), true, 7), half);
        // Another process's watchdog, no socket, nothing asked or garbage.
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), true, 7), None);
        assert_eq!(watchdog_from(Some("30000000"), None, false, 7), None);
        assert_eq!(watchdog_from(None, None, true, 7), None);
        assert_eq!(watchdog_from(Some("0"), None, true, 7), None);
        assert_eq!(watchdog_from(Some("soon"), None, true, 7), None);
    }

    #[test]
    fn a_datagram_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), READY).unwrap();
        assert_eq!(recv(&listener), "READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("airgap-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), STOPPING).unwrap();
        assert_eq!(recv(&listener), "STOPPING=1");

        let err = notify_to(dir.path().join("nobody").as_os_str(), READY).unwrap_err();
        assert!(err.to_string().contains("nobody"), "{err}");
    }
}
