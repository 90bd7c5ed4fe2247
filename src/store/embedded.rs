//! The embedded store: one SQLite file with the same three tables as the Cassandra keyspace.
//!
//! Table and column names, primary keys and clustering order match the CQL tables, so any
//! SQLite tool can answer the analysts' questions from the file. Tables are `WITHOUT ROWID`,
//! which makes the primary key the physical order — the same role a Cassandra partition and
//! its clustering columns play. Writes go through one connection in large transactions with
//! rows sorted by each table's key; reads (queries, ledger look-ups) use a second connection,
//! which WAL mode lets run while a write transaction is open.
//!
//! A database is sparkify's when its header carries [`APPLICATION_ID`] (or, for files made
//! before that mark, when its tables are exactly sparkify's). Anything else at the path — another
//! application's database, a file that is not SQLite — is refused before a byte is written, and
//! so is a sparkify database whose tables have been changed. `query` and `status` open the file
//! read-only, so a read-only file or a read-only copy serves them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use super::{
    LEDGER_TABLE, ListenerAnswer, SessionAnswer, StoreError, TABLES, UserAnswer, WriteHealth,
    WriteStats, dump_line,
};
use crate::config::EmbeddedSettings;
use crate::extract::{ExtractCounts, SongPlay};
use crate::ledger::{LedgerEntry, Status};
use crate::telemetry::metrics as m;

/// Schema version kept in `PRAGMA user_version`; bump with a migration when tables change.
/// 2 added the ledger's `codec` and `decompressed_size` ([`ADDED_COLUMNS`]).
const SCHEMA_VERSION: i64 = 2;

/// Columns added after the first schema, with the `ALTER TABLE … ADD COLUMN` definition that
/// adds them to an existing database when it is opened for loading (version 1 → 2). A
/// database opened read-only is left as it is and read as if they held their defaults.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("ingest_ledger", "codec", "TEXT NOT NULL DEFAULT 'none'"),
    (
        "ingest_ledger",
        "decompressed_size",
        "INTEGER NOT NULL DEFAULT 0",
    ),
];

/// `PRAGMA application_id` of sparkify's databases: "SPKY". `file(1)` and SQLite tools show it,
/// and it is what tells sparkify's file from another application's.
pub const APPLICATION_ID: i32 = 0x5350_4B59;

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

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
  reason TEXT NOT NULL, recorded_at_ms INTEGER NOT NULL,
  codec TEXT NOT NULL DEFAULT 'none', decompressed_size INTEGER NOT NULL DEFAULT 0);
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
    /// `None` when opened read-only.
    writer: Option<Arc<Mutex<Connection>>>,
    reader: Arc<Mutex<Connection>>,
    health: WriteHealth,
    /// The ledger columns read: [`LEDGER_COLUMNS`], or their defaults in place of the
    /// [`ADDED_COLUMNS`] a database opened read-only does not have yet.
    ledger_columns: String,
}

fn classify(e: rusqlite::Error) -> StoreError {
    let text = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Unavailable(format!("the disk is full ({text})")),
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(text),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            StoreError::Unavailable(text)
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(text),
        _ => StoreError::Rejected(text),
    }
}

/// An I/O error of the store's own, saying so plainly when the disk is full.
fn io_error(what: &str, e: &std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        StoreError::Unavailable(format!("the disk is full: {what}: {e}"))
    } else {
        StoreError::Unavailable(format!("{what}: {e}"))
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

/// `file:` URI of a path, for SQLite's URI parameters.
fn file_uri(path: &Path, params: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(params);
    uri
}

/// A connection that cannot write: nothing in the file or its folder changes.
///
/// With no write-ahead log beside the file, no other connection has it open (SQLite keeps the
/// log while any does), so the file alone is the whole database and is read as immutable —
/// no lock or shared-memory file is made, which is what lets a read-only folder or a read-only
/// copy be read. Otherwise the log is read through SQLite's normal read-only mode.
fn open_read_only_connection(path: &Path, busy_timeout_ms: u64) -> rusqlite::Result<Connection> {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let conn = if wal.exists() {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?
    } else {
        Connection::open_with_flags(
            file_uri(path, "immutable=1"),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?
    };
    conn.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
    Ok(conn)
}

/// What is at the store's path.
#[derive(Debug, PartialEq)]
enum Found {
    /// No file: it is created as sparkify's.
    Missing,
    /// An empty file, or a SQLite database with no tables and no marks: taken as sparkify's.
    Blank,
    /// A sparkify database made before the application id was set: marked, then used.
    Unmarked,
    /// A sparkify database.
    Ours,
}

/// Bytes shown as text, with anything unprintable escaped.
fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Decides whether the file at `path` is sparkify's, without writing to it (or beside it).
fn inspect(path: &Path, busy_timeout_ms: u64) -> Result<(Found, Vec<usize>), StoreError> {
    use std::io::Read;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Found::Missing, Vec::new()));
        }
        Err(e) => return Err(io_error(&format!("cannot open {shown}"), &e)),
    };
    if !meta.is_file() {
        return Err(StoreError::Foreign(format!(
            "{shown} is not a regular file (embedded.path must name a database file)"
        )));
    }
    if meta.len() == 0 {
        return Ok((Found::Blank, Vec::new()));
    }
    let mut header = Vec::with_capacity(100);
    std::fs::File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut header))
        .map_err(|e| io_error(&format!("cannot read {shown}"), &e))?;
    if header.len() < 100 || !header.starts_with(SQLITE_MAGIC) {
        return Err(StoreError::Foreign(format!(
            "{shown} is not a SQLite database (it begins with \"{}\"); it was left as it is",
            printable(&header[..header.len().min(16)])
        )));
    }
    // Header fields, big-endian: user_version at 60, application_id at 68.
    let field = |at: usize| {
        i32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (user_version, application_id) = (field(60), field(68));
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(StoreError::Foreign(format!(
            "{shown} belongs to another application (its application_id is {application_id:#010x}; \
             sparkify's is {APPLICATION_ID:#010x}); it was left as it is"
        )));
    }

    let conn =
        open_read_only_connection(path, busy_timeout_ms).map_err(|e| opened(path, classify(e)))?;
    let found = tables_of(&conn).map_err(|e| opened(path, classify(e)))?;
    let ours = expected_tables();
    if application_id == 0 {
        if found.is_empty() && user_version == 0 {
            return Ok((Found::Blank, Vec::new()));
        }
        let known: Vec<&str> = found
            .keys()
            .map(String::as_str)
            .filter(|t| ours.contains_key(*t))
            .collect();
        if known.is_empty() || i64::from(user_version) > SCHEMA_VERSION {
            let names: Vec<&str> = found.keys().map(String::as_str).collect();
            return Err(StoreError::Foreign(format!(
                "{shown} belongs to another application (user_version {user_version}, \
                 application_id 0; tables: {}); sparkify's tables are {}; it was left as it is",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                },
                ours.keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    } else if i64::from(user_version) > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "{shown} was written by a newer sparkify (schema version {user_version}; this one knows {SCHEMA_VERSION})"
        )));
    }
    let missing = missing_added_columns(&found);
    let differences = schema_differences(&found, &ours);
    if !differences.is_empty() {
        return Err(StoreError::Schema(format!(
            "{shown} does not have the tables sparkify writes: {}; it was left as it is",
            differences.join("; ")
        )));
    }
    let kind = if application_id == 0 {
        Found::Unmarked
    } else {
        Found::Ours
    };
    Ok((kind, missing))
}

/// Which of [`ADDED_COLUMNS`] (by index) an existing database does not have yet.
fn missing_added_columns(found: &std::collections::BTreeMap<String, Table>) -> Vec<usize> {
    ADDED_COLUMNS
        .iter()
        .enumerate()
        .filter(|(_, (table, column, _))| {
            found.get(*table).is_some_and(|t| {
                !t.columns
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(column))
            })
        })
        .map(|(i, _)| i)
        .collect()
}

/// The ledger's columns as selected: a column the database does not have yet is read as its
/// default (`decompressed_size` as `size`, which it is for the plain files of those entries).
fn ledger_select(missing: &[usize]) -> String {
    LEDGER_COLUMNS
        .split(", ")
        .map(|c| c.trim())
        .map(|c| {
            let absent = missing.iter().any(|&i| ADDED_COLUMNS[i].1 == c);
            match c {
                "codec" if absent => "'none'".to_string(),
                "decompressed_size" if absent => "size".to_string(),
                _ => c.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds the path to an error met while opening.
fn opened(path: &Path, e: StoreError) -> StoreError {
    let shown = path.display();
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("cannot open {shown}: {m}")),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{shown}: {m}")),
        StoreError::Rejected(m) => StoreError::Rejected(format!("cannot open {shown}: {m}")),
        other => other,
    }
}

/// One column as SQLite reports it: name, declared type, NOT NULL, position in the key.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    ty: String,
    not_null: bool,
    key: i64,
}

/// A table's columns (in order) and whether it is `WITHOUT ROWID`.
#[derive(Debug, Clone, PartialEq)]
struct Table {
    columns: Vec<Column>,
    without_rowid: bool,
}

/// Every ordinary table of a database.
fn tables_of(conn: &Connection) -> rusqlite::Result<std::collections::BTreeMap<String, Table>> {
    let names: Vec<(String, bool)> = conn
        .prepare(
            "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = std::collections::BTreeMap::new();
    for (name, without_rowid) in names {
        let columns = conn
            .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([&name], |r| {
                Ok(Column {
                    name: r.get(0)?,
                    ty: r.get::<_, String>(1)?.to_ascii_uppercase(),
                    not_null: r.get::<_, i64>(2)? != 0,
                    key: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        tables.insert(
            name,
            Table {
                columns,
                without_rowid,
            },
        );
    }
    Ok(tables)
}

/// sparkify's tables as SQLite describes them, from [`SCHEMA_SQL`] in a scratch database.
fn expected_tables() -> std::collections::BTreeMap<String, Table> {
    let conn = Connection::open_in_memory().expect("an in-memory database opens");
    conn.execute_batch(SCHEMA_SQL)
        .expect("the schema is valid SQLite");
    tables_of(&conn).expect("an in-memory database is readable")
}

/// How the tables found differ from sparkify's, one phrase per difference.
fn schema_differences(
    found: &std::collections::BTreeMap<String, Table>,
    ours: &std::collections::BTreeMap<String, Table>,
) -> Vec<String> {
    let describe = |c: &Column| {
        format!(
            "{}{}",
            if c.ty.is_empty() { "untyped" } else { &c.ty },
            if c.not_null { " NOT NULL" } else { "" }
        )
    };
    let key = |t: &Table| {
        let mut k: Vec<&Column> = t.columns.iter().filter(|c| c.key > 0).collect();
        k.sort_by_key(|c| c.key);
        format!(
            "({})",
            k.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut out = Vec::new();
    for (name, want) in ours {
        let Some(got) = found.get(name) else {
            out.push(format!("table {name} is missing"));
            continue;
        };
        for w in &want.columns {
            match got
                .columns
                .iter()
                .find(|g| g.name.eq_ignore_ascii_case(&w.name))
            {
                // Added when the database is opened for loading.
                None if ADDED_COLUMNS
                    .iter()
                    .any(|(t, c, _)| t == name && w.name.eq_ignore_ascii_case(c)) => {}
                None => out.push(format!("{name} has no column {} ({})", w.name, describe(w))),
                Some(g) if describe(g) != describe(w) => out.push(format!(
                    "{name}.{} is {}, not {}",
                    w.name,
                    describe(g),
                    describe(w)
                )),
                Some(_) => {}
            }
        }
        for g in &got.columns {
            if !want
                .columns
                .iter()
                .any(|w| w.name.eq_ignore_ascii_case(&g.name))
            {
                out.push(format!(
                    "{name} has a column {} that sparkify does not write",
                    g.name
                ));
            }
        }
        if key(got) != key(want) {
            out.push(format!(
                "{name}'s primary key is {}, not {}",
                key(got),
                key(want)
            ));
        }
        if got.without_rowid != want.without_rowid {
            out.push(format!(
                "{name} is {}a WITHOUT ROWID table",
                if got.without_rowid { "" } else { "not " }
            ));
        }
    }
    out
}

impl EmbeddedStore {
    /// Opens the database file for loading: creates it (with its tables) when it is missing
    /// or empty, marks a sparkify database made before the application id existed, and refuses
    /// anything else without writing to it.
    pub async fn open(settings: &EmbeddedSettings) -> Result<EmbeddedStore, StoreError> {
        let path = settings.path.clone();
        let busy = settings.busy_timeout_ms;
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, busy, false))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Opens an existing sparkify database for reading only; nothing is created or written.
    pub async fn open_read_only(settings: &EmbeddedSettings) -> Result<EmbeddedStore, StoreError> {
        let path = settings.path.clone();
        let busy = settings.busy_timeout_ms;
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, busy, true))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    fn open_blocking(
        path: &Path,
        busy_timeout_ms: u64,
        read_only: bool,
    ) -> Result<EmbeddedStore, StoreError> {
        let shown = path.display();
        if path.as_os_str().is_empty() {
            return Err(StoreError::Rejected(
                "embedded.path is empty; expected the database file's path".into(),
            ));
        }
        let (found, missing) = inspect(path, busy_timeout_ms)?;
        if read_only {
            if matches!(found, Found::Missing | Found::Blank) {
                return Err(StoreError::Unavailable(format!(
                    "{shown} {} (embedded.path); nothing has been loaded into it yet",
                    if found == Found::Missing {
                        "does not exist"
                    } else {
                        "is empty"
                    }
                )));
            }
            let reader = open_read_only_connection(path, busy_timeout_ms)
                .map_err(|e| opened(path, classify(e)))?;
            return Ok(EmbeddedStore {
                identity: file_identity(path),
                path: path.to_path_buf(),
                writer: None,
                reader: Arc::new(Mutex::new(reader)),
                health: WriteHealth::default(),
                ledger_columns: ledger_select(&missing),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error(&format!("cannot create {}", parent.display()), &e))?;
        }
        let context = |e: rusqlite::Error| opened(path, classify(e));
        let mut writer = open_connection(path, busy_timeout_ms).map_err(context)?;
        match found {
            Found::Missing | Found::Blank => {
                // One transaction: a crash leaves either a blank file or a complete one.
                let tx = writer.transaction().map_err(context)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(context)?;
                tx.execute_batch(SCHEMA_SQL).map_err(context)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(context)?;
                tx.commit().map_err(context)?;
            }
            Found::Unmarked => {
                let tx = writer.transaction().map_err(context)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(context)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(context)?;
                tx.commit().map_err(context)?;
            }
            Found::Ours => {}
        }
        if !missing.is_empty() {
            // Version 1 → 2, in one transaction: the ledger gains codec and decompressed_size;
            // its entries are of plain files, whose decompressed size is their size.
            let tx = writer.transaction().map_err(context)?;
            for &i in &missing {
                let (table, column, definition) = ADDED_COLUMNS[i];
                tx.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))
                .map_err(context)?;
                if column == "decompressed_size" {
                    tx.execute_batch("UPDATE ingest_ledger SET decompressed_size = size")
                        .map_err(context)?;
                }
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(context)?;
            tx.commit().map_err(context)?;
            let added: Vec<&str> = missing.iter().map(|&i| ADDED_COLUMNS[i].1).collect();
            tracing::info!(path = %shown, columns = %added.join(", "), "Added the ledger columns this version records");
        }
        let reader = open_connection(path, busy_timeout_ms).map_err(context)?;
        Ok(EmbeddedStore {
            identity: file_identity(path),
            path: path.to_path_buf(),
            writer: Some(Arc::new(Mutex::new(writer))),
            reader: Arc::new(Mutex::new(reader)),
            health: WriteHealth::default(),
            ledger_columns: LEDGER_COLUMNS.to_string(),
        })
    }

    /// Whether writes succeed.
    pub fn health(&self) -> &WriteHealth {
        &self.health
    }

    fn writer(&self) -> Result<Arc<Mutex<Connection>>, StoreError> {
        self.writer.clone().ok_or_else(|| {
            StoreError::Rejected(format!("{} was opened read-only", self.path.display()))
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
    /// is full, until `cancel` fires or [`WriteHealth`] says to give up.
    pub async fn write(
        &self,
        plays: Arc<Vec<SongPlay>>,
        cancel: &CancellationToken,
    ) -> Result<WriteStats, StoreError> {
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let writer = self.writer()?;
        loop {
            self.health.check()?;
            let writer = writer.clone();
            let batch = plays.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                write_plays(&mut conn, &batch)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            match result {
                Ok(mut stats) => {
                    self.health.succeeded();
                    metrics::counter!(m::STORE_REQUESTS).increment(stats.requests);
                    stats.retries = backoff.attempts();
                    return Ok(stats);
                }
                Err(e) if e.is_transient() => {
                    self.health.failed(&e)?;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Write to the embedded store failed; retrying");
                    metrics::counter!(m::STORE_RETRIES, m::CAUSE => "unavailable").increment(1);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(StoreError::Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    self.health.failed(&e)?;
                    return Err(e);
                }
            }
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .map_err(|e| match classify(e) {
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", self.path.display())),
            other => other,
        });
        if let Err(e) = &result
            && e.is_fatal()
        {
            // A corrupt page met by a read ends the store's use as surely as one met by a write.
            self.health.failed(e)?;
        }
        result
    }

    pub async fn ledger_get(&self, content_hash: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let hash = content_hash.to_string();
        let columns = self.ledger_columns.clone();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {columns} FROM ingest_ledger WHERE content_hash = ?1"
            ))?
            .query_row([hash], ledger_from_row)
            .optional()
        })
        .await
    }

    pub async fn ledger_put(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        self.health.check()?;
        let e = entry.clone();
        let writer = self.writer()?;
        let result = tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            conn.prepare_cached(
                "INSERT OR REPLACE INTO ingest_ledger (content_hash, path, size, rows_read, \
                 song_plays, skipped, rejected, repaired, status, reason, recorded_at_ms, \
                 codec, decompressed_size) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
                e.codec.as_str(),
                e.decompressed_size as i64,
            ])
            .map(|_| ())
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .map_err(classify);
        match &result {
            Ok(()) => self.health.succeeded(),
            Err(e) => self.health.failed(e)?,
        }
        result
    }

    pub async fn ledger_all(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        let columns = self.ledger_columns.clone();
        self.read(move |c| {
            c.prepare(&format!(
                "SELECT {columns} FROM ingest_ledger ORDER BY recorded_at_ms, path"
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

    /// The file is still the one opened, its writes are not failing, and it answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if file_identity(&self.path) != self.identity {
            return Err(StoreError::Unavailable(format!(
                "{} was removed or replaced since it was opened",
                self.path.display()
            )));
        }
        if let Some(problem) = self.health.problem() {
            return Err(StoreError::Unavailable(problem));
        }
        self.read(|c| {
            c.query_row(&format!("SELECT count(*) FROM {LEDGER_TABLE}"), [], |_| {
                Ok(())
            })
        })
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
    rejected, repaired, status, reason, recorded_at_ms, codec, decompressed_size";

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
        codec: crate::extract::Codec::parse(&r.get::<_, String>(11)?),
        decompressed_size: r.get::<_, i64>(12)? as u64,
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
