//! Rejects: where song plays that could not be loaded go, one CSV per input file.
//!
//! Written by the reader of a file as it meets bad rows (see `extract`). Each rejects file has
//! the columns `line,column,value,reason` followed by the input file's own header, so a reject
//! can be read next to the original fields, fixed, and dropped back into the watched folder.
//!
//! A rejects file belongs to exactly one input: its path mirrors the input's path under the
//! watched folder (or under the `ingest` argument it was found in), and its name carries the
//! first characters of the input's content hash, the identity the ledger knows it by:
//! `<rejects.dir>/a/day.csv.<hash>.rejects.csv` for `a/day.csv`. Two inputs of the same name in
//! different folders, or two versions of one file, never share one, so no load can truncate,
//! interleave with or remove another's rejects. Rows are written to a hidden temporary file in
//! the same folder and renamed into place once the file is read, so a rejects file is always
//! whole.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use csv_async::{AsyncWriter, AsyncWriterBuilder};

use crate::extract::Reject;

/// Characters of the content hash put in a rejects file's name: 48 bits, enough to keep the
/// versions of one file apart.
const HASH_CHARS: usize = 12;
/// The longest file name most file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// What every rejects file name ends with.
const SUFFIX: &str = ".rejects.csv";

/// The rejects file of one input file, created on the first reject.
pub struct RejectsFile {
    /// Folder the rejects file goes into.
    dir: PathBuf,
    /// The input's file name.
    name: OsString,
    header: Vec<String>,
    out: Option<Open>,
    written: u64,
}

/// The temporary file being written.
struct Open {
    writer: AsyncWriter<tokio::fs::File>,
    /// Removed when dropped, so an abandoned load leaves nothing behind.
    temp: tempfile::TempPath,
}

/// The input's path relative to the first of `roots` (the watched folder, or the arguments of
/// `ingest`) that holds it; just its file name when none does (a file given by name).
pub fn relative_input(roots: &[PathBuf], input: &Path) -> PathBuf {
    let name = input
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("input"));
    let under = |root: &Path, path: &Path| -> Option<PathBuf> {
        let rel: PathBuf = path
            .strip_prefix(root)
            .ok()?
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part),
                _ => None,
            })
            .collect();
        (rel.file_name().is_some()).then_some(rel)
    };
    if let Some(rel) = roots.iter().find_map(|root| under(root, input)) {
        return rel;
    }
    // The watcher sees canonical paths, a root may be written relative or through a symlink.
    let canonical = input
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.join(&name));
    if let Some(canonical) = canonical
        && let Some(rel) = roots.iter().find_map(|root| {
            let root = root.canonicalize().ok()?;
            under(&root, &canonical)
        })
    {
        return rel;
    }
    name
}

/// `<file name>.<hash>.rejects.csv`, shortened to fit `NAME_MAX`: a long file name keeps its
/// start and gains `~` and a hash of the whole name, so that two long names stay apart.
pub fn rejects_file_name(input_name: &OsStr, content_hash: &str) -> OsString {
    let hash: String = content_hash.chars().take(HASH_CHARS).collect();
    let tail = if hash.is_empty() {
        SUFFIX.to_string()
    } else {
        format!(".{hash}{SUFFIX}")
    };
    let bytes = input_name.as_bytes();
    if bytes.len() + tail.len() <= NAME_MAX {
        let mut name = bytes.to_vec();
        name.extend_from_slice(tail.as_bytes());
        return OsString::from_vec(name);
    }
    let name_hash = blake3::hash(bytes).to_hex();
    let marker = format!("~{}", &name_hash[..8]);
    let mut keep = NAME_MAX - tail.len() - marker.len();
    // Cut between characters when the name is text.
    if let Ok(text) = std::str::from_utf8(bytes) {
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
    }
    let mut name = bytes[..keep].to_vec();
    name.extend_from_slice(marker.as_bytes());
    name.extend_from_slice(tail.as_bytes());
    OsString::from_vec(name)
}

/// Where the rejects of the input at `relative` (see [`relative_input`]) with this content go.
pub fn rejects_path(dir: &Path, relative: &Path, content_hash: &str) -> PathBuf {
    let name = relative.file_name().unwrap_or(OsStr::new("input"));
    let folder = relative.parent().unwrap_or(Path::new(""));
    dir.join(folder).join(rejects_file_name(name, content_hash))
}

impl RejectsFile {
    /// Prepares the rejects file of the input at `relative` (see [`relative_input`]) under
    /// `dir`. Nothing is written until the first reject.
    pub fn new(dir: &Path, relative: &Path, header: &[String]) -> RejectsFile {
        let folder = relative.parent().unwrap_or(Path::new(""));
        RejectsFile {
            dir: dir.join(folder),
            name: relative
                .file_name()
                .unwrap_or(OsStr::new("input"))
                .to_os_string(),
            header: header.to_vec(),
            out: None,
            written: 0,
        }
    }

    /// Rejected rows written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends one reject.
    pub async fn write(&mut self, reject: &Reject) -> io::Result<()> {
        if self.out.is_none() {
            tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", self.dir.display()),
                )
            })?;
            let temp = tempfile::Builder::new()
                .prefix(".")
                .suffix(".rejects.tmp")
                .tempfile_in(&self.dir)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot create a file in {}: {e}", self.dir.display()),
                    )
                })?;
            let (file, temp) = temp.into_parts();
            let mut writer = AsyncWriterBuilder::new()
                .flexible(true)
                .create_writer(tokio::fs::File::from_std(file));
            let mut head = vec![
                "line".to_string(),
                "column".to_string(),
                "value".to_string(),
                "reason".to_string(),
            ];
            head.extend(self.header.iter().cloned());
            writer.write_record(&head).await.map_err(io::Error::other)?;
            self.out = Some(Open { writer, temp });
        }
        let out = self.out.as_mut().expect("opened above");
        let line = reject.line.to_string();
        let mut row: Vec<&str> = vec![&line, &reject.column, &reject.value, &reject.reason];
        row.extend(reject.fields.iter().map(String::as_str));
        out.writer
            .write_record(&row)
            .await
            .map_err(io::Error::other)?;
        self.written += 1;
        Ok(())
    }

    /// Puts the rejects in place under the name for `content_hash` (see [`rejects_path`]) and
    /// returns where, or `None` when there were none. A rejects file left by an earlier load of
    /// this very input (same path, same content) is replaced, or removed when this load had
    /// no rejects, so that it always describes the latest load. Dropping a `RejectsFile`
    /// without finishing it leaves nothing behind.
    pub async fn finish(self, content_hash: &str) -> io::Result<Option<PathBuf>> {
        let target = self.dir.join(rejects_file_name(&self.name, content_hash));
        let Some(Open { writer, temp }) = self.out else {
            return match tokio::fs::remove_file(&target).await {
                Ok(()) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot remove {}: {e}", target.display()),
                )),
            };
        };
        let mut file = writer.into_inner().await?;
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        file.sync_all().await?;
        drop(file);
        let persisted = tokio::task::spawn_blocking({
            let target = target.clone();
            move || temp.persist(&target).map_err(|e| e.error)
        })
        .await
        .map_err(io::Error::other)?;
        persisted.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot write {}: {e}", target.display()))
        })?;
        Ok(Some(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_mirrors_the_input_under_its_root() {
        let roots = vec![PathBuf::from("in")];
        assert_eq!(
            relative_input(&roots, Path::new("in/a/day.csv")),
            Path::new("a/day.csv")
        );
        assert_eq!(
            relative_input(&roots, Path::new("elsewhere/day.csv")),
            Path::new("day.csv")
        );
        // A file given by name is its own root.
        let roots = vec![PathBuf::from("in/a/day.csv")];
        assert_eq!(
            relative_input(&roots, Path::new("in/a/day.csv")),
            Path::new("day.csv")
        );
        assert_eq!(
            rejects_path(
                Path::new("rejects"),
                Path::new("a/day.csv"),
                "0123456789abcdef"
            ),
            Path::new("rejects/a/day.csv.0123456789ab.rejects.csv")
        );
    }

    #[test]
    fn a_long_name_is_shortened_to_fit_and_stays_unique() {
        let a = format!("{}a.csv", "é".repeat(124));
        let b = format!("{}b.csv", "é".repeat(124));
        let hash = "f".repeat(64);
        let na = rejects_file_name(OsStr::new(&a), &hash);
        let nb = rejects_file_name(OsStr::new(&b), &hash);
        assert!(na.len() <= NAME_MAX, "{}", na.len());
        assert_ne!(na, nb);
        let na = na.to_str().expect("cut between characters");
        assert!(na.starts_with("éé"), "{na}");
        assert!(na.ends_with(".ffffffffffff.rejects.csv"), "{na}");
    }
}
