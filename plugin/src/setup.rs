//! `airgap-snapshotter config`: what a node's containerd needs to use the
//! daemon. Prints the `config.toml` fragment (proxy snapshotter, CRI
//! snapshotter, the registry hosts directory) for containerd 1.6/1.7
//! (`version = 2` config) or 2.x (`version = 3`), and the `hosts.toml` that
//! puts the mirror first and the private registry last; `--write DIR` writes
//! the hosts files, keeping a backup of any file it replaces.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::{DEFAULT_MIRROR_LISTEN, DEFAULT_SOCKET};

/// Where containerd looks for `hosts.toml` files by convention.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// The proxy plugin's name in containerd's config.
pub const SNAPSHOTTER: &str = "airgap";

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// containerd version the fragment is for: 1.6, 1.7 or 2 (2.x).
    #[arg(long, value_name = "1.6|1.7|2", default_value = "1.7", value_parser = parse_version)]
    pub containerd: ContainerdVersion,
    /// The daemon's snapshotter socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The mirror's address (`serve --mirror-listen`), or `off` for no mirror
    /// in hosts.toml.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_MIRROR_LISTEN)]
    pub mirror: String,
    /// The private registry containerd tries after the mirror
    /// (`https://host[:port]`); without it, each image's own registry.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Write `DIR/_default/hosts.toml` (and `DIR/<registry>/hosts.toml` for
    /// each --registry) instead of only printing; a replaced file is kept as
    /// `hosts.toml.<unix time>.bak`.
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
    /// Also write a hosts.toml for this registry (repeatable): containerd
    /// reads `DIR/<registry>/hosts.toml` instead of `_default` when it exists.
    #[arg(long = "registry", value_name = "HOST")]
    pub registries: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerdVersion {
    /// containerd 1.6 and 1.7: `version = 2` config.
    V1,
    /// containerd 2.x: `version = 3` config.
    V2,
}

fn parse_version(s: &str) -> Result<ContainerdVersion, String> {
    match s {
        "1.6" | "1.7" | "1" => Ok(ContainerdVersion::V1),
        "2" | "2.0" | "2.1" | "2.2" => Ok(ContainerdVersion::V2),
        _ if s.starts_with("2.") => Ok(ContainerdVersion::V2),
        _ => Err(format!("{s:?}: expected 1.6, 1.7 or 2")),
    }
}

/// The mirror's URL in hosts.toml: `http://ADDR` for a bare address.
fn mirror_url(mirror: &str) -> Option<String> {
    if mirror.eq_ignore_ascii_case("off") {
        return None;
    }
    if mirror.contains("://") {
        Some(mirror.trim_end_matches('/').to_string())
    } else {
        Some(format!("http://{mirror}"))
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// The config.toml fragment.
pub fn config_toml(args: &ConfigArgs) -> String {
    let socket = toml_str(&args.socket.display().to_string());
    let hosts_dir = toml_str(
        &args
            .write
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_HOSTS_DIR))
            .display()
            .to_string(),
    );
    match args.containerd {
        ContainerdVersion::V1 => format!(
            r#"# containerd 1.6 / 1.7: /etc/containerd/config.toml (version = 2).
# Merge these keys into the tables of the same name: containerd refuses a
# table defined twice (the default config already has [proxy_plugins] and
# both plugin tables).
[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = {socket}

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "{SNAPSHOTTER}"
  # containerd passes the layer hints to the snapshotter only with this:
  disable_snapshot_annotations = false

[plugins."io.containerd.grpc.v1.cri".registry]
  # hosts.toml files: the mirror first, the private registry last
  config_path = {hosts_dir}
"#
        ),
        ContainerdVersion::V2 => format!(
            r#"# containerd 2.x: /etc/containerd/config.toml (version = 3).
# Merge these keys into the tables of the same name: containerd refuses a
# table defined twice.
[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = {socket}
  [proxy_plugins.{SNAPSHOTTER}.exports]
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{SNAPSHOTTER}"

[plugins."io.containerd.cri.v1.images".registry]
  # hosts.toml files: the mirror first, the private registry last
  config_path = {hosts_dir}

# so that `ctr pull --snapshotter {SNAPSHOTTER}` (transfer service) unpacks
# through the snapshotter's fast path too. These entries replace containerd's
# default list: keep overlayfs, or `ctr pull`/`ctr images import` into
# overlayfs stop unpacking.
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "{platform}"
  snapshotter = "{SNAPSHOTTER}"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "{platform}"
  snapshotter = "overlayfs"
"#,
            platform = platform()
        ),
    }
}

/// The hosts.toml: the private registry as `server` (tried last), the
/// mirror as the first host.
pub fn hosts_toml(args: &ConfigArgs) -> String {
    let mut out = String::from(
        "# containerd registry hosts: tried in order, the mirror first; on a 404,\n\
         # any other error or a refused connection containerd moves on, and the\n\
         # server comes last.\n",
    );
    match &args.upstream {
        Some(u) => out.push_str(&format!("server = {}\n", toml_str(u.trim_end_matches('/')))),
        None => out.push_str("# (no server: the registry the image name says)\n"),
    }
    if let Some(m) = mirror_url(&args.mirror) {
        out.push_str(&format!(
            "\n# airgap-snapshotter's mirror: images from the airgap archives\n\
             [host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_str(&m)
        ));
    }
    out
}

/// What `--write` did to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Created(PathBuf),
    Unchanged(PathBuf),
    Replaced { path: PathBuf, backup: PathBuf },
}

/// Writes `content` to `dir/<name>/hosts.toml` (atomically), moving a
/// different existing file aside first.
pub fn write_hosts(dir: &Path, name: &str, content: &str) -> anyhow::Result<Written> {
    if name.is_empty() || name.contains('/') || name == ".." || name == "." {
        bail!("{name:?} is not a registry host name");
    }
    let sub = dir.join(name);
    fs::create_dir_all(&sub).with_context(|| format!("create {}", sub.display()))?;
    let path = sub.join("hosts.toml");
    let old = match fs::read(&path) {
        Ok(old) => Some(old),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    if old.as_deref() == Some(content.as_bytes()) {
        return Ok(Written::Unchanged(path));
    }
    let mut backup = None;
    if old.is_some() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut b = sub.join(format!("hosts.toml.{secs}.bak"));
        let mut n = 1;
        while b.exists() {
            b = sub.join(format!("hosts.toml.{secs}.{n}.bak"));
            n += 1;
        }
        fs::copy(&path, &b)
            .with_context(|| format!("back up {} to {}", path.display(), b.display()))?;
        backup = Some(b);
    }
    let mut tmp = tempfile::NamedTempFile::new_in(&sub)
        .with_context(|| format!("create a temporary file in {}", sub.display()))?;
    tmp.write_all(content.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("write {}", tmp.path().display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", tmp.path().display()))?;
    }
    tmp.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(match backup {
        Some(backup) => Written::Replaced { path, backup },
        None => Written::Created(path),
    })
}

/// Host directories in `dir` other than `_default` and those written now:
/// containerd uses them instead of `_default`, so they bypass the mirror.
fn bypassing(dir: &Path, written: &[String]) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.path().join("hosts.toml").is_file())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name != "_default" && !written.contains(&name)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Runs the command.
pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    if let Some(u) = &args.upstream {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            bail!("--upstream {u:?}: expected https://host[:port] or http://host[:port]");
        }
    }
    let hosts = hosts_toml(&args);
    let hosts_dir = args
        .write
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR));
    let mut out = String::new();
    out.push_str(&config_toml(&args));
    out.push_str(&format!(
        "\n# ---- {}/_default/hosts.toml ----\n",
        hosts_dir.display()
    ));
    out.push_str(&hosts);
    print!("{out}");
    if let Some(dir) = &args.write {
        let mut names = vec!["_default".to_string()];
        names.extend(args.registries.iter().cloned());
        for name in &names {
            match write_hosts(dir, name, &hosts)? {
                Written::Created(p) => eprintln!("wrote {}", p.display()),
                Written::Unchanged(p) => eprintln!("{} is already up to date", p.display()),
                Written::Replaced { path, backup } => eprintln!(
                    "wrote {} (the previous file is {})",
                    path.display(),
                    backup.display()
                ),
            }
        }
        for p in bypassing(dir, &names) {
            eprintln!(
                "note: {} has its own hosts.toml: containerd uses it instead of _default for that registry, \
                 so those pulls bypass the mirror (add --registry {} to rewrite it)",
                p.display(),
                p.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn args(argv: &[&str]) -> ConfigArgs {
        Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
            .unwrap()
            .config
    }

    fn get<'a>(v: &'a toml::Value, path: &[&str]) -> &'a toml::Value {
        path.iter().fold(v, |v, k| {
            v.get(k)
                .unwrap_or_else(|| panic!("no {k} in {path:?}: {v}"))
        })
    }

    #[test]
    fn containerd_1_fragment() {
        let a = args(&["--containerd", "1.6", "--socket", "/run/x/s.sock"]);
        let v: toml::Value = config_toml(&a).parse().unwrap();
        assert_eq!(
            get(&v, &["proxy_plugins", "airgap", "type"]).as_str(),
            Some("snapshot")
        );
        assert_eq!(
            get(&v, &["proxy_plugins", "airgap", "address"]).as_str(),
            Some("/run/x/s.sock")
        );
        let cri = ["plugins", "io.containerd.grpc.v1.cri"];
        assert_eq!(
            get(&v, &[cri[0], cri[1], "containerd", "snapshotter"]).as_str(),
            Some("airgap")
        );
        assert_eq!(
            get(
                &v,
                &[cri[0], cri[1], "containerd", "disable_snapshot_annotations"]
            )
            .as_bool(),
            Some(false)
        );
        assert_eq!(
            get(&v, &[cri[0], cri[1], "registry", "config_path"]).as_str(),
            Some(DEFAULT_HOSTS_DIR)
        );
    }

    #[test]
    fn containerd_2_fragment() {
        let a = args(&["--containerd", "2", "--write", "/srv/certs.d"]);
        let v: toml::Value = config_toml(&a).parse().unwrap();
        assert_eq!(
            get(
                &v,
                &[
                    "proxy_plugins",
                    "airgap",
                    "exports",
                    "enable_remote_snapshot_annotations"
                ]
            )
            .as_str(),
            Some("true")
        );
        let images = ["plugins", "io.containerd.cri.v1.images"];
        assert_eq!(
            get(&v, &[images[0], images[1], "snapshotter"]).as_str(),
            Some("airgap")
        );
        assert_eq!(
            get(&v, &[images[0], images[1], "registry", "config_path"]).as_str(),
            Some("/srv/certs.d")
        );
        let unpack = get(
            &v,
            &[
                "plugins",
                "io.containerd.transfer.v1.local",
                "unpack_config",
            ],
        );
        assert_eq!(unpack[0]["snapshotter"].as_str(), Some("airgap"));
        // An entry replaces containerd's default list: overlayfs stays.
        assert_eq!(unpack[1]["snapshotter"].as_str(), Some("overlayfs"));
        assert_eq!(unpack.as_array().unwrap().len(), 2);
        for entry in unpack.as_array().unwrap() {
            assert!(entry["platform"].as_str().unwrap().starts_with("linux/"));
        }
        // One hosts directory: with a list (2.2's default), transfer-service
        // pulls ignore hosts.toml.
        assert!(!get(&v, &[images[0], images[1], "registry", "config_path"])
            .as_str()
            .unwrap()
            .contains(':'));
        assert!(args(&["--containerd", "2.1"]).containerd == ContainerdVersion::V2);
        assert!(Cli::try_parse_from(["x", "--containerd", "1.5"]).is_err());
    }

    #[test]
    fn hosts_file() {
        let a = args(&[
            "--mirror",
            "127.0.0.1:5050",
            "--upstream",
            "https://harbor.example.internal/",
        ]);
        let v: toml::Value = hosts_toml(&a).parse().unwrap();
        assert_eq!(
            v["server"].as_str(),
            Some("https://harbor.example.internal")
        );
        let caps = get(&v, &["host", "http://127.0.0.1:5050", "capabilities"]);
        assert_eq!(caps.as_array().unwrap().len(), 2);
        let v: toml::Value = hosts_toml(&args(&[])).parse().unwrap();
        assert!(v.get("server").is_none());
        assert!(v["host"].get("http://127.0.0.1:5050").is_some());
        let v: toml::Value = hosts_toml(&args(&["--mirror", "off", "--upstream", "http://r:5000"]))
            .parse()
            .unwrap();
        assert!(v.get("host").is_none());
    }

    #[test]
    fn write_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_hosts(dir.path(), "_default", "a\n").unwrap();
        let path = dir.path().join("_default/hosts.toml");
        assert_eq!(w, Written::Created(path.clone()));
        assert_eq!(
            write_hosts(dir.path(), "_default", "a\n").unwrap(),
            Written::Unchanged(path.clone())
        );
        match write_hosts(dir.path(), "_default", "b\n").unwrap() {
            Written::Replaced { path: p, backup } => {
                assert_eq!(p, path);
                assert_eq!(fs::read_to_string(&backup).unwrap(), "a\n");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
        match write_hosts(dir.path(), "_default", "c\n").unwrap() {
            Written::Replaced { backup, .. } => {
                assert_eq!(fs::read_to_string(backup).unwrap(), "b\n")
            }
            other => panic!("{other:?}"),
        }
        assert!(write_hosts(dir.path(), "../x", "a").is_err());
        write_hosts(dir.path(), "quay.io", "q\n").unwrap();
        assert_eq!(
            bypassing(dir.path(), &["_default".into()]),
            [dir.path().join("quay.io")]
        );
        assert!(bypassing(dir.path(), &["_default".into(), "quay.io".into()]).is_empty());
    }
}
