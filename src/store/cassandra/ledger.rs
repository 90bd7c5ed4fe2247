//! The ledger table: which content has been loaded, read and written with patience for a node
//! restart (see [`LEDGER_PATIENCE`]).

use super::errors::classify;
use super::{CassandraStore, LEDGER_PATIENCE};
use crate::extract::ExtractCounts;
use crate::ledger::{LedgerEntry, Status};
use crate::store::StoreError;

type LedgerRow = (
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
);

fn ledger_from_row(r: LedgerRow) -> LedgerEntry {
    LedgerEntry {
        content_hash: r.0,
        path: r.1,
        size: r.2 as u64,
        counts: ExtractCounts {
            rows: r.3 as u64,
            plays: r.4 as u64,
            skipped: r.5 as u64,
            rejected: r.6 as u64,
        },
        repaired: r.7 as u64,
        status: Status::parse(&r.8),
        reason: r.9,
        recorded_at_ms: r.10,
        // Null in entries written before the columns were added: plain files.
        codec: r
            .11
            .as_deref()
            .map(crate::extract::Codec::parse)
            .unwrap_or_default(),
        decompressed_size: r.12.unwrap_or(r.2) as u64,
    }
}

impl CassandraStore {
    pub async fn ledger_get(&self, hash: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let rows: Vec<LedgerRow> = self
            .read_all(
                "reading the ledger",
                LEDGER_PATIENCE,
                &self.statements.ledger_get,
                (hash,),
            )
            .await?;
        Ok(rows.into_iter().next().map(ledger_from_row))
    }

    pub async fn ledger_put(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let e = entry;
        let values = (
            e.content_hash.as_str(),
            e.path.as_str(),
            e.size as i64,
            e.counts.rows as i64,
            e.counts.plays as i64,
            e.counts.skipped as i64,
            e.counts.rejected as i64,
            e.repaired as i64,
            e.status.as_str(),
            e.reason.as_str(),
            e.recorded_at_ms,
            e.codec.as_str(),
            e.decompressed_size as i64,
        );
        self.patiently("writing the ledger", LEDGER_PATIENCE, || async {
            self.session
                .execute_unpaged(&self.statements.ledger_put, values)
                .await
                .map(|_| ())
                .map_err(|e| (classify(&e), e.to_string()))
        })
        .await
    }

    /// Every entry, oldest first. A full scan, which is fine for a table of one row per file.
    pub async fn ledger_all(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows: Vec<LedgerRow> = self
            .read_all(
                "reading the ledger",
                LEDGER_PATIENCE,
                &self.statements.ledger_all,
                (),
            )
            .await?;
        let mut entries: Vec<LedgerEntry> = rows.into_iter().map(ledger_from_row).collect();
        entries.sort_by(|a, b| {
            (a.recorded_at_ms, &a.path, &a.content_hash).cmp(&(
                b.recorded_at_ms,
                &b.path,
                &b.content_hash,
            ))
        });
        Ok(entries)
    }
}
