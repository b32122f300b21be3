//! systemd integration: readiness, status, reload and watchdog notifications (sd_notify).
//!
//! Debian 12 ships systemd 252, which has no `Type=notify-reload`, so the unit is
//! `Type=notify` and a reload is announced with `RELOADING=1` plus `MONOTONIC_USEC`, then
//! `READY=1` again. Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//!
//! Written against the socket rather than with the `sd-notify` crate (0.4.5, checked
//! 2026-12): it names every state we send, but connects with `UnixDatagram::connect`, so an
//! abstract `$NOTIFY_SOCKET` (`@name`, which systemd hands to services in some containers and
//! which `sd_notify(3)` supports) is taken as a file path; its socket blocks, so a full
//! notification queue would stall the ingest where ours drops the message; and its
//! `watchdog_enabled` ignores `$WATCHDOG_USEC` without `$WATCHDOG_PID`, which systemd does
//! not always set. The protocol itself is one `KEY=value` datagram.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use std::sync::Mutex;

/// Sends state changes to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// Half the watchdog interval, when systemd asked for pings.
    watchdog_every: Option<Duration>,
    last_watchdog: Mutex<Option<Instant>>,
    last_status: Mutex<String>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) when set.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_str()?.to_owned();
            let address = match name.strip_prefix('@') {
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
                }
                None => SocketAddr::from_pathname(&name).ok()?,
            };
            // Never block: a full notification queue must not stall the ingest.
            let socket = UnixDatagram::unbound().ok()?;
            socket.set_nonblocking(true).ok()?;
            Some((socket, address))
        });
        let watchdog_every = watchdog_interval().map(|interval| interval / 2);
        Self {
            socket,
            watchdog_every,
            last_watchdog: Mutex::new(None),
            last_status: Mutex::new(String::new()),
        }
    }

    /// Sends one notification; failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some((socket, address)) = &self.socket else {
            return;
        };
        match socket.send_to_addr(state.as_bytes(), address) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::debug!("Notification queue full; dropped a notification.");
            }
            Err(error) => tracing::warn!(%error, "Cannot notify systemd."),
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// Sends `STATUS=` when it differs from the last one sent.
    pub fn status(&self, status: &str) {
        let mut last = self.last_status.lock().unwrap_or_else(|p| p.into_inner());
        if *last != status {
            status.clone_into(&mut last);
            drop(last);
            self.notify(&format!("STATUS={status}"));
        }
    }

    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=Stopping.");
    }

    /// Pings the watchdog, at most every half interval; call it whenever work progresses.
    pub fn watchdog(&self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        let mut last = self.last_watchdog.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        self.notify("WATCHDOG=1");
    }
}

/// `$WATCHDOG_USEC`, when it is meant for this process (`$WATCHDOG_PID` unset or ours).
fn watchdog_interval() -> Option<Duration> {
    let for_us =
        std::env::var("WATCHDOG_PID").map_or(true, |pid| pid == std::process::id().to_string());
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }
}
