//! The Cassandra / ScyllaDB store, through the `scylla` driver.
//!
//! The production target of the load stage: the writer pool hands each group of validated
//! plays to [`CassandraStore::write`], which upserts them into the three query tables and
//! returns only once the cluster has acknowledged every row; the pipeline then writes the
//! file's entry into the `ingest_ledger` table of the same keyspace.
//!
//! How it writes, and why:
//! - One [`Session`] for the whole process; every statement is prepared once at start-up and
//!   marked idempotent (all writes are upserts of fixed values), so the driver routes each one
//!   to a replica of its partition (token-aware) and may retry it safely.
//! - Rows of one partition of one table go together as an UNLOGGED batch of at most
//!   `max_batch_rows`; a batch never spans partitions, which would make one coordinator do
//!   the work of many. Lone rows go as single prepared executes.
//! - At most `max_in_flight` requests are outstanding in the whole process: a semaphore shared
//!   by every writer task, so a slow cluster sees back-pressure instead of a growing queue.
//! - Transient failures (overload, timeouts, unavailable replicas, lost connections) are
//!   retried with capped exponential backoff and jitter until they succeed or shutdown comes;
//!   permanent ones (invalid request, schema mismatch, permissions) fail the call at once so the
//!   pipeline can fail the file with the reason and go on.
//!
//! The parts, in the order a write meets them: `connect.rs` (credentials, TLS, the execution
//! profile and the session), `schema.rs` (the keyspace and table CQL, created when configured and
//! always checked), `statements.rs` (everything prepared at start-up), `write.rs` (a call's plays
//! planned into per-partition requests, the in-flight limit, each request retried until it is
//! acknowledged), `ledger.rs` and `read.rs` (the ledger table; the three questions, the probe and
//! the dumps), `errors.rs` (what each driver error means: retry, credentials, schema, refused).

mod connect;
mod errors;
mod ledger;
mod read;
mod schema;
mod statements;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::session::Session;
use tokio::sync::Semaphore;

pub use schema::{keyspace_cql, schema_script, tables_cql};
use statements::Statements;

use crate::config::CassandraSettings;
use crate::retry::Backoff;
use crate::store::{StoreError, WriteHealth};

/// How long ledger reads and writes keep retrying a transient failure before the pipeline is
/// told the store is unavailable (it then leaves the file for a later attempt). Long enough to
/// ride out a node restart, short enough that a finalizer does not hang on a dead cluster.
const LEDGER_PATIENCE: Duration = Duration::from_secs(30);
/// The same for the analysts' queries: someone is waiting at a terminal.
const QUERY_PATIENCE: Duration = Duration::from_secs(3);

/// A session on a Cassandra or ScyllaDB cluster.
pub struct CassandraStore {
    /// The settings, with the password blanked (nothing here is ever printed with it).
    settings: CassandraSettings,
    session: Session,
    statements: Statements,
    /// Requests outstanding in the whole process, shared by every writer task.
    permits: Arc<Semaphore>,
    health: WriteHealth,
}

impl CassandraStore {
    /// Connects, creates or checks the schema, and prepares every statement. An unreachable
    /// cluster is [`StoreError::Unavailable`] (the daemon keeps trying); wrong credentials,
    /// a schema that differs and bad settings are permanent.
    pub async fn open(settings: &CassandraSettings) -> Result<CassandraStore, StoreError> {
        if !schema::is_plain_identifier(&settings.keyspace) {
            return Err(StoreError::Rejected(format!(
                "cassandra.keyspace is {:?}; expected a letter followed by letters, digits or \
                 underscores (48 at most)",
                settings.keyspace
            )));
        }
        let session = connect::connect(settings).await?;

        let mut shown = settings.clone();
        shown.password = String::new();
        let store_settings = shown;
        // Connected, but a node may still shed load or drop a connection: those steps are
        // idempotent, so they are retried here rather than failing a one-shot command.
        let started = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(settings.retry_initial_ms),
            Duration::from_millis(settings.retry_max_ms),
        );
        let statements = loop {
            match set_up(&session, settings).await {
                Ok(statements) => break statements,
                Err(e) if e.is_transient() && started.elapsed() < LEDGER_PATIENCE => {
                    let delay = backoff.next_delay();
                    tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "Retrying the schema set-up");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(CassandraStore {
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            settings: store_settings,
            session,
            statements,
            health: WriteHealth::default(),
        })
    }

    /// Whether writes succeed.
    pub fn health(&self) -> &WriteHealth {
        &self.health
    }

    pub fn describe(&self) -> String {
        format!(
            "cassandra {}/{}",
            self.settings.nodes.join(","),
            self.settings.keyspace
        )
    }
}

/// Creates (when configured) and checks the schema, then prepares every statement.
async fn set_up(session: &Session, settings: &CassandraSettings) -> Result<Statements, StoreError> {
    if settings.create_schema {
        schema::create_schema(session, settings).await?;
        schema::add_missing_columns(session, &settings.keyspace).await?;
    }
    schema::check_schema(session, &settings.keyspace).await?;
    statements::prepare_all(session, &settings.keyspace).await
}
