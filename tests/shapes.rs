//! Input shapes that once broke the memory bound: rows of nothing but commas, headers of a
//! million columns, thousands of tiny files. Each runs the real binary and checks what it did
//! and its peak memory (`VmHWM`, from the summary), small enough to run in every test run; the
//! full-size figures are in the benchmark suite (BENCHMARKS.md).

mod util;

use std::io::Write;

use util::*;

const HEADER: &str = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";

fn row(session: u32, item: u32) -> String {
    format!(
        "Artist {session},Logged In,Ann,F,{item},Lee,201.5,free,\"Lansing, MI\",PUT,NextSong,1.54092E+12,{session},Song {session}-{item},200,1.54111E+12,7"
    )
}

fn peak_mib(summary: &serde_json::Value) -> f64 {
    summary["peak_rss_kib"].as_u64().expect("peak_rss_kib") as f64 / 1024.0
}

#[test]
fn rows_of_commas_are_rejected_and_memory_stays_bounded() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    // 20 MB: 300 rows of 65,000 commas (each under extract.max_record_bytes), between good rows.
    let mut f = std::io::BufWriter::new(std::fs::File::create(sb.join("in/wide.csv")).unwrap());
    writeln!(f, "{HEADER}\n{}", row(1, 0)).unwrap();
    let commas = ",".repeat(65_000);
    for _ in 0..300 {
        writeln!(f, "{commas}").unwrap();
    }
    writeln!(f, "{}", row(1, 1)).unwrap();
    drop(f);

    let (code, summary, log) = ingest_json(&sb, &["in"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(summary["plays"], 2, "{summary}");
    assert_eq!(summary["rejected"], 300, "{summary}");
    // Each of those records alone takes 520 KB of field bookkeeping: 256 of them in a batch,
    // a few batches ahead, came to several hundred MiB. Now a record over extract.max_fields
    // is cut to its first fields as soon as it is parsed.
    let peak = peak_mib(&summary);
    assert!(peak < 80.0, "peak RSS {peak:.1} MiB");

    let out = sb.run(&["validate", "--show", "1", "in"]);
    assert!(
        stdout(&out).contains(
            "line 3: has 65001 fields; the bound is 1000 (extract.max_fields) and the header has 17; the rejects file keeps the first 1000"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_header_of_a_million_columns_fails_its_file_with_the_reason() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    let header = format!("{HEADER}{}", ",x".repeat(1_000_000));
    std::fs::write(
        sb.join("in/columns.csv"),
        format!("{header}\n{}\n", row(1, 0)),
    )
    .unwrap();

    // 2 MB of header is over extract.max_record_bytes to begin with.
    let (code, summary, log) = ingest_json(&sb, &["in"]);
    assert_eq!(code, 1, "{log}");
    assert_eq!(summary["failed"], 1, "{summary}");
    assert!(
        log.contains("in/columns.csv: line 1: the header is over 65536 bytes long (extract.max_record_bytes); it starts: artist,auth,"),
        "{log}"
    );
    // With room for so long a line, the column count is what stops it.
    let (code, summary, log) = ingest_json(
        &sb,
        &["--set", "extract.max_record_bytes=8388608", "--force", "in"],
    );
    assert_eq!(code, 1, "{log}");
    assert_eq!(summary["failed"], 1, "{summary}");
    assert!(
        log.contains("in/columns.csv: line 1: the header has 1000017 columns; the bound is 1000 (extract.max_fields)"),
        "{log}"
    );
    assert!(peak_mib(&summary) < 120.0, "{summary}");
    assert_eq!(ledger_count(&sb.db(), "failed"), 1);
}

#[test]
fn a_header_at_the_column_bound_loads() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    let extra: String = (0..983).map(|i| format!(",x{i}")).collect();
    let values: String = (0..983).map(|i| format!(",{}", i % 10)).collect();
    let mut text = format!("{HEADER}{extra}\n");
    for i in 0..50 {
        text.push_str(&format!("{}{values}\n", row(1, i)));
    }
    std::fs::write(sb.join("in/wide_header.csv"), text).unwrap();
    let (code, summary, log) = ingest_json(&sb, &["in"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(summary["plays"], 50, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");
}

/// Peak RSS of loading `n` files of five song plays each, in a fresh sandbox.
fn peak_for_tiny_files(n: u32) -> f64 {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("in")).unwrap();
    for f in 0..n {
        let rows: Vec<String> = (0..5).map(|i| row(f + 1, i)).collect();
        std::fs::write(
            sb.join(&format!("in/{f:05}.csv")),
            format!("{HEADER}\n{}\n", rows.join("\n")),
        )
        .unwrap();
    }
    let (code, summary, log) = ingest_json(&sb, &["in"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(summary["loaded"], n, "{summary}");
    assert_eq!(summary["plays"], 5 * n, "{summary}");
    peak_mib(&summary)
}

#[test]
fn memory_does_not_grow_with_the_number_of_files() {
    // Each tiny file used to hold a chunk buffer of chunk_rows plays until its write group
    // was written, and a group gathered up to 100,000 plays: 1,000 and 5,000 five-row files
    // peaked at 52 and 189 MiB. Buffers now grow with their plays and a group takes a bounded
    // number of chunks, so past the few hundred files that can be in flight at once, more files
    // add only their bookkeeping (a few hundred bytes each; 3-7 MiB here for 4,000 more).
    let few = peak_for_tiny_files(1_000);
    let many = peak_for_tiny_files(5_000);
    assert!(
        many - few < 24.0,
        "1,000 files: {few:.1} MiB, 5,000 files: {many:.1} MiB"
    );
}
