//! The daemon (`sparkify run`): watcher + pipeline + telemetry, for as long as it is needed.
//!
//! Wires the stages together — `watch` queues complete files, `pipeline` loads them, this
//! module acts on each file's outcome (log line, `after_ingest` move or delete, retry) — and
//! owns the lifecycle: waiting for the store at start-up, systemd notifications (READY once the
//! start-up scan is queued, WATCHDOG pings, STOPPING), and shutdown on SIGTERM/SIGINT
//! (SIGHUP is logged and ignored).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{AfterIngest, Settings};
use crate::exit::{EXIT_INTERRUPTED, Failure};
use crate::pipeline::{self, FileReport, Outcome, PipelineOptions};
use crate::retry::Backoff;
use crate::store::Store;
use crate::telemetry::Health;
use crate::watch::{self, Feedback};

/// `sparkify run`: runs until SIGTERM/SIGINT; a second signal exits at once.
pub async fn main(settings: Settings) -> anyhow::Result<u8> {
    let hangups = crate::shutdown::ignore_hangups();
    let shutdown = CancellationToken::new();
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown::interrupted().await;
            tracing::info!("Shutting down: no new files; finishing in-flight writes");
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            shutdown.cancel();
            crate::shutdown::interrupted().await;
            tracing::warn!("Second signal: exiting at once");
            std::process::exit(EXIT_INTERRUPTED as i32);
        })
    };
    let result = run(settings, shutdown.cancelled_owned()).await;
    signals.abort();
    hangups.abort();
    result
}

fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        tracing::warn!(error = %e, "Cannot notify systemd");
    }
}

/// Runs the daemon until `shutdown` resolves. Tests call this directly with their own trigger.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<u8> {
    let token = CancellationToken::new();
    let health = Health::new();
    let http_stop = CancellationToken::new();

    if !settings.telemetry.http_addr.is_empty() {
        let handle = crate::telemetry::install_metrics()?;
        let bound = crate::telemetry::serve_http(
            &settings.telemetry.http_addr,
            crate::telemetry::HttpLimits::from_settings(&settings.telemetry),
            health.clone(),
            handle,
            http_stop.clone(),
        )
        .await?;
        tracing::info!(addr = %bound, "Serving /metrics, /healthz and /readyz");
    }

    // Every series exists from the start, so dashboards and alerts see zeros, not gaps.
    crate::telemetry::metrics::register_daemon_series(&crate::store::TABLES);
    tokio::pin!(shutdown);
    let store = tokio::select! {
        store = open_store_patiently(&settings, &health) => store?,
        _ = &mut shutdown => {
            http_stop.cancel();
            return Ok(0);
        }
    };
    tracing::info!(store = %store.describe(), "Store ready");

    let probe = tokio::spawn(probe_store(
        store.clone(),
        health.clone(),
        Duration::from_millis(settings.telemetry.readiness_probe_ms.max(50)),
        token.clone(),
    ));

    let (job_tx, job_rx) = mpsc::channel(settings.pipeline.file_queue);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let (feedback_tx, feedback_rx) = mpsc::unbounded_channel();
    let (started_tx, started_rx) = oneshot::channel();
    let options = PipelineOptions::from_settings(&settings, &store);
    let mut pipeline = tokio::spawn(pipeline::run(
        store.clone(),
        options,
        job_rx,
        report_tx,
        token.clone(),
    ));
    let excluded = vec![
        settings.watch.done_dir.clone(),
        settings.watch.failed_dir.clone(),
        settings.rejects.dir.clone(),
    ];
    let mut watcher = tokio::spawn(watch::run(
        settings.watch.clone(),
        excluded,
        job_tx,
        feedback_rx,
        started_tx,
        health.clone(),
        token.clone(),
    ));
    let root = std::fs::create_dir_all(&settings.watch.dir)
        .and_then(|_| settings.watch.dir.canonicalize())
        .unwrap_or_else(|_| settings.watch.dir.clone());

    let watchdog = sd_notify::watchdog_enabled().map(|every| {
        let health = health.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => if health.is_alive() {
                        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                    },
                }
            }
        })
    });

    let mut started_rx = Some(started_rx);
    let mut exit = 0u8;
    let mut watcher_done = false;
    loop {
        tokio::select! {
            _ = &mut shutdown, if !token.is_cancelled() => {
                token.cancel();
            }
            started = async { started_rx.as_mut().expect("guarded").await }, if started_rx.is_some() => {
                started_rx = None;
                if started.is_ok() {
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
            }
            result = &mut watcher, if !watcher_done => {
                watcher_done = true;
                if !token.is_cancelled() {
                    let reason = match result {
                        Ok(Ok(())) => "the watcher stopped".to_string(),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(e) => format!("the watcher task failed: {e}"),
                    };
                    tracing::error!(error = %reason, "Watcher stopped; shutting down");
                    health.task_died();
                    exit = 1;
                    token.cancel();
                }
            }
            report = report_rx.recv() => {
                let Some(report) = report else { break };
                on_report(&settings, &root, &report, &feedback_tx).await;
            }
        }
        if token.is_cancelled() {
            break;
        }
    }

    // Drain: reports keep coming while in-flight chunks finish or are abandoned.
    let limit = Duration::from_secs(settings.pipeline.shutdown_timeout_secs);
    let drained = tokio::time::timeout(limit, async {
        while let Some(report) = report_rx.recv().await {
            on_report(&settings, &root, &report, &feedback_tx).await;
        }
        (&mut pipeline).await
    })
    .await;
    match &drained {
        Ok(Ok(Err(panicked))) => {
            tracing::error!(error = %panicked, "Stopping after an internal error");
            exit = 1;
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "The pipeline failed");
            exit = 1;
        }
        _ => {}
    }
    if drained.is_err() {
        tracing::warn!(
            timeout_secs = limit.as_secs(),
            "In-flight writes did not finish in time; exiting without ledgering them"
        );
    }
    if !watcher_done {
        let _ = watcher.await;
    }
    probe.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    http_stop.cancel();
    tracing::info!("Stopped");
    if let Some(e) = store.fatal() {
        return Err(Failure {
            code: crate::exit::EXIT_STORE,
            message: format!("cannot use the store: {e}"),
        }
        .into());
    }
    Ok(exit)
}

/// Opens the store, retrying while it is unreachable (a cluster still starting, a network
/// blip): one warning per attempt, capped exponential backoff. Permanent problems (schema
/// mismatch, bad credentials, a refused request) end the start-up.
async fn open_store_patiently(settings: &Settings, health: &Health) -> anyhow::Result<Store> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match Store::open(settings).await {
            Ok(store) => {
                health.store_up();
                return Ok(store);
            }
            Err(e) if e.is_transient() => {
                health.store_down(&e.to_string());
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "Store unreachable; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(Failure {
                    code: crate::exit::EXIT_STORE,
                    message: format!("cannot use the store: {e}"),
                }
                .into());
            }
        }
    }
}

/// Keeps readiness current while idle: an outage shows on `/readyz` even with no file to load.
async fn probe_store(store: Store, health: Arc<Health>, every: Duration, token: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    let mut down = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(e) = store.fatal() {
            tracing::error!(error = %e, "The store cannot be used any more; shutting down");
            health.store_down(&e.to_string());
            token.cancel();
            break;
        }
        match tokio::time::timeout(every.max(Duration::from_secs(1)), store.ping()).await {
            Ok(Ok(())) => {
                if down {
                    tracing::info!("Store reachable again");
                }
                down = false;
                health.store_up();
            }
            Ok(Err(e)) => {
                if !down {
                    tracing::warn!(error = %e, "Store unreachable; loads pause until it returns");
                }
                down = true;
                health.store_down(&e.to_string());
            }
            Err(_) => {
                if !down {
                    tracing::warn!("Store did not answer a health check in time");
                }
                down = true;
                health.store_down("health check timed out");
            }
        }
    }
}

async fn on_report(
    settings: &Settings,
    root: &Path,
    report: &FileReport,
    feedback: &mpsc::UnboundedSender<Feedback>,
) {
    let file = report.path.display().to_string();
    let c = report.counts;
    match &report.outcome {
        Outcome::Loaded => {
            let secs = report.elapsed.as_secs_f64().max(1e-6);
            tracing::info!(
                file,
                rows = c.rows,
                song_plays = c.plays,
                skipped = c.skipped,
                rejected = c.rejected,
                repaired = report.repaired,
                elapsed_ms = report.elapsed.as_millis() as u64,
                plays_per_sec = (c.plays as f64 / secs).round() as u64,
                "Loaded file"
            );
            if let Some(rejects) = &report.rejects_path {
                tracing::warn!(file, rejected = c.rejected, rejects = %rejects.display(), "Rows rejected");
            }
            after_ingest(settings, root, &report.path).await;
        }
        Outcome::Duplicate { previous_path } => {
            tracing::info!(file, previous = %previous_path, "Skipped file: same content already loaded");
            after_ingest(settings, root, &report.path).await;
        }
        Outcome::Failed(reason) => {
            tracing::warn!(file, reason = %reason, "File failed");
            if !settings.watch.failed_dir.as_os_str().is_empty() {
                move_under(root, &report.path, &settings.watch.failed_dir).await;
            }
        }
        Outcome::Vanished => {
            tracing::warn!(file, "File disappeared before it could be read");
        }
        Outcome::Changed => {
            tracing::warn!(
                file,
                "File changed while being read; it will be taken again when it settles"
            );
            let _ = feedback.send(Feedback::Retry(report.path.clone()));
        }
        Outcome::Unreadable(reason) => {
            tracing::warn!(file, reason = %reason, "File could not be read; it will be tried again at the next rescan");
            let _ = feedback.send(Feedback::Retry(report.path.clone()));
        }
        Outcome::Abandoned => {
            tracing::info!(file, "File not finished; it will be taken again");
            let _ = feedback.send(Feedback::Retry(report.path.clone()));
        }
    }
}

async fn after_ingest(settings: &Settings, root: &Path, path: &Path) {
    match settings.watch.after_ingest {
        AfterIngest::Keep => {}
        AfterIngest::Move => move_under(root, path, &settings.watch.done_dir).await,
        AfterIngest::Delete => {
            if let Err(e) = tokio::fs::remove_file(path).await {
                tracing::warn!(file = %path.display(), error = %e, "Cannot delete loaded file");
            }
        }
    }
}

/// Moves `path` (under `root`) to the same relative place under `dest_dir`. An existing file
/// there is not overwritten: the moved one gets a numeric suffix.
async fn move_under(root: &Path, path: &Path, dest_dir: &Path) {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel = if rel.is_absolute() {
        PathBuf::from(path.file_name().unwrap_or_default())
    } else {
        rel.to_path_buf()
    };
    let mut dest = dest_dir.join(&rel);
    let mut n = 1;
    while tokio::fs::try_exists(&dest).await.unwrap_or(false) {
        let name = rel.file_name().unwrap_or_default().to_string_lossy();
        dest = dest_dir.join(&rel).with_file_name(format!("{name}.{n}"));
        n += 1;
    }
    if let Some(parent) = dest.parent()
        && let Err(e) = tokio::fs::create_dir_all(parent).await
    {
        tracing::warn!(dir = %parent.display(), error = %e, "Cannot create folder");
        return;
    }
    let moved = match tokio::fs::rename(path, &dest).await {
        Ok(()) => Ok(()),
        // Another filesystem: copy, then remove.
        Err(e) if e.raw_os_error() == Some(18) => match tokio::fs::copy(path, &dest).await {
            Ok(_) => tokio::fs::remove_file(path).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match moved {
        Ok(()) => tracing::debug!(file = %path.display(), to = %dest.display(), "Moved file"),
        Err(e) => {
            tracing::warn!(file = %path.display(), to = %dest.display(), error = %e, "Cannot move file")
        }
    }
}
