//! `airgap-snapshotter config`: prints the containerd config.toml fragment and
//! the hosts.toml for this daemon, and with `--write DIR` writes the hosts.toml
//! files. With `--merge FILE` it wires a containerd config.toml instead:
//! a drop-in file in the directory FILE imports (2.x configs whose
//! `imports` has a glob such as `conf.d/*.toml`, see `setup::dropin`), else
//! FILE edited in place (see `setup::merge`); `--revert` removes the drop-in.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airgap_snapshotter::config::{config_file, Config, DefaultFiles, ServeArgs};
use airgap_snapshotter::setup::dropin::{self, Target};
use airgap_snapshotter::setup::hosts::{carries_credentials, merge_hosts, private_mode};
use airgap_snapshotter::setup::merge::{file_version, merge};
use airgap_snapshotter::setup::registries::{self, RegistriesWant, WILDCARD};
use airgap_snapshotter::setup::{
    config_toml, cri_registry_table, hosts_dir, hosts_toml, k3s_template, mirror_url,
    serving_token, ConfigArgs, ContainerdVersion, Wiring, SNAPSHOTTER,
};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What `--write` did to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Created(PathBuf),
    Unchanged(PathBuf),
    Replaced { path: PathBuf, backup: PathBuf },
}

/// A hosts.toml that carries credentials, found readable by the group or
/// others and made private (`was`: its mode before, `now`: after; the
/// owner kept).
#[derive(Debug, PartialEq, Eq)]
pub struct MadePrivate {
    pub was: u32,
    pub now: u32,
}

/// What is printed instead of the token of `--serving-token-file`: it is
/// written into the hosts.toml files, never shown.
const TOKEN_PLACEHOLDER: &str = "<the token of --serving-token-file>";

/// The mode [`replace_file`] gives the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The old file's, else this one for a new file.
    Keep(u32),
    /// The file holds a credential: the old file's without the group's and
    /// others' bits ([`private_mode`]), else 0600.
    Private,
}

/// One file `config` writes (or would, with `--dry-run`), as `--json`
/// names it: the fields are documented in docs/reference.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    /// `containerd-config`, `drop-in`, `hosts` or `registries-yaml`.
    pub kind: &'static str,
    /// `create`, `update`, `unchanged`, `remove` or `restore`.
    pub action: &'static str,
    /// A unified diff of the change (empty when unchanged).
    pub diff: String,
}

/// The command's output: lines and diffs for a reader, or with `--json`
/// (lines on stderr) one object listing the files at the end.
struct Out {
    json: bool,
    files: Vec<FileChange>,
}

impl Out {
    fn new(json: bool) -> Self {
        Out {
            json,
            files: Vec::new(),
        }
    }

    /// A line for the reader: stdout, or stderr with `--json`.
    fn say(&self, line: impl std::fmt::Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// Records a file's change and prints its diff (not with `--json`).
    fn change(
        &mut self,
        path: &Path,
        kind: &'static str,
        old: Option<&str>,
        new: Option<&str>,
        action: &'static str,
    ) {
        let name = path.display().to_string();
        let diff = if old == new {
            String::new()
        } else {
            similar::TextDiff::from_lines(old.unwrap_or(""), new.unwrap_or(""))
                .unified_diff()
                .context_radius(2)
                .header(
                    if old.is_some() { &name } else { "/dev/null" },
                    if new.is_some() { &name } else { "/dev/null" },
                )
                .to_string()
        };
        if !self.json {
            print!("{diff}");
        }
        self.files.push(FileChange {
            path: name,
            kind,
            action,
            diff,
        });
    }

    /// With `--json`: the object `{dry_run, files}` on stdout.
    fn finish(self, dry_run: bool) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct Doc {
                dry_run: bool,
                files: Vec<FileChange>,
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&Doc {
                    dry_run,
                    files: self.files,
                })?
            );
        }
        Ok(())
    }
}

/// `path` itself, or the file it links to when it is a symlink: a file is
/// edited where it is, and the link stays a link.
fn resolve_link(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).with_context(|| {
            format!(
                "{} is a symlink whose target cannot be resolved",
                path.display()
            )
        }),
        _ => Ok(path.to_path_buf()),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces (or creates) `path`, not a symlink, with `text` atomically: a
/// temporary file in its directory with the old file's owner and mode
/// (as `mode` says for a new file or a private one), a rename (with
/// `no_clobber`, refused when the file appeared meanwhile), then the
/// directory fsynced so the rename survives a crash. Returns how the old
/// file's mode was tightened ([`Mode::Private`]), if it was.
fn replace_file(
    path: &Path,
    text: &str,
    mode: Mode,
    no_clobber: bool,
) -> Result<Option<MadePrivate>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = parent_dir(path);
    let old = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("write {}", tmp.path().display()))?;
    if let Some(old) = &old {
        let new = tmp
            .as_file()
            .metadata()
            .with_context(|| format!("stat {}", tmp.path().display()))?;
        if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
            std::os::unix::fs::fchown(tmp.as_file(), Some(old.uid()), Some(old.gid()))
                .with_context(|| {
                    format!(
                        "keep the owner {}:{} of {} (run as root, or as its owner)",
                        old.uid(),
                        old.gid(),
                        path.display()
                    )
                })?;
        }
    }
    let kept = old.as_ref().map(|m| m.mode() & 0o7777);
    let (mode, made_private) = match (mode, kept) {
        (Mode::Keep(new), None) => (new, None),
        (Mode::Keep(_), Some(kept)) => (kept, None),
        (Mode::Private, None) => (0o600, None),
        (Mode::Private, Some(was)) => match private_mode(was) {
            Some(now) => (now, Some(MadePrivate { was, now })),
            None => (was, None),
        },
    };
    // Before the rename: the file is never readable by others under its name.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.path().display()))?;
    if no_clobber {
        tmp.persist_noclobber(path).map_err(|e| e.error)
    } else {
        tmp.persist(path).map_err(|e| e.error)
    }
    .with_context(|| format!("write {}", path.display()))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync the directory {}", dir.display()))?;
    Ok(made_private)
}

/// Takes the group's and others' access to `path` away when it has any
/// (chmod: the owner stays): a file that holds a credential and was
/// written before with a wider mode.
fn make_private(path: &Path) -> Result<Option<MadePrivate>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let was = fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .mode()
        & 0o7777;
    let Some(now) = private_mode(was) else {
        return Ok(None);
    };
    fs::set_permissions(path, fs::Permissions::from_mode(now))
        .with_context(|| format!("make {} private (chmod {now:04o})", path.display()))?;
    Ok(Some(MadePrivate { was, now }))
}

/// Copies `path` to `PATH.<unix time>[.<n>].bak`; returns the backup's path.
fn backup(path: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let mut b = path.with_file_name(format!("{name}.{secs}.bak"));
    let mut n = 1;
    while fs::symlink_metadata(&b).is_ok() {
        b = path.with_file_name(format!("{name}.{secs}.{n}.bak"));
        n += 1;
    }
    fs::copy(path, &b).with_context(|| format!("back up {} to {}", path.display(), b.display()))?;
    Ok(b)
}

/// What `dir/<name>/hosts.toml` holds and would hold: `ours` alone for a new
/// file, else the existing file with `ours` merged in (`setup::hosts`).
/// The path is the file itself, a symlink followed.
fn plan_hosts(dir: &Path, name: &str, ours: &str) -> Result<(PathBuf, Option<String>, String)> {
    if name.is_empty() || name.contains('/') || name == ".." || name == "." {
        bail!("{name:?} is not a registry host name");
    }
    let path = resolve_link(&dir.join(name).join("hosts.toml"))?;
    let old = match fs::read_to_string(&path) {
        Ok(old) => Some(old),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let new = match &old {
        Some(old) => merge_hosts(&path, old, ours)?,
        None => ours.to_string(),
    };
    Ok((path, old, new))
}

/// Writes `dir/<name>/hosts.toml` (atomically, owner and mode kept): `ours`,
/// merged into an existing file, which is kept as a backup first. A file
/// that carries credentials (an `Authorization` header: the token of
/// `--serving-token-file`, or the site's own) is made private: 0600 when
/// new, and an existing file readable by the group or others loses those
/// bits, even when its text does not change (the owner is kept). The
/// backup of a file that carried credentials is made private too.
pub fn write_hosts(dir: &Path, name: &str, ours: &str) -> Result<(Written, Option<MadePrivate>)> {
    let (path, old, new) = plan_hosts(dir, name, ours)?;
    let private = carries_credentials(&new);
    if old.as_deref() == Some(new.as_str()) {
        let made_private = match private {
            true => make_private(&path)?,
            false => None,
        };
        return Ok((Written::Unchanged(path), made_private));
    }
    let backup = match &old {
        Some(old) => {
            let backup = backup(&path)?;
            if carries_credentials(old) {
                make_private(&backup)?;
            }
            Some(backup)
        }
        None => None,
    };
    let mode = match private {
        true => Mode::Private,
        false => Mode::Keep(0o644),
    };
    let made_private = replace_file(&path, &new, mode, false)?;
    let written = match backup {
        Some(backup) => Written::Replaced { path, backup },
        None => Written::Created(path),
    };
    Ok((written, made_private))
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

/// `--socket` and `--mirror-listen` not given: the daemon's config file's
/// (`--config FILE`, else the default file when it exists), so the wiring
/// names the socket and mirror the daemon really uses.
fn with_daemon_config(mut args: ConfigArgs) -> Result<ConfigArgs> {
    if args.socket.is_some() && args.mirror_listen.is_some() {
        return Ok(args);
    }
    let Some(file) = config_file(args.config.as_deref(), &DefaultFiles::system()) else {
        return Ok(args);
    };
    let config = Config::load(&ServeArgs {
        config: Some(file),
        ..Default::default()
    })
    .context("loading the daemon's configuration")?;
    args.socket.get_or_insert(config.socket);
    args.mirror_listen
        .get_or_insert(config.mirror_listen.to_string());
    Ok(args)
}

/// Runs the command.
pub fn run(args: ConfigArgs) -> Result<ExitCode> {
    if let Err(e) = args.check_spellings() {
        eprintln!("airgap-snapshotter config: {e}");
        return Ok(ExitCode::from(crate::exit::USAGE));
    }
    let args = with_daemon_config(args)?;
    if let Some(u) = &args.upstream {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            bail!("--upstream {u:?}: expected https://host[:port] or http://host[:port]");
        }
    }
    if args.dry_run && args.merge.is_none() && args.registries_yaml.is_none() {
        bail!("--dry-run goes with --merge FILE or --registries-yaml FILE");
    }
    if let Some(file) = args.merge_file() {
        let mut out = Out::new(args.json);
        run_merge(&file, &args, &mut out)?;
        out.finish(args.dry_run)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(file) = &args.registries_yaml {
        let mut out = Out::new(args.json);
        run_registries_yaml(file, &args, &mut out)?;
        out.finish(args.dry_run)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.containerd_template {
        let wiring = Wiring::from_args(&args);
        let (name, text) = k3s_template(&wiring);
        eprintln!("# {name}");
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    for node in &args.serving_nodes {
        if !(node.starts_with("https://") || node.starts_with("http://")) {
            bail!("--serving-node {node:?}: expected https://host[:port]");
        }
    }
    let token = serving_token(&args).with_context(|| {
        format!(
            "--serving-token-file {}",
            args.serving_token_file
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        )
    })?;
    let hosts = hosts_toml(&args);
    let hosts_dir = hosts_dir(&args);
    let mut out = String::new();
    out.push_str(&config_toml(&args));
    out.push_str(&format!(
        "\n# ---- {}/_default/hosts.toml ----\n",
        hosts_dir.display()
    ));
    match &token {
        // Never printed.
        Some(t) => out.push_str(&hosts.replace(t.as_str(), TOKEN_PLACEHOLDER)),
        None => out.push_str(&hosts),
    }
    print!("{out}");
    if let Some(dir) = args.write_dir() {
        // A token makes the files private (`write_hosts`).
        write_hosts_files(&dir, &args, &hosts, &mut Out::new(false))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `DIR/_default/hosts.toml` and one per `--registry` (with
/// `--dry-run`, prints their diffs instead), and names the registry
/// directories that bypass the mirror.
fn write_hosts_files(dir: &Path, args: &ConfigArgs, hosts: &str, out: &mut Out) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut names = vec!["_default".to_string()];
    names.extend(args.registries.iter().cloned());
    // The diffs of a dry run show a placeholder, not the token.
    let token = serving_token(args).ok().flatten();
    let redact = |text: &str| match &token {
        Some(t) => text.replace(t.as_str(), TOKEN_PLACEHOLDER),
        None => text.to_string(),
    };
    for name in &names {
        if args.dry_run {
            let (path, old, new) = plan_hosts(dir, name, hosts)?;
            let action = match &old {
                None => "create",
                Some(old) if *old == new => "unchanged",
                Some(_) => "update",
            };
            out.change(
                &path,
                "hosts",
                old.as_deref().map(redact).as_deref(),
                Some(&redact(&new)),
                action,
            );
            match action {
                "unchanged" => out.say(format!("{} is already up to date", path.display())),
                _ => out.say(format!("dry run: {} not written", path.display())),
            }
            let was = fs::metadata(&path).ok().map(|m| m.mode() & 0o7777);
            if let (true, Some(was)) = (carries_credentials(&new), was) {
                if let Some(now) = private_mode(was) {
                    out.say(format!(
                        "dry run: {} would be made private (mode {now:04o}, was {was:04o}): it \
                         holds an Authorization header",
                        path.display()
                    ));
                }
            }
            continue;
        }
        let (written, made_private) = write_hosts(dir, name, hosts)?;
        let path = match &written {
            Written::Created(p) => {
                eprintln!("wrote {}", p.display());
                p
            }
            Written::Unchanged(p) => {
                eprintln!("{} is already up to date", p.display());
                p
            }
            Written::Replaced { path, backup } => {
                eprintln!(
                    "wrote {} (merged into the previous file, which is kept as {})",
                    path.display(),
                    backup.display()
                );
                path
            }
        };
        if let Some(MadePrivate { was, now }) = made_private {
            eprintln!(
                "made {} private (mode {now:04o}, was {was:04o}; owner kept): it holds an \
                 Authorization header, a credential",
                path.display()
            );
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
    Ok(())
}

/// `config --merge`: the wiring merged into containerd's config `file` (a
/// drop-in, else the file itself: backup, diff, atomic write keeping owner
/// and mode), then the hosts.toml files.
fn run_merge(file: &Path, args: &ConfigArgs, out: &mut Out) -> Result<()> {
    let original = fs::read_to_string(file).with_context(|| {
        format!(
            "read {0} (no config yet? `containerd config default > {0}` first)",
            file.display()
        )
    })?;
    let from_file = file_version(file, &original)?;
    let version = args.containerd.unwrap_or(from_file);
    if version != from_file {
        eprintln!(
            "note: {} is a {} config, merging the {} layout as --containerd says",
            file.display(),
            layout_name(from_file),
            layout_name(version)
        );
    }
    if args.revert {
        return run_revert(file, &original, version, args, out);
    }
    let wiring = Wiring::new(version, &args.socket(), &hosts_dir(args));
    let target = if args.no_drop_in {
        Target::ConfigToml {
            why: "--no-drop-in".into(),
        }
    } else if version != from_file {
        Target::ConfigToml {
            why: "--containerd overrides the file's own layout".into(),
        }
    } else {
        dropin::target(file, &original, version)?
    };
    match target {
        Target::DropIn {
            file: drop_in,
            import,
        } => write_drop_in(file, &original, &wiring, &drop_in, &import, args, out)?,
        Target::ConfigToml { why } => {
            eprintln!("editing {} in place: {why}", file.display());
            merge_in_place(file, &original, &wiring, version, args, out)?
        }
    }
    let hosts = hosts_toml(args);
    write_hosts_files(&hosts_dir(args), args, &hosts, out)
}

/// `--merge` into config.toml itself (backup, diff, atomic write; a
/// symlink's target is edited).
fn merge_in_place(
    file: &Path,
    original: &str,
    wiring: &Wiring,
    version: ContainerdVersion,
    args: &ConfigArgs,
    out: &mut Out,
) -> Result<()> {
    let target = resolve_link(file)?;
    if target != file {
        eprintln!(
            "{} is a symlink: editing its target {} (the link stays)",
            file.display(),
            target.display()
        );
    }
    let merged = merge(file, original, wiring)?;
    if !merged.changed {
        out.change(
            &target,
            "containerd-config",
            Some(original),
            Some(original),
            "unchanged",
        );
        out.say(format!(
            "{} already has everything airgap-snapshotter needs ({}): nothing changed",
            file.display(),
            layout_name(version)
        ));
        return Ok(());
    }
    out.change(
        &target,
        "containerd-config",
        Some(original),
        Some(&merged.text),
        "update",
    );
    if args.dry_run {
        out.say(format!("dry run: {} not written", target.display()));
        return Ok(());
    }
    let backup = write_config(&target, &merged.text)?;
    out.say(format!(
        "wrote {} ({} edits, {}; the previous file is {}; `config --merge --containerd-config {} --revert` restores it)",
        target.display(),
        merged.edits.len(),
        layout_name(version),
        backup.display(),
        file.display()
    ));
    out.say("restart containerd to apply it");
    Ok(())
}

/// `--merge` as a drop-in: `drop_in` (in a directory `import` of `file`
/// covers) gets the wiring; `file` is not touched. A file there that
/// `--merge` did not write is never replaced.
fn write_drop_in(
    file: &Path,
    original: &str,
    wiring: &Wiring,
    drop_in: &Path,
    import: &str,
    args: &ConfigArgs,
    out: &mut Out,
) -> Result<()> {
    let text = dropin::drop_in_text(file, original, wiring, drop_in)?;
    let drop_in = &resolve_link(drop_in)?;
    let old = match fs::read_to_string(drop_in) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", drop_in.display())),
    };
    if let Some(old) = &old {
        if !dropin::is_ours(old) {
            bail!(
                "{} exists and was not written by `airgap-snapshotter config --merge` (its first \
                 line is not {:?}): not replacing it; move it away, or pass --no-drop-in to edit {} instead",
                drop_in.display(),
                dropin::MARKER,
                file.display()
            );
        }
    }
    if old.as_deref() == Some(text.as_str()) {
        out.change(drop_in, "drop-in", Some(&text), Some(&text), "unchanged");
        out.say(format!(
            "{} already has everything airgap-snapshotter needs (a drop-in {} imports through {import:?}): nothing changed",
            drop_in.display(),
            file.display()
        ));
        return Ok(());
    }
    let name = drop_in.display().to_string();
    let action = if old.is_some() { "update" } else { "create" };
    out.change(drop_in, "drop-in", old.as_deref(), Some(&text), action);
    if args.dry_run {
        out.say(format!(
            "dry run: {name} not written ({} imports it through {import:?}; {} would not change)",
            file.display(),
            file.display()
        ));
        return Ok(());
    }
    replace_file(drop_in, &text, Mode::Keep(0o644), false)?;
    out.say(format!(
        "wrote {name} (a drop-in {} imports through {import:?}; {} is unchanged; `config --merge --containerd-config {} --revert` removes it)",
        file.display(),
        file.display(),
        file.display()
    ));
    out.say("restart containerd to apply it");
    Ok(())
}

/// `--merge FILE --revert`: removes the drop-ins `--merge` wrote among the
/// files FILE imports (the marker on their first line says so); when there
/// is none, restores the backup an in-place `--merge` made of FILE
/// ([`revert_in_place`]).
fn run_revert(
    file: &Path,
    original: &str,
    version: ContainerdVersion,
    args: &ConfigArgs,
    out: &mut Out,
) -> Result<()> {
    let ours = dropin::ours(file, original)?;
    for d in &ours {
        let text = fs::read_to_string(d).ok();
        out.change(d, "drop-in", text.as_deref(), None, "remove");
        if args.dry_run {
            out.say(format!("dry run: {} not removed", d.display()));
        } else {
            fs::remove_file(d).with_context(|| format!("remove {}", d.display()))?;
            out.say(format!("removed {}", d.display()));
        }
    }
    if ours.is_empty() {
        revert_in_place(file, original, version, args, out)?;
    } else if !args.dry_run {
        out.say("restart containerd to apply it");
    }
    out.say("the hosts.toml files are left in place");
    Ok(())
}

/// A string at `path` in a TOML value.
fn str_at<'a>(value: &'a toml::Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, k| v.get(k))
        .and_then(toml::Value::as_str)
}

/// `--revert` of an in-place `--merge`: FILE's newest backup
/// `FILE.<time>.bak` is restored when FILE is that backup with the wiring
/// merged in (the wiring FILE holds now: its proxy plugin address and
/// hosts directory), i.e. nothing but the wiring changed since; otherwise
/// nothing is written and the backup is named. The restored backup is
/// removed (FILE is its copy now).
fn revert_in_place(
    file: &Path,
    original: &str,
    version: ContainerdVersion,
    args: &ConfigArgs,
    out: &mut Out,
) -> Result<()> {
    let target = resolve_link(file)?;
    let backups = backups_of(&target);
    let Some(newest) = backups.last() else {
        out.say(format!(
            "no drop-in written by `config --merge` is imported by {}: nothing removed; and it \
             has no backup `{}.<time>.bak` from an in-place merge: nothing restored",
            file.display(),
            target.display()
        ));
        return Ok(());
    };
    let value: toml::Value = original
        .parse()
        .with_context(|| format!("parse {}", file.display()))?;
    let socket = str_at(&value, &["proxy_plugins", SNAPSHOTTER, "address"]);
    let mut registry = cri_registry_table(version);
    registry.push("config_path");
    let hosts = str_at(&value, &registry);
    let (Some(socket), Some(hosts)) = (socket, hosts) else {
        out.say(format!(
            "no drop-in written by `config --merge` is imported by {}: nothing removed; it has no \
             `[proxy_plugins.{SNAPSHOTTER}]` address or no CRI registry config_path, so no \
             in-place merge to undo: nothing restored (its backups: {})",
            file.display(),
            names(&backups)
        ));
        return Ok(());
    };
    let saved = fs::read_to_string(newest).with_context(|| format!("read {}", newest.display()))?;
    let wiring = Wiring::new(version, Path::new(socket), Path::new(hosts));
    let expected = merge(newest, &saved, &wiring).ok().map(|m| m.text);
    if expected.as_deref() != Some(original) {
        bail!(
            "{} has changed since `config --merge` edited it (it is not its backup {} with the \
             airgap-snapshotter wiring added): not restoring the backup over those changes; \
             compare the two (`diff {} {}`) and restore by hand",
            file.display(),
            newest.display(),
            newest.display(),
            target.display()
        );
    }
    out.change(
        &target,
        "containerd-config",
        Some(original),
        Some(&saved),
        "restore",
    );
    if args.dry_run {
        out.say(format!(
            "dry run: {} not restored from {}",
            target.display(),
            newest.display()
        ));
        return Ok(());
    }
    replace_file(&target, &saved, Mode::Keep(0o644), false)?;
    fs::remove_file(newest).with_context(|| format!("remove {}", newest.display()))?;
    out.say(format!(
        "restored {} from {} (the backup `config --merge` made; removed, as {} is its copy now)",
        target.display(),
        newest.display(),
        target.display()
    ));
    out.say("restart containerd to apply it");
    Ok(())
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|b| b.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `FILE.<unix time>[.<n>].bak` beside `file`, oldest first.
fn backups_of(file: &Path) -> Vec<PathBuf> {
    let (Some(name), dir) = (file.file_name(), parent_dir(file)) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    // (time, n): the name's numbers, so `.1.bak` sorts after `.bak`.
    let key = |n: &str| -> Option<(u64, u64)> {
        let mid = n.strip_prefix(&prefix)?.strip_suffix(".bak")?;
        let mut parts = mid.split('.');
        let secs = parts.next()?.parse().ok()?;
        let n = match parts.next() {
            Some(n) => n.parse().ok()?,
            None => 0,
        };
        parts.next().is_none().then_some((secs, n))
    };
    let mut out: Vec<((u64, u64), PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((key(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

/// `config --registries-yaml FILE`: the mirror first in a k3s / rke2
/// registries.yaml (created when missing), with a backup and a diff.
fn run_registries_yaml(file: &Path, args: &ConfigArgs, out: &mut Out) -> Result<()> {
    let Some(mirror) = mirror_url(&args.mirror()) else {
        bail!(
            "--registries-yaml puts the mirror into {}: it needs --mirror-listen ADDR, not off",
            file.display()
        );
    };
    let file = &resolve_link(file)?;
    let original = match fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    let mut wanted = vec![WILDCARD.to_string()];
    wanted.extend(args.registries.iter().cloned());
    let want = RegistriesWant {
        mirror,
        upstream: args
            .upstream
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        registries: wanted,
    };
    let text = original.as_deref().unwrap_or("");
    let edited = registries::edit(file, text, &want)?;
    for w in &edited.warnings {
        eprintln!("warning: {}: {w}", file.display());
    }
    if !edited.changed {
        out.change(file, "registries-yaml", Some(text), Some(text), "unchanged");
        out.say(format!(
            "{} already lists the mirror first in every entry: nothing changed",
            file.display()
        ));
        return Ok(());
    }
    let action = if original.is_some() {
        "update"
    } else {
        "create"
    };
    out.change(
        file,
        "registries-yaml",
        original.as_deref(),
        Some(&edited.text),
        action,
    );
    if !edited.comments_kept {
        eprintln!(
            "note: {} uses a YAML layout this command cannot edit line by line (flow mappings, \
             multi-line lists or anchors): it is written out whole, and its comments are not kept",
            file.display()
        );
    }
    if args.dry_run {
        out.say(format!("dry run: {} not written", file.display()));
        return Ok(());
    }
    match original {
        Some(_) => {
            let backup = write_config(file, &edited.text)?;
            out.say(format!(
                "wrote {} ({} edits; the previous file is {})",
                file.display(),
                edited.edits.len(),
                backup.display()
            ));
        }
        None => {
            // Mode 0600: registries.yaml holds credentials.
            replace_file(file, &edited.text, Mode::Keep(0o600), true)?;
            out.say(format!("wrote {} (a new file)", file.display()));
        }
    }
    out.say("restart k3s / rke2 (or its agent) to apply it");
    Ok(())
}

fn layout_name(v: ContainerdVersion) -> &'static str {
    match v {
        ContainerdVersion::V1 => "containerd 1.6/1.7 (version = 2)",
        ContainerdVersion::V2 => "containerd 2.x (version = 3, or 4 from 2.3)",
    }
}

/// Replaces `file` (not a symlink) with `text` atomically, owner and mode
/// kept ([`replace_file`]), after copying it to `FILE.<unix time>.bak`;
/// returns the backup's path.
fn write_config(file: &Path, text: &str) -> Result<PathBuf> {
    let backup = backup(file)?;
    replace_file(file, text, Mode::Keep(0o644), false)?;
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const V1_7: &str = include_str!("../setup/testdata/containerd-1.7.24.toml");
    const V2_3: &str = include_str!("../setup/testdata/containerd-2.3.7.toml");

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    /// `config ARGS` with the socket and mirror given (so no daemon config
    /// file is read).
    fn args(argv: &[&str]) -> ConfigArgs {
        let fixed = [
            "--socket",
            "/run/a/s.sock",
            "--mirror-listen",
            "127.0.0.1:5050",
        ];
        Cli::try_parse_from(
            std::iter::once("x")
                .chain(fixed)
                .chain(argv.iter().copied()),
        )
        .unwrap()
        .config
    }

    /// `config --merge` on `file` with `extra` flags: what it reported.
    fn merge_cmd(file: &Path, hosts: &Path, extra: &[&str]) -> Result<Vec<FileChange>> {
        let mut argv = vec![
            "--containerd-config",
            file.to_str().unwrap(),
            "--merge",
            "--hosts-dir",
            hosts.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        let a = args(&argv);
        a.check_spellings()?;
        let mut out = Out::new(true);
        run_merge(&a.merge_file().unwrap(), &a, &mut out)?;
        Ok(out.files)
    }

    const OURS: &str = "server = \"https://r.example\"\n[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n";

    #[test]
    fn write_keeps_a_backup_and_merges_the_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_hosts(dir.path(), "_default", OURS).unwrap();
        let path = dir.path().join("_default/hosts.toml");
        assert_eq!(w, (Written::Created(path.clone()), None));
        assert_eq!(fs::read_to_string(&path).unwrap(), OURS);
        assert_eq!(
            write_hosts(dir.path(), "_default", OURS).unwrap(),
            (Written::Unchanged(path.clone()), None)
        );
        // A site's file: its CA and host kept, ours first, a backup.
        let site = "ca = \"/etc/ssl/ca.pem\"\n[host.\"https://cache.example\"]\n  capabilities = [\"pull\"]\n";
        fs::write(&path, site).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        match write_hosts(dir.path(), "_default", OURS).unwrap().0 {
            Written::Replaced { path: p, backup } => {
                assert_eq!(p, path);
                assert_eq!(fs::read_to_string(&backup).unwrap(), site);
            }
            other => panic!("{other:?}"),
        }
        let merged = fs::read_to_string(&path).unwrap();
        let v: toml::Table = toml::from_str(&merged).unwrap();
        assert_eq!(v["ca"].as_str(), Some("/etc/ssl/ca.pem"));
        assert_eq!(v["server"].as_str(), Some("https://r.example"));
        let mirror = merged.find("127.0.0.1:5050").unwrap();
        assert!(mirror < merged.find("cache.example").unwrap(), "{merged}");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(write_hosts(dir.path(), "../x", OURS).is_err());
        write_hosts(dir.path(), "quay.io", OURS).unwrap();
        assert_eq!(
            bypassing(dir.path(), &["_default".into()]),
            [dir.path().join("quay.io")]
        );
        assert!(bypassing(dir.path(), &["_default".into(), "quay.io".into()]).is_empty());
        // Not TOML: refused, named, left alone.
        fs::write(&path, "[host\n").unwrap();
        let err = write_hosts(dir.path(), "_default", OURS).unwrap_err();
        assert!(
            format!("{err:#}").contains(&path.display().to_string()),
            "{err:#}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "[host\n");
    }

    /// `--merge` with `--serving-token-file` into a hosts.toml the group
    /// and others read: made 0600, its owner kept, also when a later run
    /// finds its text unchanged; a file without credentials keeps its mode.
    #[test]
    fn a_merged_hosts_toml_with_a_token_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(&file, V1_7).unwrap();
        let hosts = dir.path().join("certs.d");
        let path = hosts.join("_default/hosts.toml");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let site = "ca = \"/etc/ssl/ca.pem\"\n[host.\"https://cache.example\"]\n  capabilities = [\"pull\"]\n";
        fs::write(&path, site).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let owner = if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(4321), Some(4322)).unwrap();
            (4321, 4322)
        } else {
            let m = fs::metadata(&path).unwrap();
            (m.uid(), m.gid())
        };
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        // No token: merged, the mode kept.
        merge_cmd(&file, &hosts, &["--serving-node", "https://10.0.0.1:5443"]).unwrap();
        assert_eq!(mode(&path), 0o644);
        let token = dir.path().join("token");
        fs::write(&token, "node-token-0123456789\n").unwrap();
        let with_token = [
            "--serving-node",
            "https://10.0.0.1:5443",
            "--serving-token-file",
            token.to_str().unwrap(),
        ];
        // A dry run changes nothing, and its diff shows no token.
        let files = merge_cmd(&file, &hosts, &[&with_token[..], &["--dry-run"]].concat()).unwrap();
        assert_eq!(mode(&path), 0o644);
        let diff = &files.iter().find(|f| f.kind == "hosts").unwrap().diff;
        assert!(diff.contains(TOKEN_PLACEHOLDER), "{diff}");
        assert!(!diff.contains("node-token-0123456789"), "{diff}");
        merge_cmd(&file, &hosts, &with_token).unwrap();
        let merged = fs::read_to_string(&path).unwrap();
        assert!(merged.contains("Bearer node-token-0123456789"), "{merged}");
        assert!(merged.contains("cache.example"), "{merged}");
        assert_eq!(mode(&path), 0o600);
        let m = fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), owner);
        // Widened again by hand: the next run, its text unchanged, tightens it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        merge_cmd(&file, &hosts, &with_token).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), merged);
        assert_eq!(mode(&path), 0o600);
        // A new file with the token is 0600 from the start.
        let new = write_hosts(&hosts, "quay.io", &merged).unwrap();
        assert_eq!(
            new,
            (Written::Created(hosts.join("quay.io/hosts.toml")), None)
        );
        assert_eq!(mode(&hosts.join("quay.io/hosts.toml")), 0o600);
        // What write_hosts reports of the tightening.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, made) = write_hosts(&hosts, "_default", &merged).unwrap();
        let tightened = Some(MadePrivate {
            was: 0o644,
            now: 0o600,
        });
        assert_eq!(made, tightened);
        // Replaced while it held the token: the backup is private too.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let other = merged.replace("cache.example", "cache2.example");
        match write_hosts(&hosts, "_default", &other).unwrap() {
            (Written::Replaced { backup, .. }, made) => {
                assert_eq!(fs::read_to_string(&backup).unwrap(), before);
                assert_eq!(mode(&backup), 0o600);
                assert_eq!(made, tightened);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_write_keeps_mode_owner_and_backup() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(&file, "version = 2\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        // Another owner, when this test may give one (as root).
        let owner = if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&file, Some(4321), Some(4322)).unwrap();
            (4321, 4322)
        } else {
            let m = fs::metadata(&file).unwrap();
            (m.uid(), m.gid())
        };
        let backup = write_config(&file, "version = 2\n# x\n").unwrap();
        assert_eq!(fs::read_to_string(&backup).unwrap(), "version = 2\n");
        assert!(backup.to_string_lossy().ends_with(".bak"));
        assert_eq!(fs::read_to_string(&file).unwrap(), "version = 2\n# x\n");
        let m = fs::metadata(&file).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!((m.uid(), m.gid()), owner);
        let second = write_config(&file, "version = 2\n").unwrap();
        assert_ne!(second, backup);
        // Newest last, `.1.bak` after `.bak` of the same second.
        assert_eq!(backups_of(&file), [backup, second]);
    }

    #[test]
    fn a_symlinked_config_is_edited_at_its_target_and_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let target = real.join("containerd.toml");
        fs::write(&target, V1_7).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let hosts = dir.path().join("certs.d");

        merge_cmd(&link, &hosts, &[]).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let merged = fs::read_to_string(&target).unwrap();
        assert!(merged.contains("/run/a/s.sock"), "{merged}");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        let backups = backups_of(&target);
        assert_eq!(backups.len(), 1, "the backup is beside the target");
        assert!(backups_of(&link).is_empty());
        assert!(hosts.join("_default/hosts.toml").is_file());

        // --revert restores the backup, at the target, and drops it.
        let files = merge_cmd(&link, &hosts, &["--revert", "--dry-run"]).unwrap();
        assert_eq!(files[0].action, "restore");
        assert_eq!(fs::read_to_string(&target).unwrap(), merged);
        merge_cmd(&link, &hosts, &["--revert"]).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), V1_7);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        assert!(backups_of(&target).is_empty());
        // Nothing left to revert: said, nothing written.
        merge_cmd(&link, &hosts, &["--revert"]).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), V1_7);
    }

    #[test]
    fn revert_refuses_when_the_file_changed_since_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(&file, V1_7).unwrap();
        let hosts = dir.path().join("certs.d");
        merge_cmd(&file, &hosts, &[]).unwrap();
        // The wiring's own values edited: still ours, revert works.
        let merged = fs::read_to_string(&file).unwrap();
        fs::write(&file, merged.replace("/run/a/s.sock", "/run/b/s.sock")).unwrap();
        let files = merge_cmd(&file, &hosts, &["--revert", "--dry-run"]).unwrap();
        assert_eq!(files[0].action, "restore");
        // Something else edited: refused, the backup named, nothing written.
        let changed = format!("{merged}# a site edit\n");
        fs::write(&file, &changed).unwrap();
        let backup = backups_of(&file).pop().unwrap();
        let err = merge_cmd(&file, &hosts, &["--revert"]).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(&backup.display().to_string()), "{err}");
        assert!(err.contains("has changed since"), "{err}");
        assert_eq!(fs::read_to_string(&file).unwrap(), changed);
        assert!(backup.exists());
    }

    #[test]
    fn dry_run_shows_every_file_and_writes_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(&file, V1_7).unwrap();
        let hosts = dir.path().join("certs.d");
        fs::create_dir_all(hosts.join("_default")).unwrap();
        let site = "[host.\"https://cache.example\"]\n  capabilities = [\"pull\"]\n";
        fs::write(hosts.join("_default/hosts.toml"), site).unwrap();
        let files = merge_cmd(&file, &hosts, &["--dry-run", "--registry", "quay.io"]).unwrap();
        let summary: Vec<(&str, &str)> = files.iter().map(|f| (f.kind, f.action)).collect();
        assert_eq!(
            summary,
            [
                ("containerd-config", "update"),
                ("hosts", "update"),
                ("hosts", "create")
            ]
        );
        assert_eq!(
            files[1].path,
            hosts.join("_default/hosts.toml").display().to_string()
        );
        assert!(
            files[1].diff.contains("+[host.\"http://127.0.0.1:5050\"]"),
            "{}",
            files[1].diff
        );
        assert!(
            !files[1].diff.contains("-[host.\"https://cache.example\"]"),
            "{}",
            files[1].diff
        );
        assert!(
            files[2].diff.starts_with("--- /dev/null"),
            "{}",
            files[2].diff
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), V1_7);
        assert_eq!(
            fs::read_to_string(hosts.join("_default/hosts.toml")).unwrap(),
            site
        );
        assert!(!hosts.join("quay.io").exists());
        assert!(backups_of(&file).is_empty());
        // The JSON's field names.
        let v = serde_json::to_value(&files[0]).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["action", "diff", "kind", "path"]);
    }

    #[test]
    fn a_drop_in_is_listed_and_reverted_by_removal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let conf_d = dir.path().join("conf.d");
        fs::write(
            &file,
            V2_3.replace("/etc/containerd/conf.d", conf_d.to_str().unwrap()),
        )
        .unwrap();
        let hosts = dir.path().join("certs.d");
        let files = merge_cmd(&file, &hosts, &[]).unwrap();
        assert_eq!((files[0].kind, files[0].action), ("drop-in", "create"));
        let drop_in = conf_d.join("airgap-snapshotter.toml");
        assert!(drop_in.is_file());
        let files = merge_cmd(&file, &hosts, &["--revert"]).unwrap();
        assert_eq!((files[0].kind, files[0].action), ("drop-in", "remove"));
        assert!(!drop_in.exists());
    }

    #[test]
    fn old_spellings_still_parse_and_must_agree_with_the_new() {
        let a = Cli::try_parse_from(["x", "--mirror", "10.0.0.1:5000", "--write", "/srv/certs.d"])
            .unwrap()
            .config;
        assert_eq!(a.mirror(), "10.0.0.1:5000");
        assert_eq!(a.write_dir(), Some(PathBuf::from("/srv/certs.d")));
        assert_eq!(hosts_dir(&a), Path::new("/srv/certs.d"));
        let a = args(&["--hosts-dir", "/srv/h", "--write"]);
        assert_eq!(a.write_dir(), Some(PathBuf::from("/srv/h")));
        let a = args(&["--merge", "/etc/c.toml"]);
        assert_eq!(a.merge_file(), Some(PathBuf::from("/etc/c.toml")));
        let a = args(&["--merge", "--dry-run"]);
        assert_eq!(
            a.merge_file(),
            Some(PathBuf::from(
                airgap_snapshotter::setup::DEFAULT_CONTAINERD_CONFIG
            ))
        );
        assert!(a.dry_run);
        let a = args(&["--containerd-config", "/a.toml", "--merge", "/b.toml"]);
        assert!(a
            .check_spellings()
            .unwrap_err()
            .to_string()
            .contains("/b.toml"));
        let a = args(&["--hosts-dir", "/a", "--write", "/b"]);
        assert!(a.check_spellings().is_err());
        let a = args(&["--containerd-config", "/a.toml"]);
        assert!(a
            .check_spellings()
            .unwrap_err()
            .to_string()
            .contains("--merge"));
        assert!(args(&["--hosts-dir", "/a", "--write", "/a"])
            .check_spellings()
            .is_ok());
    }
}
