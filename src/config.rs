//! Settings: what every stage of the flow reads, loaded once at start-up.
//!
//! Layers, lowest first: the built-in defaults in this file ← `config/default.toml` (if present
//! in the working directory) ← `--config FILE` ← environment `SPARKIFY_<SECTION>__<KEY>` ←
//! `--set section.key=value` on the command line. Unknown keys and bad values are refused with
//! a message that names the key and the expected form, before any work starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override settings (`SPARKIFY_EMBEDDED__PATH`).
pub const ENV_PREFIX: &str = "SPARKIFY";
/// The shipped defaults file, read from the working directory when it exists.
pub const DEFAULT_FILE: &str = "config/default.toml";

/// A configuration problem found before anything ran.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, variable or override could not be read or did not match the settings.
    #[error("configuration: {0}")]
    Load(config::ConfigError),
    /// A value was read but is outside what the setting accepts.
    #[error("configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    /// A `--set` argument was not `section.key=value`.
    #[error("configuration: `--set {0}` is not of the form section.key=value")]
    BadOverride(String),
    /// A `SPARKIFY_<SECTION>__<KEY>` variable whose name or value is not UTF-8.
    #[error(
        "configuration: environment variable {name} is not valid UTF-8 (its {part}); \
         settings are text"
    )]
    NotUnicode { name: String, part: &'static str },
}

/// A setting with a fixed set of values, read from and written as its lowercase name, whose
/// error names every accepted value.
macro_rules! choice {
    (pub enum $name:ident (default $default:ident) {
        $( $(#[$doc:meta])* $variant:ident = $text:literal, )+
    }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $( $(#[$doc])* $variant, )+ }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl $name {
            /// Every accepted value.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err(format!(
                        "{other:?} is not one of: {}",
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

// Not `#[from]`: that would make the loader's error both the message and its source, and
// error reports print the chain, so the text would appear twice.
impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}

/// Every setting of the program.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Which store receives the tables.
    pub store: StoreSettings,
    /// The embedded SQLite store (used when `store.kind = "embedded"`).
    pub embedded: EmbeddedSettings,
    /// The Cassandra / ScyllaDB cluster (used when `store.kind = "cassandra"`).
    pub cassandra: CassandraSettings,
    /// Where rejected rows are written.
    pub rejects: RejectsSettings,
    /// How input files are parsed.
    pub extract: ExtractSettings,
    /// How parsed values are cleaned.
    pub transform: TransformSettings,
    /// Concurrency and memory bounds of the pipeline.
    pub pipeline: PipelineSettings,
    /// The watched folder (`sparkify run`).
    pub watch: WatchSettings,
    /// Logs, metrics and health endpoints.
    pub telemetry: TelemetrySettings,
}

choice! {
    pub enum StoreKind (default Embedded) {
        /// A local SQLite file with the same three tables; no server needed.
        Embedded = "embedded",
        /// An Apache Cassandra or ScyllaDB cluster through the `scylla` driver.
        Cassandra = "cassandra",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `embedded` (default) or `cassandra`.
    pub kind: StoreKind,
    /// How long a one-shot command (`ingest`) keeps retrying writes that fail (a full disk, a
    /// locked database, a cluster outage) before it gives up with exit 3. Three minutes ride
    /// out a restarting node or an analyst's long transaction; the daemon never gives up.
    pub give_up_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            kind: StoreKind::Embedded,
            give_up_secs: 180,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSettings {
    /// The SQLite database file; created with its tables on first use.
    pub path: PathBuf,
    /// Plays written per transaction at most. Large transactions sorted by key are what make
    /// SQLite fast; the writer commits sooner when its queue runs dry (waiting at most 5 ms
    /// while a file is still being read), so a lone small file is never held back.
    pub transaction_rows: usize,
    /// How long a writer waits for a lock held by another process (a reader such as `sqlite3`).
    pub busy_timeout_ms: u64,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("sparkify.db"),
            transaction_rows: 100_000,
            busy_timeout_ms: 5_000,
        }
    }
}

choice! {
    pub enum Compression (default None) {
        None = "none",
        Lz4 = "lz4",
        Snappy = "snappy",
    }
}

choice! {
    pub enum ReplicationStrategy (default SimpleStrategy) {
        /// One replication factor for the whole cluster: development and single-DC clusters.
        SimpleStrategy = "SimpleStrategy",
        /// A replication factor per datacenter: what production clusters use.
        NetworkTopologyStrategy = "NetworkTopologyStrategy",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraSettings {
    /// Contact points, `host:port`. The driver discovers the rest of the cluster from them.
    pub nodes: Vec<String>,
    /// Keyspace holding the three tables and the ledger.
    pub keyspace: String,
    /// Datacenter to prefer (DC-aware load balancing); empty means no preference.
    pub local_dc: String,
    /// Consistency of writes and reads: LOCAL_QUORUM survives one replica down with RF 3.
    pub consistency: String,
    /// How long one request may take before the driver gives up on it.
    pub request_timeout_ms: u64,
    /// How long to wait for a TCP connection to a node.
    pub connect_timeout_ms: u64,
    /// Username for password authentication; empty disables authentication.
    pub username: String,
    /// Password for `username`. Prefer `password_file` or the environment over this file.
    pub password: String,
    /// A file whose first line is the password (Kubernetes secrets, systemd credentials).
    pub password_file: String,
    /// Frame compression: `none`, `lz4` or `snappy`.
    pub compression: Compression,
    /// TLS to the nodes.
    pub tls: TlsSettings,
    /// Create the keyspace and tables when absent. When false, start-up checks that they exist
    /// with the expected columns and keys and refuses to start otherwise.
    pub create_schema: bool,
    /// Replication class used when the keyspace is created.
    pub replication_strategy: ReplicationStrategy,
    /// Replication factor for `SimpleStrategy`.
    pub replication_factor: u32,
    /// Replication factor per datacenter for `NetworkTopologyStrategy`, e.g. `{ dc1 = 3 }`.
    pub datacenters: BTreeMap<String, u32>,
    /// Let the driver read schema metadata. Some emulators cannot serve it.
    pub fetch_schema_metadata: bool,
    /// Refresh metadata after DDL when waiting for schema agreement. Some emulators cannot.
    pub refresh_metadata_after_ddl: bool,
    /// Requests outstanding at most, shared by every writer. Bounds memory on the cluster side
    /// and in the driver; 256 keeps a few nodes busy without queueing on the coordinator.
    pub max_in_flight: usize,
    /// Rows of one partition sent as one UNLOGGED batch at most.
    pub max_batch_rows: usize,
    /// First delay before retrying a failed request; doubles each attempt.
    pub retry_initial_ms: u64,
    /// Cap on the delay between retries; retries of idempotent writes go on until they succeed.
    pub retry_max_ms: u64,
}

impl Default for CassandraSettings {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".to_string()],
            keyspace: "sparkify".to_string(),
            local_dc: String::new(),
            consistency: "LOCAL_QUORUM".to_string(),
            request_timeout_ms: 12_000,
            connect_timeout_ms: 5_000,
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            compression: Compression::None,
            tls: TlsSettings::default(),
            create_schema: true,
            replication_strategy: ReplicationStrategy::SimpleStrategy,
            replication_factor: 1,
            datacenters: BTreeMap::new(),
            fetch_schema_metadata: true,
            refresh_metadata_after_ddl: true,
            max_in_flight: 256,
            max_batch_rows: 100,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Connect with TLS.
    pub enabled: bool,
    /// PEM file of the CA that signed the nodes' certificates; empty uses the system roots.
    pub ca_file: String,
    /// PEM client certificate for mutual TLS; empty for none.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RejectsSettings {
    /// Folder for `<path>.<hash>.rejects.csv`, one per input file (and content) that had
    /// rejected rows; see `rejects`.
    pub dir: PathBuf,
}

impl Default for RejectsSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("rejects"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractSettings {
    /// A record longer than this is rejected. Real rows are under 1 KiB; this bounds the memory
    /// one broken row (an unclosed quote, binary junk) can take.
    pub max_record_bytes: usize,
    /// Read buffer per open file. Large buffers let the CSV parser run at full speed.
    pub read_buffer_bytes: usize,
    /// A record with more fields than this is rejected, and a header with more columns fails
    /// its file. Real files have 17 columns; each field costs 8 bytes of bookkeeping beside its
    /// text, so this bounds what a row of nothing but commas can take.
    pub max_fields: usize,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        Self {
            max_record_bytes: 64 * 1024,
            read_buffer_bytes: 256 * 1024,
            max_fields: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSettings {
    /// Turn text that was UTF-8-encoded twice or more back into what was meant, when the
    /// repair is unambiguous (`BjÃƒÂ¶rk` → `Björk`). False keeps text byte for byte.
    pub repair_mojibake: bool,
}

impl Default for TransformSettings {
    fn default() -> Self {
        Self {
            repair_mojibake: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Files parsed at the same time. Parsing is cheap next to writing; two keep the writers fed.
    pub readers: usize,
    /// Writer tasks. The embedded store always writes through one (SQLite has one writer);
    /// for Cassandra each writer sends its chunk's requests concurrently.
    pub writers: usize,
    /// Song plays per chunk handed from a reader to the writers.
    pub chunk_rows: usize,
    /// Files waiting to be read at most. The watcher waits when this is full.
    pub file_queue: usize,
    /// Chunks waiting to be written at most. Readers wait when this is full, so memory stays
    /// at about `chunk_queue × chunk_rows` plays whatever the size or number of files.
    pub chunk_queue: usize,
    /// On SIGTERM/SIGINT, how long in-flight chunks may take to finish before exiting anyway.
    pub shutdown_timeout_secs: u64,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            readers: 2,
            writers: 4,
            chunk_rows: 2_048,
            file_queue: 64,
            chunk_queue: 32,
            shutdown_timeout_secs: 30,
        }
    }
}

choice! {
    pub enum WatchMode (default Events) {
        /// Kernel file events (inotify): instant, for local disks.
        Events = "events",
        /// Periodic polling: for NFS/SMB mounts, where kernel events do not arrive.
        Poll = "poll",
    }
}

choice! {
    pub enum AfterIngest (default Keep) {
        /// Leave loaded files where they are (the ledger remembers them).
        Keep = "keep",
        /// Move loaded files to `done_dir`.
        Move = "move",
        /// Delete loaded files.
        Delete = "delete",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSettings {
    /// The folder other programs drop event files into.
    pub dir: PathBuf,
    /// File names to take (glob on the name, not the path).
    pub pattern: String,
    /// Also watch subfolders.
    pub recursive: bool,
    /// `events` (inotify) or `poll` (for network filesystems).
    pub mode: WatchMode,
    /// How often the poll backend looks at the folder.
    pub poll_interval_ms: u64,
    /// A file whose size and modification time have not changed for this long is complete,
    /// for writers that never close it in view of the watcher (poll mode, network copies).
    pub settle_ms: u64,
    /// Full rescan period: the safety net for lost OS events (queue overflow, NFS).
    pub rescan_secs: u64,
    /// What to do with a loaded file: `keep`, `move` (to `done_dir`) or `delete`.
    pub after_ingest: AfterIngest,
    /// Where loaded files go with `after_ingest = "move"`.
    pub done_dir: PathBuf,
    /// Where files that failed as a whole go (missing columns, unreadable); empty keeps them.
    pub failed_dir: PathBuf,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("event_data"),
            pattern: "*.csv".to_string(),
            recursive: true,
            mode: WatchMode::Events,
            poll_interval_ms: 1_000,
            settle_ms: 2_000,
            rescan_secs: 60,
            after_ingest: AfterIngest::Keep,
            done_dir: PathBuf::from("done"),
            failed_dir: PathBuf::new(),
        }
    }
}

choice! {
    pub enum LogFormat (default Auto) {
        /// Text on a terminal, JSON otherwise.
        Auto = "auto",
        /// Human-readable lines.
        Text = "text",
        /// One JSON object per line, for log collectors.
        Json = "json",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `auto`, `text` or `json`.
    pub log_format: LogFormat,
    /// Log filter (`info`, `sparkify=debug`, ...). `RUST_LOG` wins when set.
    pub log_level: String,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoint; empty disables it.
    pub http_addr: String,
    /// How often the daemon checks that the store answers, so `/readyz` shows an outage even
    /// when no file is being loaded.
    pub readiness_probe_ms: u64,
    /// HTTP connections open at once at most; a connection over the cap is closed at once.
    /// Scrapers and probes need a handful; the cap keeps a flood of clients from using up the
    /// file descriptors that loading needs.
    pub http_max_connections: usize,
    /// A connection that has not sent a complete request head this long after connecting (or
    /// after its previous response) is closed, so idle keep-alive and slowloris clients give
    /// their slot back. Probes and scrapers send their request at once.
    pub http_header_timeout_ms: u64,
    /// The longest any connection may stay open, whatever it does (a client that stops reading
    /// its response, or trickles a body). Scrapers simply connect again.
    pub http_connection_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_level: "info".to_string(),
            http_addr: "127.0.0.1:9108".to_string(),
            readiness_probe_ms: 2_000,
            http_max_connections: 64,
            http_header_timeout_ms: 5_000,
            http_connection_timeout_ms: 60_000,
        }
    }
}

/// Where the settings come from, besides the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--set key=value` pairs, highest precedence.
    pub overrides: Vec<String>,
    /// Environment to read instead of the process's (tests).
    pub env: Option<BTreeMap<String, String>>,
    /// Skip `config/default.toml` in the working directory.
    pub skip_default_file: bool,
}

impl Settings {
    /// Loads and checks the settings from every layer.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if !sources.skip_default_file && Path::new(DEFAULT_FILE).is_file() {
            builder = builder.add_source(config::File::with_name(DEFAULT_FILE));
        }
        if let Some(file) = &sources.file {
            builder = builder.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Only SPARKIFY_<SECTION>__<KEY> names are settings (SPARKIFY_CONFIG, for one, is the
        // --config flag). Values stay text: serde turns them into numbers or booleans where a
        // setting wants one, so a username such as "007" is not read as the number 7.
        let vars: std::collections::HashMap<String, String> = match &sources.env {
            Some(vars) => vars.clone().into_iter().collect(),
            None => process_env()?,
        };
        let prefix = format!("{ENV_PREFIX}_");
        let vars: std::collections::HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k[prefix.len()..].contains("__"))
            .collect();
        let nodes_var = format!("{prefix}CASSANDRA__NODES");
        let nodes: Option<Vec<String>> = vars.get(&nodes_var).map(|v| {
            v.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        });
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        );
        if let Some(nodes) = nodes {
            builder = builder.set_override("cassandra.nodes", nodes)?;
        }
        for pair in &sources.overrides {
            let (key, value) = pair
                .split_once('=')
                .filter(|(k, _)| k.contains('.'))
                .ok_or_else(|| ConfigError::BadOverride(pair.clone()))?;
            builder = builder.set_override(key.trim(), value.trim())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every numeric setting with its value; [`BOUNDS`] has the range of each.
    fn numbers(&self) -> Vec<(&'static str, u64)> {
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
        if globset::Glob::new(&self.watch.pattern).is_err() {
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

    /// The effective settings as TOML, with secrets masked (`sparkify config show`).
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.cassandra.password.is_empty() {
            shown.cassandra.password = "********".into();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
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

/// The process's `SPARKIFY_*` variables. Other variables are never looked at, so one that is
/// not UTF-8 cannot stop start-up; a setting variable that is not UTF-8 is refused by name.
fn process_env() -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}_");
    let mut vars = std::collections::HashMap::new();
    for (name, value) in std::env::vars_os() {
        let bytes = name.as_encoded_bytes();
        if !bytes.starts_with(prefix.as_bytes()) {
            continue;
        }
        let is_setting = bytes[prefix.len()..].windows(2).any(|w| w == b"__");
        match (name.to_str(), value.to_str()) {
            (Some(n), Some(v)) => {
                vars.insert(n.to_string(), v.to_string());
            }
            // SPARKIFY_CONFIG, for one, is a path and not read here.
            _ if !is_setting => {}
            (n, _) => {
                return Err(ConfigError::NotUnicode {
                    name: name.to_string_lossy().into_owned(),
                    part: if n.is_none() { "name" } else { "value" },
                });
            }
        }
    }
    Ok(vars)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], overrides: &[&str]) -> Result<Settings, ConfigError> {
        Settings::load(&Sources {
            file: None,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            env: Some(
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            skip_default_file: true,
        })
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = load(
            &[
                ("SPARKIFY_EMBEDDED__PATH", "/tmp/x.db"),
                ("SPARKIFY_PIPELINE__READERS", "3"),
                ("SPARKIFY_CASSANDRA__NODES", "a:9042,b:9042"),
                ("SPARKIFY_TRANSFORM__REPAIR_MOJIBAKE", "false"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.embedded.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(s.pipeline.readers, 3);
        assert_eq!(s.cassandra.nodes, vec!["a:9042", "b:9042"]);
        assert!(!s.transform.repair_mojibake);
    }

    #[test]
    fn environment_text_stays_text_and_other_names_are_ignored() {
        let s = load(
            &[
                ("SPARKIFY_CASSANDRA__USERNAME", "007"),
                ("SPARKIFY_CASSANDRA__KEYSPACE", "1e5"),
                ("SPARKIFY_CONFIG", "/etc/sparkify/sparkify.toml"),
                ("SPARKIFY_EXTRACT__MAX_RECORD_BYTES", "4096"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.cassandra.username, "007");
        assert_eq!(s.cassandra.keyspace, "1e5");
        assert_eq!(s.extract.max_record_bytes, 4096);
    }

    #[test]
    fn set_overrides_win_over_environment() {
        let s = load(
            &[("SPARKIFY_PIPELINE__READERS", "3")],
            &["pipeline.readers=5"],
        )
        .unwrap();
        assert_eq!(s.pipeline.readers, 5);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&[("SPARKIFY_EMBEDDED__PAHT", "x")], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("paht"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_and_form() {
        let err = load(&[("SPARKIFY_PIPELINE__READERS", "many")], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pipeline.readers"), "{msg}");
        let err = load(&[], &["pipeline.readers=0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration: `pipeline.readers` is 0; expected an integer from 1 to 64"
        );
        let err = load(&[], &["store.kind=postgres"]).unwrap_err();
        assert!(err.to_string().contains("embedded"), "{err}");
    }

    #[test]
    fn http_addr_takes_ip_or_host_name_with_a_port() {
        for ok in [
            "127.0.0.1:9108",
            "0.0.0.0:0",
            "[::1]:9108",
            "localhost:9108",
            "metrics-0.svc:80",
            "",
        ] {
            let s = load(&[], &[&format!("telemetry.http_addr={ok}")]);
            assert!(s.is_ok(), "{ok}: {:?}", s.err());
        }
        for bad in [
            "localhost",
            "localhost:",
            ":9108",
            "127.0.0.1:99999",
            "a b:9108",
            "host:port",
        ] {
            let err = load(&[], &[&format!("telemetry.http_addr={bad}")]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("telemetry.http_addr") && msg.contains("host:port"),
                "{bad}: {msg}"
            );
        }
    }

    /// Every integer in the settings, by dotted key (`cassandra.datacenters.dc1`).
    fn integer_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            toml::Value::Integer(_) => out.push(prefix.to_string()),
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    integer_keys(v, &key, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_numeric_setting_has_a_range_that_holds_its_default() {
        let mut s = Settings::default();
        s.cassandra.datacenters.insert("dc1".into(), 3);
        let mut keys = Vec::new();
        integer_keys(&toml::Value::try_from(&s).unwrap(), "", &mut keys);
        let keys: Vec<String> = keys
            .into_iter()
            .map(|k| {
                if k.starts_with("cassandra.datacenters.") {
                    "cassandra.datacenters".to_string()
                } else {
                    k
                }
            })
            .collect();
        let mut bounded: Vec<&str> = BOUNDS.iter().map(|(k, _, _)| *k).collect();
        let mut listed: Vec<&str> = keys.iter().map(String::as_str).collect();
        bounded.sort();
        listed.sort();
        assert_eq!(
            listed, bounded,
            "a numeric setting without a range, or the reverse"
        );
        let numbers: Vec<&str> = s.numbers().iter().map(|(k, _)| *k).collect();
        assert_eq!(numbers.len() + 1, BOUNDS.len(), "numbers() misses a key");
        for (key, value) in s.numbers() {
            let (min, max) = bounds_of(key);
            assert!(min <= value && value <= max, "{key} default {value}");
        }
        assert!(s.validate().is_ok());
    }

    #[test]
    fn values_outside_a_range_name_key_value_and_range() {
        for (key, min, max) in BOUNDS {
            if *key == "cassandra.datacenters" {
                continue;
            }
            let over = format!("{key}={}", max + 1);
            let err = load(&[], &[&over]).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "configuration: `{key}` is {}; expected an integer from {min} to {max}",
                    max + 1
                )
            );
            if *min > 0 {
                let under = format!("{key}={}", min - 1);
                let err = load(&[], &[&under]).unwrap_err().to_string();
                assert!(err.contains(&format!("from {min} to {max}")), "{err}");
            }
            let at_max = load(&[], &[&format!("{key}={max}")]);
            assert!(at_max.is_ok(), "{key}={max}: {:?}", at_max.err());
        }
        let err = load(&[], &["pipeline.chunk_rows=18446744073709551615"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("18446744073709551615") && err.contains("1 to 65536"),
            "{err}"
        );
        let err = load(
            &[],
            &["pipeline.chunk_rows=65536", "pipeline.chunk_queue=1024"],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at most 4194304"), "{err}");
        let err = load(
            &[],
            &[
                "cassandra.replication_strategy=NetworkTopologyStrategy",
                "cassandra.datacenters.dc1=0",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dc1 = 0") && err.contains("from 1 to 100"),
            "{err}"
        );
    }

    #[test]
    fn log_level_must_be_a_level_or_a_filter() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,sparkify=debug",
            "sparkify::pipeline=trace",
        ] {
            assert!(
                load(&[], &[&format!("telemetry.log_level={ok}")]).is_ok(),
                "{ok}"
            );
        }
        for bad in ["loud", "", "info,loud", "sparkify=loud", "info,,debug"] {
            let err = load(&[], &[&format!("telemetry.log_level={bad}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("`telemetry.log_level`"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_embedded_store_needs_a_file_path() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().display().to_string();
        for bad in [
            "",
            " ",
            ":memory:",
            "file:x.db?mode=memory",
            "data/",
            folder.as_str(),
        ] {
            let err = load(&[], &[&format!("embedded.path={bad}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("`embedded.path`"), "{bad:?}: {err}");
        }
        assert!(load(&[], &[&format!("embedded.path={folder}/plays.db")]).is_ok());
        // A Cassandra configuration does not use the file.
        assert!(load(&[], &["store.kind=cassandra", "embedded.path=:memory:"]).is_ok());
    }

    #[test]
    fn masked_output_hides_password() {
        let mut s = Settings::default();
        s.cassandra.password = "hunter2".into();
        let shown = s.to_masked_toml();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("********"));
    }
}
