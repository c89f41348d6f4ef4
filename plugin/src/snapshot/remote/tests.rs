//! The Prepare path over gRPC, against an in-memory layer source.

use std::path::Path;
use std::time::Duration;

use tonic::Code;

use super::*;
use crate::labels::AIRGAP_IMPORT;
use crate::snapshot::proto::containerd::services::snapshots::v1 as api;
use crate::snapshot::SnapshotApi;
use crate::testsupport::requires_root;
use crate::testsupport::snapshot::{dir_names, layer_tar, Entry, FakeSource, TestServer};

fn target_labels(chain: &Digest) -> HashMap<String, String> {
    HashMap::from([
        (TARGET_SNAPSHOT_REF.to_string(), chain.to_string()),
        (
            "containerd.io/snapshot/cri.layer-digest".into(),
            "hint".into(),
        ),
    ])
}

fn prepare(
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> api::PrepareSnapshotRequest {
    api::PrepareSnapshotRequest {
        snapshotter: "airgap".into(),
        key: key.into(),
        parent: parent.into(),
        labels,
    }
}

/// containerd's lookup after ALREADY_EXISTS (metadata/snapshot.go):
/// committed snapshots carrying the target on the parent.
async fn lookup(server: &mut TestServer, target: &Digest, parent: &str) -> Vec<api::Info> {
    let filter = format!(r#"labels."containerd.io/snapshot.ref"=={target},parent=={parent:?}"#);
    let mut stream = server
        .client
        .list(api::ListSnapshotsRequest {
            snapshotter: "airgap".into(),
            filters: vec![filter],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        out.extend(msg.info);
    }
    // containerd takes the first committed one.
    out.retain(|i| i.kind == api::Kind::Committed as i32);
    out
}

fn image(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let name = format!("layer{i}");
            let body = format!("content of layer {i}\n");
            layer_tar(&[
                Entry::Dir("etc"),
                Entry::File(&format!("etc/{name}"), body.as_bytes()),
                Entry::File("etc/top", body.as_bytes()),
                Entry::Symlink("link", "etc/top"),
            ])
        })
        .collect()
}

/// How many layer pulls `airgap_layer_pull_duration_seconds` observed.
fn layer_pulls_observed() -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register(
        "pulls",
        "",
        crate::metrics::global().layer_pull_seconds.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("pulls_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn staging_is_empty(server: &TestServer) -> bool {
    dir_names(&server.root().join("staging")).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_layers_are_committed_and_answer_already_exists() {
    requires_root!();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&image(2), &[]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;

    let key0 = "k8s.io/1/extract-1 sha256:x";
    let pulls_before = layer_pulls_observed();
    let err = server
        .client
        .prepare(prepare(key0, "", target_labels(&layers[0].chain_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // At least: tests running beside this one pull too (one global metric).
    assert!(layer_pulls_observed() > pulls_before, "pull latency");
    let found = lookup(&mut server, &layers[0].chain_id, "").await;
    assert_eq!(found.len(), 1);
    let bottom = found[0].clone();
    assert_eq!(bottom.kind, api::Kind::Committed as i32);
    assert_eq!(bottom.name, layers[0].chain_id.to_string());
    assert_eq!(
        bottom.labels["containerd.io/snapshot/cri.layer-digest"],
        "hint"
    );
    // The active key was never created.
    let err = server
        .client
        .stat(api::StatSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key0.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The second layer on top of it, with the parent containerd names.
    let err = server
        .client
        .prepare(prepare(
            "k8s.io/2/extract-2",
            &bottom.name,
            target_labels(&layers[1].chain_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let found = lookup(&mut server, &layers[1].chain_id, &bottom.name).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].parent, bottom.name);

    // A container on top sees both layers through the mounts.
    let view = server
        .client
        .view(api::ViewSnapshotRequest {
            snapshotter: "airgap".into(),
            key: "view".into(),
            parent: found[0].name.clone(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let lower = view.mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap()
        .to_string();
    let dirs: Vec<&str> = lower.split(':').collect();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        std::fs::read_to_string(Path::new(dirs[0]).join("etc/top")).unwrap(),
        "content of layer 1\n",
        "nearest layer first"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(dirs[1]).join("etc/layer0")).unwrap(),
        "content of layer 0\n"
    );
    assert_eq!(
        std::fs::read_link(Path::new(dirs[1]).join("link")).unwrap(),
        Path::new("etc/top")
    );

    // Usage is real.
    let usage = server
        .client
        .usage(api::UsageRequest {
            snapshotter: "airgap".into(),
            key: bottom.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(usage.size > 0 && usage.inodes >= 4, "{usage:?}");

    // Each blob was read once: the second layer was prefetched.
    assert_eq!(fake.opened(&layers[0].digest), 1);
    assert_eq!(fake.opened(&layers[1].digest), 1);
    assert!(staging_is_empty(&server));

    // Another namespace pulling the same image: ALREADY_EXISTS at once.
    let err = server
        .client
        .prepare(prepare(
            "other/1/extract-3",
            "",
            target_labels(&layers[0].chain_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(fake.total_opens(), 2);

    // containerd's GC removes them, directories included.
    let snapshots = server.root().join("snapshots");
    for key in ["view", found[0].name.as_str(), bottom.name.as_str()] {
        server
            .client
            .remove(api::RemoveSnapshotRequest {
                snapshotter: "airgap".into(),
                key: key.into(),
            })
            .await
            .unwrap();
    }
    assert!(dir_names(&snapshots).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_target_label_prepare_is_ordinary() {
    let mut fake = FakeSource::default();
    fake.add_image(&image(1), &[]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;
    let resp = server
        .client
        .prepare(prepare("plain", "", HashMap::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.mounts[0].r#type, "bind");
    assert_eq!(fake.total_opens(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_wrong_falls_back_to_the_ordinary_path() {
    let mut fake = FakeSource::default();
    // Layer 1 is not archived.
    let layers = fake.add_image(&image(3), &[1]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;

    // Not archived: an active snapshot, containerd downloads.
    let resp = server
        .client
        .prepare(prepare("a1", "", target_labels(&layers[1].chain_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.mounts[0].r#type, "bind");

    // Archived, but on the wrong parent: ordinary path.
    let resp = server
        .client
        .prepare(prepare("a2", "", target_labels(&layers[2].chain_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.mounts[0].r#type, "bind");

    // Not a chain ID at all.
    let mut labels = HashMap::new();
    labels.insert(TARGET_SNAPSHOT_REF.to_string(), "whatever".to_string());
    server
        .client
        .prepare(prepare("a3", "", labels))
        .await
        .unwrap();

    // Archived but corrupt: the diffID check fails, nothing is left.
    fake.corrupt(
        &layers[0].digest,
        crate::testsupport::snapshot::gzip(b"not a tar"),
    );
    let resp = server
        .client
        .prepare(prepare("a4", "", target_labels(&layers[0].chain_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.mounts[0].r#type, "bind");
    assert!(lookup(&mut server, &layers[0].chain_id, "")
        .await
        .is_empty());
    assert!(staging_is_empty(&server));
    let all = server.sn.list(&[]).unwrap();
    let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a1", "a2", "a3", "a4"]);
    assert!(all.iter().all(|i| i.record.kind == Kind::Active));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_downloaded_by_containerd_count_by_their_name() {
    requires_root!();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&image(2), &[0]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;
    // containerd downloaded layer 0 and committed it as <ns>/<n>/<chainID>.
    server
        .client
        .prepare(prepare("k8s.io/1/extract", "", HashMap::new()))
        .await
        .unwrap();
    let parent = format!("k8s.io/2/{}", layers[0].chain_id);
    server
        .client
        .commit(api::CommitSnapshotRequest {
            snapshotter: "airgap".into(),
            name: parent.clone(),
            key: "k8s.io/1/extract".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap();
    let err = server
        .client
        .prepare(prepare(
            "k8s.io/3/extract",
            &parent,
            target_labels(&layers[1].chain_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        lookup(&mut server, &layers[1].chain_id, &parent)
            .await
            .len(),
        1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_layer_on_another_parent_name_gets_its_own_snapshot() {
    requires_root!();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&image(2), &[]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;
    // Namespace a: both layers from the archive.
    let err = server
        .client
        .prepare(prepare("a/1", "", target_labels(&layers[0].chain_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let bottom = layers[0].chain_id.to_string();
    server
        .client
        .prepare(prepare("a/2", &bottom, target_labels(&layers[1].chain_id)))
        .await
        .unwrap_err();
    // Namespace b downloaded layer 0 itself, then asks for layer 1.
    server
        .client
        .prepare(prepare("b/1", "", HashMap::new()))
        .await
        .unwrap();
    let parent = format!("b/2/{}", layers[0].chain_id);
    server
        .client
        .commit(api::CommitSnapshotRequest {
            snapshotter: "airgap".into(),
            name: parent.clone(),
            key: "b/1".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap();
    let err = server
        .client
        .prepare(prepare("b/3", &parent, target_labels(&layers[1].chain_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let found = lookup(&mut server, &layers[1].chain_id, &parent).await;
    assert_eq!(found.len(), 1);
    assert_ne!(found[0].name, layers[1].chain_id.to_string());
    server.stop().await;
}

#[test]
fn containerd_2_3_layer_labels_are_checked_against_the_archive() {
    use crate::catalog::{Compression, LayerRef};
    use crate::labels::{SNAPSHOT_DIFF_ID, SNAPSHOT_PARENT_CHAIN_ID};
    let (diff_id, parent) = (Digest::of(b"layer"), Digest::of(b"parent"));
    let layer = LayerRef {
        chain_id: Digest::of(format!("{parent} {diff_id}").as_bytes()),
        parent: Some(parent),
        digest: Digest::of(b"blob"),
        diff_id,
        size: 4,
        compression: Compression::Gzip,
    };
    let labels = |pairs: &[(&str, String)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    // Before 2.3 there are none; when they agree, nothing to say.
    assert_eq!(disagreement(&labels(&[]), &layer), None);
    let agreeing = labels(&[
        (SNAPSHOT_DIFF_ID, diff_id.to_string()),
        (SNAPSHOT_PARENT_CHAIN_ID, parent.to_string()),
    ]);
    assert_eq!(disagreement(&agreeing, &layer), None);
    let other = Digest::of(b"other").to_string();
    assert!(disagreement(&labels(&[(SNAPSHOT_DIFF_ID, other.clone())]), &layer).is_some());
    assert!(disagreement(&labels(&[(SNAPSHOT_PARENT_CHAIN_ID, other)]), &layer).is_some());
    // The bottom layer has no parent: an empty or absent label agrees.
    let bottom = LayerRef {
        parent: None,
        ..layer.clone()
    };
    assert_eq!(
        disagreement(
            &labels(&[(SNAPSHOT_PARENT_CHAIN_ID, String::new())]),
            &bottom
        ),
        None
    );
    assert!(disagreement(&agreeing, &bottom).is_some());
}

/// After containerd's GC removed an image's snapshots, pulling it again
/// prefetches its other layers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_after_gc_prefetches_again() {
    requires_root!();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&image(2), &[]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;
    let pull = |server: &mut TestServer, round: usize| {
        let client = server.client.clone();
        let layers = layers.clone();
        let fake = fake.clone();
        async move {
            let mut client = client;
            let err = client
                .prepare(prepare(
                    &format!("k8s.io/{round}/extract-0"),
                    "",
                    target_labels(&layers[0].chain_id),
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
            // The upper layer is prefetched before its own Prepare.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while fake.opened(&layers[1].digest) < round {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the upper layer was not prefetched"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let err = client
                .prepare(prepare(
                    &format!("k8s.io/{round}/extract-1"),
                    &layers[0].chain_id.to_string(),
                    target_labels(&layers[1].chain_id),
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        }
    };
    pull(&mut server, 1).await;
    // containerd's GC removes the image's snapshots, top first.
    for layer in layers.iter().rev() {
        server
            .client
            .remove(api::RemoveSnapshotRequest {
                snapshotter: "airgap".into(),
                key: layer.chain_id.to_string(),
            })
            .await
            .unwrap();
    }
    pull(&mut server, 2).await;
    assert_eq!(fake.opened(&layers[1].digest), 2, "extracted once per pull");
    assert!(staging_is_empty(&server));
    server.stop().await;
}

/// Registers `layers` the way the importer does; returns the top's name.
async fn import(server: &TestServer, layers: &[LayerRef]) -> String {
    let labels = HashMap::from([(AIRGAP_IMPORT.to_string(), "lazy".to_string())]);
    server.commit_layers(layers, &labels).await
}

fn view(key: &str, parent: &str) -> api::ViewSnapshotRequest {
    api::ViewSnapshotRequest {
        snapshotter: "airgap".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    }
}

/// Imported layers are committed without reading the archive, and filled
/// on first use: ten containers of two images sharing a base layer, at
/// once, extract each layer exactly once and all see their files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_layers_are_filled_once_on_first_use() {
    requires_root!();
    filled_once_on_first_use(crate::config::LayerMode::Extract).await;
}

/// [`imported_layers_are_filled_once_on_first_use`] with the layers
/// mounted (EROFS) when filled: the staged directory, mount and all, takes
/// the pending one's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_layers_are_mounted_once_on_first_use() {
    requires_root!();
    filled_once_on_first_use(crate::config::LayerMode::Erofs).await;
}

async fn filled_once_on_first_use(mode: crate::config::LayerMode) {
    let mut fake = FakeSource::default();
    let a = fake.add_image(&image(3), &[]);
    let mut b_tars = image(2);
    b_tars.push(layer_tar(&[
        Entry::Dir("etc"),
        Entry::File("etc/top", b"image b\n"),
    ]));
    let b = fake.add_image(&b_tars, &[]);
    assert_eq!(a[1].chain_id, b[1].chain_id, "the images share two layers");
    let fake = Arc::new(fake);
    let mut server = TestServer::start_with(Some(fake.clone()), mode).await;
    let _unmount = crate::testsupport::snapshot::Unmount(server.root());

    let top_a = import(&server, &a).await;
    let top_b = import(&server, &b).await;
    assert_eq!(fake.total_opens(), 0, "registration read no layer");
    let usage = server
        .client
        .usage(api::UsageRequest {
            snapshotter: "airgap".into(),
            key: top_a.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.size, 0, "nothing extracted yet");

    let mut views = Vec::new();
    for i in 0..10 {
        let mut client = server.client.clone();
        let parent = if i % 2 == 0 { &top_a } else { &top_b }.clone();
        views.push(tokio::spawn(async move {
            client.view(view(&format!("view-{i}"), &parent)).await
        }));
    }
    for (i, v) in views.into_iter().enumerate() {
        let mounts = v.await.unwrap().unwrap().into_inner().mounts;
        let lower = mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap()
            .to_string();
        let top =
            std::fs::read_to_string(Path::new(lower.split(':').next().unwrap()).join("etc/top"))
                .unwrap();
        let want = if i % 2 == 0 {
            "content of layer 2\n"
        } else {
            "image b\n"
        };
        assert_eq!(top, want, "view {i}");
    }
    for layer in a.iter().chain(&b[2..]) {
        assert_eq!(
            fake.opened(&layer.digest),
            1,
            "layer {} extracted once",
            layer.digest
        );
    }
    assert!(staging_is_empty(&server));
    server.stop().await;
}

/// A layer that cannot be filled fails the request that needs it with
/// the layer's digest, and stays pending (the next use tries again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_layer_that_cannot_be_filled_fails_naming_it() {
    requires_root!();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&image(2), &[]);
    fake.corrupt(&layers[1].digest, b"not the layer".to_vec());
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;
    let top = import(&server, &layers).await;

    let err = server.client.view(view("v1", &top)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&layers[1].digest.to_string()),
        "{}",
        err.message()
    );
    let err = server.client.view(view("v2", &top)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "still pending, tried again"
    );
    assert_eq!(fake.opened(&layers[1].digest), 2);
    server.stop().await;
}

/// An archive deleted while its image is pulled: the layers prefetched from
/// it are never claimed (their Prepares take the ordinary path), and the
/// Cleanup after containerd's GC removes them from staging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_layers_of_a_deleted_archive_are_cleaned_up() {
    requires_root!();
    let mut fake = FakeSource::default();
    let layers = fake.add_image(&image(3), &[]);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;
    let err = server
        .client
        .prepare(prepare(
            "k8s.io/1/extract-0",
            "",
            target_labels(&layers[0].chain_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // The layers above are prefetched into staging.
    let staging = server.root().join("staging");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dir_names(&staging).len() < 2 || fake.total_opens() < 3 {
        assert!(std::time::Instant::now() < deadline, "nothing prefetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The archive goes; the next layer's Prepare is an ordinary one.
    fake.withdraw(&layers);
    let parent = layers[0].chain_id.to_string();
    server
        .client
        .prepare(prepare(
            "k8s.io/1/extract-1",
            &parent,
            target_labels(&layers[1].chain_id),
        ))
        .await
        .expect("the ordinary path");
    // containerd gives up on the image; its GC removes and cleans up.
    for key in ["k8s.io/1/extract-1", parent.as_str()] {
        server
            .client
            .remove(api::RemoveSnapshotRequest {
                snapshotter: "airgap".into(),
                key: key.into(),
            })
            .await
            .unwrap();
    }
    // Cleanup drops finished extractions only: one still running when the
    // archive went (a loaded machine) is dropped by the next Cleanup, as
    // containerd calls it after every GC.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        server
            .client
            .cleanup(api::CleanupRequest {
                snapshotter: "airgap".into(),
            })
            .await
            .unwrap();
        let left = dir_names(&staging);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "staged layers of a deleted archive outlived Cleanup: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dir_names(&server.root().join("snapshots")).is_empty());
    server.stop().await;
}

/// containerd 2.3+ names the layer's diffID and its parent's chain ID on
/// Prepare: a layer archived in one image serves the same layer of an image
/// on another base (a rebased image, whose chain IDs are in no archive).
/// Without those labels (1.6 to 2.2), or with labels that do not add up to
/// the target, the layer takes the ordinary path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_3_diff_id_takes_an_archived_layer_on_another_parent() {
    use crate::labels::{SNAPSHOT_DIFF_ID, SNAPSHOT_PARENT_CHAIN_ID};
    requires_root!();
    let app = layer_tar(&[
        Entry::Dir("app"),
        Entry::File("app/run", b"the application\n"),
    ]);
    let base = |name: &str| layer_tar(&[Entry::Dir("etc"), Entry::File("etc/os", name.as_bytes())]);
    let mut fake = FakeSource::default();
    let archived = fake.add_image(&[base("old base\n"), app.clone()], &[]);
    // The rebased image: nothing of it archived but the diffID of its top.
    let rebased = fake.add_image(&[base("new base\n"), app], &[0, 1]);
    assert_eq!(archived[1].diff_id, rebased[1].diff_id);
    let fake = Arc::new(fake);
    let mut server = TestServer::start(Some(fake.clone())).await;

    // Its base is not archived: containerd writes it (ordinary path).
    let mut labels = target_labels(&rebased[0].chain_id);
    labels.insert(SNAPSHOT_DIFF_ID.into(), rebased[0].diff_id.to_string());
    let mounts = server
        .client
        .prepare(prepare("k8s.io/1/extract-base", "", labels))
        .await
        .expect("ordinary path for a layer no archive holds")
        .into_inner()
        .mounts;
    let fs_dir = mounts[0].source.clone();
    std::fs::create_dir(Path::new(&fs_dir).join("etc")).unwrap();
    std::fs::write(Path::new(&fs_dir).join("etc/os"), "new base\n").unwrap();
    let base_name = rebased[0].chain_id.to_string();
    server
        .client
        .commit(api::CommitSnapshotRequest {
            snapshotter: "airgap".into(),
            name: base_name.clone(),
            key: "k8s.io/1/extract-base".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap();

    let top = rebased[1].chain_id;
    let with = |diff_id: &Digest, parent: &Digest| {
        let mut l = target_labels(&top);
        l.insert(SNAPSHOT_DIFF_ID.into(), diff_id.to_string());
        l.insert(SNAPSHOT_PARENT_CHAIN_ID.into(), parent.to_string());
        l
    };
    // 1.6 to 2.2: the target alone, not archived: ordinary path.
    let ordinary = |key: &str, labels| prepare(key, &base_name, labels);
    server
        .client
        .prepare(ordinary("k8s.io/2/old", target_labels(&top)))
        .await
        .expect("without diff-id: ordinary path");
    // Labels that do not add up to the target: ordinary path.
    for (i, labels) in [
        with(&rebased[1].diff_id, &archived[0].chain_id),
        with(&Digest::of(b"another layer"), &rebased[0].chain_id),
    ]
    .into_iter()
    .enumerate()
    {
        server
            .client
            .prepare(ordinary(&format!("k8s.io/3/wrong-{i}"), labels))
            .await
            .expect("labels not adding up: ordinary path");
    }
    // An archive holds no layer of that diffID: ordinary path.
    assert!(fake.layer_with_diff_id(&rebased[0].diff_id).is_none());

    // 2.3+: the top layer comes from the other image's archive.
    let opened = fake.opened(&archived[1].digest);
    let err = server
        .client
        .prepare(ordinary(
            "k8s.io/4/extract-top",
            with(&rebased[1].diff_id, &rebased[0].chain_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(fake.opened(&archived[1].digest), opened + 1);
    let found = lookup(&mut server, &top, &base_name).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].parent, base_name);

    // A container on it sees the app on the new base.
    let view = server
        .client
        .view(api::ViewSnapshotRequest {
            snapshotter: "airgap".into(),
            key: "view".into(),
            parent: found[0].name.clone(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let lower = view.mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap()
        .to_string();
    let dirs: Vec<&str> = lower.split(':').collect();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        std::fs::read_to_string(Path::new(dirs[0]).join("app/run")).unwrap(),
        "the application\n"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(dirs[1]).join("etc/os")).unwrap(),
        "new base\n"
    );
    assert!(staging_is_empty(&server));
    server.stop().await;
}
