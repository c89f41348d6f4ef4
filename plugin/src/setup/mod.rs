//! What a node's containerd needs to use the daemon: the `config.toml`
//! fragment (proxy snapshotter, CRI snapshotter, the registry hosts
//! directory) for containerd 1.6/1.7 (`version = 2` config) or 2.x
//! (`version = 3`), and the `hosts.toml` that puts the mirror first and the
//! private registry last. The `config` command prints and writes them.
//!
//! [`Wiring`] lists what the config needs per version (tables, keys, values
//! and the 2.x `unpack_config` entries): [`render`] prints it as a fragment,
//! [`merge`] edits an existing config.toml to match it.

pub mod dropin;
pub mod hosts;
pub mod merge;
pub mod registries;

use std::path::{Path, PathBuf};

use crate::config::{DEFAULT_MIRROR_LISTEN, DEFAULT_SOCKET};

/// Where containerd looks for `hosts.toml` files by convention.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// The proxy plugin's name in containerd's config.
pub const SNAPSHOTTER: &str = "airgap";

/// containerd's config file by convention (`--containerd-config`).
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// `config`'s arguments. The names are those of the other commands for the
/// same things (`--socket`, `--mirror-listen`, `--hosts-dir`,
/// `--containerd-config`, `--config`); the old spellings (`--mirror ADDR`,
/// `--write DIR`, `--merge FILE`) still parse, for one release.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// The daemon's config file: `socket` and `mirror_listen` come from it
    /// unless given [default: /etc/airgap-snapshotter/config.toml when it
    /// exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// containerd version the fragment is for: 1.6, 1.7 (the default) or 2
    /// (2.x). With --merge, read from the file's `version` unless given.
    #[arg(long, value_name = "1.6|1.7|2", value_parser = parse_version)]
    pub containerd: Option<ContainerdVersion>,
    /// The daemon's snapshotter socket (`serve --socket`)
    /// [default: the config file's `socket`, else
    /// /run/airgap-snapshotter/snapshotter.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The mirror's address (`serve --mirror-listen`), or `off` for no
    /// mirror in hosts.toml [default: the config file's `mirror_listen`,
    /// else 127.0.0.1:5050].
    #[arg(long = "mirror-listen", alias = "mirror", value_name = "ADDR|off")]
    pub mirror_listen: Option<String>,
    /// The private registry containerd tries after the mirror
    /// (`https://host[:port]`); without it, each image's own registry.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Another node's cluster listener (`https://host:port`), tried after
    /// this node's mirror and before the private registry; repeat for
    /// several (in order: the first that answers serves). On a node without
    /// the daemon, with `--mirror-listen off`.
    #[arg(long = "serving-node", value_name = "URL")]
    pub serving_nodes: Vec<String>,
    /// PEM CA file that signs the serving nodes' certificates (hosts.toml
    /// `ca`).
    #[arg(long, value_name = "FILE")]
    pub serving_ca: Option<PathBuf>,
    /// This node's client certificate for the serving nodes (mutual TLS;
    /// hosts.toml `client`), with --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// File holding this node's token for the serving nodes: written into
    /// hosts.toml as an `Authorization: Bearer` header (the files are then
    /// made 0600, an existing one merged into too; the printed copy shows a
    /// placeholder).
    #[arg(long, value_name = "FILE")]
    pub serving_token_file: Option<PathBuf>,
    /// The registry hosts directory: CRI's `config_path`, where --write and
    /// --merge write the hosts.toml files [default: /etc/containerd/certs.d].
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Write `DIR/_default/hosts.toml` (and `DIR/<registry>/hosts.toml` for
    /// each --registry) into --hosts-dir DIR instead of only printing; an
    /// existing file is merged (its CA, auth and other hosts kept, the
    /// mirror first) and the previous one kept as
    /// `hosts.toml.<unix time>.bak`. (`--write DIR`: the old spelling of
    /// `--hosts-dir DIR --write`.)
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub write: Option<Option<PathBuf>>,
    /// Also write a hosts.toml for this registry (repeatable): containerd
    /// reads `DIR/<registry>/hosts.toml` instead of `_default` when it exists.
    #[arg(long = "registry", value_name = "HOST")]
    pub registries: Vec<String>,
    /// containerd's config file, for --merge [default: /etc/containerd/config.toml].
    #[arg(long, value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,
    /// Edit --containerd-config FILE in place instead of printing the
    /// fragment: comments and order kept, a backup `FILE.<unix time>.bak`,
    /// owner and mode kept (a symlink is followed), a unified diff printed;
    /// the hosts.toml files are written too (into --hosts-dir). (`--merge
    /// FILE`: the old spelling of `--containerd-config FILE --merge`.)
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub merge: Option<Option<PathBuf>>,
    /// With --merge or --registries-yaml: print the diffs (of config.toml
    /// or its drop-in, and of each hosts.toml), write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print one JSON object `{files: [...]}` instead of
    /// the diffs (see docs/reference.md).
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// With --merge: edit FILE itself even when it imports a drop-in
    /// directory (by default a 2.x config whose `imports` has a glob such as
    /// `/etc/containerd/conf.d/*.toml`, the default from containerd 2.2,
    /// gets the wiring as a drop-in file there, FILE left untouched).
    #[arg(long, requires = "merge")]
    pub no_drop_in: bool,
    /// With --merge: undo it: remove the drop-in file `--merge` wrote for
    /// FILE (only a file it wrote: the first line says so), or, when it
    /// edited FILE in place, restore the backup it made (only when FILE has
    /// not changed since but for the wiring).
    #[arg(long, requires = "merge", conflicts_with = "no_drop_in")]
    pub revert: bool,
    /// k3s / rke2: put the mirror first in this registries.yaml
    /// (`/etc/rancher/k3s/registries.yaml`, `/etc/rancher/rke2/registries.yaml`),
    /// in every `mirrors` entry and in a `"*"` entry (and one per --registry)
    /// added when missing; comments kept, a backup `FILE.<unix time>.bak`, a
    /// unified diff printed.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["merge", "write"])]
    pub registries_yaml: Option<PathBuf>,
    /// k3s / rke2: print the containerd config template for their agent
    /// directory (`config-v3.toml.tmpl` with --containerd 2, else
    /// `config.toml.tmpl`).
    #[arg(long, conflicts_with_all = ["merge", "write", "registries_yaml", "dry_run"])]
    pub containerd_template: bool,
}

/// A path given as the optional value of `--write [DIR]` / `--merge [FILE]`.
fn given(p: &Option<Option<PathBuf>>) -> Option<&Path> {
    p.as_ref().and_then(|p| p.as_deref())
}

impl ConfigArgs {
    /// The daemon's socket: `--socket`, else the default.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// The mirror's address: `--mirror-listen`, else the default.
    pub fn mirror(&self) -> String {
        self.mirror_listen
            .clone()
            .unwrap_or_else(|| DEFAULT_MIRROR_LISTEN.to_string())
    }

    /// containerd's config file `--merge` edits: `--containerd-config`, else
    /// `--merge FILE`, else [`DEFAULT_CONTAINERD_CONFIG`]; `None` without
    /// --merge.
    pub fn merge_file(&self) -> Option<PathBuf> {
        self.merge.as_ref()?;
        Some(
            self.containerd_config
                .clone()
                .or_else(|| given(&self.merge).map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_CONFIG)),
        )
    }

    /// Where the hosts.toml files are written, if they are: with --write.
    pub fn write_dir(&self) -> Option<PathBuf> {
        self.write.as_ref().map(|_| hosts_dir(self))
    }

    /// Two spellings given two different paths: a usage error, named.
    pub fn check_spellings(&self) -> Result<(), SpellingError> {
        let pairs = [
            (
                "--hosts-dir",
                self.hosts_dir.as_deref(),
                "--write",
                given(&self.write),
            ),
            (
                "--containerd-config",
                self.containerd_config.as_deref(),
                "--merge",
                given(&self.merge),
            ),
        ];
        for (new, a, old, b) in pairs {
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    return Err(SpellingError::TwoPaths {
                        new,
                        new_path: a.to_path_buf(),
                        old,
                        old_path: b.to_path_buf(),
                    });
                }
            }
        }
        if self.containerd_config.is_some() && self.merge.is_none() {
            return Err(SpellingError::ConfigWithoutMerge);
        }
        Ok(())
    }
}

/// A usage error of `config`'s flags (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SpellingError {
    #[error(
        "{new} {} and {old} {} name two different paths: give {new} only",
        new_path.display(),
        old_path.display()
    )]
    TwoPaths {
        new: &'static str,
        new_path: PathBuf,
        old: &'static str,
        old_path: PathBuf,
    },
    #[error("--containerd-config goes with --merge")]
    ConfigWithoutMerge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerdVersion {
    /// containerd 1.6 and 1.7: `version = 2` config.
    V1,
    /// containerd 2.x: `version = 3` config (4 from 2.3: the same plugin
    /// tables, server settings moved into `io.containerd.server.v1.*`).
    V2,
}

/// A `--containerd` value that names no containerd this wiring knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected 1.6, 1.7 or 2")]
pub struct UnknownVersion(pub String);

fn parse_version(s: &str) -> Result<ContainerdVersion, UnknownVersion> {
    match s {
        "1.6" | "1.7" | "1" => Ok(ContainerdVersion::V1),
        "2" | "2.0" | "2.1" | "2.2" => Ok(ContainerdVersion::V2),
        _ if s.starts_with("2.") => Ok(ContainerdVersion::V2),
        _ => Err(UnknownVersion(s.to_string())),
    }
}

/// The mirror's URL in hosts.toml: `http://ADDR` for a bare address.
pub fn mirror_url(mirror: &str) -> Option<String> {
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

/// This node's platform as containerd names it (`linux/amd64`).
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Whether an archived platform serves a node of `platform`
/// (`linux/arm64` matches `linux/arm64/v8`, as containerd's matcher does).
pub fn platform_matches(archived: &str, platform: &str) -> bool {
    archived == platform
        || archived.starts_with(&format!("{platform}/"))
        || platform.starts_with(&format!("{archived}/"))
}

/// A value the wiring sets in containerd's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingValue {
    Str(String),
    Bool(bool),
}

impl SettingValue {
    /// The value as TOML source.
    pub fn to_toml(&self) -> String {
        match self {
            SettingValue::Str(s) => toml_str(s),
            SettingValue::Bool(b) => b.to_string(),
        }
    }
}

/// One key of containerd's config the wiring sets.
#[derive(Clone, Debug)]
pub struct Setting {
    pub key: &'static str,
    pub value: SettingValue,
    /// Shown above the key in the printed fragment.
    pub comment: Option<&'static str>,
}

/// The keys set in one table (`path`: the table's keys from the root).
#[derive(Clone, Debug)]
pub struct TableSettings {
    pub path: Vec<&'static str>,
    pub settings: Vec<Setting>,
    /// Shown above the table header in the printed fragment.
    pub comment: Option<&'static str>,
}

/// An entry of containerd 2.x's transfer service `unpack_config` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackEntry {
    pub platform: String,
    pub snapshotter: String,
}

/// The table holding the transfer service's `unpack_config` array of tables.
pub const TRANSFER_TABLE: [&str; 2] = ["plugins", "io.containerd.transfer.v1.local"];
/// The key of that array.
pub const UNPACK_CONFIG: &str = "unpack_config";

/// Everything a containerd config needs for this daemon, per config version:
/// what `config` prints, what `config --merge` writes into an existing file
/// and what `doctor` checks. The one source of truth for the wiring.
#[derive(Clone, Debug)]
pub struct Wiring {
    pub version: ContainerdVersion,
    pub tables: Vec<TableSettings>,
    /// 2.x: entries that must be in the transfer service's `unpack_config`
    /// (an entry replaces containerd's defaults, so overlayfs is one).
    pub unpack: Vec<UnpackEntry>,
}

/// The CRI table holding `snapshotter` (and `disable_snapshot_annotations`).
pub fn cri_images_table(version: ContainerdVersion) -> Vec<&'static str> {
    match version {
        ContainerdVersion::V1 => vec!["plugins", "io.containerd.grpc.v1.cri", "containerd"],
        ContainerdVersion::V2 => vec!["plugins", "io.containerd.cri.v1.images"],
    }
}

/// The CRI table holding the registry `config_path`.
pub fn cri_registry_table(version: ContainerdVersion) -> Vec<&'static str> {
    match version {
        ContainerdVersion::V1 => vec!["plugins", "io.containerd.grpc.v1.cri", "registry"],
        ContainerdVersion::V2 => vec!["plugins", "io.containerd.cri.v1.images", "registry"],
    }
}

/// The hosts directory the wiring points CRI at: `--hosts-dir` (or the old
/// `--write DIR`), else [`DEFAULT_HOSTS_DIR`].
pub fn hosts_dir(args: &ConfigArgs) -> PathBuf {
    args.hosts_dir
        .clone()
        .or_else(|| given(&args.write).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR))
}

impl Wiring {
    /// The wiring for `version` with the daemon's socket and hosts directory.
    pub fn new(version: ContainerdVersion, socket: &Path, hosts_dir: &Path) -> Self {
        let s = |v: &Path| SettingValue::Str(v.display().to_string());
        let mut proxy = vec![
            Setting {
                key: "type",
                value: SettingValue::Str("snapshot".into()),
                comment: None,
            },
            Setting {
                key: "address",
                value: s(socket),
                comment: None,
            },
        ];
        let mut tables = Vec::new();
        let config_path = Setting {
            key: "config_path",
            value: s(hosts_dir),
            comment: Some("hosts.toml files: the mirror first, the private registry last"),
        };
        let snapshotter = Setting {
            key: "snapshotter",
            value: SettingValue::Str(SNAPSHOTTER.into()),
            comment: None,
        };
        match version {
            ContainerdVersion::V1 => {
                tables.push(TableSettings {
                    path: vec!["proxy_plugins", SNAPSHOTTER],
                    settings: std::mem::take(&mut proxy),
                    comment: None,
                });
                tables.push(TableSettings {
                    path: cri_images_table(version),
                    settings: vec![
                        snapshotter,
                        Setting {
                            key: "disable_snapshot_annotations",
                            value: SettingValue::Bool(false),
                            comment: Some(
                                "containerd passes the layer hints to the snapshotter only with this:",
                            ),
                        },
                    ],
                    comment: None,
                });
            }
            ContainerdVersion::V2 => {
                tables.push(TableSettings {
                    path: vec!["proxy_plugins", SNAPSHOTTER],
                    settings: std::mem::take(&mut proxy),
                    comment: None,
                });
                tables.push(TableSettings {
                    path: vec!["proxy_plugins", SNAPSHOTTER, "exports"],
                    settings: vec![Setting {
                        key: "enable_remote_snapshot_annotations",
                        value: SettingValue::Str("true".into()),
                        comment: None,
                    }],
                    comment: None,
                });
                tables.push(TableSettings {
                    path: cri_images_table(version),
                    settings: vec![snapshotter],
                    comment: None,
                });
            }
        }
        tables.push(TableSettings {
            path: cri_registry_table(version),
            settings: vec![config_path],
            comment: None,
        });
        let unpack = match version {
            ContainerdVersion::V1 => Vec::new(),
            ContainerdVersion::V2 => [SNAPSHOTTER, "overlayfs"]
                .into_iter()
                .map(|snapshotter| UnpackEntry {
                    platform: platform(),
                    snapshotter: snapshotter.into(),
                })
                .collect(),
        };
        Self {
            version,
            tables,
            unpack,
        }
    }

    /// The wiring `config` arguments describe (`--containerd`, default 1.7).
    pub fn from_args(args: &ConfigArgs) -> Self {
        Self::new(
            args.containerd.unwrap_or(ContainerdVersion::V1),
            &args.socket(),
            &hosts_dir(args),
        )
    }
}

/// A table path as a TOML header: `plugins."io.containerd.grpc.v1.cri"`.
pub fn table_header(path: &[&str]) -> String {
    path.iter()
        .map(|k| {
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                k.to_string()
            } else {
                toml_str(k)
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The config.toml fragment, rendered from [`Wiring`].
pub fn config_toml(args: &ConfigArgs) -> String {
    render(&Wiring::from_args(args))
}

/// Renders a wiring as the fragment to paste into config.toml.
pub fn render(wiring: &Wiring) -> String {
    let mut out = String::from(match wiring.version {
        ContainerdVersion::V1 => {
            "# containerd 1.6 / 1.7: /etc/containerd/config.toml (version = 2).\n\
             # Merge these keys into the tables of the same name: containerd refuses a\n\
             # table defined twice (the default config already has [proxy_plugins] and\n\
             # both plugin tables); `config --merge FILE` does it for you.\n"
        }
        ContainerdVersion::V2 => {
            "# containerd 2.x: /etc/containerd/config.toml (version = 3; 4 from 2.3).\n\
             # Merge these keys into the tables of the same name: containerd refuses a\n\
             # table defined twice; `config --merge FILE` does it for you.\n"
        }
    });
    out.push_str(&render_body(&wiring.tables, &wiring.unpack));
    out
}

/// The tables and `unpack_config` entries as TOML.
fn render_body(tables: &[TableSettings], unpack: &[UnpackEntry]) -> String {
    let mut out = String::new();
    let mut previous: Option<&[&str]> = None;
    for table in tables {
        // A sub-table right after its parent stays in the parent's block.
        let nested = previous.is_some_and(|p| table.path.starts_with(p));
        let indent = if nested { "  " } else { "" };
        if !nested {
            out.push('\n');
        }
        if let Some(c) = table.comment {
            out.push_str(&format!("{indent}# {c}\n"));
        }
        out.push_str(&format!("{indent}[{}]\n", table_header(&table.path)));
        for s in &table.settings {
            if let Some(c) = s.comment {
                out.push_str(&format!("{indent}  # {c}\n"));
            }
            out.push_str(&format!("{indent}  {} = {}\n", s.key, s.value.to_toml()));
        }
        previous = Some(&table.path);
    }
    if !unpack.is_empty() {
        out.push_str(&format!(
            "\n# so that `ctr pull --snapshotter {SNAPSHOTTER}` (transfer service) unpacks\n\
             # through the snapshotter's fast path too. These entries replace containerd's\n\
             # default list: keep overlayfs, or `ctr pull`/`ctr images import` into\n\
             # overlayfs stop unpacking.\n"
        ));
        let header = table_header(&[TRANSFER_TABLE[0], TRANSFER_TABLE[1], UNPACK_CONFIG]);
        for (i, e) in unpack.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!(
                "[[{header}]]\n  platform = {}\n  snapshotter = {}\n",
                toml_str(&e.platform),
                toml_str(&e.snapshotter)
            ));
        }
    }
    out
}

/// The k3s / rke2 containerd config template: its file name in their
/// agent directory (`config-v3.toml.tmpl` for containerd 2.x, which k3s and
/// rke2 read first, `config.toml.tmpl` for 1.7) and its text.
///
/// k3s renders the template with Go's text/template after defining the
/// built-in config as the template `base` (k3s and rke2 since September
/// 2023), so the template is the base plus what it lacks: the proxy plugin
/// and, on 2.x, the transfer service's `unpack_config`. CRI's snapshotter
/// and the hosts directory are not set here: the base already writes those
/// tables (a second `[plugins."io.containerd.cri.v1.images"]` is a
/// duplicate table containerd refuses); k3s's `snapshotter: airgap` setting
/// fills the base's, and its `registries.yaml` the hosts directory.
pub fn k3s_template(wiring: &Wiring) -> (&'static str, String) {
    let (file, base) = match wiring.version {
        ContainerdVersion::V2 => (
            "config-v3.toml.tmpl",
            "k3s / rke2 on containerd 2.x (`k3s crictl version` says which; a version = 3 base)",
        ),
        ContainerdVersion::V1 => (
            "config.toml.tmpl",
            "k3s / rke2 on containerd 1.7 (a version = 2 base)",
        ),
    };
    let mut out = format!(
        "# airgap-snapshotter for {base}.\n\
         # Save as /var/lib/rancher/k3s/agent/etc/containerd/{file}\n\
         # (rke2: /var/lib/rancher/rke2/agent/etc/containerd/{file}), set\n\
         # `snapshotter: {SNAPSHOTTER}` in /etc/rancher/k3s/config.yaml (rke2:\n\
         # /etc/rancher/rke2/config.yaml), put the mirror first in registries.yaml\n\
         # (`airgap-snapshotter config --registries-yaml FILE`), restart k3s / rke2.\n\
         # The next line is k3s's own config; below it, only tables it lacks.\n\
         {{{{ template \"base\" . }}}}\n"
    );
    let tables: Vec<TableSettings> = wiring
        .tables
        .iter()
        .filter(|t| t.path.first() == Some(&"proxy_plugins"))
        .cloned()
        .collect();
    out.push_str(&render_body(&tables, &wiring.unpack));
    (file, out)
}

/// The hosts.toml: the private registry as `server` (tried last), the
/// mirror as the first host.
/// The token of `--serving-token-file`, trimmed.
pub fn serving_token(args: &ConfigArgs) -> std::io::Result<Option<String>> {
    let Some(path) = &args.serving_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it holds no single token",
        ));
    }
    Ok(Some(token.to_string()))
}

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
    if let Some(m) = mirror_url(&args.mirror()) {
        out.push_str(&format!(
            "\n# airgap-snapshotter's mirror: images from the airgap archives\n\
             [host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_str(&m)
        ));
    }
    let token = serving_token(args).ok().flatten();
    for node in &args.serving_nodes {
        let node = toml_str(node.trim_end_matches('/'));
        out.push_str(&format!(
            "\n# a serving node: another node's airgap-snapshotter cluster listener\n\
             [host.{node}]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
        if let Some(ca) = &args.serving_ca {
            out.push_str(&format!("  ca = {}\n", toml_str(&ca.display().to_string())));
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            out.push_str(&format!(
                "  client = [[{}, {}]]\n",
                toml_str(&cert.display().to_string()),
                toml_str(&key.display().to_string())
            ));
        }
        if let Some(token) = &token {
            out.push_str(&format!(
                "  [host.{node}.header]\n    Authorization = {}\n",
                toml_str(&format!("Bearer {token}"))
            ));
        }
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

    /// The 2.x export that adds the cri.* labels on transfer-service pulls.
    const REMOTE_ANNOTATIONS: [&str; 4] = [
        "proxy_plugins",
        "airgap",
        "exports",
        "enable_remote_snapshot_annotations",
    ];

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
        assert_eq!(get(&v, &REMOTE_ANNOTATIONS).as_str(), Some("true"));
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
        assert!(args(&["--containerd", "2.1"]).containerd == Some(ContainerdVersion::V2));
        assert!(Cli::try_parse_from(["x", "--containerd", "1.5"]).is_err());
    }

    /// k3s renders the template with its base config in place of the
    /// `template "base"` line: stand containerd's own defaults in for the
    /// base, and the result must be one valid config (no table defined
    /// twice) with the proxy plugin and, on 2.x, both unpack entries.
    #[test]
    fn k3s_templates_extend_the_base() {
        let base_marker = "{{ template \"base\" . }}\n";
        for (version, fixture, file) in [
            (
                ContainerdVersion::V1,
                "containerd-1.7.24.toml",
                "config.toml.tmpl",
            ),
            (
                ContainerdVersion::V2,
                "containerd-2.1.9.toml",
                "config-v3.toml.tmpl",
            ),
        ] {
            let wiring = Wiring::new(version, Path::new("/run/a/s.sock"), Path::new("/x"));
            let (name, text) = k3s_template(&wiring);
            assert_eq!(name, file);
            assert_eq!(text.matches("{{").count(), 1, "{text}");
            assert!(text.contains(base_marker), "{text}");
            let base = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src/setup/testdata")
                    .join(fixture),
            )
            .unwrap();
            let rendered = text.replace(base_marker, &base);
            let v: toml::Value = rendered
                .parse()
                .unwrap_or_else(|e| panic!("{file} over {fixture}: {e}"));
            assert_eq!(
                get(&v, &["proxy_plugins", "airgap", "address"]).as_str(),
                Some("/run/a/s.sock")
            );
            // CRI's snapshotter and config_path are left to k3s (its
            // `snapshotter` setting and registries.yaml).
            assert!(
                !text.contains("containerd.cri") && !text.contains("v1.cri"),
                "{text}"
            );
            let unpack = lookup_unpack(&v);
            match version {
                ContainerdVersion::V1 => assert!(!text.contains("unpack_config"), "{text}"),
                ContainerdVersion::V2 => {
                    let names: Vec<&str> = unpack
                        .unwrap()
                        .iter()
                        .map(|e| e["snapshotter"].as_str().unwrap())
                        .collect();
                    assert_eq!(names, ["airgap", "overlayfs"]);
                    assert_eq!(get(&v, &REMOTE_ANNOTATIONS).as_str(), Some("true"));
                }
            }
        }
    }

    fn lookup_unpack(v: &toml::Value) -> Option<&Vec<toml::Value>> {
        v.get("plugins")?
            .get("io.containerd.transfer.v1.local")?
            .get("unpack_config")?
            .as_array()
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
    fn hosts_file_with_serving_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "node-token-0123456789\n").unwrap();
        let a = args(&[
            "--mirror",
            "off",
            "--upstream",
            "https://harbor.example.internal",
            "--serving-node",
            "https://10.0.0.1:5443",
            "--serving-node",
            "https://10.0.0.2:5443/",
            "--serving-ca",
            "/etc/airgap/ca.pem",
            "--client-cert",
            "/etc/airgap/node.pem",
            "--client-key",
            "/etc/airgap/node.key",
            "--serving-token-file",
            token.to_str().unwrap(),
        ]);
        let text = hosts_toml(&a);
        let v: toml::Value = text.parse().unwrap();
        let hosts = v["host"].as_table().unwrap();
        assert_eq!(hosts.len(), 2);
        // In order: containerd tries them as written.
        let first = text.find("10.0.0.1").unwrap();
        assert!(first < text.find("10.0.0.2").unwrap(), "{text}");
        let h = &hosts["https://10.0.0.2:5443"];
        assert_eq!(h["ca"].as_str(), Some("/etc/airgap/ca.pem"));
        assert_eq!(h["client"][0][1].as_str(), Some("/etc/airgap/node.key"));
        assert_eq!(
            h["header"]["Authorization"].as_str(),
            Some("Bearer node-token-0123456789")
        );
        assert_eq!(
            v["server"].as_str(),
            Some("https://harbor.example.internal")
        );
    }
}
