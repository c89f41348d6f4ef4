//! `config --merge`: puts a [`Wiring`] into an existing containerd
//! `config.toml`, keeping its comments, order and formatting (`toml_edit`).
//! Keys already right are left untouched (quote style included); wrong or
//! missing ones are set; the 2.x `unpack_config` list gets the entries it
//! lacks, existing ones are kept. Merging twice changes nothing.

use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

use super::{
    table_header, ContainerdVersion, SettingValue, UnpackEntry, Wiring, TRANSFER_TABLE,
    UNPACK_CONFIG,
};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{}: not a valid TOML file: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    #[error(
        "{}: no `version` field: this is containerd's version 1 config format (containerd 1.5 \
         and older), which cannot be merged into; migrate it first (`containerd config migrate` \
         on 1.7 or 2.x) or start from `containerd config default`",
        path.display()
    )]
    NoVersion { path: PathBuf },
    #[error(
        "{}: `version = {found}`: expected 2 (containerd 1.6/1.7), 3 (containerd 2.0 to 2.2) \
         or 4 (containerd 2.3+)",
        path.display()
    )]
    UnknownVersion { path: PathBuf, found: String },
    #[error(
        "{}: [{table}] lists registry mirrors ({names}), and containerd's CRI plugin does not load with `mirrors` \
         together with `config_path`: move each mirror into a hosts.toml under the hosts \
         directory (`airgap-snapshotter config --write DIR --registry HOST` writes one with the \
         airgap mirror first), delete the mirrors tables, then merge again",
        path.display()
    )]
    LegacyMirrors {
        path: PathBuf,
        table: String,
        names: String,
    },
    #[error("{}: `{key}` is {found}, not a table", path.display())]
    NotATable {
        path: PathBuf,
        key: String,
        found: &'static str,
    },
}

/// The config layout a file's `version` field says: 2 is containerd
/// 1.6/1.7's, 3 and 4 are 2.x's (4, from 2.3, moves only the server settings,
/// `[grpc]`, `[ttrpc]`, `[debug]`, `[metrics]`, into `io.containerd.server.v1.*`
/// plugin tables; every table the wiring edits is the same as in 3). A file
/// without it is the version 1 format.
pub fn file_version(path: &Path, text: &str) -> Result<ContainerdVersion, MergeError> {
    let doc = parse(path, text)?;
    version_of(path, &doc)
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, MergeError> {
    text.parse::<DocumentMut>()
        .map_err(|source| MergeError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

fn version_of(path: &Path, doc: &DocumentMut) -> Result<ContainerdVersion, MergeError> {
    let Some(item) = doc.get("version") else {
        return Err(MergeError::NoVersion {
            path: path.to_path_buf(),
        });
    };
    match item.as_integer() {
        Some(2) => Ok(ContainerdVersion::V1),
        Some(3 | 4) => Ok(ContainerdVersion::V2),
        _ => Err(MergeError::UnknownVersion {
            path: path.to_path_buf(),
            found: item.to_string().trim().to_string(),
        }),
    }
}

/// The merge's result.
#[derive(Debug)]
pub struct Merged {
    /// The whole new file.
    pub text: String,
    /// Whether `text` differs from the original.
    pub changed: bool,
    /// What was set or added, one line each (`table.key = value`).
    pub edits: Vec<String>,
}

/// Merges `wiring` into the config file text (`path` only names it in
/// errors). The file must have a `version`; whether it matches the wiring's
/// is the caller's business (`--containerd` forces a layout).
pub fn merge(path: &Path, original: &str, wiring: &Wiring) -> Result<Merged, MergeError> {
    let mut doc = parse(path, original)?;
    version_of(path, &doc)?;
    legacy_mirrors(path, &doc, wiring)?;
    let mut edits = Vec::new();
    for table in &wiring.tables {
        let t = table_at(path, &mut doc, &table.path)?;
        for s in &table.settings {
            if set(t, s.key, &s.value) {
                edits.push(format!(
                    "{}.{} = {}",
                    table_header(&table.path),
                    s.key,
                    s.value.to_toml()
                ));
            }
        }
    }
    if !wiring.unpack.is_empty() {
        let t = table_at(path, &mut doc, &TRANSFER_TABLE)?;
        for e in add_unpack_entries(path, t, &wiring.unpack)? {
            edits.push(format!(
                "{} += {{ platform = {:?}, snapshotter = {:?} }}",
                table_header(&[TRANSFER_TABLE[0], TRANSFER_TABLE[1], UNPACK_CONFIG]),
                e.platform,
                e.snapshotter
            ));
        }
    }
    let text = doc.to_string();
    Ok(Merged {
        changed: text != original,
        text,
        edits,
    })
}

/// What [`merge`] refuses before editing: no or an unknown `version`, legacy
/// CRI mirrors. `config --merge` checks config.toml with it before writing
/// a drop-in instead.
pub fn check_mergeable(path: &Path, original: &str, wiring: &Wiring) -> Result<(), MergeError> {
    let doc = parse(path, original)?;
    version_of(path, &doc)?;
    legacy_mirrors(path, &doc, wiring)
}

/// Refuses a config whose CRI registry table has legacy `mirrors`:
/// containerd's CRI plugin does not load with those and a `config_path`
/// (checked on 1.6.20).
fn legacy_mirrors(path: &Path, doc: &DocumentMut, wiring: &Wiring) -> Result<(), MergeError> {
    let registry = super::cri_registry_table(wiring.version);
    let mut item = doc.as_item();
    for k in &registry {
        match item.get(k) {
            Some(i) => item = i,
            None => return Ok(()),
        }
    }
    let names: Vec<String> = item
        .get("mirrors")
        .and_then(Item::as_table_like)
        .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return Ok(());
    }
    Err(MergeError::LegacyMirrors {
        path: path.to_path_buf(),
        table: table_header(&[&registry[..], &["mirrors"]].concat()),
        names: names.join(", "),
    })
}

/// The table at `keys`, created (with its parents) when missing.
fn table_at<'d>(
    path: &Path,
    doc: &'d mut DocumentMut,
    keys: &[&str],
) -> Result<&'d mut dyn TableLike, MergeError> {
    let mut t: &mut dyn TableLike = doc.as_table_mut();
    for (i, key) in keys.iter().enumerate() {
        let leaf = i + 1 == keys.len();
        let item = t.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            // Parents that only hold sub-tables need no header of their own.
            new.set_implicit(!leaf);
            new.decor_mut().set_prefix("\n");
            Item::Table(new)
        });
        let found = item.type_name();
        t = item
            .as_table_like_mut()
            .ok_or_else(|| MergeError::NotATable {
                path: path.to_path_buf(),
                key: table_header(&keys[..=i]),
                found,
            })?;
    }
    Ok(t)
}

fn matches(item: &Item, want: &SettingValue) -> bool {
    match want {
        SettingValue::Str(s) => item.as_str() == Some(s),
        SettingValue::Bool(b) => item.as_bool() == Some(*b),
    }
}

fn to_value(v: &SettingValue) -> Value {
    match v {
        SettingValue::Str(s) => Value::from(s.as_str()),
        SettingValue::Bool(b) => Value::from(*b),
    }
}

/// Sets `key` in `table` unless it already has that value; returns whether
/// it changed. A replaced value keeps its comments; a new key is indented
/// as its siblings are.
fn set(table: &mut dyn TableLike, key: &str, want: &SettingValue) -> bool {
    if let Some(item) = table.get_mut(key) {
        if matches(item, want) {
            return false;
        }
        let mut value = to_value(want);
        if let Some(old) = item.as_value() {
            *value.decor_mut() = old.decor().clone();
        }
        *item = Item::Value(value);
        return true;
    }
    let indent = table
        .iter()
        .find(|(_, item)| item.is_value())
        .and_then(|(k, _)| table.key(k))
        .and_then(|k| k.leaf_decor().prefix().cloned());
    table.insert(key, Item::Value(to_value(want)));
    if let (Some(indent), Some(mut k)) = (indent, table.key_mut(key)) {
        k.leaf_decor_mut().set_prefix(indent);
    }
    true
}

fn entry_matches(t: &dyn TableLike, e: &UnpackEntry) -> bool {
    let get = |k| t.get(k).and_then(Item::as_str);
    get("snapshotter") == Some(e.snapshotter.as_str())
        && get("platform") == Some(e.platform.as_str())
}

/// Adds the entries of `want` that the transfer table's `unpack_config`
/// lacks (an array of tables, or an inline array); returns those added.
fn add_unpack_entries(
    path: &Path,
    transfer: &mut dyn TableLike,
    want: &[UnpackEntry],
) -> Result<Vec<UnpackEntry>, MergeError> {
    let item = transfer
        .entry(UNPACK_CONFIG)
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    let mut added = Vec::new();
    match item {
        Item::ArrayOfTables(list) => {
            for e in want {
                if !list.iter().any(|t| entry_matches(t, e)) {
                    let mut t = Table::new();
                    t.decor_mut().set_prefix("\n");
                    t.insert("platform", Item::Value(Value::from(e.platform.as_str())));
                    t.insert(
                        "snapshotter",
                        Item::Value(Value::from(e.snapshotter.as_str())),
                    );
                    list.push(t);
                    added.push(e.clone());
                }
            }
        }
        Item::Value(Value::Array(list)) => {
            for e in want {
                let present = list
                    .iter()
                    .any(|v| v.as_inline_table().is_some_and(|t| entry_matches(t, e)));
                if !present {
                    let mut t = InlineTable::new();
                    t.insert("platform", Value::from(e.platform.as_str()));
                    t.insert("snapshotter", Value::from(e.snapshotter.as_str()));
                    list.push(t);
                    added.push(e.clone());
                }
            }
        }
        other => {
            return Err(MergeError::NotATable {
                path: path.to_path_buf(),
                key: table_header(&[TRANSFER_TABLE[0], TRANSFER_TABLE[1], UNPACK_CONFIG]),
                found: other.type_name(),
            })
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{platform, SNAPSHOTTER};

    const V1_6: &str = include_str!("testdata/containerd-1.6.20.toml");
    const V1_7: &str = include_str!("testdata/containerd-1.7.24.toml");
    const V2_1: &str = include_str!("testdata/containerd-2.1.9.toml");
    const V2_3: &str = include_str!("testdata/containerd-2.3.7.toml");

    const SOCK: &str = "/run/x/snap.sock";
    const HOSTS: &str = "/srv/certs.d";

    fn wiring(v: ContainerdVersion) -> Wiring {
        Wiring::new(v, Path::new(SOCK), Path::new(HOSTS))
    }

    /// A user's comments sprinkled over containerd's default config: at the
    /// top, above a table the merge edits, and after a value it replaces.
    fn with_comments(default: &str) -> String {
        let mut out = String::from("# node config, managed by hand\n");
        for line in default.lines() {
            if line.trim_start().starts_with("[proxy_plugins]") {
                out.push_str("# proxies: see the wiki\n");
            }
            if line.trim_start().starts_with("config_path") && line.contains("''")
                || line.trim_start() == "config_path = \"\""
            {
                out.push_str(line);
                out.push_str("  # registry hosts\n");
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    fn get<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
        path.iter().try_fold(v, |v, k| v.get(k))
    }

    fn check(default: &str, v: ContainerdVersion) {
        let path = Path::new("/etc/containerd/config.toml");
        assert_eq!(file_version(path, default).unwrap(), v);
        let original = with_comments(default);
        let merged = merge(path, &original, &wiring(v)).unwrap();
        assert!(merged.changed);
        // Comments survive.
        for c in ["# node config, managed by hand\n", "  # registry hosts\n"] {
            assert!(merged.text.contains(c), "{c:?} lost:\n{}", merged.text);
        }
        if default.contains("[proxy_plugins]") {
            assert!(merged
                .text
                .contains("# proxies: see the wiki\n[proxy_plugins]"));
        }
        // It parses, and has exactly the keys the wiring names.
        let doc: toml::Value = merged.text.parse().unwrap();
        for table in &wiring(v).tables {
            for s in &table.settings {
                let mut p = table.path.clone();
                p.push(s.key);
                let got = get(&doc, &p).unwrap_or_else(|| panic!("{p:?} missing"));
                let want: toml::Value = match &s.value {
                    SettingValue::Str(s) => toml::Value::String(s.clone()),
                    SettingValue::Bool(b) => toml::Value::Boolean(*b),
                };
                assert_eq!(got, &want, "{p:?}");
            }
        }
        assert_eq!(
            get(&doc, &["proxy_plugins", SNAPSHOTTER, "address"])
                .unwrap()
                .as_str(),
            Some(SOCK)
        );
        let unpack = get(
            &doc,
            &[
                "plugins",
                "io.containerd.transfer.v1.local",
                "unpack_config",
            ],
        );
        match v {
            ContainerdVersion::V1 => {
                let cri = ["plugins", "io.containerd.grpc.v1.cri"];
                assert_eq!(
                    get(&doc, &[cri[0], cri[1], "containerd", "snapshotter"])
                        .unwrap()
                        .as_str(),
                    Some(SNAPSHOTTER)
                );
                assert_eq!(
                    get(&doc, &[cri[0], cri[1], "registry", "config_path"])
                        .unwrap()
                        .as_str(),
                    Some(HOSTS)
                );
                assert!(get(&doc, &["proxy_plugins", SNAPSHOTTER, "exports"]).is_none());
                // 1.7's default unpack_config (overlayfs) is left alone.
                if let Some(u) = unpack {
                    assert!(u
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|e| e["snapshotter"].as_str() == Some("overlayfs")));
                }
                // Unchanged elsewhere: the default runtime's snapshotter key.
                assert_eq!(merged.edits.len(), 5, "{:?}", merged.edits);
            }
            ContainerdVersion::V2 => {
                let images = ["plugins", "io.containerd.cri.v1.images"];
                assert_eq!(
                    get(&doc, &[images[0], images[1], "snapshotter"])
                        .unwrap()
                        .as_str(),
                    Some(SNAPSHOTTER)
                );
                assert_eq!(
                    get(&doc, &[images[0], images[1], "registry", "config_path"])
                        .unwrap()
                        .as_str(),
                    Some(HOSTS)
                );
                let entries: Vec<(String, String)> = unpack
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        (
                            e["platform"].as_str().unwrap().to_string(),
                            e["snapshotter"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect();
                assert_eq!(
                    entries,
                    [
                        (platform(), SNAPSHOTTER.to_string()),
                        (platform(), "overlayfs".to_string())
                    ]
                );
                // Keys it did not need to touch keep their quote style.
                assert!(merged.text.contains("disable_snapshot_annotations = true"));
                assert!(merged.text.contains("root = '/var/lib/containerd'"));
                assert_eq!(merged.edits.len(), 7, "{:?}", merged.edits);
            }
        }
        // Only the wiring's lines differ: everything else is as it was.
        let removed: Vec<&str> = original
            .lines()
            .filter(|l| !merged.text.lines().any(|m| m == *l))
            .collect();
        assert!(removed.len() <= 3, "{removed:?}");
        // Idempotent.
        let again = merge(path, &merged.text, &wiring(v)).unwrap();
        assert!(!again.changed, "{:?}", again.edits);
        assert!(again.edits.is_empty());
        assert_eq!(again.text, merged.text);
    }

    #[test]
    fn merges_into_1_6_default() {
        check(V1_6, ContainerdVersion::V1);
    }

    #[test]
    fn merges_into_1_7_default() {
        check(V1_7, ContainerdVersion::V1);
    }

    #[test]
    fn merges_into_2_1_default() {
        check(V2_1, ContainerdVersion::V2);
    }

    /// 2.3's `version = 4`: the same plugin tables as 3.
    #[test]
    fn merges_into_2_3_default() {
        check(V2_3, ContainerdVersion::V2);
    }

    #[test]
    fn updates_wrong_values_and_keeps_other_unpack_entries() {
        let path = Path::new("c.toml");
        let text = "version = 3\n\
            [proxy_plugins.airgap]\n  type = 'snapshot'\n  address = '/old.sock' # ours\n\
            [plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n\
            [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n  platform = 'linux/arm64'\n  snapshotter = 'overlayfs'\n";
        let merged = merge(path, text, &wiring(ContainerdVersion::V2)).unwrap();
        assert!(
            merged
                .text
                .contains(&format!("address = \"{SOCK}\" # ours")),
            "{}",
            merged.text
        );
        let doc: toml::Value = merged.text.parse().unwrap();
        let unpack = get(
            &doc,
            &[
                "plugins",
                "io.containerd.transfer.v1.local",
                "unpack_config",
            ],
        )
        .unwrap()
        .as_array()
        .unwrap();
        assert_eq!(unpack.len(), 3);
        assert_eq!(unpack[0]["platform"].as_str(), Some("linux/arm64"));
        assert!(
            !merge(path, &merged.text, &wiring(ContainerdVersion::V2))
                .unwrap()
                .changed
        );
        // An inline array works as well.
        let text = "version = 3\n[plugins.'io.containerd.transfer.v1.local']\nunpack_config = [{ platform = 'linux/arm64', snapshotter = 'overlayfs' }]\n";
        let merged = merge(path, text, &wiring(ContainerdVersion::V2)).unwrap();
        let doc: toml::Value = merged.text.parse().unwrap();
        assert_eq!(
            get(
                &doc,
                &[
                    "plugins",
                    "io.containerd.transfer.v1.local",
                    "unpack_config"
                ]
            )
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
            3
        );
    }

    #[test]
    fn refuses_legacy_mirrors() {
        let path = Path::new("c.toml");
        // containerd 1.6's default has an empty mirrors table: fine.
        assert!(V1_6.contains("registry.mirrors]"));
        let text = format!(
            "{V1_6}\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n"
        );
        let text = text.replacen(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n",
            "",
            1,
        );
        let err = merge(path, &text, &wiring(ContainerdVersion::V1)).unwrap_err();
        assert!(matches!(err, MergeError::LegacyMirrors { .. }), "{err}");
        assert!(err.to_string().contains("docker.io"), "{err}");
    }

    #[test]
    fn refuses_version_1_and_garbage() {
        let path = Path::new("/etc/containerd/config.toml");
        let err = merge(
            path,
            "root = \"/x\"\n[plugins.cri]\n",
            &wiring(ContainerdVersion::V1),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, MergeError::NoVersion { .. }));
        assert!(
            msg.contains("/etc/containerd/config.toml") && msg.contains("version"),
            "{msg}"
        );
        assert!(matches!(
            file_version(path, "version = 7\n"),
            Err(MergeError::UnknownVersion { .. })
        ));
        assert!(matches!(
            file_version(path, "version = [\n"),
            Err(MergeError::Parse { .. })
        ));
        let err = merge(
            path,
            "version = 2\nproxy_plugins = 1\n",
            &wiring(ContainerdVersion::V1),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`proxy_plugins` is integer"),
            "{err}"
        );
    }
}
