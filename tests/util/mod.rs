//! Helpers shared by the integration tests: a sandbox folder per test, the real binary as a
//! subprocess, and readers that look at results without going through the code under test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The real sample: 30 files, 8,056 events, 6,820 song plays.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event_data")
}

/// A temporary folder that is the working directory of every command run in it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn db(&self) -> PathBuf {
        self.join("sparkify.db")
    }

    /// `sparkify ARGS` in the sandbox, with the HTTP endpoint off and logs kept quiet.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sparkify"));
        c.current_dir(self.path())
            .args(args)
            .env_remove("RUST_LOG")
            .env("SPARKIFY_TELEMETRY__HTTP_ADDR", "")
            .env("SPARKIFY_TELEMETRY__LOG_FORMAT", "text");
        for (k, _) in std::env::vars() {
            if k.starts_with("SPARKIFY_")
                && k != "SPARKIFY_TELEMETRY__HTTP_ADDR"
                && k != "SPARKIFY_TELEMETRY__LOG_FORMAT"
            {
                c.env_remove(k);
            }
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("sparkify runs")
    }

    /// Copies the files of `from` into `to` (relative to the sandbox).
    pub fn copy_dir(&self, from: &Path, to: &str) -> PathBuf {
        let dest = self.join(to);
        std::fs::create_dir_all(&dest).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
        dest
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code, panicking (with the output) if the process died from a signal.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or_else(|| {
        panic!(
            "sparkify died from a signal: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            stdout(o),
            stderr(o)
        )
    })
}

/// Every row of a table in the SQLite file, in primary-key order, values joined by `|`.
pub fn table_rows(db: &Path, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let order = match table {
        "song_plays_by_session" => "sessionid, iteminsession",
        "song_plays_by_user_session" => "userid, sessionid, iteminsession",
        "listeners_by_song" => "song, userid",
        "ingest_ledger" => "content_hash",
        other => panic!("unknown table {other}"),
    };
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
        .unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        let mut cells = Vec::new();
        for i in 0..n {
            cells.push(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Real(v) => v.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Null => "NULL".into(),
                rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
            });
        }
        Ok(cells.join("|"))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The three query tables, for comparing whole runs.
pub fn all_tables(db: &Path) -> BTreeMap<&'static str, Vec<String>> {
    [
        "song_plays_by_session",
        "song_plays_by_user_session",
        "listeners_by_song",
    ]
    .into_iter()
    .map(|t| (t, table_rows(db, t)))
    .collect()
}

/// One event of the sample, read with the `csv` crate by header name — independent of the
/// extractor under test.
#[derive(Debug, Clone)]
pub struct Event {
    pub fields: BTreeMap<String, String>,
}

impl Event {
    pub fn get(&self, k: &str) -> &str {
        self.fields.get(k).map(String::as_str).unwrap_or("")
    }
    pub fn int(&self, k: &str) -> i64 {
        self.get(k).parse().unwrap()
    }
    pub fn is_song_play(&self) -> bool {
        self.get("page") == "NextSong"
            && !self.get("artist").is_empty()
            && !self.get("song").is_empty()
    }
}

/// Every event of every `*.csv` in `dir`, files in name order.
pub fn read_events(dir: &Path) -> Vec<Event> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut r = csv::Reader::from_path(&f).unwrap();
        let header = r.headers().unwrap().clone();
        for rec in r.records() {
            let rec = rec.unwrap();
            out.push(Event {
                fields: header
                    .iter()
                    .zip(rec.iter())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
    }
    out
}

/// Parses CSV output (with a header) into maps.
pub fn parse_csv(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            header
                .iter()
                .zip(rec.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}
