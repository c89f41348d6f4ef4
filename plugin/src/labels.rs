//! Every label and annotation key the daemon reads or writes, in one place.

/// Set by containerd on Prepare for a layer it is about to unpack: the chain ID
/// of the committed snapshot it wants (the "target").
pub const TARGET_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Prefix of the labels containerd passes through to a proxy snapshotter.
pub const SNAPSHOT_LABEL_PREFIX: &str = "containerd.io/snapshot/";
/// CRI hints (only with `disable_snapshot_annotations = false`).
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// containerd 2.3+ on Prepare: the diffID of the layer being unpacked, and
/// the chain ID of the layer below it (absent for the bottom layer).
pub const SNAPSHOT_DIFF_ID: &str = "containerd.io/snapshot/diff-id";
pub const SNAPSHOT_PARENT_CHAIN_ID: &str = "containerd.io/snapshot/parent-chain-id";
/// Marks a snapshot this daemon filled from an archive (value: layer digest).
pub const REMOTE_LAYER: &str = "containerd.io/snapshot/airgap.layer-digest";

/// containerd's image name annotation in OCI layouts written by `ctr export`.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI image layout ref name annotation (a tag, or a full reference).
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// On Prepare, from the importer: register the layer without extracting it
/// (`lazy`: materialized on first use; `eager`: extracted in the background
/// at once). Kept on the committed snapshot while its data is not there yet.
pub const AIRGAP_IMPORT: &str = "containerd.io/snapshot/airgap.import";

/// On the index.json `pack` writes: the archive's bundle ID (the digest of
/// its sorted blob digests, `catalog::bundle`), the name it was packed as,
/// and, for a delta, the bundles it extends (a JSON array of `{id, name}`).
pub const BUNDLE_ID: &str = "io.airgap-snapshotter.bundle.id";
pub const BUNDLE_NAME: &str = "io.airgap-snapshotter.bundle.name";
pub const BUNDLE_BASES: &str = "io.airgap-snapshotter.bundle.bases";

/// On image records the importer creates: the archive they come from.
pub const AIRGAP_ARCHIVE: &str = "io.airgap-snapshotter.archive";
/// On image records the importer creates, and only those: put there by its
/// Create (never added to a record that lacks it); value: the target digest
/// the importer gave the record. The importer changes or deletes a record
/// only while this label is there and names the record's target, so a
/// record pulled or repointed by anyone else is never touched
/// (`import::records`).
pub const AIRGAP_CREATED: &str = "io.airgap-snapshotter.created";
/// CRI's marks on the image records it creates, and on pinned ones
/// (kubelet's image garbage collection leaves pinned images alone).
pub const CRI_IMAGE: &str = "io.cri-containerd.image";
pub const CRI_PINNED: &str = "io.cri-containerd.pinned";

/// containerd's garbage-collection references, as its pull and unpack write
/// them on content: an index to its manifests (`.m.<i>`), a manifest to its
/// config and layers (`.config`, `.l.<i>`), a config to the unpacked
/// snapshot of its top layer (`.snapshot.<snapshotter>`).
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
