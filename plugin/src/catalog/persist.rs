//! Persisted indexes: one JSON file per archive path under
//! `<state_dir>/index/`, reused while the file is the version indexed
//! (same [`FileKey`]), and read back at start so the archives known before
//! a restart stay in the view while their files are not there yet.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::index::{ArchiveIndex, FileKey, INDEX_FORMAT};
use super::Catalog;
use crate::digest::Digest;

impl Catalog {
    /// Where the index of the archive at `archive` is persisted (`None`:
    /// indexes are not persisted).
    pub(super) fn persisted_path(&self, archive: &Path) -> Option<PathBuf> {
        let dir = self.opts.state_dir.as_ref()?.join("index");
        let name = Digest::of(archive.as_os_str().as_encoded_bytes()).hex();
        Some(dir.join(format!("{}.json", &name[..32])))
    }

    /// Every persisted index of the current format that belongs where it
    /// lies (its archive's path names this file). Unreadable files are
    /// skipped: an index is only ever a shortcut.
    pub(super) fn persisted_indexes(&self) -> Vec<ArchiveIndex> {
        let Some(dir) = self.opts.state_dir.as_ref().map(|d| d.join("index")) else {
            return Vec::new();
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list persisted indexes");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(index) = read_index(&path) else {
                continue;
            };
            if index.format == INDEX_FORMAT
                && self.persisted_path(&index.path).as_deref() == Some(path.as_path())
            {
                out.push(index);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

fn read_index(p: &Path) -> Option<ArchiveIndex> {
    let bytes = fs::read(p).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The index persisted at `p`, if it is of `archive` in the version `key`.
pub(super) fn read_persisted(p: &Path, archive: &Path, key: FileKey) -> Option<ArchiveIndex> {
    let index = read_index(p)?;
    (index.format == INDEX_FORMAT && index.key == key && index.path == archive).then_some(index)
}

/// Writes `index` to `p` atomically (a temporary file renamed over it).
pub(super) fn write_persisted(p: &Path, index: &ArchiveIndex) -> io::Result<()> {
    let dir = p.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no parent directory", p.display()),
        )
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut tmp, index)?;
    tmp.persist(p).map_err(|e| e.error)?;
    Ok(())
}
