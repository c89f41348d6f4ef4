//! What an index points into: the backing file, its identity, and the
//! layer it holds; written beside every index as `backing.json`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{FileKey, LayerRef, PlainBlob};
use crate::digest::Digest;

use super::LayerError;

/// The index, in an entry and in a snapshot staged from it.
pub(crate) const IMAGE: &str = "layer.erofs";
/// What the index points into, in an entry and in a snapshot.
pub(crate) const RECORD: &str = "backing.json";
/// The decompressed tar of a layer not stored as a plain tar.
pub(crate) const COPY: &str = "layer.tar";

/// What an index points into: its backing file and the layer it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BackingRecord {
    /// The archive (absolute), or [`COPY`] (relative: beside the record).
    pub(crate) archive: PathBuf,
    /// The backing file's identity when indexed.
    pub(crate) key: FileKey,
    /// Where the layer starts in the backing file.
    pub(crate) data_base: u64,
    pub(crate) digest: Digest,
    pub(crate) diff_id: Digest,
    /// Inodes of the index (the snapshot's `Usage`).
    #[serde(default)]
    pub(crate) inodes: u64,
    /// The copy shares its blocks with the archive (a reflink clone): it
    /// takes no disk of its own until the archive is rewritten or deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reflinked: bool,
}

impl BackingRecord {
    /// Whether `now` (the backing file's identity today) is the file that
    /// was indexed. A copy's change time moves when it is linked, so a copy
    /// is known by device, inode, size and modification time.
    pub(crate) fn matches(&self, now: &FileKey) -> bool {
        if self.archive.is_relative() {
            (now.dev, now.ino, now.size, now.mtime_ns)
                == (self.key.dev, self.key.ino, self.key.size, self.key.mtime_ns)
        } else {
            *now == self.key
        }
    }

    /// Whether this record indexes `layer` as it is found today: in place in
    /// `plain` when `in_place` (layer_backing = "archive"), else over a
    /// private copy, whose content is the layer's (its diffID was checked
    /// when it was made) whatever archive it came from.
    pub(crate) fn serves(
        &self,
        layer: &LayerRef,
        plain: Option<&PlainBlob>,
        in_place: bool,
    ) -> bool {
        if self.diff_id != layer.diff_id {
            return false;
        }
        match plain {
            Some(p) if in_place => {
                self.archive == p.path && self.key == p.key && self.data_base == p.offset
            }
            _ => self.archive.is_relative(),
        }
    }

    /// Bytes of its own the copy takes (0 for a clone, which shares the
    /// archive's blocks, and for an index in place).
    pub(crate) fn copy_counts(&self) -> bool {
        self.archive.is_relative() && !self.reflinked
    }

    pub(crate) fn read(path: &Path) -> Result<Self, LayerError> {
        let bytes = fs::read(path).map_err(LayerError::io("read", path))?;
        serde_json::from_slice(&bytes).map_err(|e| LayerError::BadRecord {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Writes the record as `<dir>/backing.json` (new file, synced).
    pub(crate) fn write(&self, dir: &Path) -> Result<(), LayerError> {
        use std::io::Write;
        let path = dir.join(RECORD);
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other);
        json.and_then(|json| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.write_all(&json)?;
            f.sync_all()
        })
        .map_err(LayerError::io("write", &path))
    }

    /// Replaces `<dir>/backing.json` with this record (written beside it,
    /// synced, renamed over it; the directory synced).
    pub(crate) fn replace(&self, dir: &Path) -> Result<(), LayerError> {
        let tmp_dir = tempfile::Builder::new()
            .prefix(".record-")
            .tempdir_in(dir)
            .map_err(LayerError::io("create a directory in", dir))?;
        self.write(tmp_dir.path())?;
        let path = dir.join(RECORD);
        fs::rename(tmp_dir.path().join(RECORD), &path).map_err(LayerError::io("replace", &path))?;
        crate::dirs::sync_dir(dir)?;
        Ok(())
    }
}
