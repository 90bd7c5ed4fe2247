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

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, PagerExecutionError, PrepareError, RequestAttemptError,
};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    LEDGER_TABLE, ListenerAnswer, SessionAnswer, StoreError, TABLES, UserAnswer, WriteHealth,
    WriteStats, dump_line,
};
use crate::config::{CassandraSettings, Compression, ReplicationStrategy, TlsSettings};
use crate::extract::{ExtractCounts, SongPlay};
use crate::ledger::{LedgerEntry, Status};
use crate::retry::Backoff;

/// A CQL string literal: quotes doubled, so a datacenter name cannot end the literal.
fn cql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// True for names CQL accepts unquoted (and sparkify writes unquoted): the keyspace is
/// spliced into every statement, so anything else is refused before it reaches the cluster.
fn is_plain_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// The keyspace statement for the configured replication.
pub fn keyspace_cql(s: &CassandraSettings) -> String {
    let replication = match s.replication_strategy {
        ReplicationStrategy::SimpleStrategy => format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            s.replication_factor
        ),
        ReplicationStrategy::NetworkTopologyStrategy => {
            let dcs: Vec<String> = s
                .datacenters
                .iter()
                .map(|(dc, rf)| format!("{}: {rf}", cql_string(dc)))
                .collect();
            format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
        }
    };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {replication}",
        s.keyspace
    )
}

/// One column a table must have: name, CQL type, and its place in the primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ColumnSpec {
    name: &'static str,
    ty: &'static str,
    key: Key,
}

/// A column's role, as `system_schema.columns` names it (`kind`, `position`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Partition(i32),
    Clustering(i32),
    Regular,
}

impl Key {
    fn describe(self) -> String {
        match self {
            Key::Partition(i) => format!("partition key column {}", i + 1),
            Key::Clustering(i) => format!("clustering column {}", i + 1),
            Key::Regular => "a regular column".to_string(),
        }
    }
}

/// The four tables sparkify writes, column by column. [`tables_cql`] and the start-up check
/// both come from this, so they cannot disagree.
const SCHEMA: [(&str, &[ColumnSpec]); 4] = {
    use Key::*;
    const fn c(name: &'static str, ty: &'static str, key: Key) -> ColumnSpec {
        ColumnSpec { name, ty, key }
    }
    [
        (
            "song_plays_by_session",
            &[
                c("sessionid", "int", Partition(0)),
                c("iteminsession", "int", Clustering(0)),
                c("artist", "text", Regular),
                c("song", "text", Regular),
                c("length", "double", Regular),
            ],
        ),
        (
            "song_plays_by_user_session",
            &[
                c("userid", "int", Partition(0)),
                c("sessionid", "int", Partition(1)),
                c("iteminsession", "int", Clustering(0)),
                c("artist", "text", Regular),
                c("song", "text", Regular),
                c("firstname", "text", Regular),
                c("lastname", "text", Regular),
            ],
        ),
        (
            "listeners_by_song",
            &[
                c("song", "text", Partition(0)),
                c("userid", "int", Clustering(0)),
                c("firstname", "text", Regular),
                c("lastname", "text", Regular),
            ],
        ),
        (
            LEDGER_TABLE,
            &[
                c("content_hash", "text", Partition(0)),
                c("path", "text", Regular),
                c("size", "bigint", Regular),
                c("rows_read", "bigint", Regular),
                c("song_plays", "bigint", Regular),
                c("skipped", "bigint", Regular),
                c("rejected", "bigint", Regular),
                c("repaired", "bigint", Regular),
                c("status", "text", Regular),
                c("reason", "text", Regular),
                c("recorded_at_ms", "bigint", Regular),
            ],
        ),
    ]
};

fn primary_key(columns: &[ColumnSpec]) -> String {
    let of = |want: fn(Key) -> bool| -> Vec<&str> {
        columns
            .iter()
            .filter(|c| want(c.key))
            .map(|c| c.name)
            .collect()
    };
    let partition = of(|k| matches!(k, Key::Partition(_)));
    let clustering = of(|k| matches!(k, Key::Clustering(_)));
    let partition = if partition.len() == 1 {
        partition[0].to_string()
    } else {
        format!("({})", partition.join(", "))
    };
    if clustering.is_empty() {
        partition
    } else {
        format!("{partition}, {}", clustering.join(", "))
    }
}

/// The table statements, in the keyspace `ks`.
pub fn tables_cql(ks: &str) -> Vec<String> {
    SCHEMA
        .iter()
        .map(|(table, columns)| {
            let mut out = format!("CREATE TABLE IF NOT EXISTS {ks}.{table} (\n");
            for c in columns.iter() {
                out.push_str(&format!("  {} {},\n", c.name, c.ty));
            }
            out.push_str(&format!("  PRIMARY KEY ({}))", primary_key(columns)));
            out
        })
        .collect()
}

/// Every statement `create_schema` runs, as a CQL script (`sparkify schema`).
pub fn schema_script(s: &CassandraSettings) -> String {
    let mut out = format!("{};\n", keyspace_cql(s));
    for t in tables_cql(&s.keyspace) {
        out.push('\n');
        out.push_str(&t);
        out.push_str(";\n");
    }
    out
}

/// One column as `system_schema.columns` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FoundColumn {
    kind: String,
    position: i32,
    ty: String,
}

/// Compares what the cluster has with [`SCHEMA`]; `None` when everything sparkify needs is
/// there. Extra regular columns are fine (sparkify never reads or writes them); extra key
/// columns are not, since every write must name the whole primary key.
fn schema_differences(
    ks: &str,
    found: &BTreeMap<String, BTreeMap<String, FoundColumn>>,
) -> Option<String> {
    let mut problems = Vec::new();
    for (table, columns) in SCHEMA.iter() {
        let Some(have) = found.get(*table) else {
            problems.push(format!("table {ks}.{table} does not exist"));
            continue;
        };
        for want in columns.iter() {
            let Some(got) = have.get(want.name) else {
                problems.push(format!(
                    "table {ks}.{table} has no column {} ({} {})",
                    want.name,
                    want.ty,
                    want.key.describe()
                ));
                continue;
            };
            let same_type = got.ty.eq_ignore_ascii_case(want.ty)
                || (want.ty == "text" && got.ty.eq_ignore_ascii_case("varchar"));
            if !same_type {
                problems.push(format!(
                    "column {ks}.{table}.{} is {}, expected {}",
                    want.name, got.ty, want.ty
                ));
            }
            let got_key = match got.kind.as_str() {
                "partition_key" => Key::Partition(got.position),
                "clustering" => Key::Clustering(got.position),
                _ => Key::Regular,
            };
            if got_key != want.key {
                problems.push(format!(
                    "column {ks}.{table}.{} is {}, expected {}",
                    want.name,
                    got_key.describe(),
                    want.key.describe()
                ));
            }
        }
        for (name, got) in have {
            let known = columns.iter().any(|c| c.name == name);
            if !known && matches!(got.kind.as_str(), "partition_key" | "clustering") {
                problems.push(format!(
                    "table {ks}.{table} has an extra {} column {name}",
                    got.kind.replace('_', " ")
                ));
            }
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "{}. Create the tables with the CQL that `sparkify schema` prints (or set \
             cassandra.create_schema = true on an empty keyspace)",
            problems.join("; ")
        ))
    }
}

/// What a failed request means for whoever sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Goes away by itself: retry. The label is the `cause` of `sparkify_store_retries_total`.
    Transient(&'static str),
    /// The cluster refused the credentials, or wants some and got none.
    Auth,
    /// A table or column is missing or of another type.
    Schema,
    /// The request itself is wrong; sending it again cannot help.
    Permanent,
}

/// Messages Cassandra and ScyllaDB give for requests that name what is not there.
fn mentions_missing_schema(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unconfigured table",
        "undefined column",
        "undefined name",
        "unknown identifier",
        "does not exist",
        "keyspace",
        "no column",
        "type error",
    ]
    .iter()
    .any(|p| m.contains(p))
}

fn classify_db(error: &DbError, message: &str) -> Failure {
    match error {
        DbError::Overloaded | DbError::RateLimitReached { .. } => Failure::Transient("overloaded"),
        DbError::WriteTimeout { .. } => Failure::Transient("write_timeout"),
        DbError::ReadTimeout { .. } => Failure::Transient("read_timeout"),
        DbError::Unavailable { .. } | DbError::IsBootstrapping => Failure::Transient("unavailable"),
        // A replica failed the write (disk, a node restarting): losing the rows would be worse
        // than trying again, and an operator sees the retries in the metrics.
        DbError::WriteFailure { .. }
        | DbError::ReadFailure { .. }
        | DbError::ServerError
        | DbError::TruncateError => Failure::Transient("server_error"),
        // The driver re-prepares by itself; seen only when a node restarted mid-request.
        DbError::Unprepared { .. } => Failure::Transient("unprepared"),
        DbError::AuthenticationError => Failure::Auth,
        DbError::Invalid | DbError::ConfigError if mentions_missing_schema(message) => {
            Failure::Schema
        }
        _ => Failure::Permanent,
    }
}

fn classify_attempt(error: &RequestAttemptError) -> Failure {
    match error {
        RequestAttemptError::DbError(e, message) => classify_db(e, message),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => Failure::Transient("connection"),
        _ => Failure::Permanent,
    }
}

fn classify_connection(error: &ConnectionError) -> Failure {
    match error {
        ConnectionError::ConnectionSetupRequestError(setup) => match &setup.error {
            ConnectionSetupRequestErrorKind::DbError(DbError::AuthenticationError, _)
            | ConnectionSetupRequestErrorKind::MissingAuthentication
            | ConnectionSetupRequestErrorKind::StartAuthSessionError(_)
            | ConnectionSetupRequestErrorKind::AuthChallengeEvaluationError(_)
            | ConnectionSetupRequestErrorKind::AuthFinishError(_) => Failure::Auth,
            ConnectionSetupRequestErrorKind::DbError(e, message) => match classify_db(e, message) {
                Failure::Permanent => Failure::Transient("connection"),
                other => other,
            },
            _ => Failure::Transient("connection"),
        },
        _ => Failure::Transient("connection"),
    }
}

fn classify_pool(error: &ConnectionPoolError) -> Failure {
    match error {
        ConnectionPoolError::Broken {
            last_connection_error,
        } => classify_connection(last_connection_error),
        _ => Failure::Transient("connection"),
    }
}

fn classify_metadata(error: &MetadataError) -> Failure {
    match error {
        MetadataError::ConnectionPoolError(e) => classify_pool(e),
        MetadataError::FetchError(_) => Failure::Transient("metadata"),
        _ => Failure::Permanent,
    }
}

fn classify_prepare(error: &PrepareError) -> Failure {
    match error {
        PrepareError::ConnectionPoolError(e) => classify_pool(e),
        PrepareError::AllAttemptsFailed { first_attempt } => classify_attempt(first_attempt),
        _ => Failure::Permanent,
    }
}

fn classify(error: &ExecutionError) -> Failure {
    match error {
        ExecutionError::LastAttemptError(e) => classify_attempt(e),
        ExecutionError::ConnectionPoolError(e) => classify_pool(e),
        ExecutionError::RequestTimeout(_) => Failure::Transient("request_timeout"),
        // Every node is down or filtered out right now.
        ExecutionError::EmptyPlan => Failure::Transient("unavailable"),
        ExecutionError::PrepareError(e) => classify_prepare(e),
        ExecutionError::SchemaAgreementError(_) => Failure::Transient("schema_agreement"),
        ExecutionError::MetadataError(e) => classify_metadata(e),
        ExecutionError::UseKeyspaceError(_) => Failure::Transient("connection"),
        _ => Failure::Permanent,
    }
}

fn classify_pager(error: &PagerExecutionError) -> Failure {
    match error {
        PagerExecutionError::PrepareError(e) => classify_prepare(e),
        PagerExecutionError::NextPageError(_) => Failure::Transient("connection"),
        PagerExecutionError::SchemaAgreementError(_) => Failure::Transient("schema_agreement"),
        PagerExecutionError::MetadataError(e) => classify_metadata(e),
        _ => Failure::Permanent,
    }
}

fn classify_new_session(error: &NewSessionError) -> Failure {
    match error {
        // DNS that does not answer yet (a cluster service still being created) is an outage.
        NewSessionError::FailedToResolveAnyHostname(_) => Failure::Transient("connection"),
        NewSessionError::MetadataError(e) => classify_metadata(e),
        NewSessionError::UseKeyspaceError(_) => Failure::Transient("connection"),
        _ => Failure::Permanent,
    }
}

/// Turns a classified failure into what the rest of sparkify acts on. The driver's messages
/// never contain the password, and neither does anything added here.
fn store_error(failure: Failure, context: &str, detail: &dyn std::fmt::Display) -> StoreError {
    match failure {
        Failure::Transient(_) => StoreError::Unavailable(format!("{context}: {detail}")),
        Failure::Auth => StoreError::Auth(format!(
            "{context}: the cluster did not accept the credentials (check cassandra.username \
             and cassandra.password or cassandra.password_file): {detail}"
        )),
        Failure::Schema => StoreError::Schema(format!("{context}: {detail}")),
        Failure::Permanent => StoreError::Rejected(format!("{context}: {detail}")),
    }
}

/// Reads the password from `password_file` (first line) or `password`.
fn password(s: &CassandraSettings) -> Result<String, StoreError> {
    if s.password_file.is_empty() {
        return Ok(s.password.clone());
    }
    let text = std::fs::read_to_string(&s.password_file).map_err(|e| {
        StoreError::Rejected(format!(
            "cannot read cassandra.password_file {}: {e}",
            s.password_file
        ))
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// The rustls configuration for `[cassandra.tls]`, or `None` when TLS is off. The driver
/// checks each node's certificate against the node's IP address, so node certificates need
/// their addresses as subject alternative names.
fn tls_config(t: &TlsSettings) -> Result<Option<Arc<rustls::ClientConfig>>, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    if !t.enabled {
        return Ok(None);
    }
    let bad = |key: &str, path: &str, e: &dyn std::fmt::Display| {
        StoreError::Rejected(format!("cannot use cassandra.tls.{key} {path}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    if t.ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A malformed system certificate should not stop the others from being used.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(StoreError::Rejected(
                "cassandra.tls.ca_file is empty and no system CA certificates were found; \
                 set it to the PEM file of the CA that signed the nodes' certificates"
                    .into(),
            ));
        }
    } else {
        let certs = CertificateDer::pem_file_iter(&t.ca_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad("ca_file", &t.ca_file, &e))?;
        if certs.is_empty() {
            return Err(bad("ca_file", &t.ca_file, &"no certificate in the file"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad("ca_file", &t.ca_file, &e))?;
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (t.cert_file.is_empty(), t.key_file.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let certs = CertificateDer::pem_file_iter(&t.cert_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("cert_file", &t.cert_file, &e))?;
            let key = PrivateKeyDer::from_pem_file(&t.key_file)
                .map_err(|e| bad("key_file", &t.key_file, &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("cert_file", &t.cert_file, &e))?
        }
        _ => {
            return Err(StoreError::Rejected(
                "cassandra.tls.cert_file and cassandra.tls.key_file go together: set both for \
                 mutual TLS, or neither"
                    .into(),
            ));
        }
    };
    Ok(Some(Arc::new(config)))
}

/// The three query tables, in [`TABLES`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Session = 0,
    UserSession = 1,
    Listeners = 2,
}

/// One request of a write: rows (indexes into the call's plays) of one partition of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    table: Table,
    rows: Vec<u32>,
}

/// Groups the rows of one table by partition, keeping for each primary key only the last play
/// that has it (so the result is what writing the plays one by one in order would leave; it
/// also matters inside a batch, where two writes of one key share a timestamp and Cassandra
/// would keep the larger value, not the later one). Partitions come out in key order and rows
/// in clustering order, so a call's requests are the same from run to run.
fn partitions<'a, P: Ord + Hash + Eq>(
    plays: &'a [SongPlay],
    key: impl Fn(&'a SongPlay) -> (P, i32),
) -> Vec<Vec<u32>> {
    let mut latest: HashMap<(P, i32), u32> = HashMap::with_capacity(plays.len());
    for (i, play) in plays.iter().enumerate() {
        latest.insert(key(play), i as u32);
    }
    let mut by_partition: BTreeMap<P, Vec<(i32, u32)>> = BTreeMap::new();
    for ((partition, clustering), i) in latest {
        by_partition
            .entry(partition)
            .or_default()
            .push((clustering, i));
    }
    by_partition
        .into_values()
        .map(|mut rows| {
            rows.sort_unstable();
            rows.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

/// Every request one write call sends: per table, per partition, rows in runs of at most
/// `max_batch_rows`.
fn plan(plays: &[SongPlay], max_batch_rows: usize) -> Vec<Request> {
    let max = max_batch_rows.max(1);
    let tables = [
        (
            Table::Session,
            partitions(plays, |p| (p.session_id, p.item_in_session)),
        ),
        (
            Table::UserSession,
            partitions(plays, |p| ((p.user_id, p.session_id), p.item_in_session)),
        ),
        (
            Table::Listeners,
            partitions(plays, |p| (p.song.as_str(), p.user_id)),
        ),
    ];
    let mut requests = Vec::new();
    for (table, parts) in tables {
        for rows in parts {
            for run in rows.chunks(max) {
                requests.push(Request {
                    table,
                    rows: run.to_vec(),
                });
            }
        }
    }
    requests
}

/// Statements prepared at start-up.
struct Statements {
    insert: [PreparedStatement; 3],
    ledger_put: PreparedStatement,
    ledger_get: PreparedStatement,
    ledger_all: PreparedStatement,
    song_in_session: PreparedStatement,
    user_session: PreparedStatement,
    listeners: PreparedStatement,
    dump: [PreparedStatement; 3],
}

const LEDGER_COLUMNS: &str = "content_hash, path, size, rows_read, song_plays, skipped, \
    rejected, repaired, status, reason, recorded_at_ms";

type LedgerRow = (
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    i64,
);

fn ledger_from_row(r: LedgerRow) -> LedgerEntry {
    LedgerEntry {
        content_hash: r.0,
        path: r.1,
        size: r.2 as u64,
        counts: ExtractCounts {
            rows: r.3 as u64,
            plays: r.4 as u64,
            skipped: r.5 as u64,
            rejected: r.6 as u64,
        },
        repaired: r.7 as u64,
        status: Status::parse(&r.8),
        reason: r.9,
        recorded_at_ms: r.10,
    }
}

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
        if !is_plain_identifier(&settings.keyspace) {
            return Err(StoreError::Rejected(format!(
                "cassandra.keyspace is {:?}; expected a letter followed by letters, digits or \
                 underscores (48 at most)",
                settings.keyspace
            )));
        }
        let consistency = crate::config::parse_consistency(&settings.consistency)
            .map_err(|problem| StoreError::Rejected(format!("cassandra.consistency {problem}")))?;
        let password = password(settings)?;
        let tls = tls_config(&settings.tls)?;

        let mut policy = DefaultPolicy::builder().token_aware(true);
        if !settings.local_dc.is_empty() {
            // Remote datacenters only as a last resort: LOCAL_QUORUM cannot be met there.
            policy = policy
                .prefer_datacenter(settings.local_dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .request_timeout(Some(Duration::from_millis(settings.request_timeout_ms)))
            .load_balancing_policy(policy.build())
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&settings.nodes)
            .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .default_execution_profile_handle(profile.into_handle())
            .compression(match settings.compression {
                Compression::None => None,
                Compression::Lz4 => Some(scylla::client::Compression::Lz4),
                Compression::Snappy => Some(scylla::client::Compression::Snappy),
            })
            .fetch_schema_metadata(settings.fetch_schema_metadata)
            .keyspaces_to_fetch([settings.keyspace.clone()])
            .refresh_metadata_on_auto_schema_agreement(settings.refresh_metadata_after_ddl);
        if !settings.username.is_empty() {
            builder = builder.user(settings.username.clone(), password);
        }
        if let Some(tls) = tls {
            builder = builder.tls_context(Some(tls));
        }

        let nodes = settings.nodes.join(",");
        // A node that accepts connections but never answers would otherwise hold start-up
        // forever; the daemon retries an unavailable store with backoff.
        let patience = Duration::from_millis(
            settings
                .connect_timeout_ms
                .saturating_add(settings.request_timeout_ms),
        );
        let session = match tokio::time::timeout(patience, builder.build()).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                return Err(store_error(
                    classify_new_session(&e),
                    &format!("cannot connect to {nodes}"),
                    &e,
                ));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to {nodes}: no answer within {} ms",
                    patience.as_millis()
                )));
            }
        };

        if !settings.local_dc.is_empty() {
            let state = session.get_cluster_state();
            let mut dcs: Vec<String> = state
                .get_nodes_info()
                .iter()
                .filter_map(|n| n.datacenter.clone())
                .collect();
            dcs.sort();
            dcs.dedup();
            // With no datacenter known, every request would meet an empty query plan (remote
            // nodes are not used, see above): say so now rather than retry forever.
            if dcs.is_empty() {
                return Err(StoreError::Rejected(format!(
                    "cassandra.local_dc is {:?}, but the cluster reports no datacenters; \
                     leave it empty for this cluster",
                    settings.local_dc
                )));
            } else if !dcs.iter().any(|dc| dc == &settings.local_dc) {
                return Err(StoreError::Rejected(format!(
                    "cassandra.local_dc is {:?}, which is not a datacenter of this cluster \
                     (it has: {})",
                    settings.local_dc,
                    dcs.join(", ")
                )));
            }
        }

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

    /// Upserts every play into the three tables; returns once every request is acknowledged.
    /// Transient failures are retried until they succeed; once `cancel` has fired, the first
    /// failure ends the call with [`StoreError::Abandoned`] (requests that do not fail still
    /// finish, so a healthy cluster lets shutdown complete the work in hand).
    pub async fn write(
        &self,
        plays: Arc<Vec<SongPlay>>,
        cancel: &CancellationToken,
    ) -> Result<WriteStats, StoreError> {
        let requests = plan(&plays, self.settings.max_batch_rows);
        let mut rows = [0u64; 3];
        for r in &requests {
            rows[r.table as usize] += r.rows.len() as u64;
        }
        let tally = Tally::default();
        let plays: &[SongPlay] = &plays;
        // Beyond this many, more futures would only wait for a permit.
        let limit = self.settings.max_in_flight.max(1);
        let mut pending = requests.iter();
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            while running.len() < limit {
                let Some(request) = pending.next() else { break };
                running.push(self.send_until_acknowledged(plays, request, cancel, &tally));
            }
            match running.next().await {
                Some(result) => result?,
                None => break,
            }
        }
        Ok(WriteStats {
            rows,
            requests: tally.requests.load(Ordering::Relaxed),
            retries: tally.retries.load(Ordering::Relaxed),
        })
    }

    /// Sends one request until the cluster acknowledges it (see [`CassandraStore::write`]).
    async fn send_until_acknowledged(
        &self,
        plays: &[SongPlay],
        request: &Request,
        cancel: &CancellationToken,
        tally: &Tally,
    ) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.retry_initial_ms),
            Duration::from_millis(self.settings.retry_max_ms),
        );
        loop {
            self.health.check()?;
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let _in_flight = InFlight::start();
                tally.requests.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sparkify_store_requests_total").increment(1);
                self.send(plays, request).await
            };
            let error = match result {
                Ok(()) => {
                    self.health.succeeded();
                    return Ok(());
                }
                Err(e) => e,
            };
            let table = TABLES[request.table as usize];
            let cause = match classify(&error) {
                Failure::Transient(cause) => cause,
                failure => {
                    return Err(store_error(failure, &format!("writing to {table}"), &error));
                }
            };
            self.health.failed(&store_error(
                Failure::Transient(cause),
                &format!("writing to {table}"),
                &error,
            ))?;
            if cancel.is_cancelled() {
                return Err(StoreError::Abandoned);
            }
            tally.retries.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("sparkify_store_retries_total", "cause" => cause).increment(1);
            let delay = backoff.next_delay();
            if !tally.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(cause, error = %error, retry_in_ms = delay.as_millis() as u64, "Store request failed; retrying with backoff");
            } else {
                tracing::debug!(cause, error = %error, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "Retrying a store request");
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(StoreError::Abandoned),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt at one request.
    async fn send(&self, plays: &[SongPlay], request: &Request) -> Result<(), ExecutionError> {
        let statement = &self.statements.insert[request.table as usize];
        let rows = request.rows.iter().map(|&i| &plays[i as usize]);
        match request.table {
            Table::Session => {
                self.send_rows(statement, rows.map(SongPlay::session_row).collect())
                    .await
            }
            Table::UserSession => {
                self.send_rows(statement, rows.map(SongPlay::user_session_row).collect())
                    .await
            }
            Table::Listeners => {
                self.send_rows(statement, rows.map(SongPlay::listener_row).collect())
                    .await
            }
        }
    }

    async fn send_rows<R: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        rows: Vec<R>,
    ) -> Result<(), ExecutionError> {
        if let [row] = rows.as_slice() {
            return self
                .session
                .execute_unpaged(statement, row)
                .await
                .map(|_| ());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in 0..rows.len() {
            batch.append_statement(statement.clone());
        }
        batch.set_is_idempotent(true);
        self.session.batch(&batch, rows).await.map(|_| ())
    }

    /// Runs `op` again after transient failures, for up to `patience`.
    async fn patiently<T, F, Fut>(
        &self,
        what: &str,
        patience: Duration,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, (Failure, String)>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.retry_initial_ms),
            Duration::from_millis(self.settings.retry_max_ms),
        );
        loop {
            metrics::counter!("sparkify_store_requests_total").increment(1);
            let (failure, detail) = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            match failure {
                Failure::Transient(cause) if started.elapsed() + delay < patience => {
                    metrics::counter!("sparkify_store_retries_total", "cause" => cause)
                        .increment(1);
                    tracing::debug!(cause, error = %detail, what, "Retrying a store request");
                    tokio::time::sleep(delay).await;
                }
                failure => return Err(store_error(failure, what, &detail)),
            }
        }
    }

    /// Executes a prepared read and collects every row of every page.
    async fn read_all<R>(
        &self,
        what: &str,
        patience: Duration,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.patiently(what, patience, || {
            let values = values.clone();
            async move {
                let pager = self
                    .session
                    .execute_iter(statement.clone(), values)
                    .await
                    .map_err(|e| (classify_pager(&e), e.to_string()))?;
                pager
                    .rows_stream::<R>()
                    .map_err(|e| (Failure::Schema, e.to_string()))?
                    .try_collect::<Vec<R>>()
                    .await
                    .map_err(|e| (Failure::Transient("connection"), e.to_string()))
            }
        })
        .await
    }

    pub async fn ledger_get(&self, hash: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let rows: Vec<LedgerRow> = self
            .read_all(
                "reading the ledger",
                LEDGER_PATIENCE,
                &self.statements.ledger_get,
                (hash,),
            )
            .await?;
        Ok(rows.into_iter().next().map(ledger_from_row))
    }

    pub async fn ledger_put(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let e = entry;
        let values = (
            e.content_hash.as_str(),
            e.path.as_str(),
            e.size as i64,
            e.counts.rows as i64,
            e.counts.plays as i64,
            e.counts.skipped as i64,
            e.counts.rejected as i64,
            e.repaired as i64,
            e.status.as_str(),
            e.reason.as_str(),
            e.recorded_at_ms,
        );
        self.patiently("writing the ledger", LEDGER_PATIENCE, || async {
            self.session
                .execute_unpaged(&self.statements.ledger_put, values)
                .await
                .map(|_| ())
                .map_err(|e| (classify(&e), e.to_string()))
        })
        .await
    }

    /// Every entry, oldest first. A full scan, which is fine for a table of one row per file.
    pub async fn ledger_all(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows: Vec<LedgerRow> = self
            .read_all(
                "reading the ledger",
                LEDGER_PATIENCE,
                &self.statements.ledger_all,
                (),
            )
            .await?;
        let mut entries: Vec<LedgerEntry> = rows.into_iter().map(ledger_from_row).collect();
        entries.sort_by(|a, b| {
            (a.recorded_at_ms, &a.path, &a.content_hash).cmp(&(
                b.recorded_at_ms,
                &b.path,
                &b.content_hash,
            ))
        });
        Ok(entries)
    }

    pub async fn song_in_session(&self, s: i32, i: i32) -> Result<Vec<SessionAnswer>, StoreError> {
        let rows: Vec<(i32, String, String, f64)> = self
            .read_all(
                "querying song_plays_by_session",
                QUERY_PATIENCE,
                &self.statements.song_in_session,
                (s, i),
            )
            .await?;
        // A cluster returns the one matching row; the filter costs nothing there and keeps the
        // answer right on the in-process test server, which treats `ck = ?` as `ck >= ?`.
        Ok(rows
            .into_iter()
            .filter(|r| r.0 == i)
            .map(|(_, artist, song, length)| SessionAnswer {
                artist,
                song,
                length,
            })
            .collect())
    }

    pub async fn user_session(&self, u: i32, s: i32) -> Result<Vec<UserAnswer>, StoreError> {
        let mut rows: Vec<(i32, String, String, String, String)> = self
            .read_all(
                "querying song_plays_by_user_session",
                QUERY_PATIENCE,
                &self.statements.user_session,
                (u, s),
            )
            .await?;
        // Already in clustering order from a cluster; sorting again is cheap insurance against
        // a table created with another clustering order.
        rows.sort_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .map(
                |(iteminsession, artist, song, firstname, lastname)| UserAnswer {
                    iteminsession,
                    artist,
                    song,
                    firstname,
                    lastname,
                },
            )
            .collect())
    }

    pub async fn listeners(&self, song: &str) -> Result<Vec<ListenerAnswer>, StoreError> {
        let mut rows: Vec<(i32, String, String)> = self
            .read_all(
                "querying listeners_by_song",
                QUERY_PATIENCE,
                &self.statements.listeners,
                (song,),
            )
            .await?;
        rows.sort_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .map(|(_, firstname, lastname)| ListenerAnswer {
                firstname,
                lastname,
            })
            .collect())
    }

    /// One cheap request that any node answers from its own system tables.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(problem) = self.health.problem() {
            return Err(StoreError::Unavailable(problem));
        }
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| store_error(classify(&e), "checking the cluster", &e))
    }

    /// Every row of a table, in the same order and rendering as the embedded store's dump. A
    /// full scan comes back in token order, so rows are sorted here by the key columns.
    pub async fn dump(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let what = format!("reading {table}");
        let st = &self.statements.dump;
        Ok(match table {
            "song_plays_by_session" => {
                let mut rows: Vec<(i32, i32, String, String, f64)> = self
                    .read_all(&what, LEDGER_PATIENCE, &st[Table::Session as usize], ())
                    .await?;
                rows.sort_by_key(|r| (r.0, r.1));
                rows.iter()
                    .map(|r| dump_line(&[&r.0, &r.1, &r.2, &r.3, &r.4]))
                    .collect()
            }
            "song_plays_by_user_session" => {
                let mut rows: Vec<(i32, i32, i32, String, String, String, String)> = self
                    .read_all(&what, LEDGER_PATIENCE, &st[Table::UserSession as usize], ())
                    .await?;
                rows.sort_by_key(|r| (r.0, r.1, r.2));
                rows.iter()
                    .map(|r| dump_line(&[&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6]))
                    .collect()
            }
            "listeners_by_song" => {
                let mut rows: Vec<(String, i32, String, String)> = self
                    .read_all(&what, LEDGER_PATIENCE, &st[Table::Listeners as usize], ())
                    .await?;
                rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                rows.iter()
                    .map(|r| dump_line(&[&r.0, &r.1, &r.2, &r.3]))
                    .collect()
            }
            other => {
                return Err(StoreError::Rejected(format!(
                    "no table {other}; tables are {}",
                    TABLES.join(", ")
                )));
            }
        })
    }
}

/// Counts shared by the requests of one write call.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    retries: AtomicU64,
    /// One warning per call when retries start; the rest go to debug.
    warned: AtomicBool,
}

/// Keeps `sparkify_store_requests_in_flight` right whichever way a request ends (including
/// being dropped when another request of its call failed).
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        metrics::gauge!("sparkify_store_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("sparkify_store_requests_in_flight").decrement(1.0);
    }
}

/// Creates (when configured) and checks the schema, then prepares every statement.
async fn set_up(session: &Session, settings: &CassandraSettings) -> Result<Statements, StoreError> {
    if settings.create_schema {
        create_schema(session, settings).await?;
    }
    check_schema(session, &settings.keyspace).await?;
    prepare_all(session, &settings.keyspace).await
}

/// Runs one DDL statement; the driver waits for schema agreement after each.
async fn ddl(session: &Session, cql: &str) -> Result<(), StoreError> {
    let first_line = cql.lines().next().unwrap_or(cql);
    session
        .query_unpaged(cql, ())
        .await
        .map(|_| ())
        .map_err(|e| {
            let failure = match classify(&e) {
                // Without a hint this reads like a cluster problem; it is a setting.
                Failure::Permanent if matches!(e, ExecutionError::MetadataError(_)) => {
                    return StoreError::Rejected(format!(
                        "{first_line}: {e} (for a CQL emulator, set \
                         cassandra.refresh_metadata_after_ddl = false)"
                    ));
                }
                f => f,
            };
            store_error(failure, first_line, &e)
        })
}

async fn create_schema(session: &Session, s: &CassandraSettings) -> Result<(), StoreError> {
    ddl(session, &keyspace_cql(s)).await?;
    for table in tables_cql(&s.keyspace) {
        ddl(session, &table).await?;
    }
    session
        .await_schema_agreement()
        .await
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(format!("the nodes did not agree on the schema: {e}")))
}

/// Reads the keyspace's columns from `system_schema` and refuses to go on if they are not
/// what sparkify writes. Runs after `create_schema` too, since `IF NOT EXISTS` leaves an older,
/// different table in place.
async fn check_schema(session: &Session, ks: &str) -> Result<(), StoreError> {
    let context = "reading the schema from system_schema.columns";
    let statement = session
        .prepare(
            "SELECT table_name, column_name, kind, position, type \
             FROM system_schema.columns WHERE keyspace_name = ?",
        )
        .await
        .map_err(|e| store_error(classify_prepare(&e), context, &e))?;
    let rows: Vec<(String, String, String, i32, String)> = session
        .execute_iter(statement, (ks,))
        .await
        .map_err(|e| store_error(classify_pager(&e), context, &e))?
        .rows_stream()
        .map_err(|e| StoreError::Rejected(format!("{context}: {e}")))?
        .try_collect()
        .await
        .map_err(|e| StoreError::Unavailable(format!("{context}: {e}")))?;
    let mut found: BTreeMap<String, BTreeMap<String, FoundColumn>> = BTreeMap::new();
    for (table, column, kind, position, ty) in rows {
        found
            .entry(table)
            .or_default()
            .insert(column, FoundColumn { kind, position, ty });
    }
    match schema_differences(ks, &found) {
        None => Ok(()),
        Some(problem) => Err(StoreError::Schema(problem)),
    }
}

async fn prepare_all(session: &Session, ks: &str) -> Result<Statements, StoreError> {
    async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
        let mut statement = session
            .prepare(cql.as_str())
            .await
            .map_err(|e| store_error(classify_prepare(&e), &format!("preparing `{cql}`"), &e))?;
        // Every statement is an upsert of fixed values or a read: safe to send twice.
        statement.set_is_idempotent(true);
        Ok(statement)
    }
    let insert = |table: &str, columns: &[&str]| {
        let marks = vec!["?"; columns.len()].join(", ");
        format!(
            "INSERT INTO {ks}.{table} ({}) VALUES ({marks})",
            columns.join(", ")
        )
    };
    Ok(Statements {
        insert: [
            prepare(
                session,
                insert(
                    TABLES[0],
                    &["sessionid", "iteminsession", "artist", "song", "length"],
                ),
            )
            .await?,
            prepare(
                session,
                insert(
                    TABLES[1],
                    &[
                        "userid",
                        "sessionid",
                        "iteminsession",
                        "artist",
                        "song",
                        "firstname",
                        "lastname",
                    ],
                ),
            )
            .await?,
            prepare(
                session,
                insert(TABLES[2], &["song", "userid", "firstname", "lastname"]),
            )
            .await?,
        ],
        ledger_put: prepare(
            session,
            format!(
                "INSERT INTO {ks}.{LEDGER_TABLE} ({LEDGER_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
        )
        .await?,
        ledger_get: prepare(
            session,
            format!("SELECT {LEDGER_COLUMNS} FROM {ks}.{LEDGER_TABLE} WHERE content_hash = ?"),
        )
        .await?,
        ledger_all: prepare(
            session,
            format!("SELECT {LEDGER_COLUMNS} FROM {ks}.{LEDGER_TABLE}"),
        )
        .await?,
        song_in_session: prepare(
            session,
            format!(
                "SELECT iteminsession, artist, song, length FROM {ks}.song_plays_by_session \
                 WHERE sessionid = ? AND iteminsession = ?"
            ),
        )
        .await?,
        user_session: prepare(
            session,
            format!(
                "SELECT iteminsession, artist, song, firstname, lastname \
                 FROM {ks}.song_plays_by_user_session WHERE userid = ? AND sessionid = ?"
            ),
        )
        .await?,
        listeners: prepare(
            session,
            format!(
                "SELECT userid, firstname, lastname FROM {ks}.listeners_by_song WHERE song = ?"
            ),
        )
        .await?,
        dump: [
            prepare(
                session,
                format!(
                    "SELECT sessionid, iteminsession, artist, song, length \
                     FROM {ks}.song_plays_by_session"
                ),
            )
            .await?,
            prepare(
                session,
                format!(
                    "SELECT userid, sessionid, iteminsession, artist, song, firstname, lastname \
                     FROM {ks}.song_plays_by_user_session"
                ),
            )
            .await?,
            prepare(
                session,
                format!("SELECT song, userid, firstname, lastname FROM {ks}.listeners_by_song"),
            )
            .await?,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(session: i32, item: i32, user: i32, song: &str, artist: &str) -> SongPlay {
        SongPlay {
            session_id: session,
            item_in_session: item,
            user_id: user,
            artist: artist.into(),
            song: song.into(),
            length: 1.5,
            first_name: "Ann".into(),
            last_name: "Lee".into(),
            profile: None,
        }
    }

    #[test]
    fn plan_batches_per_partition_only_and_keeps_the_last_duplicate() {
        let plays = vec![
            play(1, 0, 7, "a", "x"),
            play(1, 1, 7, "b", "x"),
            play(1, 2, 7, "c", "x"),
            play(2, 0, 8, "a", "x"),
            // Same key as the first play: the later one wins.
            play(1, 0, 7, "a", "y"),
        ];
        let requests = plan(&plays, 2);
        let of = |t: Table| -> Vec<Vec<u32>> {
            requests
                .iter()
                .filter(|r| r.table == t)
                .map(|r| r.rows.clone())
                .collect()
        };
        // Session 1 has three distinct items: a batch of two, then one; session 2 alone.
        assert_eq!(of(Table::Session), vec![vec![4, 1], vec![2], vec![3]]);
        assert_eq!(of(Table::UserSession), vec![vec![4, 1], vec![2], vec![3]]);
        // Song "a" has users 7 (last play 4) and 8; "b" and "c" one each.
        assert_eq!(of(Table::Listeners), vec![vec![4, 3], vec![1], vec![2]]);
        for r in &requests {
            let first = &plays[r.rows[0] as usize];
            for &i in &r.rows {
                let p = &plays[i as usize];
                match r.table {
                    Table::Session => assert_eq!(p.session_id, first.session_id),
                    Table::UserSession => {
                        assert_eq!((p.user_id, p.session_id), (first.user_id, first.session_id))
                    }
                    Table::Listeners => assert_eq!(p.song, first.song),
                }
            }
        }
    }

    #[test]
    fn schema_cql_matches_the_design() {
        let t = tables_cql("ks");
        assert_eq!(t.len(), 4);
        assert!(
            t[0].contains("PRIMARY KEY (sessionid, iteminsession)"),
            "{}",
            t[0]
        );
        assert!(
            t[1].contains("PRIMARY KEY ((userid, sessionid), iteminsession)"),
            "{}",
            t[1]
        );
        assert!(t[2].contains("PRIMARY KEY (song, userid)"), "{}", t[2]);
        assert!(t[3].contains("PRIMARY KEY (content_hash)"), "{}", t[3]);
        assert!(t[0].contains("length double"));
    }

    #[test]
    fn datacenter_names_cannot_break_out_of_the_literal() {
        let mut s = CassandraSettings {
            replication_strategy: ReplicationStrategy::NetworkTopologyStrategy,
            ..Default::default()
        };
        s.datacenters.insert("dc'1".into(), 3);
        assert!(
            keyspace_cql(&s).contains("'dc''1': 3"),
            "{}",
            keyspace_cql(&s)
        );
        assert!(is_plain_identifier("sparkify_2"));
        assert!(!is_plain_identifier("x; DROP KEYSPACE y"));
        assert!(!is_plain_identifier("1abc"));
    }

    fn found_from_schema() -> BTreeMap<String, BTreeMap<String, FoundColumn>> {
        let mut found = BTreeMap::new();
        for (table, columns) in SCHEMA.iter() {
            let mut cols = BTreeMap::new();
            for c in columns.iter() {
                let (kind, position) = match c.key {
                    Key::Partition(i) => ("partition_key", i),
                    Key::Clustering(i) => ("clustering", i),
                    Key::Regular => ("regular", -1),
                };
                cols.insert(
                    c.name.to_string(),
                    FoundColumn {
                        kind: kind.into(),
                        position,
                        ty: c.ty.into(),
                    },
                );
            }
            found.insert(table.to_string(), cols);
        }
        found
    }

    #[test]
    fn schema_check_names_what_differs() {
        let mut found = found_from_schema();
        assert_eq!(schema_differences("ks", &found), None);
        found
            .get_mut("song_plays_by_session")
            .unwrap()
            .remove("length");
        found
            .get_mut("listeners_by_song")
            .unwrap()
            .get_mut("userid")
            .unwrap()
            .ty = "text".into();
        found.remove(LEDGER_TABLE);
        let msg = schema_differences("ks", &found).unwrap();
        assert!(
            msg.contains("table ks.song_plays_by_session has no column length (double"),
            "{msg}"
        );
        assert!(
            msg.contains("column ks.listeners_by_song.userid is text, expected int"),
            "{msg}"
        );
        assert!(
            msg.contains("table ks.ingest_ledger does not exist"),
            "{msg}"
        );
        assert!(msg.contains("sparkify schema"), "{msg}");
    }

    #[test]
    fn schema_check_sees_a_key_in_the_wrong_place() {
        let mut found = found_from_schema();
        let t = found.get_mut("song_plays_by_user_session").unwrap();
        t.get_mut("userid").unwrap().position = 1;
        t.get_mut("sessionid").unwrap().position = 0;
        let msg = schema_differences("ks", &found).unwrap();
        assert!(
            msg.contains("userid is partition key column 2, expected partition key column 1"),
            "{msg}"
        );
    }

    #[test]
    fn server_errors_are_sorted_into_retry_or_fail() {
        use scylla::statement::Consistency;
        let db = |e: DbError, msg: &str| {
            classify(&ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(e, msg.into()),
            ))
        };
        assert_eq!(
            db(DbError::Overloaded, ""),
            Failure::Transient("overloaded")
        );
        assert_eq!(
            db(
                DbError::WriteTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    write_type: scylla::errors::WriteType::Simple,
                },
                ""
            ),
            Failure::Transient("write_timeout")
        );
        assert_eq!(
            db(
                DbError::Unavailable {
                    consistency: Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                },
                ""
            ),
            Failure::Transient("unavailable")
        );
        assert_eq!(
            classify(&ExecutionError::RequestTimeout(Duration::from_secs(1))),
            Failure::Transient("request_timeout")
        );
        assert_eq!(db(DbError::SyntaxError, "line 1"), Failure::Permanent);
        assert_eq!(
            db(DbError::Unauthorized, "no permission"),
            Failure::Permanent
        );
        assert_eq!(
            db(DbError::Invalid, "Undefined column name length"),
            Failure::Schema
        );
        assert_eq!(
            db(DbError::Invalid, "unconfigured table song_plays_by_session"),
            Failure::Schema
        );
        assert_eq!(
            db(DbError::Invalid, "Invalid null value"),
            Failure::Permanent
        );
        // The emulator cannot ask for credentials, so this mapping is checked here; the whole
        // handshake is checked in tests/cassandra_faults.rs with a proxy that plays the server.
        let auth = db(
            DbError::AuthenticationError,
            "Provided username and/or password are incorrect",
        );
        assert_eq!(auth, Failure::Auth);
        let e = store_error(auth, "cannot connect to n1:9042", &"bad credentials");
        assert!(matches!(e, StoreError::Auth(_)));
        let text = e.to_string();
        assert!(text.starts_with("authentication failed"), "{text}");
        assert!(text.contains("cassandra.username"), "{text}");
    }

    #[test]
    fn password_comes_from_the_first_line_of_its_file() {
        let dir = std::env::temp_dir().join(format!("sparkify-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let s = CassandraSettings {
            password_file: file.display().to_string(),
            ..Default::default()
        };
        assert_eq!(password(&s).unwrap(), "s3cret");
        std::fs::remove_file(&file).unwrap();
        let err = password(&s).unwrap_err().to_string();
        assert!(err.contains("cassandra.password_file"), "{err}");
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn tls_settings_are_checked_with_clear_messages() {
        let mut t = TlsSettings {
            enabled: true,
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsSettings::default()
        };
        let err = tls_config(&t).unwrap_err().to_string();
        assert!(
            err.contains("cassandra.tls.ca_file /nonexistent/ca.pem"),
            "{err}"
        );
        t.ca_file = String::new();
        t.cert_file = "client.pem".into();
        if let Err(e) = tls_config(&t) {
            let err = e.to_string();
            assert!(
                err.contains("go together") || err.contains("no system CA"),
                "{err}"
            );
        }
        assert!(tls_config(&TlsSettings::default()).unwrap().is_none());
    }
}
