//! A file's identity: the content hash and size of exactly its bytes, and opening only what is
//! a regular file. The ledger keys its entries by this identity; the reader in `extract`
//! computes the same identity over the bytes it parses, so that a file that changed while it
//! was read can be told apart.

use std::io::Read;
use std::path::Path;

/// A file's identity for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub content_hash: String,
    pub size: u64,
}

/// Opens `path` for reading if it is a regular file. Anything else (a FIFO, a device such as
/// `/dev/zero`, a socket, a folder) is refused before it is opened: opening a FIFO would wait
/// for a writer, and reading a device would never end.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind_of(&meta)),
        ));
    }
    let file = std::fs::File::open(path)?;
    // The path may have been replaced between the two calls.
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Why a hash was not finished.
pub const STOPPED: &str = "stopped before the file was read";

/// Hashes a file's content (blocking; call from a blocking thread). `stop` is asked between
/// reads, so that a shutdown is not held up by a large file; a stopped hash is an
/// `Interrupted` error.
pub fn fingerprint(path: &Path, stop: impl Fn() -> bool) -> std::io::Result<Fingerprint> {
    let mut file = open_regular(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        if stop() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                STOPPED,
            ));
        }
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(Fingerprint {
        content_hash: hasher.finalize().to_hex().to_string(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, b"x,y\n1,2\n").unwrap();
        std::fs::write(&b, b"x,y\n1,2\n").unwrap();
        assert_eq!(
            fingerprint(&a, || false).unwrap(),
            fingerprint(&b, || false).unwrap()
        );
        std::fs::write(&b, b"x,y\n1,3\n").unwrap();
        assert_ne!(
            fingerprint(&a, || false).unwrap(),
            fingerprint(&b, || false).unwrap()
        );
    }
}
