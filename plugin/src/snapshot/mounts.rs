//! The mounts a snapshot is used through, as containerd 1.6's overlayfs
//! snapshotter (`snapshots/overlay/overlay.go`) returns them.
//!
//! - no parent: a bind mount of the snapshot's own `fs` (`rw`, or `ro` for a
//!   view);
//! - a view of one layer: a read-only bind mount of that layer;
//! - otherwise `overlay` with `lowerdir` nearest parent first, plus
//!   `upperdir`/`workdir` for an active snapshot.
//!
//! With many layers `lowerdir` outgrows a page (the 4096-byte limit of mount
//! data): containerd's `mount.All` then mounts from the common directory with
//! relative paths, so the paths here stay absolute and share the prefix
//! `<root>/snapshots/`.

use std::path::{Path, PathBuf};

use super::meta::{Chain, Kind};

/// One mount, as containerd's `types.Mount` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where the snapshots of a root live, and how overlay is mounted there.
#[derive(Clone, Debug)]
pub struct Layout {
    snapshots: PathBuf,
    index_off: bool,
}

impl Layout {
    pub fn new(snapshots: PathBuf) -> Self {
        Layout {
            snapshots,
            index_off: supports_index_option(),
        }
    }

    /// `<root>/snapshots/<id>`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    /// The snapshot's own layer (overlay's upper dir).
    pub fn upper(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// overlay's work dir of an active snapshot.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    pub fn mounts(&self, chain: &Chain) -> Vec<Mount> {
        let bind = |path: PathBuf, ro: bool| Mount {
            kind: "bind".into(),
            source: path.to_string_lossy().into_owned(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        if chain.parent_ids.is_empty() {
            return vec![bind(self.upper(chain.id), chain.kind == Kind::View)];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if chain.kind == Kind::Active {
            options.push(format!("workdir={}", self.work(chain.id).display()));
            options.push(format!("upperdir={}", self.upper(chain.id).display()));
        } else if chain.parent_ids.len() == 1 {
            return vec![bind(self.upper(chain.parent_ids[0]), true)];
        }
        let lower: Vec<String> = chain
            .parent_ids
            .iter()
            .map(|id| self.upper(*id).display().to_string())
            .collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }]
    }
}

/// Whether the kernel's overlay knows `index=off` (containerd sets it when
/// `/sys/module/overlay/parameters/index` exists).
fn supports_index_option() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            snapshots: PathBuf::from("/r/snapshots"),
            index_off: true,
        }
    }

    fn chain(id: u64, kind: Kind, parent_ids: &[u64]) -> Chain {
        Chain {
            id,
            kind,
            parent_ids: parent_ids.to_vec(),
        }
    }

    #[test]
    fn single_layers_are_bind_mounts() {
        let l = layout();
        let m = l.mounts(&chain(3, Kind::Active, &[]));
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, "/r/snapshots/3/fs");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let m = l.mounts(&chain(3, Kind::View, &[]));
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = l.mounts(&chain(4, Kind::View, &[2]));
        assert_eq!(m[0].source, "/r/snapshots/2/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn overlays_list_the_nearest_parent_first() {
        let l = layout();
        let m = l.mounts(&chain(9, Kind::Active, &[5, 2]));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir=/r/snapshots/5/fs:/r/snapshots/2/fs"
            ]
        );
        let m = l.mounts(&chain(9, Kind::View, &[5, 2]));
        assert_eq!(
            m[0].options,
            ["index=off", "lowerdir=/r/snapshots/5/fs:/r/snapshots/2/fs"]
        );
    }
}
