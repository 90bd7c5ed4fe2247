//! Ledger: which files have been loaded, keyed by the hash of their content.
//!
//! The last stage of the flow. An entry is written only after the store has acknowledged every
//! row of the file, so a crash at any moment leaves at worst a file that is loaded again — and
//! because every write is an upsert, loading again changes nothing. Keying by content (not by
//! name) means a rescan, a restart or the same bytes under a new name load nothing twice, while
//! a file whose content changed is loaded again. The entries live in the store itself (a table
//! next to the three query tables), so they share its durability. The hash is over the bytes
//! as stored: a compressed file is the same file only with the same compressed bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::extract::{Codec, ExtractCounts};

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
    /// Size in bytes, as stored.
    pub size: u64,
    /// How the file was stored (`none`, `gzip`, `zstd`), from its first bytes. Entries made
    /// before compressed files were read say `none`, which they were.
    #[serde(default)]
    pub codec: Codec,
    /// Bytes of text the file gave: decompressed, or `size` for a plain file. For a failed
    /// file, as far as it was read.
    #[serde(default)]
    pub decompressed_size: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_541_105_830_796), "2018-11-01T20:57:10.796Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
