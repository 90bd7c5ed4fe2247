//! Load: the store that receives the three query tables and the ledger.
//!
//! The last stage of the flow. Two kinds share one interface: the embedded SQLite file (the
//! default, no server needed) and a Cassandra/ScyllaDB cluster (production). Both upsert, so a
//! play written twice leaves the tables as if it was written once; both acknowledge a write only
//! when it is durable in the store; both keep the ledger next to the tables.

pub mod cassandra;
pub mod embedded;

use std::sync::Arc;

use serde::Serialize;

use crate::config::{Settings, StoreKind};
use crate::extract::SongPlay;
use crate::ledger::LedgerEntry;

pub use cassandra::CassandraStore;
pub use embedded::EmbeddedStore;

/// Names of the three query tables, in the order the README presents them.
pub const TABLES: [&str; 3] = [
    "song_plays_by_session",
    "song_plays_by_user_session",
    "listeners_by_song",
];

/// Name of the ledger table.
pub const LEDGER_TABLE: &str = "ingest_ledger";

/// A store failure, sorted by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded right now; retrying later will work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request; retrying will not help (bad request, schema mismatch).
    #[error("store refused the request: {0}")]
    Rejected(String),
    /// The tables do not have the columns and keys sparkify writes.
    #[error("schema mismatch: {0}")]
    Schema(String),
    /// The store did not accept the credentials.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Shutdown came before the store acknowledged the write.
    #[error("abandoned at shutdown before the store acknowledged it")]
    Abandoned,
}

impl StoreError {
    /// True for failures that go away by themselves (outage, overload, timeout).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Answer row of question 1: the song at item N of session S.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionAnswer {
    pub artist: String,
    pub song: String,
    pub length: f64,
}

/// Answer row of question 2: what user U played in session S, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserAnswer {
    pub iteminsession: i32,
    pub artist: String,
    pub song: String,
    pub firstname: String,
    pub lastname: String,
}

/// Answer row of question 3: who listened to song T.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerAnswer {
    pub firstname: String,
    pub lastname: String,
}

/// How many rows and requests a write took, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows upserted into each table, in [`TABLES`] order.
    pub rows: [u64; 3],
    /// Requests sent to the store (statements or batches; transactions for SQLite).
    pub requests: u64,
    /// Requests retried after a transient failure.
    pub retries: u64,
}

/// One of the two store kinds.
#[derive(Clone)]
pub enum Store {
    Embedded(Arc<EmbeddedStore>),
    Cassandra(Arc<CassandraStore>),
}

impl Store {
    /// Opens the configured store, creating or checking its tables.
    pub async fn open(settings: &Settings) -> Result<Store, StoreError> {
        Ok(match settings.store.kind {
            StoreKind::Embedded => {
                Store::Embedded(Arc::new(EmbeddedStore::open(&settings.embedded).await?))
            }
            StoreKind::Cassandra => {
                Store::Cassandra(Arc::new(CassandraStore::open(&settings.cassandra).await?))
            }
        })
    }

    /// A short description for logs: `embedded sparkify.db`, `cassandra 10.0.0.1:9042/sparkify`.
    pub fn describe(&self) -> String {
        match self {
            Store::Embedded(s) => s.describe(),
            Store::Cassandra(s) => s.describe(),
        }
    }

    /// Upserts every play into all three tables; returns once the store has acknowledged all
    /// of them. Transient failures are retried inside until `cancel` fires.
    pub async fn write(
        &self,
        plays: Arc<Vec<SongPlay>>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<WriteStats, StoreError> {
        match self {
            Store::Embedded(s) => s.write(plays, cancel).await,
            Store::Cassandra(s) => s.write(plays, cancel).await,
        }
    }

    /// The ledger entry for this content, if any.
    pub async fn ledger_get(&self, content_hash: &str) -> Result<Option<LedgerEntry>, StoreError> {
        match self {
            Store::Embedded(s) => s.ledger_get(content_hash).await,
            Store::Cassandra(s) => s.ledger_get(content_hash).await,
        }
    }

    /// Records (or replaces) a ledger entry.
    pub async fn ledger_put(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.ledger_put(entry).await,
            Store::Cassandra(s) => s.ledger_put(entry).await,
        }
    }

    /// Every ledger entry, oldest first.
    pub async fn ledger_all(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        match self {
            Store::Embedded(s) => s.ledger_all().await,
            Store::Cassandra(s) => s.ledger_all().await,
        }
    }

    /// Question 1.
    pub async fn song_in_session(
        &self,
        session_id: i32,
        item_in_session: i32,
    ) -> Result<Vec<SessionAnswer>, StoreError> {
        match self {
            Store::Embedded(s) => s.song_in_session(session_id, item_in_session).await,
            Store::Cassandra(s) => s.song_in_session(session_id, item_in_session).await,
        }
    }

    /// Question 2, ordered by item in session.
    pub async fn user_session(
        &self,
        user_id: i32,
        session_id: i32,
    ) -> Result<Vec<UserAnswer>, StoreError> {
        match self {
            Store::Embedded(s) => s.user_session(user_id, session_id).await,
            Store::Cassandra(s) => s.user_session(user_id, session_id).await,
        }
    }

    /// Question 3, ordered by user id.
    pub async fn listeners(&self, song: &str) -> Result<Vec<ListenerAnswer>, StoreError> {
        match self {
            Store::Embedded(s) => s.listeners(song).await,
            Store::Cassandra(s) => s.listeners(song).await,
        }
    }

    /// Checks that the store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.ping().await,
            Store::Cassandra(s) => s.ping().await,
        }
    }

    /// Every row of one of the [`TABLES`], each rendered as a line of `|`-separated values, in
    /// primary-key order. For comparing stores and runs.
    pub async fn dump(&self, table: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Embedded(s) => s.dump(table).await,
            Store::Cassandra(s) => s.dump(table).await,
        }
    }
}

/// Renders a row value for [`Store::dump`] the same way for both stores.
pub fn dump_line(values: &[&dyn std::fmt::Display]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("|")
}
