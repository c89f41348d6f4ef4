//! `verify`: one sequential pass over an archive that checks every blob
//! against its digest and every layer's uncompressed stream against its
//! diffID.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};

use super::container;
use super::index::ArchiveIndex;
use super::Compression;
use crate::digest::{Digest, Hasher};

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub digest: Option<Digest>,
    pub reason: String,
}

/// `Write` into a hasher.
struct HashSink<'a>(&'a mut Hasher);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks every blob of `index` in `file`; `progress` is told how far into
/// the decompressed stream the pass is.
pub fn verify_archive(
    index: &ArchiveIndex,
    file: &File,
    progress: &mut dyn FnMut(u64),
) -> Vec<Failure> {
    let mut failures: Vec<Failure> = index
        .problems
        .iter()
        .map(|p| Failure {
            digest: None,
            reason: p.clone(),
        })
        .collect();
    let layers: HashMap<Digest, (Digest, Compression)> = index
        .layers
        .iter()
        .filter(|l| l.present)
        .map(|l| (l.digest, (l.diff_id, l.compression)))
        .collect();
    let mut blobs: Vec<(Digest, super::index::BlobLocation)> =
        index.blobs.iter().map(|(d, l)| (*d, *l)).collect();
    blobs.sort_by_key(|(_, l)| l.offset);
    let stream = match file
        .try_clone()
        .and_then(|f| container::decode_file(std::sync::Arc::new(f), index.container))
    {
        Ok(s) => s,
        Err(e) => {
            return vec![Failure {
                digest: None,
                reason: format!("opening: {e}"),
            }]
        }
    };
    let mut stream = stream;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (digest, loc) in blobs {
        if loc.offset < pos {
            continue; // the same bytes under a second name were checked already
        }
        if let Err(e) = io::copy(&mut (&mut stream).take(loc.offset - pos), &mut io::sink()) {
            failures.push(Failure {
                digest: Some(digest),
                reason: format!("reading the archive: {e}"),
            });
            return failures;
        }
        pos = loc.offset;
        let mut blob_hash = Hasher::new();
        let mut diff_hash = Hasher::new();
        let layer = layers.get(&digest).copied();
        let result = (|| -> io::Result<()> {
            let mut sink = HashSink(&mut diff_hash);
            let mut decoder: Option<Box<dyn Write + '_>> = match layer.map(|l| l.1) {
                Some(Compression::Gzip) => {
                    Some(Box::new(flate2::write::MultiGzDecoder::new(&mut sink)))
                }
                Some(Compression::Zstd) => {
                    let mut d = zstd::stream::write::Decoder::new(&mut sink)?;
                    d.window_log_max(container::ZSTD_WINDOW_LOG_MAX)?;
                    Some(Box::new(d))
                }
                Some(Compression::None) => Some(Box::new(&mut sink)),
                None => None,
            };
            let mut left = loc.size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = stream.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "archive ends inside the blob",
                    ));
                }
                blob_hash.update(&buf[..n]);
                if let Some(d) = decoder.as_mut() {
                    d.write_all(&buf[..n]).map_err(|e| {
                        io::Error::new(e.kind(), format!("decompressing the layer: {e}"))
                    })?;
                }
                left -= n as u64;
                pos += n as u64;
                progress(pos);
            }
            if let Some(mut d) = decoder {
                d.flush()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(Failure {
                digest: Some(digest),
                reason: e.to_string(),
            });
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return failures;
            }
            continue;
        }
        let actual = blob_hash.finish();
        if actual != digest {
            failures.push(Failure {
                digest: Some(digest),
                reason: format!("content does not match the digest (got {actual})"),
            });
        } else if let Some((diff_id, _)) = layer {
            let got = diff_hash.finish();
            if got != diff_id {
                failures.push(Failure {
                    digest: Some(digest),
                    reason: format!(
                        "uncompressed layer does not match its diffID {diff_id} (got {got})"
                    ),
                });
            }
        }
    }
    failures
}
