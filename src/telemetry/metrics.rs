//! Every Prometheus metric sparkify reports, defined once: its name, its labels and their
//! values, its help text and unit, and the series that exist from the daemon's start.
//!
//! The stages (watch, pipeline, both stores, the HTTP endpoint) emit through the `metrics`
//! facade by these names; dashboards (`deploy/grafana/`) and alert rules (`deploy/prometheus/`)
//! query them, so a name changes here or nowhere.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Complete files handed to the pipeline.
pub const FILES_DISCOVERED: &str = "sparkify_files_discovered_total";
/// Files finished, by [`OUTCOME`].
pub const FILES: &str = "sparkify_files_total";
/// Records read after the header.
pub const ROWS_READ: &str = "sparkify_rows_read_total";
/// Valid song plays read.
pub const SONG_PLAYS: &str = "sparkify_song_plays_total";
/// Events that are not song plays.
pub const ROWS_SKIPPED: &str = "sparkify_rows_skipped_total";
/// Song plays sent to a rejects file.
pub const ROWS_REJECTED: &str = "sparkify_rows_rejected_total";
/// Text values repaired.
pub const VALUES_REPAIRED: &str = "sparkify_values_repaired_total";
/// Rows acknowledged by the store, by [`TABLE`].
pub const ROWS_WRITTEN: &str = "sparkify_rows_written_total";
/// Store requests retried, by [`CAUSE`].
pub const STORE_RETRIES: &str = "sparkify_store_retries_total";
/// Requests sent to the store.
pub const STORE_REQUESTS: &str = "sparkify_store_requests_total";
/// Time for one group of plays to be acknowledged.
pub const WRITE_DURATION: &str = "sparkify_write_duration_seconds";
/// From a file found complete to its ledger entry.
pub const FILE_LATENCY: &str = "sparkify_file_latency_seconds";
/// Store requests outstanding.
pub const STORE_REQUESTS_IN_FLIGHT: &str = "sparkify_store_requests_in_flight";
/// Items waiting, by [`QUEUE`].
pub const QUEUE_DEPTH: &str = "sparkify_queue_depth";
/// Unix time of the last file loaded.
pub const LAST_LOAD_TIMESTAMP: &str = "sparkify_last_load_timestamp_seconds";
/// Idle HTTP connections closed to make room.
pub const HTTP_CONNECTIONS_EVICTED: &str = "sparkify_http_connections_evicted_total";
/// HTTP connections closed at once.
pub const HTTP_CONNECTIONS_REFUSED: &str = "sparkify_http_connections_refused_total";
/// 1 when the store answers.
pub const STORE_UP: &str = "sparkify_store_up";

/// Label of [`FILES`]: how a file ended, one of [`FILE_OUTCOMES`].
pub const OUTCOME: &str = "outcome";
/// Label of [`ROWS_WRITTEN`]: one of the store's tables.
pub const TABLE: &str = "table";
/// Label of [`STORE_RETRIES`]: why a request failed (the store names its causes).
pub const CAUSE: &str = "cause";
/// Label of [`QUEUE_DEPTH`]: [`QUEUE_FILES`] or [`QUEUE_CHUNKS`].
pub const QUEUE: &str = "queue";

/// Complete files waiting for a reader.
pub const QUEUE_FILES: &str = "files";
/// Chunks of song plays waiting for a writer.
pub const QUEUE_CHUNKS: &str = "chunks";

/// Values of [`OUTCOME`]; the pipeline's `Outcome` says what each means.
pub const LOADED: &str = "loaded";
pub const FAILED: &str = "failed";
pub const DUPLICATE: &str = "duplicate";
pub const VANISHED: &str = "vanished";
pub const CHANGED: &str = "changed";
pub const UNREADABLE: &str = "unreadable";
pub const ABANDONED: &str = "abandoned";

/// Every value of [`OUTCOME`], in the order the help text lists them, with the few words the
/// help text adds where the label alone does not say it.
pub const FILE_OUTCOMES: [(&str, Option<&str>); 7] = [
    (LOADED, None),
    (FAILED, None),
    (DUPLICATE, Some("content already loaded")),
    (VANISHED, None),
    (CHANGED, Some("while read")),
    (UNREADABLE, Some("a local reason")),
    (ABANDONED, None),
];

/// The help text of [`FILES`], listing [`FILE_OUTCOMES`].
fn files_help() -> String {
    let outcomes: Vec<String> = FILE_OUTCOMES
        .iter()
        .map(|(label, note)| match note {
            Some(note) => format!("{label} ({note})"),
            None => (*label).to_owned(),
        })
        .collect();
    format!("Files finished, by outcome: {}", outcomes.join(", "))
}

/// Gives every metric its help text and unit (Prometheus `# HELP` and `# TYPE` lines).
pub fn describe() {
    describe_counter!(FILES_DISCOVERED, "Complete files handed to the pipeline");
    describe_counter!(FILES, files_help());
    describe_counter!(ROWS_READ, "Records read after the header");
    describe_counter!(SONG_PLAYS, "Valid song plays read");
    describe_counter!(ROWS_SKIPPED, "Events that are not song plays");
    describe_counter!(ROWS_REJECTED, "Song plays sent to a rejects file");
    describe_counter!(
        VALUES_REPAIRED,
        "Text values repaired (multiply-encoded UTF-8)"
    );
    describe_counter!(ROWS_WRITTEN, "Rows acknowledged by the store, by table");
    describe_counter!(STORE_RETRIES, "Store requests retried, by cause");
    describe_counter!(STORE_REQUESTS, "Requests sent to the store");
    describe_histogram!(
        WRITE_DURATION,
        Unit::Seconds,
        "Time for one group of plays to be acknowledged by the store, retries included"
    );
    describe_histogram!(
        FILE_LATENCY,
        Unit::Seconds,
        "From a file found complete to its ledger entry"
    );
    describe_gauge!(STORE_REQUESTS_IN_FLIGHT, "Store requests outstanding");
    describe_gauge!(QUEUE_DEPTH, "Items waiting, by queue: files, chunks");
    describe_gauge!(
        LAST_LOAD_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the last file loaded"
    );
    describe_counter!(
        HTTP_CONNECTIONS_EVICTED,
        "Idle HTTP connections closed to make room for a new one (telemetry.http_max_connections)"
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed at once: every open one was answering a request"
    );
    describe_gauge!(STORE_UP, "1 when the store answers, 0 during an outage");
}

/// Creates the daemon's series at zero before any work, so dashboards and alerts see zeros,
/// not gaps. `tables` are the store's, the values of [`TABLE`].
///
/// Left out on purpose: [`STORE_RETRIES`] (its causes are only known when one happens) and
/// [`LAST_LOAD_TIMESTAMP`] (a zero would read as a load in 1970).
pub fn register_daemon_series(tables: &[&'static str]) {
    for (outcome, _) in FILE_OUTCOMES {
        metrics::counter!(FILES, OUTCOME => outcome).increment(0);
    }
    for &table in tables {
        metrics::counter!(ROWS_WRITTEN, TABLE => table).increment(0);
    }
    for name in [
        FILES_DISCOVERED,
        ROWS_READ,
        SONG_PLAYS,
        ROWS_SKIPPED,
        ROWS_REJECTED,
        VALUES_REPAIRED,
        STORE_REQUESTS,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(STORE_REQUESTS_IN_FLIGHT).set(0.0);
    for queue in [QUEUE_FILES, QUEUE_CHUNKS] {
        metrics::gauge!(QUEUE_DEPTH, QUEUE => queue).increment(0.0);
    }
    // Histograms too: rate() then counts the first writes, not only those after a scrape.
    let _ = metrics::histogram!(WRITE_DURATION);
    let _ = metrics::histogram!(FILE_LATENCY);
    // Down until the store has answered, so an alert on it fires on a cold-start outage too.
    metrics::gauge!(STORE_UP).set(0.0);
}

/// Creates the HTTP endpoint's series at zero when it starts serving.
pub fn register_http_series() {
    metrics::counter!(HTTP_CONNECTIONS_EVICTED).increment(0);
    metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(0);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// What a recorder was told: help texts by name, and every series registered.
    #[derive(Default)]
    struct Seen {
        help: BTreeMap<String, (&'static str, Option<Unit>, String)>,
        series: Vec<String>,
    }

    #[derive(Default, Clone)]
    struct Listening(Arc<Mutex<Seen>>);

    impl Listening {
        fn describe(
            &self,
            kind: &'static str,
            key: KeyName,
            unit: Option<Unit>,
            text: SharedString,
        ) {
            let mut seen = self.0.lock().unwrap();
            let old = seen
                .help
                .insert(key.as_str().to_owned(), (kind, unit, text.into_owned()));
            assert!(old.is_none(), "{} described twice", key.as_str());
        }

        fn register(&self, key: &Key) {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
                .collect();
            let series = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            self.0.lock().unwrap().series.push(series);
        }
    }

    impl Recorder for Listening {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.describe("counter", key, unit, text);
        }
        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.describe("gauge", key, unit, text);
        }
        fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.describe("histogram", key, unit, text);
        }
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.register(key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.register(key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.register(key);
            Histogram::noop()
        }
    }

    #[test]
    fn every_metric_is_described_once_and_the_daemon_series_start_at_zero() {
        let recorder = Listening::default();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_daemon_series(&["t1", "t2"]);
            register_http_series();
        });
        let seen = recorder.0.lock().unwrap();
        let described: Vec<&str> = seen.help.keys().map(String::as_str).collect();
        let mut all = vec![
            FILES_DISCOVERED,
            FILES,
            ROWS_READ,
            SONG_PLAYS,
            ROWS_SKIPPED,
            ROWS_REJECTED,
            VALUES_REPAIRED,
            ROWS_WRITTEN,
            STORE_RETRIES,
            STORE_REQUESTS,
            WRITE_DURATION,
            FILE_LATENCY,
            STORE_REQUESTS_IN_FLIGHT,
            QUEUE_DEPTH,
            LAST_LOAD_TIMESTAMP,
            HTTP_CONNECTIONS_EVICTED,
            HTTP_CONNECTIONS_REFUSED,
            STORE_UP,
        ];
        all.sort_unstable();
        assert_eq!(described, all);
        // The help text the outcomes are listed in, as Prometheus has always shown it.
        assert_eq!(
            seen.help[FILES],
            (
                "counter",
                None,
                "Files finished, by outcome: loaded, failed, duplicate (content already loaded), \
                 vanished, changed (while read), unreadable (a local reason), abandoned"
                    .to_owned()
            )
        );
        assert_eq!(seen.help[WRITE_DURATION].0, "histogram");
        assert_eq!(seen.help[WRITE_DURATION].1, Some(Unit::Seconds));
        assert_eq!(seen.help[STORE_UP].0, "gauge");
        assert_eq!(
            seen.series,
            [
                "sparkify_files_total{outcome=\"loaded\"}",
                "sparkify_files_total{outcome=\"failed\"}",
                "sparkify_files_total{outcome=\"duplicate\"}",
                "sparkify_files_total{outcome=\"vanished\"}",
                "sparkify_files_total{outcome=\"changed\"}",
                "sparkify_files_total{outcome=\"unreadable\"}",
                "sparkify_files_total{outcome=\"abandoned\"}",
                "sparkify_rows_written_total{table=\"t1\"}",
                "sparkify_rows_written_total{table=\"t2\"}",
                "sparkify_files_discovered_total",
                "sparkify_rows_read_total",
                "sparkify_song_plays_total",
                "sparkify_rows_skipped_total",
                "sparkify_rows_rejected_total",
                "sparkify_values_repaired_total",
                "sparkify_store_requests_total",
                "sparkify_store_requests_in_flight",
                "sparkify_queue_depth{queue=\"files\"}",
                "sparkify_queue_depth{queue=\"chunks\"}",
                "sparkify_write_duration_seconds",
                "sparkify_file_latency_seconds",
                "sparkify_store_up",
                "sparkify_http_connections_evicted_total",
                "sparkify_http_connections_refused_total",
            ]
        );
    }
}
