//! The outer container of an archive file, told by magic bytes (never by the
//! file name: a `.tar.gz` renamed to `.tar` still works), and the decoders
//! that turn it back into the tar stream.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::seekable::{read_full_at, SeekTable, SeekTableError, SEEKABLE_MAGIC};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Container {
    Tar,
    Gzip,
    /// zstd, one or more frames, no seek table.
    Zstd,
    /// zstd's seekable format: frames plus a seek-table skippable frame.
    SeekableZstd,
    Lz4,
    Bzip2,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::Tar => "tar",
            Container::Gzip => "gzip",
            Container::Zstd => "zstd",
            Container::SeekableZstd => "seekable zstd",
            Container::Lz4 => "lz4",
            Container::Bzip2 => "bzip2",
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
const BZIP2_MAGIC: [u8; 3] = *b"BZh";

/// The largest zstd window accepted (`zstd --long=31`).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 31;

/// What a buffer's first bytes say it is, for a whole archive or for one
/// blob inside it. `None` when it is none of the compressed formats.
pub fn sniff_compression(head: &[u8]) -> Option<Container> {
    if head.starts_with(&GZIP_MAGIC) {
        Some(Container::Gzip)
    } else if head.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(head) {
        Some(Container::Zstd)
    } else if head.starts_with(&LZ4_MAGIC) {
        Some(Container::Lz4)
    } else if head.starts_with(&BZIP2_MAGIC) && head.len() > 3 && (b'1'..=b'9').contains(&head[3]) {
        Some(Container::Bzip2)
    } else {
        None
    }
}

fn is_zstd_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

/// True if `block` is a tar header block with a valid checksum.
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let Some(stored) = parse_octal(&block[148..156]) else {
        return false;
    };
    let sum: u64 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u64
            } else {
                b as u64
            }
        })
        .sum();
    sum == stored
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(s, 8).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    #[error("empty file")]
    Empty,
    #[error("not an image archive: neither tar, gzip, zstd, lz4 nor bzip2")]
    Unknown,
    #[error("bad zstd seek table: {0}")]
    SeekTable(#[from] SeekTableError),
}

/// Tells the container of `file` (of length `len`) from its first and last
/// bytes. For seekable zstd, also returns the parsed seek table.
pub fn sniff(file: &File, len: u64) -> Result<(Container, Option<SeekTable>), ContainerError> {
    if len == 0 {
        return Err(ContainerError::Empty);
    }
    let mut head = [0u8; 512];
    let n = read_full_at(file, &mut head, 0)?;
    let head = &head[..n];
    match sniff_compression(head) {
        Some(Container::Zstd) => {
            let mut tail = [0u8; 4];
            if len >= 9
                && read_full_at(file, &mut tail, len - 4)? == 4
                && u32::from_le_bytes(tail) == SEEKABLE_MAGIC
            {
                let table = SeekTable::read(file, len)?;
                Ok((Container::SeekableZstd, Some(table)))
            } else {
                Ok((Container::Zstd, None))
            }
        }
        Some(c) => Ok((c, None)),
        None if is_tar_header(head) => Ok((Container::Tar, None)),
        None => Err(ContainerError::Unknown),
    }
}

/// A decoder for the whole stream of `container` over `input`.
/// Decodes a whole archive file from its first byte. Reads with `pread`, so
/// the stream neither depends on nor moves the offset of a shared handle:
/// concurrent decoders of one file, and a handle someone already read from,
/// are fine.
pub fn decode_file(file: Arc<File>, container: Container) -> io::Result<Box<dyn Read + Send>> {
    decoder(FileAt { file, pos: 0 }, container)
}

/// A `Read` over a file from its start with a position of its own (`pread`).
struct FileAt {
    file: Arc<File>,
    pos: u64,
}

impl Read for FileAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

pub fn decoder<R: Read + Send + 'static>(
    input: R,
    container: Container,
) -> io::Result<Box<dyn Read + Send>> {
    const BUF: usize = 256 * 1024;
    let input = BufReader::with_capacity(BUF, input);
    Ok(match container {
        Container::Tar => Box::new(input),
        Container::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Container::Zstd | Container::SeekableZstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(d)
        }
        Container::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        Container::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, "x", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn sniffs_by_content_not_name() {
        let tar = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(&tar).unwrap();
        let lz = lz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&tar).unwrap();
        let bz = bz.finish().unwrap();
        for (bytes, want) in [
            (&tar, Container::Tar),
            (&gz, Container::Gzip),
            (&zst, Container::Zstd),
            (&lz, Container::Lz4),
            (&bz, Container::Bzip2),
        ] {
            let (f, len) = file_with(bytes);
            let (got, _) = sniff(f.as_file(), len).unwrap();
            assert_eq!(got, want);
            let mut out = Vec::new();
            decoder(f.reopen().unwrap(), got)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, tar, "{want:?} round trip");
        }
    }

    #[test]
    fn rejects_garbage_and_empty() {
        let (f, len) = file_with(b"");
        assert!(matches!(
            sniff(f.as_file(), len),
            Err(ContainerError::Empty)
        ));
        let (f, len) = file_with(&[0x42; 2000]);
        assert!(matches!(
            sniff(f.as_file(), len),
            Err(ContainerError::Unknown)
        ));
    }
}
