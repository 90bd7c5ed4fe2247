//! Where the bytes come from: the file read on a blocking thread (its identity hashed on the
//! way, a change while read noticed) and, for a gzip or zstd file, the decoder in the same stream.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use super::guard::GuardState;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};

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
pub(super) fn magic_of(file: &std::fs::File) -> io::Result<Vec<u8>> {
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
pub(super) struct BlockingFile {
    pub(super) file: std::fs::File,
    pub(super) opened: (u64, Option<std::time::SystemTime>),
    pub(super) hasher: blake3::Hasher,
    pub(super) read: u64,
    /// Set once a read failed: an error seen above it is the file's, not the decoder's.
    pub(super) failed: bool,
    pub(super) state: Arc<GuardState>,
}

/// The error a read returns when the file changed under the reader.
#[derive(Debug, thiserror::Error)]
#[error("the file changed while being read")]
pub struct ChangedWhileRead;

pub(super) fn file_stamp(meta: &std::fs::Metadata) -> (u64, Option<std::time::SystemTime>) {
    (meta.len(), meta.modified().ok())
}

impl BlockingFile {
    pub(super) fn open(path: &Path, state: Arc<GuardState>) -> io::Result<BlockingFile> {
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
pub(super) const COMPRESSED_BUFFER_BYTES: usize = 64 * 1024;

/// Largest zstd window accepted, as a power of two: 8 MiB, what `zstd` uses up to level 19.
/// A frame that asks for more (`--long`, `--ultra -20` and above) fails its file instead of
/// taking up to 2 GiB of memory.
pub(super) const ZSTD_WINDOW_LOG_MAX: u32 = 23;

pub(super) type Compressed = tokio::io::BufReader<BlockingFile>;

/// The file's text as the parser sees it: the bytes as stored, or decompressed on the way.
pub(super) enum Source {
    Plain(BlockingFile),
    Gzip(Decompressing<async_compression::tokio::bufread::GzipDecoder<Compressed>>),
    Zstd(Decompressing<async_compression::tokio::bufread::ZstdDecoder<Compressed>>),
}

impl Source {
    pub(super) fn new(file: BlockingFile, codec: Codec, bound: u64) -> Source {
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
pub(super) struct Decompressing<D> {
    pub(super) decoder: D,
    pub(super) codec: Codec,
    /// Bytes decompressed so far.
    pub(super) out: u64,
    pub(super) bound: u64,
}

/// Access to the compressed input under a decoder.
pub(super) trait Decoder: AsyncRead + Unpin {
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
    pub(super) fn new(decoder: D, codec: Codec, bound: u64) -> Self {
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
