//! Extract: stream one event CSV file and turn its rows into validated song plays.
//!
//! Sits between discovery (a file job from `watch` or the `ingest` command) and the writers.
//! The file is never loaded whole: `csv_async` parses it through a fixed-size buffer and each
//! record is looked at once. A gzip or zstd file (told by its first bytes, whatever its name) is
//! decompressed on the way, in the same stream, so it reads exactly like the plain file: same
//! lines, rows, rejects and repairs. Columns are found by header name (case, surrounding spaces and a
//! UTF-8 BOM do not matter; order and extra columns do not either). Every record ends up as
//! exactly one of: a song play, a skipped non-song event, or a [`Reject`] with its line, column,
//! value and reason. Only a file-level problem (unreadable, no header, missing columns,
//! compressed data that is damaged, cut short or expands past its bound) stops the file.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use csv_async::{AsyncReaderBuilder, ByteRecord};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};

/// Columns a file must have, as they are spelled in the real logs.
pub const REQUIRED_COLUMNS: [&str; 8] = [
    "artist",
    "song",
    "length",
    "sessionId",
    "itemInSession",
    "userId",
    "firstName",
    "lastName",
];

pub use crate::config::DEFAULT_PATTERN;

/// The matcher of a `watch.pattern` glob, on file names, ignoring case (`A.CSV.GZ` is taken).
pub fn input_matcher(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .case_insensitive(true)
        .build()?
        .compile_matcher())
}

/// How a file's bytes are stored. Told by the first bytes of the file (its magic number),
/// never by its name: a gzip file named `.csv` is decompressed, a plain file named `.csv.gz`
/// is read as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Plain text.
    #[default]
    None,
    /// gzip (RFC 1952), any number of members one after the other (`cat a.gz b.gz`, pigz).
    Gzip,
    /// Zstandard, any number of frames one after the other.
    Zstd,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// The codec a ledger entry names; anything unknown is read as plain.
    pub fn parse(s: &str) -> Codec {
        match s {
            "gzip" => Codec::Gzip,
            "zstd" => Codec::Zstd,
            _ => Codec::None,
        }
    }

    /// The codec of a file that starts with `start` (its first 4 bytes or fewer).
    pub fn of_magic(start: &[u8]) -> Codec {
        if start.starts_with(b"\x1f\x8b") {
            Codec::Gzip
        } else if start.starts_with(b"\x28\xb5\x2f\xfd") {
            Codec::Zstd
        } else {
            Codec::None
        }
    }

    /// The codec of the file at `path`, from its first bytes.
    pub fn of_file(path: &Path) -> io::Result<Codec> {
        Ok(Codec::of_magic(&magic_of(&crate::identity::open_regular(
            path,
        )?)?))
    }
}

/// The first 4 bytes of a file (fewer if it is shorter), read without moving its offset.
fn magic_of(file: &std::fs::File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read_at(&mut magic[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(magic[..got].to_vec())
}

/// The page value of a song play.
pub const SONG_PAGE: &str = "NextSong";

/// One validated song play: everything the three tables need, plus the profile columns the
/// analysts' combined CSV (`sparkify extract`) shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SongPlay {
    pub session_id: i32,
    pub item_in_session: i32,
    pub user_id: i32,
    pub artist: String,
    pub song: String,
    pub length: f64,
    pub first_name: String,
    pub last_name: String,
    /// Only filled when [`ExtractOptions::keep_profile`] is set.
    pub profile: Option<Box<Profile>>,
}

impl SongPlay {
    /// Bytes the play takes in memory, its text included: what chunks and write groups are
    /// bounded by besides their number of plays.
    pub fn memory_bytes(&self) -> usize {
        let profile = self.profile.as_ref().map_or(0, |p| {
            std::mem::size_of::<Profile>() + p.gender.len() + p.level.len() + p.location.len()
        });
        std::mem::size_of::<SongPlay>()
            + self.artist.len()
            + self.song.len()
            + self.first_name.len()
            + self.last_name.len()
            + profile
    }
}

/// Columns kept only for the combined CSV.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub gender: String,
    pub level: String,
    pub location: String,
}

/// A song play that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Line of the file where the record starts (the header is line 1).
    pub line: u64,
    /// The column at fault, as the header spells it; empty when the record as a whole is bad.
    pub column: String,
    /// The offending value (shortened when long).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
    /// The record's original fields, for the rejects file.
    pub fields: Vec<String>,
}

/// What one record turned out to be.
#[derive(Debug)]
pub enum Item {
    Play(SongPlay),
    Reject(Reject),
}

/// Counts for one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractCounts {
    /// Records after the header.
    pub rows: u64,
    /// Valid song plays.
    pub plays: u64,
    /// Events that are not song plays (Home, Login, ...).
    pub skipped: u64,
    /// Song plays that could not be loaded.
    pub rejected: u64,
}

/// A problem with a file as a whole: nothing of it is loaded.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file was truncated, appended to or rewritten while it was read.
    #[error("{path}: changed while being read")]
    Changed { path: PathBuf },
    /// The file has no header line.
    #[error("{path}: the file is empty; expected a header line naming the columns")]
    Empty { path: PathBuf },
    /// The header lacks columns the tables need.
    #[error("{path}: line 1: the header lacks required column(s) {}; found: {found}{}", missing.join(", "), hint_suffix(hint))]
    MissingColumns {
        path: PathBuf,
        missing: Vec<String>,
        /// The header as shown: control characters and bytes that are not UTF-8 escaped,
        /// shortened when long.
        found: String,
        /// What the file most likely is when it is not CSV text at all.
        hint: Option<&'static str>,
    },
    /// The header has more columns than any record may have fields.
    #[error(
        "{path}: line 1: the header has {columns} columns; the bound is {bound} (extract.max_fields)"
    )]
    TooManyColumns {
        path: PathBuf,
        columns: usize,
        bound: usize,
    },
    /// The compressed data is damaged, cut short or expands past
    /// `extract.max_decompressed_bytes`: the file fails as a whole.
    #[error("{path}: {problem}")]
    Compressed {
        path: PathBuf,
        problem: CompressedProblem,
    },
    /// The header line is longer than any record may be.
    #[error(
        "{path}: line 1: the header is over {bound} bytes long (extract.max_record_bytes); it starts: {start}{}",
        hint_suffix(hint)
    )]
    HeaderTooLong {
        path: PathBuf,
        bound: usize,
        /// The start of the header as shown.
        start: String,
        hint: Option<&'static str>,
    },
}

fn hint_suffix(hint: &Option<&'static str>) -> String {
    hint.map(|h| format!(" ({h})")).unwrap_or_default()
}

/// Longest part of a header quoted back in a message, in characters.
const SHOWN_HEADER_CHARS: usize = 200;

/// The start of a header as the file has it (fields joined by commas), escaped and
/// shortened, for a message.
fn shown_header(header: &ByteRecord) -> String {
    let mut raw = Vec::new();
    for (i, f) in header.iter().enumerate() {
        if i > 0 {
            raw.push(b',');
        }
        raw.extend_from_slice(f);
        if raw.len() > SHOWN_HEADER_CHARS * 4 {
            break;
        }
    }
    shown_within(&raw, SHOWN_HEADER_CHARS)
}

/// Bytes from a file as quoted back in a message: escaped (see `escape`), at most `max_chars`
/// characters and `…`. Only as much is looked at as can be shown (a character is at most 4
/// bytes, so a character cut at the end of that is past the limit anyway).
fn shown_within(raw: &[u8], max_chars: usize) -> String {
    let head = &raw[..raw.len().min(max_chars * 4 + 4)];
    let mut text = crate::escape::escape_bytes_within(head, max_chars);
    if head.len() < raw.len() && !text.ends_with('…') {
        text.push('…');
    }
    text
}

/// What is wrong with a compressed file, and where: the byte offset is in the file as stored,
/// the line in its decompressed text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompressedProblem {
    pub codec: Codec,
    pub kind: CompressedProblemKind,
    /// Byte of the stored file the decoder had reached.
    pub offset: u64,
    /// Line of the decompressed text the parser had reached (0 before the first line ended).
    pub line: u64,
    /// What the decoder said.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressedProblemKind {
    /// The stored file ends in the middle of the compressed data.
    Truncated,
    /// The compressed data is not valid (bad header, bad block, checksum mismatch, garbage
    /// after the last member or frame).
    Corrupt,
    /// The decompressed text is longer than `extract.max_decompressed_bytes`.
    TooLarge { bound: u64 },
    /// A zstd frame asks for a larger window than a reader may take (see
    /// `ZSTD_WINDOW_LOG_MAX`).
    WindowTooLarge,
}

impl std::fmt::Display for CompressedProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codec = self.codec.as_str();
        let at = self.offset;
        let line = if self.line > 0 {
            format!(" (line {})", self.line)
        } else {
            String::new()
        };
        match self.kind {
            CompressedProblemKind::Truncated => write!(
                f,
                "{codec} stream ends early at byte {at}{line}: the file is truncated"
            ),
            CompressedProblemKind::Corrupt => write!(
                f,
                "{codec} data is corrupt at byte {at}{line}: {}",
                self.detail
            ),
            CompressedProblemKind::TooLarge { bound } => write!(
                f,
                "{codec} data expands past {bound} bytes (extract.max_decompressed_bytes) at byte {at}{line}"
            ),
            CompressedProblemKind::WindowTooLarge => write!(
                f,
                "{codec} data at byte {at}{line} needs a window of over {} MiB, more than a reader \
                 may take (made with zstd --long or --ultra); compress it again without",
                (1u64 << ZSTD_WINDOW_LOG_MAX) >> 20
            ),
        }
    }
}

impl FileError {
    /// The error for a failed read of `path`.
    fn from_io(path: &Path, source: io::Error) -> FileError {
        if source.get_ref().is_some_and(|e| e.is::<ChangedWhileRead>()) {
            FileError::Changed {
                path: path.to_path_buf(),
            }
        } else if let Some(problem) = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<CompressedProblem>())
        {
            FileError::Compressed {
                path: path.to_path_buf(),
                problem: problem.clone(),
            }
        } else {
            FileError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// True when the file was truncated, appended to or rewritten while it was read.
    pub fn is_changed(&self) -> bool {
        matches!(self, FileError::Changed { .. })
    }

    /// True when the failure comes from this machine rather than from the file's content
    /// (too many open files, permission denied, an I/O error, a full disk): the same file may
    /// well load on a later attempt.
    pub fn is_local(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if is_local_io_error(source))
    }

    /// True when the file vanished before or while it was read.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Whether an I/O error is this machine's problem (resources, permissions, hardware) rather
/// than the file's: such a file is worth trying again later.
pub fn is_local_io_error(e: &io::Error) -> bool {
    const EIO: i32 = 5;
    const ENOMEM: i32 = 12;
    const EACCES: i32 = 13;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
    ) || matches!(
        e.raw_os_error(),
        Some(EIO | ENOMEM | EACCES | ENFILE | EMFILE | ENOSPC | EDQUOT)
    )
}

/// How files are read.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Records longer than this are rejected.
    pub max_record_bytes: usize,
    /// Parser buffer size.
    pub read_buffer_bytes: usize,
    /// Records with more fields than this are rejected; headers with more columns fail.
    pub max_fields: usize,
    /// A compressed file that expands past this many bytes fails.
    pub max_decompressed_bytes: u64,
    /// Also keep gender, level and location.
    pub keep_profile: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        let d = crate::config::ExtractSettings::default();
        Self {
            max_record_bytes: d.max_record_bytes,
            read_buffer_bytes: d.read_buffer_bytes,
            max_fields: d.max_fields,
            max_decompressed_bytes: d.max_decompressed_bytes,
            keep_profile: false,
        }
    }
}

impl From<&crate::config::ExtractSettings> for ExtractOptions {
    fn from(s: &crate::config::ExtractSettings) -> Self {
        Self {
            max_record_bytes: s.max_record_bytes,
            read_buffer_bytes: s.read_buffer_bytes,
            max_fields: s.max_fields,
            max_decompressed_bytes: s.max_decompressed_bytes,
            keep_profile: false,
        }
    }
}

/// Positions of the columns used, found from the header.
#[derive(Debug, Clone)]
struct Columns {
    /// Header names as written, for messages.
    names: Vec<String>,
    artist: usize,
    song: usize,
    length: usize,
    session_id: usize,
    item_in_session: usize,
    user_id: usize,
    first_name: usize,
    last_name: usize,
    page: Option<usize>,
    gender: Option<usize>,
    level: Option<usize>,
    location: Option<usize>,
}

fn normalize_header(field: &[u8]) -> String {
    let text = String::from_utf8_lossy(field);
    text.trim_start_matches('\u{feff}')
        .trim()
        .to_ascii_lowercase()
}

impl Columns {
    fn from_header(
        path: &Path,
        header: &ByteRecord,
        max_fields: usize,
    ) -> Result<Columns, FileError> {
        if header.len() > max_fields {
            return Err(FileError::TooManyColumns {
                path: path.to_path_buf(),
                columns: header.len(),
                bound: max_fields,
            });
        }
        let names: Vec<String> = header
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_string()
            })
            .collect();
        let normalized: Vec<String> = header.iter().map(normalize_header).collect();
        let find = |name: &str| {
            let lower = name.to_ascii_lowercase();
            normalized.iter().position(|n| *n == lower)
        };
        let missing: Vec<String> = REQUIRED_COLUMNS
            .iter()
            .filter(|c| find(c).is_none())
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(FileError::MissingColumns {
                path: path.to_path_buf(),
                missing,
                found: shown_header(header),
                hint: crate::escape::likely_binary(header.as_slice()),
            });
        }
        let at = |name: &str| find(name).expect("checked above");
        Ok(Columns {
            artist: at("artist"),
            song: at("song"),
            length: at("length"),
            session_id: at("sessionId"),
            item_in_session: at("itemInSession"),
            user_id: at("userId"),
            first_name: at("firstName"),
            last_name: at("lastName"),
            page: find("page"),
            gender: find("gender"),
            level: find("level"),
            location: find("location"),
            names,
        })
    }
}

/// Shared between the parser and the [`Guard`] under it.
#[derive(Debug, Default)]
struct GuardState {
    /// Bytes handed to the parser so far.
    delivered: AtomicU64,
    /// Byte offset where the record being parsed starts.
    boundary: AtomicU64,
    /// Set when the guard dropped bytes of the current record.
    truncated: AtomicBool,
    /// The identity of exactly the bytes parsed, once the end of the file was reached.
    content: std::sync::Mutex<Option<crate::identity::Fingerprint>>,
    /// Bytes of the file read so far, as stored (compressed or not).
    stored: AtomicU64,
    /// Bytes of text the file gave so far: decompressed, or as stored for a plain file.
    text: AtomicU64,
}

/// Keeps one runaway record (an unclosed quote, a file of binary junk with no line breaks)
/// from taking unbounded memory: once the record being parsed is past the bound, the rest of
/// it up to the next line break is dropped before the parser sees it. The shortened record is
/// then rejected for its size like any other record over the bound.
struct Guard<R> {
    inner: R,
    state: Arc<GuardState>,
    /// Bytes of one record (plus the parser's read-ahead) allowed before dropping.
    limit: u64,
    skipping: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Guard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let got = buf.filled().len() - before;
            if got == 0 {
                return Poll::Ready(Ok(()));
            }
            if self.skipping {
                let fresh = &buf.filled()[before..];
                match memchr::memchr(b'\n', fresh) {
                    None => {
                        // Drop it all and read on: returning nothing would mean end of file.
                        buf.set_filled(before);
                        continue;
                    }
                    Some(p) => {
                        let keep = got - p;
                        let filled = buf.filled_mut();
                        filled.copy_within(before + p..before + got, before);
                        buf.set_filled(before + keep);
                        self.skipping = false;
                        self.state
                            .delivered
                            .fetch_add(keep as u64, Ordering::Relaxed);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let delivered = self
                .state
                .delivered
                .fetch_add(got as u64, Ordering::Relaxed)
                + got as u64;
            let boundary = self.state.boundary.load(Ordering::Relaxed);
            if delivered.saturating_sub(boundary) > self.limit
                && memchr::memchr(b'\n', &buf.filled()[before..]).is_none()
            {
                self.skipping = true;
                self.state.truncated.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// The file, read with plain blocking reads. It is only ever polled on its file's parsing
/// thread (see [`PlayReader::open`]), where waiting for the disk is what is wanted: the parser
/// asks for the next buffer only once it has used up the last one, and a read from the page
/// cache costs less than handing the bytes over from another thread.
///
/// It also keeps the file's identity honest: every byte handed to the parser is hashed on the
/// way, so the hash at the end is that of exactly the bytes whose rows were read; and after each
/// read the file's size and modification time are checked against those it had when opened, so
/// that a file truncated, appended to or rewritten in place stops at once with
/// [`ChangedWhileRead`] instead of mixing old and new bytes.
struct BlockingFile {
    file: std::fs::File,
    opened: (u64, Option<std::time::SystemTime>),
    hasher: blake3::Hasher,
    read: u64,
    /// Set once a read failed: an error seen above it is the file's, not the decoder's.
    failed: bool,
    state: Arc<GuardState>,
}

/// The error a read returns when the file changed under the reader.
#[derive(Debug, thiserror::Error)]
#[error("the file changed while being read")]
pub struct ChangedWhileRead;

fn file_stamp(meta: &std::fs::Metadata) -> (u64, Option<std::time::SystemTime>) {
    (meta.len(), meta.modified().ok())
}

impl BlockingFile {
    fn open(path: &Path, state: Arc<GuardState>) -> io::Result<BlockingFile> {
        let file = crate::identity::open_regular(path)?;
        let meta = file.metadata()?;
        Ok(BlockingFile {
            file,
            opened: file_stamp(&meta),
            hasher: blake3::Hasher::new(),
            read: 0,
            failed: false,
            state,
        })
    }

    fn unchanged(&self) -> io::Result<()> {
        let now = file_stamp(&self.file.metadata()?);
        if now != self.opened || self.read > self.opened.0 {
            return Err(io::Error::other(ChangedWhileRead));
        }
        Ok(())
    }
}

impl AsyncRead for BlockingFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::io::Read;
        let this = self.get_mut();
        loop {
            match this.file.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    let fresh = &buf.initialize_unfilled()[..n];
                    this.hasher.update(fresh);
                    this.read += n as u64;
                    this.state.stored.store(this.read, Ordering::Relaxed);
                    // Checked after the read: bytes read before a change are the old content;
                    // bytes read after it are never handed on.
                    if let Err(e) = this.unchanged() {
                        this.failed = true;
                        return Poll::Ready(Err(e));
                    }
                    if n == 0 {
                        if this.read != this.opened.0 {
                            this.failed = true;
                            return Poll::Ready(Err(io::Error::other(ChangedWhileRead)));
                        }
                        let mut content =
                            this.state.content.lock().unwrap_or_else(|p| p.into_inner());
                        *content = Some(crate::identity::Fingerprint {
                            content_hash: this.hasher.finalize().to_hex().to_string(),
                            size: this.read,
                        });
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

/// Compressed bytes read from the file ahead of the decoder: large enough that the decoder
/// rarely waits for the disk, small next to the parser's buffer.
const COMPRESSED_BUFFER_BYTES: usize = 64 * 1024;

/// Largest zstd window accepted, as a power of two: 8 MiB, what `zstd` uses up to level 19.
/// A frame that asks for more (`--long`, `--ultra -20` and above) fails its file instead of
/// taking up to 2 GiB of memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

type Compressed = tokio::io::BufReader<BlockingFile>;

/// The file's text as the parser sees it: the bytes as stored, or decompressed on the way.
enum Source {
    Plain(BlockingFile),
    Gzip(Decompressing<async_compression::tokio::bufread::GzipDecoder<Compressed>>),
    Zstd(Decompressing<async_compression::tokio::bufread::ZstdDecoder<Compressed>>),
}

impl Source {
    fn new(file: BlockingFile, codec: Codec, bound: u64) -> Source {
        // Only a decoder needs the buffer ahead of it; a plain file goes to the parser as it is.
        let buffered = |file| tokio::io::BufReader::with_capacity(COMPRESSED_BUFFER_BYTES, file);
        match codec {
            Codec::None => Source::Plain(file),
            Codec::Gzip => {
                let input = buffered(file);
                let mut d = async_compression::tokio::bufread::GzipDecoder::new(input);
                // Otherwise the decoder stops after the first member and the rest of a
                // concatenated file (`cat a.gz b.gz`, pigz, rotated logs) is lost silently.
                d.multiple_members(true);
                Source::Gzip(Decompressing::new(d, codec, bound))
            }
            Codec::Zstd => {
                let input = buffered(file);
                let mut d = async_compression::tokio::bufread::ZstdDecoder::with_params(
                    input,
                    &[async_compression::zstd::DParameter::window_log_max(
                        ZSTD_WINDOW_LOG_MAX,
                    )],
                );
                // Every frame, not just the first.
                d.multiple_members(true);
                Source::Zstd(Decompressing::new(d, codec, bound))
            }
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Source::Plain(f) => {
                let before = buf.filled().len();
                let polled = Pin::new(&mut *f).poll_read(cx, buf);
                let got = (buf.filled().len() - before) as u64;
                f.state.text.fetch_add(got, Ordering::Relaxed);
                polled
            }
            Source::Gzip(d) => Pin::new(d).poll_read(cx, buf),
            Source::Zstd(d) => Pin::new(d).poll_read(cx, buf),
        }
    }
}

/// A decoder of `async-compression` over the file, its errors turned into a
/// [`CompressedProblem`] naming the byte of the file where it stopped, and its output bounded
/// by `extract.max_decompressed_bytes`.
struct Decompressing<D> {
    decoder: D,
    codec: Codec,
    /// Bytes decompressed so far.
    out: u64,
    bound: u64,
}

/// Access to the compressed input under a decoder.
trait Decoder: AsyncRead + Unpin {
    fn input(&self) -> &Compressed;
}

impl Decoder for async_compression::tokio::bufread::GzipDecoder<Compressed> {
    fn input(&self) -> &Compressed {
        self.get_ref()
    }
}

impl Decoder for async_compression::tokio::bufread::ZstdDecoder<Compressed> {
    fn input(&self) -> &Compressed {
        self.get_ref()
    }
}

impl<D: Decoder> Decompressing<D> {
    fn new(decoder: D, codec: Codec, bound: u64) -> Self {
        Decompressing {
            decoder,
            codec,
            out: 0,
            bound,
        }
    }

    /// Byte of the stored file the decoder has consumed up to.
    fn offset(&self) -> u64 {
        let input = self.decoder.input();
        input.get_ref().read - input.buffer().len() as u64
    }

    fn problem(&self, kind: CompressedProblemKind, detail: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CompressedProblem {
                codec: self.codec,
                kind,
                offset: self.offset(),
                line: 0,
                detail,
            },
        )
    }
}

impl<D: Decoder> AsyncRead for Decompressing<D> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.decoder).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                let got = (buf.filled().len() - before) as u64;
                this.out += got;
                this.decoder
                    .input()
                    .get_ref()
                    .state
                    .text
                    .store(this.out, Ordering::Relaxed);
                if this.out > this.bound {
                    buf.set_filled(before);
                    let bound = this.bound;
                    return Poll::Ready(Err(
                        this.problem(CompressedProblemKind::TooLarge { bound }, String::new())
                    ));
                }
                Poll::Ready(Ok(()))
            }
            // The file's own failure (changed while read, an I/O error) passes as it is.
            Poll::Ready(Err(e)) if this.decoder.input().get_ref().failed => Poll::Ready(Err(e)),
            Poll::Ready(Err(e)) => {
                let kind = if e.kind() == io::ErrorKind::UnexpectedEof {
                    CompressedProblemKind::Truncated
                } else {
                    CompressedProblemKind::Corrupt
                };
                let detail = e.to_string();
                // libzstd's words for a frame over the window bound.
                let kind = if this.codec == Codec::Zstd && detail.contains("too much memory") {
                    CompressedProblemKind::WindowTooLarge
                } else {
                    kind
                };
                Poll::Ready(Err(this.problem(kind, detail)))
            }
        }
    }
}

/// Records handed from the parsing thread to the reader at once, at most.
const BATCH_RECORDS: usize = 256;
/// Batches parsed ahead of the reader at most, per open file.
const BATCHES_AHEAD: usize = 2;
/// A batch whose largest record costs more than this (see [`record_cost`]) is not reused, so
/// that one file of huge records does not leave every reused record holding a huge buffer: a
/// reused batch keeps at most `BATCH_RECORDS × REUSE_RECORD_BYTES` (1 MiB).
const REUSE_RECORD_BYTES: usize = 4 * 1024;

/// What a parsed record takes in memory: its field bytes and 8 bytes of bounds per field. A
/// row of nothing but commas has no field bytes at all, yet costs 8 bytes per comma.
fn record_cost(record: &ByteRecord) -> usize {
    record.as_slice().len() + record.len() * std::mem::size_of::<usize>()
}

/// Replaces a record that has more than `n` fields by one of its first `n` (the line kept), so
/// that a batch never holds more than `n` fields of bookkeeping per record.
fn keep_first_fields(record: &mut ByteRecord, n: usize) {
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
struct Batch {
    records: Vec<ByteRecord>,
    /// Records of `records` in use; the rest are kept for their buffers.
    len: usize,
    /// Whether the guard shortened each record in use.
    truncated: Vec<bool>,
    /// For each record in use that had more than `max_fields` fields (and now has only the
    /// first ones), how many it had; 0 for the others.
    cut_from: Vec<usize>,
    /// Cost ([`record_cost`]) of the largest record in use.
    largest: usize,
}

fn csv_io_error(e: csv_async::Error) -> io::Error {
    match e.into_kind() {
        csv_async::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

type Parser = csv_async::AsyncReader<Guard<Source>>;

/// The line the parser stands at, in an error that a compressed file's damage caused.
fn with_line(e: io::Error, line: u64) -> io::Error {
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
async fn open_parser(
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
async fn parse_records(
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

/// Field `i`, without the '\r' a CRLF line ending leaves on the last field.
fn field(record: &ByteRecord, i: usize) -> &[u8] {
    let f = record.get(i).unwrap_or_default();
    if i + 1 == record.len() {
        f.strip_suffix(b"\r").unwrap_or(f)
    } else {
        f
    }
}

/// Field `i` as text. `whole` is the whole record as text when it is valid UTF-8; a field is
/// then a slice of it, and slicing checks only that the cut falls between characters. A cut
/// inside a character (bytes that are valid only once the fields are joined) and records that
/// are not valid UTF-8 as a whole fall back to checking the field itself, so the result is
/// always the same as `str::from_utf8` on the field.
fn field_text<'r>(
    record: &'r ByteRecord,
    whole: Option<&'r str>,
    i: usize,
) -> Result<&'r str, std::str::Utf8Error> {
    match whole.zip(record.range(i)).and_then(|(w, r)| w.get(r)) {
        Some(s) if i + 1 == record.len() => Ok(s.strip_suffix('\r').unwrap_or(s)),
        Some(s) => Ok(s),
        None => std::str::from_utf8(field(record, i)),
    }
}

/// An id written as 1 to 9 plain digits (every id in real files), without the detour through
/// text; anything else (signs, spaces, long or bad values) takes the general path, which also
/// words the rejects.
fn plain_id(raw: &[u8]) -> Option<i32> {
    if raw.is_empty() || raw.len() > 9 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Nine digits stay below i32::MAX, so this cannot overflow.
    Some(raw.iter().fold(0i32, |n, &d| n * 10 + i32::from(d - b'0')))
}

/// A line holding nothing but a line ending.
fn is_blank_line(record: &ByteRecord) -> bool {
    record.len() == 1 && field(record, 0).is_empty()
}

enum Verdict {
    Skip,
    Play(SongPlay),
    Reject {
        column: String,
        value: String,
        reason: String,
    },
}

/// Longest value quoted back in a message.
const SHOWN_VALUE_CHARS: usize = 80;

/// A value as quoted back in messages and in the rejects file's `value` column.
fn shown(value: &[u8]) -> String {
    shown_within(value, SHOWN_VALUE_CHARS)
}

fn classify(
    record: &ByteRecord,
    cols: &Columns,
    options: &ExtractOptions,
    truncated: bool,
    cut_from: usize,
) -> Verdict {
    let size = record.as_slice().len();
    if truncated || size > options.max_record_bytes {
        return Verdict::Reject {
            column: String::new(),
            value: shown(record.as_slice()),
            reason: format!(
                "record is {}{size} bytes long; the bound is {} bytes (extract.max_record_bytes)",
                if truncated { "over " } else { "" },
                options.max_record_bytes
            ),
        };
    }
    if cut_from > 0 {
        return Verdict::Reject {
            column: String::new(),
            value: String::new(),
            reason: format!(
                "has {cut_from} fields; the bound is {} (extract.max_fields) and the header has {}; the rejects file keeps the first {}",
                options.max_fields,
                cols.names.len(),
                record.len()
            ),
        };
    }
    if record.len() != cols.names.len() {
        return Verdict::Reject {
            column: String::new(),
            value: String::new(),
            reason: format!(
                "has {} fields; the header has {}",
                record.len(),
                cols.names.len()
            ),
        };
    }
    let field = |i: usize| field(record, i);
    if let Some(page) = cols.page
        && field(page) != SONG_PAGE.as_bytes()
    {
        return Verdict::Skip;
    }
    if field(cols.artist).is_empty() || field(cols.song).is_empty() {
        return Verdict::Skip;
    }
    // The failing column and why; turned into a reject (with the value) only when one happens.
    struct Bad(usize, String);
    let reject = |i: usize, reason: String| Bad(i, reason);
    // One UTF-8 check of the whole record instead of one per field: nearly every record
    // passes, and each field is then a slice of this text (see `field_text`).
    let whole = std::str::from_utf8(record.as_slice()).ok();
    let text = |i: usize| -> Result<String, Bad> {
        match field_text(record, whole, i) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(reject(
                i,
                format!(
                    "is not valid UTF-8 (bad byte at offset {})",
                    e.valid_up_to()
                ),
            )),
        }
    };
    let id = |i: usize| -> Result<i32, Bad> {
        let raw = field(i);
        if let Some(v) = plain_id(raw) {
            return Ok(v);
        }
        let s = field_text(record, whole, i)
            .map_err(|_| reject(i, "is not valid UTF-8; expected an integer".into()))?
            .trim();
        if s.is_empty() {
            return Err(reject(i, "is empty; expected an integer id".into()));
        }
        match s.parse::<i64>() {
            Ok(v) if (0..=i32::MAX as i64).contains(&v) => Ok(v as i32),
            Ok(_) => Err(reject(
                i,
                format!(
                    "is out of range; expected an integer from 0 to {}",
                    i32::MAX
                ),
            )),
            Err(_) => Err(reject(i, "is not an integer".into())),
        }
    };
    let play = (|| -> Result<SongPlay, Bad> {
        let user_id = id(cols.user_id)?;
        let session_id = id(cols.session_id)?;
        let item_in_session = id(cols.item_in_session)?;
        let length = {
            let i = cols.length;
            let s = field_text(record, whole, i)
                .map_err(|_| reject(i, "is not valid UTF-8; expected a number".into()))?
                .trim();
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                Ok(v) if v.is_finite() => {
                    return Err(reject(
                        i,
                        "is negative; expected a length in seconds of 0 or more".into(),
                    ));
                }
                _ => {
                    return Err(reject(
                        i,
                        "is not a number; expected a length in seconds".into(),
                    ));
                }
            }
        };
        let profile = if options.keep_profile {
            let opt = |c: Option<usize>| -> Result<String, Bad> {
                match c {
                    Some(i) => text(i),
                    None => Ok(String::new()),
                }
            };
            Some(Box::new(Profile {
                gender: opt(cols.gender)?,
                level: opt(cols.level)?,
                location: opt(cols.location)?,
            }))
        } else {
            None
        };
        Ok(SongPlay {
            session_id,
            item_in_session,
            user_id,
            artist: text(cols.artist)?,
            song: text(cols.song)?,
            length,
            first_name: text(cols.first_name)?,
            last_name: text(cols.last_name)?,
            profile,
        })
    })();
    match play {
        Ok(p) => Verdict::Play(p),
        Err(Bad(i, reason)) => Verdict::Reject {
            column: crate::escape::escape_str(&cols.names[i]).into_owned(),
            value: shown(field(i)),
            reason,
        },
    }
}

/// Names producers use while a file is incomplete: `.name`, `name.tmp`, `name.part`, `name~`.
/// Names are looked at as bytes: a name that is not valid UTF-8 is still a file to load.
pub fn is_ignored_name(path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return true;
    };
    let name = name.as_encoded_bytes();
    name.starts_with(b".")
        || name.ends_with(b".tmp")
        || name.ends_with(b".part")
        || name.ends_with(b"~")
}

/// Logs, once per path, a folder or entry that a scan could not read: an input is never
/// skipped silently.
pub fn warn_unreadable(
    error: &walkdir::Error,
    warned: &std::sync::Mutex<std::collections::HashSet<PathBuf>>,
) {
    let path = error.path().map(Path::to_path_buf).unwrap_or_default();
    let first = warned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.clone());
    if first {
        tracing::warn!(path = %path.display(), error = %error, "Cannot read this part of the folder; files in it are not loaded");
    }
}

/// Lists the files under each path whose names match `pattern` (`watch.pattern`, by default
/// `*.csv`, `*.csv.gz` and `*.csv.zst`; ignoring case). Files are taken as given, whatever their
/// names; folders recursively, sorted by path within each folder so loads are reproducible.
pub fn collect_inputs(paths: &[PathBuf], pattern: &str) -> io::Result<Vec<PathBuf>> {
    let matcher = input_matcher(pattern).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("watch.pattern {pattern:?}: {e}"),
        )
    })?;
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            let warned = std::sync::Mutex::new(std::collections::HashSet::new());
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .follow_links(false)
                .into_iter()
                .filter_map(|e| e.map_err(|e| warn_unreadable(&e, &warned)).ok())
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| matcher.is_match(Path::new(n)))
                        && !is_ignored_name(p)
                })
                .collect();
            found.sort();
            out.extend(found);
        } else if meta.is_file() {
            out.push(p.clone());
        } else {
            // A FIFO, a device (`/dev/zero`), a socket: reading one would wait or never end.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or folder", p.display()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn read_all(bytes: &[u8], options: &ExtractOptions) -> Result<Vec<Item>, FileError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let mut r = PlayReader::open(f.path(), options).await?;
        let mut items = Vec::new();
        while let Some(item) = r.next().await? {
            items.push(item);
        }
        Ok(items)
    }

    const HEADER: &str = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";

    #[tokio::test]
    async fn reads_a_real_row_with_quoted_comma_and_crlf() {
        let data = format!(
            "{HEADER}\r\nDes'ree,Logged In,Kaylee,F,1,Summers,246.30812,free,\"Phoenix-Mesa-Scottsdale, AZ\",PUT,NextSong,1.54034E+12,139,You Gotta Be,200,1.54111E+12,8\r\n"
        );
        let items = read_all(data.as_bytes(), &ExtractOptions::default())
            .await
            .unwrap();
        let [Item::Play(p)] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!(p.artist, "Des'ree");
        assert_eq!(p.song, "You Gotta Be");
        assert_eq!(p.session_id, 139);
        assert_eq!(p.item_in_session, 1);
        assert_eq!(p.user_id, 8);
        assert_eq!(p.length, 246.30812);
    }

    #[tokio::test]
    async fn oversize_record_is_rejected_and_reading_goes_on() {
        let options = ExtractOptions {
            max_record_bytes: 1024,
            read_buffer_bytes: 4096,
            max_fields: 1000,
            keep_profile: false,
            ..ExtractOptions::default()
        };
        let huge = "x".repeat(200_000);
        let data = format!(
            "{HEADER}\n{huge},Logged In,A,F,1,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\nA,Logged In,A,F,2,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\n"
        );
        let items = read_all(data.as_bytes(), &options).await.unwrap();
        assert_eq!(items.len(), 2, "{items:?}");
        let Item::Reject(r) = &items[0] else { panic!() };
        assert_eq!(r.line, 2);
        assert!(r.reason.contains("the bound is 1024 bytes"), "{}", r.reason);
        let Item::Play(p) = &items[1] else { panic!() };
        assert_eq!(p.item_in_session, 2);
    }

    #[tokio::test]
    async fn a_header_over_the_record_bound_fails_the_file_with_its_start_escaped() {
        let options = ExtractOptions {
            max_record_bytes: 1024,
            read_buffer_bytes: 4096,
            max_fields: 1000,
            keep_profile: false,
            ..ExtractOptions::default()
        };
        // Longer than the bound, and (with no line break at all) than the guard lets through.
        // (xz: gzip and zstd are decompressed on the way.)
        for size in [3000, 100_000] {
            let mut data = b"\xfd7zXZ\x00".to_vec();
            data.resize(size, b'z');
            let Err(e) = read_all(&data, &options).await else {
                panic!("{size}: accepted")
            };
            let text = e.to_string();
            assert!(matches!(e, FileError::HeaderTooLong { .. }), "{text}");
            assert!(
                text.contains("the header is over 1024 bytes long (extract.max_record_bytes); it starts: \\xfd7zXZ\\x00zzz"),
                "{text}"
            );
            assert!(
                text.ends_with("… (looks like xz-compressed data; decompress it first)"),
                "{text}"
            );
            assert!(text.len() < 400, "{text}");
        }
    }

    #[test]
    fn the_codec_comes_from_the_first_bytes() {
        assert_eq!(Codec::of_magic(b"\x1f\x8b\x08\x00"), Codec::Gzip);
        assert_eq!(Codec::of_magic(b"\x28\xb5\x2f\xfd"), Codec::Zstd);
        assert_eq!(Codec::of_magic(b"arti"), Codec::None);
        // Too short to be either.
        assert_eq!(Codec::of_magic(b"\x1f"), Codec::None);
        assert_eq!(Codec::of_magic(b"\x28\xb5\x2f"), Codec::None);
        assert_eq!(Codec::of_magic(b""), Codec::None);
        for c in [Codec::None, Codec::Gzip, Codec::Zstd] {
            assert_eq!(Codec::parse(c.as_str()), c);
        }
    }

    #[tokio::test]
    async fn a_compressed_file_reads_like_the_plain_one_to_the_last_byte() {
        let data = format!(
            "{HEADER}\r\nA,Logged In,A,F,1,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\r\nA,Logged In,A,F,x,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(data.as_bytes(), 1).unwrap();
        let plain = read_all(data.as_bytes(), &ExtractOptions::default())
            .await
            .unwrap();
        for stored in [gz, zst] {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&stored).unwrap();
            let mut r = PlayReader::open(f.path(), &ExtractOptions::default())
                .await
                .unwrap();
            let mut items = Vec::new();
            while let Some(item) = r.next().await.unwrap() {
                items.push(item);
            }
            assert_eq!(format!("{items:?}"), format!("{plain:?}"));
            assert_eq!(r.text_bytes(), data.len() as u64);
            assert_eq!(r.bytes_read(), stored.len() as u64);
            let content = r.content().expect("read to the end");
            assert_eq!(content.size, stored.len() as u64);
            assert_eq!(
                content.content_hash,
                blake3::hash(&stored).to_hex().as_str()
            );
        }
    }

    #[tokio::test]
    async fn the_end_of_the_file_stays_the_end() {
        let data = format!("{HEADER}\nA,Logged In,A,F,1,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\n");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data.as_bytes()).unwrap();
        let mut r = PlayReader::open(f.path(), &ExtractOptions::default())
            .await
            .unwrap();
        assert!(matches!(r.next().await, Ok(Some(Item::Play(_)))));
        for _ in 0..3 {
            assert!(matches!(r.next().await, Ok(None)));
        }
        assert_eq!(r.counts().plays, 1);
    }
}
