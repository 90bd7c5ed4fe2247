//! The keyspace and its four tables: the CQL that creates them (`sparkify schema` prints it) and
//! the start-up check that refuses a keyspace whose tables differ from what sparkify writes.
//! Both come from one description, [`SCHEMA`], so they cannot disagree.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::errors::ExecutionError;

use super::errors::{Failure, classify, classify_pager, classify_prepare, store_error};
use crate::config::{CassandraSettings, ReplicationStrategy};
use crate::store::{LEDGER_TABLE, StoreError};

/// A CQL string literal: quotes doubled, so a datacenter name cannot end the literal.
fn cql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// True for names CQL accepts unquoted (and sparkify writes unquoted): the keyspace is
/// spliced into every statement, so anything else is refused before it reaches the cluster.
pub(super) fn is_plain_identifier(s: &str) -> bool {
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
                c("codec", "text", Regular),
                c("decompressed_size", "bigint", Regular),
            ],
        ),
    ]
};

/// Ledger columns added after the first schema: `cassandra.create_schema` adds them to an
/// existing table (`ALTER TABLE … ADD`); entries written before have them null, read as
/// `none` and the entry's size.
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    (LEDGER_TABLE, "codec", "text"),
    (LEDGER_TABLE, "decompressed_size", "bigint"),
];

/// The statement that adds one of [`ADDED_COLUMNS`].
fn add_column_cql(ks: &str, (table, column, ty): (&str, &str, &str)) -> String {
    format!("ALTER TABLE {ks}.{table} ADD {column} {ty}")
}

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
                let added = ADDED_COLUMNS
                    .iter()
                    .find(|(t, c, _)| t == table && *c == want.name);
                problems.push(format!(
                    "table {ks}.{table} has no column {} ({} {}){}",
                    want.name,
                    want.ty,
                    want.key.describe(),
                    added
                        .map(|&a| format!(
                            " (made by an earlier version: run `{}` or set cassandra.create_schema = true)",
                            add_column_cql(ks, a)
                        ))
                        .unwrap_or_default()
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

pub(super) async fn create_schema(
    session: &Session,
    s: &CassandraSettings,
) -> Result<(), StoreError> {
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

/// Adds the [`ADDED_COLUMNS`] a ledger table made by an earlier version lacks (the migration
/// of an existing keyspace; `IF NOT EXISTS` left the old table as it was).
pub(super) async fn add_missing_columns(session: &Session, ks: &str) -> Result<(), StoreError> {
    let found = schema_columns(session, ks).await?;
    for added in ADDED_COLUMNS {
        let (table, column, _) = added;
        if found
            .get(table)
            .is_some_and(|columns| !columns.contains_key(column))
        {
            tracing::info!(table = %format!("{ks}.{table}"), column, "Adding a ledger column this version records");
            ddl(session, &add_column_cql(ks, added)).await?;
        }
    }
    Ok(())
}

/// Reads the keyspace's columns from `system_schema` and refuses to go on if they are not
/// what sparkify writes. Runs after `create_schema` too, since `IF NOT EXISTS` leaves an older,
/// different table in place.
pub(super) async fn check_schema(session: &Session, ks: &str) -> Result<(), StoreError> {
    let found = schema_columns(session, ks).await?;
    match schema_differences(ks, &found) {
        None => Ok(()),
        Some(problem) => Err(StoreError::Schema(problem)),
    }
}

/// The keyspace's tables and their columns, from `system_schema.columns`.
async fn schema_columns(
    session: &Session,
    ks: &str,
) -> Result<BTreeMap<String, BTreeMap<String, FoundColumn>>, StoreError> {
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
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
