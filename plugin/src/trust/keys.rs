//! Keys in files: PEM public keys for the node, a PEM private key for
//! `pack --sign`. ECDSA P-256, the curve `cosign generate-key-pair` uses.
//!
//! Private keys are read unencrypted (PKCS#8 `PRIVATE KEY`, or SEC1 `EC
//! PRIVATE KEY` as `openssl ecparam -genkey` writes). cosign's own
//! password-encrypted key file is not read: the PEM key is the one
//! generated (`openssl genpkey`), and `cosign import-key-pair` turns it
//! into cosign's form for whoever signs with cosign too (see
//! docs/bundles.md).

use std::path::{Path, PathBuf};

use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};

use crate::digest::Digest;

/// A public key a signature may verify with.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub key: VerifyingKey,
    /// `sha256:<hex>` of its DER form ([`super::cosign::KEY_ANNOTATION`]).
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
}

/// `sha256:<hex>` of a public key's DER (SubjectPublicKeyInfo) form.
pub fn key_id(key: &VerifyingKey) -> String {
    let der = key
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    Digest::of(&der).to_string()
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The PEM label of the first block (`PUBLIC KEY`, `PRIVATE KEY`, ...),
/// past the `EC PARAMETERS` block `openssl ecparam -genkey` writes first.
fn pem_label(text: &str) -> Option<&str> {
    let mut rest = text;
    loop {
        let start = rest.find("-----BEGIN ")? + "-----BEGIN ".len();
        let end = rest[start..].find("-----")?;
        let label = &rest[start..start + end];
        if label != "EC PARAMETERS" {
            return Some(label);
        }
        rest = &rest[start + end..];
    }
}

/// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, what cosign
/// writes as `cosign.pub`).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read(path)?;
    let bad = |reason: String| KeyError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    match pem_label(&text) {
        Some("PUBLIC KEY") => {}
        Some(other) => {
            return Err(bad(format!(
                "a PEM {other:?}, not a \"PUBLIC KEY\" (give the public half: `openssl pkey -pubout`, or cosign.pub)"
            )))
        }
        None => return Err(bad("no PEM block (-----BEGIN PUBLIC KEY-----)".into())),
    }
    let key = VerifyingKey::from_public_key_pem(text.trim())
        .map_err(|e| bad(format!("not an ECDSA P-256 public key: {e}")))?;
    Ok(PublicKey {
        path: path.to_path_buf(),
        id: key_id(&key),
        key,
    })
}

/// Reads an unencrypted PEM private key (PKCS#8 or SEC1, ECDSA P-256).
pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read(path)?;
    let bad = |reason: String| KeyError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    match pem_label(&text) {
        Some("PRIVATE KEY") => SigningKey::from_pkcs8_pem(text.trim())
            .map_err(|e| bad(format!("not an ECDSA P-256 private key: {e}"))),
        Some("EC PRIVATE KEY") => {
            let pem = &text[text.find("-----BEGIN EC PRIVATE KEY").unwrap_or(0)..];
            p256::SecretKey::from_sec1_pem(pem.trim())
                .map(SigningKey::from)
                .map_err(|e| bad(format!("not an ECDSA P-256 private key: {e}")))
        }
        Some("ENCRYPTED PRIVATE KEY") => Err(bad(
            "encrypted: decrypt it first (`openssl pkcs8 -in KEY -out PLAIN.pem`)".into(),
        )),
        Some(l) if l.contains("SIGSTORE") || l.contains("COSIGN") => Err(bad(
            "cosign's password-encrypted key: pack signs with a PEM key (`openssl genpkey \
             -algorithm EC -pkeyopt ec_paramgen_curve:P-256`); `cosign import-key-pair` \
             gives cosign the same key"
                .into(),
        )),
        Some(other) => Err(bad(format!(
            "a PEM {other:?}, not a \"PRIVATE KEY\" (ECDSA P-256, PKCS#8 or SEC1)"
        ))),
        None => Err(bad("no PEM block (-----BEGIN PRIVATE KEY-----)".into())),
    }
}
