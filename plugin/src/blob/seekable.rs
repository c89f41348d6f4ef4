//! zstd's seekable format: the archive is a run of independent zstd frames,
//! followed by a skippable frame holding the seek table (compressed and
//! decompressed size of every frame). Every other zstd tool still reads the
//! file as an ordinary `.tar.zst`.
//!
//! Hand-written over the `zstd` crate that every other zstd stream here
//! already uses, although crates for the format exist (`zeekstd`, a Rust
//! implementation over `zstd-safe`; `zstd-seekable`, bindings that compile
//! zstd's `contrib/seekable_format` C code). What is needed is small: reading
//! is one table of fixed-size fields, checked against the file's length
//! before anything is allocated, after which `blob::SeekableRange`
//! decompresses single frames read with positional reads on one shared file
//! handle; writing cuts a frame at every blob boundary and compresses several
//! frames in parallel ([`SeekableWriter`]), which `zeekstd`'s encoder (one
//! frame at a time) does not.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// Last four bytes of a seekable zstd file.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Magic of the skippable frame that carries the table.
pub const SEEK_TABLE_FRAME_MAGIC: u32 = 0x184D_2A5E;
const FOOTER_LEN: u64 = 9;
/// Upper bound on frames, so a hostile table cannot make us allocate much.
const MAX_FRAMES: u64 = 1 << 24;

/// `pread` until `buf` is full or EOF; returns the bytes read. Here, the
/// lowest module of the catalog, so `container` (which sniffs a seek table)
/// uses it without the two importing each other.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One frame: where its compressed bytes are in the file and which range of
/// the decompressed stream it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub decompressed_offset: u64,
    pub decompressed_size: u32,
}

/// What is wrong with a seek table.
#[derive(Debug, thiserror::Error)]
pub enum SeekTableError {
    #[error("reading the seek table: {0}")]
    Io(#[from] std::io::Error),
    #[error("file too short for a seek table")]
    TooShort,
    #[error("short read of the {0}")]
    ShortRead(&'static str),
    #[error("reserved descriptor bits set ({0:#04x})")]
    ReservedBits(u8),
    #[error("{0} frames is more than the {MAX_FRAMES} accepted")]
    TooManyFrames(u64),
    #[error("table of {0} frames is larger than the file")]
    LargerThanFile(u64),
    #[error("skippable frame header does not match the footer")]
    HeaderMismatch,
    #[error("frames cover {compressed_end} compressed bytes but the table starts at {start}")]
    Misplaced { compressed_end: u64, start: u64 },
    #[error("frame {0} has a compressed size of 0")]
    EmptyFrame(usize),
    #[error("table covers {covers} bytes but the stream has {stream}")]
    ShortOfStream { covers: u64, stream: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekTable {
    pub frames: Vec<Frame>,
}

impl SeekTable {
    /// Reads and checks the table at the end of `file` (`len` bytes long).
    pub fn read(file: &File, len: u64) -> Result<SeekTable, SeekTableError> {
        if len < FOOTER_LEN + 8 {
            return Err(SeekTableError::TooShort);
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        if read_full_at(file, &mut footer, len - FOOTER_LEN)? != footer.len() {
            return Err(SeekTableError::ShortRead("footer"));
        }
        let num_frames = u32::from_le_bytes(footer[0..4].try_into().unwrap()) as u64;
        let descriptor = footer[4];
        if descriptor & 0x7c != 0 {
            return Err(SeekTableError::ReservedBits(descriptor));
        }
        let entry_len: u64 = if descriptor & 0x80 != 0 { 12 } else { 8 };
        if num_frames > MAX_FRAMES {
            return Err(SeekTableError::TooManyFrames(num_frames));
        }
        let table_len = num_frames * entry_len;
        let frame_len = 8 + table_len + FOOTER_LEN;
        if frame_len > len {
            return Err(SeekTableError::LargerThanFile(num_frames));
        }
        let start = len - frame_len;
        let mut header = [0u8; 8];
        read_full_at(file, &mut header, start)?;
        let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(header[4..8].try_into().unwrap()) as u64;
        if magic != SEEK_TABLE_FRAME_MAGIC || size != table_len + FOOTER_LEN {
            return Err(SeekTableError::HeaderMismatch);
        }
        let mut raw = vec![0u8; table_len as usize];
        if read_full_at(file, &mut raw, start + 8)? != raw.len() {
            return Err(SeekTableError::ShortRead("table"));
        }
        let table = Self::from_entries(&raw, entry_len as usize)?;
        let compressed_end = table
            .frames
            .last()
            .map_or(0, |f| f.compressed_offset + f.compressed_size as u64);
        if compressed_end != start {
            return Err(SeekTableError::Misplaced {
                compressed_end,
                start,
            });
        }
        Ok(table)
    }

    /// Parses the entries (without header or footer).
    pub fn from_entries(raw: &[u8], entry_len: usize) -> Result<SeekTable, SeekTableError> {
        let mut frames = Vec::with_capacity(raw.len() / entry_len);
        let (mut c_off, mut d_off) = (0u64, 0u64);
        for entry in raw.chunks_exact(entry_len) {
            let compressed_size = u32::from_le_bytes(entry[0..4].try_into().unwrap());
            let decompressed_size = u32::from_le_bytes(entry[4..8].try_into().unwrap());
            if compressed_size == 0 {
                return Err(SeekTableError::EmptyFrame(frames.len()));
            }
            frames.push(Frame {
                compressed_offset: c_off,
                compressed_size,
                decompressed_offset: d_off,
                decompressed_size,
            });
            c_off += compressed_size as u64;
            d_off += decompressed_size as u64;
        }
        Ok(SeekTable { frames })
    }

    /// Total decompressed length.
    pub fn decompressed_len(&self) -> u64 {
        self.frames
            .last()
            .map_or(0, |f| f.decompressed_offset + f.decompressed_size as u64)
    }

    /// Index of the frame holding decompressed byte `offset`.
    pub fn frame_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.decompressed_len() {
            return None;
        }
        let i = self
            .frames
            .partition_point(|f| f.decompressed_offset + f.decompressed_size as u64 <= offset);
        Some(i)
    }
}

/// Writes zstd's seekable format as a stream: data is cut into frames of at
/// most `frame_size` bytes, and wherever [`SeekableWriter::cut`] is called
/// (`pack` cuts at blob boundaries, so every blob decompresses on its own).
/// Frames are compressed `threads` at a time in parallel.
pub struct SeekableWriter<W: std::io::Write> {
    out: W,
    level: i32,
    frame_size: usize,
    threads: usize,
    current: Vec<u8>,
    pending: Vec<Vec<u8>>,
    entries: Vec<u8>,
    written: u64,
    consumed: u64,
}

impl<W: std::io::Write> SeekableWriter<W> {
    pub fn new(out: W, level: i32, frame_size: usize, threads: usize) -> Self {
        SeekableWriter {
            out,
            level,
            frame_size: frame_size.max(1),
            threads: threads.max(1),
            current: Vec::new(),
            pending: Vec::new(),
            entries: Vec::new(),
            written: 0,
            consumed: 0,
        }
    }

    /// Decompressed bytes taken so far.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// Compressed bytes written so far.
    pub fn compressed(&self) -> u64 {
        self.written
    }

    /// Ends the current frame here (no-op at a frame boundary).
    pub fn cut(&mut self) -> std::io::Result<()> {
        if !self.current.is_empty() {
            let frame = std::mem::take(&mut self.current);
            self.pending.push(frame);
            if self.pending.len() >= self.threads {
                self.flush_pending()?;
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> std::io::Result<()> {
        let level = self.level;
        let frames = std::mem::take(&mut self.pending);
        let compressed: Vec<std::io::Result<Vec<u8>>> = if frames.len() == 1 {
            vec![zstd::bulk::compress(&frames[0], level)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = frames
                    .iter()
                    .map(|f| s.spawn(move || zstd::bulk::compress(f, level)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("zstd compression thread panicked"))
                    .collect()
            })
        };
        for (frame, c) in frames.iter().zip(compressed) {
            let c = c?;
            self.out.write_all(&c)?;
            self.entries
                .extend_from_slice(&(c.len() as u32).to_le_bytes());
            self.entries
                .extend_from_slice(&(frame.len() as u32).to_le_bytes());
            self.written += c.len() as u64;
        }
        Ok(())
    }

    /// Writes the last frames and the seek table; returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.cut()?;
        self.flush_pending()?;
        let num_frames = (self.entries.len() / 8) as u32;
        self.out.write_all(&SEEK_TABLE_FRAME_MAGIC.to_le_bytes())?;
        self.out
            .write_all(&((self.entries.len() as u64 + FOOTER_LEN) as u32).to_le_bytes())?;
        self.out.write_all(&self.entries)?;
        self.out.write_all(&num_frames.to_le_bytes())?;
        self.out.write_all(&[0])?;
        self.out.write_all(&SEEKABLE_MAGIC.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: std::io::Write> std::io::Write for SeekableWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let room = self.frame_size - self.current.len();
            let take = room.min(buf.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.current.len() == self.frame_size {
                self.cut()?;
            }
        }
        self.consumed += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `data` as seekable zstd, cutting a frame every `frame_size` bytes
/// and wherever `boundaries` (decompressed offsets) say.
pub fn encode(
    data: &[u8],
    frame_size: usize,
    boundaries: &[u64],
    level: i32,
) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut w = SeekableWriter::new(Vec::new(), level, frame_size, 1);
    let mut cuts: Vec<u64> = boundaries
        .iter()
        .copied()
        .filter(|&b| b > 0 && b < data.len() as u64)
        .collect();
    cuts.push(data.len() as u64);
    cuts.sort_unstable();
    cuts.dedup();
    let mut start = 0usize;
    for cut in cuts {
        w.write_all(&data[start..cut as usize])?;
        w.cut()?;
        start = cut as usize;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn round_trips_and_stays_plain_zstd() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let enc = encode(&data, 100_000, &[12_345], 3).unwrap();
        // Any zstd decoder reads it (the seek table is a skippable frame).
        assert_eq!(zstd::decode_all(&enc[..]).unwrap(), data);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&enc).unwrap();
        let t = SeekTable::read(f.as_file(), enc.len() as u64).unwrap();
        assert_eq!(t.decompressed_len(), data.len() as u64);
        assert_eq!(t.frames[0].decompressed_size, 12_345);
        assert_eq!(t.frame_at(0), Some(0));
        assert_eq!(t.frame_at(12_345), Some(1));
        assert_eq!(t.frame_at(data.len() as u64), None);
        for fr in &t.frames {
            let c = &enc[fr.compressed_offset as usize..][..fr.compressed_size as usize];
            let d = zstd::bulk::decompress(c, fr.decompressed_size as usize).unwrap();
            assert_eq!(&data[fr.decompressed_offset as usize..][..d.len()], &d[..]);
        }
    }

    #[test]
    fn rejects_hostile_tables() {
        let data = vec![7u8; 1000];
        let good = encode(&data, 300, &[], 1).unwrap();
        let check = |bytes: &[u8]| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(bytes).unwrap();
            SeekTable::read(f.as_file(), bytes.len() as u64)
        };
        assert!(check(&good).is_ok());
        // Claims far more frames than the file holds.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&bad).is_err());
        // Reserved bits.
        let mut bad = good.clone();
        bad[n - 5] = 0x04;
        assert!(check(&bad).is_err());
        // A frame size that does not add up to where the table starts.
        let mut bad = good.clone();
        let entries_at = n - 9 - 4 * 8;
        bad[entries_at] ^= 1;
        assert!(check(&bad).is_err());
        assert!(check(&good[..10]).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let good = encode(&[7u8; 1000], 300, &[], 1).unwrap();
        let check = |bytes: &[u8]| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(bytes).unwrap();
            SeekTable::read(f.as_file(), bytes.len() as u64).unwrap_err()
        };
        let n = good.len();
        let mut bad = good.clone();
        bad[n - 5] = 0x04;
        let e = check(&bad);
        assert!(matches!(e, SeekTableError::ReservedBits(0x04)), "{e}");
        assert_eq!(e.to_string(), "reserved descriptor bits set (0x04)");
        let mut bad = good.clone();
        bad[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(check(&bad), SeekTableError::TooManyFrames(_)));
        assert!(matches!(check(&good[..10]), SeekTableError::TooShort));
        let mut entries = vec![0u8; 16];
        entries[8..12].copy_from_slice(&5u32.to_le_bytes());
        let e = SeekTable::from_entries(&entries, 8).unwrap_err();
        assert_eq!(e.to_string(), "frame 0 has a compressed size of 0");
    }
}
