//! The path rules extraction and the EROFS index share: what a layer may
//! name, and where a link may point.

/// Why a path in the archive is not a plain relative path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadPath {
    Absolute,
    DotDot,
    Nul,
}

impl BadPath {
    /// The reason, for an entry's own path.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            BadPath::Absolute => "absolute path",
            BadPath::DotDot => "'..' component",
            BadPath::Nul => "NUL byte in path",
        }
    }

    /// The reason, for a hard link's target.
    pub(crate) fn link_reason(self) -> &'static str {
        match self {
            BadPath::Absolute => "hard link to an absolute path",
            BadPath::DotDot => "hard link target with a '..' component",
            BadPath::Nul => "NUL byte in path",
        }
    }
}

/// The entry path as a list of plain components joined by `/`: `.` and empty
/// components dropped, `..` and absolute paths refused.
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<u8>, BadPath> {
    if raw.first() == Some(&b'/') {
        return Err(BadPath::Absolute);
    }
    if raw.contains(&0) {
        return Err(BadPath::Nul);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(BadPath::DotDot),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a normalized path into its directory (empty for the root) and name.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Whether a symlink in directory `dir` (normalized) with this target leads
/// outside the layer root when followed: absolute, or `..` above the root.
pub(crate) fn symlink_escapes(dir: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let mut depth: i64 = if dir.is_empty() {
        0
    } else {
        dir.split(|&b| b == b'/').count() as i64
    };
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Xattr names that are never taken from an archive: the overlayfs ones would
/// let a layer steer overlayfs lookups (redirects, metacopy, origin). OCI
/// expresses opaque directories with `.wh..wh..opq`.
pub(crate) fn xattr_refused(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}
