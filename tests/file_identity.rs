//! A file's identity in the ledger is that of exactly the bytes whose rows were loaded: a file
//! truncated, appended to or rewritten while it is read is never ledgered as loaded, and is
//! loaded again once it is complete. Also: inputs that are not regular files, names that are
//! not UTF-8, a watched folder that goes away, files that fail for a local reason, and
//! shutdown while a large file is hashed.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::*;

const LONG: Duration = Duration::from_secs(60);

/// Small chunks and a small read buffer, so that a blocked writer stops the reader well before
/// the end of a file of a few megabytes.
const SMALL_PIPELINE: &[(&str, &str)] = &[
    ("SPARKIFY_PIPELINE__CHUNK_ROWS", "100"),
    ("SPARKIFY_PIPELINE__CHUNK_QUEUE", "2"),
    ("SPARKIFY_EXTRACT__READ_BUFFER_BYTES", "16384"),
    ("SPARKIFY_EMBEDDED__TRANSACTION_ROWS", "100"),
    ("SPARKIFY_EMBEDDED__BUSY_TIMEOUT_MS", "100"),
    ("SPARKIFY_WATCH__SETTLE_MS", "300"),
];

/// One generated event file of `rows` rows, with sessions from `first_session`. Contents made
/// with one seed share their users (the same names for the same id) and, given disjoint
/// session ranges, no other key — so the tables do not depend on the order of loading.
fn generated(sb: &Sandbox, rows: u32, first_session: u32) -> Vec<u8> {
    let seed = 5;
    let dir = sb.join(&format!("gen-{first_session}"));
    let out = sb.run(&[
        "generate",
        "--rows",
        &rows.to_string(),
        "--files",
        "1",
        "--seed",
        &seed.to_string(),
        "--first-session",
        &first_session.to_string(),
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

/// The first `n` lines of `bytes` (a prefix ending at a line break).
fn first_lines(bytes: &[u8], n: usize) -> Vec<u8> {
    let mut seen = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return bytes[..=i].to_vec();
            }
        }
    }
    bytes.to_vec()
}

/// `other` made exactly as long as `like`: cut at a line break and padded with blank lines
/// (which are skipped), so that a rewrite keeps the size and only the content differs.
fn same_size_as(other: &[u8], like: &[u8]) -> Vec<u8> {
    let mut b = other.to_vec();
    while b.len() > like.len() {
        let cut = b[..b.len() - 1].iter().rposition(|c| *c == b'\n').unwrap();
        b.truncate(cut + 1);
    }
    b.resize(like.len(), b'\n');
    assert_ne!(b, like);
    b
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Ledger entries with this content hash and status.
fn ledgered(db: &Path, hash: &str, status: &str) -> usize {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT count(*) FROM ingest_ledger WHERE content_hash = ?1 AND status = ?2",
        [hash, status],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// Clean tables of these file contents, loaded together.
fn clean_tables_of(files: &[&[u8]]) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    let sb = Sandbox::new();
    let dir = sb.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}.csv")), f).unwrap();
    }
    clean_run_tables(&dir)
}

/// An `ingest` subprocess whose standard error is collected line by line as it runs.
struct Running {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = sb.cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Running {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn saw(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Waits for the exit; returns the code, stdout and stderr.
    fn finish(mut self, timeout: Duration) -> (i32, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "still running after {timeout:?}; stderr: {:?}",
                    self.lines.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        use std::io::Read;
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.reader.take().unwrap().join().unwrap();
        let err = self.lines.lock().unwrap().join("\n");
        (status.code().unwrap_or(-1), out, err)
    }
}

/// How a test changes the file while it is being read.
#[derive(Clone, Copy, Debug)]
enum Change {
    Truncate,
    Append,
    RewriteSameSize,
}

/// The content the file has after `change`, given its original content.
fn changed_content(sb: &Sandbox, change: Change, original: &[u8]) -> Vec<u8> {
    match change {
        Change::Truncate => first_lines(original, 2_000),
        Change::Append => {
            let more = generated(sb, 3_000, 700_000);
            let body = more.splitn(2, |b| *b == b'\n').nth(1).unwrap().to_vec();
            [original, &body].concat()
        }
        Change::RewriteSameSize => same_size_as(&generated(sb, 20_000, 800_000), original),
    }
}

/// Applies `change` in place, as `logrotate copytruncate` or `cat other > file` would: the
/// same inode, truncated or extended.
fn apply_in_place(path: &Path, content: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(content).unwrap();
    f.sync_all().unwrap();
}

/// Waits until the plays table holds more than `rows` rows, then takes the database's write
/// lock and returns the connection holding it.
fn lock_once_rows_arrive(db: &Path, rows: i64) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(20)).unwrap();
    wait_until("the first rows written", LONG, || {
        conn.query_row("SELECT count(*) FROM song_plays_by_session", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or(0)
            > rows
    });
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// Creates the database (and its tables) with a small load, so that a test can hold its
/// write lock before the command under test starts.
fn prepare_database(sb: &Sandbox) {
    let dir = sb.join("warmup");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        sample_dir().join("2018-11-01-events.csv"),
        dir.join("2018-11-01-events.csv"),
    )
    .unwrap();
    let out = sb.run(&["ingest", "--quiet", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn sample_file(name: &str) -> Vec<u8> {
    std::fs::read(sample_dir().join(name)).unwrap()
}

fn ingest_with_change_during_read(change: Change) {
    let sb = Sandbox::new();
    prepare_database(&sb);
    let original = generated(&sb, 20_000, 100_000);
    let after = changed_content(&sb, change, &original);
    let file = sb.join("in/x.csv");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &original).unwrap();

    // Once the first rows are in, another connection takes the write lock: the loader's
    // writer waits, its queue fills, and the reader stops part-way through the file.
    let run = Running::start(&sb, &["ingest", "in"], SMALL_PIPELINE);
    let blocker = lock_once_rows_arrive(&sb.db(), 1_000);
    wait_until("the writer waiting for the lock", LONG, || {
        run.saw("retrying")
    });
    std::thread::sleep(Duration::from_millis(500));
    apply_in_place(&file, &after);
    blocker.execute_batch("ROLLBACK").unwrap();
    let (code, out, err) = run.finish(LONG);

    assert_eq!(code, 0, "{change:?}: {out}\n{err}");
    assert!(
        err.contains("changed while being read"),
        "{change:?}: the change is logged: {err}"
    );
    assert!(out.contains("files      1 loaded"), "{change:?}: {out}");
    // The content whose rows were all loaded is ledgered; the original never was.
    assert_eq!(ledgered(&sb.db(), &blake3_hex(&after), "loaded"), 1);
    assert_eq!(
        ledgered(&sb.db(), &blake3_hex(&original), "loaded"),
        0,
        "{change:?}: the original bytes are not ledgered as loaded"
    );

    // The original bytes dropped again load in full.
    std::fs::write(&file, &original).unwrap();
    let again = sb.run(&["ingest", "in"]);
    assert_eq!(code_of(&again), 0, "{}", stderr(&again));
    assert!(
        stdout(&again).contains("files      1 loaded"),
        "{change:?}: {}",
        stdout(&again)
    );
    let want = clean_tables_of(&[&sample_file("2018-11-01-events.csv"), &original, &after]);
    assert_tables_eq(&all_tables(&sb.db()), &want, &format!("{change:?}"));
}

fn code_of(o: &std::process::Output) -> i32 {
    code(o)
}

#[test]
fn ingest_never_ledgers_a_file_truncated_while_read() {
    ingest_with_change_during_read(Change::Truncate);
}

#[test]
fn ingest_never_ledgers_a_file_appended_to_while_read() {
    ingest_with_change_during_read(Change::Append);
}

#[test]
fn ingest_never_ledgers_a_file_rewritten_in_place_while_read() {
    ingest_with_change_during_read(Change::RewriteSameSize);
}

fn daemon_with_change_during_read(change: Change) {
    let sb = Sandbox::new();
    prepare_database(&sb);
    let original = generated(&sb, 20_000, 200_000);
    let after = changed_content(&sb, change, &original);
    let mut env = SMALL_PIPELINE.to_vec();
    env.push(("SPARKIFY_WATCH__RESCAN_SECS", "1"));
    let d = Daemon::start(&sb, &env);
    d.wait_for_message("Watching folder", LONG);
    let blocker = rusqlite::Connection::open(sb.db()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let file = sb.join("event_data/x.csv");
    drop_by_rename(&file, &original);
    wait_until("the writer waiting for the lock", LONG, || {
        !d.messages("Write to the embedded store failed; retrying")
            .is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    apply_in_place(&file, &after);
    std::thread::sleep(Duration::from_millis(200));
    blocker.execute_batch("ROLLBACK").unwrap();

    d.wait_for_message(
        "File changed while being read; it will be taken again when it settles",
        LONG,
    );
    wait_until("the changed file loaded once it settled", LONG, || {
        ledgered(&sb.db(), &blake3_hex(&after), "loaded") == 1
    });
    assert_eq!(
        ledgered(&sb.db(), &blake3_hex(&original), "loaded"),
        0,
        "{change:?}: the original bytes are not ledgered as loaded"
    );
    // The original bytes dropped again (under a new name) load in full.
    drop_by_rename(&sb.join("event_data/y.csv"), &original);
    wait_until("the original loaded", LONG, || {
        ledgered(&sb.db(), &blake3_hex(&original), "loaded") == 1
    });
    assert_eq!(d.stop(), 0);
    let want = clean_tables_of(&[&sample_file("2018-11-01-events.csv"), &original, &after]);
    assert_tables_eq(&all_tables(&sb.db()), &want, &format!("run {change:?}"));
}

#[test]
fn the_daemon_never_ledgers_a_file_truncated_while_read() {
    daemon_with_change_during_read(Change::Truncate);
}

#[test]
fn the_daemon_never_ledgers_a_file_appended_to_while_read() {
    daemon_with_change_during_read(Change::Append);
}

#[test]
fn the_daemon_never_ledgers_a_file_rewritten_in_place_while_read() {
    daemon_with_change_during_read(Change::RewriteSameSize);
}

#[test]
fn explicit_paths_that_are_not_regular_files_are_refused() {
    let sb = Sandbox::new();
    let fifo = sb.join("pipe.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for path in ["/dev/zero", fifo.to_str().unwrap()] {
        let started = Instant::now();
        let out = sb.run(&["ingest", path]);
        assert_eq!(code(&out), 2, "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a regular file"),
            "{path}: {}",
            stderr(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let out = sb.run(&["validate", path]);
        assert_ne!(code(&out), 0, "{path}");
    }
}

#[test]
fn sigterm_stops_ingest_while_a_huge_file_is_hashed() {
    let sb = Sandbox::new();
    // 64 GiB of holes: reading it takes far longer than this test waits.
    let big = sb.join("huge.csv");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let run = Running::start(&sb, &["ingest", "huge.csv"], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let pid = run.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let (code, out, err) = run.finish(Duration::from_secs(20));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 130, "{out}\n{err}");
    assert_eq!(ledger_count(&sb.db(), "loaded"), 0);
}

/// A name with a byte that is not UTF-8 (Latin-1 "café").
fn latin1_name(dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9-events.csv"))
}

#[test]
fn files_whose_names_are_not_utf8_are_loaded() {
    let sb = Sandbox::new();
    let dir = sb.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(latin1_name(&dir), sample_file("2018-11-05-events.csv")).unwrap();
    let out = sb.run(&["ingest", "in"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("files      1 loaded"),
        "{}",
        stdout(&out)
    );
    assert_eq!(table_rows(&sb.db(), "song_plays_by_session").len(), 356);

    let sb = Sandbox::new();
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", LONG);
    let name = latin1_name(&sb.join("event_data"));
    let tmp = sb.join("event_data/.incoming.tmp");
    std::fs::write(&tmp, sample_file("2018-11-05-events.csv")).unwrap();
    std::fs::rename(&tmp, &name).unwrap();
    d.wait_for_message("Loaded file", LONG);
    assert_eq!(d.stop(), 0);
    assert_eq!(table_rows(&sb.db(), "song_plays_by_session").len(), 356);
}

#[test]
fn a_deleted_watched_folder_is_reported_and_watched_again_when_back() {
    let sb = Sandbox::new();
    let d = Daemon::start(
        &sb,
        &[
            ("SPARKIFY_TELEMETRY__HTTP_ADDR", "127.0.0.1:0"),
            // Files must arrive through events, not through the rescan.
            ("SPARKIFY_WATCH__RESCAN_SECS", "3600"),
        ],
    );
    let addr = d.http_addr();
    d.wait_for_message("Watching folder", LONG);
    wait_until("ready", LONG, || http_get(&addr, "/readyz").0 == 200);

    std::fs::remove_dir_all(sb.join("event_data")).unwrap();
    d.wait_for_message(
        "The watched folder is gone; not ready until it is back",
        LONG,
    );
    wait_until("not ready", LONG, || http_get(&addr, "/readyz").0 == 503);

    std::fs::create_dir_all(sb.join("event_data")).unwrap();
    d.wait_for_message("The watched folder is back; watching it again", LONG);
    wait_until("ready again", LONG, || http_get(&addr, "/readyz").0 == 200);
    drop_by_rename(
        &sb.join("event_data/2018-11-05-events.csv"),
        &sample_file("2018-11-05-events.csv"),
    );
    d.wait_for_message("Loaded file", Duration::from_secs(20));
    assert_eq!(d.stop(), 0);
    assert_eq!(table_rows(&sb.db(), "song_plays_by_session").len(), 356);
}

/// Runs `sparkify run` as an unprivileged user when the tests run as root, so that file
/// permissions apply.
fn unprivileged_daemon(sb: &Sandbox, env: &[(&str, &str)]) -> Daemon {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Daemon::start(sb, env);
    }
    use std::os::unix::fs::PermissionsExt;
    let mut p = sb.path().to_path_buf();
    // Every folder up to the sandbox must be enterable by the other user.
    loop {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        if !p.pop() {
            break;
        }
    }
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    Daemon::start_via(
        sb,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
        env,
    )
}

#[test]
fn a_file_unreadable_for_a_local_reason_is_taken_again_once_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let d = unprivileged_daemon(&sb, &[("SPARKIFY_WATCH__RESCAN_SECS", "1")]);
    d.wait_for_message("Watching folder", LONG);
    let file = sb.join("event_data/2018-11-05-events.csv");
    let tmp = sb.join("event_data/.x.tmp");
    std::fs::write(&tmp, sample_file("2018-11-05-events.csv")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    d.wait_for_message(
        "File could not be read; it will be tried again at the next rescan",
        LONG,
    );
    assert_eq!(
        ledger_count(&sb.db(), "failed"),
        0,
        "not ledgered as failed"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.wait_for_message("Loaded file", LONG);
    assert_eq!(d.stop(), 0);
    assert_eq!(table_rows(&sb.db(), "song_plays_by_session").len(), 356);
}

#[test]
fn a_file_whose_every_song_play_is_rejected_is_failed_not_loaded() {
    let sb = Sandbox::new();
    let dir = sb.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    // The real header; every song play has a session id that is not a number.
    let sample = String::from_utf8(sample_file("2018-11-05-events.csv")).unwrap();
    let mut lines = sample.lines();
    let header = lines.next().unwrap();
    let session = header.split(',').position(|c| c == "sessionId").unwrap();
    let mut bad = format!("{header}\n");
    let mut songs = 0;
    for line in lines.filter(|l| l.contains("NextSong")).take(20) {
        let mut fields = parse_line(line);
        fields[session] = "not-a-session".into();
        bad.push_str(&join_line(&fields));
        bad.push('\n');
        songs += 1;
    }
    std::fs::write(dir.join("all-bad.csv"), &bad).unwrap();
    // And a file of events that are not song plays at all: loaded, with nothing in it.
    std::fs::write(
        dir.join("no-songs.csv"),
        format!(
            "{header}\n{}\n",
            sample.lines().find(|l| l.contains(",Home,")).unwrap()
        ),
    )
    .unwrap();
    let out = sb.run(&["ingest", "in"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "every song play was rejected ({songs} of {songs} rows)"
        )),
        "{err}"
    );
    assert!(
        stdout(&out).contains("files      1 loaded, 1 failed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(ledger_count(&sb.db(), "failed"), 1);
    assert_eq!(ledger_count(&sb.db(), "loaded"), 1);
}

fn parse_line(line: &str) -> Vec<String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(line.as_bytes());
    r.records()
        .next()
        .unwrap()
        .unwrap()
        .iter()
        .map(String::from)
        .collect()
}

fn join_line(fields: &[String]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(fields).unwrap();
    String::from_utf8(w.into_inner().unwrap())
        .unwrap()
        .trim_end()
        .to_string()
}
