//! The embedded store: one SQLite file with the same three tables as the Cassandra keyspace.
//!
//! Table and column names, primary keys and clustering order match the CQL tables, so any
//! SQLite tool can answer the analysts' questions from the file. Tables are `WITHOUT ROWID`,
//! which makes the primary key the physical order — the same role a Cassandra partition and
//! its clustering columns play. Writes go through one connection in large transactions with
//! rows sorted by each table's key; reads (queries, ledger look-ups) use a second connection,
//! which WAL mode lets run while a write transaction is open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use super::{ListenerAnswer, SessionAnswer, StoreError, TABLES, UserAnswer, WriteStats, dump_line};
use crate::config::EmbeddedSettings;
use crate::extract::{ExtractCounts, SongPlay};
use crate::ledger::{LedgerEntry, Status};

/// Schema version kept in `PRAGMA user_version`; bump with a migration when tables change.
const SCHEMA_VERSION: i64 = 1;

/// The tables, as SQLite DDL. Column names are the CQL ones.
pub const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS song_plays_by_session (
  sessionid INTEGER NOT NULL, iteminsession INTEGER NOT NULL,
  artist TEXT NOT NULL, song TEXT NOT NULL, length REAL NOT NULL,
  PRIMARY KEY (sessionid, iteminsession)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS song_plays_by_user_session (
  userid INTEGER NOT NULL, sessionid INTEGER NOT NULL, iteminsession INTEGER NOT NULL,
  artist TEXT NOT NULL, song TEXT NOT NULL, firstname TEXT NOT NULL, lastname TEXT NOT NULL,
  PRIMARY KEY (userid, sessionid, iteminsession)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listeners_by_song (
  song TEXT NOT NULL, userid INTEGER NOT NULL, firstname TEXT NOT NULL, lastname TEXT NOT NULL,
  PRIMARY KEY (song, userid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ingest_ledger (
  content_hash TEXT NOT NULL PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
  rows_read INTEGER NOT NULL, song_plays INTEGER NOT NULL, skipped INTEGER NOT NULL,
  rejected INTEGER NOT NULL, repaired INTEGER NOT NULL, status TEXT NOT NULL,
  reason TEXT NOT NULL, recorded_at_ms INTEGER NOT NULL);
";

const UPSERT_SESSION: &str = "INSERT INTO song_plays_by_session \
    (sessionid, iteminsession, artist, song, length) VALUES (?1, ?2, ?3, ?4, ?5) \
    ON CONFLICT (sessionid, iteminsession) DO UPDATE SET \
    artist = excluded.artist, song = excluded.song, length = excluded.length";
const UPSERT_USER_SESSION: &str = "INSERT INTO song_plays_by_user_session \
    (userid, sessionid, iteminsession, artist, song, firstname, lastname) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
    ON CONFLICT (userid, sessionid, iteminsession) DO UPDATE SET \
    artist = excluded.artist, song = excluded.song, \
    firstname = excluded.firstname, lastname = excluded.lastname";
const UPSERT_LISTENER: &str = "INSERT INTO listeners_by_song \
    (song, userid, firstname, lastname) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT (song, userid) DO UPDATE SET \
    firstname = excluded.firstname, lastname = excluded.lastname";

/// The SQLite store.
pub struct EmbeddedStore {
    path: PathBuf,
    /// Device and inode of the file as opened: if the path stops leading to them (the file
    /// was deleted, moved or its volume unmounted), writes would go to an orphan.
    identity: Option<(u64, u64)>,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn classify(e: rusqlite::Error) -> StoreError {
    let text = e.to_string();
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(text),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Rejected(text),
    }
}

fn open_connection(path: &Path, busy_timeout_ms: u64) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
    // The page size only takes effect on a new file, before the first table is created.
    conn.pragma_update(None, "page_size", 16_384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode, NORMAL loses nothing on a process crash; only a power loss can roll back
    // the last transactions, and the ledger is written after the rows, so they are reloaded.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database file and its tables.
    pub async fn open(settings: &EmbeddedSettings) -> Result<EmbeddedStore, StoreError> {
        let path = settings.path.clone();
        let busy = settings.busy_timeout_ms;
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, busy))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    fn open_blocking(path: &Path, busy_timeout_ms: u64) -> Result<EmbeddedStore, StoreError> {
        let context = |e: rusqlite::Error| {
            StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let writer = open_connection(path, busy_timeout_ms).map_err(context)?;
        let version: i64 = writer
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(context)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema(format!(
                "{} was written by a newer sparkify (schema version {version}; this one knows {SCHEMA_VERSION})",
                path.display()
            )));
        }
        writer.execute_batch(SCHEMA_SQL).map_err(context)?;
        writer
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(context)?;
        let reader = open_connection(path, busy_timeout_ms).map_err(context)?;
        Ok(EmbeddedStore {
            identity: file_identity(path),
            path: path.to_path_buf(),
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn describe(&self) -> String {
        format!("embedded {}", self.path.display())
    }

    /// Upserts the plays in one transaction, retrying while the database is busy or the disk
    /// is full, until `cancel` fires.
    pub async fn write(
        &self,
        plays: Arc<Vec<SongPlay>>,
        cancel: &CancellationToken,
    ) -> Result<WriteStats, StoreError> {
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let writer = self.writer.clone();
            let batch = plays.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                write_plays(&mut conn, &batch)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            match result {
                Ok(mut stats) => {
                    metrics::counter!("sparkify_store_requests_total").increment(stats.requests);
                    stats.retries = backoff.attempts();
                    return Ok(stats);
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Write to the embedded store failed; retrying");
                    metrics::counter!("sparkify_store_retries_total", "cause" => "unavailable")
                        .increment(1);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(StoreError::Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .map_err(classify)
    }

    pub async fn ledger_get(&self, content_hash: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let hash = content_hash.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ingest_ledger WHERE content_hash = ?1"
            ))?
            .query_row([hash], ledger_from_row)
            .optional()
        })
        .await
    }

    pub async fn ledger_put(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            conn.prepare_cached(
                "INSERT OR REPLACE INTO ingest_ledger (content_hash, path, size, rows_read, \
                 song_plays, skipped, rejected, repaired, status, reason, recorded_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                e.content_hash,
                e.path,
                e.size as i64,
                e.counts.rows as i64,
                e.counts.plays as i64,
                e.counts.skipped as i64,
                e.counts.rejected as i64,
                e.repaired as i64,
                e.status.as_str(),
                e.reason,
                e.recorded_at_ms,
            ])
            .map(|_| ())
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .map_err(classify)
    }

    pub async fn ledger_all(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        self.read(|c| {
            c.prepare(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ingest_ledger ORDER BY recorded_at_ms, path"
            ))?
            .query_map([], ledger_from_row)?
            .collect()
        })
        .await
    }

    pub async fn song_in_session(
        &self,
        session_id: i32,
        item_in_session: i32,
    ) -> Result<Vec<SessionAnswer>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT artist, song, length FROM song_plays_by_session \
                 WHERE sessionid = ?1 AND iteminsession = ?2",
            )?
            .query_map([session_id, item_in_session], |r| {
                Ok(SessionAnswer {
                    artist: r.get(0)?,
                    song: r.get(1)?,
                    length: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    pub async fn user_session(
        &self,
        user_id: i32,
        session_id: i32,
    ) -> Result<Vec<UserAnswer>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT iteminsession, artist, song, firstname, lastname \
                 FROM song_plays_by_user_session WHERE userid = ?1 AND sessionid = ?2 \
                 ORDER BY iteminsession",
            )?
            .query_map([user_id, session_id], |r| {
                Ok(UserAnswer {
                    iteminsession: r.get(0)?,
                    artist: r.get(1)?,
                    song: r.get(2)?,
                    firstname: r.get(3)?,
                    lastname: r.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }

    pub async fn listeners(&self, song: &str) -> Result<Vec<ListenerAnswer>, StoreError> {
        let song = song.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT firstname, lastname FROM listeners_by_song WHERE song = ?1 \
                 ORDER BY userid",
            )?
            .query_map([song], |r| {
                Ok(ListenerAnswer {
                    firstname: r.get(0)?,
                    lastname: r.get(1)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// The file is still the one opened, and it answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if file_identity(&self.path) != self.identity {
            return Err(StoreError::Unavailable(format!(
                "{} was removed or replaced since it was opened",
                self.path.display()
            )));
        }
        self.read(|c| c.query_row("SELECT count(*) FROM ingest_ledger", [], |_| Ok(())))
            .await
    }

    pub async fn dump(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let sql = match table {
            "song_plays_by_session" => {
                "SELECT sessionid, iteminsession, artist, song, length FROM song_plays_by_session \
                 ORDER BY sessionid, iteminsession"
            }
            "song_plays_by_user_session" => {
                "SELECT userid, sessionid, iteminsession, artist, song, firstname, lastname \
                 FROM song_plays_by_user_session ORDER BY userid, sessionid, iteminsession"
            }
            "listeners_by_song" => {
                "SELECT song, userid, firstname, lastname FROM listeners_by_song \
                 ORDER BY song, userid"
            }
            other => {
                return Err(StoreError::Rejected(format!(
                    "no table {other}; tables are {}",
                    TABLES.join(", ")
                )));
            }
        };
        self.read(move |c| {
            let mut stmt = c.prepare(sql)?;
            let n = stmt.column_count();
            stmt.query_map([], |r| {
                let mut cells: Vec<String> = Vec::with_capacity(n);
                for i in 0..n {
                    cells.push(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        other => format!("{other:?}"),
                    });
                }
                let refs: Vec<&dyn std::fmt::Display> =
                    cells.iter().map(|c| c as &dyn std::fmt::Display).collect();
                Ok(dump_line(&refs))
            })?
            .collect()
        })
        .await
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

const LEDGER_COLUMNS: &str = "content_hash, path, size, rows_read, song_plays, skipped, \
    rejected, repaired, status, reason, recorded_at_ms";

fn ledger_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerEntry> {
    Ok(LedgerEntry {
        content_hash: r.get(0)?,
        path: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        counts: ExtractCounts {
            rows: r.get::<_, i64>(3)? as u64,
            plays: r.get::<_, i64>(4)? as u64,
            skipped: r.get::<_, i64>(5)? as u64,
            rejected: r.get::<_, i64>(6)? as u64,
        },
        repaired: r.get::<_, i64>(7)? as u64,
        status: Status::parse(&r.get::<_, String>(8)?),
        reason: r.get(9)?,
        recorded_at_ms: r.get(10)?,
    })
}

/// Upserts plays into the three tables in one transaction, each table's rows in key order
/// (B-tree pages are then filled in sequence instead of at random).
pub fn write_plays(conn: &mut Connection, plays: &[SongPlay]) -> Result<WriteStats, StoreError> {
    // Each sort key ends with the play's position, so where a key repeats the later play is
    // written last and wins, as it would in file order.
    let mut order: Vec<u32> = (0..plays.len() as u32).collect();
    let tx = conn.transaction().map_err(classify)?;
    {
        let mut stmt = tx.prepare_cached(UPSERT_SESSION).map_err(classify)?;
        order.sort_unstable_by_key(|&i| {
            let p = &plays[i as usize];
            (p.session_id, p.item_in_session, i)
        });
        for &i in &order {
            let r = plays[i as usize].session_row();
            stmt.execute(params![
                r.sessionid,
                r.iteminsession,
                r.artist,
                r.song,
                r.length
            ])
            .map_err(classify)?;
        }
        let mut stmt = tx.prepare_cached(UPSERT_USER_SESSION).map_err(classify)?;
        order.sort_unstable_by_key(|&i| {
            let p = &plays[i as usize];
            (p.user_id, p.session_id, p.item_in_session, i)
        });
        for &i in &order {
            let r = plays[i as usize].user_session_row();
            stmt.execute(params![
                r.userid,
                r.sessionid,
                r.iteminsession,
                r.artist,
                r.song,
                r.firstname,
                r.lastname
            ])
            .map_err(classify)?;
        }
        let mut stmt = tx.prepare_cached(UPSERT_LISTENER).map_err(classify)?;
        order.sort_by(|&a, &b| {
            let (pa, pb) = (&plays[a as usize], &plays[b as usize]);
            (pa.song.as_str(), pa.user_id, a).cmp(&(pb.song.as_str(), pb.user_id, b))
        });
        for &i in &order {
            let r = plays[i as usize].listener_row();
            stmt.execute(params![r.song, r.userid, r.firstname, r.lastname])
                .map_err(classify)?;
        }
    }
    tx.commit().map_err(classify)?;
    let n = plays.len() as u64;
    Ok(WriteStats {
        rows: [n, n, n],
        requests: 1,
        retries: 0,
    })
}
