//! Transform: clean a validated song play and shape it into one row per query table.
//!
//! Sits between `extract` (validated plays) and the writers. The only cleaning is the repair of
//! text that some earlier export encoded as UTF-8 more than once; the shaping is what makes each
//! of the three analyst questions a single-partition read (see the table design in the README).

use std::sync::OnceLock;

use crate::extract::SongPlay;

/// Row of `song_plays_by_session`: partition `sessionid`, clustered by `iteminsession`.
#[derive(Debug, Clone, Copy, PartialEq, scylla::SerializeRow)]
pub struct SessionRow<'a> {
    pub sessionid: i32,
    pub iteminsession: i32,
    pub artist: &'a str,
    pub song: &'a str,
    pub length: f64,
}

/// Row of `song_plays_by_user_session`: partition `(userid, sessionid)`, clustered by
/// `iteminsession`.
#[derive(Debug, Clone, Copy, PartialEq, scylla::SerializeRow)]
pub struct UserSessionRow<'a> {
    pub userid: i32,
    pub sessionid: i32,
    pub iteminsession: i32,
    pub artist: &'a str,
    pub song: &'a str,
    pub firstname: &'a str,
    pub lastname: &'a str,
}

/// Row of `listeners_by_song`: partition `song`, clustered by `userid`.
#[derive(Debug, Clone, Copy, PartialEq, scylla::SerializeRow)]
pub struct ListenerRow<'a> {
    pub song: &'a str,
    pub userid: i32,
    pub firstname: &'a str,
    pub lastname: &'a str,
}

impl SongPlay {
    /// The row this play adds to `song_plays_by_session`.
    pub fn session_row(&self) -> SessionRow<'_> {
        SessionRow {
            sessionid: self.session_id,
            iteminsession: self.item_in_session,
            artist: &self.artist,
            song: &self.song,
            length: self.length,
        }
    }

    /// The row this play adds to `song_plays_by_user_session`.
    pub fn user_session_row(&self) -> UserSessionRow<'_> {
        UserSessionRow {
            userid: self.user_id,
            sessionid: self.session_id,
            iteminsession: self.item_in_session,
            artist: &self.artist,
            song: &self.song,
            firstname: &self.first_name,
            lastname: &self.last_name,
        }
    }

    /// The row this play adds to `listeners_by_song`.
    pub fn listener_row(&self) -> ListenerRow<'_> {
        ListenerRow {
            song: &self.song,
            userid: self.user_id,
            firstname: &self.first_name,
            lastname: &self.last_name,
        }
    }
}

/// Applies the configured cleaning to plays.
#[derive(Debug, Clone, Copy)]
pub struct Transform {
    pub repair_mojibake: bool,
}

impl Transform {
    /// Cleans one play in place; returns how many of its values were repaired.
    pub fn apply(&self, play: &mut SongPlay) -> u64 {
        if !self.repair_mojibake {
            return 0;
        }
        let mut repaired = 0;
        let mut fix = |s: &mut String| {
            if let Some(fixed) = repair_mojibake(s) {
                *s = fixed;
                repaired += 1;
            }
        };
        fix(&mut play.artist);
        fix(&mut play.song);
        fix(&mut play.first_name);
        fix(&mut play.last_name);
        if let Some(p) = play.profile.as_mut() {
            fix(&mut p.location);
        }
        repaired
    }
}

/// The byte each of U+0080..=U+FFFF stands for in Windows-1252, where it has one.
fn cp1252_byte(c: char) -> Option<u8> {
    static HIGH: OnceLock<Vec<(char, u8)>> = OnceLock::new();
    let code = c as u32;
    if code < 0x80 {
        return Some(code as u8);
    }
    // Latin-1 covers U+0080..=U+00FF byte for byte (exports that decoded as ISO-8859-1 leave
    // C1 controls such as U+0083 behind); Windows-1252 adds its 27 letters and signs in 0x80-0x9F.
    if code <= 0xFF {
        return Some(code as u8);
    }
    let table = HIGH.get_or_init(|| {
        (0x80u8..=0x9F)
            .filter_map(|b| {
                let byte = [b];
                let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&byte);
                let c = text.chars().next()?;
                (c as u32 > 0xFF).then_some((c, b))
            })
            .collect()
    });
    table.iter().find(|(ch, _)| *ch == c).map(|(_, b)| *b)
}

/// One step of undoing "UTF-8 bytes read as Windows-1252/Latin-1 and encoded again":
/// the text as bytes, if every character maps to one byte and those bytes are valid UTF-8
/// with at least one multi-byte sequence.
fn undo_once(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    for c in s.chars() {
        bytes.push(cp1252_byte(c)?);
    }
    let text = String::from_utf8(bytes).ok()?;
    (text.len() < s.len()).then_some(text)
}

/// Repairs text that was UTF-8-encoded twice or more (`BjÃƒÂ¶rk` → `Björk`), undoing as many
/// layers as there are. Returns `None` for plain ASCII, for text that is already right, and
/// whenever a step is ambiguous: a character with no single-byte form, or bytes that are not
/// valid UTF-8 (`Café` stays `Café`, because `é` as a byte is not UTF-8 on its own).
pub fn repair_mojibake(s: &str) -> Option<String> {
    if s.is_ascii() {
        return None;
    }
    let mut current = undo_once(s)?;
    while let Some(next) = undo_once(&current) {
        current = next;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_real_triple_encoding() {
        // As it appears in the sample logs: "Björk" encoded three times, Latin-1 style.
        let raw = String::from_utf8(vec![
            0x42, 0x6a, 0xc3, 0x83, 0xc2, 0x83, 0xc3, 0x82, 0xc2, 0xb6, 0x72, 0x6b,
        ])
        .unwrap();
        assert_eq!(repair_mojibake(&raw).as_deref(), Some("Björk"));
    }

    #[test]
    fn repairs_windows_1252_double_encoding() {
        assert_eq!(repair_mojibake("BjÃƒÂ¶rk").as_deref(), Some("Björk"));
        assert_eq!(repair_mojibake("BeyoncÃ©").as_deref(), Some("Beyoncé"));
        assert_eq!(repair_mojibake("Ã¢â‚¬Å“Hiâ€").as_deref(), None);
    }

    #[test]
    fn leaves_correct_and_ambiguous_text_alone() {
        for s in [
            "Björk",
            "Café",
            "東京",
            "Motörhead",
            "plain",
            "Ã",
            "naïve Ã©lan ☃",
        ] {
            assert_eq!(repair_mojibake(s), None, "{s}");
        }
    }
}
