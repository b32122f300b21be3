//! A running daemon, driven as an operator would: started with a config, signalled, killed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bamflow_tests::bamflow_bin;

use crate::support::TestDir;

/// A running `bamflow daemon`, stopped (SIGTERM) on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, config: Option<&Path>) -> Self {
        Self::start_with(dir, config, &[])
    }

    /// Starts a daemon with extra environment; its log goes to a file in `dir`, so a test that
    /// times out can show what the daemon was doing.
    pub fn start_with(dir: &Path, config: Option<&Path>, env: &[(&str, &OsStr)]) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("daemon-{n}.log"));
        let mut command = Command::new(bamflow_bin());
        command
            .arg("daemon")
            .current_dir(dir)
            .env("BAMFLOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        Self {
            child: Some(command.spawn().expect("daemon starts")),
            log,
        }
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until `done` holds; on timeout, fails with the daemon's log.
    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < LIMIT,
                "timed out after {LIMIT:?} waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn terminate_after_signal_since(
        mut self,
        started: Instant,
    ) -> (Option<i32>, Duration, String) {
        let status = self.child.take().expect("running").wait().unwrap();
        (status.code(), started.elapsed(), self.log())
    }

    /// The address `/metrics` is served on, from the daemon's log (configs here use port 0).
    pub fn metrics_address(&self) -> String {
        let mut address = None;
        self.wait_for("the metrics listener", || {
            address = self.log().lines().find_map(|line| {
                let rest = line.split("Serving metrics").nth(1)?;
                let value = rest.split("address=").nth(1)?;
                Some(value.split_whitespace().next()?.to_owned())
            });
            address.is_some()
        });
        address.unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL, as the OOM killer or a power cut would; returns its log.
    pub fn kill_9(mut self) -> String {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.log()
    }

    /// Whether the daemon has exited on its own (e.g. killed by an armed fault point).
    pub fn has_exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().unwrap().is_some()
    }

    /// Waits for a daemon that was already signalled to stop.
    pub fn terminate_after_signal(self) -> (Option<i32>, Duration, String) {
        self.terminate_after_signal_since(Instant::now())
    }

    /// Sends SIGTERM, checks the daemon exits 0, and returns its log.
    pub fn stop(self) -> String {
        let (code, _, log) = self.terminate();
        assert_eq!(code, Some(0), "{log}");
        log
    }

    /// Sends SIGTERM and returns the exit code and how long the exit took.
    ///
    /// Waits for the daemon to have started first: a signal that arrives before its handlers
    /// are installed (e.g. a test that finds its work already done and stops at once) kills
    /// it outright, with no exit code and an empty log.
    pub fn terminate(self) -> (Option<i32>, Duration, String) {
        self.wait_for("the daemon to start", || {
            self.log().contains("Daemon started.")
        });
        let started = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid())
            .status()
            .unwrap();
        assert!(status.success());
        self.terminate_after_signal_since(started)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a test waits for the daemon: generous, because CI runs two tests at once on two
/// cores in a debug build, and because this VM has stalled whole for two minutes (the kernel
/// logged "workqueue lockup ... stuck for 118s" on both CPUs, and the two tests running then
/// failed at 120 s). A passing run never waits this long.
pub const LIMIT: Duration = Duration::from_secs(300);
/// The events test's rescan interval: it must finish well before it.
pub const EVENTS_RESCAN: Duration = Duration::from_secs(3600);
const _: () = assert!(LIMIT.as_secs() < EVENTS_RESCAN.as_secs());

/// A config with fast settling and rescans, for tests; `extra_watch` goes into the `[[watch]]`.
pub fn config(dir: &TestDir, inbox: &Path, extra_watch: &str) -> PathBuf {
    config_with(dir, inbox, "", extra_watch)
}

/// [`config`] with `extra_daemon` keys in `[daemon]` too.
pub fn config_with(dir: &TestDir, inbox: &Path, extra_daemon: &str, extra_watch: &str) -> PathBuf {
    let text = format!(
        "[daemon]\nstate_dir = \"{state}\"\nscan_interval_seconds = 1\nmetrics_listen = \"127.0.0.1:0\"\n{extra_daemon}\n[[watch]]\nname = \"test\"\npath = \"{inbox}\"\nsettle_seconds = 1\noutput = \"{out}/{{watch}}/{{stem}}\"\n{extra_watch}\n",
        state = dir.path("state").display(),
        inbox = inbox.display(),
        out = dir.path("lake").display(),
    );
    let path = dir.path("bamflow.toml");
    std::fs::write(&path, text).unwrap();
    path
}
