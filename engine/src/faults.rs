//! Named fault points, so tests can crash or fail the process at an exact step of a durable
//! write instead of hoping a random `kill -9` lands there.
//!
//! Off unless `BAMFLOW_FAULTS` is set, e.g. `part-renamed=kill@3,part-fsync=eio@1`: the third
//! time the `part-renamed` point is passed the process kills itself with SIGKILL (no destructors,
//! no flushing: what the disk holds is what a crash leaves), and the first part fsync fails
//! with `EIO`; `stall` waits 5 s there. The variable is read once; a point costs one relaxed
//! load when it is unset.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms fault points.
pub const ENV: &str = "BAMFLOW_FAULTS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// SIGKILL this process.
    Kill,
    /// Fail the step with an I/O error (`EIO`).
    Eio,
    /// Wait five seconds, so a test can change what the step is about to see.
    Stall,
}

#[derive(Debug)]
struct Fault {
    point: String,
    action: Action,
    /// Fires on this hit of the point (1 = the first).
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        std::env::var(ENV)
            .map(|spec| parse(&spec))
            .unwrap_or_default()
    })
}

/// Parses `point=action@n,...`; malformed entries are ignored (this is a test hook).
fn parse(spec: &str) -> Vec<Fault> {
    spec.split(',')
        .filter_map(|entry| {
            let (point, rest) = entry.trim().split_once('=')?;
            let (action, nth) = rest.split_once('@').unwrap_or((rest, "1"));
            let action = match action {
                "kill" => Action::Kill,
                "eio" => Action::Eio,
                "stall" => Action::Stall,
                _ => return None,
            };
            Some(Fault {
                point: point.to_owned(),
                action,
                nth: nth.parse().ok()?,
                hits: AtomicU64::new(0),
            })
        })
        .collect()
}

/// Passes the fault point `name`: kills the process or returns an error when armed to.
///
/// # Errors
///
/// Returns an `EIO` error when the point is armed with `eio` and this is its hit.
pub fn point(name: &str) -> io::Result<()> {
    for fault in armed().iter().filter(|f| f.point == name) {
        let hit = fault.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if hit != fault.nth {
            continue;
        }
        match fault.action {
            Action::Kill => {
                tracing::warn!(point = name, "Fault point: killing the process.");
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
                // SIGKILL cannot be caught; this is only reached if it could not be sent.
                std::process::abort();
            }
            Action::Stall => {
                tracing::warn!(point = name, "Fault point: stalling for 5 s.");
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
            Action::Eio => {
                tracing::warn!(point = name, "Fault point: failing with EIO.");
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_actions_and_hits() {
        let faults = parse("part-renamed=kill@3, part-fsync=eio,bad=explode@1,x=kill@y");
        assert_eq!(faults.len(), 2);
        assert_eq!(faults[0].point, "part-renamed");
        assert_eq!((faults[0].action, faults[0].nth), (Action::Kill, 3));
        assert_eq!((faults[1].action, faults[1].nth), (Action::Eio, 1));
    }
}
