//! The benchmark suite (`benches/suite.rs`) at tiny sizes, in the debug build CI runs, so that
//! it cannot rot: every part runs end to end and loads exactly the plays and rows it should.
//! No figure is checked against a target here; a shared CI machine is too noisy for that, and
//! the targets are judged by the full run in BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../benches/suite.rs"]
mod suite;

#[test]
fn every_part_of_the_benchmark_suite_runs_at_tiny_sizes() {
    let plan = suite::Plan::tiny();
    let report = suite::run(&plan);
    let table = report.markdown();
    println!("{table}");

    let e = report.extract.as_ref().expect("extract part");
    assert_eq!(e.rows, plan.extract_rows);
    assert!(e.plays > 0 && e.bytes > 0);
    assert!(e.ratio() > 0.0);

    assert_eq!(report.embedded.len(), plan.embedded_rows.len());
    for r in &report.embedded {
        assert_eq!(r.ingest.len(), plan.repeat);
        assert!(
            r.ingest
                .iter()
                .all(|i| i.plays == r.plays && i.plays_per_sec > 0.0)
        );
        assert!(r.peak_rss_kib() > 0, "peak RSS from the ingest summary");
        assert!(r.ceiling_plays_per_sec() > 0.0);
    }

    let [sample, generated] = report.cassandra.as_slice() else {
        panic!("two Cassandra cases: {:?}", report.cassandra)
    };
    assert_eq!(sample.label, "real sample");
    for c in [sample, generated] {
        assert_eq!(c.rows_found, c.rows_expected, "{}", c.label);
        assert!(c.requests_per_play() > 0.0 && c.ceiling_plays_per_sec() > 0.0);
    }
    // Where partitions repeat, rows of one partition share a batch.
    assert!(generated.requests_per_play() < 3.0);

    let l = report.latency.as_ref().expect("latency part");
    assert_eq!(l.latencies.len(), plan.drops);

    let [
        ordinary,
        wide,
        two_wide,
        columns,
        columns_8m,
        at_bound,
        long,
        tiny,
    ] = report.memory.as_slice()
    else {
        panic!("eight memory cases: {:?}", report.memory)
    };
    assert_eq!((ordinary.exit, ordinary.failed), (0, 0), "{ordinary:?}");
    assert!(ordinary.plays > 0);
    for w in [wide, two_wide] {
        assert_eq!(w.rejected, plan.wide_rows as u64 * w.files as u64, "{w:?}");
        assert_eq!(w.plays, 2 * w.files as u64, "{w:?}");
    }
    for c in [columns, columns_8m] {
        assert_eq!((c.exit, c.failed), (1, 1), "{c:?}");
    }
    assert_eq!(at_bound.plays, plan.long_rows as u64 * 10, "{at_bound:?}");
    assert_eq!(long.plays, plan.long_rows as u64, "{long:?}");
    assert_eq!(tiny.loaded, plan.tiny_files as u64, "{tiny:?}");
    for m in &report.memory {
        assert_eq!(m.peak_rss_kib.len(), plan.repeat);
        assert!(m.peak_kib() > 0 && m.bound_kib > m.peak_kib(), "{m:?}");
    }

    let c = report.compressed.as_ref().expect("compressed part");
    assert!(c.plays > 0 && c.bytes[0] > c.bytes[1] && c.bytes[0] > c.bytes[2]);
    for i in 0..3 {
        assert_eq!(c.ingest[i].len(), plan.repeat);
        assert!(c.ingest[i].iter().all(|r| r.plays == c.plays));
        assert!(c.ingest_plays_per_sec(i) > 0.0 && !c.reader[i].is_empty());
    }
    assert!(c.decode_plays_per_sec(1) > 0.0 && c.decode_plays_per_sec(2) > 0.0);

    for heading in [
        "1 extract",
        "2 embedded",
        "3 cassandra",
        "4 daemon",
        "5 memory",
        "6 compressed",
        "Runs:",
    ] {
        assert!(table.contains(heading), "{heading} missing from\n{table}");
    }
}

#[test]
fn the_runner_takes_sizes_with_suffixes_and_refuses_unknown_options() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (plan, out) = suite::Plan::from_args(&args(&[
        "--bench",
        "--embedded-rows",
        "1m,3m,10m",
        "--extract-rows",
        "250k",
        "--parts",
        "extract,latency,memory",
        "--out",
        "x.md",
    ]))
    .unwrap();
    assert_eq!(plan.embedded_rows, [1_000_000, 3_000_000, 10_000_000]);
    assert_eq!(plan.extract_rows, 250_000);
    assert_eq!(
        plan.parts,
        [
            suite::Part::Extract,
            suite::Part::Latency,
            suite::Part::Memory
        ]
    );
    assert_eq!(out.as_deref(), Some(std::path::Path::new("x.md")));
    assert!(suite::Plan::from_args(&args(&["--nope"])).is_err());
    assert!(suite::Plan::from_args(&args(&["--parts", "disk"])).is_err());
    assert!(suite::Plan::from_args(&args(&["--repeat"])).is_err());
}
