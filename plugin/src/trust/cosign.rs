//! cosign's signature format, key-based and offline (cosign v2, "simple
//! signing"): what `cosign sign --key` pushes and `cosign verify --key`
//! reads.
//!
//! - The signature of image manifest `sha256:<hex>` is an image of its own,
//!   tagged `sha256-<hex>.sig` in the same repository.
//! - Its one layer per signature is the *payload*, a small JSON document
//!   (media type [`PAYLOAD_MEDIA_TYPE`]) naming the signed digest in
//!   `critical.image.docker-manifest-digest`.
//! - The layer's annotation [`SIGNATURE_ANNOTATION`] holds the signature:
//!   ECDSA P-256 over SHA-256 of the payload bytes, ASN.1 DER, base64.
//!
//! Only the digest is checked, as cosign does (`docker-reference` is what
//! the signer called the repository, which a mirror renames).

use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};

use super::keys::PublicKey;
use crate::catalog::index::{MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST};
use crate::catalog::reference::Reference;
use crate::digest::Digest;

pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Which key signed (`sha256:` of its DER public key): cosign ignores it;
/// here it tells an unknown key from an altered signature.
pub const KEY_ANNOTATION: &str = "dev.airgap-snapshotter/key-sha256";
/// `critical.type` of an image signature payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest payload read (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD: u64 = 64 << 10;

/// The tag of the signatures of `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// True when the (normalized) image name's tag is a cosign signature tag.
pub fn is_signature_name(name: &str) -> bool {
    name.rsplit_once(':').is_some_and(|(_, tag)| {
        tag.strip_prefix("sha256-")
            .and_then(|t| t.strip_suffix(".sig"))
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// The payload cosign signs for `digest` of repository `repository`.
pub fn payload(repository: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    }))
    .expect("JSON values serialize")
}

/// One signature image, ready to write into an OCI layout.
#[derive(Clone, Debug)]
pub struct SignatureImage {
    /// `repository:sha256-<hex>.sig`.
    pub name: String,
    pub manifest: Vec<u8>,
    /// The payload and the config, then the manifest: every blob to store.
    pub blobs: Vec<(Digest, Vec<u8>)>,
}

impl SignatureImage {
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }
}

/// Signs image `name` (normalized), whose manifest or index is `digest`.
pub fn sign(key: &SigningKey, key_id: &str, name: &str, digest: &Digest) -> SignatureImage {
    let repository = Reference::parse(name)
        .map(|r| r.repository())
        .unwrap_or_else(|_| name.rsplit_once(':').map_or(name, |(r, _)| r).to_string());
    let payload = payload(&repository, digest);
    let signature: Signature = key.sign(&payload);
    let signature = base64::engine::general_purpose::STANDARD.encode(signature.to_der());
    let payload_digest = Digest::of(&payload);
    // What go-containerregistry writes for an image of one layer.
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [payload_digest.to_string()]},
        "config": {},
    }))
    .expect("JSON values serialize");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_OCI_CONFIG,
            "size": config.len(),
            "digest": Digest::of(&config).to_string(),
        },
        "layers": [{
            "mediaType": PAYLOAD_MEDIA_TYPE,
            "size": payload.len(),
            "digest": payload_digest.to_string(),
            "annotations": {
                SIGNATURE_ANNOTATION: signature,
                KEY_ANNOTATION: key_id,
            },
        }],
    }))
    .expect("JSON values serialize");
    SignatureImage {
        name: format!("{repository}:{}", signature_tag(digest)),
        blobs: vec![
            (payload_digest, payload),
            (Digest::of(&config), config),
            (Digest::of(&manifest), manifest.clone()),
        ],
        manifest,
    }
}

/// One signature of a signature image: a payload layer and its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLayer {
    pub payload: Digest,
    pub payload_size: u64,
    pub signature: String,
    pub key_id: Option<String>,
}

/// The signatures a signature manifest carries (layers without a signature
/// annotation are skipped); an error when it is no manifest.
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, Invalid> {
    let doc: Value = serde_json::from_slice(manifest)
        .map_err(|e| Invalid::BadManifest(format!("not JSON: {e}")))?;
    let layers = doc["layers"]
        .as_array()
        .ok_or_else(|| Invalid::BadManifest("no layers".into()))?;
    Ok(layers
        .iter()
        .filter_map(|l| {
            Some(SignatureLayer {
                payload: l["digest"].as_str()?.parse().ok()?,
                payload_size: l["size"].as_u64().unwrap_or(0),
                signature: l["annotations"][SIGNATURE_ANNOTATION].as_str()?.to_string(),
                key_id: l["annotations"][KEY_ANNOTATION]
                    .as_str()
                    .map(str::to_string),
            })
        })
        .collect())
}

/// Why a signature is not a valid one of the image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("bad signature: the signature annotation is not base64 ECDSA: {0}")]
    Encoding(String),
    #[error("unknown key: signed with key {key_id}, which is none of the [verify] keys")]
    UnknownKey { key_id: String },
    #[error("bad signature: does not verify with {key}, the key that signed it (payload or signature altered)")]
    Altered { key: String },
    #[error("bad signature: verifies with none of the [verify] keys (payload or signature altered, or signed with another key)")]
    NoKey,
    #[error("bad signature: it signs {signed}, not this image ({image})")]
    WrongDigest { signed: String, image: Digest },
    #[error("bad signature: payload is not a cosign image signature: {0}")]
    Payload(String),
    #[error("bad signature: signature manifest {0}")]
    BadManifest(String),
    #[error("bad signature: payload {digest} cannot be read: {reason}")]
    Unreadable { digest: Digest, reason: String },
}

/// Checks one signature of image `image`: `signature` (base64) over
/// `payload` with one of `keys`; `key_id` is the signer's key as the
/// signature names it, if it does. The index of the key that verified.
pub fn verify(
    keys: &[PublicKey],
    image: &Digest,
    payload: &[u8],
    signature: &str,
    key_id: Option<&str>,
) -> Result<usize, Invalid> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|e| Invalid::Encoding(e.to_string()))?;
    let sig = Signature::from_der(&raw)
        .or_else(|_| Signature::from_slice(&raw))
        .map_err(|e| Invalid::Encoding(e.to_string()))?;
    // Go's ECDSA does not normalize S; (r, n-s) verifies exactly when (r, s) does.
    let sig = sig.normalize_s().unwrap_or(sig);
    let Some(found) = keys
        .iter()
        .position(|k| k.key.verify(payload, &sig).is_ok())
    else {
        return Err(match key_id {
            Some(id) => match keys.iter().find(|k| k.id == id) {
                Some(k) => Invalid::Altered {
                    key: k.path.display().to_string(),
                },
                None => Invalid::UnknownKey {
                    key_id: id.to_string(),
                },
            },
            None => Invalid::NoKey,
        });
    };
    let doc: Value =
        serde_json::from_slice(payload).map_err(|e| Invalid::Payload(format!("not JSON: {e}")))?;
    let critical = &doc["critical"];
    if critical["type"].as_str() != Some(PAYLOAD_TYPE) {
        return Err(Invalid::Payload(format!(
            "critical.type is {}, not {PAYLOAD_TYPE:?}",
            critical["type"]
        )));
    }
    let signed = critical["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or("");
    if signed != image.to_string() {
        return Err(Invalid::WrongDigest {
            signed: signed.to_string(),
            image: *image,
        });
    }
    Ok(found)
}
