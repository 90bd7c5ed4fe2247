//! Helpers for the Cassandra-path tests: the in-process CQL emulator (`kassandra-tester`), the
//! real `sparkify` binary pointed at it, and the embedded store's tables as the reference.
//!
//! No real cluster exists on the machines these tests run on; see DESIGN.md ("Testing the
//! Cassandra path") for what the emulator does and does not do.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kassandra_tester::KassandraTester;
use kassandra_tester::kassandra::KassandraSession;
use kassandra_tester::kassandra::snapshot::{DataSnapshots, ValueSnapshot};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use sparkify::store::TABLES;

/// The real sample: 30 files, 8,056 events, 6,820 song plays.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event_data")
}

/// An in-memory CQL server on 127.0.0.1, alive until stopped or dropped. It runs in a thread
/// of its own with a current-thread runtime, because its connections are served on a
/// `LocalSet`.
pub struct Emulator {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<DataSnapshots>>>,
}

impl Emulator {
    pub fn start() -> Emulator {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cql-emulator".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("emulator runtime");
                let mut stop = Some(stop_rx);
                runtime.block_on(async move {
                    KassandraTester::new(KassandraSession::new())
                        .in_scope(|addr| {
                            let _ = addr_tx.send(addr);
                            let stop = stop.take();
                            async move {
                                if let Some(stop) = stop {
                                    let _ = stop.await;
                                }
                                Ok::<(), ()>(())
                            }
                        })
                        .await
                        .ok()
                        .map(|session| session.data_snapshot())
                })
            })
            .expect("emulator thread");
        let addr = addr_rx.recv().expect("emulator listening");
        Emulator {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A driver session straight to the emulator (no proxy), for setting up and checking.
    pub async fn session(&self) -> Session {
        direct_session(self.addr).await
    }

    /// Stops the server and returns every row of the three tables of keyspace `sparkify`,
    /// read from its memory (not through a driver, and so not subject to its 4,999-row cap on
    /// full scans), rendered and ordered as [`sparkify::store::Store::dump`] does.
    pub fn stop(mut self) -> Dump {
        let _ = self.stop.take().expect("running").send(());
        let snapshot = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("emulator thread")
            .expect("emulator session");
        let mut dump = Dump::new();
        let tables = snapshot.0.get("sparkify").map(|k| &k.tables);
        for (table, columns) in [
            (
                TABLES[0],
                &["sessionid", "iteminsession", "artist", "song", "length"][..],
            ),
            (
                TABLES[1],
                &[
                    "userid",
                    "sessionid",
                    "iteminsession",
                    "artist",
                    "song",
                    "firstname",
                    "lastname",
                ][..],
            ),
            (TABLES[2], &["song", "userid", "firstname", "lastname"][..]),
        ] {
            let keys = if table == TABLES[1] { 3 } else { 2 };
            let mut rows: Vec<(Vec<Cell>, String)> = tables
                .and_then(|t| t.get(table))
                .map(|t| {
                    t.rows
                        .iter()
                        .map(|row| {
                            let cells: Vec<Cell> =
                                columns.iter().map(|c| Cell::of(row.data.get(*c))).collect();
                            let shown: Vec<&dyn std::fmt::Display> =
                                cells.iter().map(|c| c as &dyn std::fmt::Display).collect();
                            (cells[..keys].to_vec(), sparkify::store::dump_line(&shown))
                        })
                        .collect()
                })
                .unwrap_or_default();
            rows.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
            dump.insert(table, rows.into_iter().map(|r| r.1).collect());
        }
        dump
    }
}

/// One stored value, ordered the way the embedded store orders keys.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Cell {
    Int(i64),
    Text(String),
    Double(f64),
    Missing,
}

impl Cell {
    fn of(v: Option<&ValueSnapshot>) -> Cell {
        match v {
            Some(ValueSnapshot::Int(i)) => Cell::Int(*i as i64),
            Some(ValueSnapshot::BigInt(i)) => Cell::Int(*i),
            Some(ValueSnapshot::Text(s)) => Cell::Text(s.clone()),
            Some(ValueSnapshot::Double(d)) => Cell::Double(*d),
            _ => Cell::Missing,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Int(i) => i.fmt(f),
            Cell::Text(s) => s.fmt(f),
            Cell::Double(d) => d.fmt(f),
            Cell::Missing => f.write_str("<missing>"),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A driver session for test set-up and checks, built the way the emulator needs.
pub async fn direct_session(addr: SocketAddr) -> Session {
    SessionBuilder::new()
        .known_node_addr(addr)
        .fetch_schema_metadata(false)
        .refresh_metadata_on_auto_schema_agreement(false)
        .build()
        .await
        .expect("session to the emulator")
}

/// A temporary working directory with a config file that points sparkify at `nodes`.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// `extra` is appended to the `[cassandra]` section.
    pub fn cassandra(nodes: SocketAddr, extra: &str) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "[store]\nkind = \"cassandra\"\n\n\
             [cassandra]\nnodes = [\"{nodes}\"]\n\
             # The emulator cannot serve schema metadata nor a refresh after DDL.\n\
             fetch_schema_metadata = false\nrefresh_metadata_after_ddl = false\n\
             retry_initial_ms = 20\nretry_max_ms = 500\n{extra}\n\n\
             [telemetry]\nhttp_addr = \"\"\nlog_format = \"text\"\n"
        );
        std::fs::write(dir.path().join("sparkify.toml"), config).expect("config");
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `sparkify --config sparkify.toml ARGS` in the sandbox, with no SPARKIFY_* variable of
    /// the test's own environment leaking in.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sparkify"));
        c.current_dir(self.path())
            .arg("--config")
            .arg("sparkify.toml")
            .args(args)
            .env_remove("RUST_LOG");
        for (k, _) in std::env::vars() {
            if k.starts_with("SPARKIFY_") {
                c.env_remove(k);
            }
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("sparkify runs")
    }

    /// Like [`Sandbox::run`], but kills the process if it is still running after `limit`
    /// (for commands such as `run` that only stop by themselves on an error).
    pub fn run_for(&self, args: &[&str], limit: std::time::Duration) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sparkify starts");
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    }

    /// The same command for a tokio test (the proxy needs the test's runtime to keep going).
    pub fn tokio_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.cmd(args));
        c.kill_on_drop(true);
        c
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every table, as [`sparkify::store::Store::dump`] renders it.
pub type Dump = BTreeMap<&'static str, Vec<String>>;

/// The reference: the sample loaded by the binary into the embedded store.
pub struct Reference {
    /// Working directory whose `sparkify.toml` and `sparkify.db` answer `sparkify query`.
    pub sandbox: PathBuf,
    /// Every table, dumped through the library.
    pub dump: Dump,
}

impl Reference {
    /// `sparkify ARGS` against the reference database.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sparkify"));
        c.current_dir(&self.sandbox)
            .arg("--config")
            .arg("sparkify.toml")
            .args(args)
            .env_remove("RUST_LOG");
        for (k, _) in std::env::vars() {
            if k.starts_with("SPARKIFY_") {
                c.env_remove(k);
            }
        }
        c.output().expect("sparkify runs")
    }
}

/// Computed once per test process, kept under cargo's target/tmp (not /tmp, since a static
/// is never dropped to clean up after itself).
pub fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cassandra-reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("reference dir");
        std::fs::write(
            dir.join("sparkify.toml"),
            "[telemetry]\nhttp_addr = \"\"\nlog_format = \"text\"\n",
        )
        .expect("config");
        let reference = Reference {
            sandbox: dir.clone(),
            dump: Dump::new(),
        };
        let sample = sample_dir();
        let out = reference.run(&["ingest", "--quiet", sample.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let db = dir.join("sparkify.db");
        // Its own thread and runtime: callers may be inside a tokio test.
        let dump = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let store =
                    sparkify::store::EmbeddedStore::open(&sparkify::config::EmbeddedSettings {
                        path: db,
                        ..Default::default()
                    })
                    .await
                    .expect("embedded store");
                let mut dump = Dump::new();
                for t in TABLES {
                    dump.insert(t, store.dump(t).await.expect("dump"));
                }
                dump
            })
        })
        .join()
        .expect("reference thread");
        Reference { dump, ..reference }
    })
}

/// What `CassandraStore::dump` returns for every table. The emulator caps a full scan at
/// 4,999 rows, so on the whole sample this is a subset; [`Emulator::stop`] gives everything.
pub async fn store_dump(addr: SocketAddr) -> Dump {
    let store = open_store(addr).await;
    let mut dump = Dump::new();
    for t in TABLES {
        dump.insert(t, store.dump(t).await.expect("dump"));
    }
    dump
}

/// Asserts that `part` holds only lines of `whole`, in the same order.
pub fn assert_ordered_subset(part: &Dump, whole: &Dump) {
    for t in TABLES {
        let mut rest = whole[t].iter();
        for line in &part[t] {
            assert!(
                rest.any(|l| l == line),
                "{t}: {line:?} is not in the reference, or out of order"
            );
        }
    }
}

/// Settings for the library's store against the emulator at `addr`.
pub fn settings(addr: SocketAddr) -> sparkify::config::CassandraSettings {
    sparkify::config::CassandraSettings {
        nodes: vec![addr.to_string()],
        fetch_schema_metadata: false,
        refresh_metadata_after_ddl: false,
        retry_initial_ms: 20,
        retry_max_ms: 500,
        ..Default::default()
    }
}

pub async fn open_store(addr: SocketAddr) -> sparkify::store::CassandraStore {
    sparkify::store::CassandraStore::open(&settings(addr))
        .await
        .expect("cassandra store")
}

/// Asserts two dumps are equal, showing the first few differing lines of each table.
pub fn assert_same(actual: &Dump, expected: &Dump) {
    for t in TABLES {
        let (a, e) = (&actual[t], &expected[t]);
        if a != e {
            let missing: Vec<&String> = e.iter().filter(|l| !a.contains(l)).take(5).collect();
            let extra: Vec<&String> = a.iter().filter(|l| !e.contains(l)).take(5).collect();
            panic!(
                "{t}: {} rows, expected {}; missing {missing:?}; unexpected {extra:?}",
                a.len(),
                e.len()
            );
        }
    }
}

/// Plays of each sample file after the transform, keyed by file name (what the ledger's
/// `path` ends with).
pub fn plays_by_file() -> BTreeMap<String, Vec<sparkify::extract::SongPlay>> {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let options = sparkify::extract::ExtractOptions::from(
                &sparkify::config::ExtractSettings::default(),
            );
            let transform = sparkify::transform::Transform {
                repair_mojibake: true,
            };
            let mut out = BTreeMap::new();
            let mut files: Vec<PathBuf> = std::fs::read_dir(sample_dir())
                .expect("sample")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            for f in files {
                let mut reader = sparkify::extract::PlayReader::open(&f, &options)
                    .await
                    .expect("open");
                let mut plays = Vec::new();
                while let Some(item) = reader.next().await.expect("read") {
                    if let sparkify::extract::Item::Play(mut p) = item {
                        transform.apply(&mut p);
                        plays.push(p);
                    }
                }
                out.insert(f.file_name().unwrap().to_string_lossy().into_owned(), plays);
            }
            out
        })
    })
    .join()
    .expect("reader thread")
}
