//! Daemon configuration: one documented [`Config`], loaded from its defaults,
//! then a TOML file (`--config FILE`, else [`DEFAULT_CONFIG_FILE`] when it
//! exists: see [`config_file`]), then command-line flags ([`ServeArgs`]).
//!
//! ```toml
//! root = "/var/lib/airgap-snapshotter"
//! socket = "/run/airgap-snapshotter/snapshotter.sock"
//! archives = ["/var/lib/airgap-snapshotter/archives"]
//! mirror_listen = "127.0.0.1:5050"   # or "off"
//! mirror_allow_non_loopback = false  # true to let the mirror (and metrics) bind a non-loopback address
//! metrics_listen = "127.0.0.1:5051"  # Prometheus `GET /metrics`, or "off"
//! cache_bytes = "10GiB"              # or a number of bytes
//! layer_mounts = "auto"              # "erofs" (required), or "extract"
//! prepare_layers = "on-pull"         # "on-arrival": decompress and index compressed layers ahead
//! layer_backing = "private"          # "archive": mount plain layers from the archive itself (zero copy)
//! layer_store_bytes = "10GiB"        # prepared layers kept when no snapshot uses them
//! index_max_entries = 1000000        # tar entries of a layer indexed in memory; more: extracted
//! index_max_name_bytes = "64MiB"     # bytes of its names, link targets and xattrs; more: extracted
//! archive_removal_grace = "5m"       # an archive's file absent this long: the archive is gone
//! containerd_address = "/run/containerd/containerd.sock"
//!
//! # Archived images registered in containerd before anyone pulls them.
//! [import]
//! namespaces = ["k8s.io"]
//! mode = "lazy"                      # "eager", or "off"
//! snapshotter = "airgap"             # the [proxy_plugins] name
//!
//! # Signed bundles: cosign signatures of the archived images, checked
//! # against these public keys, offline.
//! [verify]
//! keys = ["/etc/airgap-snapshotter/cosign.pub"]
//! require = "enforce"                # "warn", or "off" (the default)
//!
//! # What the archives lack is fetched from these registries (first match
//! # of `registry`, then `*`).
//! [[upstream]]
//! registry = "docker.io"
//! endpoint = "https://harbor.example.internal"
//! path_prefix = "dockerhub"
//! username = "robot"
//! password_file = "/etc/airgap-snapshotter/harbor.password"
//! ca_file = "/etc/airgap-snapshotter/ca.pem"
//!
//! # The archives served to the other nodes: TLS, client authentication,
//! # read-only, limits per client (docs/cluster.md).
//! [[cluster_listener]]
//! listen = "0.0.0.0:5443"
//! tls_cert_file = "/etc/airgap-snapshotter/tls/node.pem"
//! tls_key_file = "/etc/airgap-snapshotter/tls/node.key"
//! client_ca_file = "/etc/airgap-snapshotter/tls/clients-ca.pem"
//! tokens_file = "/etc/airgap-snapshotter/tokens"
//! ```

mod cluster;
mod upstream;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cluster::{
    ClusterListenerConfig, DEFAULT_CLUSTER_BURST, DEFAULT_CLUSTER_CONCURRENCY, DEFAULT_CLUSTER_RPS,
};
pub use upstream::UpstreamConfig;
use values::{
    deserialize_bytes, deserialize_duration, serialize_bytes, serialize_duration, valid_namespace,
};
pub use values::{parse_bytes, Listen, ValueError};

/// The config file every command reads when `--config` is not given and
/// the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/airgap-snapshotter/config.toml";
/// Its name up to 0.1 (the packages installed it there): read, with a
/// warning, when [`DEFAULT_CONFIG_FILE`] does not exist. For one release.
pub const OLD_CONFIG_FILE: &str = "/etc/airgap-snapshotter/airgap-snapshotter.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/airgap-snapshotter";
pub const DEFAULT_SOCKET: &str = "/run/airgap-snapshotter/snapshotter.sock";
pub const DEFAULT_ARCHIVES: &str = "/var/lib/airgap-snapshotter/archives";
pub const DEFAULT_MIRROR_LISTEN: &str = "127.0.0.1:5050";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:5051";
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_IMPORT_NAMESPACE: &str = "k8s.io";
/// The proxy plugin name the wiring (`config`) gives this snapshotter.
pub const DEFAULT_SNAPSHOTTER: &str = "airgap";
/// 10 GiB of decompressed layers.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;
/// 10 GiB of prepared layers not in use.
pub const DEFAULT_LAYER_STORE_BYTES: u64 = 10 << 30;
/// Tar entries of one layer indexed in memory (stopped there, a build
/// peaked at 178 MiB).
pub const DEFAULT_INDEX_MAX_ENTRIES: u64 = 1_000_000;
/// Bytes of names, link targets and xattrs of one layer indexed in memory.
pub const DEFAULT_INDEX_MAX_NAME_BYTES: u64 = 64 << 20;
/// Default of [`Config::archive_removal_grace`]: longer than a disk takes
/// to be mounted at boot.
pub const DEFAULT_ARCHIVE_REMOVAL_GRACE: Duration = Duration::from_secs(300);
/// Longest [`Config::archive_removal_grace`]: an archive deleted for good
/// must leave the view within a day.
const MAX_ARCHIVE_REMOVAL_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Longest path a unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `airgap-snapshotter serve`: every flag overrides the config file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// State directory: snapshot metadata and layers
    /// [default: /var/lib/airgap-snapshotter].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket containerd connects to (`[proxy_plugins] address`)
    /// [default: /run/airgap-snapshotter/snapshotter.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory watched for airgap archives; repeat for several
    /// [default: /var/lib/airgap-snapshotter/archives].
    #[arg(long = "archives", value_name = "DIR")]
    pub archives: Vec<PathBuf>,
    /// TOML configuration file (keys as the long flags, with `_`)
    /// [default: /etc/airgap-snapshotter/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registry mirror listen address, or `off` [default: 127.0.0.1:5050];
    /// a non-loopback address also needs `mirror_allow_non_loopback = true`
    /// in the config file.
    #[arg(long, value_name = "ADDR|off")]
    pub mirror_listen: Option<Listen>,
    /// Prometheus metrics listen address (`GET /metrics`), or `off`
    /// [default: 127.0.0.1:5051]; a non-loopback address also needs
    /// `mirror_allow_non_loopback = true` in the config file.
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_listen: Option<Listen>,
    /// Byte budget of the cache of decompressed layers (suffixes K, M, G, T,
    /// KiB.. are binary) [default: 10GiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub cache_bytes: Option<u64>,
    /// containerd's gRPC socket: archived images are registered there
    /// [default: /run/containerd/containerd.sock].
    #[arg(long, value_name = "SOCK")]
    pub containerd_address: Option<PathBuf>,
    /// containerd namespace to register archived images in; repeat for
    /// several [default: k8s.io].
    #[arg(long = "import-namespace", value_name = "NS")]
    pub import_namespaces: Vec<String>,
    /// How registered layers get their data: `lazy` (on first use),
    /// `eager` (extracted in the background at once) or `off` (no
    /// registration) [default: lazy].
    #[arg(long, value_name = "MODE")]
    pub import_mode: Option<ImportMode>,
    /// How archived layers become snapshots: `erofs` (mounted in place),
    /// `extract`, or `auto` (EROFS where the kernel can) [default: auto].
    #[arg(long, value_enum)]
    pub layer_mounts: Option<LayerMode>,
    /// When compressed layers are decompressed and indexed for mounting:
    /// `on-pull`, or `on-arrival` (in the background as soon as their
    /// archive is indexed) [default: on-pull].
    #[arg(long, value_enum)]
    pub prepare_layers: Option<PrepareLayers>,
    /// What a mounted layer of an uncompressed archive reads: `private` (a
    /// reflink clone or a copy inside the root) or `archive` (the archive
    /// itself: replace archives only by rename) [default: private].
    #[arg(long, value_enum)]
    pub layer_backing: Option<LayerBackingMode>,
    /// Byte budget of prepared layers no snapshot uses (suffixes as
    /// --cache-bytes) [default: 10GiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub layer_store_bytes: Option<u64>,
    /// How long an archive's file must be absent from its readable
    /// directory before its images are unregistered and its prepared layers
    /// dropped (`90s`, `5m`) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub archive_removal_grace: Option<Duration>,
}

/// The `[import]` table: archived images registered in containerd before
/// anyone pulls them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// containerd namespaces to register in (`k8s.io` is CRI's).
    pub namespaces: Vec<String>,
    pub mode: ImportMode,
    /// The name containerd's config gives this snapshotter
    /// (`[proxy_plugins.<name>]`).
    pub snapshotter: String,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            namespaces: vec![DEFAULT_IMPORT_NAMESPACE.to_string()],
            mode: ImportMode::Lazy,
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
        }
    }
}

/// The `[verify]` table: which signatures the archived images must carry
/// (see `trust`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256, what
    /// `cosign generate-key-pair` writes as `cosign.pub`). An image is
    /// signed when a signature of its digest verifies with one of them.
    pub keys: Vec<PathBuf>,
    pub require: Require,
}

/// `[verify] require`: what happens to an archived image without a valid
/// signature from one of the keys. Here rather than in `trust`, which
/// reads the config: the dependency goes one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// Signatures are not checked for use (`doctor` still reports them
    /// when keys are given).
    #[default]
    Off,
    /// The image is used, with a warning in the log and in the metrics.
    Warn,
    /// The image is neither served by the mirror, registered, nor mounted
    /// from its archive; the error names the image, archive and reason.
    Enforce,
}

impl Require {
    pub fn as_str(self) -> &'static str {
        match self {
            Require::Off => "off",
            Require::Warn => "warn",
            Require::Enforce => "enforce",
        }
    }
}

/// The daemon's configuration. Every field has a default; a TOML file may
/// set any of them, and unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State directory: snapshot metadata (`metadata.redb`), snapshot
    /// directories and the layer cache. Absolute; created with mode 0700.
    pub root: PathBuf,
    /// Unix socket of the snapshots gRPC service (containerd's
    /// `[proxy_plugins.airgap] address`). Absolute; its directory is created
    /// with mode 0700 if missing, the socket is made 0600.
    pub socket: PathBuf,
    /// Directories watched for airgap archives (`.tar`, `.tar.gz`,
    /// `.tar.zst`). Missing or empty directories are fine.
    pub archives: Vec<PathBuf>,
    /// Where the registry mirror listens (`host:port`), or `"off"`.
    pub mirror_listen: Listen,
    /// The mirror serves every archived image to whoever reaches it, so it
    /// binds only loopback addresses unless this is true (the metrics
    /// listener too: they name the archives).
    pub mirror_allow_non_loopback: bool,
    /// Where Prometheus metrics are served (`host:port`, `GET /metrics`),
    /// or `"off"`.
    pub metrics_listen: Listen,
    /// Byte budget of the cache of decompressed layers, as a number of
    /// bytes or a string with a unit (`"512MiB"`, `"10G"`).
    #[serde(
        serialize_with = "serialize_bytes",
        deserialize_with = "deserialize_bytes"
    )]
    pub cache_bytes: u64,
    /// How layers taken from archives become snapshots: mounted (an EROFS
    /// index of the layer's metadata over its data, Linux 6.12+) over a
    /// private copy of its tar in the layer store (`<root>/layers`): cloned
    /// or copied from an uncompressed archive (or, with `layer_backing =
    /// "archive"`, the archive itself), decompressed once from any other;
    /// or extracted. `auto`
    /// mounts where the kernel can and extracts otherwise (said once in the
    /// log), `erofs` refuses to start on a kernel that cannot, `extract`
    /// always extracts.
    pub layer_mounts: LayerMode,
    /// When compressed layers are prepared for mounting: `on-pull`, or
    /// `on-arrival` (decompressed and indexed in the background as soon as
    /// their archive is indexed, while the store's budget lasts).
    /// Uncompressed layers of uncompressed archives are always prepared on
    /// arrival when that writes no data (indexed in place with
    /// `layer_backing = "archive"`, or a reflink clone); copies of them
    /// follow this setting.
    pub prepare_layers: PrepareLayers,
    /// What a mounted layer that lies as a plain tar in an uncompressed
    /// archive (docker-save `.tar`) reads. `private` (the default): a file
    /// inside the root, a reflink clone of its range where the filesystem
    /// has reflinks (xfs, btrfs: no time, no disk until the archive is
    /// rewritten or deleted), else a copy (one write of the layer); an
    /// archive rewritten in place then changes nothing a container reads.
    /// `archive`: the archive itself (no copy, no disk), which must then
    /// only ever be replaced by rename: rewritten in place (`cp new.tar
    /// old.tar`), running containers read the new bytes at the old offsets.
    /// Either way a rewrite in place is logged, counted and reported by
    /// `doctor`.
    pub layer_backing: LayerBackingMode,
    /// Byte budget of the layer store's entries that no snapshot uses
    /// (least recently used evicted first); entries in use are never
    /// evicted, and a pull is never refused for lack of budget.
    #[serde(
        serialize_with = "serialize_bytes",
        deserialize_with = "deserialize_bytes"
    )]
    pub layer_store_bytes: u64,
    /// Most tar entries a layer may have to be mounted: its index is built
    /// in memory (about 180 bytes per entry for the tree, about as much
    /// again to lay the image out; two builds at a time); a layer with more
    /// is extracted (logged with its digest).
    pub index_max_entries: u64,
    /// Most bytes of file names, symlink targets and xattrs a layer may
    /// have to be mounted (suffixes as `cache_bytes`); past it, extracted.
    #[serde(
        serialize_with = "serialize_bytes",
        deserialize_with = "deserialize_bytes"
    )]
    pub index_max_name_bytes: u64,
    /// How long an archive's file must be absent from its directory, seen
    /// readable, before the archive counts as gone (its images unregistered,
    /// its persisted index and prepared layers dropped), as `"90s"` or
    /// `"5m"`. Until then it stays listed; a directory that cannot be read
    /// changes nothing, and after a restart the archives known before stay
    /// listed for this long while their files are not there (a disk
    /// mounted late at boot). A file replaced (renamed over) is taken at
    /// once. Between 1s and 24h.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub archive_removal_grace: Duration,
    /// Registries the mirror fetches from what the archives lack
    /// (`[[upstream]]` tables).
    pub upstream: Vec<UpstreamConfig>,
    /// Listeners serving the archives to the other nodes of the cluster
    /// (`[[cluster_listener]]` tables): TLS, client authentication,
    /// read-only, limits per client.
    pub cluster_listener: Vec<ClusterListenerConfig>,
    /// containerd's gRPC socket, where archived images are registered.
    pub containerd_address: PathBuf,
    pub import: ImportConfig,
    pub verify: VerifyConfig,
}

/// `[import] mode`: how registered layers get their data. Here rather than
/// in `import`, which reads the config: the dependency goes one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// Committed without data; extracted on first use (a container's
    /// rootfs, a View), every layer of the chain in parallel.
    #[default]
    Lazy,
    /// Committed at once and extracted in the background right away.
    Eager,
    /// No registration.
    Off,
}

impl ImportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Lazy => "lazy",
            ImportMode::Eager => "eager",
            ImportMode::Off => "off",
        }
    }
}

/// See [`Config::layer_mounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LayerMode {
    #[default]
    Auto,
    Erofs,
    Extract,
}

/// See [`Config::layer_backing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LayerBackingMode {
    #[default]
    Private,
    Archive,
}

/// See [`Config::prepare_layers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PrepareLayers {
    #[default]
    OnPull,
    OnArrival,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            socket: PathBuf::from(DEFAULT_SOCKET),
            archives: vec![PathBuf::from(DEFAULT_ARCHIVES)],
            mirror_listen: Listen::Addr(DEFAULT_MIRROR_LISTEN.parse().expect("valid")),
            mirror_allow_non_loopback: false,
            metrics_listen: Listen::Addr(DEFAULT_METRICS_LISTEN.parse().expect("valid")),
            cache_bytes: DEFAULT_CACHE_BYTES,
            layer_mounts: LayerMode::Auto,
            prepare_layers: PrepareLayers::OnPull,
            layer_backing: LayerBackingMode::Private,
            layer_store_bytes: DEFAULT_LAYER_STORE_BYTES,
            index_max_entries: DEFAULT_INDEX_MAX_ENTRIES,
            index_max_name_bytes: DEFAULT_INDEX_MAX_NAME_BYTES,
            archive_removal_grace: DEFAULT_ARCHIVE_REMOVAL_GRACE,
            upstream: Vec::new(),
            cluster_listener: Vec::new(),
            containerd_address: PathBuf::from(DEFAULT_CONTAINERD_ADDRESS),
            import: ImportConfig::default(),
            verify: VerifyConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Where a command looks for its config file when `--config` is not given:
/// [`DefaultFiles::system`], or other paths in tests.
#[derive(Debug, Clone)]
pub struct DefaultFiles {
    /// Read when it exists.
    pub file: PathBuf,
    /// Read, with a warning, when `file` does not exist and this does.
    pub old: PathBuf,
}

impl DefaultFiles {
    /// [`DEFAULT_CONFIG_FILE`], then [`OLD_CONFIG_FILE`].
    pub fn system() -> Self {
        DefaultFiles {
            file: PathBuf::from(DEFAULT_CONFIG_FILE),
            old: PathBuf::from(OLD_CONFIG_FILE),
        }
    }
}

/// Where the configuration comes from: `--config FILE`, the default file,
/// its old name, or no file at all. `serve` names it in its first log
/// line, so that a node whose settings are not the ones expected shows at
/// once which file (if any) it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE` (a file that is missing is an error when read).
    Explicit(PathBuf),
    /// The default file ([`DefaultFiles::file`]).
    Default(PathBuf),
    /// The old default name ([`DefaultFiles::old`]), read because the
    /// default file (`instead_of`) does not exist.
    Old { path: PathBuf, instead_of: PathBuf },
    /// No file: `--config` not given and neither default exists (the
    /// paths looked at); the built-in defaults and the flags.
    None { tried: [PathBuf; 2] },
}

impl ConfigSource {
    /// `explicit` (`--config FILE`), else the default file when it exists,
    /// else the old default name when it exists, else none.
    pub fn find(explicit: Option<&Path>, defaults: &DefaultFiles) -> ConfigSource {
        if let Some(path) = explicit {
            return ConfigSource::Explicit(path.to_path_buf());
        }
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        if exists(&defaults.file) {
            return ConfigSource::Default(defaults.file.clone());
        }
        if exists(&defaults.old) {
            return ConfigSource::Old {
                path: defaults.old.clone(),
                instead_of: defaults.file.clone(),
            };
        }
        ConfigSource::None {
            tried: [defaults.file.clone(), defaults.old.clone()],
        }
    }

    /// The file to read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Explicit(p) | ConfigSource::Default(p) => Some(p),
            ConfigSource::Old { path, .. } => Some(path),
            ConfigSource::None { .. } => None,
        }
    }

    /// Warns that the old default name was read (for one more release).
    pub fn warn_if_old(&self) {
        if let ConfigSource::Old { path, instead_of } = self {
            tracing::warn!(
                "reading {}: the config file is {} from 0.2 on; rename it (the old name is read \
                 for one more release)",
                path.display(),
                instead_of.display()
            );
        }
    }
}

/// How `serve`'s first line names the source.
impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Explicit(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::Default(p) => write!(f, "{}", p.display()),
            ConfigSource::Old { path, instead_of } => write!(
                f,
                "{} (the old name: {} does not exist)",
                path.display(),
                instead_of.display()
            ),
            ConfigSource::None { tried: [file, old] } => write!(
                f,
                "none ({} and {} do not exist: built-in defaults and flags)",
                file.display(),
                old.display()
            ),
        }
    }
}

/// The config file a command reads: `explicit` (`--config FILE`: a file
/// that is missing is an error when it is read, naming it), else the default
/// file when it exists, else the old default name (with a warning), else
/// none (the built-in defaults).
pub fn config_file(explicit: Option<&Path>, defaults: &DefaultFiles) -> Option<PathBuf> {
    let source = ConfigSource::find(explicit, defaults);
    source.warn_if_old();
    source.path().map(Path::to_path_buf)
}

impl Config {
    /// Defaults, then the config file ([`config_file`]: `--config`, else
    /// [`DEFAULT_CONFIG_FILE`] when it exists), then the flags.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::load_with(args, &DefaultFiles::system())
    }

    /// [`Config::load`] with other default file paths.
    pub fn load_with(args: &ServeArgs, defaults: &DefaultFiles) -> Result<Config, ConfigError> {
        let source = ConfigSource::find(args.config.as_deref(), defaults);
        source.warn_if_old();
        Config::load_from(args, &source)
    }

    /// Defaults, then the file `source` names (if any), then the flags;
    /// says nothing about an old file name (the caller does, after its
    /// first line).
    pub fn load_from(args: &ServeArgs, source: &ConfigSource) -> Result<Config, ConfigError> {
        let mut config = match source.path() {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(root) = &args.root {
            config.root = root.clone();
        }
        if let Some(socket) = &args.socket {
            config.socket = socket.clone();
        }
        if !args.archives.is_empty() {
            config.archives = args.archives.clone();
        }
        if let Some(m) = args.mirror_listen {
            config.mirror_listen = m;
        }
        if let Some(m) = args.metrics_listen {
            config.metrics_listen = m;
        }
        if let Some(c) = args.cache_bytes {
            config.cache_bytes = c;
        }
        if let Some(a) = &args.containerd_address {
            config.containerd_address = a.clone();
        }
        if !args.import_namespaces.is_empty() {
            config.import.namespaces = args.import_namespaces.clone();
        }
        if let Some(m) = args.import_mode {
            config.import.mode = m;
        }
        if let Some(m) = args.layer_mounts {
            config.layer_mounts = m;
        }
        if let Some(p) = args.prepare_layers {
            config.prepare_layers = p;
        }
        if let Some(b) = args.layer_backing {
            config.layer_backing = b;
        }
        if let Some(b) = args.layer_store_bytes {
            config.layer_store_bytes = b;
        }
        if let Some(g) = args.archive_removal_grace {
            config.archive_removal_grace = g;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks what serde cannot, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.import.mode != ImportMode::Off {
            if self.import.namespaces.is_empty() {
                return invalid(
                    "import.namespaces",
                    "empty: name at least one namespace, or set import.mode = \"off\"".into(),
                );
            }
            if let Some(bad) = self.import.namespaces.iter().find(|n| !valid_namespace(n)) {
                return invalid(
                    "import.namespaces",
                    format!("{bad:?} is not a containerd namespace (letters and digits, separated by single . _ or -)"),
                );
            }
            if !valid_namespace(&self.import.snapshotter) {
                return invalid(
                    "import.snapshotter",
                    format!("{:?} is not a snapshotter name", self.import.snapshotter),
                );
            }
        }
        if !self.root.is_absolute() {
            return invalid(
                "root",
                format!("{} is not an absolute path", self.root.display()),
            );
        }
        if !self.socket.is_absolute() {
            return invalid(
                "socket",
                format!("{} is not an absolute path", self.socket.display()),
            );
        }
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return invalid(
                "socket",
                format!(
                    "{} is longer than {MAX_SOCKET_PATH} bytes",
                    self.socket.display()
                ),
            );
        }
        if self.socket.file_name().is_none() {
            return invalid("socket", format!("{} names no file", self.socket.display()));
        }
        if self.verify.require != Require::Off && self.verify.keys.is_empty() {
            return invalid(
                "verify.keys",
                format!(
                    "empty while verify.require = \"{}\": name at least one public key file",
                    self.verify.require.as_str()
                ),
            );
        }
        if let Some(bad) = self.verify.keys.iter().find(|k| !k.is_absolute()) {
            return invalid(
                "verify.keys",
                format!("{} is not an absolute path", bad.display()),
            );
        }
        for dir in &self.archives {
            if dir.as_os_str().is_empty() {
                return invalid("archives", "an entry is empty".into());
            }
        }
        let grace = self.archive_removal_grace;
        if grace < Duration::from_secs(1) || grace > MAX_ARCHIVE_REMOVAL_GRACE {
            return invalid(
                "archive_removal_grace",
                format!(
                    "{} is not between 1s and 24h",
                    humantime::format_duration(grace)
                ),
            );
        }
        if let Listen::Addr(addr) = self.mirror_listen {
            if !addr.ip().is_loopback() && !self.mirror_allow_non_loopback {
                return invalid(
                    "mirror_listen",
                    format!(
                        "{addr} is not a loopback address; the mirror serves every archived \
                         image to whoever reaches it: set mirror_allow_non_loopback = true to allow it"
                    ),
                );
            }
        }
        if let Listen::Addr(addr) = self.metrics_listen {
            if !addr.ip().is_loopback() && !self.mirror_allow_non_loopback {
                return invalid(
                    "metrics_listen",
                    format!(
                        "{addr} is not a loopback address; the metrics name the archives: \
                         set mirror_allow_non_loopback = true to allow it"
                    ),
                );
            }
            if self.mirror_listen == Listen::Addr(addr) {
                return invalid("metrics_listen", format!("{addr} is also mirror_listen"));
            }
        }
        for (i, u) in self.upstream.iter().enumerate() {
            u.validate(i + 1)?;
        }
        for (i, l) in self.cluster_listener.iter().enumerate() {
            l.validate(i + 1)?;
            let taken = [self.mirror_listen, self.metrics_listen].contains(&Listen::Addr(l.listen))
                || self.cluster_listener[..i]
                    .iter()
                    .any(|o| o.listen == l.listen);
            if taken {
                return invalid(
                    "cluster_listener.listen",
                    format!("{} is already another listener's address", l.listen),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(argv: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
            .unwrap()
            .serve
    }

    /// Default files in a directory that has none.
    fn no_defaults() -> DefaultFiles {
        DefaultFiles {
            file: PathBuf::from("/nonexistent/airgap-test/config.toml"),
            old: PathBuf::from("/nonexistent/airgap-test/airgap-snapshotter.toml"),
        }
    }

    impl Config {
        /// `Config::load` away from the machine's /etc.
        fn load_test(args: &ServeArgs) -> Result<Config, ConfigError> {
            Config::load_with(args, &no_defaults())
        }
    }

    #[test]
    fn the_default_file_is_read_when_present_and_an_explicit_one_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = DefaultFiles {
            file: dir.path().join("config.toml"),
            old: dir.path().join("airgap-snapshotter.toml"),
        };
        // Neither file: the built-in defaults.
        assert_eq!(config_file(None, &defaults), None);
        assert_eq!(
            Config::load_with(&args(&[]), &defaults).unwrap(),
            Config::default()
        );
        // The old name only: read (a warning is logged).
        std::fs::write(&defaults.old, "root = \"/srv/old\"\n").unwrap();
        assert_eq!(config_file(None, &defaults), Some(defaults.old.clone()));
        let c = Config::load_with(&args(&[]), &defaults).unwrap();
        assert_eq!(c.root, Path::new("/srv/old"));
        // Both: the new name wins.
        std::fs::write(&defaults.file, "root = \"/srv/new\"\n").unwrap();
        let c = Config::load_with(&args(&[]), &defaults).unwrap();
        assert_eq!(c.root, Path::new("/srv/new"));
        // A flag still overrides the file.
        let c = Config::load_with(&args(&["--root", "/srv/flag"]), &defaults).unwrap();
        assert_eq!(c.root, Path::new("/srv/flag"));
        // --config overrides the default file.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "root = \"/srv/other\"\n").unwrap();
        let c =
            Config::load_with(&args(&["--config", other.to_str().unwrap()]), &defaults).unwrap();
        assert_eq!(c.root, Path::new("/srv/other"));
        // A missing --config is an error naming the file, not the defaults.
        let missing = dir.path().join("missing.toml");
        let err = Config::load_with(&args(&["--config", missing.to_str().unwrap()]), &defaults)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        // A default file that does not parse is an error too, named.
        std::fs::write(&defaults.file, "root = [\n").unwrap();
        let err = Config::load_with(&args(&[]), &defaults)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.toml"), "{err}");
    }

    /// What `serve`'s first line says of the config file: the one read,
    /// whether it is the old name, or none and the paths looked at.
    #[test]
    fn the_config_source_names_the_file_read_or_the_files_tried() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = DefaultFiles {
            file: dir.path().join("config.toml"),
            old: dir.path().join("airgap-snapshotter.toml"),
        };
        let (file, old) = (defaults.file.display(), defaults.old.display());
        let source = ConfigSource::find(None, &defaults);
        assert_eq!(source.path(), None);
        assert_eq!(
            source.to_string(),
            format!("none ({file} and {old} do not exist: built-in defaults and flags)")
        );
        std::fs::write(&defaults.old, "").unwrap();
        let source = ConfigSource::find(None, &defaults);
        assert_eq!(source.path(), Some(defaults.old.as_path()));
        assert_eq!(
            source.to_string(),
            format!("{old} (the old name: {file} does not exist)")
        );
        std::fs::write(&defaults.file, "").unwrap();
        let source = ConfigSource::find(None, &defaults);
        assert_eq!(source.path(), Some(defaults.file.as_path()));
        assert_eq!(source.to_string(), file.to_string());
        // --config wins, even over a default file that exists, and need
        // not exist to be named (reading it fails, naming it).
        let other = dir.path().join("missing.toml");
        let source = ConfigSource::find(Some(&other), &defaults);
        assert_eq!(source.path(), Some(other.as_path()));
        assert_eq!(
            source.to_string(),
            format!("{} (--config)", other.display())
        );
    }

    #[test]
    fn defaults() {
        let c = Config::load_test(&args(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.root, Path::new(DEFAULT_ROOT));
        assert_eq!(c.mirror_listen.to_string(), "127.0.0.1:5050");
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "root = \"/srv/a\"\nsocket = \"/run/a.sock\"\narchives = [\"/x\", \"/y\"]\n\
             mirror_listen = \"off\"\ncache_bytes = \"2G\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = Config::load_test(&args(&["--config", f])).unwrap();
        assert_eq!(c.root, Path::new("/srv/a"));
        assert_eq!(c.archives, [Path::new("/x"), Path::new("/y")]);
        assert_eq!(c.mirror_listen, Listen::Off);
        assert_eq!(c.cache_bytes, 2 << 30);
        let c = Config::load_test(&args(&[
            "--config",
            f,
            "--root",
            "/srv/b",
            "--archives",
            "/z",
            "--mirror-listen",
            "127.0.0.1:6000",
            "--cache-bytes",
            "1024",
        ]))
        .unwrap();
        assert_eq!(c.root, Path::new("/srv/b"));
        assert_eq!(c.socket, Path::new("/run/a.sock"));
        assert_eq!(c.archives, [Path::new("/z")]);
        assert_eq!(c.mirror_listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.cache_bytes, 1024);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "rooot = \"/x\"\n").unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("rooot"), "{err}");
        std::fs::write(&file, "mirror_listen = \"everywhere\"\n").unwrap();
        assert!(Config::from_file(&file).is_err());
        let err = Config::load_test(&args(&["--root", "relative"])).unwrap_err();
        assert!(err.to_string().contains("`root`"), "{err}");
        let long = format!("/{}", "s".repeat(200));
        let err = Config::load_test(&args(&["--socket", &long])).unwrap_err();
        assert!(err.to_string().contains("`socket`"), "{err}");
        assert!(Cli::try_parse_from(["x", "--mirror-listen", "nope"]).is_err());
    }

    #[test]
    fn archive_removal_grace_from_file_and_flag_within_bounds() {
        assert_eq!(
            Config::default().archive_removal_grace,
            DEFAULT_ARCHIVE_REMOVAL_GRACE
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "archive_removal_grace = \"2m 30s\"\n").unwrap();
        let f = file.to_str().unwrap();
        let c = Config::load_test(&args(&["--config", f])).unwrap();
        assert_eq!(c.archive_removal_grace, Duration::from_secs(150));
        let c =
            Config::load_test(&args(&["--config", f, "--archive-removal-grace", "3s"])).unwrap();
        assert_eq!(c.archive_removal_grace, Duration::from_secs(3));
        // It round-trips through the file form.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("archive_removal_grace = \"3s\""), "{text}");
        for bad in ["0s", "500ms", "25h"] {
            let err = Config::load_test(&args(&["--archive-removal-grace", bad])).unwrap_err();
            assert!(err.to_string().contains("`archive_removal_grace`"), "{err}");
        }
        std::fs::write(&file, "archive_removal_grace = \"soon\"\n").unwrap();
        assert!(Config::from_file(&file).is_err());
    }

    #[test]
    fn mirror_binds_loopback_unless_allowed() {
        let err = Config::load_test(&args(&["--mirror-listen", "0.0.0.0:5050"])).unwrap_err();
        assert!(err.to_string().contains("`mirror_listen`"), "{err}");
        assert!(Config::load_test(&args(&["--mirror-listen", "[::1]:5050"])).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "mirror_listen = \"0.0.0.0:5050\"\nmirror_allow_non_loopback = true\n",
        )
        .unwrap();
        let c = Config::load_test(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(c.mirror_listen.to_string(), "0.0.0.0:5050");
    }

    #[test]
    fn metrics_listen_defaults_binds_loopback_unless_allowed_and_turns_off() {
        let c = Config::load_test(&args(&[])).unwrap();
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:5051");
        let c = Config::load_test(&args(&["--metrics-listen", "off"])).unwrap();
        assert_eq!(c.metrics_listen, Listen::Off);
        let err = Config::load_test(&args(&["--metrics-listen", "0.0.0.0:9100"])).unwrap_err();
        assert!(err.to_string().contains("`metrics_listen`"), "{err}");
        let err = Config::load_test(&args(&["--metrics-listen", "127.0.0.1:5050"])).unwrap_err();
        assert!(err.to_string().contains("`metrics_listen`"), "{err}");
        assert!(Cli::try_parse_from(["x", "--metrics-listen", "nope"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "metrics_listen = \"0.0.0.0:9100\"\nmirror_allow_non_loopback = true\n",
        )
        .unwrap();
        let c = Config::load_test(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(c.metrics_listen.to_string(), "0.0.0.0:9100");
    }

    #[test]
    fn upstream_tables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "s3cret\n").unwrap();
        std::fs::write(
            &file,
            format!(
                "[[upstream]]\nregistry = \"docker.io\"\nendpoint = \"https://harbor.example.internal\"\n\
                 path_prefix = \"dockerhub\"\nusername = \"robot\"\npassword_file = \"{}\"\n\
                 [[upstream]]\nregistry = \"*\"\nendpoint = \"http://127.0.0.1:5000\"\n",
                pass.display()
            ),
        )
        .unwrap();
        let c = Config::load_test(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(c.upstream.len(), 2);
        assert_eq!(c.upstream[0].path_prefix.as_deref(), Some("dockerhub"));
        assert_eq!(
            c.upstream[0].load_password().unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(c.upstream[1].load_password().unwrap(), None);

        // Never in Debug output.
        let mut u = c.upstream[0].clone();
        u.password = Some("hunter2".into());
        u.password_file = None;
        assert!(!format!("{u:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("s3cret"));

        for (bad, field) in [
            (
                "registry = \"docker.io\"\nendpoint = \"ftp://x\"",
                "upstream.endpoint",
            ),
            (
                "registry = \"\"\nendpoint = \"https://x\"",
                "upstream.registry",
            ),
            (
                "registry = \"a\"\nendpoint = \"https://x\"\npassword = \"p\"",
                "upstream.username",
            ),
            (
                "registry = \"a\"\nendpoint = \"https://x\"\npath_prefix = \"../x\"",
                "upstream.path_prefix",
            ),
        ] {
            std::fs::write(&file, format!("[[upstream]]\n{bad}\n")).unwrap();
            let err = Config::load_test(&args(&["--config", file.to_str().unwrap()])).unwrap_err();
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
        std::fs::write(
            &file,
            "[[upstream]]\nregistry = \"a\"\nendpoint = \"https://x\"\npasword = \"p\"\n",
        )
        .unwrap();
        assert!(Config::from_file(&file).is_err());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("10").unwrap(), 10);
        assert_eq!(parse_bytes("1K").unwrap(), 1024);
        assert_eq!(parse_bytes("3MiB").unwrap(), 3 << 20);
        assert_eq!(parse_bytes("10G").unwrap(), 10 << 30);
        assert!(parse_bytes("10Q").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    /// `scripts/airgap-snapshotter.toml`, the commented default config the
    /// release artifacts install: as shipped it loads as the defaults, with
    /// its top-level lines uncommented it is exactly the defaults, and it
    /// names every key (the `[[upstream]]` example's included).
    #[test]
    fn shipped_default_config_lists_every_key_with_its_default() {
        const SHIPPED: &str = include_str!("../../../scripts/airgap-snapshotter.toml");
        assert_eq!(
            toml::from_str::<Config>(SHIPPED).unwrap(),
            Config::default()
        );

        let (top, upstream) = SHIPPED.split_once("# [[upstream]]").unwrap();
        let key_line = regex::Regex::new(r"^# ([a-z_]+) = ").unwrap();
        let uncommented: String = top
            .lines()
            .filter(|l| key_line.is_match(l))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed, Config::default());
        let toml::Value::Table(defaults) = toml::Value::try_from(Config::default()).unwrap() else {
            panic!("Config serializes to a table");
        };
        let shown: toml::Table = toml::from_str(&uncommented).unwrap();
        for key in defaults
            .keys()
            .filter(|k| *k != "upstream" && *k != "cluster_listener")
        {
            assert!(shown.contains_key(key), "{key} is missing");
        }

        let (upstream, cluster) = upstream.split_once("# [[cluster_listener]]").unwrap();
        // The upstream example ends at the first blank line.
        let upstream = upstream.split("\n\n").next().unwrap();
        let example: String = upstream
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let example: toml::Table = toml::from_str(&format!("[[upstream]]\n{example}")).unwrap();
        let example = &example["upstream"][0];
        for key in [
            "registry",
            "endpoint",
            "path_prefix",
            "username",
            "password_file",
            "ca_file",
            "insecure_skip_verify",
            "client_cert_file",
            "client_key_file",
        ] {
            assert!(example.get(key).is_some(), "upstream.{key} is missing");
        }
        assert!(
            upstream.contains("# # token_file = "),
            "upstream.token_file is missing"
        );
        let cluster: String = cluster
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let cluster: toml::Table =
            toml::from_str(&format!("[[cluster_listener]]\n{cluster}")).unwrap();
        let listener: ClusterListenerConfig =
            cluster["cluster_listener"][0].clone().try_into().unwrap();
        assert!(listener.validate(1).is_ok());
        assert_eq!(
            listener.requests_per_second,
            ClusterListenerConfig::plain(listener.listen).requests_per_second
        );
        assert!(
            upstream.contains("# # password = "),
            "upstream.password is missing"
        );
        let one: UpstreamConfig = example.clone().try_into().unwrap();
        assert!(one.validate(1).is_ok());
    }
}

#[cfg(test)]
mod import_config_tests {
    use super::*;

    #[test]
    fn import_namespaces_follow_containerds_rule() {
        let mut config = Config::default();
        assert_eq!(config.import.namespaces, ["k8s.io"]);
        assert_eq!(config.import.mode, ImportMode::Lazy);
        config.validate().unwrap();
        for bad in ["", "k8s..io", "-k8s", "k8s/io", &"a".repeat(77)] {
            config.import.namespaces = vec![bad.to_string()];
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("import.namespaces"), "{bad:?}: {err}");
        }
        // Off: nothing to register, nothing to check.
        config.import.mode = ImportMode::Off;
        config.validate().unwrap();
        let parsed: Config = toml::from_str(
            "containerd_address = \"/run/k3s/containerd/containerd.sock\"\n[import]\nnamespaces = [\"k8s.io\", \"default\"]\nmode = \"eager\"\n",
        )
        .unwrap();
        assert_eq!(parsed.import.mode, ImportMode::Eager);
        assert_eq!(parsed.import.namespaces, ["k8s.io", "default"]);
        assert!(toml::from_str::<Config>("[import]\nmode = \"sometimes\"\n").is_err());
    }
}

#[cfg(test)]
mod cluster_listener_tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).expect("parses");
        config.validate().map(|()| config)
    }

    #[test]
    fn non_loopback_needs_tls_and_authentication_unless_insecure() {
        let tls = "tls_cert_file = \"/c.pem\"\ntls_key_file = \"/c.key\"\n";
        let ok = load(&format!(
            "[[cluster_listener]]\nlisten = \"0.0.0.0:5443\"\n{tls}tokens_file = \"/t\"\n"
        ))
        .unwrap();
        let l = &ok.cluster_listener[0];
        assert_eq!(
            (l.requests_per_second, l.burst, l.max_concurrent_requests),
            (
                DEFAULT_CLUSTER_RPS,
                DEFAULT_CLUSTER_BURST,
                DEFAULT_CLUSTER_CONCURRENCY
            )
        );
        for (bad, field) in [
            // No TLS.
            (
                "listen = \"0.0.0.0:5443\"\ntokens_file = \"/t\"\n".to_string(),
                "cluster_listener.tls_cert_file",
            ),
            // No authentication.
            (
                format!("listen = \"10.0.0.1:5443\"\n{tls}"),
                "cluster_listener.client_ca_file",
            ),
            // A key without its certificate.
            (
                "listen = \"127.0.0.1:5443\"\ntls_key_file = \"/c.key\"\n".to_string(),
                "cluster_listener.tls_key_file",
            ),
            // Client certificates without TLS.
            (
                "listen = \"127.0.0.1:5443\"\nclient_ca_file = \"/ca.pem\"\n".to_string(),
                "cluster_listener.client_ca_file",
            ),
            // The mirror's address.
            (
                "listen = \"127.0.0.1:5050\"\n".to_string(),
                "cluster_listener.listen",
            ),
        ] {
            let err = load(&format!("[[cluster_listener]]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
        // insecure = true serves it anyway (warned at start).
        load("[[cluster_listener]]\nlisten = \"0.0.0.0:5443\"\ninsecure = true\n").unwrap();
        // Loopback needs nothing (a cache on the same host in front).
        load("[[cluster_listener]]\nlisten = \"127.0.0.1:5443\"\n").unwrap();
        assert!(toml::from_str::<Config>(
            "[[cluster_listener]]\nlisten = \"127.0.0.1:5443\"\ntls = true\n"
        )
        .is_err());
    }
}
