//! sparkify: watches a folder of music-streaming event logs and loads every song play into three
//! query-first, denormalized tables — on Apache Cassandra / ScyllaDB in production, or in an
//! embedded SQLite file when no cluster is configured.
//!
//! # Layout
//! The modules follow the flow of a file, so `ls src/` reads as the pipeline:
//!
//! ```text
//! watch ──► pipeline ──► extract ──► transform ──► store ──► ledger
//! (notify,   (bounded     (csv_async   (mojibake     (SQLite or   (content hash,
//!  rescan,    channels,    streaming,   repair, one   Cassandra    written after
//!  settle)    readers,     validation,  row per       upserts)     every ack)
//!             writer pool) rejects)     table)
//! ```
//!
//! - [`watch`]: start-up scan, `notify` events and periodic rescans → complete files only.
//! - [`pipeline`]: file jobs → readers → chunks → writer pool → acknowledgements → ledger.
//! - [`extract`]: one file, streamed record by record into song plays, skips and [`rejects`].
//! - [`transform`]: mojibake repair; the three table rows of a play.
//! - [`store`]: the [`store::Store`] with its two kinds, embedded and Cassandra.
//! - [`ledger`]: which content has been loaded, keyed by its [`identity`] (content hash and
//!   size of exactly the bytes read).
//! - [`daemon`]: `sparkify run` — lifecycle, signals, systemd, after-ingest actions.
//! - [`query`]: the analysts' three questions.
//! - [`config`], [`telemetry`], [`retry`], [`cli`]: settings, logs/metrics/health, backoff,
//!   and the command line.
//! - [`generate`]: synthetic event files for load tests.
//! - [`escape`]: how text from input files is shown (control characters escaped).
//! - [`exit`], [`shutdown`]: exit codes and the error carrying one; the signals that stop a run.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod escape;
pub mod exit;
pub mod extract;
pub mod generate;
pub mod identity;
pub mod ledger;
pub mod pipeline;
pub mod query;
pub mod rejects;
pub mod retry;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod transform;
pub mod watch;
