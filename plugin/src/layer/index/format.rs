//! The EROFS on-disk structures this writer uses, encoded by hand
//! (little-endian, fixed offsets), as the kernel's `fs/erofs/erofs_fs.h`
//! defines them. Only the uncompressed subset: superblock, one device slot,
//! compact and extended inodes, inline xattrs, chunk indexes and dirents.

/// Block size: the tar block, so every tar data offset is a block address.
pub(super) const BLOCK_BITS: u8 = 9;
pub(super) const BLOCK: u64 = 1 << BLOCK_BITS;
pub(super) const BLOCK_USIZE: usize = 1 << BLOCK_BITS;

pub(super) const SUPER_OFFSET: usize = 1024;
pub(super) const SUPER_SIZE: usize = 128;
pub(crate) const MAGIC: u32 = 0xE0F5_E1E2;
pub(super) const INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
pub(super) const INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;
pub(super) const DEVT_SLOT_SIZE: usize = 128;

/// Inodes are addressed in 32-byte slots: nid = offset / 32 (the metadata
/// area starts at block 0 here).
pub(super) const SLOT: u64 = 32;
pub(super) const COMPACT_SIZE: usize = 32;
pub(super) const EXTENDED_SIZE: usize = 64;

pub(super) const LAYOUT_FLAT_PLAIN: u16 = 0;
pub(super) const LAYOUT_FLAT_INLINE: u16 = 2;
pub(super) const LAYOUT_CHUNK_BASED: u16 = 4;
/// Chunk-based inode with 8-byte chunk indexes (which carry a device id),
/// not a bare block address array.
pub(super) const CHUNK_FORMAT_INDEXES: u16 = 0x0020;
/// Largest chunk size exponent above the block size (5-bit field).
pub(super) const CHUNK_BITS_MAX: u32 = 31;
pub(super) const CHUNK_INDEX_SIZE: usize = 8;
/// Block addresses are 32-bit; all ones means a hole.
pub(super) const NULL_ADDR: u64 = u32::MAX as u64;

pub(super) const XATTR_HEADER_SIZE: usize = 12;
pub(super) const XATTR_ENTRY_HEADER: usize = 4;
pub(super) const DIRENT_SIZE: usize = 12;
pub(super) const NAME_MAX: usize = 255;

pub(super) const S_IFDIR: u32 = 0o040000;
pub(super) const S_IFREG: u32 = 0o100000;
pub(super) const S_IFLNK: u32 = 0o120000;
pub(super) const S_IFCHR: u32 = 0o020000;
pub(super) const S_IFBLK: u32 = 0o060000;
pub(super) const S_IFIFO: u32 = 0o010000;

/// Dirent file types (the kernel's `FT_*`).
pub(super) const FT_REG: u8 = 1;
pub(super) const FT_DIR: u8 = 2;
pub(super) const FT_CHR: u8 = 3;
pub(super) const FT_BLK: u8 = 4;
pub(super) const FT_FIFO: u8 = 5;
pub(super) const FT_SYMLINK: u8 = 7;

/// Xattr name prefixes by index (`EROFS_XATTR_INDEX_*`): the index stored
/// and the full name it stands for (a prefix, or a whole name for the ACLs).
pub(super) const XATTR_PREFIXES: &[(u8, &[u8], bool)] = &[
    (1, b"user.", true),
    (2, b"system.posix_acl_access", false),
    (3, b"system.posix_acl_default", false),
    (4, b"trusted.", true),
    (6, b"security.", true),
];

/// The index and remaining name an xattr is stored under; `None` for a
/// namespace EROFS (and Linux) has no handler for.
pub(super) fn xattr_index(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_PREFIXES
        .iter()
        .find_map(|&(index, prefix, is_prefix)| {
            if is_prefix {
                name.strip_prefix(prefix)
                    .filter(|rest| !rest.is_empty())
                    .map(|rest| (index, rest))
            } else {
                (name == prefix).then_some((index, &b""[..]))
            }
        })
}

pub(super) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// The superblock's fields this writer sets; the rest stay zero.
pub(super) struct Superblock {
    pub root_nid: u16,
    pub inodes: u64,
    pub build_time: i64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub uuid: [u8; 16],
    /// Byte offset of the device table (a multiple of the slot size).
    pub devt_offset: usize,
    pub extra_devices: u16,
}

impl Superblock {
    /// Writes the superblock at [`SUPER_OFFSET`] of `image`.
    pub fn write(&self, image: &mut [u8]) {
        let b = &mut image[SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE];
        put_u32(b, 0, MAGIC);
        // 4: checksum, unused (no COMPAT_SB_CHKSUM); 8: feature_compat.
        b[12] = BLOCK_BITS;
        // 13: sb_extslots.
        put_u16(b, 14, self.root_nid);
        put_u64(b, 16, self.inodes);
        put_u64(b, 24, self.build_time as u64);
        put_u32(b, 32, self.build_time_nsec);
        put_u32(b, 36, self.blocks);
        // 40: meta_blkaddr = 0, 44: xattr_blkaddr = 0 (no shared xattrs).
        b[48..64].copy_from_slice(&self.uuid);
        // 64: volume_name.
        put_u32(b, 80, INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE);
        put_u16(b, 86, self.extra_devices);
        put_u16(b, 88, (self.devt_offset / DEVT_SLOT_SIZE) as u16);
        // 90: dirblkbits = 0 (directory blocks are file system blocks).
    }
}

/// One device table slot: an extra device of `blocks` blocks, addressed by
/// device id (no unified address space: `mapped_blkaddr` 0).
pub(super) fn write_device_slot(image: &mut [u8], off: usize, blocks: u32) {
    let b = &mut image[off..off + DEVT_SLOT_SIZE];
    put_u32(b, 64, blocks);
}

/// The inode fields, written compact or extended.
pub(super) struct Inode {
    pub extended: bool,
    pub layout: u16,
    pub xattr_icount: u16,
    /// File type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    /// `raw_blkaddr`, `rdev` or the chunk format, by file type and layout.
    pub union: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    /// Only for extended inodes; compact ones take the superblock's time.
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl Inode {
    pub fn size_on_disk(extended: bool) -> usize {
        if extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        }
    }

    /// Writes the inode at the start of `b`. The caller checked that every
    /// field fits the compact form when `extended` is false.
    pub fn write(&self, b: &mut [u8]) {
        let format = u16::from(self.extended) | (self.layout << 1);
        put_u16(b, 0, format);
        put_u16(b, 2, self.xattr_icount);
        put_u16(b, 4, self.mode as u16);
        if self.extended {
            // 6: reserved.
            put_u64(b, 8, self.size);
            put_u32(b, 16, self.union);
            put_u32(b, 20, self.ino);
            put_u32(b, 24, self.uid);
            put_u32(b, 28, self.gid);
            put_u64(b, 32, self.mtime as u64);
            put_u32(b, 40, self.mtime_nsec);
            put_u32(b, 44, self.nlink);
        } else {
            put_u16(b, 6, self.nlink as u16);
            put_u32(b, 8, self.size as u32);
            // 12: reserved (an mtime offset only with COMPAT_MTIME, unused).
            put_u32(b, 16, self.union);
            put_u32(b, 20, self.ino);
            put_u16(b, 24, self.uid as u16);
            put_u16(b, 26, self.gid as u16);
        }
    }
}

/// The kernel's `new_encode_dev`: 12-bit major, 20-bit minor.
pub(super) fn encode_dev(major: u32, minor: u32) -> Option<u32> {
    if major > 0xfff || minor > 0xf_ffff {
        return None;
    }
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// Writes one chunk index: `blkaddr` on device `device_id`.
pub(super) fn write_chunk_index(b: &mut [u8], device_id: u16, blkaddr: u32) {
    put_u16(b, 0, 0);
    put_u16(b, 2, device_id);
    put_u32(b, 4, blkaddr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_prefixes() {
        assert_eq!(xattr_index(b"user.a"), Some((1, &b"a"[..])));
        assert_eq!(
            xattr_index(b"trusted.overlay.opaque"),
            Some((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(
            xattr_index(b"security.capability"),
            Some((6, &b"capability"[..]))
        );
        assert_eq!(xattr_index(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(xattr_index(b"system.posix_acl_accessx"), None);
        assert_eq!(xattr_index(b"user."), None);
        assert_eq!(xattr_index(b"lustre.x"), None);
    }

    #[test]
    fn device_numbers() {
        assert_eq!(encode_dev(1, 3), Some(0x103));
        assert_eq!(encode_dev(0, 0), Some(0));
        assert_eq!(
            encode_dev(259, 0x12345),
            Some(0x45 | (259 << 8) | (0x12300 << 12))
        );
        assert_eq!(encode_dev(4096, 0), None);
    }
}
