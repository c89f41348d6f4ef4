//! Watches the archive directories (inotify) so archives added, replaced or
//! deleted while the daemon runs are picked up without a restart.
//!
//! Events only say "look again": every wake-up is a [`Catalog::rescan`], which
//! compares each file's (device, inode, size, mtime) with what is indexed.
//! A file modified within the settle delay is still being copied and is looked
//! at again once it has been left alone; a periodic rescan covers lost events
//! (inotify queue overflow, a directory created after start). A directory
//! whose identity (device, inode) changes, such as a disk mounted on the
//! mount point, is watched again and looked at at once: inotify watches the
//! directory it was given, and never reports files of a filesystem mounted
//! over it. A missing archive is looked at again when it would count as gone.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::Catalog;

/// A full rescan this often even without events.
const POLL: Duration = Duration::from_secs(30);
/// The directories' identities are checked this often (a `stat` each).
const DIR_CHECK: Duration = Duration::from_secs(2);

/// A directory's (device, inode), `None` when it cannot be looked at.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Stops the watcher when dropped.
pub struct WatchHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Wake {
    Fs,
    Stop,
}

impl Catalog {
    /// Starts watching the catalog's directories on a thread of its own.
    pub fn watch(self: &Arc<Self>) -> WatchHandle {
        let (tx, rx) = mpsc::channel::<Wake>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let fs_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = fs_tx.send(Wake::Fs);
            }
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: archives are picked up by periodic rescans only");
                None
            }
        };
        std::thread::spawn(move || {
            let _ = stop_rx.recv();
            let _ = tx.send(Wake::Stop);
        });
        let catalog = self.clone();
        let thread = std::thread::Builder::new()
            .name("archive-watch".into())
            .spawn(move || {
                let settle = catalog.options().settle;
                let dirs = catalog.options().dirs.clone();
                let mut watched: Vec<PathBuf> = Vec::new();
                let mut identities: HashMap<PathBuf, Option<(u64, u64)>> =
                    dirs.iter().map(|d| (d.clone(), identity(d))).collect();
                let mut next_scan = Instant::now();
                loop {
                    if let Some(w) = watcher.as_mut() {
                        for dir in &dirs {
                            if !watched.contains(dir) && dir.is_dir() {
                                match w.watch(dir, RecursiveMode::NonRecursive) {
                                    Ok(()) => watched.push(dir.clone()),
                                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
                                }
                            }
                        }
                        watched.retain(|d| d.is_dir());
                    }
                    if Instant::now() >= next_scan {
                        let report = catalog.rescan();
                        if catalog.stopping() {
                            break;
                        }
                        // Something still settling: look again once it may
                        // have; a missing archive: when it counts as gone.
                        let mut wait = if report.unsettled.is_empty() { POLL } else { settle };
                        if let Some(removal) = report.next_removal {
                            // A little after, so the scan finds it past due.
                            wait = wait.min(removal + Duration::from_millis(10));
                        }
                        next_scan = Instant::now() + wait;
                    }
                    let timeout = next_scan
                        .saturating_duration_since(Instant::now())
                        .min(DIR_CHECK);
                    match rx.recv_timeout(timeout) {
                        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                        Ok(Wake::Fs) => {
                            // Let a burst of events (a copy in progress) pass.
                            std::thread::sleep(settle.min(Duration::from_millis(500)));
                            while let Ok(w) = rx.try_recv() {
                                if matches!(w, Wake::Stop) {
                                    return;
                                }
                            }
                            next_scan = Instant::now();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    for dir in &dirs {
                        let now = identity(dir);
                        let before = identities.insert(dir.clone(), now);
                        if before.is_some_and(|b| b != now) {
                            tracing::info!(dir = %dir.display(),
                                "archives directory changed (a filesystem mounted or unmounted there, or the directory replaced): looking again");
                            if let Some(w) = watcher.as_mut() {
                                if watched.contains(dir) {
                                    let _ = w.unwatch(dir);
                                    watched.retain(|d| d != dir);
                                }
                            }
                            next_scan = Instant::now();
                        }
                    }
                }
            })
            .expect("spawning the archive watcher");
        WatchHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}
