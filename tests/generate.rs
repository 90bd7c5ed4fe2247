//! `sparkify generate`: the synthetic event files that load tests and benchmarks run on.
//!
//! Every check reads the files with the `csv` crate or as raw bytes, not through the extractor
//! under test, except the last one, which shows the extractor takes every generated play.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sparkify::generate::{Generated, HEADER, generate};
use sparkify::transform::repair_mojibake;

/// Every record of every `*.csv` in `dir` (name order), read strictly: a record with a field
/// count other than the header's is an error.
fn records(dir: &Path) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for f in csv_files(dir) {
        let mut r = csv::ReaderBuilder::new()
            .flexible(false)
            .from_path(&f)
            .unwrap();
        let header = r.headers().unwrap().clone();
        for rec in r.records() {
            let rec = rec.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            out.push(
                header
                    .iter()
                    .zip(rec.iter())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
    }
    out
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn is_play(r: &BTreeMap<String, String>) -> bool {
    r["page"] == "NextSong" && !r["artist"].is_empty() && !r["song"].is_empty()
}

fn gen_into(dir: &Path, rows: u64, files: u32, seed: u64) -> Generated {
    generate(dir, rows, files, seed, 1).unwrap()
}

#[test]
fn writes_the_rows_asked_for_spread_over_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gen_into(tmp.path(), 5_003, 3, 1);
    let names: Vec<String> = csv_files(tmp.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Named like the real exports, one day each; no temporary file is left behind.
    assert_eq!(
        names,
        [
            "2018-11-01-events.csv",
            "2018-11-02-events.csv",
            "2018-11-03-events.csv"
        ]
    );
    assert_eq!(g.files.len(), 3);
    assert_eq!(g.rows, 5_003);
    let per_file: Vec<usize> = csv_files(tmp.path())
        .iter()
        .map(|f| records_of(f).len())
        .collect();
    assert_eq!(per_file, [1_668, 1_668, 1_667]);
    let all = records(tmp.path());
    assert_eq!(all.len(), 5_003);
    assert_eq!(
        all.iter().filter(|r| is_play(r)).count() as u64,
        g.song_plays
    );
    let bytes: u64 = g
        .files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(bytes, g.bytes);
}

fn records_of(file: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(file)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn zero_rows_and_more_files_than_rows_give_header_only_files() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gen_into(&tmp.path().join("a"), 0, 1, 1);
    assert_eq!((g.rows, g.song_plays, g.files.len()), (0, 0, 1));
    let g = gen_into(&tmp.path().join("b"), 2, 4, 1);
    assert_eq!((g.rows, g.files.len()), (2, 4));
    for f in &g.files[2..] {
        let body = std::fs::read(f).unwrap();
        assert_eq!(body, format!("{}\r\n", HEADER.join(",")).as_bytes());
    }
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let read = |dir: &Path| -> Vec<Vec<u8>> {
        csv_files(dir)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    let a = gen_into(&tmp.path().join("a"), 20_000, 2, 7);
    let b = gen_into(&tmp.path().join("b"), 20_000, 2, 7);
    gen_into(&tmp.path().join("c"), 20_000, 2, 8);
    assert_eq!(a.song_plays, b.song_plays);
    assert_eq!(a.bytes, b.bytes);
    let (ra, rb, rc) = (
        read(&tmp.path().join("a")),
        read(&tmp.path().join("b")),
        read(&tmp.path().join("c")),
    );
    assert!(ra == rb, "same seed, different bytes");
    assert!(ra[0] != rc[0] && ra[1] != rc[1], "another seed, same bytes");
}

#[test]
fn the_command_line_writes_what_the_library_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sparkify"))
        .current_dir(tmp.path())
        .env("SPARKIFY_TELEMETRY__HTTP_ADDR", "")
        .args([
            "generate",
            "--rows",
            "3000",
            "--files",
            "2",
            "--seed",
            "5",
            "--first-session",
            "700",
            "cli",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("wrote 2 files"), "{said}");
    assert!(said.contains("3000 events"), "{said}");
    generate(&tmp.path().join("lib"), 3000, 2, 5, 700).unwrap();
    for (c, l) in csv_files(&tmp.path().join("cli"))
        .iter()
        .zip(csv_files(&tmp.path().join("lib")))
    {
        assert_eq!(c.file_name(), l.file_name());
        assert!(std::fs::read(c).unwrap() == std::fs::read(&l).unwrap());
    }
}

#[test]
fn about_85_percent_of_events_are_song_plays_as_in_the_real_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gen_into(tmp.path(), 40_000, 1, 3);
    let share = g.song_plays as f64 / g.rows as f64;
    // The real sample: 6,820 of 8,056 (84.7%).
    assert!((0.83..=0.87).contains(&share), "song plays are {share:.3}");
    let all = records(tmp.path());
    let pages: BTreeSet<&str> = all.iter().map(|r| r["page"].as_str()).collect();
    for page in ["NextSong", "Home", "Logout", "Settings"] {
        assert!(pages.contains(page), "no {page} event in {pages:?}");
    }
    // Non-song events carry no artist, song or length, as in the real logs.
    for r in all.iter().filter(|r| r["page"] != "NextSong") {
        assert!(r["artist"].is_empty() && r["song"].is_empty() && r["length"].is_empty());
    }
    let logged_out = all.iter().filter(|r| r["userId"].is_empty()).count();
    assert!(logged_out > 0, "no logged-out events");
    for r in all.iter().filter(|r| r["userId"].is_empty()) {
        assert_eq!(r["auth"], "Logged Out");
        assert_ne!(r["page"], "NextSong");
    }
}

#[test]
fn files_are_valid_csv_with_the_real_header_crlf_and_quoted_commas() {
    let tmp = tempfile::tempdir().unwrap();
    gen_into(tmp.path(), 5_000, 2, 4);
    let real_header = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/event_data/2018-11-01-events.csv"),
    )
    .unwrap();
    let real_header = real_header.split("\r\n").next().unwrap();
    assert_eq!(HEADER.join(","), real_header);
    for f in csv_files(tmp.path()) {
        let body = std::fs::read(&f).unwrap();
        assert!(body.starts_with(format!("{real_header}\r\n").as_bytes()));
        assert!(body.ends_with(b"\r\n"));
        // Every line ends with CRLF: no bare LF and no bare CR anywhere.
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(body[i - 1], b'\r', "bare LF at byte {i} of {}", f.display());
            }
            if b == b'\r' {
                assert_eq!(body[i + 1], b'\n', "bare CR at byte {i} of {}", f.display());
            }
        }
        let text = String::from_utf8(body).expect("UTF-8");
        assert!(text.contains("\"Phoenix-Mesa-Scottsdale, AZ\"") || text.contains(", CA\""));
    }
    let all = records(tmp.path());
    assert!(all.iter().all(|r| r.len() == 17));
    assert!(all.iter().any(|r| r["location"].contains(", ")));
    // Spreadsheet-style numbers, as in the real exports.
    let spreadsheet = |s: &str| {
        let (mantissa, exp) = s.split_once("E+").unwrap_or(("", ""));
        exp == "12"
            && mantissa
                .parse::<f64>()
                .is_ok_and(|m| (1.0..10.0).contains(&m))
    };
    for r in &all {
        assert!(spreadsheet(&r["ts"]), "ts {}", r["ts"]);
        if !r["userId"].is_empty() {
            assert!(spreadsheet(&r["registration"]), "{}", r["registration"]);
        }
        if is_play(r) {
            assert!(r["length"].parse::<f64>().unwrap() > 0.0);
            assert_eq!(r["method"], "PUT");
            assert_eq!(r["status"], "200");
        }
    }
}

#[test]
fn some_text_is_non_ascii_and_some_was_utf8_encoded_twice() {
    let tmp = tempfile::tempdir().unwrap();
    gen_into(tmp.path(), 40_000, 1, 5);
    let plays: Vec<_> = records(tmp.path()).into_iter().filter(is_play).collect();
    let texts = || {
        plays
            .iter()
            .flat_map(|r| ["artist", "song", "firstName", "lastName"].map(|c| r[c].as_str()))
    };
    let non_ascii: BTreeSet<&str> = texts().filter(|t| !t.is_ascii()).collect();
    let repaired: BTreeMap<&str, String> = texts()
        .filter_map(|t| repair_mojibake(t).map(|r| (t, r)))
        .collect();
    let clean_non_ascii = non_ascii.iter().filter(|t| !repaired.contains_key(**t));
    assert!(
        clean_non_ascii.count() >= 5,
        "too little correctly encoded non-ASCII text"
    );
    assert!(repaired.len() >= 5, "too little doubly encoded text");
    // What the repair gives back is real text: an artist of the catalogue or a café title,
    // each with its accents intact.
    for (raw, fixed) in &repaired {
        assert!(!fixed.contains('Ã'), "{raw} -> {fixed}");
        assert!(fixed.len() < raw.len());
        assert!(!fixed.is_ascii(), "{raw} -> {fixed}");
    }
    assert!(
        repaired
            .values()
            .any(|v| v == "Björk" || v.starts_with("Café, "))
    );
    // Some text went through the faulty export more than once (two layers to undo).
    assert!(
        repaired.iter().any(|(raw, fixed)| {
            let once = sparkify::generate::encode_twice(fixed);
            raw.len() > once.len()
        }),
        "no text encoded three times"
    );
}

#[test]
fn sessions_count_up_and_users_keep_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path(), 30_000, 3, 6, 1_000).unwrap();
    let all = records(tmp.path());
    let mut next_item: BTreeMap<&str, u64> = BTreeMap::new();
    let mut names: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut session_user: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &all {
        let session = r["sessionId"].as_str();
        assert!(session.parse::<u64>().unwrap() >= 1_000, "--first-session");
        let item: u64 = r["itemInSession"].parse().unwrap();
        let expected = next_item.entry(session).or_insert(0);
        assert_eq!(item, *expected, "session {session}: items count up from 0");
        *expected += 1;
        let user = r["userId"].as_str();
        if user.is_empty() {
            continue;
        }
        let name = (r["firstName"].as_str(), r["lastName"].as_str());
        assert_eq!(*names.entry(user).or_insert(name), name, "user {user}");
        assert_eq!(*session_user.entry(session).or_insert(user), user);
    }
    assert!(next_item.len() > 100, "{} sessions", next_item.len());
    assert!(names.len() > 50, "{} users", names.len());
    // Sessions interleave, as several users listen at once.
    let sessions: Vec<&str> = all.iter().map(|r| r["sessionId"].as_str()).collect();
    assert!(sessions.windows(2).filter(|w| w[0] != w[1]).count() > all.len() / 4);
}

#[tokio::test]
async fn the_extractor_takes_every_generated_play_and_rejects_none() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gen_into(tmp.path(), 6_000, 2, 9);
    let options = sparkify::extract::ExtractOptions::default();
    let (mut plays, mut rejected, mut rows) = (0, 0, 0);
    for f in &g.files {
        let mut reader = sparkify::extract::PlayReader::open(f, &options)
            .await
            .unwrap();
        while reader.next().await.unwrap().is_some() {}
        let c = reader.counts();
        plays += c.plays;
        rejected += c.rejected;
        rows += c.rows;
    }
    assert_eq!((rows, plays, rejected), (g.rows, g.song_plays, 0));
}
