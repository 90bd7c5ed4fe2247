//! What both stores share: the table names, the error a store call ends with, the health of
//! a store's writes, the answer rows of the three questions and the statistics of a write.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Names of the three query tables, in the order the README presents them.
pub const TABLES: [&str; 3] = [
    "song_plays_by_session",
    "song_plays_by_user_session",
    "listeners_by_song",
];

/// Name of the ledger table.
pub const LEDGER_TABLE: &str = "ingest_ledger";

/// A store failure, sorted by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded right now; retrying later will work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request; retrying will not help (bad request, schema mismatch).
    #[error("store refused the request: {0}")]
    Rejected(String),
    /// The tables do not have the columns and keys sparkify writes.
    #[error("schema mismatch: {0}")]
    Schema(String),
    /// The store did not accept the credentials.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Shutdown came before the store acknowledged the write.
    #[error("abandoned at shutdown before the store acknowledged it")]
    Abandoned,
    /// The file at the store's path belongs to something else (another application's
    /// database, or not a database at all); it is left exactly as it is.
    #[error("not a sparkify database: {0}")]
    Foreign(String),
    /// The database is damaged: nothing more is read from or written to it.
    #[error("the database is corrupt: {0}")]
    Corrupt(String),
    /// A one-shot command stopped retrying a store that kept failing (`store.give_up_secs`).
    #[error("{last}; gave up after {secs} s of retrying (store.give_up_secs)")]
    GaveUp { secs: u64, last: String },
}

impl StoreError {
    /// True for failures that go away by themselves (outage, overload, timeout, full disk).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// True when the store cannot be used for the rest of the process: a corrupt database, or
    /// a one-shot command that gave up. Not the data's fault, so no file is failed for it.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Corrupt(_) | StoreError::GaveUp { .. })
    }
}

/// Whether the store's writes succeed, shared by every writer of one store.
///
/// Reads can go on answering while writes fail (a full disk, a read-only volume), so a health
/// check that only reads would call such a store ready; the daemon's readiness asks this too.
/// One-shot commands set a limit: once writes have failed without a success for that long,
/// the store is given up, and every later write fails at once with the same error.
#[derive(Debug, Default)]
pub struct WriteHealth {
    /// `None`: retry for ever (the daemon).
    give_up: Mutex<Option<Duration>>,
    /// Since when writes have been failing, and the latest failure.
    failing: Mutex<Option<(Instant, String)>>,
    /// Why the store is unusable for the rest of the process.
    fatal: OnceLock<StoreError>,
}

impl WriteHealth {
    /// Gives up once writes have failed for `limit` with no success in between.
    pub fn give_up_after(&self, limit: Duration) {
        *self.give_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(limit);
    }

    /// Before an attempt: the error that ended this store's use, if any.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.fatal.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// A write was acknowledged.
    pub fn succeeded(&self) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A write failed with `error`. `Err` when the store is not to be tried again: the error
    /// is fatal, or transient failures have lasted past the limit. Other errors (a refused
    /// request) say nothing about the store's health and are not counted.
    pub fn failed(&self, error: &StoreError) -> Result<(), StoreError> {
        if error.is_fatal() {
            let _ = self.fatal.set(error.clone());
            return self.check();
        }
        if !error.is_transient() {
            return Ok(());
        }
        let since = {
            let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            let since = failing.as_ref().map_or_else(Instant::now, |(t, _)| *t);
            *failing = Some((since, error.to_string()));
            since
        };
        let limit = *self.give_up.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(limit) = limit
            && since.elapsed() >= limit
        {
            let _ = self.fatal.set(StoreError::GaveUp {
                secs: limit.as_secs(),
                last: error.to_string(),
            });
            return self.check();
        }
        Ok(())
    }

    /// Why writes are not succeeding right now, for readiness.
    pub fn problem(&self) -> Option<String> {
        if let Some(e) = self.fatal.get() {
            return Some(e.to_string());
        }
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.as_ref().map(|(since, last)| {
            format!(
                "writes have failed for {} s: {last}",
                since.elapsed().as_secs()
            )
        })
    }

    /// The error that ended this store's use, if any.
    pub fn fatal(&self) -> Option<StoreError> {
        self.fatal.get().cloned()
    }
}

/// Answer row of question 1: the song at item N of session S.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionAnswer {
    pub artist: String,
    pub song: String,
    pub length: f64,
}

/// Answer row of question 2: what user U played in session S, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserAnswer {
    pub iteminsession: i32,
    pub artist: String,
    pub song: String,
    pub firstname: String,
    pub lastname: String,
}

/// Answer row of question 3: who listened to song T.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerAnswer {
    pub firstname: String,
    pub lastname: String,
}

/// How many rows and requests a write took, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows upserted into each table, in [`TABLES`] order.
    pub rows: [u64; 3],
    /// Requests sent to the store (statements or batches; transactions for SQLite).
    pub requests: u64,
    /// Requests retried after a transient failure.
    pub retries: u64,
}

/// Renders a row value for `Store::dump` the same way for both stores.
pub fn dump_line(values: &[&dyn std::fmt::Display]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_health_gives_up_only_after_failing_for_the_limit_and_then_for_good() {
        let h = WriteHealth::default();
        let full = StoreError::Unavailable("the disk is full".into());
        // No limit (the daemon): failures are reported, never given up.
        h.failed(&full).unwrap();
        assert!(
            h.problem()
                .unwrap()
                .ends_with("store unavailable: the disk is full")
        );
        h.succeeded();
        assert_eq!(h.problem(), None);
        // A refused request says nothing about the store's health.
        h.failed(&StoreError::Rejected("bad".into())).unwrap();
        assert_eq!(h.problem(), None);

        h.give_up_after(Duration::from_millis(50));
        h.failed(&full).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let e = h.failed(&full).unwrap_err();
        assert_eq!(
            e.to_string(),
            "store unavailable: the disk is full; gave up after 0 s of retrying (store.give_up_secs)"
        );
        assert!(e.is_fatal());
        // For good: a later success does not bring it back.
        h.succeeded();
        assert!(h.check().is_err());
        assert_eq!(h.fatal().map(|e| e.is_fatal()), Some(true));

        let h = WriteHealth::default();
        let corrupt = StoreError::Corrupt("database disk image is malformed".into());
        assert!(h.failed(&corrupt).is_err());
        assert!(h.check().is_err());
    }
}
