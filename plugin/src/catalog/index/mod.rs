//! One streaming pass over an archive builds its [`ArchiveIndex`]: which image
//! names it holds, where every blob's bytes are in the decompressed stream,
//! and every layer's diffID and chainID.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use self::resolve::Resolver;
use super::container::{self, Container, ContainerError};
use super::seekable::{SeekTable, SeekTableError};
use super::Compression;
use crate::digest::{Digest, DigestError};

mod docker_save;
mod model;
mod oci;
mod resolve;
mod walk;

/// Bumped whenever the persisted form changes; older files are re-indexed.
/// 2: documents are kept byte for byte (format 1 could hold a non-UTF-8
/// document changed by a lossy conversion). 3: the key has the ctime.
/// 4: the bundle (its ID, name and bases).
pub(crate) const INDEX_FORMAT: u32 = 4;
/// Largest JSON document (manifest, index, config) read from an archive.
pub(crate) const MAX_JSON: u64 = 8 << 20;
/// Most tar entries accepted in one archive.
pub(crate) const MAX_ENTRIES: usize = 1 << 20;
/// Deepest index nesting followed.
pub(crate) const MAX_DEPTH: usize = 8;
/// Most bytes of JSON kept from one archive.
const MAX_JSON_TOTAL: u64 = 256 << 20;

/// What identifies one version of an archive file: a replaced or modified
/// file gets a new key, and so a new index. The ctime is in it because
/// nobody can set it: a file written in place with its mtime put back
/// (`touch -d`) still changes key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Layout {
    Oci,
    DockerSave,
}

/// Where a blob's bytes are: a range of the archive's decompressed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLocation {
    pub offset: u64,
    pub size: u64,
}

/// One image name and what it points to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Normalized `domain/path:tag`.
    pub name: String,
    /// The manifest or index the name points to.
    pub digest: Digest,
    pub media_type: String,
    /// Bytes of every blob of the image (each once).
    pub size: u64,
    /// `os/arch[/variant]` of every platform manifest present.
    pub platforms: Vec<String>,
    /// Its platform manifests (the image itself when it is one).
    pub manifests: Vec<Digest>,
    /// True for docker-save images, whose manifest this daemon wrote.
    pub synthesized: bool,
}

/// One platform manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub digest: Digest,
    pub platform: String,
    pub config: Digest,
    /// Chain IDs of its layers, bottom first.
    pub chain: Vec<Digest>,
}

/// One layer, keyed by chain ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    /// False when a manifest names the layer but the archive lacks its blob.
    pub present: bool,
}

/// The persisted index of one archive.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchiveIndex {
    pub format: u32,
    pub path: PathBuf,
    pub key: FileKey,
    pub container: Container,
    pub(crate) layout: Layout,
    pub seek_table: Option<SeekTable>,
    pub images: Vec<ImageEntry>,
    pub manifests: Vec<ManifestEntry>,
    pub layers: Vec<LayerEntry>,
    /// Every blob the archive carries, by digest.
    pub blobs: BTreeMap<Digest, BlobLocation>,
    /// The JSON documents (indexes, manifests, configs) the images use, kept
    /// in memory, byte for byte; synthesized docker-save manifests exist
    /// only here. Persisted as JSON strings: each was checked to be UTF-8.
    #[serde(with = "documents_as_text")]
    pub(crate) documents: BTreeMap<Digest, Bytes>,
    /// What is wrong with some images of an otherwise readable archive.
    pub problems: Vec<String>,
    /// Length of the decompressed stream walked.
    pub stream_len: u64,
    /// The archive as a bundle: its ID, and the bases a delta extends.
    pub bundle: super::bundle::Bundle,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("reading the tar stream: {0}")]
    Tar(io::Error),
    #[error("more than {MAX_ENTRIES} tar entries")]
    TooManyEntries,
    #[error("more than {} MiB of JSON documents", MAX_JSON_TOTAL >> 20)]
    TooMuchJson,
    #[error("blob {digest} does not match its digest (read {actual})")]
    DigestMismatch { digest: Digest, actual: Digest },
    #[error("{file}: {reason}")]
    BadDocument { file: String, reason: String },
    #[error("no image layout: neither index.json (OCI) nor manifest.json (docker save) found")]
    NoLayout,
    #[error("indexing stopped: shutting down")]
    Stopped,
}

/// A stream that fails once `stop` is set.
struct Stoppable {
    inner: Box<dyn io::Read + Send>,
    stop: std::sync::Arc<AtomicBool>,
}

impl io::Read for Stoppable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("indexing stopped: shutting down"));
        }
        self.inner.read(buf)
    }
}

/// [`ArchiveIndex::documents`] in the persisted JSON: a map of digest to
/// document text, as format 1 had it.
mod documents_as_text {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use serde::ser::{Error as _, SerializeMap};
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Digest;

    pub(super) fn serialize<S: Serializer>(
        docs: &BTreeMap<Digest, Bytes>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(docs.len()))?;
        for (digest, bytes) in docs {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| S::Error::custom(format!("document {digest}: {e}")))?;
            map.serialize_entry(digest, text)?;
        }
        map.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Digest, Bytes>, D::Error> {
        let docs = BTreeMap::<Digest, String>::deserialize(d)?;
        Ok(docs.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
    }
}

/// What makes one image of an archive unusable. Recorded in
/// [`ArchiveIndex::problems`]; the archive's other images stay.
#[derive(Debug, thiserror::Error)]
enum ImageError {
    #[error("indexes nested deeper than {MAX_DEPTH} at {digest}")]
    TooDeep { digest: Digest },
    #[error("index cycle: {digest} refers back to itself")]
    Cycle { digest: Digest },
    #[error("manifest {digest} is not in the archive")]
    ManifestMissing { digest: Digest },
    #[error("{digest}: descriptor says {declared} bytes, blob has {actual}")]
    SizeMismatch {
        digest: Digest,
        declared: u64,
        actual: u64,
    },
    #[error("{digest}: {source}")]
    BadManifest {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("config {digest}: {source}")]
    BadConfig {
        digest: Digest,
        source: serde_json::Error,
    },
    /// A digest field of a document that is not a digest.
    #[error("{document}: {field}: {source}")]
    BadDigest {
        document: Digest,
        field: &'static str,
        source: DigestError,
    },
    #[error("none of the {count} manifests of index {digest} is in the archive")]
    NoManifestPresent { digest: Digest, count: usize },
    #[error("{digest} ({media_type}) is neither an image index nor a manifest")]
    NotAManifest { digest: Digest, media_type: String },
    #[error("config {config} of manifest {manifest} is not in the archive")]
    ConfigMissing { config: Digest, manifest: Digest },
    #[error(
        "manifest {manifest} has {layers} layers but its config {config} lists {diff_ids} diff_ids"
    )]
    LayerCountMismatch {
        manifest: Digest,
        layers: usize,
        config: Digest,
        diff_ids: usize,
    },
    /// A docker-save file named by `manifest.json` that the archive lacks.
    #[error("{what} {path} is not in the archive")]
    FileMissing { what: &'static str, path: String },
    #[error("config {path} is not JSON")]
    ConfigNotJson { path: String },
    #[error("{digest} is not UTF-8, so not JSON: {source}")]
    NotUtf8 {
        digest: Digest,
        source: std::str::Utf8Error,
    },
}

/// A per-image result: an error is recorded as a problem, the rest of the
/// archive stays.
type ImageResult<T> = Result<T, ImageError>;

/// Indexes the archive at `path`, open as `file`.
pub fn index_archive(path: &Path, file: &File, key: FileKey) -> Result<ArchiveIndex, IndexError> {
    index_archive_until(path, file, key, None)
}

/// [`index_archive`], given up with [`IndexError::Stopped`] as soon as
/// `stop` is set (the daemon shutting down mid-way through a large archive).
pub fn index_archive_until(
    path: &Path,
    file: &File,
    key: FileKey,
    stop: Option<std::sync::Arc<AtomicBool>>,
) -> Result<ArchiveIndex, IndexError> {
    let (container, seek_table) = container::sniff(file, key.size)?;
    let mut stream = container::decode_file(
        std::sync::Arc::new(file.try_clone().map_err(IndexError::Tar)?),
        container,
    )
    .map_err(IndexError::Tar)?;
    if let Some(stop) = &stop {
        stream = Box::new(Stoppable {
            inner: stream,
            stop: stop.clone(),
        });
    }
    let pass = walk::walk(stream).map_err(|e| match &stop {
        Some(stop) if stop.load(Ordering::Relaxed) => IndexError::Stopped,
        _ => e,
    })?;
    let mut out = ArchiveIndex {
        format: INDEX_FORMAT,
        path: path.to_path_buf(),
        key,
        container,
        layout: Layout::Oci,
        seek_table,
        images: Vec::new(),
        manifests: Vec::new(),
        layers: Vec::new(),
        blobs: BTreeMap::new(),
        documents: BTreeMap::new(),
        problems: Vec::new(),
        stream_len: pass.stream_len,
        bundle: Default::default(),
    };
    if let Some(table) = &out.seek_table {
        if table.decompressed_len() < pass.stream_len {
            return Err(ContainerError::from(SeekTableError::ShortOfStream {
                covers: table.decompressed_len(),
                stream: pass.stream_len,
            })
            .into());
        }
    }
    let mut b = Resolver {
        pass: &pass,
        out: &mut out,
        layer_seen: BTreeSet::new(),
        saved_layers: HashMap::new(),
    };
    if pass.json_files.contains_key("index.json") {
        b.out.layout = Layout::Oci;
        b.oci()?;
    } else if pass.json_files.contains_key("manifest.json") {
        b.out.layout = Layout::DockerSave;
        b.docker_save()?;
    } else {
        return Err(IndexError::NoLayout);
    }
    for (digest, e) in &pass.blobs {
        out.blobs.entry(*digest).or_insert(e.loc);
    }
    let id = super::bundle::bundle_id(&out.held_blobs());
    out.bundle.id = Some(id);
    if let Some(recorded) = oci::recorded_bundle_id(&pass) {
        if *recorded != id.to_string() {
            out.problems.push(format!(
                "index.json names bundle {recorded} but the archive holds bundle {id}: changed after it was packed"
            ));
        }
    }
    out.images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(crate) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MEDIA_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::labels;

    /// An OCI layout of one image with no layers: `config` and its manifest.
    fn index_of(config: &[u8]) -> (ArchiveIndex, Digest, Digest) {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": Digest::of(config).to_string(), "size": config.len()},
            "layers": [],
        }))
        .unwrap();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MEDIA_OCI_MANIFEST,
                "digest": Digest::of(&manifest).to_string(),
                "size": manifest.len(),
                "annotations": {labels::CONTAINERD_IMAGE_NAME: "docker.io/library/x:1"},
            }],
        }))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in [
            (
                "oci-layout".to_string(),
                &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
            ),
            ("index.json".to_string(), &index[..]),
            (
                format!("blobs/sha256/{}", Digest::of(&manifest).hex()),
                &manifest[..],
            ),
            (format!("blobs/sha256/{}", Digest::of(config).hex()), config),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, path, bytes).unwrap();
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&b.into_inner().unwrap()).unwrap();
        // The handle written through, its offset at the end: indexing reads
        // from the first byte whatever the offset (as the fuzz targets do).
        let file = f.as_file();
        let key = FileKey::of(&file.metadata().unwrap());
        let index = index_archive(f.path(), file, key).unwrap();
        (index, Digest::of(&manifest), Digest::of(config))
    }

    #[test]
    fn documents_are_kept_byte_for_byte_and_persist() {
        let config = "{\"os\":\"linux\",\"architecture\":\"amd64\",\"author\":\"Zoë\",\
                      \"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}";
        let (index, manifest, config_digest) = index_of(config.as_bytes());
        assert_eq!(index.problems, Vec::<String>::new());
        assert_eq!(index.images.len(), 1);
        assert_eq!(&index.documents[&config_digest][..], config.as_bytes());
        assert_eq!(Digest::of(&index.documents[&manifest]), manifest);
        let json = serde_json::to_vec(&index).unwrap();
        let back: ArchiveIndex = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.documents, index.documents);
    }

    #[test]
    fn a_document_that_is_not_utf8_is_a_problem_naming_it() {
        let config = b"{\"os\":\"linux\",\"architecture\":\"amd64\",\"author\":\"Zo\xeb\",\
                       \"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}";
        let (index, _, config_digest) = index_of(config);
        assert!(index.images.is_empty(), "{:?}", index.images);
        assert!(!index.documents.contains_key(&config_digest));
        let problems = index.problems.join("\n");
        assert!(
            problems.contains(&format!("{config_digest} is not UTF-8")),
            "{problems}"
        );
    }
}
