//! The embedded store at its edges: a file that is not its own, a corrupt one, a read-only one,
//! and a full disk. The real binary on the real sample; full disks are real small `tmpfs`
//! mounts, made in a private mount namespace (`unshare`), so no root or cleanup is needed.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use util::http_get as get;
use util::*;

const LONG: Duration = Duration::from_secs(60);

/// sparkify's `PRAGMA application_id` ("SPKY").
const APPLICATION_ID: i64 = 0x5350_4B59;

fn sample_file(name: &str) -> PathBuf {
    sample_dir().join(name)
}

/// Every file of a folder with its bytes, to show that nothing in it changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

fn pragma(db: &Path, name: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

/// `sparkify ARGS` with the store at `db`.
fn run_on(sb: &Sandbox, db: &Path, args: &[&str]) -> Output {
    sb.cmd(args)
        .env("SPARKIFY_EMBEDDED__PATH", db)
        .output()
        .unwrap()
}

/// Waits for a child to exit, killing it (and failing) after `timeout`.
fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> (Output, Duration) {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), started.elapsed());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {timeout:?}\nstdout: {}\nstderr: {}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled metric on the daemon's `/metrics` page.
fn metric(addr: &str, name: &str) -> Option<f64> {
    let (_, page) = get(addr, "/metrics");
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// A database that is not sparkify's.

#[test]
fn a_foreign_or_mismatched_database_is_refused_with_exit_3_and_left_untouched() {
    let sb = Sandbox::new();
    // What each file is made with, and what the refusal must name.
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "other_app",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO users VALUES (1, 'ada');",
            &["belongs to another application", "tables: users"],
        ),
        (
            "other_app_id",
            "PRAGMA application_id = 42; CREATE TABLE song_plays_by_session (x);",
            &["application_id is 0x0000002a", "0x53504b59"],
        ),
        (
            "other_version",
            "PRAGMA user_version = 7; CREATE TABLE listeners_by_song (song TEXT);",
            &["belongs to another application", "user_version 7"],
        ),
        (
            "other_columns",
            &format!(
                "{}; DROP TABLE song_plays_by_session;
                 CREATE TABLE song_plays_by_session (sessionid INTEGER NOT NULL,
                   iteminsession INTEGER NOT NULL, artist TEXT NOT NULL, title TEXT NOT NULL,
                   length TEXT NOT NULL, PRIMARY KEY (sessionid, iteminsession)) WITHOUT ROWID;
                 PRAGMA user_version = 1;",
                sparkify::store::embedded::SCHEMA_SQL
            ),
            &[
                "song_plays_by_session has no column song",
                "song_plays_by_session has a column title",
                "song_plays_by_session.length is TEXT NOT NULL, not REAL NOT NULL",
            ],
        ),
        (
            "other_key",
            &format!(
                "{}; DROP TABLE listeners_by_song;
                 CREATE TABLE listeners_by_song (song TEXT NOT NULL, userid INTEGER NOT NULL,
                   firstname TEXT NOT NULL, lastname TEXT NOT NULL,
                   PRIMARY KEY (userid, song)) WITHOUT ROWID;
                 PRAGMA user_version = 1;",
                sparkify::store::embedded::SCHEMA_SQL
            ),
            &["listeners_by_song's primary key is (userid, song), not (song, userid)"],
        ),
    ];
    for (name, sql, expected) in cases {
        let dir = sb.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("plays.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let before = snapshot(&dir);
        let out = run_on(
            &sb,
            &db,
            &[
                "ingest",
                sample_file("2018-11-01-events.csv").to_str().unwrap(),
            ],
        );
        let err = stderr(&out);
        assert_eq!(code(&out), 3, "{name}: {err}");
        for e in *expected {
            assert!(err.contains(e), "{name}: {e:?} not in {err}");
        }
        assert!(err.contains("it was left as it is"), "{name}: {err}");
        assert_eq!(snapshot(&dir), before, "{name}: the folder changed");
    }
}

#[test]
fn a_file_that_is_not_sqlite_makes_the_daemon_and_ingest_exit_3() {
    let sb = Sandbox::new();
    let db = sb.join("sparkify.db");
    let text = b"artist,auth,firstName\nnot a database\n";
    std::fs::write(&db, text).unwrap();
    std::fs::create_dir_all(sb.join("event_data")).unwrap();

    // The daemon used to take this for an outage and retry for ever.
    let d = Daemon::start(&sb, &[]);
    let (exit, took, logs) = d.wait(Duration::from_secs(20));
    assert_eq!(exit, Some(3), "{logs:#?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let said: Vec<&str> = logs.iter().filter_map(|l| l["unparsed"].as_str()).collect();
    assert!(
        said.iter().any(|l| l.starts_with("sparkify: error: ")
            && l.contains(
                r#"sparkify.db is not a SQLite database (it begins with "artist,auth,firs")"#
            )),
        "{logs:#?}"
    );

    let out = sb.run(&[
        "ingest",
        sample_file("2018-11-01-events.csv").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a SQLite database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&db).unwrap(), text);
}

/// Overwrites every page of the database but the first (the schema) with junk.
fn corrupt_pages(db: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(db).unwrap().len();
    let page = pragma(db, "page_size") as u64;
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(page)).unwrap();
    let junk: Vec<u8> = (0..len - page).map(|i| (i * 7 + 3) as u8).collect();
    f.write_all(&junk).unwrap();
}

#[test]
fn a_corrupt_database_is_a_store_failure_exit_3_not_a_data_problem() {
    let sb = Sandbox::new();
    let out = sb.run(&["ingest", "--quiet", sample_dir().to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    corrupt_pages(&sb.db());

    let out = sb.run(&[
        "ingest",
        "--force",
        sample_file("2018-11-01-events.csv").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("the database is corrupt"), "{err}");
    assert!(!err.contains("\nfailed "), "no file is blamed: {err}");

    let out = sb.run(&["query", "session", "338", "4"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the database is corrupt"),
        "{}",
        stderr(&out)
    );

    // The daemon stops with 3 at the first corrupt page it meets, instead of failing file
    // after file.
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", LONG);
    drop_by_rename(
        &sb.join("event_data/2018-11-05-events.csv"),
        &std::fs::read(sample_file("2018-11-05-events.csv")).unwrap(),
    );
    let (exit, _, logs) = d.wait(LONG);
    assert_eq!(exit, Some(3), "{logs:#?}");
    assert!(
        logs.iter().all(|l| l["message"] != "File failed"),
        "{logs:#?}"
    );
}

#[test]
fn query_and_status_work_on_a_read_only_database_and_a_read_only_copy() {
    let sb = Sandbox::new();
    let data = sb.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("sparkify.db");
    let out = run_on(
        &sb,
        &db,
        &["ingest", "--quiet", sample_dir().to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let copy_dir = sb.join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let copy = copy_dir.join("plays.db");
    std::fs::copy(&db, &copy).unwrap();

    use std::os::unix::fs::PermissionsExt;
    for (file, dir) in [(&db, &data), (&copy, &copy_dir)] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let before = snapshot(dir);
        // In a user namespace of its own even root has no power over these permissions.
        let as_reader = |args: &[&str]| {
            let inner = {
                let mut c = sb.cmd(args);
                c.env("SPARKIFY_EMBEDDED__PATH", file);
                c
            };
            let mut outer = Command::new("unshare");
            outer.arg("--user");
            let mut c = under(outer, &inner);
            c.current_dir(sb.path());
            c.output().unwrap()
        };
        // The permissions hold: a load cannot write here.
        let out = as_reader(&[
            "ingest",
            sample_file("2018-11-01-events.csv").to_str().unwrap(),
        ]);
        assert_eq!(code(&out), 3, "{}", stderr(&out));

        let out = as_reader(&["query", "session", "338", "4", "--format", "csv"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "artist,song,length\nFaithless,Music Matters (Mark Knight Dub),495.3073\n"
        );
        let out = as_reader(&["status", "--format", "json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(entries.len(), 30);
        assert!(entries.iter().all(|e| e["status"] == "loaded"));
        assert_eq!(snapshot(dir), before, "{} changed", dir.display());
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_missing_or_empty_file_is_created_as_sparkifys_and_an_older_unmarked_one_is_adopted() {
    let sb = Sandbox::new();
    let one = sample_file("2018-11-01-events.csv");
    let want = clean_run_tables(&sample_dir().join("2018-11-01-events.csv"));
    for case in ["missing", "empty", "unmarked"] {
        let db = sb.join(&format!("{case}.db"));
        match case {
            "empty" => std::fs::write(&db, b"").unwrap(),
            // What sparkify made before it marked its files.
            "unmarked" => rusqlite::Connection::open(&db)
                .unwrap()
                .execute_batch(&format!(
                    "PRAGMA journal_mode = WAL; {} PRAGMA user_version = 1;",
                    sparkify::store::embedded::SCHEMA_SQL
                ))
                .unwrap(),
            _ => {}
        }
        let out = run_on(&sb, &db, &["ingest", "--quiet", one.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{case}: {}", stderr(&out));
        assert_eq!(pragma(&db, "application_id"), APPLICATION_ID, "{case}");
        // Schema version 2: the ledger records codec and decompressed size.
        assert_eq!(pragma(&db, "user_version"), 2, "{case}");
        assert_tables_eq(&all_tables(&db), &want, case);
    }
}

// ---------------------------------------------------------------------------------------------
// A full disk.

#[test]
fn ingest_on_a_full_disk_gives_up_after_give_up_secs_with_exit_3() {
    let sb = Sandbox::new();
    let store = sb.join("store");
    let mut inner = sb.cmd(&["ingest", sample_dir().to_str().unwrap()]);
    inner
        .env("SPARKIFY_EMBEDDED__PATH", store.join("sparkify.db"))
        .env("SPARKIFY_STORE__GIVE_UP_SECS", "2");
    // Room for the new database's tables, not for the sample's rows.
    let child = on_small_disk(inner, &store, 512, false)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (out, took) = wait_with_timeout(child, LONG);
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        err.contains("Write to the embedded store failed; retrying")
            && err.contains("the disk is full (database or disk is full)"),
        "{err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("sparkify: error: cannot use the store (embedded ")
            && err.contains(
                "the disk is full (database or disk is full); gave up after 2 s of retrying \
             (store.give_up_secs)"
            ),
        "{err}"
    );
    // Every file is accounted for, and none as failed: the data was not at fault.
    let summary = stdout(&out);
    let files = summary.lines().next().unwrap();
    let count = |what: &str| -> u64 {
        files
            .split(", ")
            .find_map(|p| p.trim_start_matches("files").trim().strip_suffix(what))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    assert_eq!(count("failed"), 0, "{files}");
    assert!(count("abandoned") >= 1, "{files}");
    assert_eq!(count("loaded") + count("abandoned"), 30, "{files}");
}

#[test]
fn sparkify_store_up_is_0_from_start_up_when_the_store_cannot_be_opened() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("event_data")).unwrap();
    let (d, addr) = daemon_on_small_disk(&sb, 4096, true);
    wait_until("a failed open", LONG, || {
        !d.messages("Store unreachable; retrying").is_empty()
    });
    assert_eq!(metric(&addr, "sparkify_store_up"), Some(0.0));
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the disk is full"), "{body}");
    let said = format!("{:?}", d.messages("Store unreachable; retrying"));
    assert!(said.contains("the disk is full"), "{said}");

    // Space comes back: the store opens, the gauge says so.
    in_namespace_of(
        d.pid(),
        &format!("rm {}", sb.join("store/filler").display()),
    );
    wait_until("ready", LONG, || get(&addr, "/readyz").0 == 200);
    assert_eq!(metric(&addr, "sparkify_store_up"), Some(1.0));
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_daemon_whose_writes_fail_on_a_full_disk_is_not_ready_and_resumes_when_space_returns() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("event_data")).unwrap();
    let (d, addr) = daemon_on_small_disk(&sb, 4096, false);
    d.wait_for_message("Watching folder", LONG);
    wait_until("ready", LONG, || get(&addr, "/readyz").0 == 200);
    assert_eq!(metric(&addr, "sparkify_store_up"), Some(1.0));

    let filler = sb.join("store/filler");
    in_namespace_of(
        d.pid(),
        &format!("cat /dev/zero > {} 2>/dev/null || true", filler.display()),
    );
    let name = "2018-11-05-events.csv";
    drop_by_rename(
        &sb.join("event_data").join(name),
        &std::fs::read(sample_file(name)).unwrap(),
    );
    wait_until("a failed write", LONG, || {
        !d.messages("Write to the embedded store failed; retrying")
            .is_empty()
    });
    // Reads still answer, but the store is not usable: not ready, and the gauge says down.
    wait_until("not ready", LONG, || get(&addr, "/readyz").0 == 503);
    let (_, body) = get(&addr, "/readyz");
    assert!(body.contains("the disk is full"), "{body}");
    assert_eq!(metric(&addr, "sparkify_store_up"), Some(0.0));
    assert_eq!(get(&addr, "/healthz").0, 200, "alive all the same");
    assert!(d.messages("Loaded file").is_empty());

    in_namespace_of(d.pid(), &format!("rm {}", filler.display()));
    d.wait_for_message("Loaded file", LONG);
    wait_until("ready again", LONG, || get(&addr, "/readyz").0 == 200);
    assert_eq!(metric(&addr, "sparkify_store_up"), Some(1.0));

    // The tables are what one clean load of the file gives.
    let out_dir = sb.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    in_namespace_of(
        d.pid(),
        &format!(
            "cp {}/sparkify.db* {}/",
            sb.join("store").display(),
            out_dir.display()
        ),
    );
    assert_tables_eq(
        &all_tables(&out_dir.join("sparkify.db")),
        &clean_run_tables(&sample_file(name)),
        "after the disk filled and emptied",
    );
    assert_eq!(d.stop(), 0);
}
