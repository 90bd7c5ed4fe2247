//! The values extraction gives: song plays, rejects, items and counts.

use serde::{Deserialize, Serialize};

/// The page value of a song play.
pub const SONG_PAGE: &str = "NextSong";

/// One validated song play: everything the three tables need, plus the profile columns the
/// analysts' combined CSV (`sparkify extract`) shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SongPlay {
    pub session_id: i32,
    pub item_in_session: i32,
    pub user_id: i32,
    pub artist: String,
    pub song: String,
    pub length: f64,
    pub first_name: String,
    pub last_name: String,
    /// Only filled when [`ExtractOptions::keep_profile`] is set.
    pub profile: Option<Box<Profile>>,
}

impl SongPlay {
    /// Bytes the play takes in memory, its text included: what chunks and write groups are
    /// bounded by besides their number of plays.
    pub fn memory_bytes(&self) -> usize {
        let profile = self.profile.as_ref().map_or(0, |p| {
            std::mem::size_of::<Profile>() + p.gender.len() + p.level.len() + p.location.len()
        });
        std::mem::size_of::<SongPlay>()
            + self.artist.len()
            + self.song.len()
            + self.first_name.len()
            + self.last_name.len()
            + profile
    }
}

/// Columns kept only for the combined CSV.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub gender: String,
    pub level: String,
    pub location: String,
}

/// A song play that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Line of the file where the record starts (the header is line 1).
    pub line: u64,
    /// The column at fault, as the header spells it; empty when the record as a whole is bad.
    pub column: String,
    /// The offending value (shortened when long).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
    /// The record's original fields, for the rejects file.
    pub fields: Vec<String>,
}

/// What one record turned out to be.
#[derive(Debug)]
pub enum Item {
    Play(SongPlay),
    Reject(Reject),
}

/// Counts for one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractCounts {
    /// Records after the header.
    pub rows: u64,
    /// Valid song plays.
    pub plays: u64,
    /// Events that are not song plays (Home, Login, ...).
    pub skipped: u64,
    /// Song plays that could not be loaded.
    pub rejected: u64,
}
