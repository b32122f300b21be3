//! A private PostgreSQL cluster for the coordination tests: `initdb` and `pg_ctl` in a temp
//! folder, listening on a free loopback port, trusted local logins, stopped on drop. The
//! server refuses to run as root, so under root (CI) it runs as `nobody`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// A running cluster with database `bamflow` and superuser `bamflow`.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Server options beyond the port and socket folder (TLS).
    extra: String,
}

/// Where the server's programs are: Debian keeps them out of `PATH`.
fn bin_dir() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .max();
    found.expect("PostgreSQL server programs (apt-get install postgresql; scripts/test.sh does)")
}

fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A cluster that offers TLS with a certificate for 127.0.0.1 issued by a CA of its own,
    /// whose PEM file is [`Postgres::ca`].
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    /// The test CA's certificate (with [`Postgres::start_tls`]).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bamflow-pg")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let bin = bin_dir();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Self {
            dir,
            bin,
            port,
            extra: String::new(),
        };
        if as_root() {
            let nobody = rustix::process::Uid::from_raw(65534);
            std::os::unix::fs::chown(pg.dir.path(), Some(nobody.as_raw()), None).unwrap();
            std::fs::set_permissions(pg.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "bamflow",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        if tls {
            pg.make_certificates();
            pg.extra = format!(
                "-c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                pg.dir.path().display()
            );
        }
        pg.ctl("start");
        pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "bamflow",
                "bamflow",
            ],
        );
        pg
    }

    /// A CA, and a server certificate for 127.0.0.1 it signed, made with openssl.
    fn make_certificates(&self) {
        let dir = self.dir.path();
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bamflow test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let key = dir.join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if as_root() {
            for file in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(dir.join(file), Some(65534), Some(65534)).unwrap();
            }
        }
    }

    /// The URL the daemons get.
    pub fn url(&self) -> String {
        format!("postgresql://bamflow@127.0.0.1:{}/bamflow", self.port)
    }

    /// Stops the server (fast shutdown: open sessions are cut, as in a database restart).
    pub fn stop(&self) {
        self.ctl("stop");
    }

    pub fn start_again(&self) {
        self.ctl("start");
    }

    /// A client, for tests that look at the tables.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50 {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let mut args = vec!["-D", data.to_str().unwrap(), "-w", "-m", "fast"];
        if action == "start" {
            args.extend(["-l", log.to_str().unwrap(), "-o", &options]);
        }
        args.push(action);
        self.run("pg_ctl", &args);
    }

    /// `program` of the server's, run as `nobody` when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if as_root() {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&path);
            command
        } else {
            Command::new(&path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = self.command(program);
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
