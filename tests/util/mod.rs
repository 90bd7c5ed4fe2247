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
        self.cmd_via(&[], args)
    }

    /// `sparkify ARGS` started through `prefix` (e.g. `setpriv --reuid=…  --`), set up as
    /// [`Sandbox::cmd`] does.
    pub fn cmd_via(&self, prefix: &[&str], args: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_sparkify");
        let mut c = match prefix.split_first() {
            None => Command::new(bin),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
        };
        c.current_dir(self.path())
            .args(args)
            .env_remove("RUST_LOG")
            .env("SPARKIFY_TELEMETRY__HTTP_ADDR", "")
            .env("SPARKIFY_TELEMETRY__LOG_FORMAT", "text");
        for (k, _) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
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

/// Parses CSV (with a header) into maps of column name to value.
pub fn parse_csv(text: &str) -> Vec<BTreeMap<String, String>> {
    // Flexible: rejects files keep the original fields, however many a bad row had.
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
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

/// A `sparkify run` subprocess with its JSON log lines collected as they come.
pub struct Daemon {
    pub child: std::process::Child,
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Settings every daemon test uses: a short settle time and rescan period, JSON logs.
pub const DAEMON_ENV: &[(&str, &str)] = &[
    ("SPARKIFY_WATCH__SETTLE_MS", "400"),
    ("SPARKIFY_WATCH__RESCAN_SECS", "2"),
    ("SPARKIFY_PIPELINE__SHUTDOWN_TIMEOUT_SECS", "10"),
    ("SPARKIFY_TELEMETRY__READINESS_PROBE_MS", "200"),
];

impl Daemon {
    /// Starts `sparkify run` in the sandbox, watching `<sandbox>/event_data`.
    pub fn start(sb: &Sandbox, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_via(sb, &[], env)
    }

    /// Starts `sparkify run` through `prefix` (another user, a resource limit).
    pub fn start_via(sb: &Sandbox, prefix: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = sb.cmd_via(prefix, &["run"]);
        cmd.env("SPARKIFY_TELEMETRY__LOG_FORMAT", "json")
            .env("SPARKIFY_WATCH__DIR", sb.join("event_data"));
        for (k, v) in DAEMON_ENV.iter().chain(env) {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd)
    }

    /// Starts a daemon from a prepared command (for wrappers such as `unshare`).
    pub fn spawn(mut cmd: Command) -> Daemon {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("sparkify run starts");
        let stderr = child.stderr.take().unwrap();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "unparsed": line }));
                sink.lock().unwrap().push(value);
            }
        });
        Daemon {
            child,
            logs,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines with this message.
    pub fn messages(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// Waits until a log line with this message appears; returns it.
    pub fn wait_for_message(
        &self,
        message: &str,
        timeout: std::time::Duration,
    ) -> serde_json::Value {
        let start = std::time::Instant::now();
        loop {
            if let Some(l) = self.messages(message).into_iter().next() {
                return l;
            }
            assert!(
                start.elapsed() < timeout,
                "no log line {message:?} within {timeout:?}; logs: {:#?}",
                self.log_lines()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The bound HTTP address, when the endpoint is on.
    pub fn http_addr(&self) -> String {
        let l = self.wait_for_message(
            "Serving /metrics, /healthz and /readyz",
            std::time::Duration::from_secs(30),
        );
        l["addr"].as_str().unwrap().to_string()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub fn wait(
        mut self,
        timeout: std::time::Duration,
    ) -> (Option<i32>, std::time::Duration, Vec<serde_json::Value>) {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return (status.code(), start.elapsed(), self.log_lines());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "sparkify did not exit within {timeout:?}; logs: {:#?}",
                    self.log_lines()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit code.
    pub fn stop(self) -> i32 {
        self.signal("TERM");
        let (code, _, logs) = self.wait(std::time::Duration::from_secs(30));
        code.unwrap_or_else(|| panic!("killed by a signal; logs: {logs:#?}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ledger entries in the SQLite file (0 when the file or table does not exist yet).
pub fn ledger_count(db: &Path, status: &str) -> usize {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM ingest_ledger WHERE status = ?1",
        [status],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
    .unwrap_or(0)
}

/// Waits until `cond` holds, polling every 20 ms.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes `bytes` under a hidden temporary name next to `dest`, then renames into place —
/// the way producers should drop files.
pub fn drop_by_rename(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_file_name(format!(
        ".{}.tmp",
        dest.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Loads `dir` with `sparkify ingest` into a fresh database in its own sandbox, and returns
/// the three tables: what one clean run produces.
pub fn clean_run_tables(dir: &Path) -> BTreeMap<&'static str, Vec<String>> {
    let sb = Sandbox::new();
    let out = sb.run(&["ingest", "--quiet", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    all_tables(&sb.db())
}

/// Compares whole table sets, reporting sizes and the first differing rows (not the tables).
pub fn assert_tables_eq(
    got: &BTreeMap<&'static str, Vec<String>>,
    want: &BTreeMap<&'static str, Vec<String>>,
    context: &str,
) {
    for (table, want_rows) in want {
        let got_rows = &got[table];
        if got_rows == want_rows {
            continue;
        }
        let g: std::collections::BTreeSet<&String> = got_rows.iter().collect();
        let w: std::collections::BTreeSet<&String> = want_rows.iter().collect();
        let missing: Vec<&&String> = w.difference(&g).take(5).collect();
        let extra: Vec<&&String> = g.difference(&w).take(5).collect();
        panic!(
            "{context}: {table} has {} rows, expected {}; missing {missing:?}; unexpected {extra:?}",
            got_rows.len(),
            want_rows.len()
        );
    }
}

/// `GET path` over HTTP/1.0, so that no server (the daemon's endpoint, Prometheus' API) answers
/// in chunks: (status code, body); (0, "") when nothing answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The same command, run in a mount namespace of its own where `dir` is a `tmpfs` of `kib`
/// KiB; with `fill`, a file filling it is written first. The process keeps its PID, so
/// [`in_namespace_of`] can reach the mount while it runs.
pub fn on_small_disk(inner: Command, dir: &Path, kib: u32, fill: bool) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={kib}k tmpfs \"$1\" || exit 97\n\
         {}\n\
         shift\n\
         exec \"$@\"",
        if fill {
            "cat /dev/zero > \"$1/filler\" 2>/dev/null || true"
        } else {
            ""
        }
    );
    let mut c = Command::new("unshare");
    c.args([
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(dir);
    under(c, &inner)
}

/// `inner` run by `outer` (`unshare …`, `sh -c … sh`): its program and arguments appended to
/// `outer`'s, its environment changes and working folder carried over.
pub fn under(mut outer: Command, inner: &Command) -> Command {
    outer.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    if let Some(d) = inner.get_current_dir() {
        outer.current_dir(d);
    }
    outer
}

/// `sparkify run` with its embedded store on a `tmpfs` of `kib` KiB of its own at
/// `<sandbox>/store` (filled first with `fill`), JSON logs, the endpoint on a free port:
/// the daemon and its endpoint's address.
pub fn daemon_on_small_disk(sb: &Sandbox, kib: u32, fill: bool) -> (Daemon, String) {
    let store = sb.join("store");
    std::fs::create_dir_all(sb.join("event_data")).unwrap();
    let mut inner = sb.cmd(&["run"]);
    inner
        .env("SPARKIFY_TELEMETRY__LOG_FORMAT", "json")
        .env("SPARKIFY_TELEMETRY__HTTP_ADDR", "127.0.0.1:0")
        .env("SPARKIFY_WATCH__DIR", sb.join("event_data"))
        .env("SPARKIFY_EMBEDDED__PATH", store.join("sparkify.db"));
    for (k, v) in DAEMON_ENV {
        inner.env(k, v);
    }
    let d = Daemon::spawn(on_small_disk(inner, &store, kib, fill));
    let addr = d.http_addr();
    (d, addr)
}

/// `sparkify ingest --format json ARGS` in the sandbox: exit code, summary, standard error.
pub fn ingest_json(sb: &Sandbox, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = vec!["ingest", "--format", "json"];
    all.extend_from_slice(args);
    let out = sb.run(&all);
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(&out), stderr(&out)));
    (code(&out), summary, stderr(&out))
}

/// Runs a shell line in the mount namespace of process `pid` (absolute paths only).
pub fn in_namespace_of(pid: u32, line: &str) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-U", "-m", "--", "sh", "-c", line])
        .output()
        .unwrap();
    assert!(out.status.success(), "nsenter {line:?}: {}", stderr(&out));
}
