//! Two file trees compared file for file: type, mode, owner, times, size,
//! contents, symlink targets, device numbers, xattrs, link counts and which
//! paths are hard links of one another. Used to hold an EROFS-mounted layer
//! (or an overlay over such layers) against what extraction writes, by the
//! unit tests and the end-to-end tests alike.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::digest::Hasher;

/// What the comparison leaves out.
#[derive(Clone, Copy, Debug)]
pub struct TreeOptions {
    /// Compare directory mtimes. Directories made as missing parents get
    /// the extraction's clock time, so trees with such directories are
    /// compared without.
    pub dir_times: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions { dir_times: true }
    }
}

/// One line per path under `root` (the root itself left out: its metadata
/// belongs to whoever made the directory), in path order.
pub fn tree_listing(root: &Path, opts: TreeOptions) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_link: HashMap<(u64, u64), String> = HashMap::new();
    walk(root, root, opts, &mut out, &mut first_link);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    opts: TreeOptions,
    out: &mut BTreeMap<String, String>,
    first_link: &mut HashMap<(u64, u64), String>,
) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let whiteout = ft.is_char_device() && m.rdev() == 0;
        let mut line = format!("mode={:o} owner={}:{}", m.mode(), m.uid(), m.gid());
        if !(whiteout || (ft.is_dir() && !opts.dir_times)) {
            line += &format!(" mtime={}.{:09}", m.mtime(), m.mtime_nsec());
        }
        if ft.is_file() {
            line += &format!(" size={} sha256={}", m.len(), hash_file(&p));
        } else if ft.is_symlink() {
            line += &format!(" target={:?}", fs::read_link(&p).unwrap());
        } else if ft.is_char_device() || ft.is_block_device() {
            line += &format!(" rdev={:x}", m.rdev());
        }
        if !ft.is_dir() {
            line += &format!(" nlink={}", m.nlink());
            if m.nlink() > 1 {
                let first = first_link
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| rel.clone());
                line += &format!(" linked-to={first}");
            }
        }
        let mut xattrs: Vec<String> = xattr::list(&p)
            .unwrap()
            .map(|n| {
                let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                format!("{}={}", n.to_string_lossy(), hex::encode(v))
            })
            .collect();
        xattrs.sort();
        if !xattrs.is_empty() {
            line += &format!(" xattrs=[{}]", xattrs.join(","));
        }
        out.insert(rel, line);
        if ft.is_dir() {
            walk(root, &p, opts, out, first_link);
        }
    }
}

fn hash_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish().hex()
}

/// Panics with every difference when the trees under `expected` and
/// `actual` are not the same file for file.
pub fn assert_same_tree(expected: &Path, actual: &Path, opts: TreeOptions) {
    let a = tree_listing(expected, opts);
    let b = tree_listing(actual, opts);
    if a == b {
        return;
    }
    let mut diff = String::new();
    for (path, line) in &a {
        match b.get(path) {
            None => diff += &format!("- {path}: {line}\n"),
            Some(other) if other != line => {
                diff += &format!("- {path}: {line}\n+ {path}: {other}\n")
            }
            _ => {}
        }
    }
    for (path, line) in &b {
        if !a.contains_key(path) {
            diff += &format!("+ {path}: {line}\n");
        }
    }
    panic!(
        "trees differ ({} expected, {} actual):\n{diff}",
        expected.display(),
        actual.display()
    );
}
