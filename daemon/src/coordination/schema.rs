//! The coordination schema, created and migrated by the daemon.
//!
//! Migrations are applied in order in one transaction under an advisory lock, so daemons
//! starting together migrate once; `bamflow_schema` records each version applied. A database
//! migrated by a newer bamflow is refused rather than written with assumptions it breaks.

use postgres::Client;

use super::CoordinationError;

/// Each version's statements; a new version is appended, never edited.
const MIGRATIONS: &[&str] = &[
    // 1: claims leased per path with epochs from one sequence; the ledger.
    "CREATE SEQUENCE bamflow_epoch;
     CREATE TABLE bamflow_claims (
         path text PRIMARY KEY,
         epoch bigint NOT NULL,
         host text NOT NULL,
         pid integer NOT NULL,
         lease_until timestamptz NOT NULL,
         claimed_at timestamptz NOT NULL DEFAULT now(),
         content_hash text
     );
     CREATE INDEX bamflow_claims_content_hash ON bamflow_claims (content_hash)
         WHERE content_hash IS NOT NULL;
     CREATE TABLE bamflow_ledger (
         id bigserial PRIMARY KEY,
         time timestamptz NOT NULL DEFAULT now(),
         host text NOT NULL,
         pid integer,
         epoch bigint,
         watch text NOT NULL,
         path text NOT NULL,
         size bigint NOT NULL,
         content_hash text NOT NULL,
         sha256 text,
         state text NOT NULL CHECK (state IN ('converting', 'success', 'failure', 'duplicate')),
         attempts integer NOT NULL,
         records_read bigint,
         records_written bigint,
         output text,
         duplicate_of text,
         error text
     );
     CREATE INDEX bamflow_ledger_content_hash ON bamflow_ledger (content_hash, id);
     CREATE INDEX bamflow_ledger_path ON bamflow_ledger (path, id);",
];

/// The schema version this build writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// An arbitrary constant: the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x0062_616d_666c_6f77;

/// Brings the database to [`VERSION`].
///
/// # Errors
///
/// [`CoordinationError::SchemaTooNew`] for a database a newer bamflow migrated, or the failing
/// statement.
pub fn migrate(client: &mut Client) -> Result<(), CoordinationError> {
    let query = |source| CoordinationError::Query {
        operation: super::Op::Migrate,
        source,
    };
    let mut tx = client.transaction().map_err(query)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(query)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS bamflow_schema (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(query)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM bamflow_schema", &[])
        .map_err(query)?
        .get(0);
    if found > VERSION {
        return Err(CoordinationError::SchemaTooNew {
            found,
            known: VERSION,
        });
    }
    for (version, statements) in (1..).zip(MIGRATIONS).skip(found.unsigned_abs() as usize) {
        tx.batch_execute(statements).map_err(query)?;
        tx.execute(
            "INSERT INTO bamflow_schema (version) VALUES ($1)",
            &[&version],
        )
        .map_err(query)?;
        tracing::info!(version, "Migrated the coordination schema.");
    }
    tx.commit().map_err(query)
}
