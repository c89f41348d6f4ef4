//! The layer cache: decompressed blobs on disk, bounded in bytes, evicted
//! least-recently-used first. One fill per digest at a time; an evicted
//! entry's file is deleted only when its last reader drops it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    fills: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
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
        })
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
        let _guard = lock.lock().unwrap();
        let result = self.fill_locked(digest, fill);
        self.fills.lock().unwrap().remove(digest);
        result
    }

    fn fill_locked(
        &self,
        digest: &Digest,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<(Arc<CacheEntry>, bool)> {
        if let Some(e) = self.get(digest) {
            return Ok((e, true));
        }
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut file = tmp.reopen()?;
        fill(&mut file)?;
        let path = self.dir.join(digest.hex());
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
        inner.lru.put(*digest, entry.clone());
        while inner.bytes > self.budget && inner.lru.len() > 1 {
            let Some((old, e)) = inner.lru.pop_lru() else {
                break;
            };
            inner.bytes -= e.size;
            e.evicted.store(true, Ordering::Release);
            tracing::debug!(digest = %old, size = e.size, "evicted from the layer cache");
        }
        if inner.bytes > self.budget && inner.lru.len() == 1 && size > self.budget {
            // Larger than the whole budget: serve it, then let it go.
            inner.lru.pop(digest);
            inner.bytes -= size;
            entry.evicted.store(true, Ordering::Release);
        }
        Ok((entry, false))
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
}
