//! The statements prepared once at start-up: one INSERT per query table, the ledger's reads and
//! write, the three questions and the dumps. Every one is marked idempotent.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::errors::{classify_prepare, store_error};
use crate::store::{LEDGER_TABLE, StoreError, TABLES};

/// The three query tables, in [`TABLES`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Table {
    Session = 0,
    UserSession = 1,
    Listeners = 2,
}

/// Statements prepared at start-up.
pub(super) struct Statements {
    pub(super) insert: [PreparedStatement; 3],
    pub(super) ledger_put: PreparedStatement,
    pub(super) ledger_get: PreparedStatement,
    pub(super) ledger_all: PreparedStatement,
    pub(super) song_in_session: PreparedStatement,
    pub(super) user_session: PreparedStatement,
    pub(super) listeners: PreparedStatement,
    pub(super) dump: [PreparedStatement; 3],
}

pub(super) const LEDGER_COLUMNS: &str = "content_hash, path, size, rows_read, song_plays, skipped, \
    rejected, repaired, status, reason, recorded_at_ms, codec, decompressed_size";

pub(super) async fn prepare_all(session: &Session, ks: &str) -> Result<Statements, StoreError> {
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
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
