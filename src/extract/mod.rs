//! Extract: stream one event CSV file and turn its rows into validated song plays.
//!
//! Sits between discovery (a file job from `watch` or the `ingest` command) and the writers.
//! The file is never loaded whole: `csv_async` parses it through a fixed-size buffer and each
//! record is looked at once. A gzip or zstd file (told by its first bytes, whatever its name) is
//! decompressed on the way, in the same stream, so it reads exactly like the plain file: same
//! lines, rows, rejects and repairs. Columns are found by header name (case, surrounding spaces and a
//! UTF-8 BOM do not matter; order and extra columns do not either). Every record ends up as
//! exactly one of: a song play, a skipped non-song event, or a [`Reject`] with its line, column,
//! value and reason. Only a file-level problem (unreadable, no header, missing columns,
//! compressed data that is damaged, cut short or expands past its bound) stops the file.
//!
//! The parts, in the order a file's bytes go through them: [`listing`] (which files are
//! inputs), [`source`] (the file and its decoder), [`guard`] (the record-size bound), [`reader`]
//! (the CSV stream and its batches), [`header`] (the columns), [`validate`] (each record),
//! with [`types`], [`errors`] and [`options`] the values they share.

mod errors;
mod guard;
mod header;
mod listing;
mod options;
mod reader;
mod source;
mod types;
mod validate;

pub use crate::config::DEFAULT_PATTERN;
pub use errors::*;
pub use header::*;
pub use listing::*;
pub use options::*;
pub use reader::*;
pub use source::*;
pub use types::*;

#[cfg(test)]
mod tests;
