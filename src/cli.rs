//! The command line: argument parsing, settings, and one function per command.
//!
//! `main.rs` only calls [`main`]. Exit codes mean the same for every command:
//! 0 success; 1 the data had problems (a file failed, rows were rejected under `--strict`,
//! `validate` found something); 2 bad usage or configuration; 3 the store could not be used;
//! 130 interrupted before the work was done.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings, Sources};
use crate::extract::{ExtractCounts, ExtractOptions, Item, PlayReader, collect_inputs};
use crate::pipeline::{self, FileJob, FileReport, Outcome, PipelineOptions};
use crate::query::{self, Format};
use crate::store::{Store, StoreError};
use crate::transform::Transform;

pub use crate::exit::{EXIT_CONFIG, EXIT_DATA, EXIT_INTERRUPTED, EXIT_STORE, Failure};
pub use crate::shutdown::interrupted;

/// Writes to standard output through a handle, so that a reader that went away
/// (`sparkify query … | head -1`) is an error ([`is_closed_output`]) rather than a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))
    };
}

/// Writes a line to standard error; a closed standard error loses the line, nothing more.
macro_rules! note {
    ($($arg:tt)*) => {
        write_stderr(format_args!($($arg)*))
    };
}

fn write_stdout(args: std::fmt::Arguments) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args)?;
    stdout.flush()
}

fn write_stderr(args: std::fmt::Arguments) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(args).and_then(|_| stderr.write_all(b"\n"));
}

/// The error is standard output closed by its reader (`| head`): the command ends quietly.
pub fn is_closed_output(e: &anyhow::Error) -> bool {
    let broken = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(broken)
            || cause
                .downcast_ref::<csv::Error>()
                .is_some_and(|c| matches!(c.kind(), csv::ErrorKind::Io(io) if broken(io)))
    })
}

const AFTER_HELP: &str = "\
Settings come from, lowest first: built-in defaults, config/default.toml (when present in the
working directory), --config FILE, environment variables SPARKIFY_<SECTION>__<KEY> (for example
SPARKIFY_EMBEDDED__PATH=/tmp/x.db), and --set section.key=value.

Exit codes: 0 success; 1 data problems (a file failed, rejected rows under --strict, validate
found problems); 2 bad usage or configuration; 3 the store could not be used; 130 interrupted.

Examples:
  sparkify ingest event_data/               load every *.csv (.gz, .zst) under event_data/
  sparkify query session 338 4              the song at item 4 of session 338
  sparkify query user 10 182                what user 10 played in session 182
  sparkify query song 'All Hands Against His Own'
  sparkify run                              watch event_data/ and load new files as they land";

/// Loads music-streaming event logs into three query-first tables (Cassandra/ScyllaDB or an
/// embedded SQLite file) and answers the analysts' questions.
#[derive(Debug, Parser)]
#[command(name = "sparkify", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Settings file (TOML), on top of the defaults.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        env = "SPARKIFY_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// Override one setting, e.g. --set embedded.path=/tmp/x.db (repeatable; wins over all).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,

    /// What to do; without one, `run` (the daemon watching watch.dir).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the event folder and load every complete new file (the daemon).
    #[command(after_help = "\
The folder, pattern, settle time, rescan period and what to do with loaded files are the
[watch] settings. Producers should write to a temporary name (.name or name.tmp) and rename
into place; files closed after writing or unchanged for watch.settle_ms are taken too.
SIGTERM or SIGINT stops taking files and exits 0 once in-flight work is acknowledged or
abandoned (within pipeline.shutdown_timeout_secs); a second signal exits at once.")]
    Run(RunArgs),
    /// Load files or folders (recursively: *.csv, *.csv.gz, *.csv.zst) once, then exit.
    #[command(after_help = "\
Examples:
  sparkify ingest event_data/
  sparkify ingest --strict 2018-11-01-events.csv 2018-11-02-events.csv
  SPARKIFY_EMBEDDED__PATH=/tmp/plays.db sparkify ingest --force event_data/")]
    Ingest(IngestArgs),
    /// Ask one of the analysts' three questions.
    Query(QueryArgs),
    /// Write the combined CSV of every song play (the analysts' event_datafile_new.csv).
    Extract(ExtractArgs),
    /// Parse files and report what would be loaded or rejected, writing nothing.
    Validate(ValidateArgs),
    /// Show the ledger: one entry per file with its counts and status.
    Status(StatusArgs),
    /// Print the CQL that creates the keyspace and tables (what the daemon runs).
    Schema,
    /// Check or show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write realistic synthetic event files (load tests).
    Generate(crate::generate::GenerateArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder to watch (overrides watch.dir).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files or folders to load.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Load files whose content is already in the ledger, again.
    #[arg(long)]
    pub force: bool,
    /// Exit 1 when any row was rejected (the good rows are still loaded).
    #[arg(long)]
    pub strict: bool,
    /// How to print the closing summary.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
    /// No per-file lines and no progress bar; only the summary.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(subcommand)]
    pub question: Question,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum Question {
    /// Artist, song and length of the song at item ITEM_IN_SESSION of session SESSION_ID.
    Session {
        session_id: i32,
        item_in_session: i32,
    },
    /// Songs (in order) that user USER_ID played in session SESSION_ID, with the user's name.
    User { user_id: i32, session_id: i32 },
    /// First and last names of every user who listened to SONG_TITLE.
    Song { song_title: String },
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Files or folders to read.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or folders to check.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Rejects shown per file.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration; exit 0 when it is usable, 2 with the reason otherwise.
    Check,
    /// Print the effective configuration as TOML, secrets masked.
    Show,
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return EXIT_CONFIG;
        }
        if cause.downcast_ref::<StoreError>().is_some() {
            return EXIT_STORE;
        }
    }
    EXIT_DATA
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // The reader of standard output has what it wanted; nothing went wrong here.
        Err(e) if is_closed_output(&e) => ExitCode::SUCCESS,
        Err(e) => {
            note!("sparkify: error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    Settings::load(&Sources {
        file: cli.config.clone(),
        overrides: cli.overrides.clone(),
        env: None,
        skip_default_file: false,
    })
}

/// Runs a parsed command line; returns the exit code.
pub fn run(mut cli: Cli) -> anyhow::Result<u8> {
    let settings = load_settings(&cli)?;
    let command = cli
        .command
        .take()
        .unwrap_or(Command::Run(RunArgs { dir: None }));
    if let Command::Config(cmd) = &command {
        return config_command(cmd, &cli, &settings);
    }
    if let Command::Schema = &command {
        out!(
            "{}",
            crate::store::cassandra::schema_script(&settings.cassandra)
        )?;
        return Ok(0);
    }
    if let Command::Generate(args) = &command {
        return crate::generate::run(args);
    }
    let daemon = matches!(command, Command::Run(_));
    crate::telemetry::init_logging(&settings.telemetry, daemon)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sparkify")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Run(args) => {
                let mut settings = settings;
                if let Some(dir) = args.dir {
                    settings.watch.dir = dir;
                }
                settings.check_folders()?;
                crate::daemon::main(settings).await
            }
            Command::Ingest(args) => ingest(&settings, args).await,
            Command::Query(args) => query_command(&settings, args).await,
            Command::Extract(args) => extract_command(&settings, args).await,
            Command::Validate(args) => validate_command(&settings, args).await,
            Command::Status(args) => status_command(&settings, args).await,
            Command::Schema | Command::Config(_) | Command::Generate(_) => {
                unreachable!("handled above")
            }
        }
    })
}

fn config_command(cmd: &ConfigCommand, cli: &Cli, settings: &Settings) -> anyhow::Result<u8> {
    match cmd {
        ConfigCommand::Check => {
            let source = cli
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "defaults and environment".into());
            let mut problems = settings.check_files();
            if let Err(e) = settings.check_folders() {
                let text = e.to_string();
                problems.push(text.trim_start_matches("configuration: ").to_string());
            }
            if !problems.is_empty() {
                for p in &problems {
                    note!("sparkify: error: configuration: {p}");
                }
                return Ok(EXIT_CONFIG);
            }
            out!(
                "configuration OK ({source}; store {}, watching {})\n",
                settings.store.kind.as_str(),
                settings.watch.dir.display()
            )?;
            Ok(0)
        }
        ConfigCommand::Show => {
            out!("{}", settings.to_masked_toml())?;
            Ok(0)
        }
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::open(settings).await.context("cannot open the store")
}

/// For commands that only read (`query`, `status`): works on a read-only file.
async fn open_store_read_only(settings: &Settings) -> anyhow::Result<Store> {
    Store::open_read_only(settings)
        .await
        .context("cannot open the store")
}

/// Totals over a run of files.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Totals {
    pub files: u64,
    pub loaded: u64,
    pub failed: u64,
    pub duplicates: u64,
    pub vanished: u64,
    /// Changed while being read, every time it was tried.
    pub changed: u64,
    /// Could not be read for a reason of this machine (open files, permissions, I/O).
    pub unreadable: u64,
    pub abandoned: u64,
    #[serde(flatten)]
    pub counts: ExtractCounts,
    pub repaired: u64,
    pub elapsed_secs: f64,
    pub plays_per_sec: f64,
    /// Peak resident memory of the process (Linux), in KiB.
    pub peak_rss_kib: Option<u64>,
}

impl Totals {
    pub fn add(&mut self, r: &FileReport) {
        self.files += 1;
        match &r.outcome {
            Outcome::Loaded => self.loaded += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Duplicate { .. } => self.duplicates += 1,
            Outcome::Vanished => self.vanished += 1,
            Outcome::Changed => self.changed += 1,
            Outcome::Unreadable(_) => self.unreadable += 1,
            Outcome::Abandoned => self.abandoned += 1,
        }
        if matches!(r.outcome, Outcome::Loaded | Outcome::Failed(_)) {
            self.counts.rows += r.counts.rows;
            self.counts.plays += r.counts.plays;
            self.counts.skipped += r.counts.skipped;
            self.counts.rejected += r.counts.rejected;
            self.repaired += r.repaired;
        }
    }

    pub fn finish(&mut self, elapsed: Duration) {
        self.peak_rss_kib = peak_rss_kib();
        self.elapsed_secs = elapsed.as_secs_f64();
        self.plays_per_sec = if self.elapsed_secs > 0.0 {
            self.counts.plays as f64 / self.elapsed_secs
        } else {
            0.0
        };
    }
}

/// Peak resident set size of this process (`VmHWM`), where the OS reports it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One line describing a finished file.
pub fn report_line(r: &FileReport) -> String {
    let c = r.counts;
    let path = r.path.display();
    match &r.outcome {
        Outcome::Loaded => {
            let mut s = format!(
                "loaded     {path}: {} rows, {} song plays, {} skipped, {} rejected, {} repaired",
                c.rows, c.plays, c.skipped, c.rejected, r.repaired
            );
            if let Some(p) = &r.rejects_path {
                s.push_str(&format!(" (rejects in {})", p.display()));
            }
            s
        }
        Outcome::Failed(reason) if reason.starts_with(&path.to_string()) => {
            format!("failed     {reason}")
        }
        Outcome::Failed(reason) => format!("failed     {path}: {reason}"),
        Outcome::Duplicate { previous_path } => {
            format!("unchanged  {path}: same content already loaded from {previous_path}")
        }
        Outcome::Vanished => format!("vanished   {path}: removed before it could be read"),
        Outcome::Changed => format!(
            "changed    {path}: changed while being read, every time it was tried; load it again once it is complete"
        ),
        Outcome::Unreadable(reason) => format!("unreadable {reason}"),
        Outcome::Abandoned => format!("abandoned  {path}: not finished; it will be loaded again"),
    }
}

async fn ingest(settings: &Settings, args: IngestArgs) -> anyhow::Result<u8> {
    let files = collect_inputs(&args.paths, &settings.watch.pattern).map_err(|e| Failure {
        code: EXIT_CONFIG,
        message: format!("cannot list the inputs: {e}"),
    })?;
    let store = open_store(settings).await?;
    store.give_up_after(Duration::from_secs(settings.store.give_up_secs));
    let started = Instant::now();
    let total_bytes: u64 = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut options = PipelineOptions::from_settings(settings, &store);
    options.force = args.force;
    options.input_roots = args.paths.clone();
    options.bytes_read = Some(bytes_read.clone());
    options.changed_retries = CHANGED_RETRIES;
    let given = files.len() as u64;

    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
            )
            .expect("valid template"),
        );
        bar
    });

    let (job_tx, job_rx) = mpsc::channel(settings.pipeline.file_queue);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn(pipeline::run(
        store.clone(),
        options,
        job_rx,
        report_tx,
        shutdown.clone(),
    ));
    let feeder = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            for f in files {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = job_tx.send(FileJob::new(f)) => if r.is_err() { break },
                }
            }
        })
    };
    let mut totals = Totals::default();
    let mut interrupted_at: Option<Instant> = None;
    let mut unusable: Option<StoreError> = None;
    let signal = interrupted();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            report = report_rx.recv() => {
                let Some(report) = report else { break };
                totals.add(&report);
                if !args.quiet {
                    let line = report_line(&report);
                    match &bar {
                        Some(b) => b.println(line),
                        None => note!("{line}"),
                    }
                }
            }
            _ = &mut signal, if interrupted_at.is_none() => {
                note!("sparkify: interrupted; finishing in-flight writes (Ctrl-C again to quit at once)");
                interrupted_at = Some(Instant::now());
                shutdown.cancel();
                tokio::spawn(async {
                    interrupted().await;
                    std::process::exit(EXIT_INTERRUPTED as i32);
                });
            }
            _ = tick.tick() => {
                if unusable.is_none()
                    && let Some(e) = store.fatal()
                {
                    // Every later write would fail the same way: stop reading files.
                    unusable = Some(e);
                    shutdown.cancel();
                }
                if let Some(b) = &bar {
                    b.set_position(bytes_read.load(std::sync::atomic::Ordering::Relaxed));
                    b.set_message(format!("{} files, {} plays", totals.files, totals.counts.plays));
                }
            }
        }
    }
    let _ = feeder.await;
    let pipeline = pipeline.await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    totals.finish(started.elapsed());
    // The loading is done and ledgered: a closed standard output only loses the summary, and
    // the exit code still tells what happened to the files.
    if let Err(e) = print_summary(&totals, args.format)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("cannot write the summary");
    }
    let internal = match pipeline {
        Ok(Ok(())) => None,
        Ok(Err(panicked)) => Some(panicked.to_string()),
        Err(e) => Some(format!("internal error: the pipeline failed: {e}")),
    };
    if let Some(message) = &internal {
        note!("sparkify: {message}");
    }
    if let Some(e) = unusable.or_else(|| store.fatal()) {
        // Files not taken or not finished because of it are the store's doing, not the data's.
        return Err(Failure {
            code: EXIT_STORE,
            message: format!("cannot use the store ({}): {e}", store.describe()),
        }
        .into());
    }
    Ok(ingest_exit_code(
        &totals,
        given,
        interrupted_at.is_some(),
        internal.is_some(),
        args.strict,
    ))
}

/// How often `ingest` reads a file again that changed while it was read.
const CHANGED_RETRIES: u32 = 3;

/// `ingest`'s exit code: 0 only when every file given was loaded, or skipped as already
/// loaded (or had no song plays at all).
fn ingest_exit_code(t: &Totals, given: u64, interrupted: bool, internal: bool, strict: bool) -> u8 {
    if interrupted {
        EXIT_INTERRUPTED
    } else if internal || t.files < given {
        if !internal {
            note!(
                "sparkify: {} of the {given} files given were not processed",
                given - t.files
            );
        }
        EXIT_DATA
    } else if t.failed + t.changed + t.unreadable + t.vanished > 0
        || (strict && t.counts.rejected > 0)
    {
        EXIT_DATA
    } else if t.abandoned > 0 {
        // Not interrupted, so the store stopped answering before every write was acknowledged.
        EXIT_STORE
    } else {
        0
    }
}

fn print_summary(t: &Totals, format: SummaryFormat) -> std::io::Result<()> {
    match format {
        SummaryFormat::Json => {
            out!("{}\n", serde_json::to_string(t).unwrap_or_default())
        }
        SummaryFormat::Text => {
            out!(
                "files      {} loaded, {} failed, {} already loaded{}{}{}{}\n",
                t.loaded,
                t.failed,
                t.duplicates,
                if t.vanished > 0 {
                    format!(", {} vanished", t.vanished)
                } else {
                    String::new()
                },
                if t.abandoned > 0 {
                    format!(", {} abandoned", t.abandoned)
                } else {
                    String::new()
                },
                if t.changed > 0 {
                    format!(", {} changed while read", t.changed)
                } else {
                    String::new()
                },
                if t.unreadable > 0 {
                    format!(", {} unreadable", t.unreadable)
                } else {
                    String::new()
                },
            )?;
            out!(
                "rows       {} read: {} song plays, {} skipped (not song plays), {} rejected\n",
                t.counts.rows,
                t.counts.plays,
                t.counts.skipped,
                t.counts.rejected
            )?;
            out!("repaired   {} text values\n", t.repaired)?;
            out!(
                "elapsed    {:.2} s ({:.0} song plays/s){}\n",
                t.elapsed_secs,
                t.plays_per_sec,
                t.peak_rss_kib
                    .map(|k| format!(", peak memory {} MiB", k / 1024))
                    .unwrap_or_default()
            )
        }
    }
}

async fn query_command(settings: &Settings, args: QueryArgs) -> anyhow::Result<u8> {
    let store = open_store_read_only(settings).await?;
    let (text, rows) = match args.question {
        Question::Session {
            session_id,
            item_in_session,
        } => query::session(&store, session_id, item_in_session, args.format).await?,
        Question::User {
            user_id,
            session_id,
        } => query::user(&store, user_id, session_id, args.format).await?,
        Question::Song { song_title } => query::song(&store, &song_title, args.format).await?,
    };
    out!("{text}")?;
    if args.format == Format::Table {
        note!("({rows} row{})", if rows == 1 { "" } else { "s" });
    }
    Ok(0)
}

/// Reads every play of a file, handing each to `on_play` (after the transform) and each reject
/// to `on_reject`. Returns the file's counts and repairs.
async fn scan_file(
    path: &std::path::Path,
    options: &ExtractOptions,
    transform: Transform,
    mut on_play: impl FnMut(crate::extract::SongPlay) -> anyhow::Result<()>,
    mut on_reject: impl FnMut(crate::extract::Reject),
) -> anyhow::Result<(ExtractCounts, u64)> {
    let mut reader = PlayReader::open(path, options).await?;
    let mut repaired = 0;
    while let Some(item) = reader.next().await? {
        match item {
            Item::Play(mut play) => {
                repaired += transform.apply(&mut play);
                on_play(play)?;
            }
            Item::Reject(r) => on_reject(r),
        }
    }
    Ok((reader.counts(), repaired))
}

fn describe_reject(r: &crate::extract::Reject) -> String {
    if r.column.is_empty() {
        format!("line {}: {}", r.line, r.reason)
    } else {
        format!(
            "line {}: column {} = \"{}\": {}",
            r.line, r.column, r.value, r.reason
        )
    }
}

async fn extract_command(settings: &Settings, args: ExtractArgs) -> anyhow::Result<u8> {
    let files = collect_inputs(&args.paths, &settings.watch.pattern)?;
    let out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "artist",
        "firstName",
        "gender",
        "itemInSession",
        "lastName",
        "length",
        "level",
        "location",
        "sessionId",
        "song",
        "userId",
    ])?;
    let mut options = ExtractOptions::from(&settings.extract);
    options.keep_profile = true;
    let transform = Transform {
        repair_mojibake: settings.transform.repair_mojibake,
    };
    let mut failed = 0;
    let mut total = ExtractCounts::default();
    for f in &files {
        let mut rejected = Vec::new();
        let result = scan_file(
            f,
            &options,
            transform,
            |p| {
                let profile = p.profile.unwrap_or_default();
                w.write_record([
                    p.artist.as_str(),
                    &p.first_name,
                    &profile.gender,
                    &p.item_in_session.to_string(),
                    &p.last_name,
                    &p.length.to_string(),
                    &profile.level,
                    &profile.location,
                    &p.session_id.to_string(),
                    &p.song,
                    &p.user_id.to_string(),
                ])?;
                Ok(())
            },
            |r| rejected.push(r),
        )
        .await;
        match result {
            Ok((c, _)) => {
                total.plays += c.plays;
                total.rejected += c.rejected;
                for r in rejected.iter().take(3) {
                    note!("rejected   {}: {}", f.display(), describe_reject(r));
                }
            }
            // The reader of standard output has gone: nothing more to do.
            Err(e) if is_closed_output(&e) => return Err(e),
            Err(e) => {
                failed += 1;
                note!("failed     {e:#}");
            }
        }
    }
    w.flush()?;
    note!(
        "{} song plays from {} files ({} rejected, {} files failed)",
        total.plays,
        files.len(),
        total.rejected,
        failed
    );
    Ok(if failed > 0 { EXIT_DATA } else { 0 })
}

async fn validate_command(settings: &Settings, args: ValidateArgs) -> anyhow::Result<u8> {
    let files = collect_inputs(&args.paths, &settings.watch.pattern)?;
    let options = ExtractOptions::from(&settings.extract);
    let transform = Transform {
        repair_mojibake: settings.transform.repair_mojibake,
    };
    let mut problems = 0;
    let mut closed = false;
    for f in &files {
        let mut shown = Vec::new();
        let result = scan_file(
            f,
            &options,
            transform,
            |_| Ok(()),
            |r| {
                if shown.len() < args.show {
                    shown.push(r);
                }
            },
        )
        .await;
        let mut lines = String::new();
        match result {
            Ok((c, repaired)) => {
                let verdict = if c.rejected > 0 { "rejects" } else { "ok" };
                lines.push_str(&format!(
                    "{verdict:<9}{}: {} rows, {} song plays, {} skipped, {} rejected, {} repaired\n",
                    f.display(),
                    c.rows,
                    c.plays,
                    c.skipped,
                    c.rejected,
                    repaired
                ));
                for r in &shown {
                    lines.push_str(&format!("           {}\n", describe_reject(r)));
                }
                if c.rejected > 0 {
                    problems += 1;
                }
            }
            Err(e) => {
                problems += 1;
                lines.push_str(&format!("failed   {e:#}\n"));
            }
        }
        // Once the reader of standard output has gone, the files are still checked, quietly,
        // so that the exit code says whether any had problems.
        if !closed && let Err(e) = out!("{lines}") {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e.into());
            }
            closed = true;
        }
    }
    Ok(if problems > 0 { EXIT_DATA } else { 0 })
}

async fn status_command(settings: &Settings, args: StatusArgs) -> anyhow::Result<u8> {
    let store = open_store_read_only(settings).await?;
    let entries = store.ledger_all().await?;
    match args.format {
        Format::Json => out!("{}\n", serde_json::to_string_pretty(&entries)?)?,
        Format::Csv | Format::Table => {
            let header: Vec<String> = [
                "status",
                "path",
                "rows",
                "song_plays",
                "skipped",
                "rejected",
                "repaired",
                "size",
                "codec",
                "decompressed_size",
                "recorded_at",
                "content_hash",
                "reason",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let body: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.status.as_str().to_string(),
                        e.path.clone(),
                        e.counts.rows.to_string(),
                        e.counts.plays.to_string(),
                        e.counts.skipped.to_string(),
                        e.counts.rejected.to_string(),
                        e.repaired.to_string(),
                        e.size.to_string(),
                        e.codec.as_str().to_string(),
                        e.decompressed_size.to_string(),
                        e.recorded_at(),
                        if args.format == Format::Table {
                            e.content_hash.chars().take(12).collect()
                        } else {
                            e.content_hash.clone()
                        },
                        e.reason.clone(),
                    ]
                })
                .collect();
            if args.format == Format::Table {
                out!("{}", query::render_table(&header, &body))?;
                note!("({} files)", entries.len());
            } else {
                let mut w = csv::Writer::from_writer(std::io::stdout().lock());
                w.write_record(&header)?;
                for r in body {
                    w.write_record(r)?;
                }
                w.flush()?;
            }
        }
    }
    Ok(0)
}
