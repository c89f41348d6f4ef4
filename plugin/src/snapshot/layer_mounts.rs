//! Committed layers mounted from the archive instead of extracted (EROFS tar
//! indexes, module [`crate::erofs`]).
//!
//! A layer staged this way is a directory like an extracted one, whose `fs`
//! is the mount point of its index:
//! ```text
//! <dir>/layer.erofs   the EROFS metadata image
//! <dir>/backing.json  the backing file: path, identity (dev, inode, size,
//!                     mtime, ctime), where the layer starts, digests
//! <dir>/layer.tar     for a layer not stored as a plain tar (compressed
//!                     layer or archive): its tar, decompressed once; the
//!                     backing file (named relatively)
//! <dir>/fs            the EROFS mount (read-only), overlay's lower dir
//! ```
//! The files are hard links to an entry of the [`LayerStore`], which builds
//! each layer's index (and copy) once, on pull or ahead of it, and keeps
//! the entries no snapshot uses within a budget. [`super::mounts::Layout`]
//! gives children the same `lowerdir`s either way. The mount exists from
//! staging on: containerd mounts the overlay of a child right after
//! Prepare. Renaming the staged directory into `snapshots/` moves the mount
//! with it. After a daemon restart [`remount_all`] mounts every index
//! again, if its archive is still the file that was indexed;
//! [`unmount_under`] runs before any directory is deleted (Remove, cleanup,
//! failed staging).
//!
//! The backing file is named to the kernel as `/proc/self/fd/<n>` of the
//! archive opened and checked here, so the mount gets exactly the file whose
//! identity was checked, and any path works (mount options cannot carry a
//! `,`).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::catalog::{Compression, FileKey, LayerRef, LayerSource};
use crate::config::{LayerMode, PrepareLayers};
use crate::digest::Digest;
use crate::erofs::{self, Backing};

use super::layer_store::{plain_blob, BackingRecord, LayerStore, COPY, IMAGE, RECORD};
use super::meta::Usage;

/// How layers taken from archives become snapshots (see
/// [`crate::config::Config::layer_mounts`]).
#[derive(Clone, Copy, Debug)]
pub struct LayerOptions {
    pub mode: LayerMode,
    pub prepare: PrepareLayers,
    /// Budget of the layer store's entries no snapshot uses.
    pub store_bytes: u64,
}

impl From<LayerMode> for LayerOptions {
    fn from(mode: LayerMode) -> Self {
        LayerOptions {
            mode,
            prepare: PrepareLayers::OnPull,
            store_bytes: crate::config::DEFAULT_LAYER_STORE_BYTES,
        }
    }
}

impl LayerOptions {
    pub fn from_config(config: &crate::config::Config) -> Self {
        LayerOptions {
            mode: config.layer_mounts,
            prepare: config.prepare_layers,
            store_bytes: config.layer_store_bytes,
        }
    }
}

/// Whether, and how, layers are mounted instead of extracted.
pub(crate) struct LayerMounts {
    /// `None`: extraction only (configured so, or the kernel cannot).
    store: Option<LayerStore>,
    /// Compressed layers are prepared as soon as their archive arrives.
    ahead: bool,
    /// A layer that could not be mounted was logged once.
    warned: AtomicBool,
}

impl LayerMounts {
    /// Extraction only.
    pub(crate) fn disabled() -> Self {
        LayerMounts {
            store: None,
            ahead: false,
            warned: AtomicBool::new(false),
        }
    }

    /// Decides from `opts` and what the kernel can do (probed with a tiny
    /// index mounted under `scratch`), and opens the layer store in
    /// `store_dir`. `erofs` on a kernel that cannot is an error; `auto`
    /// then logs once and extracts. With mounts off, prepared layers left
    /// by an earlier run are dropped once no snapshot uses them.
    pub(crate) fn new(
        opts: LayerOptions,
        scratch: &Path,
        store_dir: &Path,
    ) -> Result<Self, String> {
        let disabled = || -> Result<Self, String> {
            if store_dir.exists() {
                LayerStore::open(store_dir, 0).map_err(|e| e.to_string())?;
            }
            Ok(Self::disabled())
        };
        if opts.mode == LayerMode::Extract {
            return disabled();
        }
        match probe(scratch) {
            Ok(()) => {
                let store = LayerStore::open(store_dir, opts.store_bytes)
                    .map_err(|e| format!("the layer store: {e}"))?;
                let (entries, bytes) = store.usage();
                tracing::info!(
                    prepare = ?opts.prepare,
                    store_entries = entries,
                    store_bytes = bytes,
                    "archived layers are mounted (EROFS), not extracted"
                );
                Ok(LayerMounts {
                    store: Some(store),
                    ahead: opts.prepare == PrepareLayers::OnArrival,
                    warned: AtomicBool::new(false),
                })
            }
            Err(why) if opts.mode == LayerMode::Erofs => Err(format!(
                "layer_mounts = \"erofs\", but this kernel cannot mount EROFS tar indexes: {why}"
            )),
            Err(why) => {
                tracing::info!(reason = %why, "EROFS layer mounts unavailable: layers are extracted");
                disabled()
            }
        }
    }

    /// Prepares, ahead of any pull, what the store keeps of `layers` (see
    /// [`LayerStore::prepare_ahead`]); blocking. Returns how many layers
    /// were prepared.
    pub(crate) fn prepare_ahead(
        &self,
        source: &dyn LayerSource,
        layers: &[LayerRef],
        stop: &dyn Fn() -> bool,
    ) -> usize {
        match &self.store {
            Some(store) => store.prepare_ahead(source, layers, self.ahead, stop),
            None => 0,
        }
    }

    /// Stages `layer` in `dir` (which must not exist) as a mounted index:
    /// in place when it is an uncompressed layer of an uncompressed archive,
    /// else over a decompressed copy; returns its usage. `None`: extract it
    /// instead (mounts off, or indexing failed: logged, `dir` removed).
    pub(crate) fn stage(
        &self,
        source: &dyn LayerSource,
        layer: &LayerRef,
        dir: &Path,
    ) -> Option<Usage> {
        let store = self.store.as_ref()?;
        let plain = plain_blob(source, layer);
        let backing = match &plain {
            Some(p) => p.path.display().to_string(),
            None => format!("a decompressed copy ({COPY})"),
        };
        let started = Instant::now();
        match stage(store, source, layer, plain.as_ref(), dir) {
            Ok((usage, built)) => {
                tracing::info!(
                    chain_id = %layer.chain_id,
                    backing = %backing,
                    prepared_now = built.is_some(),
                    entries = built.map(|s| s.tree.entries),
                    metadata_bytes = built.map(|s| s.image.bytes),
                    tar_bytes = built.map(|s| s.tar_bytes),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "layer mounted from archive (EROFS)"
                );
                crate::metrics::global().layers_mounted.inc();
                Some(usage)
            }
            Err(err) => {
                crate::metrics::global().layer_mount_failures.inc();
                unmount_under(dir);
                super::remove_all(dir);
                let first = !self.warned.swap(true, Ordering::Relaxed);
                tracing::warn!(
                    chain_id = %layer.chain_id,
                    digest = %layer.digest,
                    backing = %backing,
                    error = %err,
                    first,
                    "mounting the layer from the archive failed: extracting it"
                );
                None
            }
        }
    }
}

/// Why a layer could not be mounted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the archive changed since it was indexed")]
    Changed,
    #[error("open blob {digest}: {source}")]
    OpenBlob { digest: Digest, source: io::Error },
    #[error(transparent)]
    Index(#[from] erofs::ErofsError),
    #[error(transparent)]
    Mount(#[from] erofs::MountError),
}

impl StageError {
    /// Maps an io error on `path` while doing `what`.
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> StageError + 'a {
        move |source| StageError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// Maps a snapshot-layer error on `path` while doing `what`.
    pub(crate) fn snapshot<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(super::SnapshotError) -> StageError + 'a {
        move |e| StageError::Io {
            what,
            path: path.to_owned(),
            source: io::Error::other(e.to_string()),
        }
    }
}

/// Links the layer's prepared entry into `dir` and mounts it on `dir/fs`.
fn stage(
    store: &LayerStore,
    source: &dyn LayerSource,
    layer: &LayerRef,
    plain: Option<&crate::catalog::PlainBlob>,
    dir: &Path,
) -> Result<(Usage, Option<erofs::IndexStats>), StageError> {
    let linked = store.link_into(source, layer, plain, dir)?;
    // The backing file the mount gets: the archive as opened when indexed
    // (checked again now), or the copy linked here.
    let copy;
    let file = match plain {
        Some(p) => {
            let now = p
                .file
                .metadata()
                .map(|m| FileKey::of(&m))
                .map_err(StageError::io("stat", &p.path))?;
            if !linked.record.matches(&now) {
                return Err(StageError::Changed);
            }
            &*p.file
        }
        None => {
            copy = fs::File::open(dir.join(COPY)).map_err(StageError::io("open", dir))?;
            &copy
        }
    };
    erofs::mount(&dir.join(IMAGE), &fd_path(file), &dir.join("fs"))?;
    let size = [IMAGE, COPY]
        .iter()
        .filter_map(|n| fs::metadata(dir.join(n)).ok())
        .map(|m| m.blocks() * 512)
        .sum::<u64>();
    Ok((
        Usage {
            size: size as i64,
            inodes: linked.record.inodes as i64,
        },
        linked.built,
    ))
}

/// The open file as a path the kernel resolves to exactly it.
fn fd_path(file: &fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Mounts the index of every mounted-layer directory in `snapshots` whose
/// `fs` is not mounted (after a restart), if its archive is still the file
/// indexed; logs the ones that cannot be.
pub(crate) fn remount_all(snapshots: &Path) {
    let Ok(entries) = fs::read_dir(snapshots) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let record_path = dir.join(RECORD);
        if !record_path.exists() {
            continue;
        }
        let fs_dir = dir.join("fs");
        if erofs::is_mounted(&fs_dir) {
            continue;
        }
        if let Err(err) = remount(&dir, &record_path, &fs_dir) {
            tracing::error!(
                snapshot = %dir.display(),
                error = %err,
                "cannot mount a layer from its archive again: containers using it will fail until it is removed and pulled again"
            );
        }
    }
}

fn remount(dir: &Path, record_path: &Path, fs_dir: &Path) -> Result<(), String> {
    let record = BackingRecord::read(record_path)?;
    let what = |e: &dyn std::fmt::Display| {
        format!(
            "archive {} (layer {}): {e}",
            record.archive.display(),
            record.digest
        )
    };
    // A relative path names a decompressed copy inside the snapshot.
    let file = fs::File::open(dir.join(&record.archive)).map_err(|e| what(&e))?;
    let key = file
        .metadata()
        .map(|m| FileKey::of(&m))
        .map_err(|e| what(&e))?;
    if !record.matches(&key) {
        return Err(what(&"changed or replaced since the layer was indexed"));
    }
    erofs::mount(&dir.join(IMAGE), &fd_path(&file), fs_dir).map_err(|e| what(&e))?;
    tracing::info!(snapshot = %dir.display(), archive = %record.archive.display(), "layer mounted from archive again");
    Ok(())
}

/// Unmounts every EROFS mount at or below `path` (deepest first), so the
/// directory can be deleted.
pub(crate) fn unmount_under(path: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <opts> ... - <fstype> ..."
            let mut fields = line.split(' ');
            let point = fields.nth(4)?;
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            (fstype == "erofs").then(|| PathBuf::from(unescape(point)))
        })
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(err) = erofs::unmount(&p) {
            tracing::warn!(error = %err, "unmounting a layer failed");
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(out)
        .to_string_lossy()
        .into_owned()
}

/// Builds a tiny index and mounts it: EROFS, file-backed mounts, chunked
/// files and a device table, all at once.
fn probe(scratch: &Path) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("erofs-probe-")
        .tempdir_in(scratch)
        .map_err(|e| format!("temporary directory in {}: {e}", scratch.display()))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "probe", &b"probe"[..])
        .map_err(|e| e.to_string())?;
    let tar = b.into_inner().map_err(|e| e.to_string())?;
    let backing = dir.path().join("layer.tar");
    fs::write(&backing, &tar).map_err(|e| e.to_string())?;
    let image = dir.path().join(IMAGE);
    erofs::build_index(
        &tar[..],
        Compression::None,
        &Digest::of(&tar),
        Backing {
            data_base: 0,
            backing_len: tar.len() as u64,
        },
        &image,
    )
    .map_err(|e| e.to_string())?;
    let mnt = dir.path().join("fs");
    fs::create_dir(&mnt).map_err(|e| e.to_string())?;
    let file = fs::File::open(&backing).map_err(|e| e.to_string())?;
    erofs::mount(&image, &fd_path(&file), &mnt).map_err(|e| e.to_string())?;
    let read = fs::read(mnt.join("probe"));
    let _ = erofs::unmount(&mnt);
    match read {
        Ok(data) if data == b"probe" => Ok(()),
        Ok(_) => Err("the probe file read back wrong".into()),
        Err(e) => Err(format!("reading the probe file: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use tonic::Code;

    use super::*;
    use crate::labels::TARGET_SNAPSHOT_REF;
    use crate::snapshot::proto::containerd::services::snapshots::v1 as api;
    use crate::snapshot::test_support::{layer_tar, Entry, FakeSource, TestServer, Unmount};
    use crate::snapshot::{Kind, SnapshotApi, Snapshotter};
    use crate::testsupport::requires_root;
    use crate::testsupport::tree::{assert_same_tree, TreeOptions};

    fn mount_overlay(opts: &str, target: &Path) {
        let data = std::ffi::CString::new(opts).unwrap();
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap_or_else(|e| panic!("overlay {opts}: {e}"));
    }

    /// Mounts `expected_opts` and `actual_opts` (overlay options) on
    /// `<work>/expected` and `<work>/merged`, compares the two trees file
    /// for file, and unmounts both whatever the outcome.
    fn assert_same_overlay(work: &Path, expected_opts: &str, actual_opts: &str, opts: TreeOptions) {
        let (expected, merged) = (work.join("expected"), work.join("merged"));
        std::fs::create_dir_all(&expected).unwrap();
        std::fs::create_dir_all(&merged).unwrap();
        mount_overlay(expected_opts, &expected);
        mount_overlay(actual_opts, &merged);
        let same = std::panic::catch_unwind(|| assert_same_tree(&expected, &merged, opts));
        rustix::mount::unmount(&expected, rustix::mount::UnmountFlags::empty()).unwrap();
        rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()).unwrap();
        if let Err(e) = same {
            std::panic::resume_unwind(e);
        }
    }

    fn committed(sn: &Snapshotter) -> Vec<(String, u64)> {
        let mut v: Vec<_> = sn
            .list(&[])
            .unwrap()
            .into_iter()
            .filter(|i| i.record.kind == Kind::Committed)
            .map(|i| (i.name, i.record.id))
            .collect();
        v.sort_by_key(|x| x.1);
        v
    }

    /// Two archived layers through the gRPC Prepare path: mounted from the
    /// archive (never opened as blobs), a container's overlay over them
    /// equal to one over their extraction, mounted again after a restart
    /// that lost the mounts, unmounted by Remove.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archived_layers_are_mounted_committed_remounted_and_removed() {
        requires_root!();
        let work = tempfile::tempdir().unwrap();
        let _guard = Unmount(work.path().to_owned());
        let tars = vec![
            layer_tar(&[
                Entry::Dir("etc"),
                Entry::File("etc/os-release", b"ID=test\n"),
                Entry::File("etc/gone", b"x"),
                Entry::Dir("opt"),
                Entry::File("opt/old", b"old"),
                Entry::Symlink("link", "etc/os-release"),
            ]),
            layer_tar(&[
                Entry::Dir("etc"),
                Entry::File("etc/.wh.gone", b""),
                Entry::Dir("opt"),
                Entry::File("opt/.wh..wh..opq", b""),
                Entry::File("opt/new", b"new"),
            ]),
        ];
        let mut fake = FakeSource::default();
        let layers = fake.add_plain_image(&tars, &work.path().join("image.tar"));
        let fake = Arc::new(fake);
        let server =
            TestServer::start_with(Some(fake.clone()), crate::config::LayerMode::Erofs).await;
        let root = server.root();
        let _root_guard = Unmount(root.clone());
        let parent = server.commit_layers(&layers, &HashMap::new()).await;
        assert_eq!(fake.total_opens(), 0, "a layer was read as a blob");
        let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            let dir = root.join("snapshots").join(id.to_string());
            assert!(erofs::is_mounted(&dir.join("fs")));
            assert!(dir.join(IMAGE).exists() && dir.join(RECORD).exists());
        }
        let usage = server.sn.usage(&parent).unwrap();
        assert!(usage.size > 0 && usage.size < 64 * 1024, "{usage:?}");

        // A container on top: its overlay against one over extracted layers.
        let mounts = server
            .sn
            .prepare("ns/9/ctr", &parent, HashMap::new())
            .unwrap();
        assert_eq!(mounts[0].kind, "overlay");
        let merged = work.path().join("merged");
        let mut lowers = Vec::new();
        for (i, tar) in tars.iter().enumerate() {
            let ext = work.path().join(format!("ext{i}"));
            std::fs::create_dir(&ext).unwrap();
            crate::extract::unpack_layer(&tar[..], Compression::None, &Digest::of(tar), &ext)
                .unwrap();
            lowers.insert(0, ext.display().to_string());
        }
        assert_same_overlay(
            work.path(),
            &format!("lowerdir={}", lowers.join(":")),
            &mounts[0].options.join(","),
            TreeOptions::default(),
        );
        assert_eq!(
            std::fs::read(merged.join("opt/new")).ok(),
            None,
            "unmounted"
        );

        // A restart that lost the mounts (a reboot keeps the state dir).
        let state = server.stop_keeping_state().await;
        unmount_under(&root);
        for id in &ids {
            assert!(!erofs::is_mounted(
                &root.join("snapshots").join(id.to_string()).join("fs")
            ));
        }
        let sn = Snapshotter::open_with(&root, Some(fake.clone()), crate::config::LayerMode::Erofs)
            .unwrap();
        for id in &ids {
            assert!(erofs::is_mounted(
                &root.join("snapshots").join(id.to_string()).join("fs")
            ));
        }
        // Remove, children first, as containerd's GC does.
        sn.remove("ns/9/ctr").unwrap();
        sn.remove(&parent).unwrap();
        sn.remove(&layers[0].chain_id.to_string()).unwrap();
        for id in &ids {
            let dir = root.join("snapshots").join(id.to_string());
            assert!(!dir.exists(), "{} left", dir.display());
        }
        drop(sn);
        drop(state);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\04"), r"/x\04");
    }

    /// The real catalog over each kind of archive a site ships: every
    /// layer mounted through Prepare (in place for a docker-save `.tar` and
    /// an OCI layout of `tar` layers, over a decompressed copy otherwise),
    /// each equal to its extraction file for file, the merged tree of the
    /// two layers equal to the merged extracted tree, all unmounted by
    /// Remove.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_archive_kind_through_the_catalog() {
        requires_root!();
        use crate::testsupport::{
            busybox_bytes, docker_save, wrap, write, ImageSpec, LayerCompression, OciLayout, Wrap,
        };
        let busybox = busybox_bytes();
        let layers = vec![
            layer_tar(&[
                Entry::Dir("bin"),
                Entry::File("bin/busybox", &busybox),
                Entry::Symlink("bin/sh", "busybox"),
                Entry::Dir("etc"),
                Entry::File("etc/hostname", b"a\n"),
                Entry::Dir("opt"),
                Entry::File("opt/old", b"old"),
            ]),
            layer_tar(&[
                Entry::Dir("etc"),
                Entry::File("etc/hello", b"hello\n"),
                Entry::File("etc/.wh.hostname", b""),
                Entry::Dir("opt"),
                Entry::File("opt/.wh..wh..opq", b""),
                Entry::File("opt/new", b"new"),
            ]),
        ];
        let kinds: [(&str, LayerCompression, Wrap, bool, bool); 5] = [
            (
                "docker-save.tar",
                LayerCompression::None,
                Wrap::Tar,
                true,
                true,
            ),
            (
                "docker-save.tar.zst",
                LayerCompression::None,
                Wrap::Zstd,
                true,
                false,
            ),
            (
                "oci-tar-layers.tar",
                LayerCompression::None,
                Wrap::Tar,
                false,
                true,
            ),
            (
                "oci-gzip.tar",
                LayerCompression::Gzip,
                Wrap::Tar,
                false,
                false,
            ),
            (
                "oci-zstd.tar.zst",
                LayerCompression::Zstd,
                Wrap::Seekable,
                false,
                false,
            ),
        ];
        for (name, compression, container, saved, in_place) in kinds {
            let work = tempfile::tempdir().unwrap();
            let _guard = Unmount(work.path().to_owned());
            let mut spec = ImageSpec::new(layers.clone());
            spec.compression = compression;
            let tar = if saved {
                docker_save(&spec, &["busybox:1.36"])
            } else {
                OciLayout::single("busybox:1.36", &spec).0.to_tar()
            };
            let archives = work.path().join("archives");
            std::fs::create_dir(&archives).unwrap();
            write(
                &archives,
                &format!("image.{}", container.extension()),
                &wrap(&tar, container),
            );
            let catalog = crate::catalog::Catalog::open(crate::catalog::CatalogOptions {
                dirs: vec![archives.clone()],
                settle: std::time::Duration::ZERO,
                cache_bytes: 64 << 20,
                ..Default::default()
            })
            .unwrap();
            let server =
                TestServer::start_with(Some(catalog), crate::config::LayerMode::Auto).await;
            let root = server.root();
            let _root_guard = Unmount(root.clone());
            let mut parent = String::new();
            for (i, chain) in spec.chain_ids().iter().enumerate() {
                let labels = HashMap::from([(TARGET_SNAPSHOT_REF.to_string(), chain.to_string())]);
                let err = server
                    .client
                    .clone()
                    .prepare(api::PrepareSnapshotRequest {
                        snapshotter: "airgap".into(),
                        key: format!("ns/{i}/extract"),
                        parent: parent.clone(),
                        labels,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Code::AlreadyExists, "{name}: {err:?}");
                parent = chain.to_string();
            }
            let all = committed(&server.sn);
            assert_eq!(all.len(), 2, "{name}");
            let mut lowers = Vec::new();
            for (i, (_, id)) in all.iter().enumerate() {
                let dir = root.join("snapshots").join(id.to_string());
                let fs_dir = dir.join("fs");
                assert!(erofs::is_mounted(&fs_dir), "{name}: layer {i} not mounted");
                assert_eq!(!dir.join(COPY).exists(), in_place, "{name}: layer {i}");
                let ext = work.path().join(format!("ext{i}"));
                std::fs::create_dir(&ext).unwrap();
                let tar = &spec.layers[i];
                crate::extract::unpack_layer(&tar[..], Compression::None, &Digest::of(tar), &ext)
                    .unwrap();
                assert_same_tree(&ext, &fs_dir, TreeOptions { dir_times: false });
                lowers.insert(0, (ext, fs_dir));
            }
            // The image as a container sees it: overlay of the mounted
            // layers against overlay of the extracted ones.
            let join = |f: fn(&(PathBuf, PathBuf)) -> &PathBuf| {
                let dirs: Vec<String> = lowers.iter().map(|l| f(l).display().to_string()).collect();
                format!("lowerdir={}", dirs.join(":"))
            };
            eprintln!("{name}: comparing the merged trees");
            assert_same_overlay(
                work.path(),
                &join(|l| &l.0),
                &join(|l| &l.1),
                TreeOptions { dir_times: false },
            );
            for (snapshot, _) in all.iter().rev() {
                server.sn.remove(snapshot).unwrap();
            }
            assert!(
                crate::snapshot::test_support::dir_names(&root.join("snapshots")).is_empty(),
                "{name}"
            );
            server.stop().await;
        }
    }

    /// Gzip layers (not stored as plain tars): decompressed once into the
    /// snapshot, indexed, mounted, equal to their extraction, mounted again
    /// after a restart (the copy moved with the directory), removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compressed_layers_are_mounted_over_a_decompressed_copy() {
        requires_root!();
        let work = tempfile::tempdir().unwrap();
        let _guard = Unmount(work.path().to_owned());
        let tars = vec![
            layer_tar(&[
                Entry::Dir("a"),
                Entry::File("a/x", b"x"),
                Entry::File("a/y", b"y"),
            ]),
            layer_tar(&[
                Entry::Dir("a"),
                Entry::File("a/.wh.x", b""),
                Entry::File("b", b"b"),
            ]),
        ];
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&tars, &[]);
        assert_eq!(layers[0].compression, Compression::Gzip);
        let fake = Arc::new(fake);
        let server =
            TestServer::start_with(Some(fake.clone()), crate::config::LayerMode::Erofs).await;
        let root = server.root();
        let _root_guard = Unmount(root.clone());
        server.commit_layers(&layers, &HashMap::new()).await;
        let all = committed(&server.sn);
        let check = |all: &[(String, u64)]| {
            for (i, (_, id)) in all.iter().enumerate() {
                let dir = root.join("snapshots").join(id.to_string());
                assert!(erofs::is_mounted(&dir.join("fs")), "layer {i} not mounted");
                assert_eq!(std::fs::read(dir.join(COPY)).unwrap(), tars[i]);
                let ext = work
                    .path()
                    .join(format!("ext{i}-{}", dir.display().to_string().len()));
                let _ = std::fs::remove_dir_all(&ext);
                std::fs::create_dir(&ext).unwrap();
                let tar = &tars[i];
                crate::extract::unpack_layer(&tar[..], Compression::None, &Digest::of(tar), &ext)
                    .unwrap();
                assert_same_tree(&ext, &dir.join("fs"), TreeOptions::default());
            }
        };
        check(&all);
        let state = server.stop_keeping_state().await;
        unmount_under(&root);
        let sn = Snapshotter::open_with(&root, Some(fake.clone()), crate::config::LayerMode::Erofs)
            .unwrap();
        check(&all);
        for (name, _) in all.iter().rev() {
            sn.remove(name).unwrap();
        }
        assert!(crate::snapshot::test_support::dir_names(&root.join("snapshots")).is_empty());
        drop(sn);
        drop(state);
    }
}
