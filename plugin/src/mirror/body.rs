//! Response bodies streamed from blocking readers, and `Range` parsing.
//!
//! Archive reads (pread, frame decompression, a cache fill) block, so they
//! run on tokio's blocking threads and hand chunks to the response through
//! a small bounded channel: a slow client slows the reader down instead of
//! buffering the blob, and a client that goes away stops it.

use std::io::{self, Read};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::blob::BlobReader;

const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the reader and the connection.
const DEPTH: usize = 4;

/// Streams `reader` to its end. A read error is logged with `what` (which
/// may name a path: it never reaches the client) and aborts the response,
/// so the client sees a truncated body, never a complete-looking wrong one.
pub fn from_reader(mut reader: Box<dyn Read + Send>, what: String) -> Body {
    channel_body(move |tx| loop {
        let mut buf = vec![0u8; CHUNK];
        match read_full(&mut *reader, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return; // the client went away
                }
            }
            Err(e) => {
                tracing::error!(blob = %what, error = %e, "mirror: reading a blob failed; response aborted");
                let _ = tx.blocking_send(Err(io::Error::other("blob read failed")));
                return;
            }
        }
    })
}

/// Streams `len` bytes of `reader` from `offset`.
pub fn from_range(reader: Arc<dyn BlobReader>, offset: u64, len: u64, what: String) -> Body {
    channel_body(move |tx| {
        let (mut pos, end) = (offset, offset + len);
        while pos < end {
            let want = ((end - pos) as usize).min(CHUNK);
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match reader.read_at(&mut buf[got..], pos + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => {
                        tracing::error!(blob = %what, error = %e, "mirror: reading a blob range failed; response aborted");
                        let _ = tx.blocking_send(Err(io::Error::other("blob read failed")));
                        return;
                    }
                }
            }
            if got < want {
                tracing::error!(blob = %what, "mirror: blob ended early; response aborted");
                let _ = tx.blocking_send(Err(io::Error::other("blob read failed")));
                return;
            }
            pos += got as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return;
            }
        }
    })
}

fn channel_body(produce: impl FnOnce(mpsc::Sender<io::Result<Bytes>>) + Send + 'static) -> Body {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || produce(tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

/// Reads until `buf` is full or the reader ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A single byte range of a `Range: bytes=...` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole blob (also for multi-range requests,
    /// which RFC 9110 lets a server ignore).
    Whole,
    /// `start..start+len`.
    Part { start: u64, len: u64 },
    /// Outside the blob: 416.
    Unsatisfiable,
}

/// Parses `Range` against a blob of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => {
                let n = n.min(size);
                Some((size - n, size.saturating_sub(1)))
            }
            Err(_) => None,
        },
        (false, true) => a.parse::<u64>().ok().map(|s| (s, size.saturating_sub(1))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(size.saturating_sub(1)))),
            (Ok(_), Ok(_)) => return RangeRequest::Unsatisfiable,
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeRequest::Whole,
        Some((start, _)) if start >= size => RangeRequest::Unsatisfiable,
        Some((start, end)) => RangeRequest::Part {
            start,
            len: end - start + 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            Part { start: 0, len: 5 }
        );
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part { start: 5, len: 5 });
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part { start: 7, len: 3 });
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Part { start: 0, len: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            Part { start: 8, len: 2 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Whole);
    }
}
