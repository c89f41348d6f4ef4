//! The streaming tar pass: where every file's bytes are, the small JSON
//! files kept whole, every file not named by digest hashed.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;

use super::{BlobLocation, IndexError, MAX_ENTRIES, MAX_JSON, MAX_JSON_TOTAL};
use crate::digest::{Digest, Hasher};

/// A regular file seen in the tar stream.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) loc: BlobLocation,
    /// First bytes, to tell a blob's own compression.
    pub(super) head: Vec<u8>,
    /// Hash of the contents, for files not named by digest.
    pub(super) digest: Option<Digest>,
}

/// Everything the pass collected, before the layout is understood.
#[derive(Default)]
pub(super) struct Pass {
    /// Non-blob files by normalized path.
    pub(super) files: HashMap<String, Entry>,
    /// `blobs/sha256/<hex>` entries.
    pub(super) blobs: HashMap<Digest, Entry>,
    /// Small JSON files and blobs, by path and by digest.
    pub(super) json_files: HashMap<String, Bytes>,
    pub(super) json_blobs: HashMap<Digest, Bytes>,
    json_total: u64,
    pub(super) stream_len: u64,
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
pub(super) fn entry_name(raw: &Path) -> String {
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

pub(super) fn walk(stream: Box<dyn Read + Send>) -> Result<Pass, IndexError> {
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
                        Some(d) => pass.json_blobs.insert(d, bytes.into()),
                        None => pass.json_files.insert(name.clone(), bytes.into()),
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
