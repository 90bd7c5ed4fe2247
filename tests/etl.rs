//! The ETL end to end on the real sample: the real binary loads the bundled logs into the
//! embedded store, and every figure is checked against values worked out here from the CSV
//! with the `csv` crate — never by calling the code under test.

mod util;

use std::collections::{BTreeMap, BTreeSet};

use util::*;

fn ingest_sample(sb: &Sandbox, extra: &[&str]) -> serde_json::Value {
    let sample = sample_dir();
    let mut args = vec!["ingest", "--format", "json", "--quiet"];
    args.extend_from_slice(extra);
    args.push(sample.to_str().unwrap());
    let out = sb.run(&args);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("JSON summary")
}

#[test]
fn loads_every_song_play_of_the_real_sample() {
    let sb = Sandbox::new();
    let summary = ingest_sample(&sb, &[]);
    let events = read_events(&sample_dir());
    let plays: Vec<&Event> = events.iter().filter(|e| e.is_song_play()).collect();
    assert_eq!(events.len(), 8056);
    assert_eq!(plays.len(), 6820);
    assert_eq!(summary["rows"], 8056);
    assert_eq!(summary["plays"], 6820);
    assert_eq!(summary["skipped"], 8056 - 6820);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["loaded"], 30);
    assert_eq!(summary["failed"], 0);

    // Row counts against keys counted independently.
    let by_session: BTreeSet<(i64, i64)> = plays
        .iter()
        .map(|e| (e.int("sessionId"), e.int("itemInSession")))
        .collect();
    let by_user_session: BTreeSet<(i64, i64, i64)> = plays
        .iter()
        .map(|e| (e.int("userId"), e.int("sessionId"), e.int("itemInSession")))
        .collect();
    let listeners: BTreeSet<(&str, i64)> = plays
        .iter()
        .map(|e| (e.get("song"), e.int("userId")))
        .collect();
    let db = sb.db();
    assert_eq!(
        table_rows(&db, "song_plays_by_session").len(),
        by_session.len()
    );
    assert_eq!(
        table_rows(&db, "song_plays_by_user_session").len(),
        by_user_session.len()
    );
    assert_eq!(table_rows(&db, "listeners_by_song").len(), listeners.len());
    assert_eq!(by_session.len(), 6820);

    // The ledger has one loaded entry per file with that file's counts.
    let status = sb.run(&["status", "--format", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(entries.len(), 30);
    let first = entries
        .iter()
        .find(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .ends_with("2018-11-01-events.csv")
        })
        .unwrap();
    assert_eq!(first["status"], "loaded");
    assert_eq!(first["rows"], 15);
    assert_eq!(first["plays"], 11);
}

#[test]
fn the_three_questions_answer_from_the_sample() {
    let sb = Sandbox::new();
    ingest_sample(&sb, &[]);
    let events = read_events(&sample_dir());
    let plays: Vec<&Event> = events.iter().filter(|e| e.is_song_play()).collect();

    // Question 1, for several (session, item) pairs spread over the sample.
    for e in plays
        .iter()
        .step_by(911)
        .filter(|e| e.get("artist").is_ascii())
    {
        let out = sb.run(&[
            "query",
            "session",
            e.get("sessionId"),
            e.get("itemInSession"),
            "--format",
            "csv",
        ]);
        assert_eq!(code(&out), 0);
        let rows = parse_csv(&stdout(&out));
        assert_eq!(rows.len(), 1, "{e:?}");
        assert_eq!(rows[0]["artist"], e.get("artist"));
        assert_eq!(rows[0]["song"], e.get("song"));
        assert_eq!(
            rows[0]["length"].parse::<f64>().unwrap(),
            e.get("length").parse::<f64>().unwrap()
        );
    }
    // The classic example of the notebooks.
    let out = sb.run(&["query", "session", "338", "4", "--format", "csv"]);
    assert_eq!(
        stdout(&out),
        "artist,song,length\nFaithless,Music Matters (Mark Knight Dub),495.3073\n"
    );

    // Question 2: user 10, session 182, in item order with the user's name.
    let mut expected: Vec<&Event> = plays
        .iter()
        .copied()
        .filter(|e| e.get("userId") == "10" && e.get("sessionId") == "182")
        .collect();
    expected.sort_by_key(|e| e.int("itemInSession"));
    let out = sb.run(&["query", "user", "10", "182", "--format", "csv"]);
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows.len(), expected.len());
    assert_eq!(rows.len(), 4);
    for (row, e) in rows.iter().zip(&expected) {
        assert_eq!(row["iteminsession"], e.get("itemInSession"));
        assert_eq!(row["artist"], e.get("artist"));
        assert_eq!(row["song"], e.get("song"));
        assert_eq!(row["firstname"], e.get("firstName"));
        assert_eq!(row["lastname"], e.get("lastName"));
    }
    // And for the user with the most plays in one session.
    let mut sessions: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for e in &plays {
        *sessions
            .entry((e.int("userId"), e.int("sessionId")))
            .or_default() += 1;
    }
    let ((uid, sid), n) = sessions.iter().max_by_key(|(_, n)| **n).unwrap();
    let out = sb.run(&[
        "query",
        "user",
        &uid.to_string(),
        &sid.to_string(),
        "--format",
        "json",
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows.len(), *n);
    let items: Vec<i64> = rows
        .iter()
        .map(|r| r["iteminsession"].as_i64().unwrap())
        .collect();
    let mut sorted = items.clone();
    sorted.sort();
    assert_eq!(items, sorted, "ordered by item in session");

    // Question 3: every listener of a song, for a few songs.
    for title in ["All Hands Against His Own", "Greece 2000", "You're The One"] {
        let mut expected: BTreeMap<i64, (String, String)> = BTreeMap::new();
        for e in plays.iter().filter(|e| e.get("song") == title) {
            expected.insert(
                e.int("userId"),
                (e.get("firstName").into(), e.get("lastName").into()),
            );
        }
        assert!(!expected.is_empty(), "{title}");
        let out = sb.run(&["query", "song", title, "--format", "csv"]);
        let rows = parse_csv(&stdout(&out));
        let got: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r["firstname"].clone(), r["lastname"].clone()))
            .collect();
        let want: Vec<(String, String)> = expected.into_values().collect();
        assert_eq!(got, want, "{title}");
    }
    let out = sb.run(&[
        "query",
        "song",
        "All Hands Against His Own",
        "--format",
        "csv",
    ]);
    assert_eq!(
        stdout(&out),
        "firstname,lastname\nJacqueline,Lynch\nTegan,Levine\nSara,Johnson\n"
    );
}

#[test]
fn multiply_encoded_text_is_repaired_unless_disabled() {
    let sb = Sandbox::new();
    let summary = ingest_sample(&sb, &[]);
    // 346 values in the sample carry multiply-encoded UTF-8 (counted with grep on the files).
    assert_eq!(summary["repaired"], 346);
    let rows = table_rows(&sb.db(), "song_plays_by_session");
    assert!(rows.iter().any(|r| r.contains("|Björk|")));
    assert!(!rows.iter().any(|r| r.contains('Ã')), "no mojibake left");

    let raw = Sandbox::new();
    let summary = ingest_sample(&raw, &["--set", "transform.repair_mojibake=false"]);
    assert_eq!(summary["repaired"], 0);
    let rows = table_rows(&raw.db(), "song_plays_by_session");
    // Byte for byte as in the file: "Bj" + U+00C3 U+0083 U+00C2 U+00B6 + "rk".
    assert!(
        rows.iter()
            .any(|r| r.contains("|Bj\u{c3}\u{83}\u{c2}\u{b6}rk|"))
    );
}

#[test]
fn loading_twice_changes_nothing_and_force_reloads_the_same() {
    let sb = Sandbox::new();
    ingest_sample(&sb, &[]);
    let tables = all_tables(&sb.db());
    let ledger = table_rows(&sb.db(), "ingest_ledger");

    let again = ingest_sample(&sb, &[]);
    assert_eq!(again["duplicates"], 30);
    assert_eq!(again["loaded"], 0);
    assert_eq!(again["plays"], 0);
    assert_eq!(all_tables(&sb.db()), tables);
    assert_eq!(
        table_rows(&sb.db(), "ingest_ledger"),
        ledger,
        "ledger untouched"
    );

    let forced = ingest_sample(&sb, &["--force"]);
    assert_eq!(forced["loaded"], 30);
    assert_eq!(forced["plays"], 6820);
    assert_eq!(all_tables(&sb.db()), tables);
    assert_eq!(table_rows(&sb.db(), "ingest_ledger").len(), 30);
}

#[test]
fn the_same_bytes_twice_in_one_run_load_once() {
    let sb = Sandbox::new();
    let dir = sb.copy_dir(&sample_dir(), "in");
    std::fs::copy(dir.join("2018-11-15-events.csv"), dir.join("copy.csv")).unwrap();
    let out = sb.run(&["ingest", "--format", "json", "--quiet", "in"]);
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["loaded"], 30);
    assert_eq!(summary["duplicates"], 1);
    assert_eq!(summary["plays"], 6820);
    assert_eq!(table_rows(&sb.db(), "ingest_ledger").len(), 30);
}

#[test]
fn extract_writes_the_combined_csv() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "extract",
        sample_dir().to_str().unwrap(),
        "-o",
        "combined.csv",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(sb.join("combined.csv")).unwrap();
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 6820);
    assert_eq!(
        text.lines().next().unwrap(),
        "artist,firstName,gender,itemInSession,lastName,length,level,location,sessionId,song,userId"
    );
    let events = read_events(&sample_dir());
    let first = events.iter().find(|e| e.is_song_play()).unwrap();
    assert_eq!(rows[0]["artist"], first.get("artist"));
    assert_eq!(rows[0]["location"], first.get("location"));
    assert_eq!(rows[0]["userId"], first.get("userId"));
    assert!(!sb.db().exists(), "extract writes no store");
}

#[test]
fn validate_reports_without_writing() {
    let sb = Sandbox::new();
    let out = sb.run(&["validate", sample_dir().to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 30);
    assert!(text.contains("2018-11-01-events.csv: 15 rows, 11 song plays, 4 skipped, 0 rejected"));
    assert!(!sb.db().exists());
    assert!(!sb.join("rejects").exists());
}

#[test]
fn schema_prints_the_cql() {
    let sb = Sandbox::new();
    let out = sb.run(&["schema"]);
    assert_eq!(code(&out), 0);
    let cql = stdout(&out);
    assert!(cql.starts_with("CREATE KEYSPACE IF NOT EXISTS sparkify WITH replication"));
    assert!(cql.contains("PRIMARY KEY (sessionid, iteminsession)"));
    assert!(cql.contains("PRIMARY KEY ((userid, sessionid), iteminsession)"));
    assert!(cql.contains("PRIMARY KEY (song, userid)"));
    let out = sb.run(&[
        "schema",
        "--set",
        "cassandra.keyspace=music",
        "--set",
        "cassandra.replication_strategy=NetworkTopologyStrategy",
        "--set",
        "cassandra.datacenters.dc1=3",
    ]);
    let cql = stdout(&out);
    assert!(
        cql.contains("CREATE KEYSPACE IF NOT EXISTS music WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3}"),
        "{cql}"
    );
    assert!(cql.contains("music.listeners_by_song"));
}

#[test]
fn configuration_layers_and_refusals() {
    let sb = Sandbox::new();
    // Environment override of the store path.
    let out = sb
        .cmd(&[
            "ingest",
            "--quiet",
            sample_dir().join("2018-11-01-events.csv").to_str().unwrap(),
        ])
        .env("SPARKIFY_EMBEDDED__PATH", sb.join("env.db"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        table_rows(&sb.join("env.db"), "song_plays_by_session").len(),
        11
    );

    // A file layer, then --set over the environment.
    std::fs::write(sb.join("my.toml"), "[embedded]\npath = \"file.db\"\n").unwrap();
    let out = sb
        .cmd(&["--config", "my.toml", "config", "show"])
        .env("SPARKIFY_PIPELINE__READERS", "3")
        .output()
        .unwrap();
    let shown = stdout(&out);
    assert!(shown.contains("path = \"file.db\""), "{shown}");
    assert!(shown.contains("readers = 3"), "{shown}");

    // Unknown keys and bad values: exit 2 with the key and the expected form.
    std::fs::write(sb.join("bad.toml"), "[embeded]\npath = \"x.db\"\n").unwrap();
    let out = sb.run(&["--config", "bad.toml", "config", "check"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("unknown field `embeded`"),
        "{}",
        stderr(&out)
    );
    let out = sb.run(&["--set", "watch.mode=inotify", "config", "check"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("\"inotify\" is not one of: events, poll"),
        "{}",
        stderr(&out)
    );
    let out = sb
        .cmd(&["config", "check"])
        .env("SPARKIFY_PIPELINE__CHUNK_ROWS", "lots")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("pipeline.chunk_rows"),
        "{}",
        stderr(&out)
    );
    let out = sb.run(&["config", "check"]);
    assert_eq!(code(&out), 0);
}

#[test]
fn shipped_default_file_matches_the_built_in_defaults() {
    use sparkify::config::{Settings, Sources};
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let loaded = Settings::load(&Sources {
        file: Some(file.clone()),
        env: Some(Default::default()),
        skip_default_file: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(loaded, Settings::default());

    // Every key of the file is commented, and every setting of the program is in the file.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut file_keys = BTreeSet::new();
    let mut section = String::new();
    let mut previous = "";
    for line in text.lines() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, _)) = t.split_once('=').filter(|_| !t.starts_with('#')) {
            assert!(
                previous.trim_start().starts_with('#'),
                "{section}.{} has no comment above it",
                k.trim()
            );
            file_keys.insert(format!("{section}.{}", k.trim()));
        }
        previous = line;
    }
    let value = toml::Value::try_from(Settings::default()).unwrap();
    let mut setting_keys = BTreeSet::new();
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(inner) if key != "cassandra.datacenters" => {
                        let _ = inner;
                        walk(&key, v, out)
                    }
                    _ => {
                        out.insert(key);
                    }
                }
            }
        }
    }
    walk("", &value, &mut setting_keys);
    setting_keys.remove("cassandra.datacenters");
    assert_eq!(file_keys, setting_keys);
}
