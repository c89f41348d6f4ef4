//! containerd's `imports`: drop-in files (`conf.d`).
//!
//! A containerd config may list other files to load after it
//! (`imports = ['/etc/containerd/conf.d/*.toml']`, the default of
//! `containerd config default` from 2.2; a relative path is relative to the
//! config's directory, a `*` is a glob, matches loaded in lexical order,
//! each file's own imports after it). How an imported file merges into what
//! came before decides whether the wiring can live in one (read in
//! containerd 2.3.7's `cmd/containerd/server/config` and checked with
//! `containerd config dump` on 2.3.7):
//!
//! - 2.x (`version = 3` or 4 files): plugin tables are merged key by key,
//!   recursively; a value (arrays included: `unpack_config`) replaces the
//!   earlier one; `[proxy_plugins.NAME]` replaces the earlier table of that
//!   name. A drop-in holding the wiring's tables leaves the rest of
//!   config.toml in force, except `unpack_config`, which it replaces whole:
//!   the drop-in carries config.toml's entries too.
//! - 1.x (`version = 2`): each `[plugins."NAME"]` of an import replaces the
//!   whole earlier table, so a drop-in setting CRI's snapshotter would drop
//!   every other CRI setting of config.toml: `config --merge` edits
//!   config.toml there.
//!
//! [`target`] decides where `config --merge` writes; [`drop_in_text`] is the
//! drop-in it writes; [`load`] is the config containerd ends up with, for
//! `doctor`.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::merge::{self, MergeError};
use super::{ContainerdVersion, Wiring, TRANSFER_TABLE, UNPACK_CONFIG};

/// The first line of every drop-in `config --merge` writes: the mark by
/// which `config --revert` knows a file is its own (it never removes a
/// file without it).
pub const MARKER: &str =
    "# Written by `airgap-snapshotter config --merge`; `config --merge FILE --revert` removes it.";

/// The drop-in's name stem: `*` of the import glob is replaced by it.
pub const NAME: &str = "airgap-snapshotter";

/// At most this many files are read through `imports` (containerd has no
/// limit; a loop of imports is cut by the loaded set, as containerd does).
const MAX_FILES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DropInError {
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("{}: `imports` entry {pattern:?} is not a valid glob: {source}", path.display())]
    Pattern {
        path: PathBuf,
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("read {} (imported by {}): {source}", path.display(), by.display())]
    Read {
        path: PathBuf,
        by: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid TOML file: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{} (imported by {}): more than {MAX_FILES} files through `imports`", path.display(), by.display())]
    TooMany { path: PathBuf, by: PathBuf },
}

/// Where `config --merge` puts the wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Edit config.toml itself; why not a drop-in.
    ConfigToml { why: String },
    /// A drop-in file in a directory config.toml imports.
    DropIn {
        /// The file to write (its name matches `import`).
        file: PathBuf,
        /// The `imports` entry that covers it, as written in config.toml.
        import: String,
    },
}

/// The `imports` entries of a config (strings only).
fn imports_of(value: &toml::Value) -> Vec<String> {
    value
        .get("imports")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// An import as containerd resolves it: cleaned, relative to the config's
/// directory unless absolute.
fn resolve(config: &Path, import: &str) -> PathBuf {
    let p = Path::new(import);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.parent().unwrap_or_else(|| Path::new(".")).join(p)
    };
    // filepath.Clean: drop `.`, fold `..` lexically.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The drop-in file an import glob covers: its directory part must be a
/// plain directory and its file part a pattern with `*` and no other glob
/// syntax; the name is the pattern with its first `*` replaced by [`NAME`]
/// (and the others by nothing): `conf.d/*.toml` -> `conf.d/airgap-snapshotter.toml`.
fn drop_in_for(config: &Path, import: &str) -> Option<PathBuf> {
    let resolved = resolve(config, import);
    let pattern = resolved.file_name()?.to_str()?;
    let dir = resolved.parent()?;
    if !pattern.contains('*') || pattern.contains(['?', '[', '\\']) {
        return None;
    }
    if has_meta(&dir.to_string_lossy()) {
        return None;
    }
    let name = pattern.replacen('*', NAME, 1).replace('*', "");
    let matcher = glob::Pattern::new(pattern).ok()?;
    matcher.matches(&name).then(|| dir.join(name))
}

/// Where `config --merge` should put the wiring for the config `text` read
/// from `path`, whose layout is `version`: a drop-in when the file is a
/// 2.x config (`version` 3 or 4) whose `imports` has a directory glob
/// (`conf.d/*.toml`), else config.toml itself.
pub fn target(path: &Path, text: &str, version: ContainerdVersion) -> Result<Target, DropInError> {
    let value: toml::Value = text.parse().map_err(|source| DropInError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let imports = imports_of(&value);
    if version == ContainerdVersion::V1 {
        let why = if imports.is_empty() {
            "it imports no drop-in directory".to_string()
        } else {
            "a containerd 1.x config (version = 2): containerd 1.x replaces a whole plugin table \
             from an imported file, so a drop-in would drop config.toml's other CRI settings"
                .to_string()
        };
        return Ok(Target::ConfigToml { why });
    }
    for import in &imports {
        if let Some(file) = drop_in_for(path, import) {
            return Ok(Target::DropIn {
                file,
                import: import.clone(),
            });
        }
    }
    Ok(Target::ConfigToml {
        why: if imports.is_empty() {
            "it imports no drop-in directory (`imports` is empty)".to_string()
        } else {
            format!(
                "none of its imports ({}) is a directory glob such as conf.d/*.toml",
                imports.join(", ")
            )
        },
    })
}

/// The `version` number written in a config (3 when absent or odd: the
/// drop-in is only written for 2.x configs).
fn version_number(value: &toml::Value) -> i64 {
    value
        .get("version")
        .and_then(toml::Value::as_integer)
        .filter(|v| (3..=4).contains(v))
        .unwrap_or(3)
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The drop-in `config --merge` writes for the 2.x config `main_text`
/// (read from `main`; `file` is the drop-in's path, named in its header):
/// [`MARKER`], the same `version` as config.toml, the wiring's tables and
/// `unpack_config` list. The list replaces config.toml's (see the module
/// doc), so config.toml's entries come first, then the wiring's it lacks.
/// Refuses what `--merge` refuses (legacy CRI mirrors in config.toml).
pub fn drop_in_text(
    main: &Path,
    main_text: &str,
    wiring: &Wiring,
    file: &Path,
) -> Result<String, DropInError> {
    let value: toml::Value = main_text.parse().map_err(|source| DropInError::Parse {
        path: main.to_path_buf(),
        source,
    })?;
    merge::check_mergeable(main, main_text, wiring)?;
    let mut base = format!(
        "{MARKER}\n# The airgap snapshotter's wiring for containerd, loaded after\n# {}\n\
         # through its `imports`: these keys override that file's. The unpack_config\n\
         # list replaces the file's own, so it repeats the file's entries.\nversion = {}\n",
        main.display(),
        version_number(&value)
    );
    let existing = value
        .get(TRANSFER_TABLE[0])
        .and_then(|v| v.get(TRANSFER_TABLE[1]))
        .and_then(|v| v.get(UNPACK_CONFIG))
        .and_then(toml::Value::as_array);
    if let Some(list) = existing {
        let header = super::table_header(&[TRANSFER_TABLE[0], TRANSFER_TABLE[1], UNPACK_CONFIG]);
        for e in list {
            let Some(t) = e.as_table() else { continue };
            base.push_str(&format!("\n[[{header}]]\n"));
            for (k, v) in t {
                base.push_str(&format!("  {} = {}\n", quoted_key(k), v));
            }
        }
    }
    let merged = merge::merge(file, &base, wiring)?;
    Ok(merged.text)
}

fn quoted_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        quoted(k)
    }
}

/// Whether `text` is a drop-in `config --merge` wrote.
pub fn is_ours(text: &str) -> bool {
    text.lines().next() == Some(MARKER)
}

/// The drop-ins `config --merge` wrote among the files config.toml's
/// `imports` name (directly): those whose first line is [`MARKER`].
pub fn ours(path: &Path, text: &str) -> Result<Vec<PathBuf>, DropInError> {
    let value: toml::Value = text.parse().map_err(|source| DropInError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for file in expand(path, &imports_of(&value))? {
        match std::fs::read_to_string(&file) {
            Ok(t) if is_ours(&t) => out.push(file),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DropInError::Read {
                    path: file,
                    by: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    out.dedup();
    Ok(out)
}

/// The config containerd builds from a config file and its imports.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Everything merged, as containerd merges it.
    pub value: toml::Value,
    /// The imported files read, in containerd's order (config.toml not
    /// included).
    pub imported: Vec<PathBuf>,
    /// Each imported file's own text, parsed, in the same order.
    pub parts: Vec<toml::Value>,
}

/// Loads the config `text` of `path` and every file its `imports` name (a
/// missing file named without a glob is an error, as for containerd),
/// merged the way `version` merges them (see the module doc).
pub fn load(path: &Path, text: &str, version: ContainerdVersion) -> Result<Loaded, DropInError> {
    let mut value: toml::Value = text.parse().map_err(|source| DropInError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut seen: HashSet<PathBuf> = HashSet::from([path.to_path_buf()]);
    let mut pending: std::collections::VecDeque<(PathBuf, PathBuf)> =
        expand(path, &imports_of(&value))?
            .into_iter()
            .map(|p| (p, path.to_path_buf()))
            .collect();
    let mut imported = Vec::new();
    let mut parts = Vec::new();
    while let Some((file, by)) = pending.pop_front() {
        if !seen.insert(file.clone()) {
            continue;
        }
        if imported.len() >= MAX_FILES {
            return Err(DropInError::TooMany { path: file, by });
        }
        let t = std::fs::read_to_string(&file).map_err(|source| DropInError::Read {
            path: file.clone(),
            by: by.clone(),
            source,
        })?;
        let part: toml::Value = t.parse().map_err(|source| DropInError::Parse {
            path: file.clone(),
            source,
        })?;
        for p in expand(&file, &imports_of(&part))? {
            pending.push_back((p, file.clone()));
        }
        merge_config(&mut value, part.clone(), version);
        imported.push(file);
        parts.push(part);
    }
    Ok(Loaded {
        value,
        imported,
        parts,
    })
}

/// The files an `imports` list names, globs expanded (sorted, as Go's
/// filepath.Glob returns them).
fn expand(config: &Path, imports: &[String]) -> Result<Vec<PathBuf>, DropInError> {
    let mut out = Vec::new();
    for import in imports {
        let resolved = resolve(config, import);
        let s = resolved.to_string_lossy().into_owned();
        if s.contains('*') {
            let paths = glob::glob(&s).map_err(|source| DropInError::Pattern {
                path: config.to_path_buf(),
                pattern: import.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = paths.flatten().collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(resolved);
        }
    }
    Ok(out)
}

/// Merges an imported file into the config so far, as containerd does.
fn merge_config(to: &mut toml::Value, from: toml::Value, version: ContainerdVersion) {
    let (Some(to), toml::Value::Table(from)) = (to.as_table_mut(), from) else {
        return;
    };
    for (key, v) in from {
        match (key.as_str(), v) {
            // containerd keeps the highest version after migrating each file.
            ("version", _) => {}
            ("proxy_plugins" | "stream_processors" | "timeouts", toml::Value::Table(t)) => {
                let entry = to
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let Some(e) = entry.as_table_mut() {
                    for (name, section) in t {
                        e.insert(name, section);
                    }
                }
            }
            ("plugins", toml::Value::Table(t)) => {
                let entry = to
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                let Some(e) = entry.as_table_mut() else {
                    continue;
                };
                for (name, section) in t {
                    match (version, e.get_mut(&name)) {
                        (ContainerdVersion::V2, Some(old)) => deep_merge(old, section),
                        _ => {
                            e.insert(name, section);
                        }
                    }
                }
            }
            (_, toml::Value::Array(list)) => {
                // Top-level lists (imports, disabled_plugins, ...) append
                // what they lack.
                match to.get_mut(&key).and_then(toml::Value::as_array_mut) {
                    Some(old) => {
                        for item in list {
                            if !old.contains(&item) {
                                old.push(item);
                            }
                        }
                    }
                    None => {
                        to.insert(key, toml::Value::Array(list));
                    }
                }
            }
            (_, v) => match to.get_mut(&key) {
                Some(old) => deep_merge(old, v),
                None => {
                    to.insert(key, v);
                }
            },
        }
    }
}

/// Tables merge key by key; anything else replaces.
fn deep_merge(to: &mut toml::Value, from: toml::Value) {
    match (to.as_table_mut(), from) {
        (Some(t), toml::Value::Table(f)) => {
            for (k, v) in f {
                match t.get_mut(&k) {
                    Some(old) => deep_merge(old, v),
                    None => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (_, from) => *to = from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{platform, SNAPSHOTTER};

    const V2_1: &str = include_str!("testdata/containerd-2.1.9.toml");
    const V2_3: &str = include_str!("testdata/containerd-2.3.7.toml");
    const V1_7: &str = include_str!("testdata/containerd-1.7.24.toml");

    fn wiring() -> Wiring {
        Wiring::new(
            ContainerdVersion::V2,
            Path::new("/run/x/snap.sock"),
            Path::new("/etc/containerd/certs.d"),
        )
    }

    fn get<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
        path.iter().try_fold(v, |v, k| v.get(k))
    }

    #[test]
    fn decides_drop_in_for_2_3_default() {
        let main = Path::new("/etc/containerd/config.toml");
        assert_eq!(
            target(main, V2_3, ContainerdVersion::V2).unwrap(),
            Target::DropIn {
                file: PathBuf::from("/etc/containerd/conf.d/airgap-snapshotter.toml"),
                import: "/etc/containerd/conf.d/*.toml".into()
            }
        );
        // 2.1's default imports nothing.
        assert!(matches!(
            target(main, V2_1, ContainerdVersion::V2).unwrap(),
            Target::ConfigToml { .. }
        ));
        // A 1.x config with a conf.d glob: config.toml (whole plugin
        // tables are replaced by 1.x's imports).
        let v1 = V1_7.replace(
            "imports = []",
            "imports = [\"/etc/containerd/conf.d/*.toml\"]",
        );
        assert!(v1.contains("conf.d"));
        match target(main, &v1, ContainerdVersion::V1).unwrap() {
            Target::ConfigToml { why } => assert!(why.contains("1.x"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decides_on_other_imports() {
        let main = Path::new("/etc/containerd/config.toml");
        let t = |imports: &str| {
            target(
                main,
                &format!("version = 3\nimports = {imports}\n"),
                ContainerdVersion::V2,
            )
            .unwrap()
        };
        // Relative to config.toml's directory; the pattern's other parts kept.
        assert_eq!(
            t("['dropins/50-*.conf', 'x.toml']"),
            Target::DropIn {
                file: PathBuf::from("/etc/containerd/dropins/50-airgap-snapshotter.conf"),
                import: "dropins/50-*.conf".into()
            }
        );
        // Single files, globs in the directory part, other glob syntax: no.
        for no in [
            "['/etc/containerd/extra.toml']",
            "['/etc/*/conf.d/*.toml']",
            "['/etc/containerd/conf.d/?.toml']",
            "['/etc/containerd/conf.d/[a-z]*.toml']",
            "[]",
        ] {
            assert!(matches!(t(no), Target::ConfigToml { .. }), "{no}");
        }
        // The first usable import wins.
        assert_eq!(
            t("['/a.toml', '/etc/c/d/*.toml', '/etc/e/*.toml']"),
            Target::DropIn {
                file: PathBuf::from("/etc/c/d/airgap-snapshotter.toml"),
                import: "/etc/c/d/*.toml".into()
            }
        );
    }

    #[test]
    fn drop_in_has_the_wiring_and_keeps_unpack_entries() {
        let main = Path::new("/etc/containerd/config.toml");
        let file = Path::new("/etc/containerd/conf.d/airgap-snapshotter.toml");
        let text = drop_in_text(main, V2_3, &wiring(), file).unwrap();
        assert!(is_ours(&text), "{text}");
        let v: toml::Value = text.parse().unwrap();
        assert_eq!(v["version"].as_integer(), Some(4));
        assert_eq!(
            get(&v, &["proxy_plugins", SNAPSHOTTER, "address"]).and_then(|v| v.as_str()),
            Some("/run/x/snap.sock")
        );
        assert_eq!(
            get(
                &v,
                &["plugins", "io.containerd.cri.v1.images", "snapshotter"]
            )
            .and_then(|v| v.as_str()),
            Some(SNAPSHOTTER)
        );
        // Nothing but the wiring: no other CRI key.
        assert_eq!(
            get(&v, &["plugins", "io.containerd.cri.v1.images"])
                .unwrap()
                .as_table()
                .unwrap()
                .len(),
            2,
            "{text}"
        );
        // config.toml's own unpack entries are repeated first.
        let main_text = format!(
            "{V2_3}\n[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n  platform = 'linux/arm64'\n  snapshotter = 'overlayfs'\n  differ = ''\n"
        );
        let text = drop_in_text(main, &main_text, &wiring(), file).unwrap();
        let v: toml::Value = text.parse().unwrap();
        let list: Vec<(String, String)> = get(
            &v,
            &[
                "plugins",
                "io.containerd.transfer.v1.local",
                "unpack_config",
            ],
        )
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["platform"].as_str().unwrap().into(),
                e["snapshotter"].as_str().unwrap().into(),
            )
        })
        .collect();
        assert_eq!(
            list,
            [
                ("linux/arm64".to_string(), "overlayfs".to_string()),
                (platform(), SNAPSHOTTER.to_string()),
                (platform(), "overlayfs".to_string()),
            ]
        );
        // The same input gives the same file (idempotent).
        assert_eq!(
            drop_in_text(main, &main_text, &wiring(), file).unwrap(),
            text
        );
        // Legacy mirrors in config.toml are refused as --merge refuses them.
        let bad = format!(
            "{V2_3}\n[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n  endpoint = ['https://m']\n"
        );
        assert!(matches!(
            drop_in_text(main, &bad, &wiring(), file),
            Err(DropInError::Merge(MergeError::LegacyMirrors { .. }))
        ));
        assert!(!is_ours("version = 3\n"));
    }

    #[test]
    fn load_merges_as_containerd_does() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        let main = dir.path().join("config.toml");
        let main_text = V2_3.replace("/etc/containerd/conf.d/*.toml", "conf.d/*.toml");
        let file = conf_d.join("airgap-snapshotter.toml");
        std::fs::write(
            &file,
            drop_in_text(&main, &main_text, &wiring(), &file).unwrap(),
        )
        .unwrap();
        // A later drop-in (lexical order) overrides ours.
        std::fs::write(
            conf_d.join("zz-other.toml"),
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/x:/y'\n",
        )
        .unwrap();
        std::fs::write(conf_d.join("ignored.txt"), "not toml [").unwrap();
        let loaded = load(&main, &main_text, ContainerdVersion::V2).unwrap();
        assert_eq!(
            loaded.imported,
            [file.clone(), conf_d.join("zz-other.toml")]
        );
        let images = get(&loaded.value, &["plugins", "io.containerd.cri.v1.images"]).unwrap();
        // Deep merge: config.toml's other keys stay, the drop-ins' win.
        assert_eq!(images["snapshotter"].as_str(), Some(SNAPSHOTTER));
        assert_eq!(images["disable_snapshot_annotations"].as_bool(), Some(true));
        assert_eq!(images["registry"]["config_path"].as_str(), Some("/x:/y"));
        assert_eq!(loaded.value["version"].as_integer(), Some(4));
        assert!(get(&loaded.value, &["proxy_plugins", SNAPSHOTTER]).is_some());
        // 1.x: an imported plugin table replaces the whole earlier one.
        let mut v: toml::Value =
            "version = 2\n[plugins.'io.containerd.grpc.v1.cri']\nsandbox_image = 'p'\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\nsnapshotter = 'overlayfs'\n"
                .parse()
                .unwrap();
        merge_config(
            &mut v,
            "[plugins.'io.containerd.grpc.v1.cri'.containerd]\nsnapshotter = 'airgap'\n"
                .parse()
                .unwrap(),
            ContainerdVersion::V1,
        );
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert!(cri.get("sandbox_image").is_none());
        assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("airgap"));
        // A missing plain import is an error naming it; a bad file too.
        let err = load(
            &main,
            "version = 3\nimports = ['missing.toml']\n",
            ContainerdVersion::V2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
        std::fs::write(conf_d.join("bad.toml"), "version = [").unwrap();
        let err = load(&main, &main_text, ContainerdVersion::V2).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
