//! The layer cache: decompressed blobs on disk, bounded in bytes, evicted
//! least-recently-used first. One fill per digest at a time; an evicted
//! entry's file is deleted only when its last reader drops it. Every fill
//! has a file name of its own (`<digest hex>.<fill number>`), so the last
//! reader of an evicted entry deletes that entry's file, never a newer fill
//! of the same digest.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::digest::Digest;

/// One cached blob. Hold the `Arc` while reading it.
#[derive(Debug)]
pub struct CacheEntry {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    evicted: AtomicBool,
}

impl CacheEntry {
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for CacheEntry {
    fn drop(&mut self) {
        if self.evicted.load(Ordering::Acquire) {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "removing an evicted cache file");
            }
        }
    }
}

struct Inner {
    lru: LruCache<Digest, Arc<CacheEntry>>,
    bytes: u64,
}

pub struct LayerCache {
    dir: PathBuf,
    budget: u64,
    inner: Mutex<Inner>,
    /// One lock per digest being filled, shared by everyone waiting for
    /// that fill; removed by the last of them.
    fills: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Numbers fills, for their file names.
    generation: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub entries: usize,
    pub bytes: u64,
}

impl LayerCache {
    /// A cache in `dir` (created; anything left there by an earlier run is
    /// removed) holding at most about `budget` bytes.
    pub fn open(dir: &Path, budget: u64) -> io::Result<LayerCache> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("clearing cache {}: {e}", dir.display()))
            })?;
        }
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("creating cache {}: {e}", dir.display()))
        })?;
        Ok(LayerCache {
            dir: dir.to_path_buf(),
            budget,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            fills: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// Entries evicted so far (a metric).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> CacheUsage {
        let inner = self.inner.lock().unwrap();
        CacheUsage {
            entries: inner.lru.len(),
            bytes: inner.bytes,
        }
    }

    /// Whether `digest` is cached, without making it recently used.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.lock().unwrap().lru.contains(digest)
    }

    pub fn get(&self, digest: &Digest) -> Option<Arc<CacheEntry>> {
        self.inner.lock().unwrap().lru.get(digest).cloned()
    }

    /// The cached blob, or fills it with `fill` (which writes the whole blob
    /// to the file it is given and fails if the bytes are wrong). Concurrent
    /// callers for the same digest wait for one fill. Returns the entry and
    /// whether it was a hit.
    pub fn get_or_fill(
        &self,
        digest: &Digest,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<(Arc<CacheEntry>, bool)> {
        if let Some(e) = self.get(digest) {
            return Ok((e, true));
        }
        let lock = self
            .fills
            .lock()
            .unwrap()
            .entry(*digest)
            .or_default()
            .clone();
        let guard = lock.lock().unwrap();
        // A fill that ended while this caller waited for it is a hit.
        let result = match self.get(digest) {
            Some(e) => Ok((e, true)),
            None => self.fill_locked(digest, fill).map(|e| (e, false)),
        };
        // Only the last caller of this fill removes its lock: one still
        // waiting for it (after a failed fill, it fills next) must not find
        // a newcomer filling beside it under a fresh lock.
        let mut fills = self.fills.lock().unwrap();
        if Arc::strong_count(&lock) == 2 && fills.get(digest).is_some_and(|l| Arc::ptr_eq(l, &lock))
        {
            fills.remove(digest);
        }
        drop(fills);
        drop(guard);
        result
    }

    /// Fills `digest` with `fill` unless it is cached or being filled
    /// already (then `fill` is not called and the answer is false): for a
    /// blob kept on the way, that nobody waits for yet.
    pub fn try_fill(
        &self,
        digest: &Digest,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<bool> {
        if self.contains(digest) {
            return Ok(false);
        }
        let lock = {
            let mut fills = self.fills.lock().unwrap();
            if fills.contains_key(digest) {
                return Ok(false);
            }
            fills.entry(*digest).or_default().clone()
        };
        let guard = lock.lock().unwrap();
        let result = match self.get(digest) {
            Some(_) => Ok(false),
            None => self.fill_locked(digest, fill).map(|_| true),
        };
        let mut fills = self.fills.lock().unwrap();
        if Arc::strong_count(&lock) == 2 && fills.get(digest).is_some_and(|l| Arc::ptr_eq(l, &lock))
        {
            fills.remove(digest);
        }
        drop(fills);
        drop(guard);
        result
    }

    /// Fills the blob's entry; the caller holds its fill lock.
    fn fill_locked(
        &self,
        digest: &Digest,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<Arc<CacheEntry>> {
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut file = tmp.reopen()?;
        fill(&mut file)?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}.{generation}", digest.hex()));
        tmp.persist(&path).map_err(|e| e.error)?;
        let size = file.metadata()?.len();
        let entry = Arc::new(CacheEntry {
            path,
            file: Arc::new(file),
            size,
            evicted: AtomicBool::new(false),
        });
        let mut inner = self.inner.lock().unwrap();
        inner.bytes += size;
        if let Some(replaced) = inner.lru.put(*digest, entry.clone()) {
            // Never expected (one fill per digest at a time); if it
            // happens, its bytes are not counted twice.
            inner.bytes -= replaced.size;
            replaced.evicted.store(true, Ordering::Release);
        }
        while inner.bytes > self.budget && inner.lru.len() > 1 {
            let Some((old, e)) = inner.lru.pop_lru() else {
                break;
            };
            inner.bytes -= e.size;
            e.evicted.store(true, Ordering::Release);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(digest = %old, size = e.size, "evicted from the layer cache");
        }
        if inner.bytes > self.budget && inner.lru.len() == 1 && size > self.budget {
            // Larger than the whole budget: serve it, then let it go.
            inner.lru.pop(digest);
            inner.bytes -= size;
            entry.evicted.store(true, Ordering::Release);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;

    fn put(cache: &LayerCache, data: &[u8]) -> Arc<CacheEntry> {
        let d = Digest::of(data);
        cache.get_or_fill(&d, |f| f.write_all(data)).unwrap().0
    }

    #[test]
    fn evicts_lru_and_deletes_after_last_reader() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&dir.path().join("c"), 250).unwrap();
        let a = put(&cache, &[1; 100]);
        let a_path = a.path.clone();
        drop(put(&cache, &[2; 100]));
        // Touch a so b is the least recently used.
        assert!(cache.get(&Digest::of(&[1; 100])).is_some());
        drop(put(&cache, &[3; 100]));
        assert!(!cache.contains(&Digest::of(&[2; 100])), "b evicted");
        assert!(cache.contains(&Digest::of(&[1; 100])));
        assert_eq!(
            cache.usage(),
            CacheUsage {
                entries: 2,
                bytes: 200
            }
        );
        drop(put(&cache, &[4; 100]));
        // a is evicted now but still held: its file stays until dropped.
        assert!(!cache.contains(&Digest::of(&[1; 100])));
        assert!(a_path.exists());
        drop(a);
        assert!(!a_path.exists());
        assert_eq!(cache.evictions(), 2);
        let files = fs::read_dir(dir.path().join("c")).unwrap().count();
        assert_eq!(files, 2);
    }

    #[test]
    fn concurrent_fills_of_one_digest_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(LayerCache::open(dir.path(), 1 << 20).unwrap());
        let fills = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, fills) = (cache.clone(), fills.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_fill(&Digest::of(b"x"), |f| {
                            fills.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            f.write_all(b"x")
                        })
                        .unwrap();
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(fills.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(dir.path(), 1 << 20).unwrap();
        let err = cache.get_or_fill(&Digest::of(b"x"), |_| Err(io::Error::other("bad bytes")));
        assert!(err.is_err());
        assert!(cache.get(&Digest::of(b"x")).is_none());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// An evicted entry still read, then a new fill of the same digest: the
    /// old reader letting go never deletes the new fill's file.
    #[test]
    fn dropping_an_evicted_entry_keeps_a_newer_fill_of_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&dir.path().join("c"), 150).unwrap();
        let old = put(&cache, &[1; 100]);
        drop(put(&cache, &[2; 100]));
        assert!(!cache.contains(&Digest::of(&[1; 100])), "evicted");
        let new = put(&cache, &[1; 100]);
        assert!(new.path.exists());
        drop(old);
        assert!(new.path.exists(), "the newer fill's file was deleted");
        assert_eq!(cache.usage().bytes, 100);
        drop(new);
    }

    /// A fill that fails while another caller waits for it: that caller
    /// fills next, and a third caller arriving meanwhile waits for it
    /// instead of running a second fill beside it; its bytes count once.
    #[test]
    fn after_a_failed_fill_one_fill_runs_and_counts_once() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(LayerCache::open(dir.path(), 1 << 20).unwrap());
        let d = Digest::of(b"data");
        let fills = Arc::new(AtomicUsize::new(0));
        let (release1, wait1) = channel::<()>();
        let (started2, wait_started2) = channel::<()>();
        let (release2, wait2) = channel::<()>();
        type Fill = Box<dyn FnOnce(&mut File) -> io::Result<()> + Send>;
        let spawn = |f: Fill| {
            let (cache, fills) = (cache.clone(), fills.clone());
            std::thread::spawn(move || {
                cache
                    .get_or_fill(&d, |file| {
                        fills.fetch_add(1, Ordering::SeqCst);
                        f(file)
                    })
                    .map(|(e, _)| e.size())
            })
        };
        let t1 = spawn(Box::new(move |_| {
            wait1.recv().unwrap();
            Err(io::Error::other("bad bytes"))
        }));
        std::thread::sleep(Duration::from_millis(100));
        let t2 = spawn(Box::new(move |f| {
            started2.send(()).unwrap();
            wait2.recv().unwrap();
            f.write_all(b"data")
        }));
        std::thread::sleep(Duration::from_millis(100));
        release1.send(()).unwrap();
        wait_started2.recv().unwrap();
        let t3 = spawn(Box::new(|f| f.write_all(b"data")));
        std::thread::sleep(Duration::from_millis(200));
        release2.send(()).unwrap();
        assert!(t1.join().unwrap().is_err());
        assert_eq!(t2.join().unwrap().unwrap(), 4);
        assert_eq!(t3.join().unwrap().unwrap(), 4);
        assert_eq!(
            fills.load(Ordering::SeqCst),
            2,
            "a second fill ran beside the first"
        );
        assert_eq!(
            cache.usage(),
            CacheUsage {
                entries: 1,
                bytes: 4
            }
        );
    }
}
