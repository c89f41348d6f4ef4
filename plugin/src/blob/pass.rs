//! One sequential pass over a compressed archive (one zstd frame, gzip, lz4,
//! bzip2: no random access) serving every blob requested from it meanwhile.
//!
//! Blobs of such an archive can only be reached by decompressing it from its
//! first byte. When several blobs of one archive are asked for at once (a
//! pull through the mirror asks for every layer of an image together), one
//! pass decompresses the stream once and copies each requested blob to its
//! requester as the stream passes it, in stream order. The pass heads for
//! the nearest blob wanted ahead of it and looks again every
//! [`SKIP_CHUNK`] bytes on the way, so a request arriving while the pass
//! skips towards a farther blob is served on the way there; only a blob
//! asked for after the pass went by it waits for the next pass. Blobs
//! announced as expected ([`ArchivePasses::expect`]: the other layers of an
//! image being pulled or prepared) are handed to a keeper (the layer cache)
//! as the pass goes by them, so their own requests find them there instead
//! of starting a pass from the archive's first byte again. Whoever waits
//! runs the pass (there is no thread of its own), and passes over all
//! archives together are bounded by [`Permits`], sized to the cores, as
//! extractions are. Each blob is checked against its digest as it is
//! copied.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;

use super::VerifyingReader;

/// A counting semaphore for blocking threads: bounds the decompressions
/// running at once.
pub struct Permits {
    free: Mutex<usize>,
    cond: Condvar,
}

impl Permits {
    pub fn new(n: usize) -> Self {
        Permits {
            free: Mutex::new(n.max(1)),
            cond: Condvar::new(),
        }
    }

    /// One permit per core.
    pub fn per_core() -> Self {
        Permits::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Waits for a permit; it is given back when the guard drops.
    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cond.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if *free == 0 {
            return None;
        }
        *free -= 1;
        Some(Permit(self))
    }
}

pub struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cond.notify_one();
    }
}

/// A blob wanted from the archive's decompressed stream.
#[derive(Clone, Debug)]
pub struct PassRequest {
    pub digest: Digest,
    /// Offset and length in the decompressed stream.
    pub offset: u64,
    pub size: u64,
    /// The archive, for error messages.
    pub what: String,
}

struct Pending {
    id: u64,
    request: PassRequest,
    out: File,
}

/// How far a pass skips before it looks again for a nearer blob.
pub const SKIP_CHUNK: u64 = 1 << 20;

/// How long an announced blob stays expected: a client that fetched a
/// manifest and then found every layer in its own store asks for none.
pub const EXPECTED_FOR: Duration = Duration::from_secs(60);

/// Takes an expected blob the pass goes by: reads it from the reader (the
/// blob's bytes, checked against its digest) and returns true, or returns
/// false without reading (nobody needs it any more, or it is being filled
/// already).
pub type Keeper<'a> = &'a dyn Fn(&PassRequest, &mut dyn Read) -> io::Result<bool>;

#[derive(Default)]
struct State {
    next_id: u64,
    /// Requests not served yet.
    pending: Vec<Pending>,
    /// Blobs expected to be requested soon: kept as the pass goes by
    /// (until [`EXPECTED_FOR`] after they were announced).
    expected: Vec<(PassRequest, Instant)>,
    /// Outcomes not yet collected by their requesters.
    done: HashMap<u64, io::Result<()>>,
    /// A pass is running (on some requester's thread).
    running: bool,
}

/// The passes over one archive.
#[derive(Default)]
pub struct ArchivePasses {
    state: Mutex<State>,
    cond: Condvar,
}

impl ArchivePasses {
    /// Copies the blob `request` names into `out` (from its current
    /// position), checked against its digest. Shares one pass with every
    /// request for the same archive waiting meanwhile; `open` opens the
    /// decompressed stream at its start. Blocking.
    pub fn fill(
        &self,
        request: PassRequest,
        out: &File,
        open: &dyn Fn() -> io::Result<Box<dyn Read + Send>>,
        keep: Keeper<'_>,
        permits: &Permits,
    ) -> io::Result<()> {
        let out = out.try_clone()?;
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.pending.push(Pending { id, request, out });
        loop {
            if let Some(result) = st.done.remove(&id) {
                return result;
            }
            if !st.running {
                st.running = true;
                drop(st);
                {
                    // Even if the pass panics, the next waiter takes over.
                    let _over = PassOver(self);
                    self.run(open, keep, permits);
                }
                st = self.lock();
                continue;
            }
            st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Requests waiting for a pass (tests).
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Announces blobs about to be requested: the next pass hands those it
    /// goes by to its keeper. Forgotten once a pass went by them.
    pub fn expect(&self, requests: impl IntoIterator<Item = PassRequest>) {
        let mut st = self.lock();
        let now = Instant::now();
        st.expected
            .retain(|(_, at)| now.duration_since(*at) < EXPECTED_FOR);
        for r in requests {
            match st.expected.iter_mut().find(|(e, _)| e.digest == r.digest) {
                Some(slot) => slot.1 = now,
                None => st.expected.push((r, now)),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nearest blob wanted at or after `pos`: a pending request (taken)
    /// or an expected blob (taken). A request wins a tie.
    fn next_after(&self, pos: u64) -> Option<Next> {
        let mut st = self.lock();
        let request = st
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.request.offset >= pos)
            .min_by_key(|(_, p)| p.request.offset)
            .map(|(i, p)| (i, p.request.offset));
        let expected = st
            .expected
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| e.offset >= pos)
            .min_by_key(|(_, (e, _))| e.offset)
            .map(|(i, (e, _))| (i, e.offset));
        match (request, expected) {
            (Some((i, r)), e) if e.is_none_or(|(_, e)| r <= e) => {
                Some(Next::Request(st.pending.swap_remove(i)))
            }
            (_, Some((i, _))) => Some(Next::Expected(st.expected.swap_remove(i))),
            _ => None,
        }
    }

    /// Puts back what [`Self::next_after`] took.
    fn put_back(&self, next: Next) {
        let mut st = self.lock();
        match next {
            Next::Request(p) => st.pending.push(p),
            Next::Expected(e) => st.expected.push(e),
        }
    }

    fn finish(&self, id: u64, result: io::Result<()>) {
        self.lock().done.insert(id, result);
        self.cond.notify_all();
    }

    /// One pass from the stream's start, serving pending requests and
    /// keeping expected blobs in stream order until none is left ahead.
    /// Ends at the first error of the stream (the request being served gets
    /// it; the others wait for the next pass).
    fn run(
        &self,
        open: &dyn Fn() -> io::Result<Box<dyn Read + Send>>,
        keep: Keeper<'_>,
        permits: &Permits,
    ) {
        let _permit = permits.acquire();
        {
            let mut st = self.lock();
            if st.pending.is_empty() {
                return; // served meanwhile: expected blobs alone start no pass
            }
            let now = Instant::now();
            st.expected
                .retain(|(_, at)| now.duration_since(*at) < EXPECTED_FOR);
        }
        let Some(first) = self.next_after(0) else {
            return;
        };
        let mut stream = match open() {
            Ok(s) => s,
            Err(e) => {
                if let Next::Request(p) = first {
                    self.finish(p.id, Err(e));
                }
                return;
            }
        };
        let mut pos = 0u64;
        let mut next = Some(first);
        while let Some(target) = next.take() {
            let offset = target.request().offset;
            if offset > pos {
                // Towards the target, a chunk at a time: a nearer blob
                // asked for meanwhile is served first.
                let step = (offset - pos).min(SKIP_CHUNK);
                let skipped = io::copy(&mut stream.by_ref().take(step), &mut io::sink());
                match skipped {
                    Ok(n) if n == step => pos += n,
                    other => {
                        let err = other.err().unwrap_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "{} ends before blob {}",
                                    target.request().what,
                                    target.request().digest
                                ),
                            )
                        });
                        if let Next::Request(p) = target {
                            self.finish(p.id, Err(err));
                        }
                        return;
                    }
                }
                self.put_back(target);
                next = self.next_after(pos);
                continue;
            }
            let failed = match target {
                Next::Request(mut p) => {
                    let result = serve(&mut stream, &mut pos, &p.request, &mut p.out);
                    let failed = result.is_err();
                    self.finish(p.id, result);
                    failed
                }
                Next::Expected((r, _)) => keep_one(&mut stream, &mut pos, &r, keep).is_err(),
            };
            if failed {
                break;
            }
            next = self.next_after(pos);
        }
        // Expected blobs the pass went by are not expected any more.
        self.lock().expected.retain(|(e, _)| e.offset >= pos);
    }
}

/// What a pass heads for next (an expected blob with when it was
/// announced).
enum Next {
    Request(Pending),
    Expected((PassRequest, Instant)),
}

impl Next {
    fn request(&self) -> &PassRequest {
        match self {
            Next::Request(p) => &p.request,
            Next::Expected((r, _)) => r,
        }
    }
}

/// Hands the expected blob at `pos` to `keep`, checked against its digest;
/// reads past whatever it left. An error only when the stream itself fails
/// (a blob with wrong bytes is just not kept: its own request reports it).
fn keep_one(
    stream: &mut Box<dyn Read + Send>,
    pos: &mut u64,
    r: &PassRequest,
    keep: Keeper<'_>,
) -> io::Result<()> {
    let mut blob = stream.by_ref().take(r.size);
    {
        let mut checked = VerifyingReader::new(&mut blob, r.digest, r.size, r.what.clone());
        if let Err(e) = keep(r, &mut checked) {
            tracing::debug!(digest = %r.digest, error = %e, "an expected blob was not kept");
        }
    }
    io::copy(&mut blob, &mut io::sink())?;
    *pos = r.offset + r.size - blob.limit();
    if blob.limit() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} ends before blob {}", r.what, r.digest),
        ));
    }
    Ok(())
}

/// Copies the blob at `pos` (the request's offset), checked.
fn serve(
    stream: &mut Box<dyn Read + Send>,
    pos: &mut u64,
    r: &PassRequest,
    out: &mut File,
) -> io::Result<()> {
    debug_assert_eq!(*pos, r.offset);
    let mut blob = VerifyingReader::new(
        stream.by_ref().take(r.size),
        r.digest,
        r.size,
        r.what.clone(),
    );
    let copied = io::copy(&mut blob, out);
    // However far the copy got, the stream moved: the pass ends on error.
    *pos = r.offset + r.size;
    copied?;
    out.flush()
}

/// Marks the pass over when dropped, and wakes the waiters (one of them
/// runs the next pass if requests are left).
struct PassOver<'a>(&'a ArchivePasses);

impl Drop for PassOver<'_> {
    fn drop(&mut self) {
        self.0.lock().running = false;
        self.0.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A stream that counts what it produces and is slow enough for
    /// requests to gather while a pass runs.
    struct Slow {
        data: Arc<Vec<u8>>,
        pos: usize,
        produced: Arc<AtomicU64>,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(200));
            let n = buf.len().min(4096).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            self.produced.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    #[test]
    fn concurrent_requests_share_one_pass_and_get_their_own_bytes() {
        // A filler, then 6 blobs.
        let mut data = vec![7u8; 400_000];
        let mut blobs = Vec::new();
        for i in 0..6u8 {
            let blob: Vec<u8> = (0..50_000u32).map(|j| (j as u8) ^ i).collect();
            blobs.push((data.len() as u64, blob.clone()));
            data.extend_from_slice(&blob);
        }
        let data = Arc::new(data);
        let produced = Arc::new(AtomicU64::new(0));
        let passes = Arc::new(ArchivePasses::default());
        let permits = Arc::new(Permits::new(2));
        // All permits held: the requests line up behind the first.
        let held = permits.try_acquire().zip(permits.try_acquire());
        assert!(held.is_some());
        let threads: Vec<_> = blobs
            .iter()
            .cloned()
            .map(|(offset, blob)| {
                let (data, produced, passes, permits) = (
                    data.clone(),
                    produced.clone(),
                    passes.clone(),
                    permits.clone(),
                );
                std::thread::spawn(move || {
                    let out = tempfile::tempfile().unwrap();
                    let request = PassRequest {
                        digest: Digest::of(&blob),
                        offset,
                        size: blob.len() as u64,
                        what: "test".into(),
                    };
                    let open = move || -> io::Result<Box<dyn Read + Send>> {
                        Ok(Box::new(Slow {
                            data: data.clone(),
                            pos: 0,
                            produced: produced.clone(),
                        }))
                    };
                    passes
                        .fill(request, &out, &open, &|_, _| Ok(false), &permits)
                        .unwrap();
                    let mut got = Vec::new();
                    let mut f = out;
                    use std::io::Seek;
                    f.rewind().unwrap();
                    f.read_to_end(&mut got).unwrap();
                    assert_eq!(got, blob);
                })
            })
            .collect();
        while passes.pending() < blobs.len() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            produced.load(Ordering::Relaxed),
            data.len() as u64,
            "the stream was decompressed more than once"
        );
    }

    /// A request for a far blob starts the pass; a request for a nearer
    /// one arriving while the pass skips towards the first is served on
    /// the way, and an expected blob it goes by is handed to the keeper:
    /// one pass for all three.
    #[test]
    fn a_pass_serves_what_it_meets_on_the_way_and_keeps_what_is_expected() {
        let data: Arc<Vec<u8>> = Arc::new((0..4_000_000u32).map(|i| (i % 251) as u8).collect());
        let produced = Arc::new(AtomicU64::new(0));
        let passes = Arc::new(ArchivePasses::default());
        let permits = Arc::new(Permits::new(1));
        let request = |offset: usize, size: usize| PassRequest {
            digest: Digest::of(&data[offset..offset + size]),
            offset: offset as u64,
            size: size as u64,
            what: "test".into(),
        };
        let (far, near, expected) = (
            request(3_900_000, 50_000),
            request(2_000_000, 50_000),
            request(3_000_000, 10_000),
        );
        passes.expect([expected.clone()]);
        type Kept = Arc<Mutex<Vec<(Digest, Vec<u8>)>>>;
        let kept: Kept = Arc::default();
        let spawn = |r: PassRequest| {
            let (data, produced, passes, permits, kept) = (
                data.clone(),
                produced.clone(),
                passes.clone(),
                permits.clone(),
                kept.clone(),
            );
            std::thread::spawn(move || {
                let out = tempfile::tempfile().unwrap();
                let open = move || -> io::Result<Box<dyn Read + Send>> {
                    Ok(Box::new(Slow {
                        data: data.clone(),
                        pos: 0,
                        produced: produced.clone(),
                    }))
                };
                let keep = |r: &PassRequest, blob: &mut dyn Read| -> io::Result<bool> {
                    let mut bytes = Vec::new();
                    blob.read_to_end(&mut bytes)?;
                    kept.lock().unwrap().push((r.digest, bytes));
                    Ok(true)
                };
                passes.fill(r, &out, &open, &keep, &permits).unwrap();
                let mut got = Vec::new();
                let mut f = out;
                use std::io::Seek;
                f.rewind().unwrap();
                f.read_to_end(&mut got).unwrap();
                got
            })
        };
        let first = spawn(far.clone());
        while produced.load(Ordering::Relaxed) < 200_000 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let second = spawn(near.clone());
        assert_eq!(first.join().unwrap(), data[3_900_000..3_950_000]);
        assert_eq!(second.join().unwrap(), data[2_000_000..2_050_000]);
        assert_eq!(
            *kept.lock().unwrap(),
            vec![(expected.digest, data[3_000_000..3_010_000].to_vec())]
        );
        assert_eq!(
            produced.load(Ordering::Relaxed),
            3_950_000,
            "more than one pass, or past the last blob"
        );
    }

    #[test]
    fn a_bad_blob_fails_alone_and_a_late_request_gets_a_new_pass() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let passes = ArchivePasses::default();
        let permits = Permits::new(1);
        let open = || -> io::Result<Box<dyn Read + Send>> {
            Ok(Box::new(io::Cursor::new(
                (0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>(),
            )))
        };
        let out = tempfile::tempfile().unwrap();
        let bad = PassRequest {
            digest: Digest::of(b"not these bytes"),
            offset: 100,
            size: 200,
            what: "archive.tar.gz".into(),
        };
        let err = passes
            .fill(bad, &out, &open, &|_, _| Ok(false), &permits)
            .unwrap_err();
        assert!(err.to_string().contains("archive.tar.gz"), "{err}");
        let good = PassRequest {
            digest: Digest::of(&data[50..60]),
            offset: 50,
            size: 10,
            what: "archive.tar.gz".into(),
        };
        let out = tempfile::tempfile().unwrap();
        passes
            .fill(good, &out, &open, &|_, _| Ok(false), &permits)
            .unwrap();
        let beyond = PassRequest {
            digest: Digest::of(b"x"),
            offset: 20_000,
            size: 1,
            what: "archive.tar.gz".into(),
        };
        let err = passes
            .fill(beyond, &out, &open, &|_, _| Ok(false), &permits)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
