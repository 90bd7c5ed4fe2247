//! Signals that end the process: the first SIGINT or SIGTERM asks for a clean stop; callers
//! wait for a second one to exit at once. SIGHUP does not end the daemon (see
//! [`ignore_hangups`]).

/// Resolves once SIGINT or SIGTERM arrives.
pub async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// From now on, logs every SIGHUP and otherwise ignores it (the daemon): settings are read
/// once at start-up, so there is nothing to reload, and a hang-up must not end the process the
/// way the signal's default action would, with no log line and nothing finished. The handler
/// is in place when this returns; the task logs until aborted.
pub fn ignore_hangups() -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP received and ignored: settings are read at start-up only; restart to apply changes"
                    );
                }
            }),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot handle SIGHUP; it will stop the daemon");
                tokio::spawn(async {})
            }
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async {})
}
