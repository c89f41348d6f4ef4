//! A layer's file tree in memory, built from its tar entries with exactly the
//! rules extraction applies on disk (`extract/mod.rs`): later entries replace
//! earlier ones, a directory declared twice keeps its contents and takes the
//! new metadata, missing parents are made (0755, root), OCI whiteouts become
//! overlayfs ones (`.wh.<name>`: a 0/0 character device; `.wh..wh..opq`:
//! `trusted.overlay.opaque=y` on the directory), overlayfs xattrs in the
//! archive are dropped. Paths are the same normalized relative paths, and
//! the same ones are refused (`..`, absolute, hard links to directories or to
//! symlinks leading out). Regular files keep only where their data lies in
//! the tar stream.

use std::collections::BTreeMap;
use std::io;

use crate::extract::tar::{display_bytes, Entry, Kind, Time};
use crate::extract::{
    check_lengths, normalize, split, symlink_escapes, xattr_refused, ExtractError,
};

use super::format::{self, NAME_MAX};

pub(super) type NodeId = usize;

/// An xattr: full name, value.
pub(super) type Xattr = (Vec<u8>, Vec<u8>);

/// The layer root.
pub(super) const ROOT: NodeId = 0;

/// What a node is, with what its type needs. Names and targets are boxed
/// slices, not vectors: a tree can hold millions of them.
#[derive(Debug)]
pub(super) enum Body {
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    /// Data at `offset` in the layer's tar stream.
    File {
        offset: u64,
        size: u64,
    },
    Symlink(Box<[u8]>),
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug)]
pub(super) struct Node {
    /// Permission bits (setuid, setgid, sticky included), no file type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// `None` for a directory nobody declared (made as a missing parent).
    pub mtime: Option<Time>,
    /// Full xattr names, each one a namespace EROFS stores (most nodes
    /// have none: one pointer then, not an empty vector's three words).
    #[allow(clippy::box_collection)] // one word on every node, not a slice's two
    xattrs: Option<Box<Vec<Xattr>>>,
    pub body: Body,
}

impl Node {
    fn implicit_dir() -> Node {
        Node {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: None,
            xattrs: None,
            body: Body::Dir(BTreeMap::new()),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    pub fn xattrs(&self) -> &[Xattr] {
        self.xattrs.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Sets (or replaces) one xattr; returns the bytes it added.
    fn set_xattr(&mut self, name: Vec<u8>, value: Vec<u8>) -> u64 {
        let added = (name.len() + value.len()) as u64;
        set_xattr(self.xattrs.get_or_insert_with(Box::default), name, value);
        added
    }
}

/// How much one index build may hold in memory: the tree costs about 180
/// bytes per entry with its names (measured), and laying the image out
/// about as much again (see docs/architecture.md). Past either limit the build stops and the
/// layer is extracted instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexLimits {
    /// Tar entries per layer.
    pub max_entries: u64,
    /// Bytes of names, symlink targets and xattrs kept per layer.
    pub max_name_bytes: u64,
}

impl IndexLimits {
    /// No limit (tests, and the verifying tools).
    pub const NONE: IndexLimits = IndexLimits {
        max_entries: u64::MAX,
        max_name_bytes: u64::MAX,
    };
}

/// The layer is past one of its [`IndexLimits`].
#[derive(Debug, thiserror::Error)]
#[error("the layer has more than {limit} {what} (`{field}`): too large to index in memory")]
pub struct TooLarge {
    pub what: &'static str,
    pub field: &'static str,
    pub limit: u64,
}

/// Counts of what the tree holds, as extraction counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub entries: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    pub whiteouts: u64,
}

/// The tree under construction. Node 0 is the root; nodes replaced by later
/// entries stay in the vector, unreachable.
pub(super) struct LayerTree {
    pub nodes: Vec<Node>,
    pub stats: TreeStats,
    limits: IndexLimits,
    /// Bytes of names, symlink targets and xattrs held.
    name_bytes: u64,
}

fn unsupported(shown: &str, what: impl Into<String>) -> ExtractError {
    ExtractError::Unsupported {
        entry: shown.to_owned(),
        what: what.into(),
    }
}

fn unsafe_path(shown: &str, reason: &'static str) -> ExtractError {
    ExtractError::UnsafePath {
        entry: shown.to_owned(),
        reason,
    }
}

fn io_err(shown: &str, op: &'static str, errno: i32) -> ExtractError {
    ExtractError::Io {
        entry: shown.to_owned(),
        op,
        source: io::Error::from_raw_os_error(errno),
    }
}

impl LayerTree {
    pub fn new(limits: IndexLimits) -> Self {
        LayerTree {
            nodes: vec![Node::implicit_dir()],
            stats: TreeStats::default(),
            limits,
            name_bytes: 0,
        }
    }

    /// Fails once the tree holds more than its limits allow.
    pub fn check_limits(&self) -> Result<(), TooLarge> {
        if self.stats.entries > self.limits.max_entries {
            return Err(TooLarge {
                what: "tar entries",
                field: "index_max_entries",
                limit: self.limits.max_entries,
            });
        }
        if self.name_bytes > self.limits.max_name_bytes {
            return Err(TooLarge {
                what: "bytes of names, link targets and xattrs",
                field: "index_max_name_bytes",
                limit: self.limits.max_name_bytes,
            });
        }
        Ok(())
    }

    fn children(&self, dir: NodeId) -> &BTreeMap<Box<[u8]>, NodeId> {
        match &self.nodes[dir].body {
            Body::Dir(c) => c,
            _ => unreachable!("children of a non-directory"),
        }
    }

    fn children_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Box<[u8]>, NodeId> {
        match &mut self.nodes[dir].body {
            Body::Dir(c) => c,
            _ => unreachable!("children of a non-directory"),
        }
    }

    fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The directory at `dir` (normalized, empty for the root); with
    /// `create`, missing components are made.
    fn dir(&mut self, dir: &[u8], create: bool, shown: &str) -> Result<NodeId, ExtractError> {
        let mut cur = ROOT;
        if dir.is_empty() {
            return Ok(cur);
        }
        for comp in dir.split(|&b| b == b'/') {
            check_name(comp, shown)?;
            cur = match self.children(cur).get(comp) {
                Some(&id) => match &self.nodes[id].body {
                    Body::Dir(_) => id,
                    // Extraction would follow a link that stays inside the
                    // layer; the index does not model that: extraction it is.
                    Body::Symlink(_) => {
                        return Err(unsupported(shown, "a parent directory is a symlink"))
                    }
                    _ => return Err(io_err(shown, "resolving a directory", libc::ENOTDIR)),
                },
                None if create => {
                    let id = self.add(Node::implicit_dir());
                    self.name_bytes += comp.len() as u64;
                    self.children_mut(cur).insert(comp.into(), id);
                    id
                }
                None => return Err(io_err(shown, "resolving a directory", libc::ENOENT)),
            };
        }
        Ok(cur)
    }

    /// Links `id` as `name` in `parent`, replacing what is there (a
    /// directory only if empty).
    fn put(
        &mut self,
        parent: NodeId,
        name: &[u8],
        id: NodeId,
        shown: &str,
    ) -> Result<(), ExtractError> {
        if let Some(&old) = self.children(parent).get(name) {
            if let Body::Dir(c) = &self.nodes[old].body {
                if !c.is_empty() {
                    return Err(io_err(
                        shown,
                        "replacing a non-empty directory with a non-directory",
                        libc::ENOTEMPTY,
                    ));
                }
            }
        }
        if self.children_mut(parent).insert(name.into(), id).is_none() {
            self.name_bytes += name.len() as u64;
        }
        Ok(())
    }

    /// Applies one tar entry whose data starts at `offset` in the stream.
    pub fn apply(&mut self, e: &Entry, offset: u64, shown: &str) -> Result<(), ExtractError> {
        self.stats.entries += 1;
        let path = normalize(&e.path).map_err(|r| unsafe_path(shown, r.reason()))?;
        check_lengths(e, &path, shown)?;
        if path.is_empty() {
            // The layer root itself ("./"): ignored, as extraction does.
            return if e.kind == Kind::Dir {
                Ok(())
            } else {
                Err(unsafe_path(shown, "a non-directory names the layer root"))
            };
        }
        let (dir, name) = split(&path);
        if let Some(wh) = name.strip_prefix(b".wh.") {
            return self.whiteout(e, shown, dir, wh);
        }
        check_name(name, shown)?;
        let parent = self.dir(dir, true, shown)?;
        let xattrs = xattrs(e, shown)?;
        self.name_bytes += xattrs
            .iter()
            .map(|(n, v)| (n.len() + v.len()) as u64)
            .sum::<u64>();
        let mut node = Node {
            perm: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: Some(e.mtime),
            xattrs: (!xattrs.is_empty()).then(|| Box::new(xattrs)),
            body: Body::Fifo,
        };
        node.body = match e.kind {
            Kind::Regular => {
                self.stats.files += 1;
                Body::File {
                    offset,
                    size: e.size,
                }
            }
            Kind::Dir => {
                self.stats.directories += 1;
                if let Some(&old) = self.children(parent).get(name) {
                    if self.nodes[old].is_dir() {
                        // Kept, with the new owner, mode and times; xattrs
                        // are added to what it has.
                        let n = &mut self.nodes[old];
                        n.perm = node.perm;
                        n.uid = node.uid;
                        n.gid = node.gid;
                        n.mtime = node.mtime;
                        for (k, v) in node.xattrs.map(|x| *x).unwrap_or_default() {
                            n.set_xattr(k, v);
                        }
                        return Ok(());
                    }
                }
                Body::Dir(BTreeMap::new())
            }
            Kind::Symlink => {
                self.stats.symlinks += 1;
                if e.link.is_empty() || e.link.contains(&0) {
                    return Err(unsupported(shown, "symlink with an empty target"));
                }
                node.perm = 0o777;
                self.name_bytes += e.link.len() as u64;
                Body::Symlink(e.link.as_slice().into())
            }
            Kind::HardLink => return self.hardlink(e, shown, parent, name, &path),
            Kind::Char | Kind::Block => {
                self.stats.devices += 1;
                if format::encode_dev(e.dev_major, e.dev_minor).is_none() {
                    return Err(unsupported(shown, "device number out of range"));
                }
                let (major, minor) = (e.dev_major, e.dev_minor);
                if e.kind == Kind::Char {
                    Body::Char { major, minor }
                } else {
                    Body::Block { major, minor }
                }
            }
            Kind::Fifo => {
                self.stats.devices += 1;
                Body::Fifo
            }
        };
        let id = self.add(node);
        self.put(parent, name, id, shown)
    }

    fn hardlink(
        &mut self,
        e: &Entry,
        shown: &str,
        parent: NodeId,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), ExtractError> {
        let target = normalize(&e.link).map_err(|r| unsafe_path(shown, r.link_reason()))?;
        if target.is_empty() {
            return Err(unsafe_path(shown, "hard link to the layer root"));
        }
        if target == path {
            return Ok(()); // a link to itself: already there
        }
        let (tdir, tname) = split(&target);
        let tparent = self.dir(tdir, false, shown)?;
        let Some(&tid) = self.children(tparent).get(tname) else {
            return Err(io_err(
                shown,
                "looking up the hard link target",
                libc::ENOENT,
            ));
        };
        match &self.nodes[tid].body {
            Body::Dir(_) => return Err(unsafe_path(shown, "hard link to a directory")),
            Body::Symlink(link) if symlink_escapes(tdir, link) => {
                return Err(ExtractError::Escape {
                    entry: shown.to_owned(),
                    reason: "hard link to a symlink that points outside the layer",
                })
            }
            _ => {}
        }
        self.put(parent, name, tid, shown)?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn whiteout(
        &mut self,
        e: &Entry,
        shown: &str,
        dir: &[u8],
        wh: &[u8],
    ) -> Result<(), ExtractError> {
        if wh == b".wh..opq" {
            let d = self.dir(dir, true, shown)?;
            self.name_bytes +=
                self.nodes[d].set_xattr(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if wh.starts_with(b".wh.") {
            // Other `.wh..wh.` names are aufs metadata: skipped, as extraction does.
            return Ok(());
        }
        if wh.is_empty() || wh == b"." || wh == b".." {
            return Err(unsafe_path(shown, "whiteout of an invalid name"));
        }
        check_name(wh, shown)?;
        let parent = self.dir(dir, true, shown)?;
        let id = self.add(Node {
            perm: 0,
            uid: e.uid,
            gid: e.gid,
            mtime: Some(e.mtime),
            xattrs: None,
            body: Body::Char { major: 0, minor: 0 },
        });
        self.put(parent, wh, id, shown)?;
        self.stats.whiteouts += 1;
        Ok(())
    }
}

fn check_name(name: &[u8], shown: &str) -> Result<(), ExtractError> {
    if name.len() > NAME_MAX {
        return Err(unsupported(shown, "a name longer than 255 bytes"));
    }
    Ok(())
}

fn set_xattr(list: &mut Vec<Xattr>, name: Vec<u8>, value: Vec<u8>) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name, value)),
    }
}

/// The entry's xattrs as the index stores them: overlayfs ones and
/// namespaces Linux does not know dropped (extraction drops them too).
fn xattrs(e: &Entry, shown: &str) -> Result<Vec<Xattr>, ExtractError> {
    let mut out = Vec::new();
    for (name, value) in &e.xattrs {
        if xattr_refused(name) {
            tracing::warn!(entry = %shown, xattr = %display_bytes(name), "overlayfs xattr in layer ignored");
            continue;
        }
        let Some((_, rest)) = format::xattr_index(name) else {
            tracing::warn!(entry = %shown, xattr = %display_bytes(name), "xattr of an unknown namespace not kept");
            continue;
        };
        if rest.len() > NAME_MAX || name.contains(&0) {
            return Err(unsupported(shown, "xattr name too long"));
        }
        if value.len() > usize::from(u16::MAX) {
            return Err(unsupported(shown, "xattr value longer than 64 KiB"));
        }
        set_xattr(&mut out, name.clone(), value.clone());
    }
    Ok(out)
}
