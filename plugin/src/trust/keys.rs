//! Keys in files: PEM public keys for the node, a PEM private key for
//! `pack --sign`. ECDSA P-256, the curve `cosign generate-key-pair` uses.
//!
//! Private keys are read as PEM: unencrypted PKCS#8 (`PRIVATE KEY`) or
//! SEC1 (`EC PRIVATE KEY`, `openssl ecparam -genkey`), or cosign's own
//! password-encrypted file (`cosign generate-key-pair`, `import-key-pair`):
//! JSON holding the PKCS#8 key sealed with NaCl secretbox under an scrypt
//! key of the password (go-securesystemslib's `encrypted` package), the
//! password in `COSIGN_PASSWORD` as cosign takes it.

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
        Some(l @ ("ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY")) => {
            let password = std::env::var("COSIGN_PASSWORD").map_err(|_| {
                bad("cosign's encrypted key: set COSIGN_PASSWORD to its password".into())
            })?;
            let body = pem_body(&text, l).ok_or_else(|| bad("truncated PEM block".into()))?;
            let der = decrypt_cosign(&body, password.as_bytes()).map_err(|e| bad(e.to_string()))?;
            SigningKey::from_pkcs8_der(&der)
                .map_err(|e| bad(format!("not an ECDSA P-256 private key: {e}")))
        }
        Some(other) => Err(bad(format!(
            "a PEM {other:?}, not a \"PRIVATE KEY\" (ECDSA P-256, PKCS#8 or SEC1)"
        ))),
        None => Err(bad("no PEM block (-----BEGIN PRIVATE KEY-----)".into())),
    }
}

/// The base64 body of the PEM block labelled `label`, decoded.
fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Why cosign's encrypted key could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CosignKeyError {
    #[error("cosign key is not JSON: {0}")]
    Json(serde_json::Error),
    #[error("cosign key: {0} missing or not base64")]
    Field(&'static str),
    #[error("cosign key: kdf {kdf} and cipher {cipher}, expected scrypt and nacl/secretbox")]
    Algorithms {
        kdf: serde_json::Value,
        cipher: serde_json::Value,
    },
    #[error("cosign key: scrypt N = {0} is not a power of two")]
    ScryptN(u64),
    #[error("cosign key: scrypt parameters: {0}")]
    ScryptParams(scrypt::errors::InvalidParams),
    #[error("cosign key: scrypt: {0}")]
    Scrypt(scrypt::errors::InvalidOutputLen),
    #[error("cosign key: the nonce is not 24 bytes")]
    Nonce,
    #[error("cosign key: wrong password (COSIGN_PASSWORD), or the file is damaged")]
    Decrypt,
}

/// go-securesystemslib's `encrypted.Decrypt`: `{"kdf": {"name": "scrypt",
/// "params": {"N", "r", "p"}, "salt"}, "cipher": {"name":
/// "nacl/secretbox", "nonce"}, "ciphertext"}`, byte fields in base64.
pub(super) fn decrypt_cosign(json: &[u8], password: &[u8]) -> Result<Vec<u8>, CosignKeyError> {
    use base64::Engine;
    use crypto_secretbox::aead::{Aead, KeyInit};
    let doc: serde_json::Value = serde_json::from_slice(json).map_err(CosignKeyError::Json)?;
    let b64 = |v: &serde_json::Value, what: &'static str| {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or(CosignKeyError::Field(what))
    };
    let kdf = &doc["kdf"];
    let cipher = &doc["cipher"];
    if kdf["name"] != "scrypt" || cipher["name"] != "nacl/secretbox" {
        return Err(CosignKeyError::Algorithms {
            kdf: kdf["name"].clone(),
            cipher: cipher["name"].clone(),
        });
    }
    let n = kdf["params"]["N"].as_u64().unwrap_or(0);
    let (r, p) = (
        kdf["params"]["r"].as_u64().unwrap_or(0) as u32,
        kdf["params"]["p"].as_u64().unwrap_or(0) as u32,
    );
    if !n.is_power_of_two() || n < 2 {
        return Err(CosignKeyError::ScryptN(n));
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32)
        .map_err(CosignKeyError::ScryptParams)?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, &b64(&kdf["salt"], "kdf.salt")?, &params, &mut key)
        .map_err(CosignKeyError::Scrypt)?;
    let nonce = b64(&cipher["nonce"], "cipher.nonce")?;
    if nonce.len() != 24 {
        return Err(CosignKeyError::Nonce);
    }
    crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .decrypt(
            crypto_secretbox::Nonce::from_slice(&nonce),
            b64(&doc["ciphertext"], "ciphertext")?.as_slice(),
        )
        .map_err(|_| CosignKeyError::Decrypt)
}
