//! The daemon as users run it: the real binary watching a folder in a sandbox, files dropped
//! the ways producers drop them, signals and crashes, and the tables checked against what one
//! clean `ingest` of the same files produces.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::*;

const LONG: Duration = Duration::from_secs(60);

fn sample_bytes(name: &str) -> Vec<u8> {
    std::fs::read(sample_dir().join(name)).unwrap()
}

fn table_len(db: &Path, table: &str) -> usize {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as usize)
    .unwrap_or(0)
}

#[test]
fn backfill_loads_every_file_present_at_start() {
    let sb = Sandbox::new();
    sb.copy_dir(&sample_dir(), "event_data");
    let d = Daemon::start(&sb, &[]);
    wait_until("30 files ledgered", LONG, || {
        ledger_count(&sb.db(), "loaded") == 30
    });
    assert_eq!(d.stop(), 0);
    assert_tables_eq(
        &all_tables(&sb.db()),
        &clean_run_tables(&sample_dir()),
        "backfill",
    );
    let out = sb.run(&["query", "session", "338", "4", "--format", "csv"]);
    assert_eq!(
        stdout(&out),
        "artist,song,length\nFaithless,Music Matters (Mark Knight Dub),495.3073\n"
    );
}

#[test]
fn files_dropped_by_rename_and_into_subfolders_are_loaded() {
    let sb = Sandbox::new();
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", LONG);
    drop_by_rename(
        &sb.join("event_data/2018-11-05-events.csv"),
        &sample_bytes("2018-11-05-events.csv"),
    );
    wait_until("first file", LONG, || ledger_count(&sb.db(), "loaded") == 1);
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 356);

    // A file in a folder created after start.
    drop_by_rename(
        &sb.join("event_data/2018/11/2018-11-06-events.csv"),
        &sample_bytes("2018-11-06-events.csv"),
    );
    // A whole folder of files renamed into the watched folder at once.
    let staging = sb.join("staging/batch");
    std::fs::create_dir_all(&staging).unwrap();
    for name in ["2018-11-07-events.csv", "2018-11-08-events.csv"] {
        std::fs::write(staging.join(name), sample_bytes(name)).unwrap();
    }
    std::fs::rename(&staging, sb.join("event_data/batch")).unwrap();
    wait_until("four files", LONG, || ledger_count(&sb.db(), "loaded") == 4);
    assert_eq!(
        table_len(&sb.db(), "song_plays_by_session"),
        356 + 154 + 174 + 161
    );
    // Temporary names are never taken.
    std::fs::write(
        sb.join("event_data/.hidden.csv"),
        sample_bytes("2018-11-09-events.csv"),
    )
    .unwrap();
    std::fs::write(
        sb.join("event_data/x.csv.part"),
        sample_bytes("2018-11-10-events.csv"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(ledger_count(&sb.db(), "loaded"), 4);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_slow_writer_is_never_read_half_way() {
    let sb = Sandbox::new();
    let d = Daemon::start(&sb, &[("SPARKIFY_WATCH__SETTLE_MS", "2000")]);
    d.wait_for_message("Watching folder", LONG);
    let bytes = sample_bytes("2018-11-15-events.csv");
    let path = sb.join("event_data/2018-11-15-events.csv");
    let started = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        let pieces = 12;
        let size = bytes.len().div_ceil(pieces);
        for piece in bytes.chunks(size) {
            f.write_all(piece).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                ledger_count(&sb.db(), "loaded"),
                0,
                "taken while still being written"
            );
            assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 0);
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    wait_until("the file", LONG, || ledger_count(&sb.db(), "loaded") == 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.stop(), 0);
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 479);
    assert_eq!(
        table_rows(&sb.db(), "ingest_ledger").len(),
        1,
        "loaded once"
    );
}

#[test]
fn a_hundred_files_dropped_at_once() {
    let sb = Sandbox::new();
    let staging = sb.join("staging");
    let out = sb.run(&[
        "generate", "--rows", "20000", "--files", "100", "--seed", "3", "staging",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let expected = clean_run_tables(&staging);
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", LONG);
    std::fs::create_dir_all(sb.join("event_data")).unwrap();
    for e in std::fs::read_dir(&staging).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), sb.join("event_data").join(e.file_name())).unwrap();
    }
    wait_until("100 files", LONG, || {
        ledger_count(&sb.db(), "loaded") == 100
    });
    assert_eq!(d.stop(), 0);
    assert_tables_eq(&all_tables(&sb.db()), &expected, "after restart");
}

#[test]
fn restart_reloads_nothing_but_changed_content() {
    let sb = Sandbox::new();
    sb.copy_dir(&sample_dir(), "event_data");
    let d = Daemon::start(&sb, &[]);
    wait_until("30 files", LONG, || ledger_count(&sb.db(), "loaded") == 30);
    assert_eq!(d.stop(), 0);
    let tables = all_tables(&sb.db());
    let ledger = table_rows(&sb.db(), "ingest_ledger");

    // Restart: every file is recognised by content; nothing is written.
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", LONG);
    wait_until("30 duplicates", LONG, || {
        d.messages("Skipped file: same content already loaded")
            .len()
            == 30
    });
    // Same bytes under a new name: not reloaded.
    drop_by_rename(
        &sb.join("event_data/copy-of-01.csv"),
        &sample_bytes("2018-11-01-events.csv"),
    );
    wait_until("the copy seen", LONG, || {
        d.messages("Skipped file: same content already loaded")
            .len()
            == 31
    });
    assert!(d.messages("Loaded file").is_empty());
    assert_eq!(table_rows(&sb.db(), "ingest_ledger"), ledger);
    assert_eq!(all_tables(&sb.db()), tables);

    // Changed content: loaded again, with the new row.
    let mut changed = sample_bytes("2018-11-01-events.csv");
    changed.extend_from_slice(
        b"Extra Artist,Logged In,Ann,F,0,Lee,100.5,free,\"Lansing, MI\",PUT,NextSong,1.54E+12,999999,Extra Song,200,1.54E+12,7\r\n",
    );
    drop_by_rename(&sb.join("event_data/2018-11-01-events.csv"), &changed);
    wait_until("the changed file", LONG, || {
        ledger_count(&sb.db(), "loaded") == 31
    });
    // The log line follows the ledger entry by a moment.
    wait_until("its log line", LONG, || {
        !d.messages("Loaded file").is_empty()
    });
    assert_eq!(d.messages("Loaded file").len(), 1);
    assert_eq!(d.stop(), 0);
    let out = sb.run(&["query", "session", "999999", "0", "--format", "csv"]);
    assert_eq!(
        stdout(&out),
        "artist,song,length\nExtra Artist,Extra Song,100.5\n"
    );
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 6821);
}

#[test]
fn a_file_deleted_before_it_is_read_gives_one_warning() {
    let sb = Sandbox::new();
    // One reader, busy with a big file, so the second file waits in the queue.
    let out = sb.run(&[
        "generate", "--rows", "150000", "--files", "1", "--seed", "9", "big",
    ]);
    assert_eq!(code(&out), 0);
    let d = Daemon::start(&sb, &[("SPARKIFY_PIPELINE__READERS", "1")]);
    d.wait_for_message("Watching folder", LONG);
    std::fs::create_dir_all(sb.join("event_data")).unwrap();
    std::fs::rename(
        sb.join("big/2018-11-01-events.csv"),
        sb.join("event_data/big.csv"),
    )
    .unwrap();
    drop_by_rename(
        &sb.join("event_data/gone.csv"),
        &sample_bytes("2018-11-02-events.csv"),
    );
    wait_until("both taken", LONG, || d.messages("Taking file").len() == 2);
    std::fs::remove_file(sb.join("event_data/gone.csv")).unwrap();
    wait_until("big file", LONG, || ledger_count(&sb.db(), "loaded") == 1);
    wait_until("the warning", LONG, || {
        !d.messages("File disappeared before it could be read")
            .is_empty()
    });
    // Still working.
    drop_by_rename(
        &sb.join("event_data/after.csv"),
        &sample_bytes("2018-11-03-events.csv"),
    );
    wait_until("next file", LONG, || ledger_count(&sb.db(), "loaded") == 2);
    assert_eq!(
        d.messages("File disappeared before it could be read").len(),
        1
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn after_ingest_move_and_delete_and_failed_dir() {
    let sb = Sandbox::new();
    let d = Daemon::start(
        &sb,
        &[
            ("SPARKIFY_WATCH__AFTER_INGEST", "move"),
            ("SPARKIFY_WATCH__DONE_DIR", "event_data/done"),
            ("SPARKIFY_WATCH__FAILED_DIR", "failed"),
        ],
    );
    d.wait_for_message("Watching folder", LONG);
    drop_by_rename(
        &sb.join("event_data/sub/a.csv"),
        &sample_bytes("2018-11-01-events.csv"),
    );
    drop_by_rename(&sb.join("event_data/bad.csv"), b"artist,song\nA,B\n");
    wait_until("moved", LONG, || {
        sb.join("event_data/done/sub/a.csv").exists()
    });
    wait_until("failed moved", LONG, || sb.join("failed/bad.csv").exists());
    assert!(!sb.join("event_data/sub/a.csv").exists());
    assert!(!sb.join("event_data/bad.csv").exists());
    assert_eq!(ledger_count(&sb.db(), "loaded"), 1);
    assert_eq!(ledger_count(&sb.db(), "failed"), 1);
    let failed = d.messages("File failed");
    assert!(failed[0]["reason"].as_str().unwrap().contains(
        "lacks required column(s) length, sessionId, itemInSession, userId, firstName, lastName"
    ));
    // The done folder is inside the watched one, yet never read back.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.messages("Taking file").len(), 2);
    assert_eq!(d.stop(), 0);

    let sb = Sandbox::new();
    let d = Daemon::start(&sb, &[("SPARKIFY_WATCH__AFTER_INGEST", "delete")]);
    d.wait_for_message("Watching folder", LONG);
    drop_by_rename(
        &sb.join("event_data/a.csv"),
        &sample_bytes("2018-11-01-events.csv"),
    );
    wait_until("deleted", LONG, || !sb.join("event_data/a.csv").exists());
    assert_eq!(ledger_count(&sb.db(), "loaded"), 1);
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 11);
    assert_eq!(d.stop(), 0);
}

#[test]
fn sigterm_during_a_large_load_exits_cleanly_and_a_restart_completes_it() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "generate",
        "--rows",
        "300000",
        "--files",
        "3",
        "--seed",
        "5",
        "event_data",
    ]);
    assert_eq!(code(&out), 0);
    let expected = clean_run_tables(&sb.join("event_data"));
    let d = Daemon::start(&sb, &[("SPARKIFY_EMBEDDED__TRANSACTION_ROWS", "20000")]);
    wait_until("some rows written", LONG, || {
        table_len(&sb.db(), "song_plays_by_session") > 0
    });
    d.signal("TERM");
    let (code, took, logs) = d.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(
        ledger_count(&sb.db(), "loaded") < 3,
        "stopped before the end"
    );

    let d = Daemon::start(&sb, &[]);
    wait_until("all three files", LONG, || {
        ledger_count(&sb.db(), "loaded") == 3
    });
    assert_eq!(d.stop(), 0);
    assert_tables_eq(&all_tables(&sb.db()), &expected, "after restart");
}

/// Trials of `kill -9` at moments spread over a multi-file load; 10 by default,
/// `SPARKIFY_CRASH_TRIALS` for more.
#[test]
fn kill_9_at_any_moment_then_restart_gives_the_clean_tables() {
    let trials: u64 = std::env::var("SPARKIFY_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let data = Sandbox::new();
    // Sessions numbered past the sample's, so every play has a key of its own and the result
    // does not depend on the order files are written in.
    let out = data.run(&[
        "generate",
        "--rows",
        "60000",
        "--files",
        "6",
        "--seed",
        "11",
        "--first-session",
        "100000",
        "gen",
    ]);
    assert_eq!(code(&out), 0);
    let inputs = data.join("gen");
    for e in std::fs::read_dir(sample_dir()).unwrap() {
        let e = e.unwrap();
        let name = format!("sample-{}", e.file_name().to_string_lossy());
        std::fs::copy(e.path(), inputs.join(name)).unwrap();
    }
    let files = std::fs::read_dir(&inputs).unwrap().count();
    let expected = clean_run_tables(&inputs);
    // How long a whole load takes here, so the kills can be spread over it.
    let load_time = {
        let sb = Sandbox::new();
        sb.copy_dir(&inputs, "event_data");
        let t0 = Instant::now();
        let d = Daemon::start(&sb, &[("SPARKIFY_EMBEDDED__TRANSACTION_ROWS", "5000")]);
        wait_until("every file", LONG, || {
            ledger_count(&sb.db(), "loaded") == files
        });
        let t = t0.elapsed();
        assert_eq!(d.stop(), 0);
        t
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("crash trials: seed {seed}, a whole load takes {load_time:?}");
    for trial in 0..trials {
        let sb = Sandbox::new();
        sb.copy_dir(&inputs, "event_data");
        // Spread the kills over the load: the trial's slot plus a seeded random offset.
        let jitter = (seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(trial * 1442695040888963407)
            >> 33)
            % 150;
        let delay = Duration::from_millis(trial * 120 + jitter);
        let d = Daemon::start(&sb, &[("SPARKIFY_EMBEDDED__TRANSACTION_ROWS", "5000")]);
        std::thread::sleep(delay);
        d.signal("KILL");
        let (code, _, _) = d.wait(Duration::from_secs(10));
        assert_eq!(code, None, "trial {trial}: killed by the signal");
        let loaded_at_kill = ledger_count(&sb.db(), "loaded");

        let d = Daemon::start(&sb, &[]);
        d.wait_for_message("Watching folder", LONG);
        wait_until("every file", LONG, || {
            ledger_count(&sb.db(), "loaded") == files
        });
        assert_eq!(d.stop(), 0);
        let ledger = table_rows(&sb.db(), "ingest_ledger");
        assert_eq!(
            ledger.len(),
            files,
            "trial {trial}: each file ledgered once"
        );
        assert_tables_eq(
            &all_tables(&sb.db()),
            &expected,
            &format!("trial {trial}: killed after {delay:?} with {loaded_at_kill} files ledgered"),
        );
        println!(
            "trial {trial}: kill -9 after {delay:?}, {loaded_at_kill}/{files} files ledgered at the kill; tables equal a clean run"
        );
    }
}

#[test]
fn systemd_notifications() {
    use std::os::unix::net::UnixDatagram;
    let sb = Sandbox::new();
    sb.copy_dir(&sample_dir(), "event_data");
    let socket_path = sb.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let d = Daemon::start(
        &sb,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let started = Instant::now();
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        assert!(started.elapsed() < LONG, "{seen:?}");
        let n = socket.recv(&mut buf).unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    d.signal("TERM");
    loop {
        let n = socket.recv(&mut buf).unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.contains("STOPPING=1") {
            break;
        }
    }
    let (code, _, _) = d.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

/// The file with every event moved to session `session` (CRLF kept).
fn with_session(file: &[u8], session: i64) -> Vec<u8> {
    let mut r = csv::Reader::from_reader(file);
    let header = r.headers().unwrap().clone();
    let col = header.iter().position(|h| h == "sessionId").unwrap();
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(&header).unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        let fields: Vec<String> = rec
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == col {
                    session.to_string()
                } else {
                    f.to_string()
                }
            })
            .collect();
        w.write_record(&fields).unwrap();
    }
    w.into_inner().unwrap()
}

#[test]
fn latency_from_rename_to_queryable() {
    let sb = Sandbox::new();
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", LONG);
    let template = sample_bytes("2018-11-01-events.csv");
    let conn_path = sb.db();
    // Moved to one session, plays that shared an item number become one row.
    let expected_rows = {
        let mut r = csv::Reader::from_reader(template.as_slice());
        let h = r.headers().unwrap().clone();
        let page = h.iter().position(|x| x == "page").unwrap();
        let item = h.iter().position(|x| x == "itemInSession").unwrap();
        r.records()
            .map(|x| x.unwrap())
            .filter(|x| &x[page] == "NextSong")
            .map(|x| x[item].to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as i64
    };
    let drops: i64 = 50;
    let mut latencies = Vec::new();
    for i in 0..drops {
        // A distinct session per drop, so each drop is new content with its own key.
        let session: i64 = 500_000 + i;
        let body = with_session(&template, session);
        let t0 = Instant::now();
        drop_by_rename(&sb.join(&format!("event_data/drop-{i}.csv")), &body);
        wait_until("queryable", LONG, || {
            let Ok(c) = rusqlite::Connection::open_with_flags(
                &conn_path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            ) else {
                return false;
            };
            c.query_row(
                "SELECT count(*) FROM song_plays_by_session WHERE sessionid = ?1",
                [session],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n == expected_rows)
            .unwrap_or(false)
        });
        latencies.push(t0.elapsed());
    }
    assert_eq!(d.stop(), 0);
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    println!(
        "latency over {drops} drops (debug build): p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.last().unwrap()
    );
    // The target (p99 under 1 s in events mode) is tracked by the benchmark; here a loose
    // bound only guards against a file waiting for the settle time or a rescan.
    assert!(
        p50 < Duration::from_millis(400),
        "p50 {p50:?}: waited for settle or rescan?"
    );
}

#[test]
fn poll_mode_takes_settled_files() {
    let sb = Sandbox::new();
    let d = Daemon::start(
        &sb,
        &[
            ("SPARKIFY_WATCH__MODE", "poll"),
            ("SPARKIFY_WATCH__POLL_INTERVAL_MS", "100"),
            ("SPARKIFY_WATCH__SETTLE_MS", "500"),
        ],
    );
    d.wait_for_message("Watching folder", LONG);
    // Written in place, as a network copy would: no rename, and poll mode sees no close.
    std::fs::create_dir_all(sb.join("event_data/nfs")).unwrap();
    std::fs::write(
        sb.join("event_data/nfs/2018-11-20-events.csv"),
        sample_bytes("2018-11-20-events.csv"),
    )
    .unwrap();
    wait_until("loaded", LONG, || ledger_count(&sb.db(), "loaded") == 1);
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 322);
    assert_eq!(d.stop(), 0);
}

/// A daemon waiting `busy_timeout_ms` for SQLite's lock, another connection holding the write
/// lock (an analyst's long transaction, a backup tool), and a file dropped meanwhile. The
/// connection is returned so the test can let go of the lock.
fn daemon_facing_a_locked_database(
    sb: &Sandbox,
    busy_timeout_ms: &str,
) -> (Daemon, rusqlite::Connection) {
    let d = Daemon::start(
        sb,
        &[("SPARKIFY_EMBEDDED__BUSY_TIMEOUT_MS", busy_timeout_ms)],
    );
    d.wait_for_message("Watching folder", LONG);
    let blocker = rusqlite::Connection::open(sb.db()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    drop_by_rename(
        &sb.join("event_data/2018-11-05-events.csv"),
        &sample_bytes("2018-11-05-events.csv"),
    );
    (d, blocker)
}

#[test]
fn a_locked_database_pauses_loading_and_sigterm_abandons_cleanly() {
    let sb = Sandbox::new();
    let (d, blocker) = daemon_facing_a_locked_database(&sb, "300");
    wait_until("the writer retrying", LONG, || {
        !d.messages("Write to the embedded store failed; retrying")
            .is_empty()
    });
    assert_eq!(ledger_count(&sb.db(), "loaded"), 0);
    // The lock goes away: the same rows load by themselves, nothing lost.
    blocker.execute_batch("ROLLBACK").unwrap();
    wait_until("loaded after the lock", LONG, || {
        ledger_count(&sb.db(), "loaded") == 1
    });
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 356);

    // Locked again, with a file waiting: SIGTERM abandons the write that cannot finish and
    // exits 0 at once, without ledgering the file; the next start loads it.
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    drop_by_rename(
        &sb.join("event_data/2018-11-06-events.csv"),
        &sample_bytes("2018-11-06-events.csv"),
    );
    wait_until("the writer retrying again", LONG, || {
        d.messages("Write to the embedded store failed; retrying")
            .len()
            >= 2
    });
    d.signal("TERM");
    let (code, took, _) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "{took:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        ledger_count(&sb.db(), "loaded"),
        1,
        "the unfinished file is not ledgered"
    );
    let d = Daemon::start(&sb, &[]);
    wait_until("loaded on restart", LONG, || {
        ledger_count(&sb.db(), "loaded") == 2
    });
    assert_eq!(d.stop(), 0);
    assert_eq!(table_len(&sb.db(), "song_plays_by_session"), 356 + 154);
}

#[test]
fn a_second_signal_exits_at_once() {
    let sb = Sandbox::new();
    // A write stuck inside SQLite's lock wait cannot be abandoned: the first SIGTERM waits
    // for it (up to the shutdown timeout); the second one ends the process.
    let (d, blocker) = daemon_facing_a_locked_database(&sb, "30000");
    d.wait_for_message("Taking file", LONG);
    std::thread::sleep(Duration::from_millis(500));
    d.signal("TERM");
    d.wait_for_message(
        "Shutting down: no new files; finishing in-flight writes",
        LONG,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d.log_lines().iter().all(|l| l["message"] != "Stopped"),
        "still finishing"
    );
    d.signal("TERM");
    let (code, took, _) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(130));
    assert!(took < Duration::from_secs(2), "{took:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(ledger_count(&sb.db(), "loaded"), 0);
}
