//! Archives rewritten in place: `cp new.tar old.tar`, `curl -o`, `scp` and
//! `install` truncate and rewrite the same inode (the k3s upgrade does it).
//! A layer mounted with the archive itself as backing file
//! (`layer_backing = "archive"`) then reads the new bytes at the old
//! offsets; with private copies (the default) nothing a container reads
//! changes, but the operator should still replace archives by rename.
//!
//! The catalog calls [`seen`] whenever a rescan finds a known archive's file
//! changed; a rewrite in place (same device and inode, new size or mtime)
//! is logged at error level (naming the mounted layers that read the
//! archive itself), counted (`airgap_archive_rewrites_total`), and recorded
//! in `<root>/archive-rewrites.json`, which `doctor` reads.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalog::FileKey;

use super::record::{BackingRecord, RECORD};

/// The status file under the daemon root.
pub const STATUS: &str = "archive-rewrites.json";

/// Rewrites kept in the status file (the latest).
const KEEP: usize = 50;

/// One archive found rewritten in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    pub archive: PathBuf,
    /// When it was found (seconds since the epoch).
    pub at: u64,
    pub size_before: u64,
    pub size_after: u64,
    /// Snapshots whose mounted layer reads the archive itself
    /// (`snapshot <id>: layer <digest>`), which now read other bytes.
    #[serde(default)]
    pub mounted_layers: Vec<String>,
}

/// `<root>/archive-rewrites.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub rewrites: Vec<Rewrite>,
}

#[derive(Debug, thiserror::Error)]
pub enum RewritesError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Default)]
struct Watch {
    /// The daemon root (status file, snapshots), once the daemon set it.
    root: Option<PathBuf>,
    /// (archive, old key) already reported: a file being written is seen
    /// changed scan after scan until it settles.
    reported: HashSet<(PathBuf, FileKey)>,
}

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

/// Where rewrites are recorded and which snapshots to look at: the daemon
/// calls this once at start.
pub fn init(root: &Path) {
    let mut watch = WATCH.lock().unwrap();
    watch.get_or_insert_with(Watch::default).root = Some(root.to_owned());
}

/// Whether `new` is `old`'s file rewritten in place.
pub fn is_rewrite(old: &FileKey, new: &FileKey) -> bool {
    (old.dev, old.ino) == (new.dev, new.ino) && (old.size, old.mtime_ns) != (new.size, new.mtime_ns)
}

/// The catalog found the archive at `path`, known as `old`, to be `new`
/// now: reported once if that is a rewrite in place (see the module
/// documentation).
pub fn seen(path: &Path, old: &FileKey, new: &FileKey) {
    if !is_rewrite(old, new) {
        return;
    }
    let root = {
        let mut guard = WATCH.lock().unwrap();
        let watch = guard.get_or_insert_with(Watch::default);
        if !watch.reported.insert((path.to_owned(), *old)) {
            return;
        }
        watch.root.clone()
    };
    let mounted = root
        .as_deref()
        .map(|r| mounted_from(&r.join("snapshots"), path))
        .unwrap_or_default();
    crate::metrics::global().archive_rewrites.inc();
    tracing::error!(
        archive = %path.display(),
        size_before = old.size,
        size_after = new.size,
        mounted_layers = ?mounted,
        "archive rewritten in place (same file, new contents): replace archives by rename \
         (`cp new.tar DIR/.NAME.tmp && mv DIR/.NAME.tmp DIR/NAME.tar`); layers mounted from \
         the archive itself (named here) now read other bytes, private copies are unaffected"
    );
    let Some(root) = root else { return };
    let rewrite = Rewrite {
        archive: path.to_owned(),
        at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        size_before: old.size,
        size_after: new.size,
        mounted_layers: mounted,
    };
    if let Err(err) = record(&root, rewrite) {
        tracing::warn!(error = %err, "cannot record an archive rewrite for doctor");
    }
}

/// The snapshots in `snapshots` whose layer is mounted with `archive`
/// itself as backing file.
fn mounted_from(snapshots: &Path, archive: &Path) -> Vec<String> {
    let Ok(listing) = fs::read_dir(snapshots) else {
        return Vec::new();
    };
    let mut found: Vec<String> = listing
        .flatten()
        .filter_map(|e| {
            let record = BackingRecord::read(&e.path().join(RECORD)).ok()?;
            (record.archive == archive).then(|| {
                format!(
                    "snapshot {}: layer {}",
                    e.file_name().to_string_lossy(),
                    record.digest
                )
            })
        })
        .collect();
    found.sort();
    found
}

/// Appends `rewrite` to `<root>/archive-rewrites.json` (the latest
/// [`KEEP`]), replacing the file by rename.
fn record(root: &Path, rewrite: Rewrite) -> Result<(), RewritesError> {
    let mut status = read_status(root)?;
    status.rewrites.push(rewrite);
    let extra = status.rewrites.len().saturating_sub(KEEP);
    status.rewrites.drain(..extra);
    let path = root.join(STATUS);
    let tmp = root.join(format!(".{STATUS}.tmp"));
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| RewritesError::Io { what, path, source }
    };
    let json = serde_json::to_vec_pretty(&status).expect("plain data serializes");
    fs::write(&tmp, json).map_err(io("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename into", &path))
}

/// The rewrites recorded under `root` (none when the file is absent).
pub fn read_status(root: &Path) -> Result<Status, RewritesError> {
    let path = root.join(STATUS);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| RewritesError::Parse {
            path: path.clone(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::default()),
        Err(source) => Err(RewritesError::Io {
            what: "read",
            path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64, size: u64, mtime_ns: i128) -> FileKey {
        FileKey {
            dev: 1,
            ino,
            size,
            mtime_ns,
            ctime_ns: mtime_ns,
        }
    }

    #[test]
    fn only_the_same_inode_with_new_contents_is_a_rewrite() {
        assert!(is_rewrite(&key(5, 10, 1), &key(5, 10, 2)));
        assert!(is_rewrite(&key(5, 10, 1), &key(5, 11, 1)));
        // Replaced by rename: another inode.
        assert!(!is_rewrite(&key(5, 10, 1), &key(6, 11, 2)));
        // chmod/touch -c of nothing: ctime only.
        let mut chmod = key(5, 10, 1);
        chmod.ctime_ns = 9;
        assert!(!is_rewrite(&key(5, 10, 1), &chmod));
    }

    /// Recorded once per version of the file, with the snapshots that
    /// read the archive itself; read back as doctor does.
    #[test]
    fn a_rewrite_is_recorded_once_with_its_mounted_layers() {
        let root = tempfile::tempdir().unwrap();
        let archive = root.path().join("archives/app.tar");
        let snap = root.path().join("snapshots/7");
        fs::create_dir_all(&snap).unwrap();
        let digest = crate::digest::Digest::of(b"layer");
        BackingRecord {
            archive: archive.clone(),
            key: key(5, 10, 1),
            data_base: 1536,
            digest,
            diff_id: digest,
            inodes: 3,
            reflinked: false,
        }
        .write(&snap)
        .unwrap();
        init(root.path());
        let before = crate::metrics::global().archive_rewrites.get();
        // Inode numbers no other test uses (the dedup set is global).
        let old = key(0xfeed_0001, 10, 1);
        seen(&archive, &old, &key(0xfeed_0001, 12, 2));
        seen(&archive, &old, &key(0xfeed_0001, 14, 3));
        seen(&archive, &old, &key(0xfeed_0002, 14, 3));
        let status = read_status(root.path()).unwrap();
        assert_eq!(status.rewrites.len(), 1, "{status:?}");
        let r = &status.rewrites[0];
        assert_eq!((r.size_before, r.size_after), (10, 12));
        assert_eq!(
            r.mounted_layers,
            vec![format!("snapshot 7: layer {digest}")]
        );
        assert!(crate::metrics::global().archive_rewrites.get() > before);
    }
}
