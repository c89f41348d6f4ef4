//! One streaming pass over an archive builds its [`ArchiveIndex`]: which image
//! names it holds, where every blob's bytes are in the decompressed stream,
//! and every layer's diffID and chainID.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::container::{self, sniff_compression, Container, ContainerError};
use super::reference::Reference;
use super::seekable::SeekTable;
use super::Compression;
use crate::digest::{Digest, Hasher};
use crate::labels;

/// Bumped whenever the persisted form changes; older files are re-indexed.
pub const INDEX_FORMAT: u32 = 1;
/// Largest JSON document (manifest, index, config) read from an archive.
pub const MAX_JSON: u64 = 8 << 20;
/// Most tar entries accepted in one archive.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Deepest index nesting followed.
pub const MAX_DEPTH: usize = 8;
/// Most bytes of JSON kept from one archive.
const MAX_JSON_TOTAL: u64 = 256 << 20;

/// What identifies one version of an archive file: a replaced or modified
/// file gets a new key, and so a new index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
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
    pub layout: Layout,
    pub seek_table: Option<SeekTable>,
    pub images: Vec<ImageEntry>,
    pub manifests: Vec<ManifestEntry>,
    pub layers: Vec<LayerEntry>,
    /// Every blob the archive carries, by digest.
    pub blobs: BTreeMap<Digest, BlobLocation>,
    /// The JSON documents (indexes, manifests, configs) the images use, kept
    /// in memory; synthesized docker-save manifests exist only here.
    pub documents: BTreeMap<Digest, String>,
    /// What is wrong with some images of an otherwise readable archive.
    pub problems: Vec<String>,
    /// Length of the decompressed stream walked.
    pub stream_len: u64,
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
}

/// A regular file seen in the tar stream.
#[derive(Clone, Debug)]
struct Entry {
    loc: BlobLocation,
    /// First bytes, to tell a blob's own compression.
    head: Vec<u8>,
    /// Hash of the contents, for files not named by digest.
    digest: Option<Digest>,
}

/// Everything the pass collected, before the layout is understood.
#[derive(Default)]
struct Pass {
    /// Non-blob files by normalized path.
    files: HashMap<String, Entry>,
    /// `blobs/sha256/<hex>` entries.
    blobs: HashMap<Digest, Entry>,
    /// Small JSON files and blobs, by path and by digest.
    json_files: HashMap<String, Vec<u8>>,
    json_blobs: HashMap<Digest, Vec<u8>>,
    json_total: u64,
    stream_len: u64,
}

/// Indexes the archive at `path`, open as `file`.
pub fn index_archive(path: &Path, file: &File, key: FileKey) -> Result<ArchiveIndex, IndexError> {
    let (container, seek_table) = container::sniff(file, key.size)?;
    let stream = container::decoder(file.try_clone().map_err(IndexError::Tar)?, container)
        .map_err(IndexError::Tar)?;
    let pass = walk(stream)?;
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
    };
    if let Some(table) = &out.seek_table {
        if table.decompressed_len() < pass.stream_len {
            return Err(ContainerError::SeekTable(format!(
                "table covers {} bytes but the stream has {}",
                table.decompressed_len(),
                pass.stream_len
            ))
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
    out.images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Counts the bytes of the decompressed stream.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') || bytes.first() == Some(&b'[')
}

/// Normalizes a tar entry path: no leading `./` or `/`.
fn entry_name(raw: &Path) -> String {
    let s = raw.to_string_lossy();
    let mut s: &str = &s;
    loop {
        if let Some(r) = s.strip_prefix("./") {
            s = r;
        } else if let Some(r) = s.strip_prefix('/') {
            s = r;
        } else {
            break;
        }
    }
    s.to_string()
}

fn walk(stream: Box<dyn Read + Send>) -> Result<Pass, IndexError> {
    let mut counting = Counting {
        inner: stream,
        n: 0,
    };
    let mut pass = Pass::default();
    {
        let mut archive = tar::Archive::new(&mut counting);
        let mut count = 0usize;
        for entry in archive.entries().map_err(IndexError::Tar)? {
            let mut entry = entry.map_err(IndexError::Tar)?;
            count += 1;
            if count > MAX_ENTRIES {
                return Err(IndexError::TooManyEntries);
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry_name(&entry.path().map_err(IndexError::Tar)?);
            let loc = BlobLocation {
                offset: entry.raw_file_position(),
                size: entry.size(),
            };
            let named = name
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
            if loc.size <= MAX_JSON {
                let mut bytes = Vec::with_capacity(loc.size as usize);
                entry.read_to_end(&mut bytes).map_err(IndexError::Tar)?;
                let digest = Digest::of(&bytes);
                if let Some(named) = named {
                    if named != digest {
                        return Err(IndexError::DigestMismatch {
                            digest: named,
                            actual: digest,
                        });
                    }
                }
                let e = Entry {
                    loc,
                    head: bytes[..bytes.len().min(16)].to_vec(),
                    digest: Some(digest),
                };
                if looks_like_json(&bytes) {
                    pass.json_total += bytes.len() as u64;
                    if pass.json_total > MAX_JSON_TOTAL {
                        return Err(IndexError::TooMuchJson);
                    }
                    match named {
                        Some(d) => pass.json_blobs.insert(d, bytes),
                        None => pass.json_files.insert(name.clone(), bytes),
                    };
                }
                match named {
                    Some(d) => pass.blobs.insert(d, e),
                    None => pass.files.insert(name, e),
                };
            } else {
                let mut head = [0u8; 16];
                let n = read_up_to(&mut entry, &mut head).map_err(IndexError::Tar)?;
                let head = head[..n].to_vec();
                match named {
                    // Named by digest: verified when read, not here, so that
                    // indexing runs at decompression speed.
                    Some(d) => {
                        pass.blobs.insert(
                            d,
                            Entry {
                                loc,
                                head,
                                digest: Some(d),
                            },
                        );
                    }
                    // A docker-save layer: its digest is only known by hashing.
                    None => {
                        let mut hasher = Hasher::new();
                        hasher.update(&head);
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            let n = entry.read(&mut buf).map_err(IndexError::Tar)?;
                            if n == 0 {
                                break;
                            }
                            hasher.update(&buf[..n]);
                        }
                        pass.files.insert(
                            name,
                            Entry {
                                loc,
                                head,
                                digest: Some(hasher.finish()),
                            },
                        );
                    }
                }
            }
        }
    }
    // Read to the end so a truncated stream is caught, and its length known.
    io::copy(&mut counting, &mut io::sink()).map_err(IndexError::Tar)?;
    pass.stream_len = counting.n;
    Ok(pass)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

// --- the JSON documents, read leniently: only the fields used, tolerant of
// Docker's and OCI's variants (oci-spec's types reject some real archives,
// e.g. a Docker manifest list without per-entry platforms). ---

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default, Clone)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn render(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{}", self.os, self.architecture, v),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// The OCI manifest written for a docker-save image. Field order is fixed, so
/// the same archive always gives the same digest.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: SynthDescriptor,
    layers: Vec<SynthDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthDescriptor {
    media_type: String,
    digest: Digest,
    size: u64,
}

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn parse_json<'a, T: Deserialize<'a>>(file: &str, bytes: &'a [u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::BadDocument {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// The compression of a layer: its bytes when the archive has them (media
/// types lie, e.g. a gzip layer labelled `tar`), else its media type.
fn layer_compression(media_type: &str, head: Option<&[u8]>) -> Compression {
    match head.and_then(sniff_compression) {
        Some(Container::Gzip) => return Compression::Gzip,
        Some(Container::Zstd) => return Compression::Zstd,
        _ if head.is_some() => return Compression::None,
        _ => {}
    }
    if media_type.contains("gzip") {
        Compression::Gzip
    } else if media_type.contains("zstd") {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A per-image failure: recorded as a problem, the rest of the archive stays.
type ImageResult<T> = Result<T, String>;

struct Summary {
    platforms: Vec<String>,
    /// Platform manifests, in the order found.
    manifests: Vec<Digest>,
    blobs: BTreeMap<Digest, u64>,
}

struct Resolver<'a> {
    pass: &'a Pass,
    out: &'a mut ArchiveIndex,
    layer_seen: BTreeSet<Digest>,
    /// docker-save layers, which are files named by path, by digest.
    saved_layers: HashMap<Digest, Entry>,
}

impl Resolver<'_> {
    fn oci(&mut self) -> Result<(), IndexError> {
        let index: Document = parse_json("index.json", &self.pass.json_files["index.json"])?;
        let tops = index.manifests.unwrap_or_default();
        for (i, desc) in tops.iter().enumerate() {
            let names = image_names(desc);
            let label = names
                .first()
                .cloned()
                .unwrap_or_else(|| format!("index.json manifests[{i}]"));
            let digest = match desc.digest.parse::<Digest>() {
                Ok(d) => d,
                Err(e) => {
                    self.out.problems.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let mut stack = Vec::new();
            match self.visit(desc, digest, None, &mut stack) {
                Ok(summary) => {
                    if names.is_empty() {
                        tracing::debug!(%digest, "index.json entry without an image name: layers indexed, no name listed");
                    }
                    for name in names {
                        self.push_image(
                            name,
                            digest,
                            media_type_of(desc, self.pass.json_blobs.get(&digest)),
                            &summary,
                            false,
                        );
                    }
                }
                Err(e) => self.out.problems.push(format!("{label}: {e}")),
            }
        }
        Ok(())
    }

    fn push_image(
        &mut self,
        name: String,
        digest: Digest,
        media_type: String,
        s: &Summary,
        synthesized: bool,
    ) {
        if self.out.images.iter().any(|i| i.name == name) {
            self.out.problems.push(format!(
                "{name}: named twice in this archive, the first one is used"
            ));
            return;
        }
        self.out.images.push(ImageEntry {
            name,
            digest,
            media_type,
            size: s.blobs.values().sum(),
            platforms: s.platforms.clone(),
            manifests: s.manifests.clone(),
            synthesized,
        });
    }

    /// Follows a manifest or index; `platform` is what the parent index said.
    fn visit(
        &mut self,
        desc: &Descriptor,
        digest: Digest,
        platform: Option<&Platform>,
        stack: &mut Vec<Digest>,
    ) -> ImageResult<Summary> {
        if stack.len() >= MAX_DEPTH {
            return Err(format!(
                "indexes nested deeper than {MAX_DEPTH} at {digest}"
            ));
        }
        if stack.contains(&digest) {
            return Err(format!("index cycle: {digest} refers back to itself"));
        }
        let bytes = self
            .pass
            .json_blobs
            .get(&digest)
            .ok_or_else(|| format!("manifest {digest} is not in the archive"))?;
        if desc.size != 0 && desc.size != bytes.len() as u64 {
            return Err(format!(
                "{digest}: descriptor says {} bytes, blob has {}",
                desc.size,
                bytes.len()
            ));
        }
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("{digest}: {e}"))?;
        self.out
            .documents
            .insert(digest, String::from_utf8_lossy(bytes).into_owned());
        let mut summary = Summary {
            platforms: Vec::new(),
            manifests: Vec::new(),
            blobs: BTreeMap::from([(digest, bytes.len() as u64)]),
        };
        if let Some(children) = doc.manifests {
            stack.push(digest);
            let mut present = 0;
            for child in &children {
                let Ok(child_digest) = child.digest.parse::<Digest>() else {
                    stack.pop();
                    return Err(format!("{digest}: bad digest {:?}", child.digest));
                };
                let p = child.platform.as_ref();
                if p.is_some_and(|p| p.os == "unknown") {
                    continue; // buildx attestation manifests
                }
                if !self.pass.json_blobs.contains_key(&child_digest) {
                    // `ctr export` keeps the whole index but only the local
                    // platform's manifests: not an error.
                    tracing::debug!(index = %digest, manifest = %child_digest, "platform manifest not in the archive");
                    continue;
                }
                let s = match self.visit(child, child_digest, p, stack) {
                    Ok(s) => s,
                    Err(e) => {
                        stack.pop();
                        return Err(e);
                    }
                };
                present += 1;
                summary.platforms.extend(s.platforms);
                summary.manifests.extend(s.manifests);
                summary.blobs.extend(s.blobs);
            }
            stack.pop();
            if present == 0 {
                return Err(format!(
                    "none of the {} manifests of index {digest} is in the archive",
                    children.len()
                ));
            }
            summary.platforms.sort();
            summary.platforms.dedup();
            return Ok(summary);
        }
        let (config, layers) = match (doc.config, doc.layers) {
            (Some(c), Some(l)) => (c, l),
            _ => {
                return Err(format!(
                    "{digest} ({}) is neither an image index nor a manifest",
                    doc.media_type
                ))
            }
        };
        let config_digest: Digest = config
            .digest
            .parse()
            .map_err(|e| format!("{digest}: config: {e}"))?;
        let config_bytes = self.pass.json_blobs.get(&config_digest).ok_or_else(|| {
            format!("config {config_digest} of manifest {digest} is not in the archive")
        })?;
        self.out.documents.insert(
            config_digest,
            String::from_utf8_lossy(config_bytes).into_owned(),
        );
        summary
            .blobs
            .insert(config_digest, config_bytes.len() as u64);
        let descs: Vec<(Digest, String, u64)> = layers
            .iter()
            .map(|l| {
                Ok((
                    l.digest
                        .parse::<Digest>()
                        .map_err(|e| format!("{digest}: layer: {e}"))?,
                    l.media_type.clone(),
                    l.size,
                ))
            })
            .collect::<ImageResult<_>>()?;
        let s = self.add_manifest(digest, config_digest, config_bytes, &descs, platform)?;
        summary.platforms = s.platforms;
        summary.manifests = s.manifests;
        summary.blobs.extend(s.blobs);
        Ok(summary)
    }

    /// Records a platform manifest and its layers.
    fn add_manifest(
        &mut self,
        digest: Digest,
        config_digest: Digest,
        config_bytes: &[u8],
        layers: &[(Digest, String, u64)],
        platform: Option<&Platform>,
    ) -> ImageResult<Summary> {
        let config: ImageConfig = serde_json::from_slice(config_bytes)
            .map_err(|e| format!("config {config_digest}: {e}"))?;
        let diff_ids: Vec<Digest> = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                d.parse()
                    .map_err(|e| format!("config {config_digest}: diff_ids: {e}"))
            })
            .collect::<ImageResult<_>>()?;
        if diff_ids.len() != layers.len() {
            return Err(format!(
                "manifest {digest} has {} layers but its config {config_digest} lists {} diff_ids",
                layers.len(),
                diff_ids.len()
            ));
        }
        let platform = match platform {
            Some(p) if !p.os.is_empty() => p.render(),
            _ => Platform {
                os: config.os,
                architecture: config.architecture,
                variant: config.variant,
            }
            .render(),
        };
        let chain = Digest::chain_ids(&diff_ids);
        let mut blobs = BTreeMap::new();
        for (i, (layer_digest, media_type, size)) in layers.iter().enumerate() {
            let stored = self
                .pass
                .blobs
                .get(layer_digest)
                .or_else(|| self.saved_layers.get(layer_digest));
            blobs.insert(*layer_digest, stored.map_or(*size, |e| e.loc.size));
            if self.layer_seen.insert(chain[i]) {
                self.out.layers.push(LayerEntry {
                    chain_id: chain[i],
                    parent: i.checked_sub(1).map(|p| chain[p]),
                    digest: *layer_digest,
                    diff_id: diff_ids[i],
                    size: stored.map_or(*size, |e| e.loc.size),
                    media_type: media_type.clone(),
                    compression: layer_compression(media_type, stored.map(|e| e.head.as_slice())),
                    present: stored.is_some(),
                });
                if stored.is_none() {
                    self.out.problems.push(format!(
                        "layer {layer_digest} of manifest {digest} is not in the archive"
                    ));
                }
            }
        }
        self.out.manifests.push(ManifestEntry {
            digest,
            platform: platform.clone(),
            config: config_digest,
            chain,
        });
        Ok(Summary {
            platforms: vec![platform],
            manifests: vec![digest],
            blobs,
        })
    }

    fn docker_save(&mut self) -> Result<(), IndexError> {
        let list: Vec<DockerManifest> =
            parse_json("manifest.json", &self.pass.json_files["manifest.json"])?;
        for (i, m) in list.iter().enumerate() {
            let label = m
                .repo_tags
                .as_ref()
                .and_then(|t| t.first().cloned())
                .unwrap_or_else(|| format!("manifest.json[{i}]"));
            if let Err(e) = self.docker_image(m) {
                self.out.problems.push(format!("{label}: {e}"));
            }
        }
        Ok(())
    }

    /// A docker-save entry: finds a file by its manifest.json path, which
    /// may also be a `blobs/sha256/<hex>` path (Docker 25+).
    fn docker_file(&self, path: &str) -> Option<(&Entry, Option<&Vec<u8>>)> {
        let name = entry_name(Path::new(path));
        if let Some(e) = self.pass.files.get(&name) {
            return Some((e, self.pass.json_files.get(&name)));
        }
        let digest: Digest = format!("sha256:{}", name.strip_prefix("blobs/sha256/")?)
            .parse()
            .ok()?;
        let e = self.pass.blobs.get(&digest)?;
        Some((e, self.pass.json_blobs.get(&digest)))
    }

    fn docker_image(&mut self, m: &DockerManifest) -> ImageResult<()> {
        let (config_entry, config_bytes) = self
            .docker_file(&m.config)
            .ok_or_else(|| format!("config {} is not in the archive", m.config))?;
        let config_bytes = config_bytes
            .ok_or_else(|| format!("config {} is not JSON", m.config))?
            .clone();
        let config_loc = config_entry.loc;
        let config_digest = Digest::of(&config_bytes);
        let mut layers = Vec::new();
        for path in &m.layers {
            let (e, _) = self
                .docker_file(path)
                .ok_or_else(|| format!("layer {path} is not in the archive"))?;
            let e = e.clone();
            let digest = e.digest.expect("every docker-save file is hashed");
            let media_type = match sniff_compression(&e.head) {
                Some(Container::Gzip) => format!("{MEDIA_OCI_LAYER}+gzip"),
                Some(Container::Zstd) => format!("{MEDIA_OCI_LAYER}+zstd"),
                _ => MEDIA_OCI_LAYER.to_string(),
            };
            self.out.blobs.insert(digest, e.loc);
            layers.push((digest, media_type, e.loc.size));
            self.saved_layers.insert(digest, e);
        }
        let manifest = SynthManifest {
            schema_version: 2,
            media_type: MEDIA_OCI_MANIFEST,
            config: SynthDescriptor {
                media_type: MEDIA_OCI_CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
            },
            layers: layers
                .iter()
                .map(|(d, t, s)| SynthDescriptor {
                    media_type: t.clone(),
                    digest: *d,
                    size: *s,
                })
                .collect(),
        };
        let manifest_json = serde_json::to_string(&manifest).expect("plain structs serialize");
        let manifest_digest = Digest::of(manifest_json.as_bytes());
        self.out.blobs.insert(config_digest, config_loc);
        self.out.documents.insert(
            config_digest,
            String::from_utf8_lossy(&config_bytes).into_owned(),
        );
        let mut summary =
            self.add_manifest(manifest_digest, config_digest, &config_bytes, &layers, None)?;
        summary
            .blobs
            .insert(manifest_digest, manifest_json.len() as u64);
        summary
            .blobs
            .insert(config_digest, config_bytes.len() as u64);
        self.out.documents.insert(manifest_digest, manifest_json);
        for tag in m.repo_tags.iter().flatten() {
            match Reference::parse(tag) {
                Ok(r) => self.push_image(
                    r.to_string(),
                    manifest_digest,
                    MEDIA_OCI_MANIFEST.into(),
                    &summary,
                    true,
                ),
                Err(e) => self.out.problems.push(e.to_string()),
            }
        }
        Ok(())
    }
}

/// The media type of a top-level descriptor, from the document when the
/// descriptor is silent.
fn media_type_of(desc: &Descriptor, doc: Option<&Vec<u8>>) -> String {
    if !desc.media_type.is_empty() {
        return desc.media_type.clone();
    }
    doc.and_then(|b| serde_json::from_slice::<Document>(b).ok())
        .map(|d| {
            if !d.media_type.is_empty() {
                d.media_type
            } else if d.manifests.is_some() {
                MEDIA_OCI_INDEX.to_string()
            } else {
                MEDIA_OCI_MANIFEST.to_string()
            }
        })
        .unwrap_or_default()
}

/// The normalized names an `index.json` entry carries: containerd's full
/// name annotation first, then the OCI ref name when it is a full reference
/// (a bare tag such as `1.36` names nothing on its own).
fn image_names(desc: &Descriptor) -> Vec<String> {
    let mut names = Vec::new();
    for key in [labels::CONTAINERD_IMAGE_NAME, labels::OCI_REF_NAME] {
        let Some(value) = desc.annotations.get(key) else {
            continue;
        };
        if key == labels::OCI_REF_NAME && !value.contains('/') && !value.contains(':') {
            continue;
        }
        match Reference::parse(value) {
            Ok(r) if r.tag.is_some() || r.digest.is_none() => {
                let name = r.to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring an unusable image name"),
        }
    }
    names
}
