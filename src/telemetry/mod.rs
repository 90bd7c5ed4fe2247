//! Telemetry: logs, Prometheus metrics, and the health endpoints an orchestrator polls.
//!
//! Every stage reports through the `metrics` facade (counters cost nothing when no recorder is
//! installed, as in one-shot commands); the daemon installs a Prometheus recorder and serves
//! `/metrics`, `/healthz` (the process and its tasks are running) and `/readyz` (the store
//! answers and the watcher is running) on `telemetry.http_addr`. Every metric's name, labels,
//! help text and start-up series are in [`metrics`].

pub mod metrics;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
            ::metrics::gauge!(metrics::STORE_UP).set(1.0);
        }
    }

    /// The store did not answer, for this reason.
    pub fn store_down(&self, reason: &str) {
        *self.store_problem.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_string();
        if self.store_ok.swap(false, Ordering::Relaxed) {
            ::metrics::gauge!(metrics::STORE_UP).set(0.0);
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
    metrics::describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
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

/// Bounds on the clients of the HTTP endpoint (the `telemetry.http_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once at most.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, from connecting or from its
    /// previous response.
    pub header_timeout: Duration,
    /// The longest a connection may stay open.
    pub connection_timeout: Duration,
}

impl HttpLimits {
    pub fn from_settings(s: &TelemetrySettings) -> HttpLimits {
        HttpLimits {
            max_connections: s.http_max_connections.max(1),
            header_timeout: Duration::from_millis(s.http_header_timeout_ms),
            connection_timeout: Duration::from_millis(s.http_connection_timeout_ms),
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Slot {
    id: u64,
    /// Cancelled to close the connection at once.
    close: CancellationToken,
    /// A request is being answered (its head was read and the handler has not returned).
    busy: Arc<AtomicBool>,
}

/// The open connections, oldest first. At the cap a newcomer takes the place of the oldest
/// connection that is not answering a request — an idle keep-alive or a client still
/// dribbling its header — so a flood of silent clients can never keep a probe out: a probe
/// sends its request at once and is answered in a millisecond, long before it is the oldest.
#[derive(Default)]
struct Slots {
    open: Mutex<std::collections::VecDeque<Slot>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Slots {
    /// Makes room for a new connection; `None` when every open one is answering a request
    /// (the newcomer is then closed at once).
    fn admit(&self, max: usize) -> Option<(u64, CancellationToken, Arc<AtomicBool>)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= max {
            let idle = open.iter().position(|s| !s.busy.load(Ordering::Relaxed))?;
            if let Some(evicted) = open.remove(idle) {
                evicted.close.cancel();
            }
            ::metrics::counter!(metrics::HTTP_CONNECTIONS_EVICTED).increment(1);
        }
        let slot = Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            close: CancellationToken::new(),
            busy: Arc::new(AtomicBool::new(false)),
        };
        let admitted = (slot.id, slot.close.clone(), slot.busy.clone());
        open.push_back(slot);
        Some(admitted)
    }

    fn release(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = open.iter().position(|s| s.id == id) {
            open.remove(at);
        }
    }
}

/// Binds the HTTP endpoint (`ip:port` or `name:port`; a name is looked up and the first of
/// its addresses that can be bound is used); serves until `shutdown`. Returns the bound
/// address.
///
/// Connections are bounded by `limits`: at most `max_connections` open (each is a file
/// descriptor the loader may need), each closed when it has not sent a request head within
/// `header_timeout` or has been open for `connection_timeout`.
pub async fn serve_http(
    addr: &str,
    limits: HttpLimits,
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
    let app = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let slots = Arc::new(Slots::default());
    metrics::register_http_series();
    tokio::spawn(async move {
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "HTTP endpoint cannot accept a connection");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some((id, close, busy)) = slots.admit(limits.max_connections) else {
                ::metrics::counter!(metrics::HTTP_CONNECTIONS_REFUSED).increment(1);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = hyper::service::service_fn(move |request| {
                busy.store(true, Ordering::Relaxed);
                let answer = hyper::service::Service::call(&app, request);
                let busy = busy.clone();
                async move {
                    let response = answer.await;
                    busy.store(false, Ordering::Relaxed);
                    response
                }
            });
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let slots = slots.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::pin!(connection);
                let lifetime = tokio::time::sleep(limits.connection_timeout);
                tokio::select! {
                    // Errors here are the client's (a header timeout, a reset): nothing to report.
                    _ = &mut connection => {}
                    _ = close.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                    _ = lifetime => {
                        // Finish the response in progress, if any, then close.
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), &mut connection).await;
                    }
                }
                slots.release(id);
            });
        }
    });
    Ok(bound)
}
