//! Settings and process edges, through the real binary: values that pass `config check` must
//! work, folders sparkify writes to cannot hide the watched one, signals and closed pipes end
//! commands as documented, and no client of the HTTP port can starve the probes.

mod util;

use std::time::Duration;

use util::*;

/// Values that once passed `config check` and then panicked, aborted or loaded nothing with
/// exit 0. Each is now refused before any work, by `config check` and by `ingest` alike,
/// naming the key, the value and the range; the store is never created.
#[test]
fn settings_that_cannot_work_are_refused_before_any_work() {
    let sb = Sandbox::new();
    let data = sb.copy_dir(&sample_dir(), "event_data");
    let folder = sb.join("a_folder");
    std::fs::create_dir(&folder).unwrap();
    let folder = folder.display().to_string();
    let cases: &[(&str, &str, &str)] = &[
        (
            "pipeline.chunk_rows",
            "18446744073709551615",
            "`pipeline.chunk_rows` is 18446744073709551615; expected an integer from 1 to 65536",
        ),
        (
            "pipeline.chunk_queue",
            "18446744073709551615",
            "`pipeline.chunk_queue` is 18446744073709551615; expected an integer from 1 to 1024",
        ),
        (
            "pipeline.file_queue",
            "18446744073709551615",
            "`pipeline.file_queue` is 18446744073709551615; expected an integer from 1 to 65536",
        ),
        (
            "embedded.busy_timeout_ms",
            "18446744073709551615",
            "`embedded.busy_timeout_ms` is 18446744073709551615; expected an integer from 0 to 3600000",
        ),
        (
            "extract.read_buffer_bytes",
            "18446744073709551615",
            "`extract.read_buffer_bytes` is 18446744073709551615; expected an integer from 4096 to 67108864",
        ),
        (
            "watch.rescan_secs",
            "18446744073709551615",
            "`watch.rescan_secs` is 18446744073709551615; expected an integer from 1 to 86400",
        ),
        (
            "watch.settle_ms",
            "18446744073709551615",
            "`watch.settle_ms` is 18446744073709551615; expected an integer from 0 to 3600000",
        ),
        (
            "pipeline.readers",
            "100000",
            "`pipeline.readers` is 100000; expected an integer from 1 to 64",
        ),
        ("embedded.path", "", "`embedded.path` is empty"),
        (
            "embedded.path",
            ":memory:",
            "`embedded.path` is \":memory:\"",
        ),
        ("embedded.path", &folder, "a folder"),
        // Matches no name: `ingest DIR` once read nothing and exited 0.
        (
            "watch.pattern",
            "",
            "`watch.pattern` is \"\"; expected a file-name glob such as *.csv",
        ),
        (
            "telemetry.log_level",
            "loud",
            "`telemetry.log_level` is \"loud\": \"loud\" is not a level",
        ),
    ];
    for (key, value, message) in cases {
        let set = format!("{key}={value}");
        for args in [
            vec!["--set", &set, "config", "check"],
            vec!["--set", &set, "ingest", data.to_str().unwrap()],
        ] {
            let out = sb.run(&args);
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{args:?}: {err}");
            assert!(err.contains(message), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
        }
        assert!(!sb.db().exists(), "{set}: the store was created");
    }
    // A TOML float is taken as an integer: `1e12` once aborted on a failed allocation.
    let file = sb.join("huge.toml");
    std::fs::write(&file, "[pipeline]\nchunk_rows = 1e12\n").unwrap();
    for args in [
        vec!["--config", file.to_str().unwrap(), "config", "check"],
        vec![
            "--config",
            file.to_str().unwrap(),
            "ingest",
            data.to_str().unwrap(),
        ],
    ] {
        let out = sb.run(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(
                "`pipeline.chunk_rows` is 1000000000000; expected an integer from 1 to 65536"
            ),
            "{}",
            stderr(&out)
        );
    }
    assert!(!sb.db().exists());
    // The same through the environment, which is how the unit sets them.
    let out = sb
        .cmd(&["config", "check"])
        .env("SPARKIFY_PIPELINE__CHUNK_ROWS", "18446744073709551615")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("expected an integer from 1 to 65536"));
    // The largest accepted values work: every play loaded, exit 0.
    let out = sb.run(&[
        "--set",
        "pipeline.chunk_rows=65536",
        "--set",
        "pipeline.file_queue=65536",
        "--set",
        "watch.rescan_secs=86400",
        "--set",
        "embedded.busy_timeout_ms=3600000",
        "ingest",
        "-q",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("files      30 loaded, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(table_rows(&sb.db(), "song_plays_by_session").len(), 6820);
}

/// A variable that is not UTF-8 once made every command panic (exit 101). Variables that are
/// not sparkify's are now never read; a sparkify setting that is not UTF-8 is refused by name.
#[test]
fn environment_variables_that_are_not_utf8_never_break_start_up() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    let data = sb.copy_dir(&sample_dir(), "event_data");
    let latin1 = std::ffi::OsStr::from_bytes(b"Bj\xf6rk");
    let data_arg = data.to_str().unwrap();
    for args in [
        vec!["config", "check"],
        vec!["config", "show"],
        vec!["schema"],
        vec!["validate", data_arg],
        vec!["ingest", "-q", data_arg],
        vec!["status"],
        vec!["query", "session", "338", "4"],
    ] {
        let out = sb
            .cmd(&args)
            .env("SOME_OTHER_TOOL", latin1)
            .env(std::ffi::OsStr::from_bytes(b"NAME_\xff"), "x")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    let out = sb.run(&["query", "session", "338", "4"]);
    assert!(stdout(&out).contains("Faithless"), "{}", stdout(&out));

    let out = sb
        .cmd(&["config", "check"])
        .env("SPARKIFY_CASSANDRA__USERNAME", latin1)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "sparkify: error: configuration: environment variable SPARKIFY_CASSANDRA__USERNAME is \
         not valid UTF-8 (its value); settings are text"
    );
    let out = sb
        .cmd(&["config", "check"])
        .env("RUST_LOG", latin1)
        .output()
        .unwrap();
    // `config check` does not log; a command that does refuses the filter.
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = sb
        .cmd(&["status"])
        .env("RUST_LOG", latin1)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("RUST_LOG"), "{}", stderr(&out));
}

/// Every range the program enforces is written next to its key in the shipped defaults file.
#[test]
fn every_range_is_documented_in_the_defaults_file() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let text = std::fs::read_to_string(file).unwrap();
    let mut section = String::new();
    let mut comment = Vec::new();
    let mut documented = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if line.starts_with('#') {
            comment.push(line.to_string());
            continue;
        } else if let Some((key, _)) = line.split_once(" = ") {
            documented.insert(format!("{section}.{key}"), comment.join("\n"));
        }
        comment.clear();
    }
    for (key, min, max) in sparkify::config::BOUNDS {
        if *key == "cassandra.datacenters" {
            assert!(text.contains(&format!("from {min} to {max}")));
            continue;
        }
        let doc = documented
            .get(*key)
            .unwrap_or_else(|| panic!("{key} is not in config/default.toml"));
        assert!(
            doc.contains(&format!("# Range: {min} to {max}.")),
            "{key}: {doc}"
        );
    }
}

/// A `done_dir`, `failed_dir` or `rejects.dir` that is the watched folder or holds it once
/// made the daemon load nothing, silently (sparkify never takes files from the folders it
/// writes to). `config check` and `run` refuse it, naming both paths; folders inside or beside
/// the watched one still work.
#[test]
fn a_folder_sparkify_writes_to_cannot_hold_the_watched_folder() {
    let sb = Sandbox::new();
    sb.copy_dir(&sample_dir(), "event_data");
    std::os::unix::fs::symlink(sb.join("event_data"), sb.join("inbox")).unwrap();
    let top = sb.path().display().to_string();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["watch.done_dir=."],
            "watch.done_dir",
            "contains the watched folder",
        ),
        (
            &["watch.failed_dir=event_data"],
            "watch.failed_dir",
            "is the watched folder",
        ),
        (
            &["watch.failed_dir=./event_data/sub/.."],
            "watch.failed_dir",
            "is the watched folder",
        ),
        (&[&format!("rejects.dir={top}")], "rejects.dir", "contains"),
        // Through a symlink: the watched folder is `inbox`, which leads to `event_data`.
        (
            &["watch.dir=inbox", "rejects.dir=event_data"],
            "rejects.dir",
            "is the watched folder",
        ),
    ];
    let watched = sb.join("event_data").canonicalize().unwrap();
    for (sets, key, what) in cases {
        let mut args: Vec<&str> = Vec::new();
        for s in sets.iter() {
            args.extend(["--set", s]);
        }
        if !sets.iter().any(|s| s.starts_with("watch.dir=")) {
            args.extend(["--set", "watch.dir=event_data"]);
        }
        for command in [&["config", "check"][..], &["run"][..]] {
            let mut full = args.clone();
            full.extend(command);
            let started = std::time::Instant::now();
            let out = sb.run(&full);
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{full:?}: {err}");
            assert!(started.elapsed() < Duration::from_secs(20));
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(what),
                "{full:?}: {err}"
            );
            assert!(
                err.contains(&format!("({})", watched.display())) && err.contains("`watch.dir`"),
                "{full:?}: both paths named: {err}"
            );
        }
    }
    // `run DIR` is checked the same way.
    let out = sb.run(&["--set", "rejects.dir=.", "run", "event_data"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("`rejects.dir`"), "{}", stderr(&out));
    assert!(!sb.db().exists(), "the daemon started");

    // Inside or beside the watched folder is fine.
    for sets in [
        ["watch.done_dir=event_data/done", "rejects.dir=rejects"],
        ["watch.done_dir=done", "rejects.dir=event_data/.rejects"],
    ] {
        let out = sb.run(&["--set", sets[0], "--set", sets[1], "config", "check"]);
        assert_eq!(code(&out), 0, "{sets:?}: {}", stderr(&out));
    }
    // And the daemon with the defaults beside the folder loads the sample.
    let daemon = Daemon::start(&sb, &[("SPARKIFY_WATCH__FAILED_DIR", "failed")]);
    wait_until("the sample is loaded", Duration::from_secs(60), || {
        ledger_count(&sb.db(), "loaded") == 30
    });
    assert_eq!(daemon.stop(), 0);
}

/// Runs `sparkify ARGS` with its standard output closed before it writes anything (what
/// `| head -1` does once it has its line): (exit code, standard error).
fn run_with_stdout_closed(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let mut child = sb
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (code(&out), stderr(&out))
}

/// `sparkify ingest … | head -1` once panicked on the broken pipe (exit 101, backtrace). A
/// closed standard output now ends every command quietly: `ingest` still loads everything and
/// exits with its usual code, `validate` with its verdict, the others with 0.
#[test]
fn a_closed_standard_output_ends_commands_quietly() {
    let sb = Sandbox::new();
    let data = sb.copy_dir(&sample_dir(), "event_data");
    let data = data.to_str().unwrap();
    let bad = sb.join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("no_columns.csv"), "foo,bar\n1,2\n").unwrap();
    let bad = bad.to_str().unwrap();

    let quiet = |args: &[&str], expected: i32| {
        let (code, err) = run_with_stdout_closed(&sb, args);
        assert_eq!(code, expected, "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("error"),
            "{args:?}: {err}"
        );
    };
    quiet(&["ingest", "-q", data], 0);
    assert_eq!(table_rows(&sb.db(), "song_plays_by_session").len(), 6820);
    assert_eq!(ledger_count(&sb.db(), "loaded"), 30);
    quiet(&["ingest", "-q", "--format", "json", bad], 1);
    quiet(&["validate", data], 0);
    quiet(&["validate", data, bad], 1);
    quiet(&["query", "session", "338", "4"], 0);
    quiet(&["query", "-f", "json", "user", "10", "182"], 0);
    quiet(&["status"], 0);
    quiet(&["status", "-f", "csv"], 0);
    quiet(&["status", "-f", "json"], 0);
    quiet(&["schema"], 0);
    quiet(&["config", "show"], 0);
    quiet(&["config", "check"], 0);
    quiet(&["extract", data], 0);

    // The real pipe, as a shell runs it: head gets its line, sparkify ends with 0.
    let bin = env!("CARGO_BIN_EXE_sparkify");
    for command in ["status", "extract event_data", "config show"] {
        let out = std::process::Command::new("bash")
            .current_dir(sb.path())
            .env("SPARKIFY_TELEMETRY__HTTP_ADDR", "")
            .arg("-c")
            .arg(format!(
                "{bin} {command} | head -1; exit ${{PIPESTATUS[0]}}"
            ))
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{command}: {}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 1, "{command}");
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

/// SIGHUP once killed the daemon at once, with no log line. It is now logged at INFO and
/// ignored: the daemon keeps loading and stops cleanly on SIGTERM.
#[test]
fn sighup_is_logged_and_ignored_by_the_daemon() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("event_data")).unwrap();
    let daemon = Daemon::start(&sb, &[]);
    daemon.wait_for_message("Store ready", Duration::from_secs(30));
    daemon.signal("HUP");
    daemon.signal("HUP");
    let message = "SIGHUP received and ignored: settings are read at start-up only; restart to \
                   apply changes";
    wait_until("two SIGHUP log lines", Duration::from_secs(10), || {
        daemon.messages(message).len() == 2
    });
    let line = &daemon.messages(message)[0];
    assert_eq!(line["level"], "INFO", "{line}");
    // Still loading after the hang-ups.
    let sample = sample_dir().join("2018-11-01-events.csv");
    drop_by_rename(
        &sb.join("event_data/2018-11-01-events.csv"),
        &std::fs::read(sample).unwrap(),
    );
    wait_until("the file is loaded", Duration::from_secs(30), || {
        ledger_count(&sb.db(), "loaded") == 1
    });
    assert_eq!(daemon.stop(), 0);
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits until the peer closes `s`; how long after `started` that was (None if still open
/// `limit` after it).
fn closed_within(
    s: &mut std::net::TcpStream,
    started: std::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// 3,000 idle and slowloris connections once stayed open for good, and 1,100 of them made
/// `/healthz` unreachable. Connections are now capped (`telemetry.http_max_connections`), a
/// newcomer takes the place of the oldest idle one, and a connection without a complete
/// request head within `http_header_timeout_ms`, or open longer than
/// `http_connection_timeout_ms`, is closed: a flood of silent clients can neither hold file
/// descriptors nor keep the probes out.
#[test]
fn the_metrics_port_cannot_be_starved_by_idle_or_slowloris_clients() {
    use std::io::Write;
    use std::net::TcpStream;
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("event_data")).unwrap();
    let daemon = Daemon::start(
        &sb,
        &[
            ("SPARKIFY_TELEMETRY__HTTP_ADDR", "127.0.0.1:0"),
            ("SPARKIFY_TELEMETRY__HTTP_MAX_CONNECTIONS", "16"),
            ("SPARKIFY_TELEMETRY__HTTP_HEADER_TIMEOUT_MS", "1000"),
            ("SPARKIFY_TELEMETRY__HTTP_CONNECTION_TIMEOUT_MS", "3000"),
        ],
    );
    let addr = daemon.http_addr();
    wait_until("ready", Duration::from_secs(30), || {
        http_get(&addr, "/readyz").0 == 200
    });
    let fds_before = open_fds(daemon.pid());

    // A flood: idle connections and slowloris ones (a header that never ends), far over the cap.
    let mut flood: Vec<TcpStream> = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 3 == 0 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a");
        }
        flood.push(s);
    }
    // The probes get through at once, every time, while the flood holds its sockets.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (status, body) = http_get(&addr, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest probe {slowest:?}"
    );
    let fds_during = open_fds(daemon.pid());
    assert!(
        fds_during <= fds_before + 16 + 2,
        "{fds_during} descriptors open during the flood, {fds_before} before"
    );
    // Every one of the flood's connections is closed: over the cap at once, the rest after
    // the header timeout.
    for (i, s) in flood.iter_mut().enumerate() {
        let closed = closed_within(s, std::time::Instant::now(), Duration::from_secs(5));
        assert!(closed.is_some(), "flood connection {i} still open");
    }

    // A sustained flood, a new silent connection every 2 ms, cannot keep probes out.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = TcpStream::connect(&addr) {
                    held.push_back(s);
                }
                if held.len() > 500 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut answered = 0;
    for _ in 0..30 {
        if http_get(&addr, "/healthz").0 == 200 {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooder.join().unwrap();
    assert_eq!(answered, 30, "probes answered during a sustained flood");

    // An idle connection, and a keep-alive one after its answer, close after the header
    // timeout (1 s).
    let opened = std::time::Instant::now();
    let mut idle = TcpStream::connect(&addr).unwrap();
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for s in [&mut idle, &mut kept] {
        let closed = closed_within(s, opened, Duration::from_secs(5)).expect("closed");
        assert!(
            closed > Duration::from_millis(700) && closed < Duration::from_millis(2500),
            "closed after {closed:?}"
        );
    }
    // A busy connection, asking every 200 ms, is closed once it has been open 3 s.
    let mut busy = TcpStream::connect(&addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let opened = std::time::Instant::now();
    let lifetime = loop {
        use std::io::Read;
        let mut buf = [0u8; 1024];
        let sent = busy.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        match (sent, busy.read(&mut buf)) {
            (Ok(()), Ok(n)) if n > 0 => {}
            _ => break opened.elapsed(),
        }
        assert!(opened.elapsed() < Duration::from_secs(10), "never closed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        lifetime > Duration::from_millis(2800) && lifetime < Duration::from_millis(4500),
        "busy connection closed after {lifetime:?}"
    );
    let page = http_get(&addr, "/metrics").1;
    assert!(
        page.lines().any(
            |l| l.starts_with("sparkify_http_connections_evicted_total ")
                && l.split(' ').nth(1).unwrap().parse::<f64>().unwrap() > 100.0
        ),
        "{page}"
    );
    assert_eq!(daemon.stop(), 0);
}
