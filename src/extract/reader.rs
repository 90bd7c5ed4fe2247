//! The reader: one file streamed record by record into song plays, skipped events and rejects.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::errors::{FileError, shown_header};
use super::guard::{Guard, GuardState};
use super::header::Columns;
use super::options::ExtractOptions;
use super::source::{BlockingFile, Codec, CompressedProblem, Source, magic_of};
use super::types::{ExtractCounts, Item, Reject};
use super::validate::{Verdict, classify, field, is_blank_line};
use csv_async::{AsyncReaderBuilder, ByteRecord};

/// Records handed from the parsing thread to the reader at once, at most.
pub(super) const BATCH_RECORDS: usize = 256;
/// Batches parsed ahead of the reader at most, per open file.
pub(super) const BATCHES_AHEAD: usize = 2;
/// A batch whose largest record costs more than this (see [`record_cost`]) is not reused, so
/// that one file of huge records does not leave every reused record holding a huge buffer: a
/// reused batch keeps at most `BATCH_RECORDS × REUSE_RECORD_BYTES` (1 MiB).
pub(super) const REUSE_RECORD_BYTES: usize = 4 * 1024;

/// What a parsed record takes in memory: its field bytes and 8 bytes of bounds per field. A
/// row of nothing but commas has no field bytes at all, yet costs 8 bytes per comma.
pub(super) fn record_cost(record: &ByteRecord) -> usize {
    record.as_slice().len() + record.len() * std::mem::size_of::<usize>()
}

/// Replaces a record that has more than `n` fields by one of its first `n` (the line kept), so
/// that a batch never holds more than `n` fields of bookkeeping per record.
pub(super) fn keep_first_fields(record: &mut ByteRecord, n: usize) {
    let end = record.range(n - 1).map_or(0, |r| r.end);
    let mut short = ByteRecord::with_capacity(end, n);
    for f in record.iter().take(n) {
        short.push_field(f);
    }
    short.set_position(record.position().cloned());
    *record = short;
}

/// Records parsed together by the parsing thread. Batches go back to it once read, so their
/// records' buffers are reused instead of allocated for every record.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) records: Vec<ByteRecord>,
    /// Records of `records` in use; the rest are kept for their buffers.
    pub(super) len: usize,
    /// Whether the guard shortened each record in use.
    pub(super) truncated: Vec<bool>,
    /// For each record in use that had more than `max_fields` fields (and now has only the
    /// first ones), how many it had; 0 for the others.
    pub(super) cut_from: Vec<usize>,
    /// Cost ([`record_cost`]) of the largest record in use.
    pub(super) largest: usize,
}

pub(super) fn csv_io_error(e: csv_async::Error) -> io::Error {
    match e.into_kind() {
        csv_async::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

pub(super) type Parser = csv_async::AsyncReader<Guard<Source>>;

/// The line the parser stands at, in an error that a compressed file's damage caused.
pub(super) fn with_line(e: io::Error, line: u64) -> io::Error {
    if !e
        .get_ref()
        .is_some_and(|inner| inner.is::<CompressedProblem>())
    {
        return e;
    }
    let kind = e.kind();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<CompressedProblem>())
    {
        Some(Ok(mut problem)) => {
            problem.line = line;
            io::Error::new(kind, *problem)
        }
        Some(Err(inner)) => io::Error::new(kind, inner),
        None => io::Error::from(kind),
    }
}

/// Opens `path` for parsing and reads its header.
pub(super) async fn open_parser(
    path: &Path,
    options: &ExtractOptions,
    guard: &Arc<GuardState>,
) -> Result<(Parser, Columns, Codec), FileError> {
    let io_err = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = BlockingFile::open(path, guard.clone()).map_err(io_err)?;
    let codec = Codec::of_magic(&magic_of(&file.file).map_err(io_err)?);
    let source = Source::new(file, codec, options.max_decompressed_bytes);
    let limit = (options.max_record_bytes + options.read_buffer_bytes) as u64;
    // Records end at '\n' only: with the default CRLF terminator the parser reports the line
    // of a record that follows "\r\n" one too low. The '\r' left at the end of the last field
    // is trimmed in `field`.
    let mut csv = AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv_async::Terminator::Any(b'\n'))
        .buffer_capacity(options.read_buffer_bytes)
        .create_reader(Guard {
            inner: source,
            state: guard.clone(),
            limit,
            skipping: false,
        });
    let mut header = ByteRecord::new();
    let has_header = csv
        .read_byte_record(&mut header)
        .await
        .map_err(|e| FileError::from_io(path, with_line(csv_io_error(e), 1)))?;
    if !has_header {
        return Err(FileError::Empty {
            path: path.to_path_buf(),
        });
    }
    if guard.truncated.load(Ordering::Relaxed) || header.as_slice().len() > options.max_record_bytes
    {
        return Err(FileError::HeaderTooLong {
            path: path.to_path_buf(),
            bound: options.max_record_bytes,
            start: shown_header(&header),
            hint: crate::escape::likely_binary(header.as_slice()),
        });
    }
    let columns = Columns::from_header(path, &header, options.max_fields)?;
    guard
        .boundary
        .store(csv.position().byte(), Ordering::Relaxed);
    guard.truncated.store(false, Ordering::Relaxed);
    Ok((csv, columns, codec))
}

/// The parsing loop of one file: `csv_async` records, in batches, at most [`BATCHES_AHEAD`]
/// ahead of the reader, until the end of the file, the first error (sent after the records
/// before it) or the reader going away.
pub(super) async fn parse_records(
    mut csv: Parser,
    guard: Arc<GuardState>,
    batch_bytes: usize,
    max_fields: usize,
    batches: tokio::sync::mpsc::Sender<io::Result<Batch>>,
    mut reused: tokio::sync::mpsc::UnboundedReceiver<Batch>,
) {
    loop {
        let mut batch = reused.try_recv().unwrap_or_default();
        batch.len = 0;
        batch.largest = 0;
        batch.truncated.clear();
        batch.cut_from.clear();
        let mut bytes = 0;
        let mut end = None;
        // A batch ends after BATCH_RECORDS records or once its records cost about one read
        // buffer, whichever comes first, so memory stays bounded whatever the records look
        // like: a record over max_fields is cut to its first fields as soon as it is parsed.
        while batch.len < BATCH_RECORDS && bytes < batch_bytes {
            if batch.records.len() == batch.len {
                batch.records.push(ByteRecord::new());
            }
            let record = &mut batch.records[batch.len];
            match csv.read_byte_record(record).await {
                Ok(true) => {
                    let fields = record.len();
                    let cut_from = if fields > max_fields {
                        keep_first_fields(record, max_fields);
                        fields
                    } else {
                        0
                    };
                    let size = record_cost(record);
                    bytes += size;
                    batch.largest = batch.largest.max(size);
                    // The guard sets the flag from inside this thread's reads, so a plain load
                    // (and a store only when set) does what a swap would.
                    let truncated = guard.truncated.load(Ordering::Relaxed);
                    if truncated {
                        guard.truncated.store(false, Ordering::Relaxed);
                    }
                    guard
                        .boundary
                        .store(csv.position().byte(), Ordering::Relaxed);
                    batch.truncated.push(truncated);
                    batch.cut_from.push(cut_from);
                    batch.len += 1;
                }
                Ok(false) => {
                    end = Some(Ok(()));
                    break;
                }
                Err(e) => {
                    let line = csv.position().line();
                    end = Some(Err(with_line(csv_io_error(e), line)));
                    break;
                }
            }
        }
        // A send fails only when the reader is gone: nobody wants the rest.
        if batch.len > 0 && batches.send(Ok(batch)).await.is_err() {
            return;
        }
        match end {
            None => {}
            Some(Ok(())) => return,
            Some(Err(e)) => {
                let _ = batches.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Reads one file, record by record.
///
/// `csv_async` reads and parses the file on a thread of its own ([`parse_records`]), a few
/// batches of records ahead, while `next` validates them: parsing was half of the reader's
/// time, and the two halves now run side by side. When the reader is dropped, the thread
/// stops at its next hand-over.
pub struct PlayReader {
    path: PathBuf,
    batches: tokio::sync::mpsc::Receiver<io::Result<Batch>>,
    reuse: tokio::sync::mpsc::UnboundedSender<Batch>,
    batch: Batch,
    /// Next record of `batch`.
    at: usize,
    guard: Arc<GuardState>,
    columns: Columns,
    codec: Codec,
    options: ExtractOptions,
    counts: ExtractCounts,
}

impl PlayReader {
    /// Opens `path` and checks its header.
    ///
    /// The file is read and parsed on a thread of the blocking pool of its own (one per open
    /// file, as many as `pipeline.readers`), which drives `csv_async` with plain blocking reads
    /// while `next` validates on the caller's side.
    pub async fn open(path: &Path, options: &ExtractOptions) -> Result<PlayReader, FileError> {
        let guard = Arc::new(GuardState::default());
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (batch_tx, batches) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
        let (reuse, reused) = tokio::sync::mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        let (thread_path, thread_options, thread_guard) =
            (path.to_path_buf(), options.clone(), guard.clone());
        tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let csv = match open_parser(&thread_path, &thread_options, &thread_guard).await {
                    Ok((csv, columns, codec)) => {
                        if opened_tx.send(Ok((columns, codec))).is_err() {
                            return;
                        }
                        csv
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let batch_bytes = thread_options.read_buffer_bytes.max(4096);
                let max_fields = thread_options.max_fields.max(1);
                parse_records(csv, thread_guard, batch_bytes, max_fields, batch_tx, reused).await;
            })
        });
        let (columns, codec) = opened.await.unwrap_or_else(|_| {
            Err(FileError::Io {
                path: path.to_path_buf(),
                source: io::Error::other("the parsing thread stopped before reading the header"),
            })
        })?;
        Ok(PlayReader {
            path: path.to_path_buf(),
            batches,
            reuse,
            batch: Batch::default(),
            at: 0,
            guard,
            columns,
            codec,
            options: options.clone(),
            counts: ExtractCounts::default(),
        })
    }

    /// How the file is stored, from its first bytes.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Bytes of text read so far (by the parser, which runs a little ahead): decompressed, or
    /// as stored for a plain file. The whole text's size once the end was reached.
    pub fn text_bytes(&self) -> u64 {
        self.guard.text.load(Ordering::Relaxed)
    }

    /// The header as written in the file.
    pub fn header(&self) -> &[String] {
        &self.columns.names
    }

    /// Counts so far.
    pub fn counts(&self) -> ExtractCounts {
        self.counts
    }

    /// The identity (content hash and size) of exactly the bytes parsed: `Some` once the parser
    /// has read to the end of a file that did not change meanwhile.
    pub fn content(&self) -> Option<crate::identity::Fingerprint> {
        self.guard
            .content
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes of the file read so far, as stored (by the parser, which runs a little ahead):
    /// what a progress bar over the files' sizes counts.
    pub fn bytes_read(&self) -> u64 {
        self.guard.stored.load(Ordering::Relaxed)
    }

    /// The next song play or reject; `None` at the end of the file. Non-song events are
    /// skipped and counted on the way.
    pub async fn next(&mut self) -> Result<Option<Item>, FileError> {
        loop {
            if self.at == self.batch.len {
                // Once the parser has sent the end of the file or an error, its side of the
                // channel is gone and every further call ends here with `None`.
                match self.batches.recv().await {
                    Some(Ok(batch)) => {
                        let used = std::mem::replace(&mut self.batch, batch);
                        if used.largest <= REUSE_RECORD_BYTES {
                            let _ = self.reuse.send(used);
                        }
                        self.at = 0;
                        continue;
                    }
                    Some(Err(e)) => return Err(FileError::from_io(&self.path, e)),
                    None => return Ok(None),
                }
            }
            let record = &self.batch.records[self.at];
            let truncated = self.batch.truncated[self.at];
            let cut_from = self.batch.cut_from[self.at];
            self.at += 1;
            if is_blank_line(record) {
                continue;
            }
            self.counts.rows += 1;
            match classify(record, &self.columns, &self.options, truncated, cut_from) {
                Verdict::Skip => self.counts.skipped += 1,
                Verdict::Play(play) => {
                    self.counts.plays += 1;
                    return Ok(Some(Item::Play(play)));
                }
                Verdict::Reject {
                    column,
                    value,
                    reason,
                } => {
                    self.counts.rejected += 1;
                    let line = record.position().map(|p| p.line()).unwrap_or(0);
                    return Ok(Some(Item::Reject(Reject {
                        line,
                        column,
                        value,
                        reason,
                        fields: (0..record.len())
                            .map(|i| String::from_utf8_lossy(field(record, i)).into_owned())
                            .collect(),
                    })));
                }
            }
        }
    }
}
