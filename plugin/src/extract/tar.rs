//! A streaming tar reader over a decompressed layer.
//!
//! Three stages on three threads, handing the same buffers along: the
//! decompressor fills 1 MiB chunks ([`super::pipeline::produce_chunks`]), the hasher hashes
//! them ([`super::pipeline::hash_chunks`]), and the extractor parses headers from them and
//! writes file data to disk straight from them ([`TarStream`]). No byte is
//! copied in user space after decompression; buffers go back to the
//! decompressor for reuse.
//!
//! Header fields are decoded with the `tar` crate ([`tar::Header`]); the
//! stream structure (PAX records, GNU long names, padding, end of archive) is
//! handled here, because the PAX parser of the `tar` crate splits records on
//! newlines and so loses binary xattr values such as `security.capability`.

use std::borrow::Cow;
use std::io;
use std::sync::mpsc::{Receiver, Sender};

use super::pipeline::ChunkMsg;

/// Size of a tar block.
const BLOCK: usize = 512;
/// Largest PAX header or GNU long name accepted (the limit Go's archive/tar uses).
const MAX_META: u64 = 1 << 20;
/// Prefix of PAX records that carry extended attributes.
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";

/// What went wrong while reading the tar stream itself.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The decompressor or the underlying reader failed.
    Read(io::Error),
    /// The stream ended inside a header or an entry's data.
    Truncated,
    /// The bytes are not a valid tar stream.
    Malformed(String),
    /// A valid but unsupported entry (sparse files, vendor types).
    Unsupported(String),
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        StreamError::Read(e)
    }
}

fn malformed(msg: impl Into<String>) -> StreamError {
    StreamError::Malformed(msg.into())
}

/// The file types a layer can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// A point in time as tar stores it (PAX allows sub-second precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// One tar entry with every extension header already applied.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Raw path bytes as the archive names the entry (not yet validated).
    pub path: Vec<u8>,
    /// Link target for hard and symbolic links.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    pub atime: Option<Time>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Length of the entry's data in the stream (its header's or PAX size).
    pub size: u64,
    /// Extended attributes (`SCHILY.xattr.<name>` PAX records), in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The path for messages, lossily decoded and bounded.
    pub fn display_path(&self) -> String {
        display_bytes(&self.path)
    }
}

/// Lossy, bounded rendering of archive-provided bytes for error messages.
pub(crate) fn display_bytes(b: &[u8]) -> String {
    const MAX: usize = 512;
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX)]).into_owned();
    if b.len() > MAX {
        s + "..."
    } else {
        s
    }
}

/// Extension records collected from PAX headers for the next entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

/// The decompressed layer as a sequence of tar entries, read from chunks.
pub(crate) struct TarStream {
    rx: Receiver<ChunkMsg>,
    pool: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    /// Data bytes of the current entry not consumed yet.
    data_left: u64,
    /// Padding after the current entry's data.
    pad_left: u64,
    /// Offset in the decompressed stream of `cur[0]`.
    base: u64,
}

impl TarStream {
    pub fn new(rx: Receiver<ChunkMsg>, pool: Sender<Vec<u8>>) -> Self {
        TarStream {
            rx,
            pool,
            cur: Vec::new(),
            pos: 0,
            end: 0,
            eof: false,
            data_left: 0,
            pad_left: 0,
            base: 0,
        }
    }

    /// Moves to the next chunk, handing the current buffer back for reuse.
    /// Returns false at the end of the stream.
    fn next_chunk(&mut self) -> Result<bool, StreamError> {
        if self.eof {
            return Ok(false);
        }
        match self.rx.recv() {
            Ok(Ok(chunk)) => {
                self.base += self.end as u64;
                let old = std::mem::replace(&mut self.cur, chunk.buf);
                if !old.is_empty() {
                    let _ = self.pool.send(old);
                }
                self.pos = 0;
                self.end = chunk.len.min(self.cur.len());
                Ok(true)
            }
            Ok(Err(e)) => {
                self.eof = true;
                Err(StreamError::Read(e))
            }
            Err(_) => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// Offset in the decompressed stream of the next byte to be read: right
    /// after [`TarStream::next_entry`], where the entry's data starts.
    pub fn position(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Copies up to `out.len()` bytes; fewer only at the end of the stream.
    fn read_some(&mut self, out: &mut [u8]) -> Result<usize, StreamError> {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.end && !self.next_chunk()? {
                break;
            }
            let take = (self.end - self.pos).min(out.len() - done);
            out[done..done + take].copy_from_slice(&self.cur[self.pos..self.pos + take]);
            self.pos += take;
            done += take;
        }
        Ok(done)
    }

    /// Discards `n` bytes of the stream.
    fn skip(&mut self, mut n: u64) -> Result<(), StreamError> {
        while n > 0 {
            if self.pos == self.end && !self.next_chunk()? {
                return Err(StreamError::Truncated);
            }
            let take = (self.end - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads `n` (<= MAX_META) bytes into a new vector.
    fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, StreamError> {
        if n > MAX_META {
            return Err(malformed(format!("extension header of {n} bytes")));
        }
        let mut v = vec![0u8; n as usize];
        if self.read_some(&mut v)? < v.len() {
            return Err(StreamError::Truncated);
        }
        Ok(v)
    }

    /// The current entry's data, in chunks as large as the stream's: calls
    /// `sink` with each piece until the data is consumed.
    pub fn copy_data<E>(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, StreamError> {
        while self.data_left > 0 {
            if self.pos == self.end && !self.next_chunk()? {
                return Err(StreamError::Truncated);
            }
            let take =
                (self.end - self.pos).min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
            let piece = &self.cur[self.pos..self.pos + take];
            self.pos += take;
            self.data_left -= take as u64;
            if let Err(e) = sink(piece) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// Consumes the rest of the stream: the blocks after the end-of-archive
    /// marker count for the diffID, and a stream that fails there fails.
    pub fn finish(mut self) -> Result<(), StreamError> {
        self.pos = self.end;
        while self.next_chunk()? {}
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive. Unread data of
    /// the previous entry is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, StreamError> {
        self.skip(self.data_left)?;
        self.data_left = 0;
        self.skip(self.pad_left)?;
        self.pad_left = 0;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; BLOCK];
            let got = self.read_some(&mut block)?;
            if got < BLOCK {
                if got == 0 && pax.is_none() && long_name.is_none() && long_link.is_none() {
                    // End of stream on a block boundary without end-of-archive
                    // blocks: accepted, as Go's archive/tar does.
                    return Ok(None);
                }
                return Err(StreamError::Truncated);
            }

            if block.iter().all(|&b| b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(malformed("extension header not followed by an entry"));
                }
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block);
            check_checksum(&block, header)?;

            let typeflag = block[156];
            let header_size = header
                .entry_size()
                .map_err(|e| malformed(format!("size field: {e}")))?;
            match typeflag {
                b'x' | b'L' | b'K' => {
                    let data = self.read_vec(header_size)?;
                    self.skip(padding(header_size))?;
                    match typeflag {
                        b'x' => {
                            if pax.is_some() {
                                return Err(malformed("two PAX headers for one entry"));
                            }
                            pax = Some(parse_pax(&data)?);
                        }
                        b'L' => {
                            if long_name.is_some() {
                                return Err(malformed("two GNU long names for one entry"));
                            }
                            long_name = Some(trim_nul(data));
                        }
                        _ => {
                            if long_link.is_some() {
                                return Err(malformed("two GNU long link names for one entry"));
                            }
                            long_link = Some(trim_nul(data));
                        }
                    }
                    continue;
                }
                b'g' => {
                    // PAX global headers: ignored, as containerd does.
                    self.skip(header_size)?;
                    self.skip(padding(header_size))?;
                    continue;
                }
                _ => {}
            }

            let pax = pax.unwrap_or_default();
            let path: Vec<u8> = match (pax.path, long_name) {
                (Some(p), _) => p,
                (None, Some(p)) => p,
                (None, None) => header.path_bytes().into_owned(),
            };
            let link: Vec<u8> = match (pax.linkpath, long_link) {
                (Some(p), _) => p,
                (None, Some(p)) => p,
                (None, None) => header
                    .link_name_bytes()
                    .map(Cow::into_owned)
                    .unwrap_or_default(),
            };
            let size = pax.size.unwrap_or(header_size);
            let kind = match typeflag {
                b'0' | b'7' => Kind::Regular,
                // Pre-POSIX archives mark directories with a trailing slash.
                0 if path.ends_with(b"/") => Kind::Dir,
                0 => Kind::Regular,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                b'S' => return Err(StreamError::Unsupported("GNU sparse file".into())),
                other => {
                    return Err(StreamError::Unsupported(format!(
                        "entry type {:?}",
                        other as char
                    )))
                }
            };
            if pax.sparse {
                return Err(StreamError::Unsupported("PAX sparse file".into()));
            }
            let mode = header
                .mode()
                .map_err(|e| malformed(format!("mode field: {e}")))?
                & 0o7777;
            let id = |pax: Option<u64>,
                      field: io::Result<u64>,
                      what: &str|
             -> Result<u32, StreamError> {
                let v = match pax {
                    Some(v) => v,
                    None => field.map_err(|e| malformed(format!("{what} field: {e}")))?,
                };
                u32::try_from(v).map_err(|_| malformed(format!("{what} {v} out of range")))
            };
            let uid = id(pax.uid, header.uid(), "uid")?;
            let gid = id(pax.gid, header.gid(), "gid")?;
            let mtime = match pax.mtime {
                Some(t) => t,
                None => Time {
                    sec: header
                        .mtime()
                        .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
                        .map_err(|e| malformed(format!("mtime field: {e}")))?,
                    nsec: 0,
                },
            };
            let (dev_major, dev_minor) = if matches!(kind, Kind::Char | Kind::Block) {
                (
                    header
                        .device_major()
                        .map_err(|e| malformed(format!("device major: {e}")))?
                        .unwrap_or(0),
                    header
                        .device_minor()
                        .map_err(|e| malformed(format!("device minor: {e}")))?
                        .unwrap_or(0),
                )
            } else {
                (0, 0)
            };

            self.data_left = size;
            self.pad_left = padding(size);
            return Ok(Some(Entry {
                path,
                link,
                kind,
                mode,
                uid,
                gid,
                mtime,
                atime: pax.atime,
                dev_major,
                dev_minor,
                size,
                xattrs: pax.xattrs,
            }));
        }
    }
}

/// Zero bytes that follow `size` bytes of data up to the next block.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
    v
}

/// The header checksum: the unsigned byte sum with the checksum field read as
/// spaces (historic writers used a signed sum; accepted too, as Go does).
fn check_checksum(block: &[u8; BLOCK], header: &tar::Header) -> Result<(), StreamError> {
    let stored = header
        .cksum()
        .map_err(|e| malformed(format!("checksum field: {e}")))?;
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    if stored == unsigned || i64::from(stored) == i64::from(signed) {
        Ok(())
    } else {
        Err(malformed("header checksum mismatch"))
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`, where `len` counts the whole
/// record, so values may hold any byte, newlines included).
fn parse_pax(mut data: &[u8]) -> Result<Pax, StreamError> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break; // some writers pad the header data with NULs
        }
        let sp = data
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or_else(|| malformed("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("PAX record length is not a number"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(malformed("PAX record length does not match"));
        }
        let record = &data[sp + 1..len - 1];
        data = &data[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| malformed("PAX record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // An empty value unsets the field (POSIX).
        let text = || std::str::from_utf8(value).ok();
        let number = |what: &str| -> Result<Option<u64>, StreamError> {
            if value.is_empty() {
                return Ok(None);
            }
            text()
                .and_then(|s| s.parse::<u64>().ok())
                .map(Some)
                .ok_or_else(|| malformed(format!("PAX {what} is not a number")))
        };
        match key {
            b"path" => pax.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => pax.linkpath = (!value.is_empty()).then(|| value.to_vec()),
            b"size" => pax.size = number("size")?,
            b"uid" => pax.uid = number("uid")?,
            b"gid" => pax.gid = number("gid")?,
            b"mtime" => pax.mtime = parse_time(value)?,
            b"atime" => pax.atime = parse_time(value)?,
            _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ if key.starts_with(PAX_XATTR) => {
                let name = &key[PAX_XATTR.len()..];
                if name.is_empty() {
                    return Err(malformed("PAX xattr record without a name"));
                }
                pax.xattrs.retain(|(n, _)| n != name);
                pax.xattrs.push((name.to_vec(), value.to_vec()));
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// A PAX time: decimal seconds, optionally negative, optionally with a fraction.
fn parse_time(value: &[u8]) -> Result<Option<Time>, StreamError> {
    if value.is_empty() {
        return Ok(None);
    }
    let bad = || malformed("PAX time is not a number");
    let s = std::str::from_utf8(value).map_err(|_| bad())?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let sec: i64 = int.parse().unwrap_or(i64::MAX);
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(Some(if !neg {
        Time { sec, nsec }
    } else if nsec == 0 {
        Time { sec: -sec, nsec: 0 }
    } else {
        Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_values_may_hold_newlines() {
        let value = b"a\nb=c";
        let rec = |k: &str, v: &[u8]| {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len += 1;
            }
            let mut r = format!("{len} {k}=").into_bytes();
            r.extend_from_slice(v);
            r.push(b'\n');
            r
        };
        let mut data = rec("SCHILY.xattr.user.x", value);
        data.extend(rec("path", b"long/name"));
        data.extend(rec("mtime", b"-1.5"));
        let pax = parse_pax(&data).unwrap();
        assert_eq!(pax.xattrs, vec![(b"user.x".to_vec(), value.to_vec())]);
        assert_eq!(pax.path.as_deref(), Some(&b"long/name"[..]));
        assert_eq!(
            pax.mtime,
            Some(Time {
                sec: -2,
                nsec: 500_000_000
            })
        );
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"99999999999999999999999 a=b\n").is_err());
        assert!(parse_pax(b"x").is_err());
    }
}
