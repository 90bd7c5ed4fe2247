//! Rejects: where song plays that could not be loaded go, one CSV per input file.
//!
//! Written by the reader of a file as it meets bad rows (see `extract`). Each rejects file has
//! the columns `line,column,value,reason` followed by the input file's own header, so a reject
//! can be read next to the original fields, fixed, and dropped back into the watched folder.

use std::path::{Path, PathBuf};

use csv_async::{AsyncWriter, AsyncWriterBuilder};

use crate::extract::Reject;

/// The rejects file of one input file, created on the first reject.
pub struct RejectsFile {
    path: PathBuf,
    header: Vec<String>,
    writer: Option<AsyncWriter<tokio::fs::File>>,
    written: u64,
}

/// `<dir>/<file name>.rejects.csv`.
pub fn rejects_path(dir: &Path, input: &Path) -> PathBuf {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".to_string());
    dir.join(format!("{name}.rejects.csv"))
}

impl RejectsFile {
    /// Prepares the rejects file for `input`, removing one left from an earlier load of a file
    /// with the same name so that what is on disk always describes the latest load.
    pub async fn new(dir: &Path, input: &Path, header: &[String]) -> std::io::Result<RejectsFile> {
        let path = rejects_path(dir, input);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(RejectsFile {
            path,
            header: header.to_vec(),
            writer: None,
            written: 0,
        })
    }

    /// Where the rejects go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rejected rows written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends one reject.
    pub async fn write(&mut self, reject: &Reject) -> std::io::Result<()> {
        if self.writer.is_none() {
            if let Some(parent) = self.path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let file = tokio::fs::File::create(&self.path).await?;
            let mut w = AsyncWriterBuilder::new().flexible(true).create_writer(file);
            let mut head = vec![
                "line".to_string(),
                "column".to_string(),
                "value".to_string(),
                "reason".to_string(),
            ];
            head.extend(self.header.iter().cloned());
            w.write_record(&head).await.map_err(std::io::Error::other)?;
            self.writer = Some(w);
        }
        let w = self.writer.as_mut().expect("created above");
        let line = reject.line.to_string();
        let mut row: Vec<&str> = vec![&line, &reject.column, &reject.value, &reject.reason];
        row.extend(reject.fields.iter().map(String::as_str));
        w.write_record(&row).await.map_err(std::io::Error::other)?;
        self.written += 1;
        Ok(())
    }

    /// Flushes what was written.
    pub async fn finish(mut self) -> std::io::Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().await.map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}
