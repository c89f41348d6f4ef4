//! Content digests (`sha256:<hex>`) and the layer chain IDs built from them.
//!
//! Only SHA-256 is accepted: it is what every registry, containerd and the
//! OCI image spec use for layers, and refusing the rest keeps the hostile-input
//! surface small.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {value:?}: {reason}")]
pub struct DigestError {
    pub value: String,
    pub reason: &'static str,
}

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The layer chain ID of `diff_ids` (OCI image spec, "Layer ChainID"):
    /// `chain(L0) = diff(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
    /// Returns one chain ID per layer, bottom first.
    pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
        let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
        for diff in diff_ids {
            let next = match out.last() {
                None => *diff,
                Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
            };
            out.push(next);
        }
        out
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DigestError {
            value: s.chars().take(100).collect(),
            reason,
        };
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or_else(|| err("only sha256 digests are supported"))?;
        if hex_part.len() != 64 {
            return Err(err("sha256 needs 64 hex characters"));
        }
        if hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("hex must be lowercase"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| err("not hexadecimal"))?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 that ends in a [`Digest`].
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// A reader that hashes everything read through it, so a stream can be
/// checked against its digest at EOF without a second pass.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: std::io::Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read, and the inner reader.
    pub fn finish(self) -> (Digest, u64, R) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d, Digest::of(b""));
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:zzb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let chain = Digest::chain_ids(&[a, b, c]);
        assert_eq!(chain[0], a);
        let ab = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain[1], ab);
        assert_eq!(chain[2], Digest::of(format!("{ab} {c}").as_bytes()));
    }
}
