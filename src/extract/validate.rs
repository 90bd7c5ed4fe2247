//! One record checked field by field: a song play, a skipped event, or a reject naming its
//! line, column, value and reason.

use super::errors::shown_within;
use super::header::Columns;
use super::options::ExtractOptions;
use super::types::{Profile, SONG_PAGE, SongPlay};
use csv_async::ByteRecord;

/// Field `i`, without the '\r' a CRLF line ending leaves on the last field.
pub(super) fn field(record: &ByteRecord, i: usize) -> &[u8] {
    let f = record.get(i).unwrap_or_default();
    if i + 1 == record.len() {
        f.strip_suffix(b"\r").unwrap_or(f)
    } else {
        f
    }
}

/// Field `i` as text. `whole` is the whole record as text when it is valid UTF-8; a field is
/// then a slice of it, and slicing checks only that the cut falls between characters. A cut
/// inside a character (bytes that are valid only once the fields are joined) and records that
/// are not valid UTF-8 as a whole fall back to checking the field itself, so the result is
/// always the same as `str::from_utf8` on the field.
pub(super) fn field_text<'r>(
    record: &'r ByteRecord,
    whole: Option<&'r str>,
    i: usize,
) -> Result<&'r str, std::str::Utf8Error> {
    match whole.zip(record.range(i)).and_then(|(w, r)| w.get(r)) {
        Some(s) if i + 1 == record.len() => Ok(s.strip_suffix('\r').unwrap_or(s)),
        Some(s) => Ok(s),
        None => std::str::from_utf8(field(record, i)),
    }
}

/// An id written as 1 to 9 plain digits (every id in real files), without the detour through
/// text; anything else (signs, spaces, long or bad values) takes the general path, which also
/// words the rejects.
pub(super) fn plain_id(raw: &[u8]) -> Option<i32> {
    if raw.is_empty() || raw.len() > 9 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Nine digits stay below i32::MAX, so this cannot overflow.
    Some(raw.iter().fold(0i32, |n, &d| n * 10 + i32::from(d - b'0')))
}

/// A line holding nothing but a line ending.
pub(super) fn is_blank_line(record: &ByteRecord) -> bool {
    record.len() == 1 && field(record, 0).is_empty()
}

pub(super) enum Verdict {
    Skip,
    Play(SongPlay),
    Reject {
        column: String,
        value: String,
        reason: String,
    },
}

/// Longest value quoted back in a message.
pub(super) const SHOWN_VALUE_CHARS: usize = 80;

/// A value as quoted back in messages and in the rejects file's `value` column.
pub(super) fn shown(value: &[u8]) -> String {
    shown_within(value, SHOWN_VALUE_CHARS)
}

pub(super) fn classify(
    record: &ByteRecord,
    cols: &Columns,
    options: &ExtractOptions,
    truncated: bool,
    cut_from: usize,
) -> Verdict {
    let size = record.as_slice().len();
    if truncated || size > options.max_record_bytes {
        return Verdict::Reject {
            column: String::new(),
            value: shown(record.as_slice()),
            reason: format!(
                "record is {}{size} bytes long; the bound is {} bytes (extract.max_record_bytes)",
                if truncated { "over " } else { "" },
                options.max_record_bytes
            ),
        };
    }
    if cut_from > 0 {
        return Verdict::Reject {
            column: String::new(),
            value: String::new(),
            reason: format!(
                "has {cut_from} fields; the bound is {} (extract.max_fields) and the header has {}; the rejects file keeps the first {}",
                options.max_fields,
                cols.names.len(),
                record.len()
            ),
        };
    }
    if record.len() != cols.names.len() {
        return Verdict::Reject {
            column: String::new(),
            value: String::new(),
            reason: format!(
                "has {} fields; the header has {}",
                record.len(),
                cols.names.len()
            ),
        };
    }
    let field = |i: usize| field(record, i);
    if let Some(page) = cols.page
        && field(page) != SONG_PAGE.as_bytes()
    {
        return Verdict::Skip;
    }
    if field(cols.artist).is_empty() || field(cols.song).is_empty() {
        return Verdict::Skip;
    }
    // The failing column and why; turned into a reject (with the value) only when one happens.
    struct Bad(usize, String);
    let reject = |i: usize, reason: String| Bad(i, reason);
    // One UTF-8 check of the whole record instead of one per field: nearly every record
    // passes, and each field is then a slice of this text (see `field_text`).
    let whole = std::str::from_utf8(record.as_slice()).ok();
    let text = |i: usize| -> Result<String, Bad> {
        match field_text(record, whole, i) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(reject(
                i,
                format!(
                    "is not valid UTF-8 (bad byte at offset {})",
                    e.valid_up_to()
                ),
            )),
        }
    };
    let id = |i: usize| -> Result<i32, Bad> {
        let raw = field(i);
        if let Some(v) = plain_id(raw) {
            return Ok(v);
        }
        let s = field_text(record, whole, i)
            .map_err(|_| reject(i, "is not valid UTF-8; expected an integer".into()))?
            .trim();
        if s.is_empty() {
            return Err(reject(i, "is empty; expected an integer id".into()));
        }
        match s.parse::<i64>() {
            Ok(v) if (0..=i32::MAX as i64).contains(&v) => Ok(v as i32),
            Ok(_) => Err(reject(
                i,
                format!(
                    "is out of range; expected an integer from 0 to {}",
                    i32::MAX
                ),
            )),
            Err(_) => Err(reject(i, "is not an integer".into())),
        }
    };
    let play = (|| -> Result<SongPlay, Bad> {
        let user_id = id(cols.user_id)?;
        let session_id = id(cols.session_id)?;
        let item_in_session = id(cols.item_in_session)?;
        let length = {
            let i = cols.length;
            let s = field_text(record, whole, i)
                .map_err(|_| reject(i, "is not valid UTF-8; expected a number".into()))?
                .trim();
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                Ok(v) if v.is_finite() => {
                    return Err(reject(
                        i,
                        "is negative; expected a length in seconds of 0 or more".into(),
                    ));
                }
                _ => {
                    return Err(reject(
                        i,
                        "is not a number; expected a length in seconds".into(),
                    ));
                }
            }
        };
        let profile = if options.keep_profile {
            let opt = |c: Option<usize>| -> Result<String, Bad> {
                match c {
                    Some(i) => text(i),
                    None => Ok(String::new()),
                }
            };
            Some(Box::new(Profile {
                gender: opt(cols.gender)?,
                level: opt(cols.level)?,
                location: opt(cols.location)?,
            }))
        } else {
            None
        };
        Ok(SongPlay {
            session_id,
            item_in_session,
            user_id,
            artist: text(cols.artist)?,
            song: text(cols.song)?,
            length,
            first_name: text(cols.first_name)?,
            last_name: text(cols.last_name)?,
            profile,
        })
    })();
    match play {
        Ok(p) => Verdict::Play(p),
        Err(Bad(i, reason)) => Verdict::Reject {
            column: crate::escape::escape_str(&cols.names[i]).into_owned(),
            value: shown(field(i)),
            reason,
        },
    }
}
