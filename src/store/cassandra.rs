//! The Cassandra / ScyllaDB store, through the `scylla` driver.
//!
//! Production target of the load stage. (Write path under construction: see issue 4.)

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ListenerAnswer, SessionAnswer, StoreError, UserAnswer, WriteStats};
use crate::config::{CassandraSettings, ReplicationStrategy};
use crate::extract::SongPlay;
use crate::ledger::LedgerEntry;

/// Checks a consistency level name (`LOCAL_QUORUM`, `quorum`, `ONE`, ...).
pub fn parse_consistency(name: &str) -> Result<scylla::statement::Consistency, String> {
    use scylla::statement::Consistency as C;
    Ok(match name.trim().to_ascii_uppercase().as_str() {
        "ANY" => C::Any,
        "ONE" => C::One,
        "TWO" => C::Two,
        "THREE" => C::Three,
        "QUORUM" => C::Quorum,
        "ALL" => C::All,
        "LOCAL_QUORUM" => C::LocalQuorum,
        "EACH_QUORUM" => C::EachQuorum,
        "LOCAL_ONE" => C::LocalOne,
        other => {
            return Err(format!(
                "is {other:?}; expected one of ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, \
                 EACH_QUORUM, LOCAL_ONE, ANY"
            ));
        }
    })
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
                .map(|(dc, rf)| format!("'{dc}': {rf}"))
                .collect();
            format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
        }
    };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {replication}",
        s.keyspace
    )
}

/// The table statements, in the keyspace `ks`.
pub fn tables_cql(ks: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.song_plays_by_session (\n  sessionid int,\n  iteminsession int,\n  artist text,\n  song text,\n  length double,\n  PRIMARY KEY (sessionid, iteminsession))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.song_plays_by_user_session (\n  userid int,\n  sessionid int,\n  iteminsession int,\n  artist text,\n  song text,\n  firstname text,\n  lastname text,\n  PRIMARY KEY ((userid, sessionid), iteminsession))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.listeners_by_song (\n  song text,\n  userid int,\n  firstname text,\n  lastname text,\n  PRIMARY KEY (song, userid))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.ingest_ledger (\n  content_hash text PRIMARY KEY,\n  path text,\n  size bigint,\n  rows_read bigint,\n  song_plays bigint,\n  skipped bigint,\n  rejected bigint,\n  repaired bigint,\n  status text,\n  reason text,\n  recorded_at_ms bigint)"
        ),
    ]
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

/// A session on a Cassandra or ScyllaDB cluster.
pub struct CassandraStore {
    settings: CassandraSettings,
}

fn not_ready() -> StoreError {
    StoreError::Rejected("the cassandra store is not available in this build yet".into())
}

impl CassandraStore {
    pub async fn open(settings: &CassandraSettings) -> Result<CassandraStore, StoreError> {
        let _ = settings;
        Err(not_ready())
    }

    pub fn describe(&self) -> String {
        format!(
            "cassandra {}/{}",
            self.settings.nodes.join(","),
            self.settings.keyspace
        )
    }

    pub async fn write(
        &self,
        _plays: Arc<Vec<SongPlay>>,
        _cancel: &CancellationToken,
    ) -> Result<WriteStats, StoreError> {
        Err(not_ready())
    }

    pub async fn ledger_get(&self, _hash: &str) -> Result<Option<LedgerEntry>, StoreError> {
        Err(not_ready())
    }

    pub async fn ledger_put(&self, _entry: &LedgerEntry) -> Result<(), StoreError> {
        Err(not_ready())
    }

    pub async fn ledger_all(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        Err(not_ready())
    }

    pub async fn song_in_session(
        &self,
        _s: i32,
        _i: i32,
    ) -> Result<Vec<SessionAnswer>, StoreError> {
        Err(not_ready())
    }

    pub async fn user_session(&self, _u: i32, _s: i32) -> Result<Vec<UserAnswer>, StoreError> {
        Err(not_ready())
    }

    pub async fn listeners(&self, _song: &str) -> Result<Vec<ListenerAnswer>, StoreError> {
        Err(not_ready())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        Err(not_ready())
    }

    pub async fn dump(&self, _table: &str) -> Result<Vec<String>, StoreError> {
        Err(not_ready())
    }
}
