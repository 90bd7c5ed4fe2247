//! The header: finding the columns a file must have by name.

use std::path::Path;

use super::errors::{FileError, shown_header};
use csv_async::ByteRecord;

/// Columns a file must have, as they are spelled in the real logs.
pub const REQUIRED_COLUMNS: [&str; 8] = [
    "artist",
    "song",
    "length",
    "sessionId",
    "itemInSession",
    "userId",
    "firstName",
    "lastName",
];

/// Positions of the columns used, found from the header.
#[derive(Debug, Clone)]
pub(super) struct Columns {
    /// Header names as written, for messages.
    pub(super) names: Vec<String>,
    pub(super) artist: usize,
    pub(super) song: usize,
    pub(super) length: usize,
    pub(super) session_id: usize,
    pub(super) item_in_session: usize,
    pub(super) user_id: usize,
    pub(super) first_name: usize,
    pub(super) last_name: usize,
    pub(super) page: Option<usize>,
    pub(super) gender: Option<usize>,
    pub(super) level: Option<usize>,
    pub(super) location: Option<usize>,
}

pub(super) fn normalize_header(field: &[u8]) -> String {
    let text = String::from_utf8_lossy(field);
    text.trim_start_matches('\u{feff}')
        .trim()
        .to_ascii_lowercase()
}

impl Columns {
    pub(super) fn from_header(
        path: &Path,
        header: &ByteRecord,
        max_fields: usize,
    ) -> Result<Columns, FileError> {
        if header.len() > max_fields {
            return Err(FileError::TooManyColumns {
                path: path.to_path_buf(),
                columns: header.len(),
                bound: max_fields,
            });
        }
        let names: Vec<String> = header
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_string()
            })
            .collect();
        let normalized: Vec<String> = header.iter().map(normalize_header).collect();
        let find = |name: &str| {
            let lower = name.to_ascii_lowercase();
            normalized.iter().position(|n| *n == lower)
        };
        let missing: Vec<String> = REQUIRED_COLUMNS
            .iter()
            .filter(|c| find(c).is_none())
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(FileError::MissingColumns {
                path: path.to_path_buf(),
                missing,
                found: shown_header(header),
                hint: crate::escape::likely_binary(header.as_slice()),
            });
        }
        let at = |name: &str| find(name).expect("checked above");
        Ok(Columns {
            artist: at("artist"),
            song: at("song"),
            length: at("length"),
            session_id: at("sessionId"),
            item_in_session: at("itemInSession"),
            user_id: at("userId"),
            first_name: at("firstName"),
            last_name: at("lastName"),
            page: find("page"),
            gender: find("gender"),
            level: find("level"),
            location: find("location"),
            names,
        })
    }
}
