//! Finding and detaching the mounts a test left under its directories.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

/// Mount points at or below `root`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape(escaped)))
        .filter(|mount_point| mount_point.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// Detaches every mount at or below `root` (lazily, so a busy mount does not
/// keep the test from cleaning up). Errors are reported, not returned: this
/// runs from `Drop`.
pub fn unmount_under(root: &Path) {
    // A mount point can be stacked several times; retry a few rounds.
    for _ in 0..5 {
        let found = mounts_under(root);
        if found.is_empty() {
            return;
        }
        for mount_point in found {
            if let Err(err) = umount2(&mount_point, MntFlags::MNT_DETACH) {
                eprintln!("warning: unmounting {}: {err}", mount_point.display());
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\\"), r"/end\\");
    }
}
