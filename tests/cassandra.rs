//! The Cassandra store against an in-process CQL emulator (`kassandra-tester`), through the
//! real `scylla` driver and, where it matters, the real `sparkify` binary.
//!
//! What the emulator cannot show (several nodes, replication, real latencies, TLS, compression,
//! authentication) is listed in the README's cluster section; the fault tests are in
//! `cassandra_faults.rs`.

#[path = "common/cql.rs"]
mod cql;

use std::collections::BTreeSet;
use std::sync::Arc;

use cql::{Emulator, Sandbox, assert_same, reference, sample_dir, text};
use sparkify::store::{CassandraStore, EmbeddedStore, TABLES, WriteStats};
use tokio_util::sync::CancellationToken;

/// Loads the real sample with `sparkify ingest`, then checks every row of every table and the
/// ledger against the embedded store loaded from the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ingested_through_the_driver_equals_the_embedded_store() {
    let emulator = Emulator::start();
    let sandbox = Sandbox::cassandra(emulator.addr, "");
    let sample = sample_dir();
    let started = std::time::Instant::now();
    let out = sandbox.run(&[
        "ingest",
        "--set",
        "telemetry.log_level=warn,sparkify::pipeline=debug",
        sample.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The writers log each group's requests at debug: the requests per song play of a real run.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (mut groups, mut requests, mut retries) = (0u64, 0u64, 0u64);
    for line in stderr
        .lines()
        .filter(|l| l.contains("Wrote a group of plays"))
    {
        let field = |name: &str| -> u64 {
            let at = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        groups += 1;
        requests += field("requests");
        retries += field("retries");
    }
    eprintln!(
        "sparkify ingest of the sample: {groups} write calls, {requests} requests \
         ({:.3} per song play), {retries} retries, {:?}",
        requests as f64 / 6820.0,
        started.elapsed()
    );
    assert!(groups > 0, "{}", text(&out));
    assert!(requests as f64 / 6820.0 < 1.21);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("30 loaded, 0 failed"), "{}", text(&out));
    assert!(stdout.contains("6820 song plays"), "{}", text(&out));
    eprintln!(
        "ingest of the sample into the emulator: {:?}",
        started.elapsed()
    );

    // `dump` through the driver (a full scan, capped by the emulator at 4,999 rows): only
    // rows of the reference, in its order.
    let scanned = cql::store_dump(emulator.addr).await;
    assert_eq!(scanned[TABLES[0]].len(), 4999);
    cql::assert_ordered_subset(&scanned, &reference().dump);

    // The ledger lives in the keyspace: every file once, loaded, with its counts.
    let out = sandbox.run(&["status", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.len(), 30, "{}", text(&out));
    let names: BTreeSet<String> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["status"], "loaded", "{e}");
            let path = e["path"].as_str().unwrap();
            path.rsplit('/').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(names.len(), 30);
    let plays: u64 = entries.iter().map(|e| e["plays"].as_u64().unwrap()).sum();
    assert_eq!(plays, 6820);

    // A second ingest finds every file in the cluster's ledger and writes nothing.
    let out = sandbox.run(&["ingest", sample.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 loaded, 0 failed, 30 already loaded"),
        "{}",
        text(&out)
    );

    // The analysts' three questions through the CLI: same output as the embedded store, for
    // the README's examples and for keys taken from the middle of each table.
    let field = |table: &str, i: usize| -> Vec<String> {
        let lines = &reference().dump[table];
        let line = &lines[lines.len() / 2];
        line.split('|').take(i).map(str::to_string).collect()
    };
    let s = field("song_plays_by_session", 2);
    let u = field("song_plays_by_user_session", 2);
    let t = field("listeners_by_song", 1);
    let mut questions: Vec<Vec<String>> = vec![
        vec!["query".into(), "session".into(), "338".into(), "4".into()],
        vec!["query".into(), "user".into(), "10".into(), "182".into()],
        vec![
            "query".into(),
            "song".into(),
            "All Hands Against His Own".into(),
        ],
    ];
    for format in ["table", "csv", "json"] {
        let q = |rest: &[String]| {
            let mut v = vec!["query".to_string(), "--format".into(), format.into()];
            v.extend(rest.iter().cloned());
            v
        };
        questions.push(q(&["session".into(), s[0].clone(), s[1].clone()]));
        questions.push(q(&["user".into(), u[0].clone(), u[1].clone()]));
        questions.push(q(&["song".into(), t[0].clone()]));
    }
    for args in &questions {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ours = sandbox.run(&args);
        let theirs = reference().run(&args);
        assert!(ours.status.success(), "{args:?}: {}", text(&ours));
        assert!(ours.stdout.len() > 20, "{args:?}: {}", text(&ours));
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "{args:?}"
        );
    }

    // Every row of every table, read from the server's memory.
    assert_same(&emulator.stop(), &reference().dump);
}

/// The three questions through the library, for many keys of each table, against the
/// embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answers_equal_the_embedded_store_for_many_keys() {
    let emulator = Emulator::start();
    let store = cql::open_store(emulator.addr).await;
    for (_, plays) in cql::plays_by_file() {
        store
            .write(Arc::new(plays), &CancellationToken::new())
            .await
            .unwrap();
    }
    let reference = reference();
    let embedded = EmbeddedStore::open(&sparkify::config::EmbeddedSettings {
        path: reference.sandbox.join("sparkify.db"),
        ..Default::default()
    })
    .await
    .unwrap();

    let field = |line: &String, i: usize| line.split('|').nth(i).unwrap().to_string();
    let sessions = &reference.dump["song_plays_by_session"];
    let mut checked = 0;
    for line in sessions.iter().step_by(17) {
        let (s, i) = (
            field(line, 0).parse().unwrap(),
            field(line, 1).parse().unwrap(),
        );
        let ours = store.song_in_session(s, i).await.unwrap();
        assert_eq!(ours.len(), 1, "session {s} item {i}");
        assert_eq!(ours, embedded.song_in_session(s, i).await.unwrap());
        checked += 1;
    }
    // Keys with no play answer nothing, on both.
    assert!(store.song_in_session(-1, 0).await.unwrap().is_empty());
    let users = &reference.dump["song_plays_by_user_session"];
    let keys: BTreeSet<(i32, i32)> = users
        .iter()
        .map(|l| (field(l, 0).parse().unwrap(), field(l, 1).parse().unwrap()))
        .collect();
    for &(u, s) in keys.iter().step_by(5) {
        let ours = store.user_session(u, s).await.unwrap();
        assert!(!ours.is_empty());
        assert_eq!(
            ours,
            embedded.user_session(u, s).await.unwrap(),
            "user {u} session {s}"
        );
        checked += 1;
    }
    let songs: BTreeSet<String> = reference.dump["listeners_by_song"]
        .iter()
        .map(|l| field(l, 0))
        .collect();
    for song in songs.iter().step_by(13) {
        let ours = store.listeners(song).await.unwrap();
        assert!(!ours.is_empty());
        assert_eq!(
            ours,
            embedded.listeners(song).await.unwrap(),
            "song {song:?}"
        );
        checked += 1;
    }
    eprintln!("query answers compared for {checked} keys");
    assert!(checked > 700, "{checked}");
    store.ping().await.unwrap();
}

/// CQL requests per song play on the real sample (issue 6 targets at most 1.2).
///
/// Rows of one partition share a request, so the figure is the number of distinct partitions
/// a write call sees, over its plays. `listeners_by_song` dominates: almost every play is a
/// song no other play of the sample repeats, so that table alone costs about one request per
/// play. One write call per file is the worst the pipeline does (it gathers queued files into
/// one call of up to 4 × `pipeline.chunk_rows` plays); the whole sample in one call is the
/// best this data allows. The figure for a real `sparkify ingest` is in
/// `sample_ingested_through_the_driver_equals_the_embedded_store`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_song_play_on_the_real_sample() {
    let emulator = Emulator::start();
    let store = cql::open_store(emulator.addr).await;
    let mut total = WriteStats::default();
    let mut plays = 0u64;
    let started = std::time::Instant::now();
    for (_, file) in cql::plays_by_file() {
        plays += file.len() as u64;
        let stats = store
            .write(Arc::new(file), &CancellationToken::new())
            .await
            .unwrap();
        total.requests += stats.requests;
        total.retries += stats.retries;
        for t in 0..3 {
            total.rows[t] += stats.rows[t];
        }
    }
    let per_file = total.requests as f64 / plays as f64;
    eprintln!(
        "one write call per file: {plays} song plays, {} requests ({per_file:.3} per play), \
         rows written per table {:?}, {:?}",
        total.requests,
        total.rows,
        started.elapsed()
    );
    assert_eq!(plays, 6820);
    assert_eq!(total.retries, 0);
    // Duplicate (song, user) pairs within a file are written once.
    assert_eq!(total.rows[0], 6820);
    assert!(total.rows[2] < 6820);
    assert!(per_file < 1.21, "{per_file}");
    assert_same(&emulator.stop(), &reference().dump);

    let emulator = Emulator::start();
    let store = cql::open_store(emulator.addr).await;
    let all: Vec<_> = cql::plays_by_file().into_values().flatten().collect();
    let started = std::time::Instant::now();
    let stats = store
        .write(Arc::new(all), &CancellationToken::new())
        .await
        .unwrap();
    let one_call = stats.requests as f64 / plays as f64;
    eprintln!(
        "one write call for the whole sample: {} requests ({one_call:.3} per play), {:?}",
        stats.requests,
        started.elapsed()
    );
    assert!(one_call <= 1.2, "{one_call}");
    assert_same(&emulator.stop(), &reference().dump);
}

/// `create_schema = false` on a keyspace whose table lacks a column: start-up refuses with a
/// message naming the column, and exit code 3 (the store cannot be used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_table_missing_a_column() {
    let emulator = Emulator::start();
    let session = emulator.session().await;
    let settings = cql::settings(emulator.addr);
    session
        .query_unpaged(sparkify::store::cassandra::keyspace_cql(&settings), ())
        .await
        .unwrap();
    for table in sparkify::store::cassandra::tables_cql(&settings.keyspace) {
        let table = table.replace("  length double,\n", "");
        session.query_unpaged(table, ()).await.unwrap();
    }
    let sandbox = Sandbox::cassandra(emulator.addr, "create_schema = false");
    let out = sandbox.run(&["ingest", sample_dir().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schema mismatch")
            && stderr.contains("table sparkify.song_plays_by_session has no column length"),
        "{}",
        text(&out)
    );
    // The daemon gives up at once too: a schema problem does not go away by waiting.
    let out = sandbox.run_for(&["run", "event_data"], std::time::Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no column length"),
        "{}",
        text(&out)
    );
}

/// `create_schema = false` on an empty cluster says what is missing; on tables created from
/// what `sparkify schema` prints, it starts and loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_printed_by_the_cli_is_what_start_up_expects() {
    let emulator = Emulator::start();
    let sandbox = Sandbox::cassandra(emulator.addr, "create_schema = false");
    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("table sparkify.ingest_ledger does not exist"),
        "{}",
        text(&out)
    );

    let out = sandbox.run(&["schema"]);
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8(out.stdout).unwrap();
    let session = emulator.session().await;
    for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        session.query_unpaged(statement, ()).await.unwrap();
    }
    let some_files = sandbox.path().join("in");
    std::fs::create_dir(&some_files).unwrap();
    for name in ["2018-11-05-events.csv", "2018-11-30-events.csv"] {
        std::fs::copy(sample_dir().join(name), some_files.join(name)).unwrap();
    }
    let out = sandbox.run(&["ingest", "in"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 loaded"),
        "{}",
        text(&out)
    );
    // Under the emulator's scan cap, `dump` through the driver is the whole table.
    let scanned = cql::store_dump(emulator.addr).await;
    let stored = emulator.stop();
    assert!(stored[TABLES[0]].len() > 100);
    assert_eq!(scanned, stored);
}

/// A keyspace name is spliced into every statement: anything but a plain identifier is refused
/// before it reaches the cluster.
#[tokio::test]
async fn odd_keyspace_names_are_refused() {
    let emulator = Emulator::start();
    let mut settings = cql::settings(emulator.addr);
    settings.keyspace = "x; DROP KEYSPACE y".into();
    let err = CassandraStore::open(&settings).await.err().unwrap();
    assert!(err.to_string().contains("cassandra.keyspace"), "{err}");
    assert!(!err.is_transient());
}

/// A cluster that is not there is an outage (the daemon waits for it), not a configuration
/// error.
#[tokio::test]
async fn an_unreachable_cluster_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut settings = cql::settings(format!("127.0.0.1:{port}").parse().unwrap());
    settings.connect_timeout_ms = 500;
    let err = CassandraStore::open(&settings).await.err().unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

/// `local_dc` turns on DC-aware balancing with no failover to other datacenters, so a name
/// the cluster does not report is refused at start-up rather than failing every request
/// later. The emulator reports no datacenter through the driver's metadata: this checks that
/// refusal; a matching name needs a real cluster.
#[tokio::test]
async fn local_dc_must_be_known_to_the_cluster() {
    let emulator = Emulator::start();
    let mut settings = cql::settings(emulator.addr);
    settings.local_dc = "datacenter1".into();
    let err = CassandraStore::open(&settings).await.err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("cassandra.local_dc is \"datacenter1\"") && text.contains("no datacenters"),
        "{text}"
    );
    assert!(!err.is_transient());
}
