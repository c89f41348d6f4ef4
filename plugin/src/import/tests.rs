//! Registration passes against the in-memory containerd of
//! `testsupport::containerd`, over a real catalog of small archives: who
//! owns which image record, what a pass writes, and the ingest refs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::client::ImageRecord;
use super::*;
use crate::catalog::CatalogOptions;
use crate::labels::{AIRGAP_ARCHIVE, AIRGAP_CREATED, CRI_IMAGE};
use crate::testsupport::containerd::{record, FakeContainerd};
use crate::testsupport::*;

const NS: &str = "k8s.io";

/// An archive of one image: what it is called and what it holds.
struct Archived {
    path: PathBuf,
    name: String,
    built: BuiltImage,
}

impl Archived {
    /// The records CRI keeps for the image: id, repo digest, tag.
    fn records(&self) -> [String; 3] {
        let repo = self.name.rsplit_once(':').unwrap().0;
        [
            self.built.config.to_string(),
            format!("{repo}@{}", self.built.manifest),
            self.name.clone(),
        ]
    }
}

/// Writes `file` in `dir`: one image called `name` whose layer says
/// `marker`.
fn archive(dir: &Path, file: &str, name: &str, marker: &str) -> Archived {
    let spec = ImageSpec::new(vec![layer_tar(&[("marker", marker.as_bytes())])]);
    let (layout, built) = OciLayout::single(name, &spec);
    Archived {
        path: write(dir, file, &layout.to_tar()),
        name: name.to_string(),
        built,
    }
}

fn catalog(dir: &Path) -> Arc<Catalog> {
    Catalog::open(CatalogOptions {
        dirs: vec![dir.to_path_buf()],
        settle: Duration::ZERO,
        ..Default::default()
    })
    .unwrap()
}

fn importer(catalog: &Arc<Catalog>) -> Importer {
    Importer::new(
        catalog.clone(),
        ImportOptions {
            address: PathBuf::from("/nonexistent/containerd.sock"),
            namespaces: vec![NS.to_string()],
            mode: ImportMode::Lazy,
            snapshotter: "airgap".to_string(),
            platform: "linux/amd64".to_string(),
            declined_wait: Duration::ZERO,
        },
    )
}

async fn pass(importer: &Importer, fake: &FakeContainerd) -> NamespaceReport {
    let report = importer.pass(fake).await.unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    report.namespaces.into_iter().next().unwrap()
}

/// The archive deleted, and the catalog told.
fn withdraw(catalog: &Catalog, archive: &Archived) {
    std::fs::remove_file(&archive.path).unwrap();
    let report = catalog.rescan();
    assert_eq!(report.removed, std::slice::from_ref(&archive.path));
}

/// The image id, repo digest and tag records as a CRI pull leaves them.
fn kubelet_pulled(fake: &FakeContainerd, image: &Archived, digest: &str) -> Vec<ImageRecord> {
    let mut records = Vec::new();
    for name in image.records() {
        let r = record(&name, digest, &[(CRI_IMAGE, "managed")]);
        fake.put_image(NS, r.clone());
        records.push(r);
    }
    records
}

fn assert_untouched(fake: &FakeContainerd, records: &[ImageRecord]) {
    for r in records {
        assert_eq!(fake.image(NS, &r.name).as_ref(), Some(r), "{}", r.name);
    }
}

/// Calls of the journal since `mark` that touched record `name`.
fn record_calls(fake: &FakeContainerd, mark: usize, name: &str) -> Vec<String> {
    fake.journal()[mark..]
        .iter()
        .filter(|c| c.starts_with("images.") && c.ends_with(&format!(" {name}")))
        .cloned()
        .collect()
}

/// kubelet pulled the image the archive holds, same name and digest,
/// before the archive came: its records are not the importer's. Neither
/// the arrival nor the removal of the archive changes or deletes them.
#[tokio::test]
async fn a_pulled_record_of_the_same_name_and_digest_is_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let fake = FakeContainerd::new();
    let pulled = kubelet_pulled(&fake, &image, &image.built.manifest.to_string());
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);

    let report = pass(&importer, &fake).await;
    assert!(report.registered.is_empty(), "{report:?}");
    assert_eq!(report.left_alone.len(), 3, "{report:?}");
    assert_untouched(&fake, &pulled);
    assert!(
        fake.journal().is_empty(),
        "nothing of its own to register, nothing written: {:?}",
        fake.journal()
    );

    withdraw(&catalog, &image);
    let report = pass(&importer, &fake).await;
    assert!(report.removed.is_empty(), "{report:?}");
    assert_untouched(&fake, &pulled);
    assert!(fake.journal().is_empty(), "{:?}", fake.journal());
}

/// kubelet pulled a tag the archive also names, at another digest: the
/// tag stays kubelet's; the importer adds the archived image's own id and
/// repo digest records, and deletes only those when the archive goes.
#[tokio::test]
async fn a_pulled_tag_of_another_digest_stays_while_the_archive_comes_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "archived");
    let fake = FakeContainerd::new();
    let tag = record(&image.name, &format!("sha256:{}", "e".repeat(64)), &[]);
    fake.put_image(NS, tag.clone());
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);

    let report = pass(&importer, &fake).await;
    assert_eq!(report.registered, std::slice::from_ref(&image.name));
    assert_eq!(report.left_alone, std::slice::from_ref(&image.name));
    assert_untouched(&fake, std::slice::from_ref(&tag));
    let [id, repo_digest, _] = image.records();
    for name in [&id, &repo_digest] {
        let ours = fake.image(NS, name).unwrap();
        assert_eq!(
            ours.labels[AIRGAP_CREATED],
            image.built.manifest.to_string()
        );
    }

    withdraw(&catalog, &image);
    let report = pass(&importer, &fake).await;
    let mut ours = vec![id, repo_digest];
    ours.sort();
    assert_eq!(report.removed, ours);
    assert_eq!(fake.image_names(NS), std::slice::from_ref(&image.name));
    assert_untouched(&fake, &[tag]);
}

/// Another client creates the tag between the pass's List and its Create:
/// the Create fails with AlreadyExists and the record is left as it is,
/// then and when the archive goes.
#[tokio::test]
async fn a_record_created_between_list_and_create_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let fake = FakeContainerd::new();
    let theirs = record(
        &image.name,
        &image.built.manifest.to_string(),
        &[(CRI_IMAGE, "managed")],
    );
    let put = theirs.clone();
    fake.after_next_list(move |s| s.put_image(NS, put));
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);

    let report = pass(&importer, &fake).await;
    assert_eq!(report.left_alone, std::slice::from_ref(&image.name));
    assert_untouched(&fake, std::slice::from_ref(&theirs));
    assert!(record_calls(&fake, 0, &image.name).is_empty());

    // Later passes see it in their List: still left alone.
    let report = pass(&importer, &fake).await;
    assert_eq!(report.left_alone, std::slice::from_ref(&image.name));
    assert_eq!(report.unchanged, 1);
    withdraw(&catalog, &image);
    let report = pass(&importer, &fake).await;
    assert_eq!(
        report.removed.len(),
        2,
        "the id and repo digest: {report:?}"
    );
    assert_untouched(&fake, &[theirs]);
}

/// The archive replaced by a newer build of the same tag: the importer's
/// tag record is repointed (and keeps saying whose it is).
#[tokio::test]
async fn an_own_record_is_repointed_to_a_newer_build() {
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let fake = FakeContainerd::new();
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);
    pass(&importer, &fake).await;
    let before = fake.image(NS, &image.name).unwrap();
    assert_eq!(before.target.digest, image.built.manifest.to_string());

    let staged = tempfile::tempdir().unwrap();
    let newer = archive(staged.path(), "app.tar", "example.com/app:1", "two");
    std::fs::rename(&newer.path, &image.path).unwrap();
    catalog.rescan();
    let mark = fake.journal().len();
    let report = pass(&importer, &fake).await;
    assert_eq!(report.registered, std::slice::from_ref(&image.name));
    let after = fake.image(NS, &image.name).unwrap();
    assert_eq!(after.target.digest, newer.built.manifest.to_string());
    assert_eq!(after.labels[AIRGAP_CREATED], after.target.digest);
    assert_eq!(
        record_calls(&fake, mark, &image.name),
        [format!("images.Update {NS} {}", image.name)]
    );
    // The old build's id and repo digest records are gone, the new ones made.
    for name in &image.records()[..2] {
        assert!(fake.image(NS, name).is_none(), "{name}");
    }
    for name in newer.records() {
        assert!(fake.image(NS, &name).is_some(), "{name}");
    }
}

/// The archive deleted: every record the importer made for it goes.
#[tokio::test]
async fn own_records_are_deleted_when_the_archive_goes() {
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let other = archive(dir.path(), "other.tar", "example.com/other:1", "other");
    let fake = FakeContainerd::new();
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);
    let report = pass(&importer, &fake).await;
    assert_eq!(report.registered.len(), 2);
    for name in image.records() {
        let r = fake.image(NS, &name).unwrap();
        assert_eq!(r.labels[AIRGAP_ARCHIVE], image.path.display().to_string());
    }

    withdraw(&catalog, &image);
    let report = pass(&importer, &fake).await;
    let mut removed = image.records().to_vec();
    removed.sort();
    assert_eq!(report.removed, removed);
    let mut left = other.records().to_vec();
    left.sort();
    assert_eq!(fake.image_names(NS), left);
}

/// Someone repoints the importer's tag (a pull of the same tag, which
/// keeps the labels it does not set), and another of its records between
/// the pass's List and its Delete: neither is the importer's any more,
/// neither is deleted when the archive goes.
#[tokio::test]
async fn an_own_record_repointed_by_someone_else_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let fake = FakeContainerd::new();
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);
    pass(&importer, &fake).await;
    let elsewhere = format!("sha256:{}", "f".repeat(64));
    let [id, repo_digest, tag] = image.records();
    let mut repointed = fake.image(NS, &tag).unwrap();
    repointed.target.digest = elsewhere.clone();
    fake.put_image(NS, repointed.clone());
    let mut raced = fake.image(NS, &repo_digest).unwrap();
    raced.target.digest = elsewhere;
    let put = raced.clone();
    fake.after_next_list(move |s| s.put_image(NS, put));

    withdraw(&catalog, &image);
    let report = pass(&importer, &fake).await;
    assert_eq!(report.removed, [id]);
    assert_untouched(&fake, &[repointed, raced]);

    // And no later pass takes them back.
    let mark = fake.journal().len();
    pass(&importer, &fake).await;
    assert_eq!(fake.journal().len(), mark, "{:?}", fake.journal());
}

/// Two archives hold one image under two names: both claim the image id
/// record. The most recently modified archive owns it, and passes after
/// the first write nothing (they used to take it from each other, every
/// pass).
#[tokio::test]
async fn one_image_under_two_names_in_two_archives_does_not_flap() {
    let dir = tempfile::tempdir().unwrap();
    let older = archive(dir.path(), "a.tar", "example.com/a:1", "same");
    let newer = archive(dir.path(), "b.tar", "example.com/b:1", "same");
    assert_eq!(older.built.config, newer.built.config);
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&older.path)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);
    let fake = FakeContainerd::new();

    let report = pass(&importer, &fake).await;
    assert_eq!(report.registered.len(), 2, "{report:?}");
    let id = fake.image(NS, &newer.built.config.to_string()).unwrap();
    assert_eq!(id.labels[AIRGAP_ARCHIVE], newer.path.display().to_string());
    let mark = fake.journal().len();
    for _ in 0..3 {
        let report = pass(&importer, &fake).await;
        assert_eq!(report.unchanged, 2, "{report:?}");
    }
    assert_eq!(fake.journal().len(), mark, "{:?}", &fake.journal()[mark..]);

    // The owner's archive goes: the other archive takes the record over,
    // with no moment without it.
    withdraw(&catalog, &newer);
    let report = pass(&importer, &fake).await;
    assert!(!report.removed.contains(&id.name), "{report:?}");
    let id = fake.image(NS, &id.name).unwrap();
    assert_eq!(id.labels[AIRGAP_ARCHIVE], older.path.display().to_string());
}

/// A pass over what is registered already writes nothing at all.
#[tokio::test]
async fn a_pass_that_changes_nothing_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);
    let fake = FakeContainerd::new();
    pass(&importer, &fake).await;
    let mark = fake.journal().len();
    assert!(mark > 0);
    let report = pass(&importer, &fake).await;
    assert_eq!(report.unchanged, 1);
    assert_eq!(fake.journal().len(), mark, "{:?}", &fake.journal()[mark..]);
}

/// The daemon's pass and an `import` command (two importers), and two
/// passes of one importer, write content under refs of their own:
/// containerd holds a ref for one writer and answers the next "locked".
#[tokio::test]
async fn content_ingest_refs_are_unique_per_process_and_pass() {
    let dir = tempfile::tempdir().unwrap();
    archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let catalog = catalog(dir.path());
    let (daemon, command) = (importer(&catalog), importer(&catalog));
    let mut seen = Vec::new();
    for importer in [&daemon, &command, &daemon] {
        let fake = FakeContainerd::new();
        pass(importer, &fake).await;
        let refs = fake.with(|s| s.ingest_refs.clone());
        assert_eq!(refs.len(), 2, "manifest and config: {refs:?}");
        seen.extend(refs);
    }
    let prefix = format!("airgap-import-{}-", std::process::id());
    assert!(seen.iter().all(|r| r.starts_with(&prefix)), "{seen:?}");
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "{seen:?}");
}

/// Every pass is counted by its result, with the images it registered and
/// removed (`airgap_import_*`; process-wide counters, so deltas).
#[tokio::test]
async fn passes_registrations_and_removals_are_counted() {
    let m = crate::metrics::global();
    let ok = || {
        m.import_passes
            .get_or_create(&vec![("result", "ok".to_string())])
            .get()
    };
    let (passes, registered, removed) = (ok(), m.import_registered.get(), m.import_removed.get());
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path(), "app.tar", "example.com/app:1", "one");
    let fake = FakeContainerd::new();
    let catalog = catalog(dir.path());
    let importer = importer(&catalog);
    pass(&importer, &fake).await;
    assert!(ok() > passes);
    assert!(m.import_registered.get() > registered);
    assert!(m.import_last_success.get() > 0.0);
    withdraw(&catalog, &image);
    pass(&importer, &fake).await;
    assert!(ok() >= passes + 2);
    // Its three records: id, repo digest, tag.
    assert!(m.import_removed.get() >= removed + 3);
}
