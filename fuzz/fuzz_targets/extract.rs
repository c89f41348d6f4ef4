//! Layer extraction: any tar stream, never a panic, never a change outside
//! the destination. Runs as root (device nodes, trusted xattrs).
//!
//! The input is used as an uncompressed layer whose diffID is its own digest,
//! so every entry is extracted. Next to the destination sits an `outside`
//! directory at a fixed absolute path (per process), which the seed corpus
//! can aim symlinks and hard links at; after each run it must be unchanged
//! and the destination's parent must hold nothing but the destination.
#![no_main]
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use airgap_snapshotter::catalog::Compression;
use airgap_snapshotter::digest::Digest;
use airgap_snapshotter::extract::unpack_layer;
use libfuzzer_sys::fuzz_target;

fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("airgap-extract-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("outside/dir")).unwrap();
        fs::write(base.join("outside/secret"), b"secret").unwrap();
        base
    })
}

/// Names, modes, sizes, contents and xattr names of everything under `dir`.
fn state(dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        let xattrs: Vec<_> = xattr_names(&p);
        out.push(format!(
            "{p:?} {:o} {} {} {content:?} {xattrs:?}",
            m.mode(),
            m.uid(),
            m.nlink()
        ));
        if m.is_dir() {
            state(&p, out);
        }
    }
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut names: Vec<String> = xattr::list(p)
        .map(|l| l.map(|n| n.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let layer = base.join("layer");
    let dest = layer.join("fs");
    let _ = fs::remove_dir_all(&layer);
    fs::create_dir_all(&dest).unwrap();
    let mut before = Vec::new();
    state(&base.join("outside"), &mut before);

    let _ = unpack_layer(data, Compression::None, &Digest::of(data), &dest);

    let mut after = Vec::new();
    state(&base.join("outside"), &mut after);
    assert_eq!(before, after, "extraction changed a file outside the layer");
    let beside: Vec<_> = fs::read_dir(&layer)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("fs")],
        "extraction wrote beside the layer"
    );
    let top: Vec<_> = fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top.len(), 2, "extraction wrote into {}", base.display());
});
