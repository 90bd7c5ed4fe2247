//! Telemetry: logs, Prometheus metrics, and the health endpoints an orchestrator polls.
//!
//! Every stage reports through the `metrics` facade (counters cost nothing when no recorder is
//! installed, as in one-shot commands); the daemon installs a Prometheus recorder and serves
//! `/metrics`, `/healthz` (the process and its tasks are running) and `/readyz` (the store
//! answers and the watcher is running) on `telemetry.http_addr`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

/// Sets up logging to standard error. `RUST_LOG` wins over `telemetry.log_level`.
pub fn init_logging(settings: &TelemetrySettings, daemon: bool) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={v:?} is not a valid log filter: {e}"))?,
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(crate::exit::Failure {
                code: crate::exit::EXIT_CONFIG,
                message: format!("RUST_LOG={v:?} is not valid UTF-8"),
            }
            .into());
        }
        _ => crate::config::log_filter(&settings.log_level).map_err(|problem| {
            crate::exit::Failure {
                code: crate::exit::EXIT_CONFIG,
                message: format!("configuration: `telemetry.log_level` {problem}"),
            }
        })?,
    };
    let json = match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        // One-shot commands talk to a person; the daemon talks to a log collector unless it
        // runs in a terminal.
        LogFormat::Auto => daemon && !std::io::stderr().is_terminal(),
    };
    // A closed standard error (`2>&1 | head`) loses log lines; it must not end the program.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // A second initialisation (tests running several commands in one process) keeps the first.
    let _ = result;
    Ok(())
}

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    store_ok: AtomicBool,
    watcher_ok: AtomicBool,
    tasks_ok: AtomicBool,
    store_problem: Mutex<String>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        let h = Health::default();
        h.tasks_ok.store(true, Ordering::Relaxed);
        Arc::new(h)
    }

    /// The store answered.
    pub fn store_up(&self) {
        if !self.store_ok.swap(true, Ordering::Relaxed) {
            metrics::gauge!("sparkify_store_up").set(1.0);
        }
    }

    /// The store did not answer, for this reason.
    pub fn store_down(&self, reason: &str) {
        *self.store_problem.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_string();
        if self.store_ok.swap(false, Ordering::Relaxed) {
            metrics::gauge!("sparkify_store_up").set(0.0);
        }
    }

    pub fn set_watcher(&self, running: bool) {
        self.watcher_ok.store(running, Ordering::Relaxed);
    }

    /// A task that should run for the whole life of the process has stopped.
    pub fn task_died(&self) {
        self.tasks_ok.store(false, Ordering::Relaxed);
    }

    pub fn is_alive(&self) -> bool {
        self.tasks_ok.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.store_ok.load(Ordering::Relaxed) {
            let why = self
                .store_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return Err(format!("store unreachable: {why}"));
        }
        if !self.watcher_ok.load(Ordering::Relaxed) {
            return Err("watcher not running".into());
        }
        Ok(())
    }
}

/// Installs the Prometheus recorder (once per process) and describes the metrics.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])?
        .install_recorder()?;
    describe_metrics();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "sparkify_files_discovered_total",
        "Complete files handed to the pipeline"
    );
    describe_counter!(
        "sparkify_files_total",
        "Files finished, by outcome: loaded, failed, duplicate (content already loaded), vanished, changed (while read), unreadable (a local reason), abandoned"
    );
    describe_counter!("sparkify_rows_read_total", "Records read after the header");
    describe_counter!("sparkify_song_plays_total", "Valid song plays read");
    describe_counter!(
        "sparkify_rows_skipped_total",
        "Events that are not song plays"
    );
    describe_counter!(
        "sparkify_rows_rejected_total",
        "Song plays sent to a rejects file"
    );
    describe_counter!(
        "sparkify_values_repaired_total",
        "Text values repaired (multiply-encoded UTF-8)"
    );
    describe_counter!(
        "sparkify_rows_written_total",
        "Rows acknowledged by the store, by table"
    );
    describe_counter!(
        "sparkify_store_retries_total",
        "Store requests retried, by cause"
    );
    describe_counter!(
        "sparkify_store_requests_total",
        "Requests sent to the store"
    );
    describe_histogram!(
        "sparkify_write_duration_seconds",
        Unit::Seconds,
        "Time for one group of plays to be acknowledged by the store, retries included"
    );
    describe_histogram!(
        "sparkify_file_latency_seconds",
        Unit::Seconds,
        "From a file found complete to its ledger entry"
    );
    describe_gauge!(
        "sparkify_store_requests_in_flight",
        "Store requests outstanding"
    );
    describe_gauge!(
        "sparkify_queue_depth",
        "Items waiting, by queue: files, chunks"
    );
    describe_gauge!(
        "sparkify_last_load_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last file loaded"
    );
    describe_gauge!(
        "sparkify_store_up",
        "1 when the store answers, 0 during an outage"
    );
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

async fn metrics_page(State(s): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_alive() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a pipeline task has stopped\n".to_string(),
        )
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds the HTTP endpoint (`ip:port` or `name:port`; a name is looked up and the first of
/// its addresses that can be bound is used); serves until `shutdown`. Returns the bound
/// address.
pub async fn serve_http(
    addr: &str,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (telemetry.http_addr): {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}
