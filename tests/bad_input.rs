//! A corpus of broken inputs. Every case is a file of its own in one folder, loaded by one run
//! of the real binary: each must get its specific message (in the rejects file, or as the
//! file's failure), the good rows around the bad one must still load, and nothing may crash.

mod util;

use std::collections::BTreeMap;

use util::*;

const HEADER: &str = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";

/// A good song play of session `session`, as the real logs write it.
fn row(session: u32, item: u32) -> String {
    format!(
        "Artist {session},Logged In,Ann,F,{item},Lee,201.5,free,\"Lansing, MI\",PUT,NextSong,1.54092E+12,{session},Song {session}-{item},200,1.54111E+12,7"
    )
}

/// A song play with one field replaced (by header position).
fn row_with(session: u32, item: u32, column: &str, value: &str) -> String {
    let names: Vec<&str> = HEADER.split(',').collect();
    let pos = names.iter().position(|n| *n == column).unwrap();
    let mut fields: Vec<String> = vec![
        format!("Artist {session}"),
        "Logged In".into(),
        "Ann".into(),
        "F".into(),
        item.to_string(),
        "Lee".into(),
        "201.5".into(),
        "free".into(),
        "\"Lansing, MI\"".into(),
        "PUT".into(),
        "NextSong".into(),
        "1.54092E+12".into(),
        session.to_string(),
        format!("Song {session}-{item}"),
        "200".into(),
        "1.54111E+12".into(),
        "7".into(),
    ];
    fields[pos] = value.to_string();
    fields.join(",")
}

/// What a case must produce.
enum Expect {
    /// One reject at `line` naming `column` (empty for the whole record) with a reason
    /// containing `reason`; `good` plays of the case's session loaded.
    Reject {
        line: u64,
        column: &'static str,
        reason: &'static str,
        good: usize,
    },
    /// Loaded cleanly with this many plays of the case's session.
    Loads { good: usize },
    /// The file failed as a whole with a message containing this.
    Fails { message: &'static str },
}

struct Case {
    name: &'static str,
    session: u32,
    bytes: Vec<u8>,
    expect: Expect,
}

fn text_file(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &'static str, session: u32, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case {
            name,
            session,
            bytes,
            expect,
        })
    };
    // Lines: 1 header, 2 good, 3 bad, 4 good — unless said otherwise.
    let around = |s: u32, bad: String| text_file(&[HEADER.into(), row(s, 0), bad, row(s, 2)]);

    add(
        "short_row",
        101,
        around(101, row(101, 1).rsplit_once(',').unwrap().0.to_string()),
        Expect::Reject {
            line: 3,
            column: "",
            reason: "has 16 fields; the header has 17",
            good: 2,
        },
    );
    add(
        "long_row",
        102,
        around(102, format!("{},extra", row(102, 1))),
        Expect::Reject {
            line: 3,
            column: "",
            reason: "has 18 fields; the header has 17",
            good: 2,
        },
    );
    add(
        "session_not_integer",
        103,
        around(103, row_with(103, 1, "sessionId", "abc")),
        Expect::Reject {
            line: 3,
            column: "sessionId",
            reason: "is not an integer",
            good: 2,
        },
    );
    add(
        "item_out_of_range",
        104,
        around(104, row_with(104, 1, "itemInSession", "3000000000")),
        Expect::Reject {
            line: 3,
            column: "itemInSession",
            reason: "is out of range; expected an integer from 0 to 2147483647",
            good: 2,
        },
    );
    add(
        "negative_user",
        105,
        around(105, row_with(105, 1, "userId", "-5")),
        Expect::Reject {
            line: 3,
            column: "userId",
            reason: "is out of range",
            good: 2,
        },
    );
    add(
        "empty_user_on_song_play",
        106,
        around(106, row_with(106, 1, "userId", "")),
        Expect::Reject {
            line: 3,
            column: "userId",
            reason: "is empty; expected an integer id",
            good: 2,
        },
    );
    add(
        "length_not_a_number",
        107,
        around(107, row_with(107, 1, "length", "long")),
        Expect::Reject {
            line: 3,
            column: "length",
            reason: "is not a number",
            good: 2,
        },
    );
    add(
        "negative_length",
        108,
        around(108, row_with(108, 1, "length", "-3.5")),
        Expect::Reject {
            line: 3,
            column: "length",
            reason: "is negative",
            good: 2,
        },
    );
    add(
        "nan_length",
        109,
        around(109, row_with(109, 1, "length", "NaN")),
        Expect::Reject {
            line: 3,
            column: "length",
            reason: "is not a number",
            good: 2,
        },
    );
    add(
        "invalid_utf8_artist",
        110,
        {
            let mut b = format!("{HEADER}\n{}\n", row(110, 0)).into_bytes();
            b.extend_from_slice(b"Bj\xf6rk,");
            b.extend_from_slice(row(110, 1).split_once(',').unwrap().1.as_bytes());
            b.extend_from_slice(format!("\n{}\n", row(110, 2)).as_bytes());
            b
        },
        Expect::Reject {
            line: 3,
            column: "artist",
            reason: "is not valid UTF-8",
            good: 2,
        },
    );
    add(
        "binary_junk_line",
        111,
        {
            let mut b = format!("{HEADER}\n{}\n", row(111, 0)).into_bytes();
            b.extend_from_slice(&[0x00, 0xff, 0xfe, 0x01, b'j', b'u', b'n', b'k', 0x80, 0x9f]);
            b.extend_from_slice(format!("\n{}\n", row(111, 2)).as_bytes());
            b
        },
        Expect::Reject {
            line: 3,
            column: "",
            reason: "has 1 fields; the header has 17",
            good: 2,
        },
    );
    add(
        "huge_field",
        112,
        around(112, row_with(112, 1, "song", &"x".repeat(200_000))),
        Expect::Reject {
            line: 3,
            column: "",
            reason: "the bound is 65536 bytes (extract.max_record_bytes)",
            good: 2,
        },
    );
    add(
        "unterminated_quote_at_end",
        113,
        text_file(&[
            HEADER.into(),
            row(113, 0),
            row(113, 1),
            row_with(113, 2, "song", "\"Never closed"),
        ]),
        // The open quote runs to the end of the file, so the record has too few fields.
        Expect::Reject {
            line: 4,
            column: "",
            reason: "fields; the header has 17",
            good: 2,
        },
    );
    add(
        "quote_inside_unquoted_field",
        114,
        around(114, row_with(114, 1, "artist", "Des\"ree")),
        Expect::Loads { good: 3 },
    );
    add(
        "newline_inside_quoted_title_keeps_line_numbers",
        115,
        text_file(&[
            HEADER.into(),
            row_with(115, 0, "song", "\"Two\nLines\""),
            row_with(115, 1, "sessionId", "x"),
            row(115, 2),
        ]),
        // The quoted title spans lines 2-3, so the bad record starts on line 4.
        Expect::Reject {
            line: 4,
            column: "sessionId",
            reason: "is not an integer",
            good: 2,
        },
    );
    add(
        "utf8_bom",
        116,
        {
            let mut b = vec![0xef, 0xbb, 0xbf];
            b.extend(text_file(&[HEADER.into(), row(116, 0), row(116, 1)]));
            b
        },
        Expect::Loads { good: 2 },
    );
    add(
        "crlf_line_endings",
        117,
        format!("{HEADER}\r\n{}\r\n{}\r\n", row(117, 0), row(117, 1)).into_bytes(),
        Expect::Loads { good: 2 },
    );
    add(
        "no_final_newline",
        118,
        format!("{HEADER}\n{}\n{}", row(118, 0), row(118, 1)).into_bytes(),
        Expect::Loads { good: 2 },
    );
    add(
        "crlf_line_numbers_and_blank_lines",
        128,
        format!(
            "{HEADER}\r\n{}\r\n\r\n{}\r\n{}\r\n",
            row(128, 0),
            row_with(128, 1, "length", "x"),
            row(128, 2)
        )
        .into_bytes(),
        // Line 3 is blank, so the bad record is on line 4.
        Expect::Reject {
            line: 4,
            column: "length",
            reason: "is not a number",
            good: 2,
        },
    );
    add(
        "empty_file",
        119,
        Vec::new(),
        Expect::Fails {
            message: "the file is empty",
        },
    );
    add(
        "header_only",
        120,
        format!("{HEADER}\r\n").into_bytes(),
        Expect::Loads { good: 0 },
    );
    add(
        "missing_columns",
        121,
        text_file(&[
            "artist,firstName,itemInSession,lastName,length,sessionId".into(),
            "A,Ann,0,Lee,1.0,121".into(),
        ]),
        Expect::Fails {
            message: "line 1: the header lacks required column(s) song, userId",
        },
    );
    add(
        "reordered_columns",
        122,
        text_file(&[
            "userId,song,sessionId,page,lastName,length,itemInSession,firstName,artist".into(),
            "7,Song 122-0,122,NextSong,Lee,201.5,0,Ann,Artist 122".into(),
            "7,Song 122-1,122,NextSong,Lee,201.5,1,Ann,Artist 122".into(),
        ]),
        Expect::Loads { good: 2 },
    );
    add(
        "extra_columns",
        123,
        text_file(&[
            format!("{HEADER},device,country"),
            format!("{},ios,US", row(123, 0)),
            format!("{},\"web, desktop\",FR", row(123, 1)),
        ]),
        Expect::Loads { good: 2 },
    );
    add(
        "header_case_and_spaces",
        124,
        text_file(&[
            HEADER
                .split(',')
                .map(|h| format!("  {}  ", h.to_uppercase()))
                .collect::<Vec<_>>()
                .join(","),
            row(124, 0),
        ]),
        Expect::Loads { good: 1 },
    );
    add(
        "bad_values_in_non_song_events_are_skipped",
        125,
        text_file(&[
            HEADER.into(),
            row(125, 0),
            ",Logged Out,,,3,,,free,,GET,Home,,not-a-number,,200,1.54111E+12,".into(),
            row_with(125, 1, "page", "Home"),
        ]),
        Expect::Loads { good: 1 },
    );
    add(
        "spaces_around_ids",
        126,
        text_file(&[HEADER.into(), row_with(126, 0, "sessionId", " 126 ")]),
        Expect::Loads { good: 1 },
    );
    add(
        "duplicate_rows_are_one_play",
        127,
        text_file(&[HEADER.into(), row(127, 0), row(127, 0), row(127, 1)]),
        Expect::Loads { good: 2 },
    );
    cases
}

/// Every rejects file under `<sandbox>/rejects`, by path relative to it, with its records.
/// Leftover temporary files fail the test: a rejects file is put in place whole or not at all.
fn rejects_files(sb: &Sandbox) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let root = sb.join("rejects");
    let mut found = BTreeMap::new();
    for e in walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
        assert!(
            rel.ends_with(".rejects.csv"),
            "stray file in rejects/: {rel}"
        );
        let text = std::fs::read_to_string(e.path()).unwrap();
        found.insert(rel, parse_csv(&text));
    }
    found
}

/// The records of the one rejects file of input `<name>.csv` loaded from a folder argument,
/// `rejects/<name>.csv.<hash>.rejects.csv`; none when there is no such file.
fn rejects_of(sb: &Sandbox, name: &str) -> Vec<BTreeMap<String, String>> {
    let prefix = format!("{name}.csv.");
    let mut matching: Vec<_> = rejects_files(sb)
        .into_iter()
        .filter(|(rel, _)| rel.starts_with(&prefix) && !rel.contains('/'))
        .collect();
    assert!(matching.len() <= 1, "{name}: {matching:?}");
    matching
        .pop()
        .map(|(_, records)| records)
        .unwrap_or_default()
}

/// The 12-character content-hash part of a rejects file's name.
fn hash_part(rel: &str) -> &str {
    let stem = rel.strip_suffix(".rejects.csv").unwrap();
    &stem[stem.len() - 12..]
}

fn plays_of_session(sb: &Sandbox, session: u32) -> usize {
    table_rows(&sb.db(), "song_plays_by_session")
        .iter()
        .filter(|r| r.split('|').next() == Some(&session.to_string()))
        .count()
}

#[test]
fn every_bad_input_gets_its_own_message_and_loses_nothing_else() {
    let sb = Sandbox::new();
    let dir = sb.join("bad");
    std::fs::create_dir(&dir).unwrap();
    let cases = corpus();
    assert!(cases.len() >= 20);
    for c in &cases {
        std::fs::write(dir.join(format!("{}.csv", c.name)), &c.bytes).unwrap();
    }
    let out = sb.run(&["ingest", "bad"]);
    // Two files failed as a whole, so the run exits 1 — after loading everything else.
    assert_eq!(
        code(&out),
        1,
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let log = stderr(&out);
    assert!(
        stdout(&out).contains("files      26 loaded, 2 failed"),
        "{}",
        stdout(&out)
    );

    for c in &cases {
        let rejects = rejects_of(&sb, c.name);
        match &c.expect {
            Expect::Reject {
                line,
                column,
                reason,
                good,
            } => {
                assert_eq!(rejects.len(), 1, "{}: {rejects:?}", c.name);
                let r = &rejects[0];
                assert_eq!(r["line"], line.to_string(), "{}", c.name);
                assert_eq!(r["column"], *column, "{}", c.name);
                assert!(r["reason"].contains(reason), "{}: {}", c.name, r["reason"]);
                assert_eq!(plays_of_session(&sb, c.session), *good, "{}", c.name);
                assert!(
                    log.contains(&format!("{}.csv: ", c.name)) && log.contains("1 rejected"),
                    "{}",
                    c.name
                );
            }
            Expect::Loads { good } => {
                assert!(rejects.is_empty(), "{}: {rejects:?}", c.name);
                assert_eq!(plays_of_session(&sb, c.session), *good, "{}", c.name);
            }
            Expect::Fails { message } => {
                let line = log
                    .lines()
                    .find(|l| l.contains(&format!("{}.csv", c.name)))
                    .unwrap_or_default();
                assert!(line.starts_with("failed"), "{}: {line}", c.name);
                assert!(line.contains(message), "{}: {line}", c.name);
                assert_eq!(plays_of_session(&sb, c.session), 0, "{}", c.name);
            }
        }
    }

    // The rejects file keeps the original fields next to the reason.
    let r = &rejects_of(&sb, "session_not_integer")[0];
    assert_eq!(r["value"], "abc");
    assert_eq!(r["sessionId"], "abc");
    assert_eq!(r["artist"], "Artist 103");
    assert_eq!(r["location"], "Lansing, MI");

    // Values round-trip through the odd layouts.
    let out = sb.run(&["query", "user", "7", "122", "--format", "csv"]);
    assert_eq!(
        stdout(&out),
        "iteminsession,artist,song,firstname,lastname\n0,Artist 122,Song 122-0,Ann,Lee\n1,Artist 122,Song 122-1,Ann,Lee\n"
    );
    let out = sb.run(&["query", "session", "114", "1", "--format", "csv"]);
    assert_eq!(
        stdout(&out),
        "artist,song,length\n\"Des\"\"ree\",Song 114-1,201.5\n"
    );

    // The failed files are in the ledger with their reason.
    let status = sb.run(&["status", "--format", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout(&status)).unwrap();
    let failed: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["status"] == "failed").collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().any(|e| {
        e["reason"]
            .as_str()
            .unwrap()
            .contains("lacks required column(s) song, userId")
    }));
}

#[test]
fn strict_makes_rejects_fatal_and_validate_flags_them() {
    let sb = Sandbox::new();
    let dir = sb.join("in");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("a.csv"),
        text_file(&[HEADER.into(), row(1, 0), row_with(1, 1, "length", "x")]),
    )
    .unwrap();
    let out = sb.run(&["ingest", "--strict", "in"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        plays_of_session(&sb, 1),
        1,
        "good rows still load under --strict"
    );
    let out = sb.run(&["ingest", "--force", "in"]);
    assert_eq!(code(&out), 0, "rejects alone are not fatal");

    let out = sb.run(&["validate", "in"]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains("a.csv: 2 rows, 1 song plays, 0 skipped, 1 rejected"),
        "{text}"
    );
    assert!(
        text.contains(
            "line 3: column length = \"x\": is not a number; expected a length in seconds"
        ),
        "{text}"
    );
}

#[test]
fn a_reload_replaces_its_own_rejects_and_another_version_keeps_them() {
    let sb = Sandbox::new();
    let dir = sb.join("in");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("day.csv");
    let bad = text_file(&[HEADER.into(), row_with(1, 0, "userId", ""), row(1, 1)]);
    std::fs::write(&file, &bad).unwrap();
    assert_eq!(code(&sb.run(&["ingest", "in"])), 0);
    let first = rejects_files(&sb);
    assert_eq!(first.len(), 1, "{first:?}");
    let (name, records) = first.iter().next().unwrap();
    assert_eq!(records.len(), 1);
    // The same content again: its own rejects file is replaced, not appended to.
    assert_eq!(code(&sb.run(&["ingest", "--force", "in"])), 0);
    assert_eq!(rejects_files(&sb), first);
    // A clean new version is another input: the rejects of the first stay.
    std::fs::write(&file, text_file(&[HEADER.into(), row(1, 0)])).unwrap();
    assert_eq!(code(&sb.run(&["ingest", "in"])), 0);
    assert_eq!(rejects_files(&sb), first, "{name} was touched");
    // The name carries the content hash the ledger knows the file by.
    let hashes: Vec<String> = table_rows(&sb.db(), "ingest_ledger")
        .iter()
        .map(|r| r.split('|').next().unwrap().to_string())
        .collect();
    assert!(
        hashes.iter().any(|h| h.starts_with(hash_part(name))),
        "{name} vs {hashes:?}"
    );
}

/// `n` song plays of session `session` whose length is not a number, after one good play.
fn many_rejects(session: u32, n: u32) -> Vec<u8> {
    let mut lines = vec![HEADER.to_string(), row(session, 0)];
    lines.extend((1..=n).map(|i| row_with(session, i, "length", &format!("bad{i}"))));
    text_file(&lines)
}

/// Checks that a rejects file holds exactly the `n` records of `many_rejects(session, n)`.
fn assert_whole_rejects(records: &[BTreeMap<String, String>], session: u32, n: u32) {
    assert_eq!(records.len(), n as usize);
    for (i, r) in (1..=n).zip(records) {
        assert_eq!(r["line"], (i + 2).to_string());
        assert_eq!(r["value"], format!("bad{i}"));
        assert_eq!(r["sessionId"], session.to_string());
        assert_eq!(r["song"], format!("Song {session}-{i}"));
        assert_eq!(r["userId"], "7", "a torn record: {r:?}");
    }
}

#[test]
fn same_named_files_in_different_folders_keep_whole_rejects_of_their_own() {
    let sb = Sandbox::new();
    for (folder, session, n) in [("a", 1, 3000), ("b", 2, 2000)] {
        std::fs::create_dir_all(sb.join(&format!("in/{folder}"))).unwrap();
        std::fs::write(
            sb.join(&format!("in/{folder}/day.csv")),
            many_rejects(session, n),
        )
        .unwrap();
    }
    let out = sb.run(&["ingest", "in"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let found = rejects_files(&sb);
    let names: Vec<&String> = found.keys().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("a/day.csv."), "{names:?}");
    assert!(names[1].starts_with("b/day.csv."), "{names:?}");
    assert_whole_rejects(&found[names[0]], 1, 3000);
    assert_whole_rejects(&found[names[1]], 2, 2000);
    // Each summary line names its own rejects file.
    let log = stderr(&out);
    assert!(
        log.contains(&format!("rejects in rejects/{}", names[0])),
        "{log}"
    );
    assert!(
        log.contains(&format!("rejects in rejects/{}", names[1])),
        "{log}"
    );

    // A clean file of the same path under another argument leaves them alone.
    std::fs::create_dir_all(sb.join("other/a")).unwrap();
    std::fs::write(
        sb.join("other/a/day.csv"),
        text_file(&[HEADER.into(), row(3, 0)]),
    )
    .unwrap();
    assert_eq!(code(&sb.run(&["ingest", "other"])), 0);
    assert_eq!(rejects_files(&sb), found);
    assert_eq!(plays_of_session(&sb, 3), 1);
}

#[test]
fn a_251_byte_file_name_loads_and_its_rejects_name_is_shortened_to_fit() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    let name = format!("{}.csv", "x".repeat(247));
    assert_eq!(name.len(), 251);
    std::fs::write(
        sb.join("in").join(&name),
        text_file(&[HEADER.into(), row(1, 0), row_with(1, 1, "length", "x")]),
    )
    .unwrap();
    let out = sb.run(&["ingest", "in"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("files      1 loaded, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(plays_of_session(&sb, 1), 1);
    let found = rejects_files(&sb);
    let (rejects, records) = found.iter().next().expect("a rejects file");
    assert!(rejects.len() <= 255, "{} bytes", rejects.len());
    assert!(rejects.starts_with(&"x".repeat(200)), "{rejects}");
    assert!(rejects.contains('~'), "{rejects}");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"], "x");
}

#[test]
fn the_daemon_mirrors_the_watched_folder_in_rejects() {
    let sb = Sandbox::new();
    let d = Daemon::start(&sb, &[]);
    d.wait_for_message("Watching folder", std::time::Duration::from_secs(30));
    for (folder, session, n) in [("a", 1, 300), ("b", 2, 200)] {
        drop_by_rename(
            &sb.join(&format!("event_data/{folder}/day.csv")),
            &many_rejects(session, n),
        );
    }
    wait_until(
        "both files ledgered",
        std::time::Duration::from_secs(30),
        || ledger_count(&sb.db(), "loaded") == 2,
    );
    assert_eq!(d.stop(), 0);
    let found = rejects_files(&sb);
    let names: Vec<&String> = found.keys().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("a/day.csv."), "{names:?}");
    assert!(names[1].starts_with("b/day.csv."), "{names:?}");
    assert_whole_rejects(&found[names[0]], 1, 300);
    assert_whole_rejects(&found[names[1]], 2, 200);
}

/// True when `bytes` hold a C0 control other than tab and line ending, or DEL: what a terminal
/// could act on.
fn has_raw_controls(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') || b == 0x7f)
}

#[test]
fn control_bytes_in_values_are_stored_exactly_and_shown_escaped() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    let artist = "Evil\u{1b}[2J\u{7}";
    let song = "Nul\0Song\u{7f}";
    let last = "Lee\u{1b}]0;title\u{7}";
    let mut good = row_with(1, 0, "artist", artist);
    good = good
        .replace("Song 1-0", song)
        .replace(",Lee,", &format!(",{last},"));
    let bad = row_with(1, 1, "length", "1\u{1b}[31m");
    std::fs::write(
        sb.join("in/day.csv"),
        text_file(&[HEADER.into(), good, bad]),
    )
    .unwrap();

    let out = sb.run(&["ingest", "in"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !has_raw_controls(&out.stdout) && !has_raw_controls(&out.stderr),
        "{out:?}"
    );
    // Stored as written.
    assert_eq!(
        table_rows(&sb.db(), "song_plays_by_session"),
        vec![format!("1|0|{artist}|{song}|201.5")]
    );
    // CSV and JSON give the values back exactly; the table shows them escaped.
    let out = sb.run(&["query", "user", "7", "1", "--format", "csv"]);
    assert_eq!(
        stdout(&out),
        format!("iteminsession,artist,song,firstname,lastname\n0,{artist},{song},Ann,{last}\n")
    );
    let out = sb.run(&["query", "user", "7", "1", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["artist"], artist);
    assert_eq!(json[0]["song"], song);
    assert_eq!(json[0]["lastname"], last);
    let out = sb.run(&["query", "user", "7", "1"]);
    assert!(!has_raw_controls(&out.stdout), "{:?}", stdout(&out));
    assert!(
        stdout(&out)
            .contains("Evil\\x1b[2J\\x07  Nul\\x00Song\\x7f  Ann        Lee\\x1b]0;title\\x07"),
        "{}",
        stdout(&out)
    );
    // The reject's value is shown escaped; its original fields stay exact in the rejects file.
    let out = sb.run(&["validate", "in"]);
    assert!(!has_raw_controls(&out.stdout), "{:?}", stdout(&out));
    assert!(
        stdout(&out).contains("line 3: column length = \"1\\x1b[31m\": is not a number"),
        "{}",
        stdout(&out)
    );
    let r = &rejects_of(&sb, "day")[0];
    assert_eq!(r["value"], "1\\x1b[31m");
    assert_eq!(r["length"], "1\u{1b}[31m");
}

#[test]
fn binary_headers_are_shown_escaped_with_their_likely_cause() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    let csv = text_file(&[HEADER.into(), row(1, 0)]);
    // (gzip and zstd are decompressed on the way: tests/compressed.rs.)
    let xz = std::process::Command::new("xz")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&csv)?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    assert_eq!(&xz[..6], b"\xfd7zXZ\x00");
    std::fs::write(sb.join("in/xz.csv"), &xz).unwrap();
    let utf16: Vec<u8> = format!("\u{feff}{}", String::from_utf8(csv).unwrap())
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::write(sb.join("in/utf16.csv"), &utf16).unwrap();

    let out = sb.run(&["ingest", "in"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        !has_raw_controls(&out.stdout) && !has_raw_controls(&out.stderr),
        "{out:?}"
    );
    let log = stderr(&out);
    let line = |name: &str| {
        log.lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_string()
    };
    let xz = line("xz.csv");
    assert!(xz.starts_with("failed"), "{xz}");
    assert!(xz.contains("found: \\xfd7zXZ\\x00"), "{xz}");
    assert!(
        xz.contains("(looks like xz-compressed data; decompress it first)"),
        "{xz}"
    );
    let utf16 = line("utf16.csv");
    assert!(
        utf16.contains("found: \\xff\\xfea\\x00r\\x00t\\x00"),
        "{utf16}"
    );
    assert!(
        utf16.contains("(looks like UTF-16 text; save it as UTF-8)"),
        "{utf16}"
    );
    assert!(utf16.len() < 600, "the header is shown shortened: {utf16}");
    // The ledger keeps the same escaped reasons.
    let status = sb.run(&["status", "--format", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(entries.len(), 2);
    for e in &entries {
        let reason = e["reason"].as_str().unwrap();
        assert!(!has_raw_controls(reason.as_bytes()), "{reason:?}");
        assert!(reason.contains("(looks like "), "{reason}");
    }
}
