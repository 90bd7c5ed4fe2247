//! Exit codes, the same for every command, and the error that carries one.
//!
//! 0 success; 1 the data had problems (a file failed, rows were rejected under `--strict`,
//! `validate` found something); 2 bad usage or configuration; 3 the store could not be used;
//! 130 interrupted before the work was done.

/// Exit code: the data had problems.
pub const EXIT_DATA: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: the store could not be used.
pub const EXIT_STORE: u8 = 3;
/// Exit code: interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;

/// A failure that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}
