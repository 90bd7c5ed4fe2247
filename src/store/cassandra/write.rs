//! The write path: a call's plays planned into one request per partition of each table (UNLOGGED
//! batches of at most `max_batch_rows`, never across partitions), sent with at most
//! `max_in_flight` requests outstanding in the process, each retried with backoff until the
//! cluster acknowledges it or shutdown abandons it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use scylla::errors::ExecutionError;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio_util::sync::CancellationToken;

use super::CassandraStore;
use super::errors::{Failure, classify, store_error};
use super::statements::Table;
use crate::extract::SongPlay;
use crate::retry::Backoff;
use crate::store::{StoreError, TABLES, WriteStats};
use crate::telemetry::metrics as m;

/// One request of a write: rows (indexes into the call's plays) of one partition of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    table: Table,
    rows: Vec<u32>,
}

/// Groups the rows of one table by partition, keeping for each primary key only the last play
/// that has it (so the result is what writing the plays one by one in order would leave; it
/// also matters inside a batch, where two writes of one key share a timestamp and Cassandra
/// would keep the larger value, not the later one). Partitions come out in key order and rows
/// in clustering order, so a call's requests are the same from run to run.
fn partitions<'a, P: Ord + Hash + Eq>(
    plays: &'a [SongPlay],
    key: impl Fn(&'a SongPlay) -> (P, i32),
) -> Vec<Vec<u32>> {
    let mut latest: HashMap<(P, i32), u32> = HashMap::with_capacity(plays.len());
    for (i, play) in plays.iter().enumerate() {
        latest.insert(key(play), i as u32);
    }
    let mut by_partition: BTreeMap<P, Vec<(i32, u32)>> = BTreeMap::new();
    for ((partition, clustering), i) in latest {
        by_partition
            .entry(partition)
            .or_default()
            .push((clustering, i));
    }
    by_partition
        .into_values()
        .map(|mut rows| {
            rows.sort_unstable();
            rows.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

/// Every request one write call sends: per table, per partition, rows in runs of at most
/// `max_batch_rows`.
fn plan(plays: &[SongPlay], max_batch_rows: usize) -> Vec<Request> {
    let max = max_batch_rows.max(1);
    let tables = [
        (
            Table::Session,
            partitions(plays, |p| (p.session_id, p.item_in_session)),
        ),
        (
            Table::UserSession,
            partitions(plays, |p| ((p.user_id, p.session_id), p.item_in_session)),
        ),
        (
            Table::Listeners,
            partitions(plays, |p| (p.song.as_str(), p.user_id)),
        ),
    ];
    let mut requests = Vec::new();
    for (table, parts) in tables {
        for rows in parts {
            for run in rows.chunks(max) {
                requests.push(Request {
                    table,
                    rows: run.to_vec(),
                });
            }
        }
    }
    requests
}

impl CassandraStore {
    /// Upserts every play into the three tables; returns once every request is acknowledged.
    /// Transient failures are retried until they succeed; once `cancel` has fired, the first
    /// failure ends the call with [`StoreError::Abandoned`] (requests that do not fail still
    /// finish, so a healthy cluster lets shutdown complete the work in hand).
    pub async fn write(
        &self,
        plays: Arc<Vec<SongPlay>>,
        cancel: &CancellationToken,
    ) -> Result<WriteStats, StoreError> {
        let requests = plan(&plays, self.settings.max_batch_rows);
        let mut rows = [0u64; 3];
        for r in &requests {
            rows[r.table as usize] += r.rows.len() as u64;
        }
        let tally = Tally::default();
        let plays: &[SongPlay] = &plays;
        // Beyond this many, more futures would only wait for a permit.
        let limit = self.settings.max_in_flight.max(1);
        let mut pending = requests.iter();
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            while running.len() < limit {
                let Some(request) = pending.next() else { break };
                running.push(self.send_until_acknowledged(plays, request, cancel, &tally));
            }
            match running.next().await {
                Some(result) => result?,
                None => break,
            }
        }
        Ok(WriteStats {
            rows,
            requests: tally.requests.load(Ordering::Relaxed),
            retries: tally.retries.load(Ordering::Relaxed),
        })
    }

    /// Sends one request until the cluster acknowledges it (see [`CassandraStore::write`]).
    async fn send_until_acknowledged(
        &self,
        plays: &[SongPlay],
        request: &Request,
        cancel: &CancellationToken,
        tally: &Tally,
    ) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.retry_initial_ms),
            Duration::from_millis(self.settings.retry_max_ms),
        );
        loop {
            self.health.check()?;
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let _in_flight = InFlight::start();
                tally.requests.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::STORE_REQUESTS).increment(1);
                self.send(plays, request).await
            };
            let error = match result {
                Ok(()) => {
                    self.health.succeeded();
                    return Ok(());
                }
                Err(e) => e,
            };
            let table = TABLES[request.table as usize];
            let cause = match classify(&error) {
                Failure::Transient(cause) => cause,
                failure => {
                    return Err(store_error(failure, &format!("writing to {table}"), &error));
                }
            };
            self.health.failed(&store_error(
                Failure::Transient(cause),
                &format!("writing to {table}"),
                &error,
            ))?;
            if cancel.is_cancelled() {
                return Err(StoreError::Abandoned);
            }
            tally.retries.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::STORE_RETRIES, m::CAUSE => cause).increment(1);
            let delay = backoff.next_delay();
            if !tally.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(cause, error = %error, retry_in_ms = delay.as_millis() as u64, "Store request failed; retrying with backoff");
            } else {
                tracing::debug!(cause, error = %error, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "Retrying a store request");
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(StoreError::Abandoned),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt at one request.
    async fn send(&self, plays: &[SongPlay], request: &Request) -> Result<(), ExecutionError> {
        let statement = &self.statements.insert[request.table as usize];
        let rows = request.rows.iter().map(|&i| &plays[i as usize]);
        match request.table {
            Table::Session => {
                self.send_rows(statement, rows.map(SongPlay::session_row).collect())
                    .await
            }
            Table::UserSession => {
                self.send_rows(statement, rows.map(SongPlay::user_session_row).collect())
                    .await
            }
            Table::Listeners => {
                self.send_rows(statement, rows.map(SongPlay::listener_row).collect())
                    .await
            }
        }
    }

    async fn send_rows<R: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        rows: Vec<R>,
    ) -> Result<(), ExecutionError> {
        if let [row] = rows.as_slice() {
            return self
                .session
                .execute_unpaged(statement, row)
                .await
                .map(|_| ());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in 0..rows.len() {
            batch.append_statement(statement.clone());
        }
        batch.set_is_idempotent(true);
        self.session.batch(&batch, rows).await.map(|_| ())
    }
}

/// Counts shared by the requests of one write call.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    retries: AtomicU64,
    /// One warning per call when retries start; the rest go to debug.
    warned: AtomicBool,
}

/// Keeps `sparkify_store_requests_in_flight` right whichever way a request ends (including
/// being dropped when another request of its call failed).
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        metrics::gauge!(m::STORE_REQUESTS_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(m::STORE_REQUESTS_IN_FLIGHT).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(session: i32, item: i32, user: i32, song: &str, artist: &str) -> SongPlay {
        SongPlay {
            session_id: session,
            item_in_session: item,
            user_id: user,
            artist: artist.into(),
            song: song.into(),
            length: 1.5,
            first_name: "Ann".into(),
            last_name: "Lee".into(),
            profile: None,
        }
    }

    #[test]
    fn plan_batches_per_partition_only_and_keeps_the_last_duplicate() {
        let plays = vec![
            play(1, 0, 7, "a", "x"),
            play(1, 1, 7, "b", "x"),
            play(1, 2, 7, "c", "x"),
            play(2, 0, 8, "a", "x"),
            // Same key as the first play: the later one wins.
            play(1, 0, 7, "a", "y"),
        ];
        let requests = plan(&plays, 2);
        let of = |t: Table| -> Vec<Vec<u32>> {
            requests
                .iter()
                .filter(|r| r.table == t)
                .map(|r| r.rows.clone())
                .collect()
        };
        // Session 1 has three distinct items: a batch of two, then one; session 2 alone.
        assert_eq!(of(Table::Session), vec![vec![4, 1], vec![2], vec![3]]);
        assert_eq!(of(Table::UserSession), vec![vec![4, 1], vec![2], vec![3]]);
        // Song "a" has users 7 (last play 4) and 8; "b" and "c" one each.
        assert_eq!(of(Table::Listeners), vec![vec![4, 3], vec![1], vec![2]]);
        for r in &requests {
            let first = &plays[r.rows[0] as usize];
            for &i in &r.rows {
                let p = &plays[i as usize];
                match r.table {
                    Table::Session => assert_eq!(p.session_id, first.session_id),
                    Table::UserSession => {
                        assert_eq!((p.user_id, p.session_id), (first.user_id, first.session_id))
                    }
                    Table::Listeners => assert_eq!(p.song, first.song),
                }
            }
        }
    }
}
