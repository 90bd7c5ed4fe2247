//! Load: the store that receives the three query tables and the ledger.
//!
//! The last stage of the flow. Two kinds share one interface: the embedded SQLite file (the
//! default, no server needed) and a Cassandra/ScyllaDB cluster (production). Both upsert, so a
//! play written twice leaves the tables as if it was written once; both acknowledge a write only
//! when it is durable in the store; both keep the ledger next to the tables.
//!
//! This file only dispatches [`Store`] calls to the kind in use. What both kinds share (table
//! names, [`StoreError`], [`WriteHealth`], the answer rows, [`WriteStats`]) is in `types.rs`;
//! [`embedded`] is the SQLite file, [`cassandra`] the cluster, one file per part.

pub mod cassandra;
pub mod embedded;
mod types;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Settings, StoreKind};
use crate::extract::SongPlay;
use crate::ledger::LedgerEntry;

pub use cassandra::CassandraStore;
pub use embedded::EmbeddedStore;
pub use types::{
    LEDGER_TABLE, ListenerAnswer, SessionAnswer, StoreError, TABLES, UserAnswer, WriteHealth,
    WriteStats, dump_line,
};

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

    /// Opens the configured store for reading only (`query`, `status`): nothing is created or
    /// written, so a read-only database file or a read-only copy of one can be used.
    pub async fn open_read_only(settings: &Settings) -> Result<Store, StoreError> {
        Ok(match settings.store.kind {
            StoreKind::Embedded => Store::Embedded(Arc::new(
                EmbeddedStore::open_read_only(&settings.embedded).await?,
            )),
            StoreKind::Cassandra => {
                Store::Cassandra(Arc::new(CassandraStore::open(&settings.cassandra).await?))
            }
        })
    }

    /// Whether writes succeed; see [`WriteHealth`].
    pub fn health(&self) -> &WriteHealth {
        match self {
            Store::Embedded(s) => s.health(),
            Store::Cassandra(s) => s.health(),
        }
    }

    /// Makes writes give up after failing for `limit` (one-shot commands).
    pub fn give_up_after(&self, limit: Duration) {
        self.health().give_up_after(limit);
    }

    /// Why the store cannot be used any more (corrupt, or given up), if that is the case.
    pub fn fatal(&self) -> Option<StoreError> {
        self.health().fatal()
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

    /// Checks that the store answers and that its writes are not failing (readiness).
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
