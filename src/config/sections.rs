//! Every setting of the program, section by section: its type, its default and, in its comment,
//! what it does and why the default is what it is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// A compressed file (gzip, zstd) that expands past this many bytes fails: what stops a
    /// small file that decompresses to terabytes. Memory does not depend on it (decompression
    /// streams); 16 GiB is about 100 million events.
    pub max_decompressed_bytes: u64,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        Self {
            max_record_bytes: 64 * 1024,
            read_buffer_bytes: 256 * 1024,
            max_fields: 1_000,
            max_decompressed_bytes: 16 << 30,
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

/// File names taken from a folder by default: plain, gzip and zstd CSV (`watch.pattern`).
pub const DEFAULT_PATTERN: &str = "*.{csv,csv.gz,csv.zst}";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSettings {
    /// The folder other programs drop event files into.
    pub dir: PathBuf,
    /// File names to take (glob on the name, not the path, ignoring case); also what `ingest`,
    /// `validate` and `extract` take from a folder. Plain, gzip and zstd CSV by default: whether
    /// a file is compressed is told by its first bytes, not by its name.
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
            pattern: DEFAULT_PATTERN.to_string(),
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
