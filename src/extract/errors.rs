//! Why a whole file could not be read, and how its damage is shown.

use std::io;
use std::path::{Path, PathBuf};

use super::source::{ChangedWhileRead, CompressedProblem};
use csv_async::ByteRecord;

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

pub(super) fn hint_suffix(hint: &Option<&'static str>) -> String {
    hint.map(|h| format!(" ({h})")).unwrap_or_default()
}

/// Longest part of a header quoted back in a message, in characters.
pub(super) const SHOWN_HEADER_CHARS: usize = 200;

/// The start of a header as the file has it (fields joined by commas), escaped and
/// shortened, for a message.
pub(super) fn shown_header(header: &ByteRecord) -> String {
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
pub(super) fn shown_within(raw: &[u8], max_chars: usize) -> String {
    let head = &raw[..raw.len().min(max_chars * 4 + 4)];
    let mut text = crate::escape::escape_bytes_within(head, max_chars);
    if head.len() < raw.len() && !text.ends_with('…') {
        text.push('…');
    }
    text
}

impl FileError {
    /// The error for a failed read of `path`.
    pub(super) fn from_io(path: &Path, source: io::Error) -> FileError {
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
