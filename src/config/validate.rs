//! What a value that parses must also be to work: the range of every number, and the checks
//! between settings (a store's path, a consistency level, a log filter, a listener address,
//! folders that must not hold the watched one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::ConfigError;
use super::sections::{AfterIngest, ReplicationStrategy, Settings, StoreKind};

impl Settings {
    /// Every numeric setting with its value; [`BOUNDS`] has the range of each.
    pub(super) fn numbers(&self) -> Vec<(&'static str, u64)> {
        let (e, c, x, p, w, t) = (
            &self.embedded,
            &self.cassandra,
            &self.extract,
            &self.pipeline,
            &self.watch,
            &self.telemetry,
        );
        vec![
            ("store.give_up_secs", self.store.give_up_secs),
            ("embedded.transaction_rows", e.transaction_rows as u64),
            ("embedded.busy_timeout_ms", e.busy_timeout_ms),
            ("cassandra.request_timeout_ms", c.request_timeout_ms),
            ("cassandra.connect_timeout_ms", c.connect_timeout_ms),
            (
                "cassandra.replication_factor",
                u64::from(c.replication_factor),
            ),
            ("cassandra.max_in_flight", c.max_in_flight as u64),
            ("cassandra.max_batch_rows", c.max_batch_rows as u64),
            ("cassandra.retry_initial_ms", c.retry_initial_ms),
            ("cassandra.retry_max_ms", c.retry_max_ms),
            ("extract.max_record_bytes", x.max_record_bytes as u64),
            ("extract.read_buffer_bytes", x.read_buffer_bytes as u64),
            ("extract.max_fields", x.max_fields as u64),
            ("extract.max_decompressed_bytes", x.max_decompressed_bytes),
            ("pipeline.readers", p.readers as u64),
            ("pipeline.writers", p.writers as u64),
            ("pipeline.chunk_rows", p.chunk_rows as u64),
            ("pipeline.file_queue", p.file_queue as u64),
            ("pipeline.chunk_queue", p.chunk_queue as u64),
            ("pipeline.shutdown_timeout_secs", p.shutdown_timeout_secs),
            ("watch.poll_interval_ms", w.poll_interval_ms),
            ("watch.settle_ms", w.settle_ms),
            ("watch.rescan_secs", w.rescan_secs),
            ("telemetry.readiness_probe_ms", t.readiness_probe_ms),
            (
                "telemetry.http_max_connections",
                t.http_max_connections as u64,
            ),
            ("telemetry.http_header_timeout_ms", t.http_header_timeout_ms),
            (
                "telemetry.http_connection_timeout_ms",
                t.http_connection_timeout_ms,
            ),
        ]
    }

    /// Checks values that deserialize fine but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in self.numbers() {
            check_range(key, value)?;
        }
        for (dc, factor) in &self.cassandra.datacenters {
            check_range("cassandra.datacenters", u64::from(*factor)).map_err(|_| {
                let (min, max) = bounds_of("cassandra.datacenters");
                ConfigError::Invalid {
                    key: "cassandra.datacenters",
                    problem: format!(
                        "has {dc} = {factor}; expected a replication factor from {min} to {max}"
                    ),
                }
            })?;
        }
        let queued = (self.pipeline.chunk_queue as u64) * (self.pipeline.chunk_rows as u64);
        if queued > MAX_QUEUED_PLAYS {
            return Err(ConfigError::Invalid {
                key: "pipeline.chunk_queue",
                problem: format!(
                    "is {} with pipeline.chunk_rows = {}: {queued} song plays could wait in \
                     memory; expected chunk_queue × chunk_rows of at most {MAX_QUEUED_PLAYS}",
                    self.pipeline.chunk_queue, self.pipeline.chunk_rows
                ),
            });
        }
        if self.store.kind == StoreKind::Embedded {
            check_database_path(&self.embedded.path)?;
        }
        log_filter(&self.telemetry.log_level).map_err(|problem| ConfigError::Invalid {
            key: "telemetry.log_level",
            problem,
        })?;
        if self.store.kind == StoreKind::Cassandra && self.cassandra.nodes.is_empty() {
            return Err(ConfigError::Invalid {
                key: "cassandra.nodes",
                problem: "is empty; expected at least one host:port".into(),
            });
        }
        parse_consistency(&self.cassandra.consistency).map_err(|problem| ConfigError::Invalid {
            key: "cassandra.consistency",
            problem,
        })?;
        if self.cassandra.replication_strategy == ReplicationStrategy::NetworkTopologyStrategy
            && self.cassandra.datacenters.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "cassandra.datacenters",
                problem: "is empty; NetworkTopologyStrategy needs a factor per datacenter, \
                          e.g. { dc1 = 3 }"
                    .into(),
            });
        }
        if !self.cassandra.password.is_empty() && !self.cassandra.password_file.is_empty() {
            return Err(ConfigError::Invalid {
                key: "cassandra.password_file",
                problem: "is set together with cassandra.password; expected only one of them"
                    .into(),
            });
        }
        // An empty glob is valid to globset and matches no name: the daemon would watch and
        // `ingest DIR` would read nothing, both without a word.
        if self.watch.pattern.trim().is_empty() || globset::Glob::new(&self.watch.pattern).is_err()
        {
            return Err(ConfigError::Invalid {
                key: "watch.pattern",
                problem: format!(
                    "is {:?}; expected a file-name glob such as *.csv",
                    self.watch.pattern
                ),
            });
        }
        if self.watch.after_ingest == AfterIngest::Move
            && self.watch.done_dir.as_os_str().is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "watch.done_dir",
                problem: "is empty; after_ingest = \"move\" needs a folder".into(),
            });
        }
        if !self.telemetry.http_addr.is_empty() && !is_listen_address(&self.telemetry.http_addr) {
            return Err(ConfigError::Invalid {
                key: "telemetry.http_addr",
                problem: format!(
                    "is {:?}; expected host:port such as 127.0.0.1:9108 or localhost:9108, or \
                     empty to disable",
                    self.telemetry.http_addr
                ),
            });
        }
        Ok(())
    }

    /// The folders sparkify writes to (`watch.done_dir`, `watch.failed_dir`, `rejects.dir`)
    /// are never taken from, so one that is the watched folder or holds it would make the
    /// daemon load nothing. Checked by `config check` and when the daemon starts; paths are
    /// compared made absolute, `..` resolved and symlinks followed as far as they exist.
    pub fn check_folders(&self) -> Result<(), ConfigError> {
        let watched = resolved_path(&self.watch.dir);
        for (key, dir) in [
            ("watch.done_dir", &self.watch.done_dir),
            ("watch.failed_dir", &self.watch.failed_dir),
            ("rejects.dir", &self.rejects.dir),
        ] {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let dir_abs = resolved_path(dir);
            if watched.starts_with(&dir_abs) {
                let what = if watched == dir_abs {
                    "is the watched folder"
                } else {
                    "contains the watched folder"
                };
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!(
                        "is {:?} ({}), which {what} `watch.dir` {:?} ({}): sparkify never takes \
                         files from the folders it writes to, so nothing would be loaded; \
                         expected a folder that does not hold it (beside it, or inside it)",
                        dir.display().to_string(),
                        dir_abs.display(),
                        self.watch.dir.display().to_string(),
                        watched.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Files the settings name that must be readable for the configured store
    /// (`sparkify config check`); one message per problem.
    pub fn check_files(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.store.kind != StoreKind::Cassandra {
            return problems;
        }
        let c = &self.cassandra;
        let mut need = vec![("cassandra.password_file", &c.password_file)];
        if c.tls.enabled {
            need.push(("cassandra.tls.ca_file", &c.tls.ca_file));
            need.push(("cassandra.tls.cert_file", &c.tls.cert_file));
            need.push(("cassandra.tls.key_file", &c.tls.key_file));
        }
        for (key, path) in need {
            if !path.is_empty()
                && let Err(e) = std::fs::File::open(path)
            {
                problems.push(format!("`{key}` is {path:?}, which cannot be read: {e}"));
            }
        }
        if c.tls.cert_file.is_empty() != c.tls.key_file.is_empty() {
            problems.push(
                "`cassandra.tls.cert_file` and `cassandra.tls.key_file` go together; set both or neither"
                    .into(),
            );
        }
        problems
    }
}

/// `path` made absolute with `..` and `.` resolved, through symlinks as far as it exists (the
/// rest of it may not exist yet).
fn resolved_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut lexical = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// The range every numeric setting accepts, inclusive, checked with the other settings before
/// anything runs (exit 2 naming the key, the value and the range). Generous next to the
/// defaults, but no value inside can overflow a duration, size an absurd allocation or make a
/// zero-length timer. `config/default.toml` and the README list the same ranges.
pub const BOUNDS: &[(&str, u64, u64)] = &[
    // A one-shot command waits this long for a failing store at most: a day.
    ("store.give_up_secs", 1, 86_400),
    // Plays one transaction holds in memory before it commits.
    ("embedded.transaction_rows", 1, 1_000_000),
    // SQLite takes the lock wait in milliseconds as a 32-bit number; an hour is plenty.
    ("embedded.busy_timeout_ms", 0, 3_600_000),
    ("cassandra.request_timeout_ms", 1, 3_600_000),
    ("cassandra.connect_timeout_ms", 1, 600_000),
    ("cassandra.replication_factor", 1, 100),
    ("cassandra.datacenters", 1, 100),
    // One connection carries 32,768 streams at most in CQL v4.
    ("cassandra.max_in_flight", 1, 32_768),
    // A BATCH frame counts its statements in 16 bits.
    ("cassandra.max_batch_rows", 1, 65_535),
    ("cassandra.retry_initial_ms", 1, 60_000),
    ("cassandra.retry_max_ms", 1, 3_600_000),
    // 64 MiB: each reader may buffer this much.
    ("extract.max_record_bytes", 256, 67_108_864),
    ("extract.read_buffer_bytes", 4_096, 67_108_864),
    // At least the required columns; at most 800 KB of field bookkeeping per record.
    ("extract.max_fields", 8, 100_000),
    // 1 MiB to 1 PiB of decompressed bytes per compressed file.
    ("extract.max_decompressed_bytes", 1_048_576, 1 << 50),
    // Each reader is a thread with its own buffers.
    ("pipeline.readers", 1, 64),
    ("pipeline.writers", 1, 64),
    ("pipeline.chunk_rows", 1, 65_536),
    ("pipeline.file_queue", 1, 65_536),
    ("pipeline.chunk_queue", 1, 1_024),
    ("pipeline.shutdown_timeout_secs", 0, 3_600),
    ("watch.poll_interval_ms", 10, 3_600_000),
    ("watch.settle_ms", 0, 3_600_000),
    ("watch.rescan_secs", 1, 86_400),
    ("telemetry.readiness_probe_ms", 50, 600_000),
    // Each connection is a file descriptor; the process needs others to load files.
    ("telemetry.http_max_connections", 1, 4_096),
    ("telemetry.http_header_timeout_ms", 100, 600_000),
    ("telemetry.http_connection_timeout_ms", 100, 86_400_000),
];

/// `pipeline.chunk_queue × pipeline.chunk_rows` at most: the song plays that may wait between
/// readers and writers (about 1 GiB of them), whatever each bound allows on its own.
pub const MAX_QUEUED_PLAYS: u64 = 4_194_304;

/// The range of a key of [`BOUNDS`].
pub fn bounds_of(key: &str) -> (u64, u64) {
    BOUNDS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
        .unwrap_or((0, u64::MAX))
}

fn check_range(key: &'static str, value: u64) -> Result<(), ConfigError> {
    let (min, max) = bounds_of(key);
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            key,
            problem: format!("is {value}; expected an integer from {min} to {max}"),
        });
    }
    Ok(())
}

/// The embedded store needs a file it can keep: not empty, not SQLite's in-memory database or
/// a URI (either would lose every load when the process ends), not a folder.
fn check_database_path(path: &Path) -> Result<(), ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        key: "embedded.path",
        problem,
    };
    let text = path.to_string_lossy();
    if text.trim().is_empty() {
        return Err(invalid(
            "is empty; expected the path of a database file such as sparkify.db".into(),
        ));
    }
    if text == ":memory:" || text.starts_with("file:") {
        return Err(invalid(format!(
            "is {text:?}, an in-memory database or SQLite URI, which would forget every load; \
             expected the path of a database file such as sparkify.db"
        )));
    }
    if text.ends_with('/') || path.is_dir() {
        return Err(invalid(format!(
            "is {text:?}, a folder; expected the path of a database file, such as {:?}",
            path.join("sparkify.db")
        )));
    }
    Ok(())
}

/// `ip:port`, `[ipv6]:port` or `name:port`: the forms a listener can be bound to. A name is
/// only looked up when the daemon binds it.
fn is_listen_address(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

/// Checks a consistency level name (`LOCAL_QUORUM`, `quorum`, `ONE`, ...).
pub fn parse_consistency(name: &str) -> Result<scylla::statement::Consistency, String> {
    use scylla::statement::Consistency as C;
    Ok(match name.trim().to_ascii_uppercase().as_str() {
        "ANY" => C::Any,
        "ONE" => C::One,
        "TWO" => C::Two,
        "THREE" => C::Three,
        "QUORUM" => C::Quorum,
        "ALL" => C::All,
        "LOCAL_QUORUM" => C::LocalQuorum,
        "EACH_QUORUM" => C::EachQuorum,
        "LOCAL_ONE" => C::LocalOne,
        other => {
            return Err(format!(
                "is {other:?}; expected one of ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, \
                 EACH_QUORUM, LOCAL_ONE, ANY"
            ));
        }
    })
}

/// Parses a log filter as the logger uses it (`telemetry.log_level`). Stricter than
/// `EnvFilter` alone, which takes a lone word such as `loud` as the name of a module to trace
/// and so silences every other line: each comma-separated part must be a level (`off`,
/// `error`, `warn`, `info`, `debug`, `trace`) or `target=level`.
pub fn log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let expected = "expected a level (off, error, warn, info, debug, trace) or a filter such \
                    as warn,sparkify=debug";
    if spec.trim().is_empty() {
        return Err(format!("is empty; {expected}"));
    }
    for part in spec.split(',').map(str::trim) {
        let is_level = LEVELS.iter().any(|l| part.eq_ignore_ascii_case(l));
        if part.is_empty() || !(is_level || part.contains('=')) {
            return Err(format!("is {spec:?}: {part:?} is not a level; {expected}"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(spec)
        .map_err(|e| format!("is {spec:?}: {e}; {expected}"))
}
