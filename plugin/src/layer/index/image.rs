//! Lays a [`LayerTree`] out as an EROFS image holding only metadata.
//!
//! ```text
//! 0      1024        1152          1280
//! | zero | superblock | device slot | inodes (32-byte slots) ... | directory and symlink blocks |
//! ```
//!
//! The metadata area starts at block 0, so a node's nid is its byte offset
//! / 32; the root comes first (its nid must fit the superblock's 16 bits).
//! Each inode record is the inode (compact when its fields fit and its mtime
//! is the superblock's build time, else extended), its inline xattrs, then
//! either inline data (small directories, symlinks) or the chunk indexes of a
//! regular file. A record never crosses a block boundary unless it is larger
//! than a block (large xattrs only): the kernel refuses inline data that
//! does. Regular files are chunk-based: one chunk as large as the file (or
//! several of 1 TiB), each index naming device 1 (the backing tar) and the
//! block where the data starts in it. Larger directories and symlinks get
//! blocks of their own after the inodes.

use std::collections::{HashMap, VecDeque};

use crate::extract::tar::Time;

use super::format::{
    self, put_u16, put_u64, Inode, Superblock, BLOCK, BLOCK_USIZE, CHUNK_BITS_MAX,
    CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE, DEVT_SLOT_SIZE, DIRENT_SIZE, EXTENDED_SIZE,
    LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, NULL_ADDR, SLOT, SUPER_OFFSET,
    SUPER_SIZE, XATTR_ENTRY_HEADER, XATTR_HEADER_SIZE,
};
use super::tree::{Body, LayerTree, NodeId, Xattr, ROOT};

/// Why an image cannot be laid out (the layer is too large for the format
/// as written here).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("file data at offset {offset} is past the 2 TiB the 32-bit block addresses reach")]
    DataTooFar { offset: u64 },
    #[error("file data at offset {offset} is not on a 512-byte block boundary")]
    Unaligned { offset: u64 },
    #[error("the backing file ({len} bytes) is larger than the device table can describe")]
    BackingTooLarge { len: u64 },
    #[error("the metadata is larger than the format allows ({what})")]
    TooLarge { what: &'static str },
}

/// The device id of the backing tar in chunk indexes (0 is the image itself).
const BACKING_DEVICE: u16 = 1;
/// Where the device table sits, and where inodes start.
const DEVT_OFFSET: usize = SUPER_OFFSET + SUPER_SIZE;
const INODES_START: u64 = (DEVT_OFFSET + DEVT_SLOT_SIZE) as u64;

/// Where a node's data goes.
enum Data {
    None,
    /// In the inode record, right after the xattrs.
    Inline(Vec<u8>),
    /// In blocks of its own (`raw_blkaddr`), zero-padded to whole blocks.
    Blocks(Vec<u8>),
    /// Chunk indexes: the first block in the backing file, chunk size bits.
    Chunks {
        first: u64,
        chunk_bits: u32,
        count: u64,
    },
}

/// One node's inode record, planned.
struct Record {
    node: NodeId,
    inode: Inode,
    xattrs: Vec<u8>,
    data: Data,
    /// Byte offset in the image.
    pos: u64,
}

impl Record {
    fn inode_size(&self) -> usize {
        Inode::size_on_disk(self.inode.extended)
    }

    /// Bytes from the record start to where chunk indexes begin (8-aligned).
    fn chunk_start(&self) -> usize {
        (self.inode_size() + self.xattrs.len()).next_multiple_of(CHUNK_INDEX_SIZE)
    }

    fn size(&self) -> usize {
        let head = self.inode_size() + self.xattrs.len();
        match &self.data {
            Data::Inline(d) => head + d.len(),
            Data::Chunks { count, .. } => self.chunk_start() + *count as usize * CHUNK_INDEX_SIZE,
            _ => head,
        }
    }
}

/// What the image holds, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    pub inodes: u64,
    pub bytes: u64,
}

/// Writes the image of `tree`. File data offsets in the tree are offsets in
/// the layer's tar stream; `data_base` is where that stream starts in the
/// backing file (a multiple of 512), `backing_len` the backing file's length.
pub(super) fn write_image(
    tree: &LayerTree,
    data_base: u64,
    backing_len: u64,
    uuid: [u8; 16],
) -> Result<(Vec<u8>, ImageStats), ImageError> {
    if !data_base.is_multiple_of(BLOCK) {
        return Err(ImageError::Unaligned { offset: data_base });
    }
    let backing_blocks = u32::try_from(backing_len.div_ceil(BLOCK))
        .map_err(|_| ImageError::BackingTooLarge { len: backing_len })?;

    // 1. Every reachable node once, breadth first from the root; link counts.
    // Per-node tables are vectors indexed by node id, not hash maps: a few
    // bytes per node instead of tens, for millions of nodes.
    let n = tree.nodes.len();
    if n >= u32::MAX as usize {
        return Err(ImageError::TooLarge { what: "inodes" });
    }
    const NONE: u32 = u32::MAX;
    let mut order: Vec<NodeId> = vec![ROOT];
    let mut index_of: Vec<u32> = vec![NONE; n];
    let mut parent_of: Vec<u32> = vec![NONE; n];
    let mut links: Vec<u32> = vec![0; n];
    let mut subdirs: Vec<u32> = vec![0; n];
    index_of[ROOT] = 0;
    parent_of[ROOT] = ROOT as u32;
    let mut queue = VecDeque::from([ROOT]);
    while let Some(dir) = queue.pop_front() {
        let Body::Dir(children) = &tree.nodes[dir].body else {
            continue;
        };
        for &child in children.values() {
            links[child] = links[child].saturating_add(1);
            if index_of[child] != NONE {
                continue; // another hard link to it
            }
            index_of[child] = order.len() as u32;
            order.push(child);
            if tree.nodes[child].is_dir() {
                subdirs[dir] += 1;
                parent_of[child] = dir as u32;
                queue.push_back(child);
            }
        }
    }

    // 2. The most common mtime becomes the build time: those inodes can be compact.
    let mut times: HashMap<Time, u64> = HashMap::new();
    for &id in &order {
        if let Some(t) = tree.nodes[id].mtime {
            *times.entry(t).or_default() += 1;
        }
    }
    let build_time = times
        .into_iter()
        .max_by_key(|&(t, n)| (n, std::cmp::Reverse((t.sec, t.nsec))))
        .map(|(t, _)| t)
        .unwrap_or_default();

    // 3. Records: inode fields, xattrs, and how the data is stored.
    let mut records = Vec::with_capacity(order.len());
    for (i, &id) in order.iter().enumerate() {
        let node = &tree.nodes[id];
        let mtime = node.mtime.unwrap_or(build_time);
        let nlink = if node.is_dir() {
            2 + subdirs[id]
        } else {
            links[id].max(1)
        };
        let xattrs = encode_xattrs(node.xattrs())?;
        let (kind, data, size) = match &node.body {
            Body::Dir(children) => {
                let parent = parent_of[id] as NodeId;
                let mut entries: Vec<(&[u8], NodeId)> = Vec::with_capacity(children.len() + 2);
                entries.push((b".", id));
                entries.push((b"..", parent));
                entries.extend(children.iter().map(|(n, &c)| (&**n, c)));
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                // nids are not known yet: blocks are filled in later, sizes now.
                let blocks = dir_blocks(&entries);
                let data = if blocks.len() == 1 {
                    let used = blocks[0].iter().map(|e| DIRENT_SIZE + e.0.len()).sum();
                    Data::Inline(vec![0; used])
                } else {
                    Data::Blocks(vec![0; blocks.len() * BLOCK_USIZE])
                };
                (format::S_IFDIR, data, 0)
            }
            Body::File { offset, size } => {
                let data = if *size == 0 {
                    Data::None
                } else {
                    let abs = data_base + offset;
                    if !abs.is_multiple_of(BLOCK) {
                        return Err(ImageError::Unaligned { offset: abs });
                    }
                    let chunk_bits = chunk_bits(*size);
                    let count = size.div_ceil(BLOCK << chunk_bits);
                    let first = abs / BLOCK;
                    let last = first + ((count - 1) << chunk_bits);
                    if last >= NULL_ADDR {
                        return Err(ImageError::DataTooFar { offset: abs });
                    }
                    Data::Chunks {
                        first,
                        chunk_bits,
                        count,
                    }
                };
                (format::S_IFREG, data, *size)
            }
            Body::Symlink(target) => (
                format::S_IFLNK,
                Data::Inline(target.to_vec()),
                target.len() as u64,
            ),
            Body::Char { .. } => (format::S_IFCHR, Data::None, 0),
            Body::Block { .. } => (format::S_IFBLK, Data::None, 0),
            Body::Fifo => (format::S_IFIFO, Data::None, 0),
        };
        let union = match &node.body {
            Body::Char { major, minor } | Body::Block { major, minor } => {
                format::encode_dev(*major, *minor).unwrap_or(0)
            }
            _ => 0,
        };
        let compact = mtime == build_time
            && node.uid <= u32::from(u16::MAX)
            && node.gid <= u32::from(u16::MAX)
            && nlink <= u32::from(u16::MAX)
            && size <= u64::from(u32::MAX);
        let xattr_icount = if xattrs.is_empty() {
            0
        } else {
            u16::try_from(1 + (xattrs.len() - XATTR_HEADER_SIZE) / 4).map_err(|_| {
                ImageError::TooLarge {
                    what: "xattrs of one file",
                }
            })?
        };
        let mut rec = Record {
            node: id,
            inode: Inode {
                extended: !compact,
                layout: LAYOUT_FLAT_PLAIN,
                xattr_icount,
                mode: kind | node.perm,
                nlink,
                size,
                union,
                ino: i as u32 + 1,
                uid: node.uid,
                gid: node.gid,
                mtime: mtime.sec,
                mtime_nsec: mtime.nsec,
            },
            xattrs,
            data,
            pos: 0,
        };
        // Inline data must share the inode's block: too large, it gets blocks.
        if let Data::Inline(d) = &rec.data {
            if rec.size() > BLOCK_USIZE {
                let mut blocks = d.clone();
                if kind == format::S_IFDIR {
                    blocks.resize(BLOCK_USIZE, 0); // one full directory block
                } else {
                    blocks.resize(blocks.len().next_multiple_of(BLOCK_USIZE), 0);
                }
                rec.data = Data::Blocks(blocks);
            }
        }
        match &rec.data {
            Data::Inline(d) => {
                rec.inode.layout = LAYOUT_FLAT_INLINE;
                if kind == format::S_IFDIR {
                    rec.inode.size = d.len() as u64;
                }
            }
            Data::Blocks(b) => {
                if kind == format::S_IFDIR {
                    rec.inode.size = b.len() as u64;
                }
            }
            Data::Chunks { chunk_bits, .. } => {
                rec.inode.layout = LAYOUT_CHUNK_BASED;
                rec.inode.union = u32::from(CHUNK_FORMAT_INDEXES) | chunk_bits;
            }
            Data::None => {}
        }
        // A directory's size must fit the compact form too.
        if !rec.inode.extended && rec.inode.size > u64::from(u32::MAX) {
            rec.inode.extended = true;
        }
        records.push(rec);
    }

    // 4. Positions: records in order, none crossing a block boundary unless
    // larger than a block.
    let mut pos = INODES_START;
    for rec in &mut records {
        let size = rec.size() as u64;
        let off_in_block = pos % BLOCK;
        if (size > BLOCK || off_in_block + size > BLOCK) && off_in_block != 0 {
            pos = pos.next_multiple_of(BLOCK);
        }
        rec.pos = pos;
        pos += size.next_multiple_of(SLOT);
    }
    if records[0].pos / SLOT > u64::from(u16::MAX) {
        return Err(ImageError::TooLarge { what: "root nid" });
    }
    let mut next_block = pos.div_ceil(BLOCK);
    let mut raw_blkaddr = vec![0u64; records.len()];
    for (i, rec) in records.iter().enumerate() {
        if let Data::Blocks(b) = &rec.data {
            raw_blkaddr[i] = next_block;
            next_block += b.len() as u64 / BLOCK;
        }
    }
    let total_blocks =
        u32::try_from(next_block).map_err(|_| ImageError::TooLarge { what: "image size" })?;
    if next_block >= NULL_ADDR {
        return Err(ImageError::TooLarge { what: "image size" });
    }
    let nids: Vec<u64> = records.iter().map(|r| r.pos / SLOT).collect();
    let nid_of = |id: NodeId| nids[index_of[id] as usize];

    // 5. Bytes.
    let mut image = vec![0u8; next_block as usize * BLOCK_USIZE];
    Superblock {
        root_nid: nid_of(ROOT) as u16,
        inodes: records.len() as u64,
        build_time: build_time.sec,
        build_time_nsec: build_time.nsec,
        blocks: total_blocks,
        uuid,
        devt_offset: DEVT_OFFSET,
        extra_devices: 1,
    }
    .write(&mut image);
    format::write_device_slot(&mut image, DEVT_OFFSET, backing_blocks);
    for (i, rec) in records.iter_mut().enumerate() {
        // Directory contents, now that every nid is known.
        if let Body::Dir(children) = &tree.nodes[rec.node].body {
            let parent = parent_of[rec.node] as NodeId;
            let mut entries: Vec<(&[u8], NodeId)> = Vec::with_capacity(children.len() + 2);
            entries.push((b".", rec.node));
            entries.push((b"..", parent));
            entries.extend(children.iter().map(|(n, &c)| (&**n, c)));
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let blocks = dir_blocks(&entries);
            let out: &mut Vec<u8> = match &mut rec.data {
                Data::Inline(d) | Data::Blocks(d) => d,
                _ => unreachable!("a directory's data is inline or in blocks"),
            };
            for (b, block) in blocks.iter().enumerate() {
                let base = b * BLOCK_USIZE;
                let mut nameoff = block.len() * DIRENT_SIZE;
                for (j, &(name, child)) in block.iter().enumerate() {
                    let d = base + j * DIRENT_SIZE;
                    put_u64(out, d, nid_of(child));
                    put_u16(out, d + 8, nameoff as u16);
                    out[d + 10] = file_type(&tree.nodes[child].body);
                    out[base + nameoff..base + nameoff + name.len()].copy_from_slice(name);
                    nameoff += name.len();
                }
            }
        }
        if let Data::Blocks(_) = rec.data {
            rec.inode.union = raw_blkaddr[i] as u32;
        }
        let start = rec.pos as usize;
        rec.inode.write(&mut image[start..]);
        let mut at = start + rec.inode_size();
        image[at..at + rec.xattrs.len()].copy_from_slice(&rec.xattrs);
        at += rec.xattrs.len();
        match &rec.data {
            Data::Inline(d) => image[at..at + d.len()].copy_from_slice(d),
            Data::Blocks(d) => {
                let b = raw_blkaddr[i] as usize * BLOCK_USIZE;
                image[b..b + d.len()].copy_from_slice(d);
            }
            Data::Chunks {
                first,
                chunk_bits,
                count,
            } => {
                let mut at = start + rec.chunk_start();
                for c in 0..*count {
                    let blk = first + (c << chunk_bits);
                    format::write_chunk_index(&mut image[at..], BACKING_DEVICE, blk as u32);
                    at += CHUNK_INDEX_SIZE;
                }
            }
            Data::None => {}
        }
    }
    debug_assert!(records.iter().all(|r| r.inode_size() <= EXTENDED_SIZE));
    let stats = ImageStats {
        inodes: records.len() as u64,
        bytes: image.len() as u64,
    };
    Ok((image, stats))
}

/// Chunk size exponent (above the block size) for a file of `size` bytes:
/// one chunk holding the whole file, up to the largest chunk (1 TiB).
fn chunk_bits(size: u64) -> u32 {
    let blocks = size.div_ceil(BLOCK);
    let bits = if blocks <= 1 {
        0
    } else {
        64 - (blocks - 1).leading_zeros()
    };
    bits.min(CHUNK_BITS_MAX)
}

/// Splits sorted directory entries into blocks: dirents first, then names.
fn dir_blocks<'a>(entries: &[(&'a [u8], NodeId)]) -> Vec<Vec<(&'a [u8], NodeId)>> {
    let mut blocks: Vec<Vec<(&[u8], NodeId)>> = vec![Vec::new()];
    let mut used = 0;
    for &(name, id) in entries {
        let need = DIRENT_SIZE + name.len();
        if used + need > BLOCK_USIZE {
            blocks.push(Vec::new());
            used = 0;
        }
        used += need;
        blocks
            .last_mut()
            .expect("one block at least")
            .push((name, id));
    }
    blocks
}

fn file_type(body: &Body) -> u8 {
    match body {
        Body::Dir(_) => format::FT_DIR,
        Body::File { .. } => format::FT_REG,
        Body::Symlink(_) => format::FT_SYMLINK,
        Body::Char { .. } => format::FT_CHR,
        Body::Block { .. } => format::FT_BLK,
        Body::Fifo => format::FT_FIFO,
    }
}

/// The inline xattr body: a 12-byte header (no shared xattrs), then each
/// entry (name length, prefix index, value size, name, value) 4-aligned.
/// Empty when there are none.
fn encode_xattrs(xattrs: &[Xattr]) -> Result<Vec<u8>, ImageError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; XATTR_HEADER_SIZE];
    for (name, value) in xattrs {
        // The tree keeps only names with an index.
        let Some((index, rest)) = format::xattr_index(name) else {
            continue;
        };
        let start = out.len();
        out.resize(start + XATTR_ENTRY_HEADER, 0);
        out[start] = rest.len() as u8;
        out[start + 1] = index;
        put_u16(&mut out, start + 2, value.len() as u16);
        out.extend_from_slice(rest);
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    if out.len() == XATTR_HEADER_SIZE {
        return Ok(Vec::new());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_cover_the_file() {
        assert_eq!(chunk_bits(1), 0);
        assert_eq!(chunk_bits(512), 0);
        assert_eq!(chunk_bits(513), 1);
        assert_eq!(chunk_bits(1024), 1);
        assert_eq!(chunk_bits(1025), 2);
        assert_eq!(chunk_bits(5 << 30), 24);
        assert_eq!(chunk_bits(u64::MAX / 2), CHUNK_BITS_MAX);
        for size in [1u64, 511, 512, 513, 4096, 4097, 1 << 33, (1 << 33) + 1] {
            assert!(BLOCK << chunk_bits(size) >= size);
        }
    }

    #[test]
    fn directory_blocks_never_overflow() {
        let names: Vec<Vec<u8>> = (0..100)
            .map(|i| vec![b'a' + (i % 26) as u8; 40 + i])
            .collect();
        let entries: Vec<(&[u8], NodeId)> = names.iter().map(|n| (n.as_slice(), 1)).collect();
        let blocks = dir_blocks(&entries);
        assert_eq!(blocks.iter().map(Vec::len).sum::<usize>(), 100);
        for b in &blocks {
            let used: usize = b.iter().map(|e| DIRENT_SIZE + e.0.len()).sum();
            assert!(used <= BLOCK_USIZE && !b.is_empty());
        }
    }
}
