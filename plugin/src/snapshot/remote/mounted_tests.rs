//! The archive path with layers mounted (EROFS) instead of extracted.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Code;

use std::os::unix::fs::MetadataExt;
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
/// layer mounted through Prepare (over a private copy of the layer: cloned
/// or copied for a docker-save `.tar` and an OCI layout of `tar` layers,
/// decompressed otherwise),
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
    let kinds: [(&str, LayerCompression, Wrap, bool); 5] = [
        ("docker-save.tar", LayerCompression::None, Wrap::Tar, true),
        (
            "docker-save.tar.zst",
            LayerCompression::None,
            Wrap::Zstd,
            true,
        ),
        (
            "oci-tar-layers.tar",
            LayerCompression::None,
            Wrap::Tar,
            false,
        ),
        ("oci-gzip.tar", LayerCompression::Gzip, Wrap::Tar, false),
        (
            "oci-zstd.tar.zst",
            LayerCompression::Zstd,
            Wrap::Seekable,
            false,
        ),
    ];
    for (name, compression, container, saved) in kinds {
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
            // layer_backing = "private": every layer has its own copy.
            assert!(dir.join(COPY).exists(), "{name}: layer {i}");
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

// What a Prepare, View or Mounts checks below it (issue 19, point 2): a
// layer mounted from an archive whose mount is gone is mounted again,
// rebuilt from an archive holding it, or refused by name; never handed to
// overlay as an empty directory.

fn snapshot_dir(root: &Path, id: u64) -> PathBuf {
    root.join("snapshots").join(id.to_string())
}

/// The mounts of the process whose mount point lies under `path`.
fn mounts_under(path: &Path) -> Vec<String> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(&real))
        .map(str::to_string)
        .collect()
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        layer_tar(&[
            Entry::Dir("etc"),
            Entry::File("etc/marker.txt", b"marker\n"),
            Entry::File("etc/gone", b"x"),
        ]),
        layer_tar(&[
            Entry::Dir("etc"),
            Entry::File("etc/.wh.gone", b""),
            Entry::File("etc/top", b"top\n"),
        ]),
    ]
}

/// Each committed layer is mounted and holds its files.
fn assert_layers_served(root: &Path, ids: &[u64]) {
    for (i, id) in ids.iter().enumerate() {
        let fs_dir = snapshot_dir(root, *id).join("fs");
        assert!(
            crate::layer::mount::is_mounted(&fs_dir),
            "layer {i} not mounted"
        );
    }
    let bottom = snapshot_dir(root, ids[0]).join("fs/etc/marker.txt");
    assert_eq!(std::fs::read(&bottom).unwrap(), b"marker\n");
    let top = snapshot_dir(root, ids[1]).join("fs/etc/top");
    assert_eq!(std::fs::read(&top).unwrap(), b"top\n");
}

fn unmount_layers(root: &Path, ids: &[u64]) {
    for id in ids {
        crate::dirs::unmount(&snapshot_dir(root, *id).join("fs"));
        assert!(!crate::layer::mount::is_mounted(
            &snapshot_dir(root, *id).join("fs")
        ));
    }
}

/// A mount lost while the daemon runs (an operator's `umount`): Mounts of
/// a container prepared before, a View and a Prepare each mount it again
/// before answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mount_is_mounted_again_by_prepare_view_and_mounts() {
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let mut fake = FakeSource::default();
    let layers = fake.add_plain_image(&two_layers(), &work.path().join("image.tar"));
    let server =
        TestServer::start_with(Some(Arc::new(fake)), crate::config::LayerMode::Erofs).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    let parent = server.commit_layers(&layers, &HashMap::new()).await;
    let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();
    server
        .sn
        .prepare("ns/9/ctr", &parent, HashMap::new())
        .unwrap();

    unmount_layers(&root, &ids);
    server.sn.mounts("ns/9/ctr").unwrap();
    assert_layers_served(&root, &ids);
    unmount_layers(&root, &ids);
    server
        .sn
        .view("ns/9/view", &parent, HashMap::new())
        .unwrap();
    assert_layers_served(&root, &ids);
    unmount_layers(&root, &ids);
    server
        .sn
        .prepare("ns/9/ctr2", &parent, HashMap::new())
        .unwrap();
    assert_layers_served(&root, &ids);
    server.stop().await;
}

/// The archive deleted and the node rebooted: a new container fails to
/// start with an error naming the layer and the archive (never without the
/// layer's files); the archive back under another name: the layer is
/// rebuilt from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_gone_at_reboot_is_refused_by_name_then_rebuilt_from_another_name() {
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let tars = two_layers();
    let archive = work.path().join("image.tar");
    let mut fake = FakeSource::default();
    let layers = fake.add_plain_image(&tars, &archive);
    let server = TestServer::start_with(Some(Arc::new(fake)), archive_backed()).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    let parent = server.commit_layers(&layers, &HashMap::new()).await;
    let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();

    // The reboot: the daemon stops, its mounts go, the archive is gone.
    let state = server.stop_keeping_state().await;
    unmount_under(&root);
    std::fs::remove_file(&archive).unwrap();
    let failures = crate::metrics::global().layer_remount_failures.get();
    let sn = Snapshotter::open_with(
        &root,
        Some(Arc::new(FakeSource::default())),
        archive_backed(),
    )
    .unwrap();
    assert!(crate::metrics::global().layer_remount_failures.get() >= failures + 2);
    let err = sn.prepare("ns/9/ctr", &parent, HashMap::new()).unwrap_err();
    let code = tonic::Status::from(err).code();
    let err = sn
        .prepare("ns/9/ctr", &parent, HashMap::new())
        .unwrap_err()
        .to_string();
    assert_eq!(code, Code::FailedPrecondition, "{err}");
    assert!(err.contains(&layers[1].digest.to_string()), "{err}");
    assert!(err.contains(&archive.display().to_string()), "{err}");
    assert!(
        sn.stat("ns/9/ctr").is_err(),
        "a container snapshot was made"
    );
    assert!(sn.view("ns/9/view", &parent, HashMap::new()).is_err());
    drop(sn);

    // The archive back under another name.
    let mut back = FakeSource::default();
    let renamed = work.path().join("renamed.tar");
    back.add_plain_image(&tars, &renamed);
    let sn = Snapshotter::open_with(&root, Some(Arc::new(back)), archive_backed()).unwrap();
    sn.prepare("ns/9/ctr", &parent, HashMap::new()).unwrap();
    assert_layers_served(&root, &ids);
    for id in &ids {
        let record =
            crate::layer::record::BackingRecord::read(&snapshot_dir(&root, *id).join(RECORD))
                .unwrap();
        assert_eq!(record.archive, renamed);
    }
    sn.remove("ns/9/ctr").unwrap();
    sn.remove(&parent).unwrap();
    sn.remove(&layers[0].chain_id.to_string()).unwrap();
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    drop(sn);
    drop(state);
}

/// A decompressed copy inside the root is known by its content: the root
/// copied (`cp -a`) to another file system (every device number changes)
/// and a `touch` of the copy still mount, without any archive; a copy whose
/// content changed is rebuilt from the archive, or refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_known_by_its_content_when_the_root_moves() {
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let tars = two_layers();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&tars, &[]);
    let fake = Arc::new(fake);
    let server = TestServer::start_with(Some(fake.clone()), crate::config::LayerMode::Erofs).await;
    let old_root = server.root();
    let parent = server.commit_layers(&layers, &HashMap::new()).await;
    let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();
    let state = server.stop_keeping_state().await;
    unmount_under(&old_root);

    // Another file system: a loop-mounted ext4 image (file-backed EROFS
    // cannot read its backing file from tmpfs: "Block device required").
    let other = work.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let image = work.path().join("other.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let run = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image));
    run(std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&other));
    let root = other.join("root");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&old_root)
        .arg(&root)
        .status()
        .unwrap();
    assert!(cp.success());
    drop(state);
    let nothing = Arc::new(FakeSource::default());
    let sn = Snapshotter::open_with(
        &root,
        Some(nothing.clone()),
        crate::config::LayerMode::Erofs,
    )
    .unwrap();
    sn.prepare("ns/9/ctr", &parent, HashMap::new()).unwrap();
    assert_layers_served(&root, &ids);
    let new_dev = std::fs::metadata(&root).unwrap().dev();
    let record =
        crate::layer::record::BackingRecord::read(&snapshot_dir(&root, ids[0]).join(RECORD))
            .unwrap();
    assert_eq!(record.key.dev, new_dev, "the record was not updated");
    drop(sn);

    // A touch of the copy, then a reboot.
    unmount_under(&root);
    let copy = snapshot_dir(&root, ids[1]).join(COPY);
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let sn = Snapshotter::open_with(
        &root,
        Some(nothing.clone()),
        crate::config::LayerMode::Erofs,
    )
    .unwrap();
    sn.mounts("ns/9/ctr").unwrap();
    assert_layers_served(&root, &ids);
    drop(sn);

    // The copy's bytes changed (same size): refused by name without an
    // archive, rebuilt from one.
    unmount_under(&root);
    let mut bytes = std::fs::read(&copy).unwrap();
    let at = bytes.windows(4).position(|w| w == b"top\n").unwrap();
    bytes[at..at + 4].copy_from_slice(b"bad\n");
    std::fs::write(&copy, &bytes).unwrap();
    let sn = Snapshotter::open_with(&root, Some(nothing), crate::config::LayerMode::Erofs).unwrap();
    let err = sn.mounts("ns/9/ctr").unwrap_err().to_string();
    assert!(err.contains(&layers[1].digest.to_string()), "{err}");
    assert!(err.contains("does not hold the layer"), "{err}");
    drop(sn);
    let sn =
        Snapshotter::open_with(&root, Some(fake.clone()), crate::config::LayerMode::Erofs).unwrap();
    sn.mounts("ns/9/ctr").unwrap();
    assert_layers_served(&root, &ids);
    assert_eq!(
        std::fs::read(snapshot_dir(&root, ids[1]).join(COPY)).unwrap(),
        tars[1]
    );
    drop(sn);
    unmount_under(&other);
}

/// A kernel that can no longer mount EROFS (a fault hook: every mount under
/// the root fails): the Prepare fails naming the layer, and succeeds once
/// mounting works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_cannot_mount_any_more_fails_by_name() {
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let mut fake = FakeSource::default();
    let layers = fake.add_plain_image(&two_layers(), &work.path().join("image.tar"));
    let server =
        TestServer::start_with(Some(Arc::new(fake)), crate::config::LayerMode::Erofs).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    let parent = server.commit_layers(&layers, &HashMap::new()).await;
    let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();
    unmount_layers(&root, &ids);
    {
        let _fault = crate::layer::mount::fault::fail_under(&std::fs::canonicalize(&root).unwrap());
        let err = server
            .sn
            .prepare("ns/9/ctr", &parent, HashMap::new())
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(tonic::Status::from(err).code(), Code::FailedPrecondition);
        assert!(text.contains(&layers[1].digest.to_string()), "{text}");
        assert!(!crate::layer::mount::is_mounted(
            &snapshot_dir(&root, ids[1]).join("fs")
        ));
    }
    server
        .sn
        .prepare("ns/9/ctr", &parent, HashMap::new())
        .unwrap();
    assert_layers_served(&root, &ids);
    server.stop().await;
}

/// The same layer twice in one chain: each snapshot mounts its own copy of
/// the index with a UUID of its own (overlay refuses lowers sharing one);
/// both copies count as uses of the one store entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_layer_twice_in_a_chain_has_two_uuids() {
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let tars = two_layers();
    let tars = vec![tars[0].clone(), tars[1].clone(), tars[0].clone()];
    let mut fake = FakeSource::default();
    let layers = fake.add_plain_image(&tars, &work.path().join("image.tar"));
    let server =
        TestServer::start_with(Some(Arc::new(fake)), crate::config::LayerMode::Erofs).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    server.commit_layers(&layers, &HashMap::new()).await;
    let ids: Vec<u64> = committed(&server.sn).iter().map(|c| c.1).collect();
    let uuid = |id: u64| {
        let image = std::fs::read(snapshot_dir(&root, id).join(crate::layer::OWN_IMAGE)).unwrap();
        image[1024 + 48..1024 + 64].to_vec()
    };
    assert_ne!(uuid(ids[0]), uuid(ids[2]));
    assert_ne!(uuid(ids[0]), vec![0u8; 16]);
    let store_image = root.join("layers").join(layers[0].digest.hex()).join(IMAGE);
    assert_eq!(std::fs::metadata(store_image).unwrap().nlink(), 3);
    // The kernel's view: three mounts with three UUIDs (statfs's f_fsid
    // is the device; the UUID is checked by overlay on mount).
    let mounts = server
        .sn
        .prepare("ns/9/ctr", &layers[2].chain_id.to_string(), HashMap::new())
        .unwrap();
    let merged = work.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    mount_overlay(&mounts[0].options.join(","), &merged);
    assert_eq!(
        std::fs::read(merged.join("etc/marker.txt")).unwrap(),
        b"marker\n"
    );
    assert!(merged.join("etc/top").exists());
    rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()).unwrap();
    server.stop().await;
}

/// A root reached through a symlink: Remove, Cleanup and staging leave no
/// mounts and no directories behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_behind_a_symlink_leaves_no_mounts() {
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let real = work.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = work.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut fake = FakeSource::default();
    let tars = two_layers();
    let layers = fake.add_plain_image(&tars, &work.path().join("image.tar"));
    let fake = Arc::new(fake);
    let root = link.join("root");
    let sn =
        Snapshotter::open_with(&root, Some(fake.clone()), crate::config::LayerMode::Erofs).unwrap();
    let mut parent = String::new();
    for (i, layer) in layers.iter().enumerate() {
        let labels = HashMap::from([(TARGET_SNAPSHOT_REF.to_string(), layer.chain_id.to_string())]);
        let answer = super::prepare(&sn, &format!("ns/{i}/extract"), &parent, &labels).await;
        assert!(answer.is_some_and(|e| e.is_already_exists()));
        parent = layer.chain_id.to_string();
    }
    let ids: Vec<u64> = committed(&sn).iter().map(|c| c.1).collect();
    assert_eq!(mounts_under(&real).len(), 2);

    // Cleanup: an orphaned directory holding a mount (a crash between the
    // rename and the record), and a staged layer nobody claims.
    let orphan = root.join("snapshots/9999");
    std::fs::rename(snapshot_dir(&root, ids[1]), &orphan).unwrap();
    let staged = root.join("staging/leftover-77");
    std::fs::create_dir_all(staged.join("fs")).unwrap();
    rustix::mount::mount(
        "tmpfs",
        staged.join("fs"),
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    )
    .unwrap();
    sn.cleanup().unwrap();
    assert!(!orphan.exists() && !staged.exists());
    assert_eq!(mounts_under(&real).len(), 1, "{:?}", mounts_under(&real));

    // Remove.
    sn.remove(&parent).unwrap();
    sn.remove(&layers[0].chain_id.to_string()).unwrap();
    assert!(mounts_under(&real).is_empty(), "{:?}", mounts_under(&real));
    assert!(crate::testsupport::snapshot::dir_names(&root.join("snapshots")).is_empty());
    assert!(crate::testsupport::snapshot::dir_names(&root.join("staging")).is_empty());
    assert!(crate::testsupport::snapshot::dir_names(&root.join("trash")).is_empty());
    drop(sn);
}

/// Layers mounted from the archive itself (`layer_backing = "archive"`):
/// what an archive gone or moved does to them is only seen there (private
/// copies do not depend on the archive).
fn archive_backed() -> crate::layer::LayerOptions {
    let mut opts = crate::layer::LayerOptions::from(crate::config::LayerMode::Erofs);
    opts.backing = crate::config::LayerBackingMode::Archive;
    opts
}

/// Issue 19.1: a docker-save `.tar` rewritten in place (same inode) while
/// a container runs on a layer mounted from it, at the same size and at
/// another size, other contents, page cache dropped before each read.
/// `private` (the default): the container reads exactly its layer's
/// bytes. `archive`: it reads the new bytes (the documented trade). Both:
/// the rescan logs the rewrite, counts it, and records it for doctor,
/// naming the mounted layers that read the archive itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_rewritten_in_place_changes_nothing_a_container_reads() {
    requires_erofs!();
    use crate::config::{LayerBackingMode, LayerMode};
    use crate::testsupport::{docker_save, write, ImageSpec};
    use std::os::unix::fs::FileExt;
    let marker = |fill: u8, len: usize| vec![fill; len];
    let spec_with = |body: &[u8]| {
        ImageSpec::new(vec![layer_tar(&[
            Entry::Dir("etc"),
            Entry::File("etc/marker.txt", body),
        ])])
    };
    let original = marker(b'o', 20_000);
    for backing in [LayerBackingMode::Private, LayerBackingMode::Archive] {
        let work = tempfile::tempdir().unwrap();
        let _guard = Unmount(work.path().to_owned());
        let spec = spec_with(&original);
        let saved = docker_save(&spec, &["app:1"]);
        let archives = work.path().join("archives");
        std::fs::create_dir(&archives).unwrap();
        let archive = write(&archives, "app.tar", &saved);
        let catalog = crate::catalog::Catalog::open(crate::catalog::CatalogOptions {
            dirs: vec![archives.clone()],
            settle: std::time::Duration::ZERO,
            cache_bytes: 64 << 20,
            on_rewrite: Some(crate::layer::rewrites::seen),
            ..Default::default()
        })
        .unwrap();
        let mut opts = crate::layer::LayerOptions::from(LayerMode::Erofs);
        opts.backing = backing;
        let server = TestServer::start_with(Some(catalog.clone()), opts).await;
        let root = server.root();
        let _root_guard = Unmount(root.clone());
        crate::layer::rewrites::init(&root);
        let chain = spec.chain_ids()[0];
        let labels = HashMap::from([(TARGET_SNAPSHOT_REF.to_string(), chain.to_string())]);
        let err = server
            .client
            .clone()
            .prepare(api::PrepareSnapshotRequest {
                snapshotter: "airgap".into(),
                key: "ns/1/extract".into(),
                parent: String::new(),
                labels,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        let (_, id) = committed(&server.sn)[0].clone();
        let layer_dir = root.join("snapshots").join(id.to_string());
        assert!(crate::layer::mount::is_mounted(&layer_dir.join("fs")));
        assert_eq!(
            layer_dir.join(COPY).exists(),
            backing == LayerBackingMode::Private,
            "{backing:?}"
        );
        // The container: an overlay over the layer, as containerd mounts it.
        let mounts = server
            .sn
            .prepare("ns/9/ctr", &chain.to_string(), HashMap::new())
            .unwrap();
        let merged = work.path().join("merged");
        std::fs::create_dir(&merged).unwrap();
        mount_overlay(&mounts[0].options.join(","), &merged);
        let _merged_guard = Unmount(merged.clone());
        let read = || {
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
            std::fs::read(merged.join("etc/marker.txt"))
        };
        assert_eq!(read().unwrap(), original);
        let counted = crate::metrics::global().archive_rewrites.get();

        // Same size, other bytes, written over the same inode.
        let changed = marker(b'X', original.len());
        let same_size = docker_save(&spec_with(&changed), &["app:1"]);
        assert_eq!(same_size.len(), saved.len());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&archive)
            .unwrap();
        f.write_all_at(&same_size, 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        catalog.rescan();
        match backing {
            LayerBackingMode::Private => assert_eq!(read().unwrap(), original),
            // The trade "archive" makes: the new bytes at the old offsets.
            LayerBackingMode::Archive => assert_eq!(read().unwrap(), changed),
        }
        assert!(crate::metrics::global().archive_rewrites.get() > counted);
        let status = crate::layer::rewrites::read_status(&root).unwrap();
        let found = status
            .rewrites
            .iter()
            .find(|r| r.archive == archive)
            .unwrap_or_else(|| panic!("{backing:?}: not recorded: {status:?}"));
        assert_eq!(
            found.mounted_layers.len(),
            usize::from(backing == LayerBackingMode::Archive),
            "{found:?}"
        );

        // Another size: truncated and rewritten (what `cp` does).
        let counted = crate::metrics::global().archive_rewrites.get();
        std::fs::write(
            &archive,
            docker_save(&spec_with(&marker(b'Y', 70_000)), &["app:1"]),
        )
        .unwrap();
        catalog.rescan();
        assert!(crate::metrics::global().archive_rewrites.get() > counted);
        if backing == LayerBackingMode::Private {
            assert_eq!(read().unwrap(), original);
        }
        crate::dirs::unmount(&merged);
        server.sn.remove("ns/9/ctr").unwrap();
        server.sn.remove(&chain.to_string()).unwrap();
        server.stop().await;
    }
}

/// A layer taken by its diffID on another parent (containerd 2.3+'s
/// labels, a rebased image) is mounted from the archive like any other, and
/// after a reboot with its archive gone and back under another name it is
/// rebuilt by its diffID: its chain ID is in no archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_taken_by_diff_id_is_rebuilt_by_diff_id() {
    use crate::labels::{SNAPSHOT_DIFF_ID, SNAPSHOT_PARENT_CHAIN_ID};
    requires_erofs!();
    let work = tempfile::tempdir().unwrap();
    let _guard = Unmount(work.path().to_owned());
    let base_a = layer_tar(&[Entry::Dir("etc"), Entry::File("etc/base", b"a\n")]);
    let base_c = layer_tar(&[Entry::Dir("etc"), Entry::File("etc/base", b"c\n")]);
    let top = layer_tar(&[Entry::Dir("etc"), Entry::File("etc/top", b"top\n")]);
    let archives = |fake: &mut FakeSource, suffix: &str| {
        fake.add_plain_image(
            &[base_a.clone(), top.clone()],
            &work.path().join(format!("a{suffix}.tar")),
        );
        fake.add_plain_image(
            std::slice::from_ref(&base_c),
            &work.path().join(format!("c{suffix}.tar")),
        )
    };
    let mut fake = FakeSource::default();
    let base = archives(&mut fake, "");
    let server = TestServer::start_with(Some(Arc::new(fake)), archive_backed()).await;
    let root = server.root();
    let _root_guard = Unmount(root.clone());
    let parent = server.commit_layers(&base, &HashMap::new()).await;
    let diff_id = Digest::of(&top);
    let chain = Digest::chain_ids(&[base[0].diff_id, diff_id])[1];
    let labels = HashMap::from([
        (TARGET_SNAPSHOT_REF.to_string(), chain.to_string()),
        (SNAPSHOT_DIFF_ID.to_string(), diff_id.to_string()),
        (
            SNAPSHOT_PARENT_CHAIN_ID.to_string(),
            base[0].chain_id.to_string(),
        ),
    ]);
    let err = server
        .client
        .clone()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: "airgap".into(),
            key: "ns/1/extract-top".into(),
            parent: parent.clone(),
            labels,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let id = committed(&server.sn)
        .into_iter()
        .find(|(name, _)| *name == chain.to_string())
        .map(|(_, id)| id)
        .expect("the rebased top committed under its chain ID");
    let top_file = snapshot_dir(&root, id).join("fs/etc/top");
    assert_eq!(std::fs::read(&top_file).unwrap(), b"top\n");

    // The reboot: mounts gone, archives gone, back under other names.
    let state = server.stop_keeping_state().await;
    unmount_under(&root);
    for name in ["a.tar", "c.tar"] {
        std::fs::remove_file(work.path().join(name)).unwrap();
    }
    let mut back = FakeSource::default();
    archives(&mut back, "-renamed");
    let sn = Snapshotter::open_with(&root, Some(Arc::new(back)), archive_backed()).unwrap();
    sn.view("ns/9/view", &chain.to_string(), HashMap::new())
        .unwrap();
    assert_eq!(std::fs::read(&top_file).unwrap(), b"top\n");
    let record =
        crate::layer::record::BackingRecord::read(&snapshot_dir(&root, id).join(RECORD)).unwrap();
    assert_eq!(record.archive, work.path().join("a-renamed.tar"));
    sn.remove("ns/9/view").unwrap();
    sn.remove(&chain.to_string()).unwrap();
    sn.remove(&parent).unwrap();
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    drop(sn);
    drop(state);
}
