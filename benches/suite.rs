//! The benchmark suite: every figure of issue 6 next to the limit it is judged against, measured
//! in the same run and printed as one Markdown table.
//!
//! 1. Extract: `PlayReader` on a generated file against the `csv` crate iterating
//!    `ByteRecord`s over the same bytes (the raw ceiling).
//! 2. Embedded: `sparkify ingest` (the real binary) into a fresh SQLite store, against the
//!    store's own ceiling: the same plays, parsed beforehand, written by the same statements
//!    (`EmbeddedStore::write`) in transactions of the same size with no pipeline around them.
//! 3. Cassandra: `sparkify ingest` into the in-process CQL server (`kassandra-tester`),
//!    against that server's ceiling: a plain driver loop of prepared single-row inserts with
//!    256 requests in flight, on a fresh server each time.
//! 4. Daemon latency: a file renamed into the watched folder until its rows are queryable.
//! 5. Memory: the peak RSS of `sparkify ingest` on input shapes that once broke the memory
//!    bound (rows of nothing but commas, 100,000 columns, long values, 20,000 tiny files) next
//!    to ordinary data, against the bound the README states for the configuration.
//! 6. Compressed: `sparkify ingest` of the same generated events as plain CSV, `.csv.gz` and
//!    `.csv.zst`, one after the other in each round, next to each decoder's own ceiling: the
//!    same compressed bytes decompressed to nowhere (`flate2`, `zstd`, the libraries the reader's
//!    decoders use), and `PlayReader` over each form for where the time goes.
//!
//! Run it with `cargo bench --bench suite` (or `scripts/bench.sh`); `-- --help` lists the
//! options. `tests/bench_suite.rs` runs the same code at tiny sizes so it cannot rot. The
//! figures are medians of `--repeat` runs; every run is listed under the table, with the load
//! average of the machine before and after, so a noisy run shows as such.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use sparkify::config::{CassandraSettings, EmbeddedSettings};
use sparkify::extract::{ExtractOptions, Item, PlayReader, SongPlay};
use sparkify::store::{CassandraStore, EmbeddedStore, TABLES};
use sparkify::transform::Transform;
use tokio_util::sync::CancellationToken;

// The in-process CQL server the Cassandra tests use, shared rather than written twice.
#[path = "../tests/common/cql.rs"]
mod cql;
use cql::Emulator;

/// One of the six parts of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Extract,
    Embedded,
    Cassandra,
    Latency,
    Memory,
    Compressed,
}

impl Part {
    const ALL: [Part; 6] = [
        Part::Extract,
        Part::Embedded,
        Part::Cassandra,
        Part::Latency,
        Part::Memory,
        Part::Compressed,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Extract => "extract",
            Part::Embedded => "embedded",
            Part::Cassandra => "cassandra",
            Part::Latency => "latency",
            Part::Memory => "memory",
            Part::Compressed => "compressed",
        }
    }
}

/// What to run, at which sizes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub parts: Vec<Part>,
    /// Events in the one file the extract part reads.
    pub extract_rows: u64,
    /// Events per embedded end-to-end case (one case each).
    pub embedded_rows: Vec<u64>,
    /// Events per generated file in the load cases (the real exports hold one day each).
    pub rows_per_file: u64,
    /// `embedded.transaction_rows`, for the ingest and for the store's ceiling alike.
    pub transaction_rows: usize,
    /// Files of the real sample loaded into the CQL server (all 30 by default).
    pub sample_files: usize,
    /// Events of the generated Cassandra case; 0 leaves it out.
    pub cassandra_rows: u64,
    /// Requests in flight in the server-ceiling loop.
    pub in_flight: usize,
    /// Files dropped into the daemon's folder (after one warm-up drop).
    pub drops: usize,
    /// Events per dropped file (a real daily export holds about 270).
    pub drop_rows: u64,
    /// Memory part: events of the ordinary case; rows of 65,000 commas in the wide-row file
    /// (3,000 is 195 MB); rows of the 100,000-column file; plays of 60 KB in the long-values
    /// file; five-row files in the many-files case.
    pub memory_rows: u64,
    pub wide_rows: usize,
    pub column_rows: usize,
    pub long_rows: usize,
    pub tiny_files: usize,
    /// Events of the compressed part (the same events plain, gzip and zstd).
    pub compressed_rows: u64,
    /// Runs per figure; the table shows medians.
    pub repeat: usize,
    /// Where data and stores go; a temporary folder under the target dir when absent.
    pub work_dir: Option<PathBuf>,
    /// The `sparkify` binary under test.
    pub binary: PathBuf,
}

impl Plan {
    /// The sizes of the issue: 1M rows for extract, 1M and 3M rows end to end.
    pub fn full() -> Plan {
        Plan {
            parts: Part::ALL.to_vec(),
            extract_rows: 1_000_000,
            embedded_rows: vec![1_000_000, 3_000_000],
            rows_per_file: 100_000,
            transaction_rows: 100_000,
            sample_files: 30,
            cassandra_rows: 1_000_000,
            in_flight: 256,
            drops: 100,
            drop_rows: 300,
            memory_rows: 1_000_000,
            wide_rows: 3_000,
            column_rows: 200,
            long_rows: 3_000,
            tiny_files: 20_000,
            compressed_rows: 1_000_000,
            repeat: 3,
            work_dir: None,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_sparkify")),
        }
    }

    /// Every part at sizes that take seconds in a debug build, for CI.
    pub fn tiny() -> Plan {
        Plan {
            extract_rows: 5_000,
            embedded_rows: vec![3_000],
            rows_per_file: 1_000,
            transaction_rows: 1_000,
            sample_files: 3,
            cassandra_rows: 2_000,
            in_flight: 64,
            drops: 5,
            drop_rows: 100,
            memory_rows: 3_000,
            wide_rows: 20,
            column_rows: 5,
            long_rows: 20,
            tiny_files: 100,
            compressed_rows: 3_000,
            repeat: 1,
            ..Plan::full()
        }
    }

    const USAGE: &str = "\
Usage: cargo bench --bench suite -- [OPTIONS]

Options (sizes take k and m suffixes: 3m = 3,000,000):
  --parts LIST            extract,embedded,cassandra,latency,memory,compressed (default: all)
  --extract-rows N        events in the extract file (default 1m)
  --embedded-rows LIST    events per end-to-end case (default 1m,3m; 10m if time allows)
  --rows-per-file N       events per generated file (default 100k)
  --transaction-rows N    embedded.transaction_rows for ingest and ceiling (default 100k)
  --sample-files N        files of the real sample for the Cassandra part (default 30)
  --cassandra-rows N      events of the generated Cassandra case, 0 for none (default 1m)
  --drops N               files dropped into the daemon's folder (default 100)
  --tiny-files N          five-row files of the memory part's many-files case (default 20k)
  --compressed-rows N     events of the compressed part, plain, gzip and zstd (default 1m)
  --repeat N              runs per figure; medians are shown (default 3)
  --work-dir DIR          keep data and stores here instead of a temporary folder
  --tiny                  every part at CI sizes
  --out FILE              also write the Markdown report to FILE";

    /// Parses the bench's command line (`--help` is answered before it); `Err` holds the
    /// message to print.
    pub fn from_args(args: &[String]) -> Result<(Plan, Option<PathBuf>), String> {
        let mut plan = if args.iter().any(|a| a == "--tiny") {
            Plan::tiny()
        } else {
            Plan::full()
        };
        let mut out = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            // cargo bench passes --bench to harness-less benches.
            if arg == "--bench" || arg == "--tiny" {
                continue;
            }
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs a value\n\n{}", Plan::USAGE))
            };
            match arg.as_str() {
                "--parts" => {
                    plan.parts = value()?
                        .split(',')
                        .map(|p| {
                            Part::ALL
                                .into_iter()
                                .find(|x| x.name() == p.trim())
                                .ok_or_else(|| format!("no part {p:?}; parts are {:?}", Part::ALL))
                        })
                        .collect::<Result<_, _>>()?
                }
                "--extract-rows" => plan.extract_rows = count(&value()?)?,
                "--embedded-rows" => {
                    plan.embedded_rows = value()?.split(',').map(count).collect::<Result<_, _>>()?
                }
                "--rows-per-file" => plan.rows_per_file = count(&value()?)?.max(1),
                "--transaction-rows" => plan.transaction_rows = count(&value()?)?.max(1) as usize,
                "--sample-files" => plan.sample_files = count(&value()?)? as usize,
                "--cassandra-rows" => plan.cassandra_rows = count(&value()?)?,
                "--drops" => plan.drops = count(&value()?)?.max(1) as usize,
                "--tiny-files" => plan.tiny_files = count(&value()?)?.max(1) as usize,
                "--compressed-rows" => plan.compressed_rows = count(&value()?)?.max(1),
                "--repeat" => plan.repeat = count(&value()?)?.max(1) as usize,
                "--work-dir" => plan.work_dir = Some(PathBuf::from(value()?)),
                "--out" => out = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown option {other}\n\n{}", Plan::USAGE)),
            }
        }
        Ok((plan, out))
    }
}

/// `250k`, `3m`, `1000`.
fn count(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, scale) = match s.strip_suffix('m') {
        Some(d) => (d, 1_000_000.0),
        None => match s.strip_suffix('k') {
            Some(d) => (d, 1_000.0),
            None => (s.as_str(), 1.0),
        },
    };
    digits
        .parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| (v * scale).round() as u64)
        .ok_or_else(|| format!("{s:?} is not a count (e.g. 5000, 250k, 3m)"))
}

/// Part 1.
#[derive(Debug, Clone)]
pub struct ExtractResult {
    pub rows: u64,
    pub plays: u64,
    pub bytes: u64,
    /// Seconds per run: `csv` `ByteRecord`s (the ceiling).
    pub raw: Vec<f64>,
    /// `csv_async` `ByteRecord`s behind the same buffer as `PlayReader` (context).
    pub raw_async: Vec<f64>,
    /// `PlayReader`, song plays validated and built.
    pub reader: Vec<f64>,
    /// `PlayReader` plus the mojibake repair, which is what the pipeline's readers do.
    pub reader_transform: Vec<f64>,
    /// CPU seconds (all threads) of the `csv` and `PlayReader` runs: `PlayReader` parses on a
    /// thread of its own, so its wall-clock time alone would hide what it costs.
    pub raw_cpu: Vec<f64>,
    pub reader_cpu: Vec<f64>,
}

/// One `sparkify ingest --format json` summary.
#[derive(Debug, Clone, Copy)]
pub struct IngestRun {
    pub plays: u64,
    pub elapsed_secs: f64,
    pub plays_per_sec: f64,
    pub peak_rss_kib: u64,
}

/// Part 2, one size.
#[derive(Debug, Clone)]
pub struct EmbeddedResult {
    pub rows: u64,
    pub plays: u64,
    pub files: usize,
    pub ingest: Vec<IngestRun>,
    /// Seconds per run of the store's ceiling.
    pub ceiling: Vec<f64>,
}

/// Part 3, one input.
#[derive(Debug, Clone)]
pub struct CassandraResult {
    pub label: String,
    pub plays: u64,
    /// Requests in flight in the ceiling loop.
    pub in_flight: usize,
    /// Single-row inserts per second, per run.
    pub ceiling_rows_per_sec: Vec<f64>,
    pub ingest: Vec<IngestRun>,
    /// CQL requests of each ingest run (statements and batches).
    pub requests: Vec<u64>,
    /// Rows found in the server's three tables after the last ingest, and the distinct keys
    /// of the input, which they must equal.
    pub rows_found: [u64; 3],
    pub rows_expected: [u64; 3],
}

/// Part 4.
#[derive(Debug, Clone)]
pub struct LatencyResult {
    pub drop_rows: u64,
    pub latencies: Vec<Duration>,
}

/// Part 5, one input shape.
#[derive(Debug, Clone)]
pub struct MemoryResult {
    pub label: String,
    /// Bytes and files of the input.
    pub bytes: u64,
    pub files: usize,
    /// What the runs ended with: exit code and the summary's counts (the same every run).
    pub exit: i32,
    pub loaded: u64,
    pub failed: u64,
    pub plays: u64,
    pub rejected: u64,
    /// Peak RSS (`VmHWM`) and seconds of each run.
    pub peak_rss_kib: Vec<u64>,
    pub elapsed_secs: Vec<f64>,
    /// The README's bound for the settings of the run, in KiB.
    pub bound_kib: u64,
}

impl MemoryResult {
    /// Highest peak RSS of the runs, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak_rss_kib.iter().copied().max().unwrap_or(0)
    }
}

/// Part 6: the same events plain, gzip and zstd (index 0, 1, 2 of each array).
#[derive(Debug, Clone)]
pub struct CompressedResult {
    pub rows: u64,
    pub plays: u64,
    pub files: usize,
    /// Bytes as stored.
    pub bytes: [u64; 3],
    /// `sparkify ingest` into a fresh store, per form.
    pub ingest: [Vec<IngestRun>; 3],
    /// Seconds to decompress every file to nowhere: gzip, zstd (the decoder's ceiling).
    pub decode: [Vec<f64>; 2],
    /// Seconds of `PlayReader` over every file, per form.
    pub reader: [Vec<f64>; 3],
}

/// Everything one run of the suite measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub machine: String,
    pub commit: String,
    pub load_before: String,
    pub load_after: String,
    pub took: Duration,
    pub repeat: usize,
    pub extract: Option<ExtractResult>,
    pub embedded: Vec<EmbeddedResult>,
    pub cassandra: Vec<CassandraResult>,
    pub latency: Option<LatencyResult>,
    pub memory: Vec<MemoryResult>,
    pub compressed: Option<CompressedResult>,
}

/// Runs the parts of `plan`; panics when a run loads the wrong number of plays or rows, since
/// a fast wrong answer is not a figure.
pub fn run(plan: &Plan) -> Report {
    let started = Instant::now();
    let temp = match &plan.work_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("bench-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("work dir"),
        ),
    };
    let work = plan
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("temp dir").path().to_path_buf());
    std::fs::create_dir_all(&work).expect("work dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut report = Report {
        machine: machine(),
        commit: commit(),
        load_before: load_average(),
        repeat: plan.repeat,
        ..Report::default()
    };
    let data = Data { work: work.clone() };
    for part in &plan.parts {
        eprintln!("bench: {} (load {})", part.name(), load_average());
        match part {
            Part::Extract => report.extract = Some(extract(plan, &data, &runtime)),
            Part::Embedded => {
                for &rows in &plan.embedded_rows {
                    report.embedded.push(embedded(plan, &data, &runtime, rows));
                }
            }
            Part::Cassandra => {
                let sample = sample(plan, &work);
                report.cassandra.push(cassandra(
                    plan,
                    &runtime,
                    &work,
                    "real sample",
                    &sample,
                    // A run on the sample takes a third of a second: three times the runs
                    // keep its median steady.
                    plan.repeat * 3,
                ));
                if plan.cassandra_rows > 0 {
                    let (dir, _) = data.generated(plan.cassandra_rows, plan.rows_per_file);
                    let label = format!("{} generated events", thousands(plan.cassandra_rows));
                    report.cassandra.push(cassandra(
                        plan,
                        &runtime,
                        &work,
                        &label,
                        &dir,
                        plan.repeat,
                    ));
                }
            }
            Part::Latency => report.latency = Some(latency(plan, &work)),
            Part::Memory => report.memory = memory(plan, &data),
            Part::Compressed => report.compressed = Some(compressed(plan, &data, &runtime)),
        }
    }
    report.load_after = load_average();
    report.took = started.elapsed();
    report
}

/// Generated inputs, made once per size.
struct Data {
    work: PathBuf,
}

impl Data {
    /// `rows` events in files of `per_file`, seed 7; returns the folder and its song plays.
    fn generated(&self, rows: u64, per_file: u64) -> (PathBuf, u64) {
        let dir = self.work.join(format!("data-{rows}-{per_file}"));
        let marker = dir.join(".plays");
        if let Ok(plays) = std::fs::read_to_string(&marker) {
            return (dir, plays.trim().parse().expect("marker"));
        }
        let files = rows.div_ceil(per_file).max(1) as u32;
        let g = sparkify::generate::generate(&dir, rows, files, 7, 1).expect("generate");
        std::fs::write(&marker, g.song_plays.to_string()).expect("marker");
        (dir, g.song_plays)
    }

    /// The same events as [`Data::generated`], compressed as `generate --compress` writes them.
    fn generated_compressed(
        &self,
        rows: u64,
        per_file: u64,
        compress: sparkify::generate::Compress,
    ) -> (PathBuf, u64) {
        let dir = self
            .work
            .join(format!("data-{rows}-{per_file}-{compress:?}"));
        let marker = dir.join(".plays");
        if let Ok(plays) = std::fs::read_to_string(&marker) {
            return (dir, plays.trim().parse().expect("marker"));
        }
        let files = rows.div_ceil(per_file).max(1) as u32;
        let g = sparkify::generate::generate_compressed(&dir, rows, files, 7, 1, Some(compress))
            .expect("generate");
        std::fs::write(&marker, g.song_plays.to_string()).expect("marker");
        (dir, g.song_plays)
    }
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            [".csv", ".csv.gz", ".csv.zst"]
                .iter()
                .any(|s| name.ends_with(s) && !name.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// The first `plan.sample_files` files of the real sample, copied into their own folder.
fn sample(plan: &Plan, work: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event_data");
    let dir = work.join(format!("sample-{}", plan.sample_files));
    std::fs::create_dir_all(&dir).expect("sample dir");
    for f in csv_files(&from).into_iter().take(plan.sample_files) {
        std::fs::copy(&f, dir.join(f.file_name().expect("name"))).expect("copy");
    }
    dir
}

/// Every song play of the files, repaired as the pipeline repairs them.
async fn parse_all(files: &[PathBuf]) -> Vec<SongPlay> {
    let options = ExtractOptions::default();
    let transform = Transform {
        repair_mojibake: true,
    };
    let mut plays = Vec::new();
    for f in files {
        let mut reader = PlayReader::open(f, &options).await.expect("open");
        while let Some(item) = reader.next().await.expect("read") {
            if let Item::Play(mut p) = item {
                transform.apply(&mut p);
                plays.push(p);
            }
        }
    }
    plays
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t0 = Instant::now();
    let v = f();
    (v, t0.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) this process has used, all threads together.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Like [`timed`], also returning the CPU seconds used meanwhile.
fn timed_cpu<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let cpu = cpu_secs();
    let (v, secs) = timed(f);
    (v, secs, cpu_secs() - cpu)
}

fn extract(plan: &Plan, data: &Data, runtime: &tokio::runtime::Runtime) -> ExtractResult {
    let (dir, plays) = data.generated(plan.extract_rows, plan.extract_rows.max(1));
    let file = csv_files(&dir).remove(0);
    let bytes = std::fs::metadata(&file).expect("file").len();
    // Read once so every contender finds the file in the page cache.
    std::fs::read(&file).expect("warm-up");
    let options = ExtractOptions::default();
    let buffer = options.read_buffer_bytes;
    let mut result = ExtractResult {
        rows: plan.extract_rows,
        plays,
        bytes,
        raw: vec![],
        raw_async: vec![],
        reader: vec![],
        reader_transform: vec![],
        raw_cpu: vec![],
        reader_cpu: vec![],
    };
    // A run takes a fifth of a second, so it is repeated three times as often as the others to
    // keep the medians steady on a shared machine.
    for _ in 0..plan.repeat * 3 {
        let (rows, secs, cpu) = timed_cpu(|| {
            let mut r = csv::ReaderBuilder::new()
                .buffer_capacity(buffer)
                .from_path(&file)
                .expect("open");
            let mut record = csv::ByteRecord::new();
            let mut rows = 0u64;
            while r.read_byte_record(&mut record).expect("csv") {
                rows += 1;
            }
            rows
        });
        assert_eq!(rows, plan.extract_rows, "csv ByteRecord rows");
        result.raw.push(secs);
        result.raw_cpu.push(cpu);

        let (rows, secs) = timed(|| {
            runtime.block_on(async {
                let f = tokio::fs::File::open(&file).await.expect("open");
                let mut r = csv_async::AsyncReaderBuilder::new()
                    .buffer_capacity(buffer)
                    .create_reader(f);
                let mut record = csv_async::ByteRecord::new();
                let mut rows = 0u64;
                while r.read_byte_record(&mut record).await.expect("csv_async") {
                    rows += 1;
                }
                rows
            })
        });
        assert_eq!(rows, plan.extract_rows, "csv_async ByteRecord rows");
        result.raw_async.push(secs);

        for repair in [false, true] {
            let (counts, secs, cpu) = timed_cpu(|| {
                runtime.block_on(async {
                    let transform = Transform {
                        repair_mojibake: repair,
                    };
                    let mut r = PlayReader::open(&file, &options).await.expect("open");
                    while let Some(item) = r.next().await.expect("read") {
                        if let Item::Play(mut p) = item {
                            transform.apply(&mut p);
                        }
                    }
                    r.counts()
                })
            });
            assert_eq!(
                (counts.rows, counts.plays, counts.rejected),
                (plan.extract_rows, plays, 0),
                "PlayReader counts"
            );
            if repair {
                result.reader_transform.push(secs);
            } else {
                result.reader.push(secs);
                result.reader_cpu.push(cpu);
            }
        }
    }
    result
}

/// Runs `sparkify ARGS` in `dir` with `sparkify.toml` there and no `SPARKIFY_*` variable of
/// ours leaking in; returns stdout and stderr, panicking on a non-zero exit.
fn sparkify(plan: &Plan, dir: &Path, args: &[&str]) -> (String, String) {
    let mut c = Command::new(&plan.binary);
    c.current_dir(dir)
        .arg("--config")
        .arg("sparkify.toml")
        .args(args)
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("SPARKIFY_") {
            c.env_remove(k);
        }
    }
    let out = c.output().expect("sparkify runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "sparkify {args:?}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// `sparkify ingest --quiet --format json DIR`, checking every file loaded with `plays` plays.
fn ingest(
    plan: &Plan,
    dir: &Path,
    input: &Path,
    plays: u64,
    extra: &[&str],
) -> (IngestRun, String) {
    let mut args = vec!["ingest", "--quiet", "--format", "json"];
    args.extend_from_slice(extra);
    args.push(input.to_str().expect("UTF-8 path"));
    let (stdout, stderr) = sparkify(plan, dir, &args);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON summary");
    let files = csv_files(input).len() as u64;
    assert_eq!(summary["loaded"].as_u64(), Some(files), "{summary}");
    assert_eq!(summary["plays"].as_u64(), Some(plays), "{summary}");
    assert_eq!(summary["rejected"].as_u64(), Some(0), "{summary}");
    let run = IngestRun {
        plays,
        elapsed_secs: summary["elapsed_secs"].as_f64().expect("elapsed_secs"),
        plays_per_sec: summary["plays_per_sec"].as_f64().expect("plays_per_sec"),
        peak_rss_kib: summary["peak_rss_kib"].as_u64().unwrap_or(0),
    };
    (run, stderr)
}

/// A fresh folder `name` under `work`.
fn fresh(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("run dir");
    dir
}

/// A fresh run folder `name` under `work` holding the `sparkify.toml` of an embedded-store
/// ingest: the plan's transaction size, rejects beside it, no endpoint, warnings only.
fn embedded_run_dir(plan: &Plan, work: &Path, name: &str) -> PathBuf {
    let dir = fresh(work, name);
    std::fs::write(
        dir.join("sparkify.toml"),
        format!(
            "[embedded]\npath = \"sparkify.db\"\ntransaction_rows = {}\n\
             [rejects]\ndir = \"rejects\"\n\
             [telemetry]\nhttp_addr = \"\"\nlog_format = \"text\"\nlog_level = \"warn\"\n",
            plan.transaction_rows
        ),
    )
    .expect("config");
    dir
}

fn table_len(db: &Path, table: &str) -> u64 {
    let c = rusqlite::Connection::open(db).expect("db");
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .expect("count") as u64
}

fn embedded(
    plan: &Plan,
    data: &Data,
    runtime: &tokio::runtime::Runtime,
    rows: u64,
) -> EmbeddedResult {
    let (input, plays) = data.generated(rows, plan.rows_per_file);
    let files = csv_files(&input);
    let mut result = EmbeddedResult {
        rows,
        plays,
        files: files.len(),
        ingest: vec![],
        ceiling: vec![],
    };
    // Generated plays each have a key of their own, so each table gets one row per play
    // (listeners_by_song fewer: a user who plays a song twice is one listener).
    for _ in 0..plan.repeat {
        let dir = embedded_run_dir(plan, &data.work, "embedded-ingest");
        let (run, _) = ingest(plan, &dir, &input, plays, &[]);
        assert_eq!(table_len(&dir.join("sparkify.db"), TABLES[0]), plays);
        result.ingest.push(run);
    }
    // The ceiling: parse first, then time only the store's writes.
    let groups: Vec<Arc<Vec<SongPlay>>> = {
        let all = runtime.block_on(parse_all(&files));
        assert_eq!(all.len() as u64, plays);
        all.chunks(plan.transaction_rows)
            .map(|c| Arc::new(c.to_vec()))
            .collect()
    };
    for _ in 0..plan.repeat {
        let dir = fresh(&data.work, "embedded-ceiling");
        let db = dir.join("sparkify.db");
        let secs = runtime.block_on(async {
            let store = EmbeddedStore::open(&EmbeddedSettings {
                path: db.clone(),
                transaction_rows: plan.transaction_rows,
                ..EmbeddedSettings::default()
            })
            .await
            .expect("store");
            let cancel = CancellationToken::new();
            let t0 = Instant::now();
            for g in &groups {
                store.write(g.clone(), &cancel).await.expect("write");
            }
            t0.elapsed().as_secs_f64()
        });
        assert_eq!(table_len(&db, TABLES[0]), plays);
        result.ceiling.push(secs);
    }
    let _ = std::fs::remove_dir_all(data.work.join("embedded-ceiling"));
    let _ = std::fs::remove_dir_all(data.work.join("embedded-ingest"));
    result
}

/// The memory bound README.md states, in KiB, for the settings the suite runs with (the
/// defaults, with `embedded.transaction_rows` from the plan and one SQLite writer):
/// `40 MiB + readers × (34·B + 14·R + 64·F + 512·C + 4 MiB) + (Q + 1) × (512·C + R) +
/// writers × 640·G`.
pub fn memory_bound_kib(plan: &Plan, max_record_bytes: u64) -> u64 {
    let s = sparkify::config::Settings::default();
    let (b, r, f) = (
        s.extract.read_buffer_bytes as u64,
        max_record_bytes,
        s.extract.max_fields as u64,
    );
    let (c, q, readers) = (
        s.pipeline.chunk_rows as u64,
        s.pipeline.chunk_queue as u64,
        s.pipeline.readers as u64,
    );
    let g = plan.transaction_rows as u64;
    let mib = 1024 * 1024;
    let bytes = 40 * mib
        + readers * (34 * b + 14 * r + 64 * f + 512 * c + 4 * mib)
        + (q + 1) * (512 * c + r)
        + 640 * g;
    bytes / 1024
}

/// Decompresses every file to nowhere with the codec library under the reader's decoder (the
/// same backend, the same 64 KiB of input at a time); returns the bytes of text.
fn decode_to_nowhere(files: &[PathBuf], gzip: bool) -> u64 {
    let mut text = 0;
    for f in files {
        let input = BufReader::with_capacity(64 * 1024, std::fs::File::open(f).expect("open"));
        text += if gzip {
            std::io::copy(
                &mut flate2::bufread::MultiGzDecoder::new(input),
                &mut std::io::sink(),
            )
        } else {
            // Reads every frame, like the reader's decoder.
            std::io::copy(
                &mut zstd::stream::read::Decoder::with_buffer(input).expect("zstd"),
                &mut std::io::sink(),
            )
        }
        .expect("decode");
    }
    text
}

fn compressed(plan: &Plan, data: &Data, runtime: &tokio::runtime::Runtime) -> CompressedResult {
    use sparkify::generate::Compress;
    let rows = plan.compressed_rows;
    let (plain, plays) = data.generated(rows, plan.rows_per_file);
    let (gz, gz_plays) = data.generated_compressed(rows, plan.rows_per_file, Compress::Gzip);
    let (zst, zst_plays) = data.generated_compressed(rows, plan.rows_per_file, Compress::Zstd);
    assert_eq!((gz_plays, zst_plays), (plays, plays), "the same events");
    let inputs = [plain, gz, zst];
    let files: Vec<Vec<PathBuf>> = inputs.iter().map(|d| csv_files(d)).collect();
    let size = |fs: &[PathBuf]| -> u64 {
        fs.iter()
            .map(|f| std::fs::metadata(f).expect("file").len())
            .sum()
    };
    let mut result = CompressedResult {
        rows,
        plays,
        files: files[0].len(),
        bytes: [size(&files[0]), size(&files[1]), size(&files[2])],
        ingest: Default::default(),
        decode: Default::default(),
        reader: Default::default(),
    };
    let text = result.bytes[0];
    // Every form in each round, so that a noisy minute costs them alike.
    for _ in 0..plan.repeat {
        for (i, input) in inputs.iter().enumerate() {
            for f in &files[i] {
                std::fs::read(f).expect("warm-up");
            }
            let dir = embedded_run_dir(plan, &data.work, "compressed-ingest");
            let (run, _) = ingest(plan, &dir, input, plays, &[]);
            assert_eq!(table_len(&dir.join("sparkify.db"), TABLES[0]), plays);
            result.ingest[i].push(run);
        }
        for (i, gzip) in [(1, true), (2, false)] {
            let (bytes, secs) = timed(|| decode_to_nowhere(&files[i], gzip));
            assert_eq!(bytes, text, "decompressed text");
            result.decode[i - 1].push(secs);
        }
        for (i, fs) in files.iter().enumerate() {
            let (got, secs) = timed(|| {
                runtime.block_on(async {
                    let mut n = 0;
                    for f in fs {
                        let options = ExtractOptions::default();
                        let mut r = PlayReader::open(f, &options).await.expect("open");
                        while r.next().await.expect("read").is_some() {}
                        n += r.counts().plays;
                    }
                    n
                })
            });
            assert_eq!(got, plays, "PlayReader plays");
            result.reader[i].push(secs);
        }
    }
    let _ = std::fs::remove_dir_all(data.work.join("compressed-ingest"));
    result
}

impl CompressedResult {
    /// Median plays/s of `sparkify ingest` on form `i` (0 plain, 1 gzip, 2 zstd).
    pub fn ingest_plays_per_sec(&self, i: usize) -> f64 {
        median(
            &self.ingest[i]
                .iter()
                .map(|r| r.plays_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    /// The decoder's ceiling in plays/s: form `i` (1 gzip, 2 zstd) decompressed to nowhere.
    pub fn decode_plays_per_sec(&self, i: usize) -> f64 {
        self.plays as f64 / median(&self.decode[i - 1])
    }

    /// The yardstick for gzip: the plain rate or the decoder's ceiling, the higher.
    pub fn gzip_limit(&self) -> f64 {
        self.ingest_plays_per_sec(0)
            .max(self.decode_plays_per_sec(1))
    }
}

const SHAPE_HEADER: &str = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";

fn shape_row(session: u64, item: u64, song: &str) -> String {
    format!(
        "Artist {session},Logged In,Ann,F,{item},Lee,201.5,free,\"Lansing, MI\",PUT,NextSong,1.54092E+12,{session},{song},200,1.54111E+12,7\n"
    )
}

/// Writes a file of `rows` lines made by `line` after `header`, unless it is there already.
fn shape_file(path: &Path, header: &str, rows: usize, line: impl Fn(usize) -> String) {
    if path.exists() {
        return;
    }
    std::fs::create_dir_all(path.parent().expect("folder")).expect("shape dir");
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("shape file"));
    use std::io::Write;
    w.write_all(header.as_bytes()).expect("write");
    w.write_all(b"\n").expect("write");
    for i in 0..rows {
        w.write_all(line(i).as_bytes()).expect("write");
    }
    w.flush().expect("write");
    drop(w);
    std::fs::rename(&tmp, path).expect("rename");
}

/// `sparkify ingest --format json` of a shape into a fresh store, any exit code: one run.
fn ingest_shape(plan: &Plan, work: &Path, input: &Path, extra: &[&str]) -> serde_json::Value {
    let dir = fresh(work, "memory-ingest");
    std::fs::write(
        dir.join("sparkify.toml"),
        format!(
            "[embedded]\npath = \"sparkify.db\"\ntransaction_rows = {}\n\
             [telemetry]\nhttp_addr = \"\"\nlog_format = \"text\"\nlog_level = \"warn\"\n",
            plan.transaction_rows
        ),
    )
    .expect("config");
    let mut c = Command::new(&plan.binary);
    c.current_dir(&dir)
        .args([
            "--config",
            "sparkify.toml",
            "ingest",
            "--quiet",
            "--format",
            "json",
        ])
        .args(extra)
        .arg(input)
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("SPARKIFY_") {
            c.env_remove(k);
        }
    }
    let out = c.output().expect("sparkify runs");
    let mut summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    summary["exit"] = out.status.code().unwrap_or(-1).into();
    let _ = std::fs::remove_dir_all(&dir);
    summary
}

fn memory(plan: &Plan, data: &Data) -> Vec<MemoryResult> {
    let shapes = data.work.join("shapes");
    let wide = shapes.join(format!("wide-{}", plan.wide_rows));
    let commas = ",".repeat(65_000);
    // A song play first and last, so the file loads; every row between is one reject.
    let good_and_commas = |i: usize| {
        if i == 0 || i == plan.wide_rows + 1 {
            shape_row(1, i as u64, "Song")
        } else {
            format!("{commas}\n")
        }
    };
    shape_file(
        &wide.join("wide.csv"),
        SHAPE_HEADER,
        plan.wide_rows + 2,
        good_and_commas,
    );
    let two_wide = shapes.join(format!("two-wide-{}", plan.wide_rows));
    for n in 0..2 {
        shape_file(
            &two_wide.join(format!("wide-{n}.csv")),
            SHAPE_HEADER,
            plan.wide_rows + 2,
            |i| {
                if i == 0 || i == plan.wide_rows + 1 {
                    shape_row(2 + n, i as u64, "Song")
                } else {
                    format!("{commas}\n")
                }
            },
        );
    }
    let columns = shapes.join(format!("columns-{}", plan.column_rows));
    let extra_header: String = (0..100_000).map(|i| format!(",c{i}")).collect();
    let extra_values = ",".repeat(100_000);
    shape_file(
        &columns.join("columns.csv"),
        &format!("{SHAPE_HEADER}{extra_header}"),
        plan.column_rows,
        |i| {
            let mut r = shape_row(4, i as u64, "Song");
            r.pop();
            format!("{r}{extra_values}\n")
        },
    );
    let at_bound = shapes.join(format!("columns-1000-{}", plan.long_rows));
    let header_1000: String = (0..983).map(|i| format!(",c{i}")).collect();
    let values_1000: String = (0..983).map(|i| format!(",{}", i % 10)).collect();
    shape_file(
        &at_bound.join("columns.csv"),
        &format!("{SHAPE_HEADER}{header_1000}"),
        plan.long_rows * 10,
        |i| {
            let mut r = shape_row(5 + i as u64 / 1000, i as u64 % 1000, "Song");
            r.pop();
            format!("{r}{values_1000}\n")
        },
    );
    let long = shapes.join(format!("long-{}", plan.long_rows));
    let title = "t".repeat(60_000);
    shape_file(&long.join("long.csv"), SHAPE_HEADER, plan.long_rows, |i| {
        shape_row(
            100 + i as u64 / 1000,
            i as u64 % 1000,
            &format!("{title}{i}"),
        )
    });
    let tiny = shapes.join(format!("tiny-{}", plan.tiny_files));
    if !tiny.exists() {
        let tmp = shapes.join("tiny.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("tiny dir");
        for f in 0..plan.tiny_files {
            let rows: String = (0..5)
                .map(|i| shape_row(10_000 + f as u64, i, "Song"))
                .collect();
            std::fs::write(
                tmp.join(format!("{f:06}.csv")),
                format!("{SHAPE_HEADER}\n{rows}"),
            )
            .expect("tiny file");
        }
        std::fs::rename(&tmp, &tiny).expect("rename");
    }
    let (ordinary, _) = data.generated(plan.memory_rows, plan.rows_per_file);

    let default_r = sparkify::config::Settings::default()
        .extract
        .max_record_bytes as u64;
    let cases: Vec<(String, PathBuf, Vec<&str>, u64)> = vec![
        (
            format!("ordinary: {} generated events", thousands(plan.memory_rows)),
            ordinary,
            vec![],
            default_r,
        ),
        (
            format!(
                "{} rows of 65,000 commas, each under extract.max_record_bytes",
                thousands(plan.wide_rows as u64)
            ),
            wide,
            vec![],
            default_r,
        ),
        (
            "the same, two files read at once".to_string(),
            two_wide,
            vec![],
            default_r,
        ),
        (
            format!(
                "header and {} rows of 100,017 columns",
                thousands(plan.column_rows as u64)
            ),
            columns.clone(),
            vec![],
            default_r,
        ),
        (
            "the same with extract.max_record_bytes = 8 MiB".to_string(),
            columns,
            vec!["--set", "extract.max_record_bytes=8388608"],
            8 * 1024 * 1024,
        ),
        (
            format!(
                "{} rows of 1,000 columns (at extract.max_fields)",
                thousands(plan.long_rows as u64 * 10)
            ),
            at_bound,
            vec![],
            default_r,
        ),
        (
            format!(
                "{} song plays with 60 KB titles",
                thousands(plan.long_rows as u64)
            ),
            long,
            vec![],
            default_r,
        ),
        (
            format!(
                "{} files of five song plays",
                thousands(plan.tiny_files as u64)
            ),
            tiny,
            vec![],
            default_r,
        ),
    ];
    let mut results = Vec::new();
    for (label, input, extra, r) in cases {
        let files = csv_files(&input);
        let bytes = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        let mut result = MemoryResult {
            label,
            bytes,
            files: files.len(),
            exit: 0,
            loaded: 0,
            failed: 0,
            plays: 0,
            rejected: 0,
            peak_rss_kib: vec![],
            elapsed_secs: vec![],
            bound_kib: memory_bound_kib(plan, r),
        };
        for _ in 0..plan.repeat {
            let s = ingest_shape(plan, &data.work, &input, &extra);
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            result.exit = s["exit"].as_i64().unwrap_or(-1) as i32;
            result.loaded = n("loaded");
            result.failed = n("failed");
            result.plays = n("plays");
            result.rejected = n("rejected");
            assert_eq!(
                result.loaded + result.failed,
                result.files as u64,
                "{}: {s}",
                result.label
            );
            result.peak_rss_kib.push(n("peak_rss_kib"));
            result
                .elapsed_secs
                .push(s["elapsed_secs"].as_f64().unwrap_or(0.0));
        }
        results.push(result);
    }
    results
}

/// Rows of each of the three tables the server holds when it is stopped.
fn stop_and_count(server: Emulator) -> [u64; 3] {
    let dump = server.stop();
    TABLES.map(|t| dump.get(t).map_or(0, |rows| rows.len() as u64))
}

/// Settings for the server at `addr`: it can serve neither schema metadata nor a metadata
/// refresh after DDL (see DESIGN.md).
fn cql_settings(addr: SocketAddr) -> CassandraSettings {
    CassandraSettings {
        nodes: vec![addr.to_string()],
        fetch_schema_metadata: false,
        refresh_metadata_after_ddl: false,
        ..CassandraSettings::default()
    }
}

/// The server's ceiling: every row of every play as a prepared single-row insert, `in_flight`
/// at a time, on a fresh server. Rows per second.
async fn cql_ceiling(addr: SocketAddr, plays: &[SongPlay], in_flight: usize) -> f64 {
    // The store creates the keyspace and tables exactly as the loader will find them.
    drop(
        CassandraStore::open(&cql_settings(addr))
            .await
            .expect("schema"),
    );
    let session: Session = SessionBuilder::new()
        .known_node_addr(addr)
        .fetch_schema_metadata(false)
        .refresh_metadata_on_auto_schema_agreement(false)
        .build()
        .await
        .expect("session");
    let prepare = |cql: &'static str| session.prepare(cql);
    let session_insert = prepare(
        "INSERT INTO sparkify.song_plays_by_session \
         (sessionid, iteminsession, artist, song, length) VALUES (?, ?, ?, ?, ?)",
    )
    .await
    .expect("prepare");
    let user_insert = prepare(
        "INSERT INTO sparkify.song_plays_by_user_session \
         (userid, sessionid, iteminsession, artist, song, firstname, lastname) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .await
    .expect("prepare");
    let listener_insert = prepare(
        "INSERT INTO sparkify.listeners_by_song (song, userid, firstname, lastname) \
         VALUES (?, ?, ?, ?)",
    )
    .await
    .expect("prepare");
    let t0 = Instant::now();
    let requests = plays.iter().flat_map(|p| (0..3).map(move |t| (t, p)));
    let failures = futures::stream::iter(requests)
        .map(|(t, p)| {
            let session = &session;
            let (s, u, l) = (&session_insert, &user_insert, &listener_insert);
            async move {
                match t {
                    0 => session.execute_unpaged(s, p.session_row()).await,
                    1 => session.execute_unpaged(u, p.user_session_row()).await,
                    _ => session.execute_unpaged(l, p.listener_row()).await,
                }
                .is_err()
            }
        })
        .buffer_unordered(in_flight)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(failures, 0, "inserts failed against the server");
    (plays.len() * 3) as f64 / secs
}

/// Distinct primary keys of each table among the plays: the rows a correct load leaves.
fn distinct_keys(plays: &[SongPlay]) -> [u64; 3] {
    let s: HashSet<(i32, i32)> = plays
        .iter()
        .map(|p| (p.session_id, p.item_in_session))
        .collect();
    let u: HashSet<(i32, i32, i32)> = plays
        .iter()
        .map(|p| (p.user_id, p.session_id, p.item_in_session))
        .collect();
    let l: HashSet<(&str, i32)> = plays.iter().map(|p| (p.song.as_str(), p.user_id)).collect();
    [s.len() as u64, u.len() as u64, l.len() as u64]
}

fn cassandra(
    plan: &Plan,
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    label: &str,
    input: &Path,
    runs: usize,
) -> CassandraResult {
    let plays = runtime.block_on(parse_all(&csv_files(input)));
    let mut result = CassandraResult {
        label: label.to_string(),
        plays: plays.len() as u64,
        in_flight: plan.in_flight,
        ceiling_rows_per_sec: vec![],
        ingest: vec![],
        requests: vec![],
        rows_found: [0; 3],
        rows_expected: distinct_keys(&plays),
    };
    let dir = fresh(work, "cassandra-ingest");
    for _ in 0..runs {
        let server = Emulator::start();
        let rate = runtime.block_on(cql_ceiling(server.addr, &plays, plan.in_flight));
        let rows = stop_and_count(server);
        assert_eq!(rows[0], result.rows_expected[0], "ceiling rows");
        result.ceiling_rows_per_sec.push(rate);

        let server = Emulator::start();
        std::fs::write(
            dir.join("sparkify.toml"),
            format!(
                "[store]\nkind = \"cassandra\"\n\
                 [cassandra]\nnodes = [\"{}\"]\n\
                 fetch_schema_metadata = false\nrefresh_metadata_after_ddl = false\n\
                 [rejects]\ndir = \"rejects\"\n\
                 [telemetry]\nhttp_addr = \"\"\nlog_format = \"text\"\n",
                server.addr
            ),
        )
        .expect("config");
        // The writers log each group's requests at debug level.
        let (run, stderr) = ingest(
            plan,
            &dir,
            input,
            result.plays,
            &["--set", "telemetry.log_level=warn,sparkify::pipeline=debug"],
        );
        let requests: u64 = stderr
            .lines()
            .filter(|l| l.contains("Wrote a group of plays"))
            .map(|l| log_field(l, "requests"))
            .sum();
        assert!(requests > 0, "no request counts in the log:\n{stderr}");
        result.ingest.push(run);
        result.requests.push(requests);
        result.rows_found = stop_and_count(server);
        assert_eq!(
            result.rows_found, result.rows_expected,
            "rows in the server"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The number after `name=` in a text log line.
fn log_field(line: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    let at = line.find(&key).expect("field") + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .expect("number")
}

/// The daemon as a subprocess, its log lines collected by a thread (so its pipe never fills).
struct Daemon {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(plan: &Plan, dir: &Path) -> Daemon {
        let mut c = Command::new(&plan.binary);
        c.current_dir(dir)
            .args(["--config", "sparkify.toml", "run"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("SPARKIFY_") {
                c.env_remove(k);
            }
        }
        let mut child = c.spawn().expect("daemon starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("log lines").push(line);
            }
        });
        Daemon { child, lines }
    }

    fn wait_for(&self, text: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self
            .lines
            .lock()
            .expect("log lines")
            .iter()
            .any(|l| l.contains(text))
        {
            assert!(t0.elapsed() < limit, "no {text:?} in {:#?}", self.lines);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "daemon exited with {status}");
                return;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("the daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn latency(plan: &Plan, work: &Path) -> LatencyResult {
    let dir = fresh(work, "daemon");
    std::fs::write(
        dir.join("sparkify.toml"),
        "[embedded]\npath = \"sparkify.db\"\n\
         [watch]\ndir = \"event_data\"\nmode = \"events\"\n\
         [rejects]\ndir = \"rejects\"\n\
         [telemetry]\nhttp_addr = \"\"\nlog_format = \"text\"\nlog_level = \"info\"\n",
    )
    .expect("config");
    std::fs::create_dir_all(dir.join("event_data")).expect("watched dir");
    // Made beforehand on the same file system, so a drop is one rename. Each file has
    // sessions of its own, so its rows can be counted apart from the others'.
    let drops: Vec<(PathBuf, i64, u64)> = (0..=plan.drops)
        .map(|i| {
            let first = 1_000_000 + 10_000 * i as u32;
            let g = sparkify::generate::generate(
                &dir.join(format!("staging/{i}")),
                plan.drop_rows,
                1,
                1_000 + i as u64,
                first,
            )
            .expect("generate");
            (g.files[0].clone(), i64::from(first), g.song_plays)
        })
        .collect();
    let daemon = Daemon::start(plan, &dir);
    daemon.wait_for("Watching folder", Duration::from_secs(60));
    let db = rusqlite::Connection::open_with_flags(
        dir.join("sparkify.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    let mut query = db
        .prepare(
            "SELECT count(*) FROM song_plays_by_session \
             WHERE sessionid >= ?1 AND sessionid < ?1 + 10000",
        )
        .expect("query");
    let mut latencies = Vec::with_capacity(plan.drops);
    for (i, (file, first, plays)) in drops.iter().enumerate() {
        let t0 = Instant::now();
        std::fs::rename(file, dir.join(format!("event_data/drop-{i}.csv"))).expect("rename");
        loop {
            let n: i64 = query.query_row([first], |r| r.get(0)).unwrap_or(-1);
            if n == *plays as i64 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "drop {i}: {n} of {plays} rows after a minute; log: {:#?}",
                daemon.lines
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        // The first drop warms the daemon up (first transaction, first page reads).
        if i > 0 {
            latencies.push(t0.elapsed());
        }
    }
    drop(query);
    drop(db);
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
    LatencyResult {
        drop_rows: plan.drop_rows,
        latencies,
    }
}

/// Cores, memory and CPU model, from /proc.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.1} GiB memory, Linux {}",
        kernel.trim()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `git describe`-like: the commit and whether the tree had changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c} + uncommitted changes"),
            _ => c,
        },
        None => "unknown".into(),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2.31M rows/s`, `154.2k plays/s`.
fn rate(per_sec: f64, what: &str) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M {what}/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k {what}/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} {what}/s")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn list(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ")
}

impl ExtractResult {
    /// Median rate of a contender, in rows per second.
    fn rows_per_sec(&self, secs: &[f64]) -> f64 {
        self.rows as f64 / median(secs)
    }

    /// `PlayReader` over the raw `ByteRecord` ceiling (same bytes, so rows/s and MB/s alike).
    pub fn ratio(&self) -> f64 {
        median(&self.raw) / median(&self.reader)
    }
}

impl EmbeddedResult {
    pub fn ingest_plays_per_sec(&self) -> f64 {
        median(
            &self
                .ingest
                .iter()
                .map(|r| r.plays_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    pub fn ceiling_plays_per_sec(&self) -> f64 {
        self.plays as f64 / median(&self.ceiling)
    }

    /// Highest peak RSS of the ingest runs, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.ingest
            .iter()
            .map(|r| r.peak_rss_kib)
            .max()
            .unwrap_or(0)
    }

    pub fn ratio(&self) -> f64 {
        self.ingest_plays_per_sec() / self.ceiling_plays_per_sec()
    }
}

impl CassandraResult {
    pub fn plays_per_sec(&self) -> f64 {
        median(
            &self
                .ingest
                .iter()
                .map(|r| r.plays_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    /// The server's ceiling in song plays per second: three rows make one play.
    pub fn ceiling_plays_per_sec(&self) -> f64 {
        median(&self.ceiling_rows_per_sec) / 3.0
    }

    pub fn requests_per_play(&self) -> f64 {
        let r: Vec<f64> = self.requests.iter().map(|&r| r as f64).collect();
        median(&r) / self.plays as f64
    }

    pub fn ratio(&self) -> f64 {
        self.plays_per_sec() / self.ceiling_plays_per_sec()
    }
}

impl LatencyResult {
    /// The `q`-quantile (nearest rank) of the drops, e.g. 0.99.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl Report {
    /// The table of BENCHMARKS.md, then every run.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let mut runs = String::new();
        t.push_str(&format!(
            "Machine: {}. Commit {}. Load average (1, 5, 15 min) {} before, {} after; the suite \
             took {:.0} s. Figures are medians of {} run(s) (three times as many for extract and the Cassandra sample); every run is listed below the table.\n\n",
            self.machine,
            self.commit,
            self.load_before,
            self.load_after,
            self.took.as_secs_f64(),
            self.repeat
        ));
        t.push_str(
            "| part | measured | figure | limit measured in the same run | ratio | target | met |\n\
             |---|---|---|---|---|---|---|\n",
        );
        if let Some(e) = &self.extract {
            let mb = |secs: &[f64]| e.bytes as f64 / 1e6 / median(secs);
            let reader = e.rows_per_sec(&e.reader);
            t.push_str(&format!(
                "| 1 extract | `PlayReader`, one file of {} events ({:.0} MB, {} song plays) | \
                 {}, {}, {:.0} MB/s; CPU {:.2} s | `csv` `ByteRecord`: {}, {:.0} MB/s; CPU {:.2} s \
                 | {:.2} | ≥ 0.6 | {} |\n",
                thousands(e.rows),
                e.bytes as f64 / 1e6,
                thousands(e.plays),
                rate(reader, "rows"),
                rate(reader * e.plays as f64 / e.rows as f64, "plays"),
                mb(&e.reader),
                median(&e.reader_cpu),
                rate(e.rows_per_sec(&e.raw), "rows"),
                mb(&e.raw),
                median(&e.raw_cpu),
                e.ratio(),
                yes(e.ratio() >= 0.6)
            ));
            t.push_str(&format!(
                "| | `PlayReader` + mojibake repair (what the readers run) | {}, {:.0} MB/s \
                 | `csv_async` `ByteRecord`, same 256 KiB buffer: {}, {:.0} MB/s | {:.2} | | |\n",
                rate(e.rows_per_sec(&e.reader_transform), "rows"),
                mb(&e.reader_transform),
                rate(e.rows_per_sec(&e.raw_async), "rows"),
                mb(&e.raw_async),
                median(&e.raw) / median(&e.reader_transform),
            ));
            let secs = |v: &[f64]| list(v, |s| format!("{s:.3} s"));
            runs.push_str(&format!(
                "- extract, {} events: csv {}; csv_async {}; PlayReader {}; PlayReader + repair {}. \
                 CPU time, all threads: csv {}; PlayReader {} (it parses on a thread of its own \
                 while validating on another: median CPU ratio {:.2})\n",
                thousands(e.rows),
                secs(&e.raw),
                secs(&e.raw_async),
                secs(&e.reader),
                secs(&e.reader_transform),
                secs(&e.raw_cpu),
                secs(&e.reader_cpu),
                median(&e.raw_cpu) / median(&e.reader_cpu),
            ));
        }
        for e in &self.embedded {
            let ingest = e.ingest_plays_per_sec();
            let rss = e.peak_rss_kib();
            // The absolute floor is set for 1M and 3M rows only: the store's own ceiling
            // falls below it as the tables grow past that.
            let floor = e.rows <= 3_000_000;
            let ok = e.ratio() >= 0.8 && (!floor || ingest >= 100_000.0) && rss < 100 * 1024;
            t.push_str(&format!(
                "| 2 embedded | `sparkify ingest`, {} events in {} files ({} song plays), fresh \
                 store | {}; peak RSS {} | store ceiling (same plays pre-parsed, same \
                 statements, transactions of the same size): {} | {:.2} | ≥ 0.8, {}RSS < 100 \
                 MB | {} |\n",
                thousands(e.rows),
                e.files,
                thousands(e.plays),
                rate(ingest, "plays"),
                mib(rss),
                rate(e.ceiling_plays_per_sec(), "plays"),
                e.ratio(),
                if floor { "≥ 100k plays/s, " } else { "" },
                yes(ok)
            ));
            runs.push_str(&format!(
                "- embedded, {} events: ingest {}; ceiling {}\n",
                thousands(e.rows),
                e.ingest
                    .iter()
                    .map(|r| format!(
                        "{} ({:.2} s, {})",
                        rate(r.plays_per_sec, "plays"),
                        r.elapsed_secs,
                        mib(r.peak_rss_kib)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                list(&e.ceiling, |s| format!(
                    "{} ({s:.2} s)",
                    rate(e.plays as f64 / s, "plays")
                )),
            ));
        }
        if self.embedded.len() > 1 {
            let rss: Vec<u64> = self.embedded.iter().map(|e| e.peak_rss_kib()).collect();
            let (lo, hi) = (
                *rss.iter().min().unwrap_or(&0),
                *rss.iter().max().unwrap_or(&0),
            );
            let flat = hi as f64 <= lo as f64 * 1.1;
            t.push_str(&format!(
                "| 2 embedded | peak RSS across sizes ({}) | {} | | {:.2} | the same (within 10%) \
                 | {} |\n",
                self.embedded
                    .iter()
                    .map(|e| thousands(e.rows))
                    .collect::<Vec<_>>()
                    .join(" / "),
                rss.iter().map(|&k| mib(k)).collect::<Vec<_>>().join(" / "),
                hi as f64 / lo.max(1) as f64,
                yes(flat)
            ));
        }
        for c in &self.cassandra {
            let per_play = c.requests_per_play();
            let sample = c.label == "real sample";
            let ok = c.ratio() >= 0.9 && (!sample || per_play <= 1.2);
            t.push_str(&format!(
                "| 3 cassandra | `sparkify ingest`, {} ({} song plays), in-process CQL server | \
                 {}; {:.3} CQL requests per play | server ceiling (prepared single-row \
                 inserts, {} in flight): {} = {} | {:.2} | ≥ 0.9{} | {} |\n",
                c.label,
                thousands(c.plays),
                rate(c.plays_per_sec(), "plays"),
                per_play,
                c.in_flight,
                rate(median(&c.ceiling_rows_per_sec), "rows"),
                rate(c.ceiling_plays_per_sec(), "plays"),
                c.ratio(),
                if sample {
                    "; ≤ 1.2 requests/play"
                } else {
                    ""
                },
                yes(ok)
            ));
            runs.push_str(&format!(
                "- cassandra, {}: ingest {}; requests {}; ceiling {}\n",
                c.label,
                c.ingest
                    .iter()
                    .map(|r| format!(
                        "{} ({:.2} s)",
                        rate(r.plays_per_sec, "plays"),
                        r.elapsed_secs
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.requests
                    .iter()
                    .map(|r| thousands(*r))
                    .collect::<Vec<_>>()
                    .join(", "),
                list(&c.ceiling_rows_per_sec, |r| rate(r, "rows")),
            ));
        }
        if let Some(l) = &self.latency {
            let (p50, p99) = (l.quantile(0.5), l.quantile(0.99));
            t.push_str(&format!(
                "| 4 daemon | rename into the watched folder → rows queryable, {} drops of {} \
                 events, events mode | p50 {}, p99 {}, max {} | | | p99 ≤ 250 ms | {} |\n",
                l.latencies.len(),
                l.drop_rows,
                ms(p50),
                ms(p99),
                ms(l.quantile(1.0)),
                yes(p99 <= Duration::from_millis(250))
            ));
            runs.push_str(&format!(
                "- daemon latency, {} drops after one warm-up drop: min {}, p90 {}\n",
                l.latencies.len(),
                ms(l.quantile(0.0)),
                ms(l.quantile(0.9)),
            ));
        }
        for m in &self.memory {
            let peak = m.peak_kib();
            let outcome = if m.failed > 0 {
                format!(
                    "{} of {} file(s) refused, exit {}",
                    m.failed, m.files, m.exit
                )
            } else {
                format!(
                    "{} song plays, {} rejected, exit {}",
                    thousands(m.plays),
                    thousands(m.rejected),
                    m.exit
                )
            };
            t.push_str(&format!(
                "| 5 memory | `sparkify ingest`, {}; {:.0} MB in {} file(s) | peak RSS {}; {} | \
                 the README's bound for these settings: {} | {:.2} | ≤ 1 | {} |\n",
                m.label,
                m.bytes as f64 / 1e6,
                thousands(m.files as u64),
                mib(peak),
                outcome,
                mib(m.bound_kib),
                peak as f64 / m.bound_kib.max(1) as f64,
                yes(peak <= m.bound_kib)
            ));
            runs.push_str(&format!(
                "- memory, {}: {}\n",
                m.label,
                m.peak_rss_kib
                    .iter()
                    .zip(&m.elapsed_secs)
                    .map(|(k, s)| format!("{} ({s:.2} s)", mib(*k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(c) = &self.compressed {
            let (plain, gz, zst) = (
                c.ingest_plays_per_sec(0),
                c.ingest_plays_per_sec(1),
                c.ingest_plays_per_sec(2),
            );
            let mb = |b: u64| b as f64 / 1e6;
            let what = format!(
                "{} events in {} files ({} song plays)",
                thousands(c.rows),
                c.files,
                thousands(c.plays)
            );
            t.push_str(&format!(
                "| 6 compressed | `sparkify ingest`, {what} as `.csv.zst` ({:.0} MB; {:.0} MB of \
                 text), fresh store | {} | plain CSV, same events, same rounds: {}; zstd \
                 decoder alone (the same bytes to nowhere): {} | {:.2} | ≥ 0.8 × plain | {} |\n",
                mb(c.bytes[2]),
                mb(c.bytes[0]),
                rate(zst, "plays"),
                rate(plain, "plays"),
                rate(c.decode_plays_per_sec(2), "plays"),
                zst / plain,
                yes(zst >= 0.8 * plain)
            ));
            t.push_str(&format!(
                "| 6 compressed | `sparkify ingest`, the same as `.csv.gz` ({:.0} MB) | {} | \
                 gzip decoder alone: {}; max(plain, decoder): {} | {:.2} (to plain: {:.2}) | \
                 ≥ 0.8 × max(plain, gzip decoder) | {} |\n",
                mb(c.bytes[1]),
                rate(gz, "plays"),
                rate(c.decode_plays_per_sec(1), "plays"),
                rate(c.gzip_limit(), "plays"),
                gz / c.gzip_limit(),
                gz / plain,
                yes(gz >= 0.8 * c.gzip_limit())
            ));
            let reader = |i: usize| rate(c.plays as f64 / median(&c.reader[i]), "plays");
            t.push_str(&format!(
                "| | `PlayReader` alone over the same files: plain / gzip / zstd | {} / {} / {} \
                 | | | | |\n",
                reader(0),
                reader(1),
                reader(2)
            ));
            let ingest = |i: usize| {
                c.ingest[i]
                    .iter()
                    .map(|r| {
                        format!(
                            "{} ({:.2} s)",
                            rate(r.plays_per_sec, "plays"),
                            r.elapsed_secs
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let secs = |v: &[f64]| list(v, |s| format!("{s:.3} s"));
            runs.push_str(&format!(
                "- compressed, {} events: ingest plain {}; gzip {}; zstd {}; decoder alone gzip \
                 {}, zstd {}; PlayReader plain {}, gzip {}, zstd {}\n",
                thousands(c.rows),
                ingest(0),
                ingest(1),
                ingest(2),
                secs(&c.decode[0]),
                secs(&c.decode[1]),
                secs(&c.reader[0]),
                secs(&c.reader[1]),
                secs(&c.reader[2]),
            ));
        }
        format!("{t}\nRuns:\n{runs}")
    }
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", Plan::USAGE);
        return;
    }
    let (plan, out) = match Plan::from_args(&args) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let report = run(&plan);
    let md = report.markdown();
    println!("{md}");
    if let Some(out) = out {
        std::fs::write(&out, &md).expect("write the report");
        eprintln!("bench: report written to {}", out.display());
    }
}
