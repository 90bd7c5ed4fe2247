//! Ledger: which files have been loaded, keyed by the hash of their content.
//!
//! The last stage of the flow. An entry is written only after the store has acknowledged every
//! row of the file, so a crash at any moment leaves at worst a file that is loaded again — and
//! because every write is an upsert, loading again changes nothing. Keying by content (not by
//! name) means a rescan, a restart or the same bytes under a new name load nothing twice, while
//! a file whose content changed is loaded again. The entries live in the store itself (a table
//! next to the three query tables), so they share its durability.

use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::extract::ExtractCounts;

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every song play was acknowledged by the store.
    Loaded,
    /// Nothing of the file counts as loaded; `reason` says why.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Loaded => "loaded",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Status {
        if s == "loaded" {
            Status::Loaded
        } else {
            Status::Failed
        }
    }
}

/// One file's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// BLAKE3 of the file's bytes, hex.
    pub content_hash: String,
    /// Where the file was when it was read.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Records after the header, song plays, skipped non-song events, rejected rows.
    #[serde(flatten)]
    pub counts: ExtractCounts,
    /// Text values repaired by the transform.
    pub repaired: u64,
    pub status: Status,
    /// Why the file failed; empty when loaded.
    pub reason: String,
    /// When the entry was written, milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
}

impl LedgerEntry {
    /// RFC 3339 form of `recorded_at_ms`, UTC.
    pub fn recorded_at(&self) -> String {
        format_utc_ms(self.recorded_at_ms)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-22T10:00:00.123Z` from milliseconds since the epoch.
pub fn format_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A file's identity for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub content_hash: String,
    pub size: u64,
}

/// Opens `path` for reading if it is a regular file. Anything else (a FIFO, a device such as
/// `/dev/zero`, a socket, a folder) is refused before it is opened: opening a FIFO would wait
/// for a writer, and reading a device would never end.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind_of(&meta)),
        ));
    }
    let file = std::fs::File::open(path)?;
    // The path may have been replaced between the two calls.
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Why a hash was not finished.
pub const STOPPED: &str = "stopped before the file was read";

/// Hashes a file's content (blocking; call from a blocking thread). `stop` is asked between
/// reads, so that a shutdown is not held up by a large file; a stopped hash is an
/// `Interrupted` error.
pub fn fingerprint(path: &Path, stop: impl Fn() -> bool) -> std::io::Result<Fingerprint> {
    let mut file = open_regular(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        if stop() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                STOPPED,
            ));
        }
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(Fingerprint {
        content_hash: hasher.finalize().to_hex().to_string(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_541_105_830_796), "2018-11-01T20:57:10.796Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn same_bytes_same_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, b"x,y\n1,2\n").unwrap();
        std::fs::write(&b, b"x,y\n1,2\n").unwrap();
        assert_eq!(
            fingerprint(&a, || false).unwrap(),
            fingerprint(&b, || false).unwrap()
        );
        std::fs::write(&b, b"x,y\n1,3\n").unwrap();
        assert_ne!(
            fingerprint(&a, || false).unwrap(),
            fingerprint(&b, || false).unwrap()
        );
    }
}
