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
