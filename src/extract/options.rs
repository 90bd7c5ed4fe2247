//! How files are read: the bounds and options from `[extract]`.

/// How files are read.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Records longer than this are rejected.
    pub max_record_bytes: usize,
    /// Parser buffer size.
    pub read_buffer_bytes: usize,
    /// Records with more fields than this are rejected; headers with more columns fail.
    pub max_fields: usize,
    /// A compressed file that expands past this many bytes fails.
    pub max_decompressed_bytes: u64,
    /// Also keep gender, level and location.
    pub keep_profile: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        let d = crate::config::ExtractSettings::default();
        Self {
            max_record_bytes: d.max_record_bytes,
            read_buffer_bytes: d.read_buffer_bytes,
            max_fields: d.max_fields,
            max_decompressed_bytes: d.max_decompressed_bytes,
            keep_profile: false,
        }
    }
}

impl From<&crate::config::ExtractSettings> for ExtractOptions {
    fn from(s: &crate::config::ExtractSettings) -> Self {
        Self {
            max_record_bytes: s.max_record_bytes,
            read_buffer_bytes: s.read_buffer_bytes,
            max_fields: s.max_fields,
            max_decompressed_bytes: s.max_decompressed_bytes,
            keep_profile: false,
        }
    }
}
