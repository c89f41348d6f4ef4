//! The registry hosts directory: the mirror must be the first host in
//! `_default/hosts.toml` and in every registry directory that exists
//! (containerd reads `<registry>/hosts.toml` instead of `_default` when it
//! exists, so one without the mirror bypasses it).

use std::path::Path;

use super::Check;

/// The first `[host."URL"]` of a hosts.toml, in file order.
pub fn first_host(text: &str) -> Result<Option<String>, String> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    Ok(doc
        .get("host")
        .and_then(|h| h.as_table_like())
        .and_then(|t| t.iter().next().map(|(k, _)| k.to_string())))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Checks `dir` for a mirror at `mirror` (`http://127.0.0.1:5050`); `None`
/// when the daemon's mirror is off.
pub fn check(dir: &Path, mirror: Option<&str>) -> Vec<Check> {
    let Some(mirror) = mirror else {
        return vec![Check::warn(
            "hosts.toml",
            "the daemon's mirror is off: pulls resolve at the registries, archived images still unpack from the archives",
            "set mirror_listen (e.g. 127.0.0.1:5050) and run `airgap-snapshotter config --write DIR`",
        )];
    };
    let d = dir.display();
    let mut names: Vec<String> = vec!["_default".into()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut others: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("hosts.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "_default")
            .collect();
        others.sort();
        names.extend(others);
    }
    let mut out = Vec::new();
    for name in names {
        let file = dir.join(&name).join("hosts.toml");
        let check_name = format!("hosts.toml {name}");
        let fix = if name == "_default" {
            format!("airgap-snapshotter config --write {d} [--upstream https://your-registry]")
        } else {
            format!("airgap-snapshotter config --write {d} --registry {name} [--upstream https://your-registry]")
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.push(Check::fail(
                    check_name,
                    format!("{} does not exist: registries without a directory of their own do not use the mirror", file.display()),
                    fix,
                ));
                continue;
            }
            Err(e) => {
                out.push(Check::fail(
                    check_name,
                    format!("reading {}: {e}", file.display()),
                    fix,
                ));
                continue;
            }
        };
        match first_host(&text) {
            Err(e) => out.push(Check::fail(
                check_name,
                format!("{} is not valid TOML: {e}", file.display()),
                fix,
            )),
            Ok(Some(h)) if same_url(&h, mirror) => out.push(Check::ok(
                check_name,
                format!("{}: the mirror {mirror} is the first host", file.display()),
            )),
            Ok(first) => {
                let found = match first {
                    Some(h) => format!("its first host is {h}"),
                    None => "it lists no host".to_string(),
                };
                let what = if name == "_default" {
                    "pulls bypass the mirror".to_string()
                } else {
                    format!("pulls from {name} bypass the mirror")
                };
                out.push(Check::fail(
                    check_name,
                    format!(
                        "{}: {found}, not the mirror {mirror}: {what}",
                        file.display()
                    ),
                    fix,
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const MIRROR: &str = "http://127.0.0.1:5050";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn mirror_first_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!(
            "server = \"https://harbor\"\n[host.\"{MIRROR}/\"]\n  capabilities = [\"pull\"]\n[host.\"https://b\"]\n"
        );
        write(dir.path(), "_default", &good);
        write(dir.path(), "quay.io", &good);
        let checks = check(dir.path(), Some(MIRROR));
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");

        // A registry directory without the mirror is named, with its fix.
        write(
            dir.path(),
            "docker.io",
            "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.gcr.io\"]\n",
        );
        let checks = check(dir.path(), Some(MIRROR));
        let bad: Vec<_> = checks.iter().filter(|c| c.status == Status::Fail).collect();
        assert_eq!(bad.len(), 1, "{checks:#?}");
        assert_eq!(bad[0].name, "hosts.toml docker.io");
        assert!(bad[0].detail.contains("https://mirror.gcr.io"));
        assert!(bad[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("--registry docker.io"));

        // The mirror second is not enough.
        write(
            dir.path(),
            "_default",
            &format!("[host.\"https://a\"]\n[host.\"{MIRROR}\"]\n"),
        );
        let checks = check(dir.path(), Some(MIRROR));
        assert_eq!(checks[0].status, Status::Fail);
    }

    #[test]
    fn no_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let checks = check(&dir.path().join("nope"), Some(MIRROR));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].fix.as_deref().unwrap().contains("config --write"));
        assert_eq!(check(dir.path(), None)[0].status, Status::Warn);
    }
}
