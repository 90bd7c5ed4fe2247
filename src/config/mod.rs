//! Settings: what every stage of the flow reads, loaded once at start-up.
//!
//! Layers, lowest first: the built-in defaults in this file ← `config/default.toml` (if present
//! in the working directory) ← `--config FILE` ← environment `SPARKIFY_<SECTION>__<KEY>` ←
//! `--set section.key=value` on the command line. Unknown keys and bad values are refused with
//! a message that names the key and the expected form, before any work starts.
//!
//! The parts: `sections.rs` (every setting, its default and why), `load.rs` (the layers, and the
//! masked TOML `config show` prints), `validate.rs` (the range of every number and the checks
//! that values which parse can also work).

mod load;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub use load::Sources;
pub use sections::*;
pub use validate::{BOUNDS, MAX_QUEUED_PLAYS, bounds_of, log_filter, parse_consistency};

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

// Not `#[from]`: that would make the loader's error both the message and its source, and
// error reports print the chain, so the text would appear twice.
impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}
