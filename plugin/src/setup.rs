//! What a node's containerd needs to use the daemon: the `config.toml`
//! fragment (proxy snapshotter, CRI snapshotter, the registry hosts
//! directory) for containerd 1.6/1.7 (`version = 2` config) or 2.x
//! (`version = 3`), and the `hosts.toml` that puts the mirror first and the
//! private registry last. The `config` command prints and writes them.

use std::path::{Path, PathBuf};

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
}
