//! Signed bundles: cosign-compatible signatures of the archived images,
//! written by `pack --sign` and checked on the node against the public keys
//! of `[verify]`, with no network.
//!
//! A signature signs an image's top digest (its index, or its manifest):
//! the tag `sha256-<hex>.sig` of the same repository, in any archive, holds
//! it ([`cosign`]), so the mirror serves it to `cosign verify` as a registry
//! would. Under `require = "enforce"` an image without a valid signature
//! from a configured key is not served by the mirror, not registered and
//! not mounted from its archive ([`Trust::admit`], [`Trust::admit_manifest`],
//! [`TrustedLayers`]); under `"warn"` it is, with a warning in the log and
//! in `airgap_signature_refusals_total`. `airgap_images_signature` and
//! `doctor` show every image's state whenever keys are configured.
//!
//! Layers are content: they are admitted when a signed image's manifest
//! names that blob at that chain ID, so an unsigned archive cannot put
//! other bytes under a signed image's layer. Which images hold each layer,
//! and their signature states, are indexed once per change of the catalog
//! ([`layers::LayerIndex`]): a Prepare looks its layer up.

pub mod cosign;
pub mod keys;
mod layers;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use self::cosign::Invalid;
pub use self::keys::{KeyError, PublicKey};
use self::layers::LayerIndex;
pub use self::layers::TrustedLayers;
use crate::catalog::{Catalog, ImageInfo, LayerRef};
pub use crate::config::Require;
use crate::config::VerifyConfig;
use crate::digest::Digest;

/// An image's signature state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A signature of its digest verifies with this key.
    Valid { key: PathBuf },
    /// No signature of its digest in any archive.
    Unsigned,
    /// Signatures are there, none valid: the first one's reason.
    Invalid(Invalid),
}

impl Verdict {
    /// The `state` label: `valid`, `unsigned` or `invalid`.
    pub fn state(&self) -> &'static str {
        match self {
            Verdict::Valid { .. } => "valid",
            Verdict::Unsigned => "unsigned",
            Verdict::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid { key } => write!(f, "signed (key {})", key.display()),
            Verdict::Unsigned => {
                f.write_str("unsigned: no signature of its digest in the archives")
            }
            Verdict::Invalid(why) => write!(f, "{why}"),
        }
    }
}

/// What an image is refused (or, under `warn`, warned) for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// The mirror serving its manifest.
    Serve,
    /// The importer registering it in containerd.
    Register,
    /// The snapshotter taking its layers from the archive.
    Mount,
    /// Preparing its layers ahead of any pull (refused quietly).
    PrepareAhead,
}

impl Use {
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Serve => "serve",
            Use::Register => "register",
            Use::Mount => "mount",
            Use::PrepareAhead => "prepare",
        }
    }
}

/// An image refused for lack of a valid signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("image {image} of archive {}: {reason} ([verify] require = \"enforce\")", archive.display())]
pub struct Refusal {
    pub image: String,
    pub archive: PathBuf,
    pub reason: String,
}

impl Refusal {
    /// The refusal as a registry client sees it: the archive by file name
    /// only (the mirror never answers with paths).
    pub fn for_client(&self) -> String {
        let file = self
            .archive
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "image {} of archive {file}: {} ([verify] require = \"enforce\")",
            self.image, self.reason
        )
    }
}

/// The key `pack --sign` signs with.
#[derive(Clone)]
pub struct Signer {
    key: p256::ecdsa::SigningKey,
    /// `sha256:` of its public key, recorded with each signature.
    id: String,
    path: PathBuf,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads a PEM private key (see [`keys::read_private_key`]).
    pub fn from_file(path: &std::path::Path) -> Result<Signer, KeyError> {
        let key = keys::read_private_key(path)?;
        Ok(Signer {
            id: keys::key_id(key.verifying_key()),
            key,
            path: path.to_path_buf(),
        })
    }

    /// `sha256:` of the public key: what `doctor` and the docs show.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The signature image of image `name` whose top digest is `digest`.
    pub fn sign(&self, name: &str, digest: &Digest) -> cosign::SignatureImage {
        cosign::sign(&self.key, &self.id, name, digest)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The node's signature policy: `[verify]`, its keys read once, and the
/// verdicts reached (keyed by the image digest and the signatures seen, so
/// a signature arriving later is checked).
pub struct Trust {
    require: Require,
    keys: Vec<PublicKey>,
    verdicts: Mutex<HashMap<(Digest, Vec<Digest>), Verdict>>,
    /// Images already warned about, per use: one log line each.
    warned: Mutex<HashSet<(Digest, &'static str)>>,
    /// The layer index of the catalog's last generation seen. Held while
    /// one is built, so concurrent Prepares build it once.
    layer_index: Mutex<Option<Arc<LayerIndex>>>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("require", &self.require)
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// No keys, nothing checked.
    pub fn off() -> Arc<Trust> {
        Trust::new(Require::Off, Vec::new())
    }

    pub fn new(require: Require, keys: Vec<PublicKey>) -> Arc<Trust> {
        Arc::new(Trust {
            require,
            keys,
            verdicts: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            layer_index: Mutex::new(None),
        })
    }

    /// Reads the keys `[verify]` names (an error names the file).
    pub fn from_config(config: &VerifyConfig) -> Result<Arc<Trust>, TrustError> {
        let keys = config
            .keys
            .iter()
            .map(|p| keys::read_public_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust::new(config.require, keys))
    }

    pub fn require(&self) -> Require {
        self.require
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The signature state of the image whose top digest is `digest`.
    pub fn verdict(&self, catalog: &Catalog, digest: &Digest) -> Verdict {
        self.check(catalog, digest).0
    }

    /// [`Trust::verdict`], and whether it holds until the catalog changes:
    /// not when a signature payload could not be read (it is read again
    /// next time).
    fn check(&self, catalog: &Catalog, digest: &Digest) -> (Verdict, bool) {
        let signatures = signature_manifests(catalog, digest);
        if signatures.is_empty() {
            return (Verdict::Unsigned, true);
        }
        let cache_key = (*digest, signatures.clone());
        if let Some(v) = self.verdicts.lock().unwrap().get(&cache_key) {
            return (v.clone(), true);
        }
        let mut first_error = None;
        let mut transient = false;
        for sig in &signatures {
            match self.check_manifest(catalog, digest, sig) {
                Ok(key) => {
                    let v = Verdict::Valid { key };
                    self.verdicts.lock().unwrap().insert(cache_key, v.clone());
                    return (v, true);
                }
                Err(e) => {
                    transient |= matches!(e, Invalid::Unreadable { .. });
                    first_error.get_or_insert(e);
                }
            }
        }
        let v = Verdict::Invalid(first_error.unwrap_or(Invalid::NoKey));
        // A payload that could not be read is checked again next time.
        if !transient {
            self.verdicts.lock().unwrap().insert(cache_key, v.clone());
        }
        (v, !transient)
    }

    /// The layer index of `catalog` as it is now: the one built for its
    /// generation, else a new one (the images and their signatures may
    /// have changed).
    fn layer_index(&self, catalog: &Catalog) -> Arc<LayerIndex> {
        // Read before the catalog is: an index is at least as new as the
        // generation it is kept under (at worst built again needlessly).
        let generation = catalog.generation();
        let mut slot = self.layer_index.lock().unwrap();
        if let Some(index) = slot.as_ref().filter(|i| i.generation == generation) {
            return index.clone();
        }
        let index = Arc::new(LayerIndex::build(catalog, generation, |digest| {
            self.check(catalog, digest)
        }));
        *slot = Some(index.clone());
        index
    }

    /// The verdict of image `n` of `index`: the one reached when it was
    /// built, unless a signature could not be read then (checked again,
    /// as [`Trust::verdict`] does).
    fn indexed_verdict(&self, catalog: &Catalog, index: &LayerIndex, n: usize) -> Verdict {
        match &index.verdicts[n] {
            Some(v) => v.clone(),
            None => self.verdict(catalog, &index.images[n].entry.digest),
        }
    }

    /// The first signature of signature manifest `sig` that verifies.
    fn check_manifest(
        &self,
        catalog: &Catalog,
        image: &Digest,
        sig: &Digest,
    ) -> Result<PathBuf, Invalid> {
        let doc = catalog
            .document(sig)
            .ok_or_else(|| Invalid::BadManifest(format!("{sig} is not in the archives")))?;
        let layers = cosign::signature_layers(&doc)?;
        if layers.is_empty() {
            return Err(Invalid::BadManifest(format!("{sig} carries no signature")));
        }
        let mut first_error = None;
        for layer in layers {
            let result = read_payload(catalog, &layer).and_then(|payload| {
                cosign::verify(
                    &self.keys,
                    image,
                    &payload,
                    &layer.signature,
                    layer.key_id.as_deref(),
                )
            });
            match result {
                Ok(i) => return Ok(self.keys[i].path.clone()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(Invalid::NoKey))
    }

    /// Whether `image` may be used for `what`: always when `require` is
    /// off or its signature is valid; under `warn`, yes with a warning;
    /// under `enforce`, a [`Refusal`] (logged).
    pub fn admit(&self, catalog: &Catalog, image: &ImageInfo, what: Use) -> Result<(), Refusal> {
        if self.require == Require::Off {
            return Ok(());
        }
        self.admit_as(image, self.verdict(catalog, &image.entry.digest), what)
    }

    /// [`Trust::admit`] of `image`, whose signature state is `verdict`.
    fn admit_as(&self, image: &ImageInfo, verdict: Verdict, what: Use) -> Result<(), Refusal> {
        if matches!(verdict, Verdict::Valid { .. }) {
            return Ok(());
        }
        let refusal = Refusal {
            image: image.entry.name.clone(),
            archive: image.archive.clone(),
            reason: verdict.to_string(),
        };
        self.report(&refusal, &image.entry.digest, what);
        match self.require {
            Require::Enforce => Err(refusal),
            _ => Ok(()),
        }
    }

    fn report(&self, refusal: &Refusal, digest: &Digest, what: Use) {
        if what != Use::PrepareAhead {
            crate::metrics::global().signature_refusal(what.as_str(), self.require.as_str());
        }
        let first = self.warned.lock().unwrap().insert((*digest, what.as_str()));
        match (self.require, what) {
            (_, Use::PrepareAhead) => tracing::debug!(image = %refusal.image,
                archive = %refusal.archive.display(), reason = %refusal.reason,
                "not prepared ahead: no valid signature"),
            (Require::Enforce, _) => tracing::error!(image = %refusal.image,
                archive = %refusal.archive.display(), reason = %refusal.reason, action = what.as_str(),
                "refused: no valid signature ([verify] require = \"enforce\")"),
            _ if first => tracing::warn!(image = %refusal.image,
                archive = %refusal.archive.display(), reason = %refusal.reason, action = what.as_str(),
                "used without a valid signature ([verify] require = \"warn\")"),
            _ => {}
        }
    }

    /// Whether the mirror may serve archived manifest `digest` (asked for
    /// by `name` when by tag): a signature image always (checking it is
    /// the client's business), any other manifest when an admitted image
    /// holds it (as its top digest or a platform manifest).
    pub fn admit_manifest(
        &self,
        catalog: &Catalog,
        digest: &Digest,
        name: Option<&str>,
    ) -> Result<(), Refusal> {
        if self.require == Require::Off || name.is_some_and(cosign::is_signature_name) {
            return Ok(());
        }
        let holders: Vec<ImageInfo> = match name.and_then(|n| catalog.resolve(n)) {
            Some(info) if info.entry.digest == *digest => vec![info],
            _ => catalog
                .images()
                .into_iter()
                .filter(|i| i.entry.digest == *digest || i.entry.manifests.contains(digest))
                .collect(),
        };
        let mut refusal = None;
        for image in &holders {
            match self.admit(catalog, image, Use::Serve) {
                Ok(()) => return Ok(()),
                Err(r) => {
                    refusal.get_or_insert(r);
                }
            }
        }
        if holders.is_empty() && is_signature_manifest(catalog, digest) {
            return Ok(());
        }
        match refusal {
            Some(r) => Err(r),
            None if holders.is_empty() => {
                let refusal = Refusal {
                    image: name.map_or_else(|| digest.to_string(), str::to_string),
                    archive: archive_of(catalog, digest).unwrap_or_default(),
                    reason: "no named image of the archives holds this manifest, so no signature covers it".into(),
                };
                self.report(&refusal, digest, Use::Serve);
                if self.require == Require::Enforce {
                    Err(refusal)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Whether the snapshotter may take `layer` from the archives: when an
    /// admitted image's platform manifest has that blob at that chain ID.
    /// A lookup in the layer index (the images holding it, in the
    /// catalog's order), not a walk over every image.
    pub fn admit_layer(
        &self,
        catalog: &Catalog,
        layer: &LayerRef,
        what: Use,
    ) -> Result<(), Refusal> {
        if self.require == Require::Off {
            return Ok(());
        }
        let index = self.layer_index(catalog);
        let mut refusal = None;
        for &n in index.holders(layer) {
            let verdict = self.indexed_verdict(catalog, &index, n);
            match self.admit_as(&index.images[n], verdict, what) {
                Ok(()) => return Ok(()),
                Err(r) => {
                    refusal.get_or_insert(r);
                }
            }
        }
        match refusal {
            Some(r) => Err(r),
            None => {
                let refusal = Refusal {
                    image: format!("layer {} (chain ID {})", layer.digest, layer.chain_id),
                    archive: archive_of(catalog, &layer.digest).unwrap_or_default(),
                    reason:
                        "no named image of the archives has this layer, so no signature covers it"
                            .into(),
                };
                self.report(&refusal, &layer.chain_id, what);
                if self.require == Require::Enforce {
                    Err(refusal)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Every archived image with its signature state (none when no key is
    /// configured); sets `airgap_images_signature`. The states are the
    /// layer index's, built now if the catalog changed (the daemon surveys
    /// after every change, so Prepares find the index ready).
    pub fn survey(&self, catalog: &Catalog) -> Vec<(ImageInfo, Verdict)> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        let index = self.layer_index(catalog);
        let out: Vec<(ImageInfo, Verdict)> = (0..index.images.len())
            .map(|n| {
                let v = self.indexed_verdict(catalog, &index, n);
                (index.images[n].clone(), v)
            })
            .collect();
        let count = |state: &str| out.iter().filter(|(_, v)| v.state() == state).count() as i64;
        crate::metrics::global().images_signature(
            count("valid"),
            count("unsigned"),
            count("invalid"),
        );
        out
    }
}

/// The signature manifests of `digest` in every archive (each once, in
/// digest order): whatever the repository, a signature is of a digest.
fn signature_manifests(catalog: &Catalog, digest: &Digest) -> Vec<Digest> {
    let tag = format!(":{}", cosign::signature_tag(digest));
    let mut out: Vec<Digest> = catalog
        .archives()
        .iter()
        .flat_map(|a| a.index.images.iter())
        .filter(|i| i.name.ends_with(&tag))
        .map(|i| i.digest)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// True when `digest` is a signature image of some archive.
fn is_signature_manifest(catalog: &Catalog, digest: &Digest) -> bool {
    catalog
        .archives()
        .iter()
        .flat_map(|a| a.index.images.iter())
        .any(|i| i.digest == *digest && cosign::is_signature_name(&i.name))
}

/// An archive holding blob or document `digest`, for messages.
fn archive_of(catalog: &Catalog, digest: &Digest) -> Option<PathBuf> {
    catalog
        .archives()
        .iter()
        .find(|a| a.index.blobs.contains_key(digest) || a.index.documents.contains_key(digest))
        .map(|a| a.path().to_path_buf())
}

/// A signature's payload, read (and digest-checked) from the archives.
fn read_payload(catalog: &Catalog, layer: &cosign::SignatureLayer) -> Result<Vec<u8>, Invalid> {
    let unreadable = |reason: String| Invalid::Unreadable {
        digest: layer.payload,
        reason,
    };
    let reader = catalog
        .open_blob(&layer.payload)
        .map_err(|e| unreadable(e.to_string()))?;
    let mut payload = Vec::new();
    reader
        .take(cosign::MAX_PAYLOAD + 1)
        .read_to_end(&mut payload)
        .map_err(|e| unreadable(e.to_string()))?;
    if payload.len() as u64 > cosign::MAX_PAYLOAD {
        return Err(Invalid::Payload(format!(
            "larger than {} KiB",
            cosign::MAX_PAYLOAD >> 10
        )));
    }
    Ok(payload)
}
