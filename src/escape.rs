//! Showing untrusted text: bytes from input files (values, header names) as they appear in
//! messages, logs, the ledger's reasons and `query`'s table output.
//!
//! Values are stored faithfully, NUL and escape bytes included, and the CSV and JSON outputs
//! give them back exactly (quoted or escaped the way those formats require). Wherever text is
//! shown to a person, though, a control character could clear the screen, move the cursor or
//! retitle the terminal, so C0 controls other than tab, DEL and C1 controls are written as
//! escapes (`\x1b`, `\x00`, `\u{9b}`), and bytes that are not UTF-8 as `\xNN`. Backslashes are
//! left as they are, so the shown text is for reading, not for parsing back.

use std::borrow::Cow;

/// Whether `c` is shown escaped.
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{7f}'
}

/// `text` with its control characters escaped; borrowed when there are none.
pub fn escape_str(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    push_escaped(&mut out, text);
    Cow::Owned(out)
}

/// `bytes` as text: UTF-8 with control characters escaped, other bytes as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape_bytes_within(bytes, usize::MAX)
}

/// [`escape_bytes`] of as much of `bytes` as fits in `max_chars` characters, followed by `…`
/// when something was left out. Escapes are never cut in half.
pub fn escape_bytes_within(bytes: &[u8], max_chars: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    let mut push = |piece: &str, out: &mut String| -> bool {
        let n = piece.chars().count();
        if chars + n > max_chars {
            out.push('…');
            return false;
        }
        chars += n;
        out.push_str(piece);
        true
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !push(&escape_char(c), &mut out) {
                return out;
            }
        }
        for b in chunk.invalid() {
            if !push(&format!("\\x{b:02x}"), &mut out) {
                return out;
            }
        }
    }
    out
}

fn escape_char(c: char) -> Cow<'static, str> {
    match c {
        c if !is_unsafe(c) => Cow::Owned(c.to_string()),
        c if (c as u32) < 0x80 => Cow::Owned(format!("\\x{:02x}", c as u32)),
        c => Cow::Owned(format!("\\u{{{:x}}}", c as u32)),
    }
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&escape_char(c));
        } else {
            out.push(c);
        }
    }
}

/// What the first bytes of a file that is not a CSV text file most likely are, for the
/// message that refuses it.
pub fn likely_binary(start: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (
            b"\x1f\x8b",
            "looks like gzip-compressed data; decompress it first",
        ),
        (
            b"PK\x03\x04",
            "looks like a zip archive; extract the CSV files first",
        ),
        (
            b"BZh",
            "looks like bzip2-compressed data; decompress it first",
        ),
        (
            b"\xfd7zXZ\x00",
            "looks like xz-compressed data; decompress it first",
        ),
        (
            b"\x28\xb5\x2f\xfd",
            "looks like zstd-compressed data; decompress it first",
        ),
        (b"\xff\xfe", "looks like UTF-16 text; save it as UTF-8"),
        (b"\xfe\xff", "looks like UTF-16 text; save it as UTF-8"),
    ];
    if let Some((_, hint)) = MAGIC.iter().find(|(magic, _)| start.starts_with(magic)) {
        return Some(hint);
    }
    let head = &start[..start.len().min(64)];
    let nuls = head.iter().filter(|&&b| b == 0).count();
    // UTF-16 without a byte-order mark: ASCII letters with a NUL beside each.
    if head.len() >= 8 && nuls * 2 >= head.len() - 1 {
        return Some("looks like UTF-16 text; save it as UTF-8");
    }
    if nuls > 0 || std::str::from_utf8(head).is_err_and(|e| e.error_len().is_some()) {
        return Some("looks like binary data, not a CSV text file");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_is_not() {
        assert_eq!(escape_str("Björk\tlive"), Cow::Borrowed("Björk\tlive"));
        assert_eq!(
            escape_str("a\u{1b}[2Jb\0c\u{7f}\u{9b}"),
            "a\\x1b[2Jb\\x00c\\x7f\\u{9b}"
        );
        assert_eq!(escape_str("line\nbreak\r"), "line\\x0abreak\\x0d");
        assert_eq!(
            escape_bytes(b"\x1f\x8b\x08\0ok\xc3\xa9"),
            "\\x1f\\x8b\\x08\\x00oké"
        );
        assert_eq!(escape_bytes_within(b"ab\x1f\x8b", 6), "ab\\x1f…");
        assert_eq!(escape_bytes_within(b"ab\x1f", 6), "ab\\x1f");
    }

    #[test]
    fn binary_starts_are_named() {
        assert_eq!(
            likely_binary(b"\x1f\x8b\x08\x00"),
            Some("looks like gzip-compressed data; decompress it first")
        );
        assert_eq!(
            likely_binary(
                "\u{feff}artist"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<_>>()
                    .as_slice()
            ),
            Some("looks like UTF-16 text; save it as UTF-8")
        );
        let no_bom: Vec<u8> = "artist,auth"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            likely_binary(&no_bom),
            Some("looks like UTF-16 text; save it as UTF-8")
        );
        assert_eq!(likely_binary(b"artist,auth,firstName"), None);
        assert_eq!(likely_binary("artïst,sông".as_bytes()), None);
    }
}
