//! Absence is not evidence: archives leave the view only after their file
//! has been absent from a readable directory for the removal grace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::testsupport::*;

const GRACE: Duration = Duration::from_secs(60);
const NAME: &str = "docker.io/library/app:1";

/// A catalog of `dir` with the removal grace set and indexes persisted in
/// `state`; not scanned yet.
fn catalog(dir: &Path, state: &Path) -> Arc<Catalog> {
    Catalog::empty(CatalogOptions {
        dirs: vec![dir.to_path_buf()],
        state_dir: Some(state.into()),
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        removal_grace: GRACE,
        ..Default::default()
    })
    .unwrap()
}

/// `<tmp>/archives` holding one archive of `NAME`, and the image built.
fn archives_dir(tmp: &Path) -> (PathBuf, PathBuf, BuiltImage) {
    let dir = tmp.join("archives");
    std::fs::create_dir(&dir).unwrap();
    let (oci, built) = OciLayout::single(
        "app:1",
        &ImageSpec::new(vec![layer_tar(&[("etc/app", b"1\n")])]),
    );
    let archive = write(&dir, "app.tar", &oci.to_tar());
    (dir, archive, built)
}

/// Moves the directory aside and leaves an empty one in its place (as an
/// empty mount point looks): the files themselves are untouched.
fn hide(dir: &Path) -> PathBuf {
    let aside = dir.with_extension("aside");
    std::fs::rename(dir, &aside).unwrap();
    std::fs::create_dir(dir).unwrap();
    aside
}

fn unhide(dir: &Path, aside: &Path) {
    std::fs::remove_dir(dir).unwrap();
    std::fs::rename(aside, dir).unwrap();
}

fn persisted(state: &Path) -> usize {
    std::fs::read_dir(state.join("index"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count()
}

#[test]
fn a_directory_that_cannot_be_read_keeps_its_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("disk");
    std::fs::create_dir(&parent).unwrap();
    let (dir, _, built) = archives_dir(&parent);
    let c = catalog(&dir, state.path());
    let t0 = Instant::now();
    c.rescan_at(t0);
    assert!(c.resolve(NAME).is_some());

    // Reading the directory now fails (ENOTDIR: its parent is a file).
    let aside = tmp.path().join("disk.aside");
    std::fs::rename(&parent, &aside).unwrap();
    std::fs::write(&parent, b"not a directory").unwrap();
    let changes = c.subscribe();
    let before = *changes.borrow();
    for later in [Duration::ZERO, GRACE * 10] {
        let report = c.rescan_at(t0 + later);
        assert_eq!(report.unreadable, std::slice::from_ref(&dir), "{report:?}");
        assert!(
            report.removed.is_empty() && report.missing.is_empty(),
            "{report:?}"
        );
        assert_eq!(c.resolve(NAME).unwrap().entry.digest, built.manifest);
        assert_eq!(c.missing_count(), 0);
    }
    assert_eq!(*changes.borrow(), before, "nothing changed, nobody woken");
    assert_eq!(persisted(state.path()), 1);
    // Blobs are still read through the open handle.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut c.open_blob(&built.layers[0]).unwrap(), &mut bytes).unwrap();

    std::fs::remove_file(&parent).unwrap();
    std::fs::rename(&aside, &parent).unwrap();
    let report = c.rescan_at(t0 + GRACE * 11);
    assert_eq!(report, ScanReport::default());
    assert!(c.resolve(NAME).is_some());
}

#[test]
fn an_empty_directory_keeps_its_archives_for_the_grace_then_they_are_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, _, _) = archives_dir(tmp.path());
    let c = catalog(&dir, state.path());
    let t0 = Instant::now();
    c.rescan_at(t0);
    let changes = c.subscribe();
    let before = *changes.borrow();

    let _aside = hide(&dir);
    let report = c.rescan_at(t0);
    assert_eq!(report.missing, [dir.join("app.tar")], "{report:?}");
    assert_eq!(report.next_removal, Some(GRACE));
    assert!(report.removed.is_empty());
    assert!(c.resolve(NAME).is_some(), "listed while missing");
    assert_eq!(c.missing_count(), 1);
    let report = c.rescan_at(t0 + GRACE - Duration::from_millis(1));
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.next_removal, Some(Duration::from_millis(1)));
    assert_eq!(*changes.borrow(), before, "the view did not change");
    assert_eq!(persisted(state.path()), 1);

    let report = c.rescan_at(t0 + GRACE);
    assert_eq!(report.removed, [dir.join("app.tar")], "{report:?}");
    assert!(c.resolve(NAME).is_none());
    assert_eq!(c.missing_count(), 0);
    assert!(*changes.borrow() > before, "the importer is woken");
    assert_eq!(
        persisted(state.path()),
        0,
        "the persisted index goes with it"
    );
}

#[test]
fn an_archive_back_within_the_grace_was_never_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, archive, _) = archives_dir(tmp.path());
    let c = catalog(&dir, state.path());
    let t0 = Instant::now();
    c.rescan_at(t0);
    let changes = c.subscribe();
    let before = *changes.borrow();

    let aside = hide(&dir);
    assert_eq!(c.rescan_at(t0).missing.len(), 1);
    unhide(&dir, &aside);
    let report = c.rescan_at(t0 + GRACE / 2);
    assert_eq!(
        report,
        ScanReport::default(),
        "the same file, nothing to do"
    );
    assert_eq!(c.missing_count(), 0);
    // The clock was reset: missing again later starts a new grace.
    let aside = hide(&dir);
    let report = c.rescan_at(t0 + GRACE * 2);
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.next_removal, Some(GRACE));
    unhide(&dir, &aside);
    c.rescan_at(t0 + GRACE * 2);
    assert_eq!(*changes.borrow(), before);

    // A replacement (renamed over: a new inode) is positive evidence:
    // indexed at once, grace or not.
    let (oci, v2) = OciLayout::single(
        "app:1",
        &ImageSpec::new(vec![layer_tar(&[("etc/app", b"2\n")])]),
    );
    let staged = write(&dir, ".app.tar.tmp", &oci.to_tar());
    std::fs::rename(&staged, &archive).unwrap();
    let report = c.rescan_at(t0 + GRACE * 2);
    assert_eq!(report.indexed, std::slice::from_ref(&archive), "{report:?}");
    assert_eq!(c.resolve(NAME).unwrap().entry.digest, v2.manifest);
}

#[test]
fn the_first_scan_after_a_restart_keeps_the_archives_known_before() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, archive, built) = archives_dir(tmp.path());
    let c = catalog(&dir, state.path());
    c.rescan();
    let layer = c.archives()[0].index.layers[0].clone();
    drop(c);

    // Restarted with the directory an empty mount point.
    let aside = hide(&dir);
    let c = catalog(&dir, state.path());
    let t0 = Instant::now();
    let report = c.rescan_at(t0);
    assert_eq!(report.missing, std::slice::from_ref(&archive), "{report:?}");
    assert!(report.removed.is_empty() && report.indexed.is_empty());
    let image = c.resolve(NAME).expect("listed from its persisted index");
    assert_eq!(image.entry.digest, built.manifest);
    assert!(
        c.layer(&layer.chain_id).is_some(),
        "its layers stay archived"
    );
    assert!(!c.archives()[0].is_open());
    assert_eq!(c.missing_count(), 1);
    // Its blobs cannot be read now: an error, neither "unknown" nor a bad copy.
    match c.open_blob(&built.layers[0]) {
        Err(BlobError::Read { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a missing file read"),
    }
    assert_eq!(c.bad_copies(), 0);
    assert!(c.plain_blob(&built.layers[0]).is_none());

    // The disk is mounted: the same file, opened, nothing re-indexed.
    unhide(&dir, &aside);
    let changes = c.subscribe();
    let before = *changes.borrow();
    let report = c.rescan_at(t0 + GRACE / 2);
    assert_eq!(
        report.returned,
        std::slice::from_ref(&archive),
        "{report:?}"
    );
    assert!(report.indexed.is_empty());
    assert!(c.archives()[0].is_open());
    assert_eq!(c.missing_count(), 0);
    assert!(*changes.borrow() > before, "layers can be prepared now");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut c.open_blob(&built.layers[0]).unwrap(), &mut bytes).unwrap();
}

#[test]
fn archives_known_before_a_restart_go_after_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, archive, _) = archives_dir(tmp.path());
    let c = catalog(&dir, state.path());
    c.rescan();
    drop(c);
    std::fs::remove_file(&archive).unwrap();

    let c = catalog(&dir, state.path());
    let t0 = Instant::now();
    c.rescan_at(t0);
    assert!(c.resolve(NAME).is_some());
    let report = c.rescan_at(t0 + GRACE);
    assert_eq!(report.removed, [archive], "{report:?}");
    assert!(c.resolve(NAME).is_none());
    assert_eq!(persisted(state.path()), 0);

    // Nothing persisted any more: the next start lists nothing.
    let c = catalog(&dir, state.path());
    c.rescan();
    assert!(c.images().is_empty());
}

#[test]
fn one_shot_catalogs_have_no_grace_and_restore_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, archive, _) = archives_dir(tmp.path());
    let opts = CatalogOptions {
        dirs: vec![dir.clone()],
        state_dir: Some(state.path().into()),
        settle: Duration::ZERO,
        ..Default::default()
    };
    assert!(opts.removal_grace.is_zero());
    let c = Catalog::open(opts.clone()).unwrap();
    assert!(c.resolve(NAME).is_some());
    let aside = hide(&dir);
    assert!(Catalog::open(opts.clone()).unwrap().images().is_empty());
    unhide(&dir, &aside);
    std::fs::remove_file(&archive).unwrap();
    let report = c.rescan();
    assert_eq!(report.removed, [archive], "{report:?}");
}

#[test]
fn archives_a_restart_finds_replaced_are_indexed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, archive, _) = archives_dir(tmp.path());
    let c = catalog(&dir, state.path());
    c.rescan();
    drop(c);
    let (oci, v2) = OciLayout::single(
        "app:1",
        &ImageSpec::new(vec![layer_tar(&[("etc/app", b"2\n")])]),
    );
    let staged = write(&dir, ".app.tar.tmp", &oci.to_tar());
    std::fs::rename(&staged, &archive).unwrap();

    let c = catalog(&dir, state.path());
    let report = c.rescan();
    assert_eq!(report.indexed, [archive], "{report:?}");
    assert!(report.missing.is_empty());
    assert_eq!(c.resolve(NAME).unwrap().entry.digest, v2.manifest);
}

/// Waits (bounded) for `cond`; not a timing assertion, a deadline shorter
/// than the watcher's periodic rescan.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// inotify watches the directory it was given: a filesystem mounted over
/// it (here: the directory replaced by another one) sends no event. The
/// watcher notices the directory's identity changed and looks again.
#[test]
fn the_watcher_follows_a_directory_mounted_over() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (dir, _, _) = archives_dir(tmp.path());
    let c = Catalog::open(CatalogOptions {
        dirs: vec![dir.clone()],
        state_dir: Some(state.path().into()),
        settle: Duration::ZERO,
        removal_grace: GRACE,
        ..Default::default()
    })
    .unwrap();
    let _w = c.watch();
    assert!(c.resolve(NAME).is_some());

    let aside = hide(&dir);
    eventually("the archive missing", || c.missing_count() == 1);
    assert!(c.resolve(NAME).is_some());
    // The new directory gets an archive: found without waiting for a poll.
    let (oci, _) = OciLayout::single(
        "other:1",
        &ImageSpec::new(vec![layer_tar(&[("etc/other", b"1\n")])]),
    );
    write(&dir, "other.tar", &oci.to_tar());
    eventually("an archive in the new directory listed", || {
        c.resolve("docker.io/library/other:1").is_some()
    });
    // And back: the first archive is there again, nothing was removed.
    std::fs::rename(dir.join("other.tar"), aside.join("other.tar")).unwrap();
    unhide(&dir, &aside);
    eventually("the archive there again", || c.missing_count() == 0);
    assert!(c.resolve(NAME).is_some());
    assert!(c.resolve("docker.io/library/other:1").is_some());
}
