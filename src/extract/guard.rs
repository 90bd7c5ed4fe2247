//! The record-size guard: bounds what one record may cost in memory before the parser sees it.
//! Kept by hand because the CSV parser has no record-size limit of its own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Shared between the parser and the [`Guard`] under it.
#[derive(Debug, Default)]
pub(super) struct GuardState {
    /// Bytes handed to the parser so far.
    pub(super) delivered: AtomicU64,
    /// Byte offset where the record being parsed starts.
    pub(super) boundary: AtomicU64,
    /// Set when the guard dropped bytes of the current record.
    pub(super) truncated: AtomicBool,
    /// The identity of exactly the bytes parsed, once the end of the file was reached.
    pub(super) content: std::sync::Mutex<Option<crate::identity::Fingerprint>>,
    /// Bytes of the file read so far, as stored (compressed or not).
    pub(super) stored: AtomicU64,
    /// Bytes of text the file gave so far: decompressed, or as stored for a plain file.
    pub(super) text: AtomicU64,
}

/// Keeps one runaway record (an unclosed quote, a file of binary junk with no line breaks)
/// from taking unbounded memory: once the record being parsed is past the bound, the rest of
/// it up to the next line break is dropped before the parser sees it. The shortened record is
/// then rejected for its size like any other record over the bound.
pub(super) struct Guard<R> {
    pub(super) inner: R,
    pub(super) state: Arc<GuardState>,
    /// Bytes of one record (plus the parser's read-ahead) allowed before dropping.
    pub(super) limit: u64,
    pub(super) skipping: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Guard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let got = buf.filled().len() - before;
            if got == 0 {
                return Poll::Ready(Ok(()));
            }
            if self.skipping {
                let fresh = &buf.filled()[before..];
                match memchr::memchr(b'\n', fresh) {
                    None => {
                        // Drop it all and read on: returning nothing would mean end of file.
                        buf.set_filled(before);
                        continue;
                    }
                    Some(p) => {
                        let keep = got - p;
                        let filled = buf.filled_mut();
                        filled.copy_within(before + p..before + got, before);
                        buf.set_filled(before + keep);
                        self.skipping = false;
                        self.state
                            .delivered
                            .fetch_add(keep as u64, Ordering::Relaxed);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let delivered = self
                .state
                .delivered
                .fetch_add(got as u64, Ordering::Relaxed)
                + got as u64;
            let boundary = self.state.boundary.load(Ordering::Relaxed);
            if delivered.saturating_sub(boundary) > self.limit
                && memchr::memchr(b'\n', &buf.filled()[before..]).is_none()
            {
                self.skipping = true;
                self.state.truncated.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(Ok(()));
        }
    }
}
