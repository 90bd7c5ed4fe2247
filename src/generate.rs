//! Generate: realistic synthetic event files for load tests (`sparkify generate`).
//!
//! Not part of the loading flow; it feeds it. The files look like the real exports: the same
//! header, CRLF line endings, quoted locations with commas, spreadsheet-style `1.54111E+12`
//! numbers, logged-out events with no user, about 85% song plays, sessions whose items count
//! up, users whose names never change, some non-ASCII titles and some of them UTF-8-encoded
//! twice. Output is a pure function of the seed. Each file is written under a hidden temporary
//! name and renamed into place, so a running daemon never sees half a file. With `--compress`
//! each file is gzip or zstd (`.csv.gz`, `.csv.zst`): the same text, compressed as it is written.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// The header of the real logs, in their order.
pub const HEADER: [&str; 17] = [
    "artist",
    "auth",
    "firstName",
    "gender",
    "itemInSession",
    "lastName",
    "length",
    "level",
    "location",
    "method",
    "page",
    "registration",
    "sessionId",
    "song",
    "status",
    "ts",
    "userId",
];

/// Command-line arguments of `sparkify generate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example: sparkify generate --rows 1000000 --files 10 --seed 7 /tmp/load
Files are named like the real exports (2018-11-01-events.csv, one day per file); with
--compress gzip or zstd, 2018-11-01-events.csv.gz or .csv.zst, holding the same text.")]
pub struct GenerateArgs {
    /// Events to write in all (song plays are about 85% of them).
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
    /// Files to spread the events over.
    #[arg(long, default_value_t = 1)]
    pub files: u32,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Session id of the first session; give successive batches disjoint ranges so that each
    /// play keeps its own key.
    #[arg(long, default_value_t = 1)]
    pub first_session: u32,
    /// Compress each file as it is written: gzip (level 6) or zstd (level 3).
    #[arg(long, value_enum)]
    pub compress: Option<Compress>,
    /// Folder to write into (created if missing).
    pub dir: PathBuf,
}

/// How `generate` compresses its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// `.csv.gz`, one gzip member per file.
    Gzip,
    /// `.csv.zst`, one zstd frame per file.
    Zstd,
}

impl Compress {
    fn suffix(self) -> &'static str {
        match self {
            Compress::Gzip => ".gz",
            Compress::Zstd => ".zst",
        }
    }
}

/// Where a file's text goes: the file, or an encoder in front of it.
enum Sink {
    Plain(std::io::BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
    Zstd(zstd::stream::write::Encoder<'static, std::io::BufWriter<std::fs::File>>),
}

impl Sink {
    fn new(file: std::fs::File, compress: Option<Compress>) -> std::io::Result<Sink> {
        let out = std::io::BufWriter::with_capacity(1 << 20, file);
        Ok(match compress {
            None => Sink::Plain(out),
            Some(Compress::Gzip) => Sink::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(6),
            )),
            Some(Compress::Zstd) => Sink::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }

    /// Ends the compressed stream and flushes everything to the file.
    fn finish(self) -> std::io::Result<std::fs::File> {
        let mut out = match self {
            Sink::Plain(out) => out,
            Sink::Gzip(e) => e.finish()?,
            Sink::Zstd(e) => e.finish()?,
        };
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Generated {
    pub files: Vec<PathBuf>,
    pub rows: u64,
    pub song_plays: u64,
    /// Bytes of the files as written (compressed with `--compress`).
    pub bytes: u64,
    /// Bytes of their text (the same as `bytes` unless compressed).
    pub text_bytes: u64,
}

const FIRST: &[&str] = &[
    "Kaylee", "Walter", "Ryan", "Sylvie", "Jacob", "Chloe", "Tegan", "Lily", "Aleena", "Jayden",
    "Kinsley", "Mohammad", "Matthew", "Rylan", "Ava", "Layla", "Emily", "Noah", "Zoé", "Jörg",
    "Amélie", "Søren", "Iñaki", "Théo",
];
const LAST: &[&str] = &[
    "Summers",
    "Frye",
    "Smith",
    "Cruz",
    "Klein",
    "Cuevas",
    "Levine",
    "Koch",
    "Kirby",
    "Graham",
    "Young",
    "Rodriguez",
    "Jones",
    "George",
    "Robinson",
    "Williams",
    "Müller",
    "Núñez",
    "O'Brien",
    "Gonçalves",
];
const LOCATIONS: &[&str] = &[
    "Phoenix-Mesa-Scottsdale, AZ",
    "San Francisco-Oakland-Hayward, CA",
    "New York-Newark-Jersey City, NY-NJ-PA",
    "Atlanta-Sandy Springs-Roswell, GA",
    "Chicago-Naperville-Elgin, IL-IN-WI",
    "Lansing-East Lansing, MI",
    "Tampa-St. Petersburg-Clearwater, FL",
    "Portland-South Portland, ME",
    "Waterloo-Cedar Falls, IA",
    "Houston-The Woodlands-Sugar Land, TX",
];
const WORDS: &[&str] = &[
    "Love", "Night", "Fire", "Heart", "Dream", "Rain", "Summer", "Gold", "Ghost", "River", "Light",
    "Stone", "Wild", "Blue", "Electric", "Midnight", "Paper", "Silver", "Echo", "Velvet", "Storm",
    "Ocean", "Shadow", "Crystal", "Neon", "Broken", "Sweet", "Lonely", "Golden", "Secret",
];
const ACCENTED: &[&str] = &[
    "Björk",
    "Beyoncé",
    "Sigur Rós",
    "Motörhead",
    "Café Tacvba",
    "Michael Bublé",
    "Röyksopp",
    "Mötley Crüe",
    "José González",
    "Amadou & Mariam",
    "Nação Zumbi",
    "Sinéad O'Connor",
];
const OTHER_PAGES: &[(&str, &str, u16)] = &[
    ("Home", "GET", 200),
    ("Thumbs Up", "PUT", 307),
    ("Add to Playlist", "PUT", 200),
    ("Settings", "GET", 200),
    ("Help", "GET", 200),
    ("About", "GET", 200),
    ("Upgrade", "GET", 200),
    ("Thumbs Down", "PUT", 307),
    ("Roll Advert", "GET", 200),
    ("Logout", "PUT", 307),
    ("Save Settings", "PUT", 307),
    ("Error", "GET", 404),
];

/// Share of events that are song plays, as in the real logs (6,820 of 8,056).
const SONG_SHARE: f64 = 0.85;
/// Share of events from logged-out visitors (no user id, no name).
const LOGGED_OUT_SHARE: f64 = 0.015;
/// Sessions open at once; events of open sessions interleave, as in the real logs.
const OPEN_SESSIONS: usize = 8;

/// Encodes `s` as UTF-8, reads the bytes as Latin-1 and encodes again: the export bug that the
/// transform repairs.
pub fn encode_twice(s: &str) -> String {
    s.as_bytes().iter().map(|&b| b as char).collect()
}

/// `1.54111E+12`, as a spreadsheet writes large numbers.
fn spreadsheet(n: f64) -> String {
    let exp = n.abs().log10().floor() as i32;
    let mantissa = n / 10f64.powi(exp);
    let digits = format!("{mantissa:.5}");
    let digits = digits.trim_end_matches('0').trim_end_matches('.');
    format!("{digits}E+{exp}")
}

struct User {
    id: u32,
    first: String,
    last: String,
    gender: &'static str,
    level: &'static str,
    location: &'static str,
    registration: f64,
}

struct Song {
    artist: String,
    title: String,
    length: f64,
}

struct Session {
    id: u32,
    user: usize,
    item: u32,
    left: u32,
}

struct Catalogue {
    users: Vec<User>,
    songs: Vec<Song>,
}

fn pick<'a>(rng: &mut Xoshiro256PlusPlus, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn catalogue(rng: &mut Xoshiro256PlusPlus, rows: u64) -> Catalogue {
    let n_users = (rows / 100).clamp(50, 100_000) as u32;
    let n_songs = (rows / 4).clamp(200, 500_000) as usize;
    let users = (1..=n_users)
        .map(|id| User {
            id,
            first: pick(rng, FIRST).to_string(),
            last: pick(rng, LAST).to_string(),
            gender: if rng.random_bool(0.5) { "F" } else { "M" },
            level: if rng.random_bool(0.3) { "paid" } else { "free" },
            location: pick(rng, LOCATIONS),
            registration: 1.5403e12 + rng.random_range(0.0..1e9),
        })
        .collect();
    let mut songs = Vec::with_capacity(n_songs);
    for i in 0..n_songs {
        let mut artist = if rng.random_bool(0.04) {
            pick(rng, ACCENTED).to_string()
        } else {
            format!("The {} {}", pick(rng, WORDS), pick(rng, WORDS))
        };
        let mut title = format!("{} {} {}", pick(rng, WORDS), pick(rng, WORDS), i);
        if rng.random_bool(0.02) {
            title = format!("Café, {title}");
        }
        if !artist.is_ascii() && rng.random_bool(0.5) {
            artist = encode_twice(&artist);
        }
        if !title.is_ascii() && rng.random_bool(0.5) {
            title = encode_twice(&encode_twice(&title));
        }
        songs.push(Song {
            artist,
            title,
            length: (rng.random_range(90_000..480_000) as f64) / 1000.0,
        });
    }
    Catalogue { users, songs }
}

/// The name of the `i`-th file: one day per file from 2018-11-01.
fn file_name(i: u32) -> String {
    let ms = 1_541_030_400_000i64 + i64::from(i) * 86_400_000;
    let date = &crate::ledger::format_utc_ms(ms)[..10];
    format!("{date}-events.csv")
}

/// Writes `rows` events over `files` files into `dir`.
pub fn generate(
    dir: &Path,
    rows: u64,
    files: u32,
    seed: u64,
    first_session: u32,
) -> std::io::Result<Generated> {
    generate_compressed(dir, rows, files, seed, first_session, None)
}

/// [`generate`], each file compressed as it is written when `compress` says so: the same text
/// (the same events for the same seed) in `.csv.gz` or `.csv.zst` files.
pub fn generate_compressed(
    dir: &Path,
    rows: u64,
    files: u32,
    seed: u64,
    first_session: u32,
    compress: Option<Compress>,
) -> std::io::Result<Generated> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let cat = catalogue(&mut rng, rows);
    let files = files.max(1);
    let mut out = Generated::default();
    let mut next_session = first_session;
    let mut ts = 1.5410e12;
    // Logged-out events are never plays, so plays are SONG_SHARE of all events only if they
    // are a little more than that of the logged-in ones.
    let play_share_logged_in = SONG_SHARE / (1.0 - LOGGED_OUT_SHARE);
    for f in 0..files {
        let share = rows / u64::from(files) + u64::from(u64::from(f) < rows % u64::from(files));
        let name = file_name(f) + compress.map_or("", Compress::suffix);
        let tmp = dir.join(format!(".{name}.tmp"));
        let dest = dir.join(&name);
        let file = std::fs::File::create(&tmp)?;
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Counting {
                inner: Sink::new(file, compress)?,
                bytes: 0,
            });
        w.write_record(HEADER)?;
        let mut open: Vec<Session> = Vec::with_capacity(OPEN_SESSIONS);
        for _ in 0..share {
            while open.len() < OPEN_SESSIONS {
                open.push(Session {
                    id: next_session,
                    user: rng.random_range(0..cat.users.len()),
                    item: 0,
                    left: rng.random_range(1..120),
                });
                next_session += 1;
            }
            let k = rng.random_range(0..open.len());
            let s = &mut open[k];
            let u = &cat.users[s.user];
            ts += rng.random_range(1_000.0..60_000.0);
            let item = s.item.to_string();
            let session = s.id.to_string();
            let ts_s = spreadsheet(ts);
            let reg = spreadsheet(u.registration);
            if rng.random_bool(LOGGED_OUT_SHARE) {
                let (page, method, status) = pick_page(&mut rng);
                w.write_record([
                    "",
                    "Logged Out",
                    "",
                    "",
                    &item,
                    "",
                    "",
                    u.level,
                    "",
                    method,
                    page,
                    "",
                    &session,
                    "",
                    &status.to_string(),
                    &ts_s,
                    "",
                ])?;
            } else if rng.random_bool(play_share_logged_in) {
                let song = &cat.songs[zipf_index(&mut rng, cat.songs.len())];
                w.write_record([
                    song.artist.as_str(),
                    "Logged In",
                    &u.first,
                    u.gender,
                    &item,
                    &u.last,
                    &song.length.to_string(),
                    u.level,
                    u.location,
                    "PUT",
                    "NextSong",
                    &reg,
                    &session,
                    &song.title,
                    "200",
                    &ts_s,
                    &u.id.to_string(),
                ])?;
                out.song_plays += 1;
            } else {
                let (page, method, status) = pick_page(&mut rng);
                w.write_record([
                    "",
                    "Logged In",
                    &u.first,
                    u.gender,
                    &item,
                    &u.last,
                    "",
                    u.level,
                    u.location,
                    method,
                    page,
                    &reg,
                    &session,
                    "",
                    &status.to_string(),
                    &ts_s,
                    &u.id.to_string(),
                ])?;
            }
            s.item += 1;
            s.left -= 1;
            if s.left == 0 {
                open.swap_remove(k);
            }
            out.rows += 1;
        }
        let counting = w
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        out.text_bytes += counting.bytes;
        let file = counting.inner.finish()?;
        file.sync_all()?;
        drop(file);
        out.bytes += std::fs::metadata(&tmp)?.len();
        std::fs::rename(&tmp, &dest)?;
        out.files.push(dest);
    }
    Ok(out)
}

/// Counts the bytes of text written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pick_page(rng: &mut Xoshiro256PlusPlus) -> (&'static str, &'static str, u16) {
    OTHER_PAGES[rng.random_range(0..OTHER_PAGES.len())]
}

/// Popular songs are played far more often than the long tail.
fn zipf_index(rng: &mut Xoshiro256PlusPlus, n: usize) -> usize {
    let u: f64 = rng.random_range(0.0..1.0);
    ((n as f64).powf(u) - 1.0)
        .floor()
        .clamp(0.0, (n - 1) as f64) as usize
}

/// `sparkify generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let g = generate_compressed(
        &args.dir,
        args.rows,
        args.files,
        args.seed,
        args.first_session,
        args.compress,
    )?;
    // A reader of standard output that went away (`| head`) has what it wanted.
    let compressed = if args.compress.is_none() {
        String::new()
    } else {
        format!(" ({} bytes of text)", g.text_bytes)
    };
    let _ = writeln!(
        std::io::stdout(),
        "wrote {} files to {}: {} events, {} song plays, {} bytes{compressed} in {:.2} s",
        g.files.len(),
        args.dir.display(),
        g.rows,
        g.song_plays,
        g.bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreadsheet_numbers_look_like_the_real_ones() {
        assert_eq!(spreadsheet(1.54111e12), "1.54111E+12");
        assert_eq!(spreadsheet(1.5409e12), "1.5409E+12");
        assert_eq!(spreadsheet(1.5e12), "1.5E+12");
    }

    #[test]
    fn names_follow_the_exports() {
        assert_eq!(file_name(0), "2018-11-01-events.csv");
        assert_eq!(file_name(30), "2018-12-01-events.csv");
    }

    #[test]
    fn double_encoding_is_what_the_transform_repairs() {
        let once = encode_twice("Björk");
        assert_eq!(once, "BjÃ¶rk");
        assert_eq!(
            crate::transform::repair_mojibake(&once).as_deref(),
            Some("Björk")
        );
    }
}
