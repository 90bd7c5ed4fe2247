//! The pipeline: file jobs → readers → chunks → writer pool → acknowledgements → ledger.
//!
//! Shared by `sparkify ingest` (jobs from the command line) and `sparkify run` (jobs from the
//! watcher). Every hand-off is a bounded tokio channel, so a slow store makes readers wait
//! instead of filling memory: at most `chunk_queue` chunks of `chunk_rows` plays wait between
//! readers and writers, whatever the size or number of files.
//!
//! Each chunk carries an acknowledgement sender back to its file. When a reader reaches the end
//! of a file it hands the file to a finalizer, which waits for every chunk's acknowledgement
//! and only then writes the ledger entry. A failed or abandoned chunk means no `loaded` entry:
//! the file is simply read again next time, and upserts make that harmless.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::extract::{ExtractCounts, ExtractOptions, Item, PlayReader, Reject, SongPlay};
use crate::ledger::{self, LedgerEntry, Status};
use crate::rejects::RejectsFile;
use crate::store::{Store, StoreError, TABLES};
use crate::telemetry::metrics as m;
use crate::transform::Transform;

/// A file to load.
#[derive(Debug, Clone)]
pub struct FileJob {
    pub path: PathBuf,
    /// When the file was found complete, for the load-latency metric.
    pub found_at: Instant,
}

impl FileJob {
    pub fn new(path: PathBuf) -> FileJob {
        FileJob {
            path,
            found_at: Instant::now(),
        }
    }
}

/// How a file ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every song play acknowledged; ledgered as loaded.
    Loaded,
    /// Nothing of the file counts as loaded; ledgered as failed with this reason.
    Failed(String),
    /// The same content is already in the ledger; nothing was read.
    Duplicate { previous_path: String },
    /// The file disappeared before it could be read.
    Vanished,
    /// The file was truncated, appended to or rewritten while it was read (as often as
    /// `PipelineOptions::changed_retries` allows). Not ledgered under any identity: it is
    /// loaded again once it is complete.
    Changed,
    /// The file could not be read for a reason of this machine, not of its content (too many
    /// open files, permission denied, an I/O error, a full disk). Not ledgered: the daemon
    /// takes it again on a later rescan.
    Unreadable(String),
    /// Shutdown came first; not ledgered, so it is read again on the next start.
    Abandoned,
}

impl Outcome {
    /// The value of the `outcome` label of `sparkify_files_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Loaded => m::LOADED,
            Outcome::Failed(_) => m::FAILED,
            Outcome::Duplicate { .. } => m::DUPLICATE,
            Outcome::Vanished => m::VANISHED,
            Outcome::Changed => m::CHANGED,
            Outcome::Unreadable(_) => m::UNREADABLE,
            Outcome::Abandoned => m::ABANDONED,
        }
    }
}

/// What happened to one file, for the caller to print, log or act on.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub outcome: Outcome,
    pub counts: ExtractCounts,
    pub repaired: u64,
    /// Bytes as stored.
    pub size: u64,
    /// How the file is stored, from its first bytes.
    pub codec: crate::extract::Codec,
    /// Bytes of text read: decompressed, or as stored for a plain file.
    pub decompressed_size: u64,
    pub content_hash: String,
    /// The first few rejects, for `validate` and the summary.
    pub sample_rejects: Vec<Reject>,
    /// Where the rejects went, when there were any.
    pub rejects_path: Option<PathBuf>,
    /// From the moment the file was found complete to its ledger entry.
    pub elapsed: Duration,
}

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub readers: usize,
    pub writers: usize,
    pub chunk_rows: usize,
    pub chunk_queue: usize,
    /// Plays one writer gathers from the queue into one store write at most.
    pub group_rows: usize,
    pub extract: ExtractOptions,
    pub transform: Transform,
    pub rejects_dir: PathBuf,
    /// Folders (or files) the inputs were found under; a rejects file mirrors its input's path
    /// below the first that holds it.
    pub input_roots: Vec<PathBuf>,
    /// Load files even when their content is already ledgered as loaded.
    pub force: bool,
    /// Also count bytes read here (for a progress bar).
    pub bytes_read: Option<Arc<AtomicU64>>,
    /// How often a file that changed while read is read again once it has settled, before it
    /// is reported [`Outcome::Changed`]. The daemon leaves that to its watcher (0).
    pub changed_retries: u32,
    /// How long a file must stay unchanged before it is read again after a change.
    pub settle: Duration,
}

impl PipelineOptions {
    pub fn from_settings(settings: &crate::config::Settings, store: &Store) -> PipelineOptions {
        let p = &settings.pipeline;
        let (writers, group_rows) = match store {
            // SQLite has a single writer; it gains from few, large, key-sorted transactions.
            Store::Embedded(_) => (1, settings.embedded.transaction_rows),
            Store::Cassandra(_) => (p.writers, p.chunk_rows * 4),
        };
        PipelineOptions {
            readers: p.readers,
            writers,
            chunk_rows: p.chunk_rows,
            chunk_queue: p.chunk_queue,
            group_rows: group_rows.max(p.chunk_rows),
            extract: ExtractOptions::from(&settings.extract),
            transform: Transform {
                repair_mojibake: settings.transform.repair_mojibake,
            },
            rejects_dir: settings.rejects.dir.clone(),
            input_roots: vec![settings.watch.dir.clone()],
            force: false,
            bytes_read: None,
            changed_retries: 0,
            settle: Duration::from_millis(settings.watch.settle_ms),
        }
    }
}

/// Content being loaded right now, by hash. A second file with the same bytes (a copy dropped
/// while the first is still in flight) waits for the first to be ledgered, then finds it in the
/// ledger and is skipped — instead of both loading and one ledger entry hiding the other.
#[derive(Default)]
struct InFlight {
    files: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
}

/// Holds a content hash in [`InFlight`] until dropped (after the file's ledger entry).
struct Claim {
    owner: Arc<InFlight>,
    hash: String,
    done: Arc<tokio::sync::Notify>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.owner
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hash);
        self.done.notify_waiters();
    }
}

impl InFlight {
    async fn claim(self: &Arc<Self>, hash: &str) -> Claim {
        loop {
            let mut wait = {
                let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
                match files.get(hash) {
                    None => {
                        let done = Arc::new(tokio::sync::Notify::new());
                        files.insert(hash.to_string(), done.clone());
                        return Claim {
                            owner: self.clone(),
                            hash: hash.to_string(),
                            done,
                        };
                    }
                    Some(done) => {
                        // Registered before the lock is released, so the wake-up cannot be missed.
                        let mut wait = Box::pin(done.clone().notified_owned());
                        wait.as_mut().enable();
                        wait
                    }
                }
            };
            wait.as_mut().await;
        }
    }
}

/// Counts a file as being read until stopped or dropped (whatever way reading ends).
struct Reading<'a>(&'a AtomicUsize, bool);

impl<'a> Reading<'a> {
    fn start(count: &'a AtomicUsize) -> Reading<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Reading(count, true)
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.1) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a writer whose group is not full waits for another chunk before writing it.
const GROUP_LINGER: Duration = Duration::from_millis(5);

/// Most rejects kept in a [`FileReport`].
const SAMPLE_REJECTS: usize = 5;

/// Memory allowed per play in a chunk or a write group, on average, besides their row counts:
/// real plays take 150-250 bytes with their text, so only plays of unusually long values reach
/// it, and a chunk of them is sent (a group written) early rather than growing with the text.
pub const PLAY_BYTES: usize = 512;

/// Chunks one write group gathers at most, whatever their size: every chunk of a group is a
/// file (or part of one) waiting for its acknowledgement, so tiny files cannot pile up by the
/// ten thousand in one group.
pub fn max_group_chunks(group_rows: usize, chunk_rows: usize) -> usize {
    (4 * group_rows.div_ceil(chunk_rows.max(1))).max(256)
}

type Ack = mpsc::UnboundedSender<Result<(), StoreError>>;

struct Chunk {
    plays: Vec<SongPlay>,
    /// [`SongPlay::memory_bytes`] of the plays.
    bytes: usize,
    ack: Ack,
}

/// Empty chunk buffers, handed back by the writers for the readers to fill again.
///
/// A chunk buffer (`chunk_rows` plays, about 280 KB) is made by a reader and emptied by a
/// writer, usually on another thread. Allocated afresh each time, such buffers land in glibc's
/// per-thread arenas between the plays' small strings and are not given back: measured on 3M
/// rows, peak RSS went from 63 MiB with a fixed mmap threshold to 100-127 MiB without. Reused,
/// they are allocated once.
struct ChunkPool {
    free: std::sync::Mutex<Vec<Vec<SongPlay>>>,
    rows: usize,
    /// Buffers kept at most: enough for a full queue plus the chunks being filled.
    keep: usize,
}

/// Capacity a new chunk buffer starts with; it grows as plays come. A file of a few plays
/// never holds a buffer of `chunk_rows` (20,000 five-row files, each holding one in a write
/// group, took 188 MiB).
const FIRST_CHUNK_CAPACITY: usize = 64;

impl ChunkPool {
    fn take(&self) -> Vec<SongPlay> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.rows.min(FIRST_CHUNK_CAPACITY)))
    }

    fn give(&self, mut buffer: Vec<SongPlay>) {
        buffer.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.capacity() >= self.rows && free.len() < self.keep {
            free.push(buffer);
        }
    }
}

/// Runs the pipeline until `jobs` is closed and drained (or `shutdown` fires and in-flight work
/// has finished or been abandoned). Every file taken produces exactly one report — unless a
/// task of the pipeline panicked: then `shutdown` is fired, the rest is drained, and the
/// panic is the error returned (the caller must not report success).
pub async fn run(
    store: Store,
    options: PipelineOptions,
    jobs: mpsc::Receiver<FileJob>,
    reports: mpsc::UnboundedSender<FileReport>,
    shutdown: CancellationToken,
) -> Result<(), TaskPanicked> {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>(options.chunk_queue);
    let chunk_rx = Arc::new(Mutex::new(chunk_rx));
    let jobs = Arc::new(Mutex::new(jobs));
    let options = Arc::new(options);
    let pool = Arc::new(ChunkPool {
        free: std::sync::Mutex::new(Vec::new()),
        rows: options.chunk_rows,
        keep: options.chunk_queue + 2 * options.readers + options.writers,
    });

    let reading = Arc::new(AtomicUsize::new(0));

    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..options.writers {
        writers.spawn(writer(
            store.clone(),
            chunk_rx.clone(),
            GroupBounds {
                rows: options.group_rows,
                bytes: options.group_rows.saturating_mul(PLAY_BYTES),
                chunks: max_group_chunks(options.group_rows, options.chunk_rows),
            },
            pool.clone(),
            reading.clone(),
            shutdown.clone(),
        ));
    }
    let finalizers = tokio_util::task::TaskTracker::new();
    let in_flight = Arc::new(InFlight::default());
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..options.readers {
        let jobs = jobs.clone();
        let ctx = ReaderContext {
            store: store.clone(),
            options: options.clone(),
            chunks: chunk_tx.clone(),
            pool: pool.clone(),
            reading: reading.clone(),
            reports: reports.clone(),
            shutdown: shutdown.clone(),
            finalizers: finalizers.clone(),
            in_flight: in_flight.clone(),
        };
        readers.spawn(async move {
            loop {
                let job = tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => break,
                    job = async { jobs.lock().await.recv().await } => job,
                };
                let Some(job) = job else { break };
                metrics::gauge!(m::QUEUE_DEPTH, m::QUEUE => m::QUEUE_FILES).decrement(1.0);
                ctx.load_file(job).await;
            }
        });
    }
    drop(chunk_tx);
    let mut supervisor = Supervisor::new(shutdown.clone());
    supervisor.join_all("reader", &mut readers).await;
    // Readers are done, so every chunk sender but the finalizers' is gone: writers drain the
    // queue and stop.
    supervisor.join_all("writer", &mut writers).await;
    finalizers.close();
    finalizers.wait().await;
    supervisor.finish()
}

/// Joins the pipeline's tasks and turns the first panic among them into the run's error: the
/// panic is logged, `shutdown` is fired so the other tasks stop taking work, and the tasks
/// still running are joined all the same.
struct Supervisor {
    shutdown: CancellationToken,
    panicked: Option<TaskPanicked>,
}

impl Supervisor {
    fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            shutdown,
            panicked: None,
        }
    }

    async fn join_all(&mut self, what: &'static str, tasks: &mut tokio::task::JoinSet<()>) {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result
                && e.is_panic()
            {
                let message = panic_message(e.into_panic());
                tracing::error!(task = what, panic = %message, "A pipeline task panicked; stopping");
                self.shutdown.cancel();
                self.panicked.get_or_insert(TaskPanicked {
                    task: what,
                    message,
                });
            }
        }
    }

    fn finish(self) -> Result<(), TaskPanicked> {
        match self.panicked {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }
}

/// A task of the pipeline panicked: a bug, never a success.
#[derive(Debug, thiserror::Error)]
#[error("internal error: a {task} task panicked: {message}")]
pub struct TaskPanicked {
    pub task: &'static str,
    pub message: String,
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// What one write group holds at most (the first chunk is always taken).
#[derive(Clone, Copy)]
struct GroupBounds {
    rows: usize,
    bytes: usize,
    chunks: usize,
}

async fn writer(
    store: Store,
    chunks: Arc<Mutex<mpsc::Receiver<Chunk>>>,
    bounds: GroupBounds,
    pool: Arc<ChunkPool>,
    reading: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    // The group's buffer, kept from one group to the next for the same reason as ChunkPool.
    let mut buffer: Vec<SongPlay> = Vec::new();
    loop {
        let mut group = {
            let mut rx = chunks.lock().await;
            let Some(first) = rx.recv().await else { break };
            let mut rows = first.plays.len();
            let mut bytes = first.bytes;
            let mut group = vec![first];
            while rows < bounds.rows && bytes < bounds.bytes && group.len() < bounds.chunks {
                let next = match rx.try_recv() {
                    Ok(c) => Some(c),
                    // The queue holds fewer plays than a group (chunk_queue x chunk_rows is
                    // about two thirds of transaction_rows by default), so a busy reader is
                    // given a moment to add more: readers fill a chunk in a millisecond or two,
                    // while each extra transaction rewrites most leaf pages of the tables keyed
                    // by user and by song (measured on 3M rows: groups of ~67k instead of 100k
                    // plays cost a fifth of the throughput). With no file half read (a lone file
                    // sends its last chunk after leaving the count), or a queue that stays dry,
                    // the group is written at once, so a dropped file waits for nothing.
                    Err(mpsc::error::TryRecvError::Empty)
                        if reading.load(Ordering::Relaxed) > 0 =>
                    {
                        tokio::time::timeout(GROUP_LINGER, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    Err(_) => None,
                };
                let Some(c) = next else { break };
                rows += c.plays.len();
                bytes += c.bytes;
                group.push(c);
            }
            group
        };
        metrics::gauge!(m::QUEUE_DEPTH, m::QUEUE => m::QUEUE_CHUNKS).decrement(group.len() as f64);
        let mut plays = std::mem::take(&mut buffer);
        plays.reserve(group.iter().map(|c| c.plays.len()).sum());
        for c in &mut group {
            plays.append(&mut c.plays);
            pool.give(std::mem::take(&mut c.plays));
        }
        let n = plays.len();
        let started = Instant::now();
        let plays = Arc::new(plays);
        let result = store.write(plays.clone(), &shutdown).await;
        metrics::histogram!(m::WRITE_DURATION).record(started.elapsed());
        // The store holds no reference once it has answered; if it did, a new buffer is made.
        if let Ok(mut plays) = Arc::try_unwrap(plays) {
            plays.clear();
            buffer = plays;
        }
        match &result {
            Ok(stats) => {
                for (table, rows) in TABLES.iter().zip(stats.rows) {
                    metrics::counter!(m::ROWS_WRITTEN, m::TABLE => *table).increment(rows);
                }
                tracing::debug!(
                    plays = n,
                    requests = stats.requests,
                    retries = stats.retries,
                    "Wrote a group of plays"
                );
            }
            Err(e) => tracing::debug!(plays = n, error = %e, "Group of plays not written"),
        }
        for chunk in group {
            let _ = chunk.ack.send(result.clone().map(|_| ()));
        }
    }
}

struct ReaderContext {
    store: Store,
    options: Arc<PipelineOptions>,
    chunks: mpsc::Sender<Chunk>,
    pool: Arc<ChunkPool>,
    /// Files taken whose chunks are still coming, for the writers' linger.
    reading: Arc<AtomicUsize>,
    reports: mpsc::UnboundedSender<FileReport>,
    shutdown: CancellationToken,
    finalizers: tokio_util::task::TaskTracker,
    in_flight: Arc<InFlight>,
}

/// Where a file stands while it is read.
struct FileState {
    report: FileReport,
    chunks_sent: usize,
    acks: mpsc::UnboundedReceiver<Result<(), StoreError>>,
    ack: Ack,
}

impl ReaderContext {
    async fn load_file(&self, job: FileJob) {
        let mut attempts = 0;
        loop {
            let Some(report) = self.load_once(&job).await else {
                return;
            };
            // The file changed while it was read: nothing of it was ledgered.
            if attempts >= self.options.changed_retries || self.shutdown.is_cancelled() {
                return deliver(&self.reports, report);
            }
            attempts += 1;
            tracing::warn!(file = %job.path.display(), attempt = attempts, "File changed while being read; reading it again once it settles");
            if !wait_until_settled(&job.path, self.options.settle, &self.shutdown).await {
                let mut report = report;
                report.outcome = Outcome::Abandoned;
                return deliver(&self.reports, report);
            }
        }
    }

    /// One attempt at a file. Returns the report when the file changed while it was read (and
    /// may be tried again); otherwise the report has been, or will be, delivered.
    async fn load_once(&self, job: &FileJob) -> Option<FileReport> {
        // Counted from the moment the file is taken (its hash and ledger look-up come first),
        // so that a writer finishing another file's group waits for this one's chunks.
        let mut reading = Reading::start(&self.reading);
        let path = job.path.clone();
        let mut report = FileReport {
            path: path.clone(),
            outcome: Outcome::Loaded,
            counts: ExtractCounts::default(),
            repaired: 0,
            size: 0,
            codec: crate::extract::Codec::None,
            decompressed_size: 0,
            content_hash: String::new(),
            sample_rejects: Vec::new(),
            rejects_path: None,
            elapsed: Duration::ZERO,
        };
        let finish = |mut report: FileReport, outcome: Outcome| {
            report.outcome = outcome;
            report.elapsed = job.found_at.elapsed();
            deliver(&self.reports, report);
            None
        };

        let fp = {
            let p = path.clone();
            let stop = self.shutdown.clone();
            tokio::task::spawn_blocking(move || {
                crate::identity::fingerprint(&p, || stop.is_cancelled())
            })
            .await
        };
        let fp = match fp {
            Ok(Ok(fp)) => fp,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return finish(report, Outcome::Vanished);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                return finish(report, Outcome::Abandoned);
            }
            Ok(Err(e)) if crate::extract::is_local_io_error(&e) => {
                let reason = format!("{}: cannot read: {e}", path.display());
                return finish(report, Outcome::Unreadable(reason));
            }
            Ok(Err(e)) => {
                let reason = format!("{}: cannot read: {e}", path.display());
                return finish(report, Outcome::Failed(reason));
            }
            Err(e) => return finish(report, Outcome::Failed(e.to_string())),
        };
        report.size = fp.size;
        report.content_hash = fp.content_hash.clone();
        let claim = self.in_flight.claim(&fp.content_hash).await;

        if !self.options.force {
            match self.store.ledger_get(&fp.content_hash).await {
                Ok(Some(prev)) if prev.status == Status::Loaded => {
                    return finish(
                        report,
                        Outcome::Duplicate {
                            previous_path: prev.path,
                        },
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    // The store is down: the file stays unledgered and is taken again later.
                    tracing::warn!(file = %path.display(), error = %e, "Cannot check the ledger; leaving the file for later");
                    return finish(report, Outcome::Abandoned);
                }
            }
        }

        let (ack, acks) = mpsc::unbounded_channel();
        let mut state = FileState {
            report,
            chunks_sent: 0,
            acks,
            ack,
        };
        let read = self
            .read_into_chunks(&path, &fp, &mut state, &mut reading)
            .await;
        let FileState {
            mut report,
            chunks_sent,
            mut acks,
            ack,
        } = state;
        drop(ack);
        let failure = match read {
            ReadEnd::Done => None,
            ReadEnd::Abandoned => return finish(report, Outcome::Abandoned),
            ReadEnd::Vanished => return finish(report, Outcome::Vanished),
            ReadEnd::Unreadable(reason) => return finish(report, Outcome::Unreadable(reason)),
            ReadEnd::Changed => {
                // Chunks already queued are still written (upserts of rows the file did hold);
                // nothing is ledgered, so the file is loaded again in full once it settles.
                report.outcome = Outcome::Changed;
                report.elapsed = job.found_at.elapsed();
                return Some(report);
            }
            ReadEnd::Failed(reason) => Some(reason),
        };
        let store = self.store.clone();
        let reports = self.reports.clone();
        let found_at = job.found_at;
        self.finalizers.spawn(async move {
            // Released once the ledger entry is written (or the file is given up).
            let _claim = claim;
            let mut store_error: Option<StoreError> = None;
            for _ in 0..chunks_sent {
                match acks.recv().await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        store_error.get_or_insert(e);
                    }
                    None => {
                        store_error.get_or_insert(StoreError::Abandoned);
                    }
                }
            }
            let c = report.counts;
            let failure = failure.or_else(|| {
                // Song plays were there, and none of them could be loaded: that is a failed
                // file, not a loaded one (a file with no song plays at all is loaded).
                (c.plays == 0 && c.rejected > 0).then(|| {
                    format!(
                        "{}: every song play was rejected ({} of {} rows){}",
                        report.path.display(),
                        c.rejected,
                        c.rows,
                        report
                            .rejects_path
                            .as_ref()
                            .map(|p| format!("; see {}", p.display()))
                            .unwrap_or_default()
                    )
                })
            });
            let (status, reason) = match (&failure, &store_error) {
                (_, Some(StoreError::Abandoned)) => {
                    report.outcome = Outcome::Abandoned;
                    report.elapsed = found_at.elapsed();
                    deliver(&reports, report);
                    return;
                }
                (Some(reason), _) => (Status::Failed, reason.clone()),
                (None, Some(e)) if e.is_transient() || e.is_fatal() => {
                    // Could not be written, through no fault of the file (an outage, a store
                    // that is unusable): leave it for a later attempt.
                    report.outcome = Outcome::Abandoned;
                    report.elapsed = found_at.elapsed();
                    deliver(&reports, report);
                    return;
                }
                (None, Some(e)) => (Status::Failed, format!("{}: {e}", report.path.display())),
                (None, None) => (Status::Loaded, String::new()),
            };
            let entry = LedgerEntry {
                content_hash: report.content_hash.clone(),
                path: report.path.display().to_string(),
                size: report.size,
                codec: report.codec,
                decompressed_size: report.decompressed_size,
                counts: report.counts,
                repaired: report.repaired,
                status,
                reason: reason.clone(),
                recorded_at_ms: ledger::now_ms(),
            };
            report.outcome = match store.ledger_put(&entry).await {
                Ok(()) if status == Status::Loaded => Outcome::Loaded,
                Ok(()) => Outcome::Failed(reason),
                Err(e) => {
                    tracing::warn!(file = %report.path.display(), error = %e, "Cannot write the ledger entry; the file will be read again");
                    Outcome::Abandoned
                }
            };
            report.elapsed = found_at.elapsed();
            deliver(&reports, report);
        });
        None
    }

    /// Streams the file into chunks on the writers' queue.
    async fn read_into_chunks(
        &self,
        path: &Path,
        hashed: &crate::identity::Fingerprint,
        state: &mut FileState,
        reading: &mut Reading<'_>,
    ) -> ReadEnd {
        let opts = &self.options;
        let mut reader = match PlayReader::open(path, &opts.extract).await {
            Ok(r) => r,
            Err(e) => {
                // For the ledger entry of a file that failed before its header was read.
                state.report.codec = crate::extract::Codec::of_file(path).unwrap_or_default();
                return ReadEnd::from_error(e);
            }
        };
        state.report.codec = reader.codec();
        let mut rejects = RejectsFile::new(
            &opts.rejects_dir,
            &crate::rejects::relative_input(&opts.input_roots, path),
            reader.header(),
        );
        let mut chunk: Vec<SongPlay> = self.pool.take();
        let mut chunk_bytes = 0usize;
        let max_chunk_bytes = opts.chunk_rows.saturating_mul(PLAY_BYTES);
        let mut last_bytes = 0u64;
        let end = loop {
            let item = match reader.next().await {
                Ok(Some(item)) => item,
                Ok(None) => break ReadEnd::Done,
                Err(e) => break ReadEnd::from_error(e),
            };
            match item {
                Item::Play(mut play) => {
                    state.report.repaired += opts.transform.apply(&mut play);
                    chunk_bytes += play.memory_bytes();
                    chunk.push(play);
                    if chunk.len() >= opts.chunk_rows || chunk_bytes >= max_chunk_bytes {
                        let full = std::mem::replace(&mut chunk, self.pool.take());
                        let bytes = std::mem::take(&mut chunk_bytes);
                        if !self.send_chunk(full, bytes, state).await {
                            break ReadEnd::Abandoned;
                        }
                        if let Some(counter) = &opts.bytes_read {
                            let now = reader.bytes_read();
                            counter.fetch_add(now - last_bytes, Ordering::Relaxed);
                            last_bytes = now;
                        }
                    }
                }
                Item::Reject(reject) => {
                    tracing::debug!(file = %path.display(), line = reject.line, column = %reject.column, reason = %reject.reason, "Rejected a row");
                    if let Err(e) = rejects.write(&reject).await {
                        break ReadEnd::Unreadable(format!("cannot write the rejects file: {e}"));
                    }
                    if state.report.sample_rejects.len() < SAMPLE_REJECTS {
                        // The report shows line, column, value and reason; the fields (up to
                        // extract.max_fields of them) are in the rejects file.
                        let mut reject = reject;
                        reject.fields = Vec::new();
                        state.report.sample_rejects.push(reject);
                    }
                }
            }
        };
        // Only the bytes whose rows were read may be ledgered: the content hashed on the way
        // must be the content hashed before (the identity the ledger was asked about).
        let end = match end {
            ReadEnd::Done if reader.content().as_ref() != Some(hashed) => ReadEnd::Changed,
            other => other,
        };
        // Before the last chunk goes, so that a writer does not linger for more of this file.
        reading.stop();
        if matches!(end, ReadEnd::Done)
            && !chunk.is_empty()
            && !self.send_chunk(chunk, chunk_bytes, state).await
        {
            return ReadEnd::Abandoned;
        }
        if let Some(counter) = &opts.bytes_read {
            counter.fetch_add(
                reader.bytes_read().saturating_sub(last_bytes),
                Ordering::Relaxed,
            );
        }
        state.report.counts = reader.counts();
        state.report.decompressed_size = reader.text_bytes();
        match rejects.finish(&state.report.content_hash).await {
            Ok(written) => state.report.rejects_path = written,
            Err(e) => {
                return ReadEnd::Unreadable(format!("cannot write the rejects file: {e}"));
            }
        }
        end
    }

    /// Queues one chunk; false if shutdown came first.
    async fn send_chunk(&self, plays: Vec<SongPlay>, bytes: usize, state: &mut FileState) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let chunk = Chunk {
            plays,
            bytes,
            ack: state.ack.clone(),
        };
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => false,
            sent = self.chunks.send(chunk) => {
                if sent.is_err() {
                    return false;
                }
                metrics::gauge!(m::QUEUE_DEPTH, m::QUEUE => m::QUEUE_CHUNKS).increment(1.0);
                state.chunks_sent += 1;
                true
            }
        }
    }
}

enum ReadEnd {
    Done,
    Abandoned,
    Vanished,
    Changed,
    Unreadable(String),
    Failed(String),
}

impl ReadEnd {
    fn from_error(e: crate::extract::FileError) -> ReadEnd {
        if e.is_not_found() {
            ReadEnd::Vanished
        } else if e.is_changed() {
            ReadEnd::Changed
        } else if e.is_local() {
            ReadEnd::Unreadable(e.to_string())
        } else {
            ReadEnd::Failed(e.to_string())
        }
    }
}

/// Waits until `path` has kept its size and modification time for `settle`; false if the
/// file is gone or shutdown came first.
async fn wait_until_settled(path: &Path, settle: Duration, shutdown: &CancellationToken) -> bool {
    let every = (settle / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut last = stamp(path);
    let mut since = tokio::time::Instant::now();
    // A file that never settles (a log being written) is tried again after this anyway, and
    // reported changed once the attempts are used up.
    let give_up = since + settle * 10 + Duration::from_secs(30);
    loop {
        if last.is_none() {
            return false;
        }
        if since.elapsed() >= settle || tokio::time::Instant::now() >= give_up {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(every) => {}
        }
        let now = stamp(path);
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        }
    }
}

/// Counts a finished file in the metrics and hands its report to the caller.
fn deliver(reports: &mpsc::UnboundedSender<FileReport>, report: FileReport) {
    metrics::counter!(m::FILES, m::OUTCOME => report.outcome.label()).increment(1);
    if matches!(report.outcome, Outcome::Loaded | Outcome::Failed(_)) {
        let c = report.counts;
        metrics::counter!(m::ROWS_READ).increment(c.rows);
        metrics::counter!(m::SONG_PLAYS).increment(c.plays);
        metrics::counter!(m::ROWS_SKIPPED).increment(c.skipped);
        metrics::counter!(m::ROWS_REJECTED).increment(c.rejected);
        metrics::counter!(m::VALUES_REPAIRED).increment(report.repaired);
    }
    if report.outcome == Outcome::Loaded {
        metrics::gauge!(m::LAST_LOAD_TIMESTAMP).set(ledger::now_ms() as f64 / 1000.0);
        metrics::histogram!(m::FILE_LATENCY).record(report.elapsed);
    }
    let _ = reports.send(report);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_panic_stops_the_others_and_is_the_runs_error_never_success() {
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let stopped = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let (shutdown, stopped) = (shutdown.clone(), stopped.clone());
            tasks.spawn(async move {
                shutdown.cancelled().await;
                stopped.fetch_add(1, Ordering::SeqCst);
            });
        }
        tasks.spawn(async { panic!("index out of bounds: the len is 3 but the index is 7") });
        let mut supervisor = Supervisor::new(shutdown.clone());
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            supervisor.join_all("writer", &mut tasks),
        )
        .await
        .expect("the other tasks were told to stop and were joined");
        assert!(shutdown.is_cancelled());
        assert_eq!(stopped.load(Ordering::SeqCst), 2);
        let err = supervisor.finish().unwrap_err();
        assert_eq!(err.task, "writer");
        assert_eq!(
            err.to_string(),
            "internal error: a writer task panicked: index out of bounds: the len is 3 but the \
             index is 7"
        );
    }

    #[tokio::test]
    async fn tasks_that_end_normally_are_success() {
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async {});
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.join_all("reader", &mut tasks).await;
        assert!(!shutdown.is_cancelled());
        assert!(supervisor.finish().is_ok());
    }
}
