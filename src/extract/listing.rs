//! Input listing: which names are event files, which are a producer's unfinished files, and
//! the files under each path given to `ingest`, `validate` or `extract`.

use std::io;
use std::path::{Path, PathBuf};

/// The matcher of a `watch.pattern` glob, on file names, ignoring case (`A.CSV.GZ` is taken).
pub fn input_matcher(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .case_insensitive(true)
        .build()?
        .compile_matcher())
}

/// Names producers use while a file is incomplete: `.name`, `name.tmp`, `name.part`, `name~`.
/// Names are looked at as bytes: a name that is not valid UTF-8 is still a file to load.
pub fn is_ignored_name(path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return true;
    };
    let name = name.as_encoded_bytes();
    name.starts_with(b".")
        || name.ends_with(b".tmp")
        || name.ends_with(b".part")
        || name.ends_with(b"~")
}

/// Logs, once per path, a folder or entry that a scan could not read: an input is never
/// skipped silently.
pub fn warn_unreadable(
    error: &walkdir::Error,
    warned: &std::sync::Mutex<std::collections::HashSet<PathBuf>>,
) {
    let path = error.path().map(Path::to_path_buf).unwrap_or_default();
    let first = warned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.clone());
    if first {
        tracing::warn!(path = %path.display(), error = %error, "Cannot read this part of the folder; files in it are not loaded");
    }
}

/// Lists the files under each path whose names match `pattern` (`watch.pattern`, by default
/// `*.csv`, `*.csv.gz` and `*.csv.zst`; ignoring case). Files are taken as given, whatever their
/// names; folders recursively, sorted by path within each folder so loads are reproducible.
pub fn collect_inputs(paths: &[PathBuf], pattern: &str) -> io::Result<Vec<PathBuf>> {
    let matcher = input_matcher(pattern).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("watch.pattern {pattern:?}: {e}"),
        )
    })?;
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            let warned = std::sync::Mutex::new(std::collections::HashSet::new());
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .follow_links(false)
                .into_iter()
                .filter_map(|e| e.map_err(|e| warn_unreadable(&e, &warned)).ok())
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| matcher.is_match(Path::new(n)))
                        && !is_ignored_name(p)
                })
                .collect();
            found.sort();
            out.extend(found);
        } else if meta.is_file() {
            out.push(p.clone());
        } else {
            // A FIFO, a device (`/dev/zero`), a socket: reading one would wait or never end.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or folder", p.display()),
            ));
        }
    }
    Ok(out)
}
