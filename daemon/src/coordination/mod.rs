//! Several hosts, one set of drop folders: claims leased and fenced in PostgreSQL, and the
//! ledger there too (DESIGN §5, §6).
//!
//! A claim is a row of `bamflow_claims`, leased by the database's clock (no host's clock is
//! trusted) and taken with `SELECT … FOR UPDATE SKIP LOCKED`, the established job-queue
//! pattern: two daemons racing for one file never wait on each other, and one of them gets
//! it. Each claim gets a new epoch from one sequence, so an epoch is never reused, not even for
//! a file dropped again under the same name. Every commit of the conversion
//! ([`bamflow_engine::pipeline::Observer::confirm`]) first renews the lease under its epoch
//! ([`Coordinator::confirm`]); a holder that was frozen or cut off past its lease finds its
//! epoch gone and stops, and its staging folder has been renamed away by the new holder
//! ([`bamflow_engine::dataset::Staging::open_for`]), so none of its late writes can land.
//!
//! Leases are renewed every third of `lease_seconds` by a thread of their own with its own
//! connection, which never waits for conversion work. A database that is down is retried with
//! backoff; the daemon stays up, says so in `/healthz` and `bamflow_coordination_up`, and a
//! conversion whose lease could not be renewed in time is abandoned, never published
//! unconfirmed.
//!
//! The client is the synchronous `postgres` crate (rust-postgres): the daemon has no async
//! runtime of its own, and that crate is the maintained, pure-Rust, protocol-complete client
//! of the ecosystem.

mod schema;
pub mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bamflow_engine::pipeline::chain;
use postgres::{Client, NoTls};
use tracing::{info, warn};

use crate::ledger::{Entry, FileState};
use crate::metrics::Metrics;

/// Why the coordination database could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error("invalid coordination.postgres_url: {0}")]
    Url(String),
    #[error("the coordination database is unreachable (next attempt in {retry_in:?}): {reason}")]
    Unavailable { retry_in: Duration, reason: String },
    #[error("coordination database error while {}", operation.doing())]
    Query {
        operation: Op,
        #[source]
        source: postgres::Error,
    },
    #[error(
        "the coordination database has schema version {found}, newer than this bamflow knows ({known}); upgrade bamflow"
    )]
    SchemaTooNew { found: i32, known: i32 },
}

/// What the daemon asks of the database: the `operation` label of
/// `bamflow_coordination_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Connect,
    Migrate,
    Claim,
    Confirm,
    Renew,
    Release,
    Ledger,
    Status,
}

impl Op {
    pub const ALL: [Self; 8] = [
        Self::Connect,
        Self::Migrate,
        Self::Claim,
        Self::Confirm,
        Self::Renew,
        Self::Release,
        Self::Ledger,
        Self::Status,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Migrate => "migrate",
            Self::Claim => "claim",
            Self::Confirm => "confirm",
            Self::Renew => "renew",
            Self::Release => "release",
            Self::Ledger => "ledger",
            Self::Status => "status",
        }
    }

    fn doing(self) -> &'static str {
        match self {
            Self::Connect => "connecting",
            Self::Migrate => "migrating the schema",
            Self::Claim => "claiming a file",
            Self::Confirm => "confirming a lease",
            Self::Renew => "renewing leases",
            Self::Release => "releasing a claim",
            Self::Ledger => "using the ledger",
            Self::Status => "reading the ledger",
        }
    }
}

/// What the daemon's coordination settings resolve to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub lease: Duration,
}

/// The database connection of one thread or group of threads, reconnected with backoff.
struct Connection {
    client: Option<Client>,
    next_attempt: Instant,
    backoff: Duration,
    last_error: String,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Connection {
    fn new() -> Self {
        Self {
            client: None,
            next_attempt: Instant::now(),
            backoff: FIRST_BACKOFF,
            last_error: String::new(),
        }
    }

    /// The open client, connecting (and migrating the schema) first when there is none.
    fn client(
        &mut self,
        target: &tls::Target,
        migrate: bool,
    ) -> Result<&mut Client, CoordinationError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let now = Instant::now();
            if now < self.next_attempt {
                return Err(CoordinationError::Unavailable {
                    retry_in: self.next_attempt - now,
                    reason: self.last_error.clone(),
                });
            }
            match connect(target, migrate) {
                Ok(client) => {
                    self.backoff = FIRST_BACKOFF;
                    self.client = Some(client);
                }
                Err(error) => {
                    self.last_error = error.to_string();
                    self.next_attempt = now + self.backoff;
                    let retry_in = self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return Err(match error {
                        error @ CoordinationError::SchemaTooNew { .. } => error,
                        error => CoordinationError::Unavailable {
                            retry_in,
                            reason: chain(&error),
                        },
                    });
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| CoordinationError::Unavailable {
                retry_in: Duration::ZERO,
                reason: "no connection".to_owned(),
            })
    }

    /// Drops a connection that failed, so the next use reconnects.
    fn failed(&mut self, error: &postgres::Error) {
        if self.client.as_ref().is_some_and(Client::is_closed) || error.as_db_error().is_none() {
            self.client = None;
            self.last_error = error.to_string();
        }
    }
}

/// Connects; the daemon also brings the schema up to date, `bamflow status` never does (a
/// newer binary's status must not migrate the database under older daemons).
fn connect(target: &tls::Target, migrate: bool) -> Result<Client, CoordinationError> {
    let connected = match &target.tls {
        Some(tls) => target.config.connect(tls.clone()),
        None => target.config.connect(NoTls),
    };
    let mut client = connected.map_err(|source| CoordinationError::Query {
        operation: Op::Connect,
        source,
    })?;
    if migrate {
        schema::migrate(&mut client)?;
    }
    Ok(client)
}

/// A file this process holds: its claim's epoch, and whether the lease is still ours.
#[derive(Debug)]
pub struct Lease {
    path: String,
    epoch: i64,
    /// When the lease was last renewed (by this host's monotonic clock, which only ever
    /// makes the holder give up sooner than the database would take the file away).
    renewed: Mutex<Instant>,
    lost: AtomicBool,
}

impl Lease {
    pub fn epoch(&self) -> u64 {
        self.epoch.unsigned_abs()
    }

    fn renewed_now(&self) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

/// Claims and ledger in PostgreSQL for this process.
pub struct Coordinator {
    target: tls::Target,
    lease: Duration,
    host: String,
    pid: i32,
    /// The connection of the file workers; each use is one short statement or section.
    connection: Mutex<Connection>,
    held: Mutex<HashMap<String, Arc<Lease>>>,
    metrics: Arc<Metrics>,
    /// Whether the last use of the database reached it (to log the transitions once).
    up: AtomicBool,
    /// Whether connecting migrates the schema (the daemon) or not (`bamflow status`).
    migrate: bool,
}

/// What trying to claim a file found.
pub enum Claimed {
    /// The file is ours under a new epoch, until dropped.
    Taken(SharedClaim),
    /// Another process holds it (or is claiming it this instant).
    Held { holder: String },
}

impl Coordinator {
    /// A coordinator for `settings`; connects lazily, so a database that is down at start is
    /// waited for instead of stopping the daemon.
    ///
    /// # Errors
    ///
    /// [`CoordinationError::Url`] when the URL does not parse.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Arc<Self>, CoordinationError> {
        Self::with_migration(settings, metrics, true)
    }

    /// A coordinator that only reads (for `bamflow status`): it never migrates the schema.
    ///
    /// # Errors
    ///
    /// [`CoordinationError::Url`] when the URL does not parse.
    pub fn reader(settings: &Settings) -> Result<Arc<Self>, CoordinationError> {
        let metrics = Metrics::new()
            .map(Arc::new)
            .map_err(|e| CoordinationError::Unavailable {
                retry_in: Duration::ZERO,
                reason: e.to_string(),
            })?;
        Self::with_migration(settings, metrics, false)
    }

    fn with_migration(
        settings: &Settings,
        metrics: Arc<Metrics>,
        migrate: bool,
    ) -> Result<Arc<Self>, CoordinationError> {
        let mut target = tls::parse(&settings.url).map_err(CoordinationError::Url)?;
        let config = &mut target.config;
        // Never wait longer than a lease on the network: a partitioned holder must notice.
        let timeout = (settings.lease / 3).max(Duration::from_secs(1));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        config
            .tcp_user_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(timeout)
            .application_name("bamflow");
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let coordinator = Arc::new(Self {
            target,
            lease: settings.lease,
            host,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            connection: Mutex::new(Connection::new()),
            held: Mutex::default(),
            metrics,
            up: AtomicBool::new(false),
            migrate,
        });
        Ok(coordinator)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Connects now (and migrates the schema), for the startup log; failing is not fatal.
    pub fn check(&self) -> Result<(), CoordinationError> {
        self.run(Op::Connect, |client| {
            client.simple_query("SELECT 1").map(drop)
        })
    }

    /// Runs `f` on the workers' connection, keeping the metrics and health up to date.
    fn run<T>(
        &self,
        operation: Op,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, CoordinationError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        self.run_on(&mut connection, operation, f)
    }

    fn run_on<T>(
        &self,
        connection: &mut Connection,
        operation: Op,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, CoordinationError> {
        let result = match connection.client(&self.target, self.migrate) {
            Ok(client) => f(client).map_err(|source| {
                connection.failed(&source);
                CoordinationError::Query { operation, source }
            }),
            Err(error) => Err(error),
        };
        self.observe(operation, result.as_ref().err());
        result
    }

    fn observe(&self, operation: Op, error: Option<&CoordinationError>) {
        // A statement the server refused still means the database is there; anything else
        // (unreachable, a connection that broke, a schema this build cannot use) does not.
        let up = match error {
            None => true,
            Some(CoordinationError::Query { source, .. }) => source.as_db_error().is_some(),
            Some(_) => false,
        };
        if up != self.up.swap(up, Ordering::Relaxed) {
            if up {
                info!("Coordination database reachable.");
            } else if let Some(error) = error {
                warn!(
                    error = chain(error),
                    "Coordination database unreachable; waiting for it."
                );
            }
        }
        self.metrics.coordination(up);
        if error.is_some() {
            self.metrics.coordination_error(operation.label());
        }
    }

    /// Claims `path` for this process under a new epoch, unless a live lease holds it.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer; the file then waits.
    pub fn claim(self: &Arc<Self>, path: &Path) -> Result<Claimed, CoordinationError> {
        let key = key(path);
        let lease_seconds = self.lease.as_secs_f64();
        let (host, pid) = (&self.host, self.pid);
        let taken = self.run(Op::Claim, |client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO bamflow_claims (path, epoch, host, pid, lease_until) \
                 VALUES ($1, 0, '', 0, '-infinity') ON CONFLICT (path) DO NOTHING",
                &[&key],
            )?;
            let Some(row) = tx.query_opt(
                "SELECT epoch, host, pid, lease_until > now() AS live, \
                        to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                 FROM bamflow_claims WHERE path = $1 FOR UPDATE SKIP LOCKED",
                &[&key],
            )?
            else {
                return Ok(Err("another daemon, claiming it this moment".to_owned()));
            };
            let (old_epoch, old_host, old_pid, live, until): (
                i64,
                String,
                i32,
                bool,
                Option<String>,
            ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            if live {
                return Ok(Err(format!(
                    "{old_host}/{old_pid} (epoch {old_epoch}, lease until {})",
                    until.unwrap_or_default()
                )));
            }
            let epoch: i64 = tx
                .query_one(
                    "UPDATE bamflow_claims SET epoch = nextval('bamflow_epoch'), host = $2, \
                        pid = $3, lease_until = now() + make_interval(secs => $4), \
                        claimed_at = now(), content_hash = NULL \
                     WHERE path = $1 RETURNING epoch",
                    &[&key, host, &pid, &lease_seconds],
                )?
                .get(0);
            tx.commit()?;
            let takeover = (!old_host.is_empty()).then_some((old_host, old_pid, old_epoch));
            Ok(Ok((epoch, takeover)))
        })?;
        let (epoch, takeover) = match taken {
            Ok(taken) => taken,
            Err(holder) => return Ok(Claimed::Held { holder }),
        };
        self.metrics.claim_event("taken");
        if let Some((host, pid, old)) = takeover {
            self.metrics.claim_event("taken_over");
            warn!(path = %path.display(), from_host = %host, from_pid = pid, from_epoch = old, epoch, "Took over a file whose holder's lease expired; resuming from its checkpoint.");
        }
        let lease = Arc::new(Lease {
            path: key.clone(),
            epoch,
            renewed: Mutex::new(Instant::now()),
            lost: AtomicBool::new(false),
        });
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::clone(&lease));
        Ok(Claimed::Taken(SharedClaim {
            coordinator: Arc::clone(self),
            lease,
        }))
    }

    /// Renews `lease` if its epoch still holds the file: the check before every commit.
    fn confirm(&self, lease: &Lease) -> Result<(), String> {
        if lease.lost.load(Ordering::Relaxed) {
            return Err(format!("the claim of epoch {} was lost", lease.epoch));
        }
        let renewed = self.run(Op::Confirm, |client| {
            client.execute(
                RENEW_ONE,
                &[&lease.path, &lease.epoch, &self.lease.as_secs_f64()],
            )
        });
        match renewed {
            Ok(1) => {
                lease.renewed_now();
                Ok(())
            }
            Ok(_) => {
                self.lose(
                    lease,
                    "its lease expired or another daemon took the file over",
                );
                Err(format!(
                    "epoch {} no longer holds the file: its lease expired or another daemon took it over",
                    lease.epoch
                ))
            }
            Err(error) => {
                self.metrics.lease_confirmation_failed();
                Err(format!(
                    "cannot confirm the claim of epoch {}: {}",
                    lease.epoch,
                    chain(&error)
                ))
            }
        }
    }

    fn lose(&self, lease: &Lease, why: &str) {
        if !lease.lost.swap(true, Ordering::Relaxed) {
            self.metrics.claim_event("lost");
            self.metrics.lease_confirmation_failed();
            warn!(path = %lease.path, epoch = lease.epoch, why, "Lost the claim of a file; abandoning its conversion.");
        }
    }

    fn release(&self, lease: &Lease) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease.path);
        // A lost claim's row belongs to its new holder.
        if lease.lost.load(Ordering::Relaxed) {
            return;
        }
        let released = self.run(Op::Release, |client| {
            client.execute(
                "DELETE FROM bamflow_claims WHERE path = $1 AND epoch = $2",
                &[&lease.path, &lease.epoch],
            )
        });
        if let Err(error) = released {
            // The lease then simply expires.
            warn!(path = %lease.path, error = chain(&error), "Cannot release a claim; it expires with its lease.");
        }
    }

    /// Starts the heartbeat thread, which renews every held lease each third of the lease and,
    /// holding none while the database is known down, looks whether it is back.
    ///
    /// # Errors
    ///
    /// The error of spawning the thread.
    pub fn start_heartbeat(self: &Arc<Self>) -> std::io::Result<()> {
        let coordinator = Arc::clone(self);
        std::thread::Builder::new()
            .name("bamflow-lease".into())
            .spawn(move || coordinator.heartbeat())
            .map(drop)
    }

    fn heartbeat(&self) {
        let mut connection = Connection::new();
        let every = self.lease / 3;
        loop {
            std::thread::sleep(every);
            let leases: Vec<Arc<Lease>> = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|lease| !lease.lost.load(Ordering::Relaxed))
                .cloned()
                .collect();
            if leases.is_empty() {
                // An idle daemon has nothing else to ask the database: without this look,
                // `/healthz` and `bamflow_coordination_up` said "down" until work arrived.
                if !self.up.load(Ordering::Relaxed) {
                    let _ = self.run_on(&mut connection, Op::Connect, |client| {
                        client.simple_query("SELECT 1").map(drop)
                    });
                }
                continue;
            }
            let paths: Vec<&str> = leases.iter().map(|l| l.path.as_str()).collect();
            let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
            let renewed = self.run_on(&mut connection, Op::Renew, |client| {
                let rows = client.query(
                    "UPDATE bamflow_claims c SET lease_until = now() + make_interval(secs => $3) \
                     FROM unnest($1::text[], $2::int8[]) AS h(path, epoch) \
                     WHERE c.path = h.path AND c.epoch = h.epoch AND c.lease_until > now() \
                     RETURNING c.epoch",
                    &[&paths, &epochs, &self.lease.as_secs_f64()],
                )?;
                Ok(rows
                    .iter()
                    .map(|row| row.get::<_, i64>(0))
                    .collect::<Vec<_>>())
            });
            match renewed {
                Ok(renewed) => {
                    for lease in &leases {
                        if renewed.contains(&lease.epoch) {
                            lease.renewed_now();
                        } else {
                            self.lose(lease, "its lease could not be renewed");
                        }
                    }
                }
                Err(error) => {
                    warn!(error = chain(&error), "Cannot renew leases.");
                    // Past its lease by our own clock, the database may have given it away.
                    for lease in &leases {
                        let renewed = *lease.renewed.lock().unwrap_or_else(|p| p.into_inner());
                        if renewed.elapsed() >= self.lease {
                            self.lose(lease, "its lease could not be renewed before it expired");
                        }
                    }
                }
            }
        }
    }

    /// Opens the section in which a content hash's duplicate check and the attempt's record
    /// happen atomically across hosts: a transaction holding an advisory lock on the hash.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn section(&self, content_hash: &str) -> Result<Section<'_>, CoordinationError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let begun = self.run_on(&mut connection, Op::Ledger, |client| {
            client.batch_execute("BEGIN")?;
            client
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    &[&content_hash],
                )
                .map(drop)
        });
        if let Err(error) = begun {
            // A transaction begun and then refused would fail every later statement on this
            // shared connection; end it (a broken connection is reopened anyway).
            if let Some(client) = connection.client.as_mut() {
                let _ = client.batch_execute("ROLLBACK");
            }
            return Err(error);
        }
        Ok(Section {
            coordinator: self,
            connection,
        })
    }

    /// Records `entry` outside a section.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn record(&self, entry: &Entry, epoch: Option<u64>) -> Result<(), CoordinationError> {
        self.run(Op::Ledger, |client| {
            insert_entry(client, entry, &self.host, self.pid, epoch)
        })
    }

    /// The latest `n` ledger entries (newest last) with the host that wrote each, and every
    /// claim held now, for `bamflow status`.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn overview(&self, n: usize) -> Result<Overview, CoordinationError> {
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        self.run(Op::Status, |client| {
            let mut entries: Vec<(String, Entry)> = client
                .query(
                    &format!("SELECT host, {ENTRY_COLUMNS} FROM bamflow_ledger ORDER BY id DESC LIMIT $1"),
                    &[&limit],
                )?
                .iter()
                .map(|row| (row.get(0), entry_of(row, 1)))
                .collect();
            entries.reverse();
            let claims = client
                .query(
                    "SELECT path, host, pid, epoch, \
                        to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        lease_until > now() \
                     FROM bamflow_claims WHERE host <> '' ORDER BY claimed_at",
                    &[],
                )?
                .iter()
                .map(|row| ClaimRow {
                    path: row.get(0),
                    host: row.get(1),
                    pid: row.get(2),
                    epoch: row.get(3),
                    lease_until: row.get::<_, Option<String>>(4).unwrap_or_default(),
                    live: row.get(5),
                })
                .collect();
            Ok(Overview { entries, claims })
        })
    }
}

/// What `bamflow status` shows of the shared state.
pub struct Overview {
    pub entries: Vec<(String, Entry)>,
    pub claims: Vec<ClaimRow>,
}

/// One claim as the database holds it.
pub struct ClaimRow {
    pub path: String,
    pub host: String,
    pub pid: i32,
    pub epoch: i64,
    pub lease_until: String,
    pub live: bool,
}

const RENEW_ONE: &str =
    "UPDATE bamflow_claims SET lease_until = now() + make_interval(secs => $3) \
     WHERE path = $1 AND epoch = $2 AND lease_until > now()";

/// A claimed file: released (its row deleted) when dropped.
pub struct SharedClaim {
    coordinator: Arc<Coordinator>,
    lease: Arc<Lease>,
}

impl SharedClaim {
    pub fn epoch(&self) -> u64 {
        self.lease.epoch()
    }

    /// The fence a conversion under this claim asks before each commit.
    pub fn fence(&self) -> Fence {
        Fence {
            coordinator: Arc::clone(&self.coordinator),
            lease: Arc::clone(&self.lease),
        }
    }
}

impl Drop for SharedClaim {
    fn drop(&mut self) {
        self.coordinator.release(&self.lease);
    }
}

/// Confirms a claim's epoch before each commit, and says when the claim is lost.
#[derive(Clone)]
pub struct Fence {
    coordinator: Arc<Coordinator>,
    lease: Arc<Lease>,
}

impl Fence {
    /// Renews the lease under its epoch; an error means this process must not commit.
    ///
    /// # Errors
    ///
    /// Why the claim no longer holds or cannot be confirmed.
    pub fn confirm(&self) -> Result<(), String> {
        self.coordinator.confirm(&self.lease)
    }

    /// Whether the heartbeat found the claim lost: the conversion should stop at once.
    pub fn is_lost(&self) -> bool {
        self.lease.lost.load(Ordering::Relaxed)
    }
}

/// A transaction holding a content hash's advisory lock; committed when dropped.
pub struct Section<'a> {
    coordinator: &'a Coordinator,
    connection: MutexGuard<'a, Connection>,
}

impl Section<'_> {
    fn query<T>(
        &mut self,
        operation: Op,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, CoordinationError> {
        self.coordinator.run_on(&mut self.connection, operation, f)
    }

    /// Every successful conversion of this sampled hash, newest first.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn converted_candidates(&mut self, hash: &str) -> Result<Vec<Entry>, CoordinationError> {
        self.query(Op::Ledger, |client| {
            let rows = client.query(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM bamflow_ledger \
                     WHERE content_hash = $1 AND state = 'success' ORDER BY id DESC"
                ),
                &[&hash],
            )?;
            Ok(rows.iter().map(|row| entry_of(row, 0)).collect())
        })
    }

    /// Another file with this content that a live claim is converting now.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn converting_twin(
        &mut self,
        hash: &str,
        path: &Path,
    ) -> Result<Option<PathBuf>, CoordinationError> {
        let path = key(path);
        self.query(Op::Ledger, |client| {
            let row = client.query_opt(
                "SELECT path FROM bamflow_claims \
                 WHERE content_hash = $1 AND path <> $2 AND lease_until > now() LIMIT 1",
                &[&hash, &path],
            )?;
            Ok(row.map(|row| PathBuf::from(row.get::<_, String>(0))))
        })
    }

    /// Attempts recorded so far for a path.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn attempts(&mut self, path: &Path) -> Result<u32, CoordinationError> {
        let path = key(path);
        self.query(Op::Ledger, |client| {
            let row = client.query_opt(
                "SELECT attempts FROM bamflow_ledger WHERE path = $1 ORDER BY id DESC LIMIT 1",
                &[&path],
            )?;
            Ok(row.map_or(0, |row| row.get::<_, i32>(0).unsigned_abs()))
        })
    }

    /// Marks the claim of `path` under `epoch` as converting this content, for
    /// [`Section::converting_twin`] on other hosts.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn begin_converting(
        &mut self,
        hash: &str,
        path: &Path,
        epoch: u64,
    ) -> Result<(), CoordinationError> {
        let (path, epoch) = (key(path), epoch_param(epoch));
        self.query(Op::Ledger, |client| {
            client
                .execute(
                    "UPDATE bamflow_claims SET content_hash = $1 WHERE path = $2 AND epoch = $3",
                    &[&hash, &path, &epoch],
                )
                .map(drop)
        })
    }

    /// Records `entry` in this section's transaction.
    ///
    /// # Errors
    ///
    /// A [`CoordinationError`] when the database cannot answer.
    pub fn record(&mut self, entry: &Entry, epoch: Option<u64>) -> Result<(), CoordinationError> {
        let (host, pid) = (self.coordinator.host.clone(), self.coordinator.pid);
        self.query(Op::Ledger, |client| {
            insert_entry(client, entry, &host, pid, epoch)
        })
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        // After an error the server has aborted the transaction, and COMMIT rolls it back.
        if let Some(client) = self.connection.client.as_mut() {
            if let Err(error) = client.batch_execute("COMMIT") {
                warn!(%error, "Cannot commit a ledger section.");
                self.connection.failed(&error);
            }
        }
    }
}

/// The key of a path in the database: its text (a non-UTF-8 path is stored lossily).
fn key(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn epoch_param(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

const ENTRY_COLUMNS: &str =
    "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
     watch, path, size, content_hash, sha256, state, attempts, records_read, records_written, \
     output, pid, duplicate_of, error";

fn entry_of(row: &postgres::Row, first: usize) -> Entry {
    let at = |i: usize| first + i;
    let state = match row.get::<_, &str>(at(6)) {
        "success" => FileState::Success,
        "failure" => FileState::Failure,
        "duplicate" => FileState::Duplicate,
        _ => FileState::Converting,
    };
    let unsigned = |value: Option<i64>| value.map(i64::unsigned_abs);
    Entry {
        time: row.get::<_, Option<String>>(at(0)).unwrap_or_default(),
        watch: row.get(at(1)),
        path: PathBuf::from(row.get::<_, String>(at(2))),
        size: row.get::<_, i64>(at(3)).unsigned_abs(),
        content_hash: row.get(at(4)),
        sha256: row.get(at(5)),
        state,
        attempts: row.get::<_, i32>(at(7)).unsigned_abs(),
        records_read: unsigned(row.get(at(8))),
        records_written: unsigned(row.get(at(9))),
        output: row.get::<_, Option<String>>(at(10)).map(PathBuf::from),
        pid: row.get::<_, Option<i32>>(at(11)).map(i32::unsigned_abs),
        duplicate_of: row.get::<_, Option<String>>(at(12)).map(PathBuf::from),
        error: row.get(at(13)),
    }
}

fn insert_entry(
    client: &mut Client,
    entry: &Entry,
    host: &str,
    pid: i32,
    epoch: Option<u64>,
) -> Result<(), postgres::Error> {
    let signed = |value: Option<u64>| value.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let text = |path: &Option<PathBuf>| path.as_deref().map(key);
    let state = match entry.state {
        FileState::Converting => "converting",
        FileState::Success => "success",
        FileState::Failure => "failure",
        FileState::Duplicate => "duplicate",
    };
    client
        .execute(
            "INSERT INTO bamflow_ledger (host, pid, epoch, watch, path, size, content_hash, sha256, \
                state, attempts, records_read, records_written, output, duplicate_of, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &[
                &host,
                &pid,
                &signed(epoch),
                &entry.watch,
                &key(&entry.path),
                &signed(Some(entry.size)),
                &entry.content_hash,
                &entry.sha256,
                &state,
                &i32::try_from(entry.attempts).unwrap_or(i32::MAX),
                &signed(entry.records_read),
                &signed(entry.records_written),
                &text(&entry.output),
                &text(&entry.duplicate_of),
                &entry.error,
            ],
        )
        .map(drop)
}
