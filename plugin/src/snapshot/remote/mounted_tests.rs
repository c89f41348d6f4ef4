//! The archive path with layers mounted (EROFS) instead of extracted.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Code;

use std::path::{Path, PathBuf};

use crate::catalog::Compression;
use crate::digest::Digest;
use crate::dirs::unmount_under;
use crate::labels::TARGET_SNAPSHOT_REF;
use crate::layer::record::{COPY, IMAGE, RECORD};
use crate::snapshot::proto::containerd::services::snapshots::v1 as api;
use crate::snapshot::{Kind, SnapshotApi, Snapshotter};
use crate::testsupport::requires_erofs;
use crate::testsupport::snapshot::{layer_tar, Entry, FakeSource, TestServer, Unmount};
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
    requires_erofs!();
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
    let server = TestServer::start_with(Some(fake.clone()), crate::config::LayerMode::Erofs).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    let parent = server.commit_layers(&layers, &HashMap::new()).await;
    assert_eq!(fake.total_opens(), 0, "a layer was read as a blob");
    let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let dir = root.join("snapshots").join(id.to_string());
        assert!(crate::layer::mount::is_mounted(&dir.join("fs")));
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
        crate::extract::unpack_layer(&tar[..], Compression::None, &Digest::of(tar), &ext).unwrap();
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
        assert!(!crate::layer::mount::is_mounted(
            &root.join("snapshots").join(id.to_string()).join("fs")
        ));
    }
    let sn =
        Snapshotter::open_with(&root, Some(fake.clone()), crate::config::LayerMode::Erofs).unwrap();
    for id in &ids {
        assert!(crate::layer::mount::is_mounted(
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

/// The real catalog over each kind of archive a site ships: every
/// layer mounted through Prepare (in place for a docker-save `.tar` and
/// an OCI layout of `tar` layers, over a decompressed copy otherwise),
/// each equal to its extraction file for file, the merged tree of the
/// two layers equal to the merged extracted tree, all unmounted by
/// Remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_archive_kind_through_the_catalog() {
    requires_erofs!();
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
        let server = TestServer::start_with(Some(catalog), crate::config::LayerMode::Auto).await;
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
            assert!(
                crate::layer::mount::is_mounted(&fs_dir),
                "{name}: layer {i} not mounted"
            );
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
            crate::testsupport::snapshot::dir_names(&root.join("snapshots")).is_empty(),
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
    requires_erofs!();
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
    let server = TestServer::start_with(Some(fake.clone()), crate::config::LayerMode::Erofs).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    server.commit_layers(&layers, &HashMap::new()).await;
    let all = committed(&server.sn);
    let check = |all: &[(String, u64)]| {
        for (i, (_, id)) in all.iter().enumerate() {
            let dir = root.join("snapshots").join(id.to_string());
            assert!(
                crate::layer::mount::is_mounted(&dir.join("fs")),
                "layer {i} not mounted"
            );
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
    let sn =
        Snapshotter::open_with(&root, Some(fake.clone()), crate::config::LayerMode::Erofs).unwrap();
    check(&all);
    for (name, _) in all.iter().rev() {
        sn.remove(name).unwrap();
    }
    assert!(crate::testsupport::snapshot::dir_names(&root.join("snapshots")).is_empty());
    drop(sn);
    drop(state);
}
