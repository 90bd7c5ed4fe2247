//! Reads: the analysts' three questions, the health probe and the table dumps, each a prepared
//! statement read to its last page, with transient failures retried for a bounded time.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::errors::{Failure, classify, classify_pager, store_error};
use super::statements::Table;
use super::{CassandraStore, LEDGER_PATIENCE, QUERY_PATIENCE};
use crate::retry::Backoff;
use crate::store::{ListenerAnswer, SessionAnswer, StoreError, TABLES, UserAnswer, dump_line};
use crate::telemetry::metrics as m;

impl CassandraStore {
    /// Runs `op` again after transient failures, for up to `patience`.
    pub(super) async fn patiently<T, F, Fut>(
        &self,
        what: &str,
        patience: Duration,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, (Failure, String)>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.retry_initial_ms),
            Duration::from_millis(self.settings.retry_max_ms),
        );
        loop {
            metrics::counter!(m::STORE_REQUESTS).increment(1);
            let (failure, detail) = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            match failure {
                Failure::Transient(cause) if started.elapsed() + delay < patience => {
                    metrics::counter!(m::STORE_RETRIES, m::CAUSE => cause).increment(1);
                    tracing::debug!(cause, error = %detail, what, "Retrying a store request");
                    tokio::time::sleep(delay).await;
                }
                failure => return Err(store_error(failure, what, &detail)),
            }
        }
    }

    /// Executes a prepared read and collects every row of every page.
    pub(super) async fn read_all<R>(
        &self,
        what: &str,
        patience: Duration,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.patiently(what, patience, || {
            let values = values.clone();
            async move {
                let pager = self
                    .session
                    .execute_iter(statement.clone(), values)
                    .await
                    .map_err(|e| (classify_pager(&e), e.to_string()))?;
                pager
                    .rows_stream::<R>()
                    .map_err(|e| (Failure::Schema, e.to_string()))?
                    .try_collect::<Vec<R>>()
                    .await
                    .map_err(|e| (Failure::Transient("connection"), e.to_string()))
            }
        })
        .await
    }

    pub async fn song_in_session(&self, s: i32, i: i32) -> Result<Vec<SessionAnswer>, StoreError> {
        let rows: Vec<(i32, String, String, f64)> = self
            .read_all(
                "querying song_plays_by_session",
                QUERY_PATIENCE,
                &self.statements.song_in_session,
                (s, i),
            )
            .await?;
        // A cluster returns the one matching row; the filter costs nothing there and keeps the
        // answer right on the in-process test server, which treats `ck = ?` as `ck >= ?`.
        Ok(rows
            .into_iter()
            .filter(|r| r.0 == i)
            .map(|(_, artist, song, length)| SessionAnswer {
                artist,
                song,
                length,
            })
            .collect())
    }

    pub async fn user_session(&self, u: i32, s: i32) -> Result<Vec<UserAnswer>, StoreError> {
        let mut rows: Vec<(i32, String, String, String, String)> = self
            .read_all(
                "querying song_plays_by_user_session",
                QUERY_PATIENCE,
                &self.statements.user_session,
                (u, s),
            )
            .await?;
        // Already in clustering order from a cluster; sorting again is cheap insurance against
        // a table created with another clustering order.
        rows.sort_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .map(
                |(iteminsession, artist, song, firstname, lastname)| UserAnswer {
                    iteminsession,
                    artist,
                    song,
                    firstname,
                    lastname,
                },
            )
            .collect())
    }

    pub async fn listeners(&self, song: &str) -> Result<Vec<ListenerAnswer>, StoreError> {
        let mut rows: Vec<(i32, String, String)> = self
            .read_all(
                "querying listeners_by_song",
                QUERY_PATIENCE,
                &self.statements.listeners,
                (song,),
            )
            .await?;
        rows.sort_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .map(|(_, firstname, lastname)| ListenerAnswer {
                firstname,
                lastname,
            })
            .collect())
    }

    /// One cheap request that any node answers from its own system tables.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(problem) = self.health.problem() {
            return Err(StoreError::Unavailable(problem));
        }
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| store_error(classify(&e), "checking the cluster", &e))
    }

    /// Every row of a table, in the same order and rendering as the embedded store's dump. A
    /// full scan comes back in token order, so rows are sorted here by the key columns.
    pub async fn dump(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let what = format!("reading {table}");
        let st = &self.statements.dump;
        Ok(match table {
            "song_plays_by_session" => {
                let mut rows: Vec<(i32, i32, String, String, f64)> = self
                    .read_all(&what, LEDGER_PATIENCE, &st[Table::Session as usize], ())
                    .await?;
                rows.sort_by_key(|r| (r.0, r.1));
                rows.iter()
                    .map(|r| dump_line(&[&r.0, &r.1, &r.2, &r.3, &r.4]))
                    .collect()
            }
            "song_plays_by_user_session" => {
                let mut rows: Vec<(i32, i32, i32, String, String, String, String)> = self
                    .read_all(&what, LEDGER_PATIENCE, &st[Table::UserSession as usize], ())
                    .await?;
                rows.sort_by_key(|r| (r.0, r.1, r.2));
                rows.iter()
                    .map(|r| dump_line(&[&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6]))
                    .collect()
            }
            "listeners_by_song" => {
                let mut rows: Vec<(String, i32, String, String)> = self
                    .read_all(&what, LEDGER_PATIENCE, &st[Table::Listeners as usize], ())
                    .await?;
                rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                rows.iter()
                    .map(|r| dump_line(&[&r.0, &r.1, &r.2, &r.3]))
                    .collect()
            }
            other => {
                return Err(StoreError::Rejected(format!(
                    "no table {other}; tables are {}",
                    TABLES.join(", ")
                )));
            }
        })
    }
}
