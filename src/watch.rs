//! Watch: find complete event files in the watched folder and queue them for loading.
//!
//! The first stage of the daemon's flow. Three sources feed it: a start-up scan, `notify`
//! events, and a periodic rescan (OS events get lost — an overflowed inotify queue, network
//! filesystems — so the rescan is the safety net, not an optimisation). A file is queued only
//! once its writer is done with it:
//! - closed after writing (`Access(Close(Write))`), or
//! - renamed into the folder (`Modify(Name(To))`), or
//! - unchanged in size and modification time for `settle_ms` (poll mode; copies that never
//!   close in view of the watcher).
//!
//! Hidden and temporary names are ignored, as are symlinks leading outside the folder and the
//! folders sparkify itself writes to. The queue is bounded: when it is full the watcher waits.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{WatchMode, WatchSettings};
use crate::extract::{is_ignored_name, warn_unreadable};
use crate::pipeline::FileJob;
use crate::telemetry::metrics as m;

/// A message from the rest of the daemon to the watcher.
#[derive(Debug)]
pub enum Feedback {
    /// Consider this path again on the next rescan (it was not loaded: store outage, shutdown).
    Retry(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: SystemTime,
}

#[derive(Debug)]
struct Pending {
    stamp: Stamp,
    since: Instant,
}

/// The discovery state machine, separate from the OS plumbing so it can be driven directly.
pub struct Discovery {
    root: PathBuf,
    recursive: bool,
    matcher: globset::GlobMatcher,
    settle: Duration,
    /// Folders under the root that sparkify writes to itself.
    excluded: Vec<PathBuf>,
    pending: HashMap<PathBuf, Pending>,
    /// Files handed to the pipeline, with the size and time they had then.
    queued: HashMap<PathBuf, Stamp>,
    /// Paths a scan could not read, already logged.
    unreadable: std::sync::Mutex<HashSet<PathBuf>>,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        size: meta.len(),
        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

impl Discovery {
    /// `root` must exist. `excluded` folders (done, failed, rejects) are never taken from.
    pub fn new(
        settings: &WatchSettings,
        root: &Path,
        excluded: &[PathBuf],
    ) -> std::io::Result<Discovery> {
        let root = root.canonicalize()?;
        let matcher = crate::extract::input_matcher(&settings.pattern)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let excluded = excluded
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .filter_map(|p| {
                let abs = if p.is_absolute() {
                    p.clone()
                } else {
                    std::env::current_dir().ok()?.join(p)
                };
                Some(abs.canonicalize().unwrap_or(abs))
            })
            .collect();
        Ok(Discovery {
            root,
            recursive: settings.recursive,
            matcher,
            settle: Duration::from_millis(settings.settle_ms),
            excluded,
            pending: HashMap::new(),
            queued: HashMap::new(),
            unreadable: std::sync::Mutex::new(HashSet::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The regular file at `path` if it is one sparkify should take, with its stamp.
    fn candidate(&self, path: &Path) -> Option<Stamp> {
        if is_ignored_name(path) {
            return None;
        }
        // Hidden folders (".staging/") are where producers assemble files before moving them.
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if rel.parent().is_some_and(|p| {
            p.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        }) {
            return None;
        }
        let name = path.file_name()?;
        if !self.matcher.is_match(Path::new(name)) {
            return None;
        }
        if self.excluded.iter().any(|d| path.starts_with(d)) {
            return None;
        }
        if !self.recursive && path.parent() != Some(self.root.as_path()) {
            return None;
        }
        let link = std::fs::symlink_metadata(path).ok()?;
        if link.file_type().is_symlink() {
            let target = path.canonicalize().ok()?;
            if !target.starts_with(&self.root) {
                tracing::debug!(file = %path.display(), target = %target.display(), "Ignoring a symlink that leads outside the watched folder");
                return None;
            }
        }
        let meta = std::fs::metadata(path).ok()?;
        meta.is_file().then(|| stamp(&meta))
    }

    /// Every candidate file under the root, sorted by path.
    pub fn scan(&self) -> Vec<PathBuf> {
        self.scan_dir(&self.root)
    }

    fn scan_dir(&self, dir: &Path) -> Vec<PathBuf> {
        let depth = if self.recursive { usize::MAX } else { 1 };
        let mut found: Vec<PathBuf> = walkdir::WalkDir::new(dir)
            .max_depth(depth)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| !self.excluded.iter().any(|d| e.path().starts_with(d)))
            .filter_map(|e| e.map_err(|e| warn_unreadable(&e, &self.unreadable)).ok())
            .filter(|e| !e.file_type().is_dir())
            .map(|e| e.into_path())
            .collect();
        found.sort();
        found
    }

    /// A file known complete (closed after writing, renamed into place): ready unless it is
    /// already queued unchanged.
    fn complete(&mut self, path: &Path, out: &mut Vec<PathBuf>) {
        self.pending.remove(path);
        let Some(st) = self.candidate(path) else {
            return;
        };
        if self.queued.get(path) == Some(&st) {
            return;
        }
        self.queued.insert(path.to_path_buf(), st);
        out.push(path.to_path_buf());
    }

    /// A file that may still be written: watch it until it settles.
    fn maybe_incomplete(&mut self, path: &Path) {
        let Some(st) = self.candidate(path) else {
            return;
        };
        if self.queued.get(path) == Some(&st) {
            return;
        }
        match self.pending.get_mut(path) {
            Some(p) if p.stamp == st => {}
            Some(p) => {
                p.stamp = st;
                p.since = Instant::now();
            }
            None => {
                self.pending.insert(
                    path.to_path_buf(),
                    Pending {
                        stamp: st,
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    fn forget(&mut self, path: &Path) {
        self.pending.remove(path);
        self.queued.remove(path);
        // A folder renamed away or deleted takes its files with it.
        self.pending.retain(|p, _| !p.starts_with(path));
        self.queued.retain(|p, _| !p.starts_with(path));
    }

    /// The start-up scan: files older than the settle time are taken at once (in name order),
    /// newer ones may still be being written and wait to settle.
    pub fn startup(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for path in self.scan() {
            let Some(st) = self.candidate(&path) else {
                continue;
            };
            let age = SystemTime::now()
                .duration_since(st.mtime)
                .unwrap_or(Duration::ZERO);
            if age >= self.settle {
                self.complete(&path, &mut out);
            } else {
                self.maybe_incomplete(&path);
            }
        }
        out
    }

    /// The periodic rescan: anything not queued in its current form waits to settle; entries
    /// for files that are gone are dropped, so memory follows what is in the folder.
    pub fn rescan(&mut self) {
        let present = self.scan();
        let set: std::collections::HashSet<&PathBuf> = present.iter().collect();
        self.queued.retain(|p, _| set.contains(p));
        self.pending.retain(|p, _| set.contains(p));
        for path in &present {
            self.maybe_incomplete(path);
        }
    }

    /// Applies one OS event; complete files are appended to `out`.
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<PathBuf>) {
        match &event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &event.paths {
                    self.complete(p, out);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                for p in &event.paths {
                    self.forget(p);
                }
            }
            EventKind::Modify(ModifyKind::Name(mode)) => {
                let (from, to) = match (mode, event.paths.as_slice()) {
                    (RenameMode::Both, [from, to, ..]) => (Some(from), Some(to)),
                    (_, [to, ..]) => (None, Some(to)),
                    _ => (None, None),
                };
                if let Some(from) = from {
                    self.forget(from);
                }
                if let Some(to) = to {
                    if to.is_dir() {
                        for p in self.scan_dir(to) {
                            self.complete(&p, out);
                        }
                    } else {
                        self.complete(to, out);
                    }
                }
            }
            EventKind::Create(CreateKind::Folder) => {
                // Files may have landed before the new folder was watched: look now, and let
                // them settle (their close events may have been missed).
                for p in &event.paths {
                    for f in self.scan_dir(p) {
                        self.maybe_incomplete(&f);
                    }
                }
            }
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => {
                for p in &event.paths {
                    if p.is_dir() {
                        for f in self.scan_dir(p) {
                            self.maybe_incomplete(&f);
                        }
                    } else {
                        self.maybe_incomplete(p);
                    }
                }
            }
            EventKind::Access(_) => {}
        }
    }

    /// Pending files unchanged for the settle time are complete.
    pub fn settle_tick(&mut self, out: &mut Vec<PathBuf>) {
        let now = Instant::now();
        let paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for path in paths {
            match self.candidate(&path) {
                None => {
                    self.pending.remove(&path);
                }
                Some(st) => {
                    let p = self.pending.get_mut(&path).expect("listed above");
                    if p.stamp != st {
                        p.stamp = st;
                        p.since = now;
                    } else if now.duration_since(p.since) >= self.settle {
                        self.complete(&path, out);
                    }
                }
            }
        }
    }

    /// Lets a file be taken again (it was not loaded).
    pub fn retry(&mut self, path: &Path) {
        self.queued.remove(path);
    }

    /// Files waiting to settle.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Events from the OS, with a flag raised when they were dropped.
struct EventSource {
    _watcher: Box<dyn notify::Watcher + Send>,
    rx: mpsc::Receiver<Event>,
    overflowed: Arc<AtomicBool>,
}

/// Queue of OS events between the notify thread and the watcher task. When it is full,
/// events are dropped and a rescan is due instead.
const EVENT_QUEUE: usize = 8192;

fn start_events(settings: &WatchSettings, root: &Path) -> notify::Result<EventSource> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    let handler = move |res: notify::Result<Event>| match res {
        Ok(event) => {
            if event.need_rescan() || tx.try_send(event).is_err() {
                flag.store(true, Ordering::Relaxed);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "File event error; a rescan will follow");
            flag.store(true, Ordering::Relaxed);
        }
    };
    let mode = if settings.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    let mut watcher: Box<dyn notify::Watcher + Send> = match settings.mode {
        WatchMode::Events => Box::new(notify::RecommendedWatcher::new(
            handler,
            notify::Config::default(),
        )?),
        WatchMode::Poll => Box::new(notify::PollWatcher::new(
            handler,
            notify::Config::default()
                .with_poll_interval(Duration::from_millis(settings.poll_interval_ms.max(10))),
        )?),
    };
    watcher.watch(root, mode)?;
    Ok(EventSource {
        _watcher: watcher,
        rx,
        overflowed,
    })
}

/// Runs discovery until `shutdown`: queues complete files on `jobs`. `started` fires once the
/// start-up scan is queued (the daemon then reports READY to systemd).
pub async fn run(
    settings: WatchSettings,
    excluded: Vec<PathBuf>,
    jobs: mpsc::Sender<FileJob>,
    mut feedback: mpsc::UnboundedReceiver<Feedback>,
    started: tokio::sync::oneshot::Sender<()>,
    health: Arc<crate::telemetry::Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the watched folder {}: {e}",
            settings.dir.display()
        )
    })?;
    let mut discovery = Discovery::new(&settings, &settings.dir, &excluded)?;
    // Watch before scanning, so that nothing landing in between is missed.
    let events = start_events(&settings, discovery.root()).map_err(|e| {
        anyhow::anyhow!(
            "cannot watch {} ({:?} mode): {e}",
            discovery.root().display(),
            settings.mode
        )
    })?;
    let mut events = Some(events);
    health.set_watcher(true);
    let initial = discovery.startup();
    tracing::info!(dir = %discovery.root().display(), files = initial.len(), waiting = discovery.pending_len(), mode = ?settings.mode, "Watching folder");
    // Ready once the scan is done: a large backlog is then loaded while the daemon counts as
    // started (systemd would otherwise time the start-up out).
    let _ = started.send(());
    if !queue_all(&jobs, initial, &shutdown).await {
        return Ok(());
    }

    let tick_every = Duration::from_millis((settings.settle_ms / 4).clamp(20, 250));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rescan_every = Duration::from_secs(settings.rescan_secs.max(1));
    let mut rescan =
        tokio::time::interval_at(tokio::time::Instant::now() + rescan_every, rescan_every);
    let mut ready = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = async {
                match events.as_mut() {
                    Some(e) => e.rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(event) = event else { break };
                tracing::trace!(?event, "File event");
                discovery.on_event(&event, &mut ready);
            }
            Some(fb) = feedback.recv() => match fb {
                Feedback::Retry(p) => discovery.retry(&p),
            },
            _ = tick.tick() => {
                let present = discovery.root().is_dir();
                match (&events, present) {
                    (Some(_), false) => {
                        tracing::warn!(dir = %discovery.root().display(), "The watched folder is gone; not ready until it is back");
                        events = None;
                        health.set_watcher(false);
                    }
                    (None, true) => match start_events(&settings, discovery.root()) {
                        Ok(e) => {
                            events = Some(e);
                            health.set_watcher(true);
                            // Forget what the old folder held, then take what the new one does.
                            discovery.rescan();
                            let found = discovery.startup();
                            tracing::info!(dir = %discovery.root().display(), files = found.len(), "The watched folder is back; watching it again");
                            ready.extend(found);
                        }
                        Err(e) => tracing::debug!(error = %e, "Cannot watch the folder yet"),
                    },
                    _ => {}
                }
                if let Some(e) = &events
                    && e.overflowed.swap(false, Ordering::Relaxed)
                {
                    tracing::warn!("File events were lost; rescanning the folder");
                    discovery.rescan();
                }
                discovery.settle_tick(&mut ready);
            }
            _ = rescan.tick(), if events.is_some() => {
                discovery.rescan();
            }
        }
        if !ready.is_empty() && !queue_all(&jobs, std::mem::take(&mut ready), &shutdown).await {
            break;
        }
    }
    health.set_watcher(false);
    Ok(())
}

async fn queue_all(
    jobs: &mpsc::Sender<FileJob>,
    paths: Vec<PathBuf>,
    shutdown: &CancellationToken,
) -> bool {
    for path in paths {
        tracing::info!(file = %path.display(), "Taking file");
        metrics::counter!(m::FILES_DISCOVERED).increment(1);
        metrics::gauge!(m::QUEUE_DEPTH, m::QUEUE => m::QUEUE_FILES).increment(1.0);
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            sent = jobs.send(FileJob::new(path)) => if sent.is_err() { return false },
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(settle_ms: u64) -> WatchSettings {
        WatchSettings {
            settle_ms,
            ..WatchSettings::default()
        }
    }

    #[test]
    fn ignores_temporary_names() {
        for n in [".x.csv", "a.csv.tmp", "a.csv.part", "a.csv~"] {
            assert!(is_ignored_name(Path::new(n)), "{n}");
        }
        assert!(!is_ignored_name(Path::new("dir/2018-11-01-events.csv")));
    }

    #[test]
    fn startup_takes_old_files_and_waits_for_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("a.csv");
        std::fs::write(&old, "x").unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        std::fs::write(dir.path().join("b.csv"), "y").unwrap();
        std::fs::write(dir.path().join("c.txt"), "z").unwrap();
        std::fs::write(dir.path().join(".d.csv"), "z").unwrap();
        let mut d = Discovery::new(&settings(10_000), dir.path(), &[]).unwrap();
        let got = d.startup();
        assert_eq!(got, vec![d.root().join("a.csv")]);
        assert_eq!(d.pending_len(), 1);
        // Nothing more on a rescan: a.csv is queued unchanged, b.csv still settling.
        let mut out = Vec::new();
        d.rescan();
        d.settle_tick(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn settled_file_is_taken_once_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Discovery::new(&settings(0), dir.path(), &[]).unwrap();
        let p = d.root().join("x.csv");
        std::fs::write(&p, "1").unwrap();
        d.rescan();
        let mut out = Vec::new();
        d.settle_tick(&mut out);
        assert_eq!(out, vec![p.clone()]);
        out.clear();
        d.rescan();
        d.settle_tick(&mut out);
        assert!(out.is_empty(), "{out:?}");
        std::fs::write(&p, "12").unwrap();
        d.rescan();
        d.settle_tick(&mut out);
        assert_eq!(out, vec![p]);
    }

    #[test]
    fn symlink_outside_root_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("secret.csv");
        std::fs::write(&target, "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link.csv")).unwrap();
        let inside = dir.path().join("real.csv");
        std::fs::write(&inside, "x").unwrap();
        std::os::unix::fs::symlink(&inside, dir.path().join("alias.csv")).unwrap();
        let mut d = Discovery::new(&settings(0), dir.path(), &[]).unwrap();
        let mut out = Vec::new();
        for name in ["link.csv", "alias.csv", "real.csv"] {
            d.complete(&d.root().join(name), &mut out);
        }
        let names: Vec<_> = out
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, vec!["alias.csv", "real.csv"]);
    }

    #[test]
    fn excluded_and_hidden_folders_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("done")).unwrap();
        std::fs::write(dir.path().join("done/a.csv"), "x").unwrap();
        std::fs::write(dir.path().join("b.csv"), "x").unwrap();
        std::fs::create_dir(dir.path().join(".staging")).unwrap();
        std::fs::write(dir.path().join(".staging/c.csv"), "x").unwrap();
        let d = Discovery::new(&settings(0), dir.path(), &[dir.path().join("done")]).unwrap();
        let names: Vec<_> = d
            .scan()
            .into_iter()
            .filter_map(|p| d.candidate(&p).map(|_| p))
            .collect();
        assert_eq!(names, vec![d.root().join("b.csv")]);
    }
}
