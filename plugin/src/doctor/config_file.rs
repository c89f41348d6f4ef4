//! The containerd config file against [`Wiring`]: the same tables and keys
//! `config` prints and `config --merge` writes, plus what the wiring leaves
//! to the node (the hosts directory, the CRI pull mode on 2.x, no `rebase`
//! capability).

use std::path::{Path, PathBuf};

use super::Check;
use crate::setup::dropin;
use crate::setup::merge::{file_version, MergeError};
use crate::setup::{
    cri_images_table, cri_registry_table, table_header, ContainerdVersion, SettingValue, Wiring,
    DEFAULT_HOSTS_DIR, SNAPSHOTTER, TRANSFER_TABLE, UNPACK_CONFIG,
};

/// What the config file says, for the checks that follow it.
#[derive(Debug, Default)]
pub struct ConfigFindings {
    pub checks: Vec<Check>,
    pub version: Option<ContainerdVersion>,
    /// CRI's registry `config_path`, when it is one directory.
    pub hosts_dir: Option<PathBuf>,
}

fn lookup<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn matches(v: &toml::Value, want: &SettingValue) -> bool {
    match want {
        SettingValue::Str(s) => v.as_str() == Some(s),
        SettingValue::Bool(b) => v.as_bool() == Some(*b),
    }
}

/// Checks the containerd config `text` (read from `path`) for a daemon on
/// `socket`.
pub fn check(path: &Path, text: &str, socket: &Path) -> ConfigFindings {
    let mut out = ConfigFindings::default();
    let file = path.display();
    let version = match file_version(path, text) {
        Ok(v) => v,
        Err(e) => {
            let fix = match e {
                MergeError::NoVersion { .. } => {
                    "migrate it (`containerd config migrate`) or start from `containerd config default`, then `airgap-snapshotter config --merge`".to_string()
                }
                _ => format!("fix {file}"),
            };
            out.checks
                .push(Check::fail("containerd config", e.to_string(), fix));
            return out;
        }
    };
    out.version = Some(version);
    // What containerd ends up with: config.toml and the drop-ins its
    // `imports` name, merged as containerd merges them.
    let loaded = match dropin::load(path, text, version) {
        Ok(l) => l,
        Err(e) => {
            out.checks.push(Check::fail(
                "containerd config",
                e.to_string(),
                format!("fix it: containerd does not start with a config it cannot load ({file})"),
            ));
            return out;
        }
    };
    let value = loaded.value;
    let file = if loaded.imported.is_empty() {
        file.to_string()
    } else {
        let names: Vec<String> = loaded
            .imported
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.checks.push(Check::ok(
            "containerd config imports",
            format!(
                "{file} imports {} (merged after it, in this order: a later file's keys win)",
                names.join(", ")
            ),
        ));
        format!("{file} (with its drop-ins)")
    };
    // The file the proxy plugin's table comes from: the last that has it
    // (an import replaces the whole [proxy_plugins.NAME] table).
    if lookup(&value, &["proxy_plugins", SNAPSHOTTER]).is_some() {
        let from = loaded
            .parts
            .iter()
            .zip(&loaded.imported)
            .rev()
            .find(|(v, _)| lookup(v, &["proxy_plugins", SNAPSHOTTER]).is_some())
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_else(|| path.display().to_string());
        out.checks.push(Check::ok(
            format!("[proxy_plugins.{SNAPSHOTTER}]"),
            format!("in {from}"),
        ));
    }
    let merge_fix = format!(
        "airgap-snapshotter config --merge {} --socket {}",
        path.display(),
        socket.display()
    );
    let wiring = Wiring::new(version, socket, Path::new(DEFAULT_HOSTS_DIR));
    let registry_table = cri_registry_table(version);
    for table in &wiring.tables {
        let header = table_header(&table.path);
        if table.path == registry_table {
            continue; // config_path: any one directory will do, below.
        }
        if table.path == ["proxy_plugins", SNAPSHOTTER] && lookup(&value, &table.path).is_none() {
            out.checks.push(Check::fail(
                format!("[{header}]"),
                format!("{file} has no [{header}] table: containerd does not know the snapshotter"),
                merge_fix.clone(),
            ));
            continue;
        }
        if lookup(&value, &["proxy_plugins", SNAPSHOTTER]).is_none()
            && table.path.starts_with(&["proxy_plugins", SNAPSHOTTER])
        {
            continue; // reported once, above
        }
        for s in &table.settings {
            let name = format!("{header}.{}", s.key);
            let mut p = table.path.clone();
            p.push(s.key);
            let found = lookup(&value, &p);
            if found.is_some_and(|v| matches(v, &s.value)) {
                out.checks
                    .push(Check::ok(name, format!("= {}", s.value.to_toml())));
                continue;
            }
            let detail = match found {
                Some(v) => format!("is {}, expected {}", show(v), s.value.to_toml()),
                None => format!("is not set, expected {}", s.value.to_toml()),
            };
            let why = match s.key {
                "address" => " (containerd dials this socket for the snapshotter)",
                "snapshotter" => " (CRI pulls and runs with this snapshotter)",
                "disable_snapshot_annotations" => {
                    " (CRI then passes no cri.* hints: every archived layer still comes from the \
                     archive, since containerd names each layer's chain ID in snapshot.ref, but the \
                     prefetch of an image's other layers is not narrowed to the image being pulled; \
                     k3s's own config template sets it so)"
                }
                "enable_remote_snapshot_annotations" => {
                    " (transfer-service pulls then carry no cri.* hints; snapshot.ref still works)"
                }
                _ => "",
            };
            let fix = format!(
                "set {} = {} in [{header}] of {file}, or run `{merge_fix}`",
                s.key,
                s.value.to_toml()
            );
            let detail = format!("{detail}{why}");
            out.checks
                // Hints only: the fast path keys on snapshot.ref (tested on
                // 1.6.20 and 1.7.24 with annotations off, integration/tests/k3s.rs).
                .push(
                    if matches!(
                        s.key,
                        "enable_remote_snapshot_annotations" | "disable_snapshot_annotations"
                    ) {
                        Check::warn(name, detail, fix)
                    } else {
                        Check::fail(name, detail, fix)
                    },
                );
        }
    }

    // No `rebase` capability: 2.2's parallel unpack breaks remote snapshotters.
    let caps = lookup(&value, &["proxy_plugins", SNAPSHOTTER, "capabilities"]);
    if caps
        .and_then(toml::Value::as_array)
        .is_some_and(|a| a.iter().any(|c| c.as_str() == Some("rebase")))
    {
        out.checks.push(Check::fail(
            "rebase capability",
            format!("[proxy_plugins.{SNAPSHOTTER}] declares capabilities {}: containerd 2.2's parallel unpack then rebases layers the snapshotter committed from the archive", show(caps.unwrap())),
            format!("remove \"rebase\" from capabilities in [proxy_plugins.{SNAPSHOTTER}] of {file}"),
        ));
    }

    let mut transfer = false;
    if version == ContainerdVersion::V2 {
        unpack_checks(&mut out, &value, &wiring, &file, &merge_fix);
        let (mode, t) = pull_mode(&value, version);
        out.checks.push(mode);
        transfer = t;
    }

    // config_path: one directory.
    let header = table_header(&registry_table);
    let mut p = registry_table.clone();
    p.push("config_path");
    let cp = lookup(&value, &p)
        .and_then(toml::Value::as_str)
        .unwrap_or("");
    let fix_dir = |dir: &str| {
        format!(
            "set config_path = \"{dir}\" in [{header}] of {file}, or run `{merge_fix} --write {dir}`"
        )
    };
    if cp.is_empty() {
        out.checks.push(Check::fail(
            "registry config_path",
            format!("[{header}] config_path is not set: CRI reads no hosts.toml, so pulls never reach the mirror"),
            fix_dir(DEFAULT_HOSTS_DIR),
        ));
    } else if cp.contains(':') {
        let dirs: Vec<&str> = cp.split(':').filter(|d| !d.is_empty()).collect();
        let first = dirs.first().copied().unwrap_or(DEFAULT_HOSTS_DIR);
        if transfer {
            // containerd#12636: the transfer service's registry takes the
            // whole list as one directory (core/transfer/registry:
            // HostDirFromRoot(config_path), unsplit, in 2.1.9, 2.3.7 and
            // 2.4.2; CRI's local pull splits it), so it finds no hosts.toml
            // at all.
            let images = table_header(&cri_images_table(version));
            out.checks.push(Check::fail(
                "registry config_path",
                format!(
                    "config_path is {cp:?}, several directories, and CRI pulls through the transfer \
                     service: containerd 2.1 and later (still in 2.3.7 and 2.4.2, containerd#12636) \
                     then take the whole list as one directory and read no hosts.toml at all, so CRI \
                     pulls never reach the mirror"
                ),
                format!(
                    "{}; or keep the list and set use_local_image_pull = true in [{images}] of {file} \
                     (CRI then pulls on the client side, which reads each directory)",
                    fix_dir(first)
                ),
            ));
        } else {
            out.hosts_dir = Some(PathBuf::from(first));
            let who = match version {
                ContainerdVersion::V1 => "containerd 1.x's CRI",
                ContainerdVersion::V2 => "CRI's client-side pull",
            };
            out.checks.push(Check::ok(
                "registry config_path",
                format!(
                    "= {cp:?}: {who} looks for a registry's hosts.toml in each directory in turn, {first} first{}",
                    if version == ContainerdVersion::V2 {
                        " (were CRI to pull through the transfer service, containerd#12636 would ignore them all: keep one directory)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    } else if let Some(mirrors) = {
        let mut m = registry_table.clone();
        m.push("mirrors");
        lookup(&value, &m)
            .and_then(toml::Value::as_table)
            .filter(|t| !t.is_empty())
    } {
        let names: Vec<&str> = mirrors.keys().map(String::as_str).collect();
        out.checks.push(Check::fail(
            "registry config_path",
            format!("[{header}.mirrors] lists {}: containerd's CRI plugin does not load with legacy mirrors and config_path (\"`mirrors` cannot be set when `config_path` is provided\")", names.join(", ")),
            format!("move each mirror into a hosts.toml under {cp} (`airgap-snapshotter config --write {cp} --registry HOST`) and delete the mirrors tables from {file}"),
        ));
    } else {
        out.hosts_dir = Some(PathBuf::from(cp));
        out.checks
            .push(Check::ok("registry config_path", format!("= {cp:?}")));
    }
    out
}

fn unpack_checks(
    out: &mut ConfigFindings,
    value: &toml::Value,
    wiring: &Wiring,
    file: &str,
    merge_fix: &str,
) {
    let entries: Vec<(String, String)> = lookup(
        value,
        &[TRANSFER_TABLE[0], TRANSFER_TABLE[1], UNPACK_CONFIG],
    )
    .and_then(toml::Value::as_array)
    .into_iter()
    .flatten()
    .map(|e| {
        let s = |k: &str| {
            e.get(k)
                .and_then(toml::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        (s("platform"), s("snapshotter"))
    })
    .collect();
    let missing: Vec<String> = wiring
        .unpack
        .iter()
        .filter(|w| {
            !entries
                .iter()
                .any(|(p, s)| *s == w.snapshotter && *p == w.platform)
        })
        .map(|w| format!("{} ({})", w.snapshotter, w.platform))
        .collect();
    let listed: Vec<String> = entries.iter().map(|(p, s)| format!("{s} ({p})")).collect();
    let name = "transfer unpack_config";
    if missing.is_empty() {
        out.checks
            .push(Check::ok(name, format!("lists {}", listed.join(", "))));
    } else {
        let why = if missing.iter().any(|m| m.starts_with("overlayfs")) {
            "; an entry replaces containerd's default list, so without overlayfs `ctr pull` and `ctr images import` into overlayfs stop unpacking"
        } else {
            "; the transfer service (`ctr pull`, CRI on 2.1+) unpacks only into the snapshotters listed"
        };
        out.checks.push(Check::fail(
            name,
            format!(
                "[[{}]] lacks {}{why} (it lists: {})",
                table_header(&[TRANSFER_TABLE[0], TRANSFER_TABLE[1], UNPACK_CONFIG]),
                missing.join(", "),
                if listed.is_empty() {
                    "nothing".to_string()
                } else {
                    listed.join(", ")
                }
            ),
            format!("add the entries to {file}, or run `{merge_fix}`"),
        ));
    }
}

/// 2.x: whether CRI pulls through the transfer service or on the client
/// side, and why. Both pass `snapshot.ref`: informational.
fn pull_mode(value: &toml::Value, version: ContainerdVersion) -> (Check, bool) {
    let images = cri_images_table(version);
    let get = |k: &str| {
        let mut p = images.clone();
        p.push(k);
        lookup(value, &p).cloned()
    };
    let mut reasons = Vec::new();
    if get("disable_snapshot_annotations").and_then(|v| v.as_bool()) == Some(false) {
        reasons.push("disable_snapshot_annotations = false");
    }
    if get("discard_unpacked_layers").and_then(|v| v.as_bool()) == Some(true) {
        reasons.push("discard_unpacked_layers = true");
    }
    if get("use_local_image_pull").and_then(|v| v.as_bool()) == Some(true) {
        reasons.push("use_local_image_pull = true");
    }
    if get("image_pull_with_sync_fs").and_then(|v| v.as_bool()) == Some(true) {
        reasons.push("image_pull_with_sync_fs = true");
    }
    if get("max_concurrent_downloads")
        .and_then(|v| v.as_integer())
        .is_some_and(|n| n != 3)
    {
        reasons.push("max_concurrent_downloads != 3");
    }
    let legacy = ["mirrors", "configs", "auths"].iter().any(|k| {
        let mut p = images.clone();
        p.extend(["registry", k]);
        lookup(value, &p)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| !t.is_empty())
    });
    if legacy {
        reasons.push("legacy registry mirrors/configs/auths");
    }
    if reasons.is_empty() {
        (Check::ok(
            "CRI pull mode",
            "CRI pulls through the transfer service (2.1+): snapshot.ref reaches the snapshotter, with the cri.* hints when exports.enable_remote_snapshot_annotations is set",
        ), true)
    } else {
        (Check::ok(
            "CRI pull mode",
            format!(
                "CRI pulls on the client side (local pull) because of {}: snapshot.ref and the cri.* hints reach the snapshotter; archived layers are taken from the archive either way",
                reasons.join(", ")
            ),
        ), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::setup::merge::merge;

    const V1_6: &str = include_str!("../setup/testdata/containerd-1.6.20.toml");
    const V2_1: &str = include_str!("../setup/testdata/containerd-2.1.9.toml");
    const V2_3: &str = include_str!("../setup/testdata/containerd-2.3.7.toml");
    const SOCK: &str = "/run/airgap-snapshotter/snapshotter.sock";

    fn merged(default: &str, v: ContainerdVersion) -> String {
        let w = Wiring::new(v, Path::new(SOCK), Path::new(DEFAULT_HOSTS_DIR));
        merge(Path::new("c.toml"), default, &w).unwrap().text
    }

    fn run(text: &str) -> ConfigFindings {
        check(
            Path::new("/etc/containerd/config.toml"),
            text,
            Path::new(SOCK),
        )
    }

    fn failed(f: &ConfigFindings) -> Vec<&Check> {
        f.checks.iter().filter(|c| c.status != Status::Ok).collect()
    }

    /// The one failing check, which names `what` and has a fix.
    fn one_failure(f: &ConfigFindings, what: &str) -> Check {
        let bad = failed(f);
        assert_eq!(bad.len(), 1, "{bad:#?}");
        let c = bad[0];
        assert!(
            c.name.contains(what) || c.detail.contains(what),
            "{what} not named: {c:#?}"
        );
        assert!(c.fix.as_deref().is_some_and(|f| !f.is_empty()));
        c.clone()
    }

    #[test]
    fn merged_configs_pass() {
        for (d, v) in [(V1_6, ContainerdVersion::V1), (V2_1, ContainerdVersion::V2)] {
            let f = run(&merged(d, v));
            assert!(failed(&f).is_empty(), "{:#?}", failed(&f));
            assert_eq!(f.version, Some(v));
            assert_eq!(f.hosts_dir.as_deref(), Some(Path::new(DEFAULT_HOSTS_DIR)));
        }
    }

    #[test]
    fn plugin_missing() {
        let text = merged(V1_6, ContainerdVersion::V1).replace(
            &format!("[proxy_plugins.airgap]\ntype = \"snapshot\"\naddress = \"{SOCK}\"\n"),
            "",
        );
        let c = one_failure(&run(&text), "proxy_plugins.airgap");
        assert!(c.fix.as_deref().unwrap().contains("config --merge"));
    }

    #[test]
    fn wrong_socket() {
        let text = merged(V2_1, ContainerdVersion::V2).replace(SOCK, "/run/other.sock");
        let c = one_failure(&run(&text), "address");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("/run/other.sock"), "{c:?}");
    }

    #[test]
    fn cri_snapshotter_left_at_overlayfs() {
        let text = merged(V1_6, ContainerdVersion::V1)
            .replace("snapshotter = \"airgap\"", "snapshotter = \"overlayfs\"");
        let c = one_failure(&run(&text), "snapshotter");
        assert!(c.detail.contains("overlayfs"));
    }

    #[test]
    fn annotations_off_on_1x() {
        let text = merged(V1_6, ContainerdVersion::V1).replace(
            "disable_snapshot_annotations = false",
            "disable_snapshot_annotations = true",
        );
        // A warning: the layers still come from the archive without the hints.
        let c = one_failure(&run(&text), "disable_snapshot_annotations");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("is true"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("= false"), "{c:?}");
    }

    #[test]
    fn unpack_config_without_overlayfs_on_2x() {
        let text = merged(V2_1, ContainerdVersion::V2);
        let cut = text
            .find("snapshotter = \"overlayfs\"")
            .and_then(|i| text[..i].rfind("[[plugins"))
            .unwrap();
        let end = cut + text[cut..].find("snapshotter = \"overlayfs\"\n").unwrap() + 26;
        let text = format!("{}{}", &text[..cut], &text[end..]);
        let c = one_failure(&run(&text), "unpack_config");
        assert!(c.detail.contains("overlayfs"), "{c:?}");
    }

    const TWO_DIRS: &str = "config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'";

    fn two_dirs(default: &str, v: ContainerdVersion) -> String {
        merged(default, v).replace(&format!("config_path = \"{DEFAULT_HOSTS_DIR}\""), TWO_DIRS)
    }

    /// containerd#12636: 2.x CRI through the transfer service (its default)
    /// with a colon-separated config_path reads no hosts.toml.
    #[test]
    fn two_directory_config_path_with_the_transfer_service() {
        let text = two_dirs(V2_1, ContainerdVersion::V2);
        assert!(text.contains(TWO_DIRS));
        let f = run(&text);
        let c = one_failure(&f, "config_path");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("12636") && c.detail.contains("transfer"),
            "{c:?}"
        );
        let fix = c.fix.as_deref().unwrap();
        assert!(fix.contains("\"/etc/containerd/certs.d\""), "{fix}");
        assert!(fix.contains("use_local_image_pull = true"), "{fix}");
        assert!(f.hosts_dir.is_none());
        // The 2.3 default layout (version = 4) as well.
        let text = two_dirs(V2_3, ContainerdVersion::V2);
        one_failure(&run_in_tmp(&text).0, "12636");
    }

    /// The same list is fine where CRI pulls on the client side: 1.x, and
    /// 2.x with a setting that turns the transfer service off for CRI.
    #[test]
    fn two_directory_config_path_with_local_pulls() {
        let f = run(&two_dirs(V1_6, ContainerdVersion::V1));
        assert!(failed(&f).is_empty(), "{:#?}", failed(&f));
        assert_eq!(f.hosts_dir.as_deref(), Some(Path::new(DEFAULT_HOSTS_DIR)));
        for (from, to) in [
            (
                "use_local_image_pull = false",
                "use_local_image_pull = true",
            ),
            (
                "disable_snapshot_annotations = true",
                "disable_snapshot_annotations = false",
            ),
            (
                "discard_unpacked_layers = false",
                "discard_unpacked_layers = true",
            ),
        ] {
            let text = two_dirs(V2_1, ContainerdVersion::V2);
            assert!(text.contains(from), "{from}");
            let f = run(&text.replace(from, to));
            assert!(failed(&f).is_empty(), "{to}: {:#?}", failed(&f));
            let c = f
                .checks
                .iter()
                .find(|c| c.name == "registry config_path")
                .unwrap();
            assert!(c.detail.contains("12636"), "{c:?}");
        }
    }

    /// config.toml (2.3's default, imports conf.d/*.toml) in a temporary
    /// directory with `drop_ins` (name, text) in its conf.d.
    fn run_in_tmp_with(
        text: &str,
        drop_ins: &[(&str, &str)],
    ) -> (ConfigFindings, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        for (name, t) in drop_ins {
            std::fs::write(conf_d.join(name), t).unwrap();
        }
        let main = dir.path().join("config.toml");
        let text = text.replace("/etc/containerd/conf.d/*.toml", "conf.d/*.toml");
        (check(&main, &text, Path::new(SOCK)), dir)
    }

    fn run_in_tmp(text: &str) -> (ConfigFindings, tempfile::TempDir) {
        run_in_tmp_with(text, &[])
    }

    /// `config --merge` on 2.3 writes a drop-in: doctor finds the plugin
    /// there, config.toml untouched.
    #[test]
    fn plugin_in_a_drop_in() {
        let main = Path::new("/etc/containerd/config.toml");
        let w = Wiring::new(
            ContainerdVersion::V2,
            Path::new(SOCK),
            Path::new(DEFAULT_HOSTS_DIR),
        );
        let drop_in = crate::setup::dropin::drop_in_text(
            main,
            V2_3,
            &w,
            Path::new("/etc/containerd/conf.d/airgap-snapshotter.toml"),
        )
        .unwrap();
        // Without it: the plugin is missing.
        let (f, _d) = run_in_tmp(V2_3);
        assert!(failed(&f).iter().any(|c| c.name.contains("proxy_plugins")));
        let (f, dir) = run_in_tmp_with(V2_3, &[("airgap-snapshotter.toml", &drop_in)]);
        assert!(failed(&f).is_empty(), "{:#?}", failed(&f));
        let from = f
            .checks
            .iter()
            .find(|c| c.name == "[proxy_plugins.airgap]")
            .unwrap();
        assert!(from.detail.contains("airgap-snapshotter.toml"), "{from:?}");
        assert!(f
            .checks
            .iter()
            .any(|c| c.name == "containerd config imports"
                && c.detail
                    .contains(&dir.path().join("conf.d").display().to_string())));
        // A later drop-in that sets CRI's snapshotter back: doctor says so.
        let (f, _d) = run_in_tmp_with(
            V2_3,
            &[
                ("airgap-snapshotter.toml", &drop_in),
                (
                    "zz-k8s.toml",
                    "version = 3\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 'overlayfs'\n",
                ),
            ],
        );
        let c = one_failure(&f, "snapshotter");
        assert!(c.detail.contains("overlayfs") && c.fix.unwrap().contains("drop-ins"));
        // A drop-in containerd cannot parse: a failure naming it.
        let (f, _d) = run_in_tmp_with(V2_3, &[("broken.toml", "version = [")]);
        one_failure(&f, "broken.toml");
    }

    #[test]
    fn legacy_mirrors_with_config_path() {
        let text = format!(
            "{}\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n",
            merged(V1_6, ContainerdVersion::V1)
        );
        let c = one_failure(&run(&text), "docker.io");
        assert!(c.fix.unwrap().contains("--registry HOST"));
    }

    #[test]
    fn rebase_capability() {
        let text = merged(V2_1, ContainerdVersion::V2).replace(
            "type = \"snapshot\"",
            "type = \"snapshot\"\ncapabilities = [\"rebase\"]",
        );
        one_failure(&run(&text), "rebase");
    }

    #[test]
    fn version_1_file_and_pull_mode() {
        let f = run("root = \"/var/lib/containerd\"\n");
        let c = one_failure(&f, "version");
        assert_eq!(c.status, Status::Fail);
        let text = merged(V2_1, ContainerdVersion::V2).replace(
            "use_local_image_pull = false",
            "use_local_image_pull = true",
        );
        let f = run(&text);
        assert!(failed(&f).is_empty());
        let mode = f.checks.iter().find(|c| c.name == "CRI pull mode").unwrap();
        assert!(mode.detail.contains("use_local_image_pull"), "{mode:?}");
    }
}
