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

use airgap_snapshotter::setup::dropin::{self, Target};
use airgap_snapshotter::setup::merge::{file_version, merge};
use airgap_snapshotter::setup::registries::{self, RegistriesWant, WILDCARD};
use airgap_snapshotter::setup::{
    config_toml, hosts_dir, hosts_toml, k3s_template, mirror_url, serving_token, ConfigArgs,
    ContainerdVersion, Wiring,
};
use anyhow::{bail, Context, Result};

/// What `--write` did to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Created(PathBuf),
    Unchanged(PathBuf),
    Replaced { path: PathBuf, backup: PathBuf },
}

/// Writes `content` to `dir/<name>/hosts.toml` (atomically), moving a
/// different existing file aside first.
pub fn write_hosts(dir: &Path, name: &str, content: &str) -> Result<Written> {
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
pub fn run(args: ConfigArgs) -> Result<ExitCode> {
    if let Some(u) = &args.upstream {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            bail!("--upstream {u:?}: expected https://host[:port] or http://host[:port]");
        }
    }
    if args.dry_run && args.merge.is_none() && args.registries_yaml.is_none() {
        bail!("--dry-run goes with --merge FILE or --registries-yaml FILE");
    }
    if let Some(file) = &args.merge {
        return run_merge(file, &args);
    }
    if let Some(file) = &args.registries_yaml {
        return run_registries_yaml(file, &args);
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
        Some(t) => out.push_str(&hosts.replace(t.as_str(), "<the token of --serving-token-file>")),
        None => out.push_str(&hosts),
    }
    print!("{out}");
    if let Some(dir) = &args.write {
        write_hosts_files(dir, &args, &hosts)?;
        if token.is_some() {
            // The token is a credential: only root reads it.
            let mut names = vec!["_default".to_string()];
            names.extend(args.registries.iter().cloned());
            for name in names {
                let path = dir.join(name).join("hosts.toml");
                fs::set_permissions(
                    &path,
                    <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
                )
                .with_context(|| format!("make {} private", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `DIR/_default/hosts.toml` and one per `--registry`, and names the
/// registry directories that bypass the mirror.
fn write_hosts_files(dir: &Path, args: &ConfigArgs, hosts: &str) -> Result<()> {
    {
        let mut names = vec!["_default".to_string()];
        names.extend(args.registries.iter().cloned());
        for name in &names {
            match write_hosts(dir, name, hosts)? {
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
    Ok(())
}

/// `config --merge FILE`: the wiring merged into FILE (backup, diff,
/// atomic write keeping the file's mode), then the hosts.toml files.
fn run_merge(file: &Path, args: &ConfigArgs) -> Result<ExitCode> {
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
        return run_revert(file, &original, args);
    }
    let wiring = Wiring::new(version, &args.socket, &hosts_dir(args));
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
        } => write_drop_in(file, &original, &wiring, &drop_in, &import, args)?,
        Target::ConfigToml { why } => {
            eprintln!("editing {} in place: {why}", file.display());
            merge_in_place(file, &original, &wiring, version, args)?
        }
    }
    let hosts = hosts_toml(args);
    let dir = hosts_dir(args);
    if args.dry_run {
        println!("dry run: {}/_default/hosts.toml not written", dir.display());
    } else {
        write_hosts_files(&dir, args, &hosts)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--merge` into config.toml itself (backup, diff, atomic write).
fn merge_in_place(
    file: &Path,
    original: &str,
    wiring: &Wiring,
    version: ContainerdVersion,
    args: &ConfigArgs,
) -> Result<()> {
    let merged = merge(file, original, wiring)?;
    if !merged.changed {
        println!(
            "{} already has everything airgap-snapshotter needs ({}): nothing changed",
            file.display(),
            layout_name(version)
        );
    } else {
        let diff = similar::TextDiff::from_lines(original, &merged.text);
        print!(
            "{}",
            diff.unified_diff()
                .context_radius(2)
                .header(&file.display().to_string(), &file.display().to_string())
        );
        if args.dry_run {
            println!("dry run: {} not written", file.display());
        } else {
            let backup = write_config(file, &merged.text)?;
            println!(
                "wrote {} ({} edits, {}; the previous file is {})",
                file.display(),
                merged.edits.len(),
                layout_name(version),
                backup.display()
            );
            println!("restart containerd to apply it");
        }
    }
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
) -> Result<()> {
    let text = dropin::drop_in_text(file, original, wiring, drop_in)?;
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
        println!(
            "{} already has everything airgap-snapshotter needs (a drop-in {} imports through {import:?}): nothing changed",
            drop_in.display(),
            file.display()
        );
        return Ok(());
    }
    let name = drop_in.display().to_string();
    let diff = similar::TextDiff::from_lines(old.as_deref().unwrap_or(""), &text);
    print!(
        "{}",
        diff.unified_diff()
            .context_radius(2)
            .header(if old.is_some() { &name } else { "/dev/null" }, &name)
    );
    if args.dry_run {
        println!(
            "dry run: {name} not written ({} imports it through {import:?}; {} would not change)",
            file.display(),
            file.display()
        );
        return Ok(());
    }
    let dir = drop_in
        .parent()
        .with_context(|| format!("{name} has no directory"))?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("write {}", tmp.path().display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", tmp.path().display()))?;
    }
    tmp.persist(drop_in)
        .map_err(|e| e.error)
        .with_context(|| format!("write {name}"))?;
    println!(
        "wrote {name} (a drop-in {} imports through {import:?}; {} is unchanged; `config --merge {} --revert` removes it)",
        file.display(),
        file.display(),
        file.display()
    );
    println!("restart containerd to apply it");
    Ok(())
}

/// `--merge FILE --revert`: removes the drop-ins `--merge` wrote among the
/// files FILE imports (the marker on their first line says so); an edited
/// config.toml is left alone, its backups named.
fn run_revert(file: &Path, original: &str, args: &ConfigArgs) -> Result<ExitCode> {
    let ours = dropin::ours(file, original)?;
    for d in &ours {
        if args.dry_run {
            println!("dry run: {} not removed", d.display());
        } else {
            fs::remove_file(d).with_context(|| format!("remove {}", d.display()))?;
            println!("removed {}", d.display());
        }
    }
    let backups = backups_of(file);
    if ours.is_empty() {
        println!(
            "no drop-in written by `config --merge` is imported by {}: nothing removed",
            file.display()
        );
    } else if !args.dry_run {
        println!("restart containerd to apply it");
    }
    if !backups.is_empty() {
        println!(
            "{} itself is not changed back: a `config --merge` that edited it kept the previous file as {} (restore one by hand)",
            file.display(),
            backups
                .iter()
                .map(|b| b.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("the hosts.toml files are left in place");
    Ok(ExitCode::SUCCESS)
}

/// `FILE.<unix time>[.<n>].bak` beside `file`, oldest first.
fn backups_of(file: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".bak")
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `config --registries-yaml FILE`: the mirror first in a k3s / rke2
/// registries.yaml (created when missing), with a backup and a diff.
fn run_registries_yaml(file: &Path, args: &ConfigArgs) -> Result<ExitCode> {
    let Some(mirror) = mirror_url(&args.mirror) else {
        bail!(
            "--registries-yaml puts the mirror into {}: it needs --mirror ADDR, not off",
            file.display()
        );
    };
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
        println!(
            "{} already lists the mirror first in every entry: nothing changed",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let name = file.display().to_string();
    let diff = similar::TextDiff::from_lines(text, &edited.text);
    print!(
        "{}",
        diff.unified_diff().context_radius(2).header(
            if original.is_some() {
                &name
            } else {
                "/dev/null"
            },
            &name
        )
    );
    if !edited.comments_kept {
        eprintln!(
            "note: {} uses a YAML layout this command cannot edit line by line (flow mappings, \
             multi-line lists or anchors): it is written out whole, and its comments are not kept",
            file.display()
        );
    }
    if args.dry_run {
        println!("dry run: {} not written", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    match original {
        Some(_) => {
            let backup = write_config(file, &edited.text)?;
            println!(
                "wrote {} ({} edits; the previous file is {})",
                file.display(),
                edited.edits.len(),
                backup.display()
            );
        }
        None => {
            write_new(file, &edited.text)?;
            println!("wrote {} (a new file)", file.display());
        }
    }
    println!("restart k3s / rke2 (or its agent) to apply it");
    Ok(ExitCode::SUCCESS)
}

/// Creates `file` (mode 0600: registries.yaml holds credentials),
/// atomically.
fn write_new(file: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("write {}", tmp.path().display()))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", tmp.path().display()))?;
    tmp.persist_noclobber(file)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", file.display()))?;
    Ok(())
}

fn layout_name(v: ContainerdVersion) -> &'static str {
    match v {
        ContainerdVersion::V1 => "containerd 1.6/1.7 (version = 2)",
        ContainerdVersion::V2 => "containerd 2.x (version = 3, or 4 from 2.3)",
    }
}

/// Replaces `file` with `text` atomically (a temporary file in the same
/// directory, the old file's mode, a rename) after copying it to
/// `FILE.<unix time>.bak`; returns the backup's path.
fn write_config(file: &Path, text: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = file
        .file_name()
        .with_context(|| format!("{} is not a file name", file.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut backup = file.with_file_name(format!("{name}.{secs}.bak"));
    let mut n = 1;
    while backup.exists() {
        backup = file.with_file_name(format!("{name}.{secs}.{n}.bak"));
        n += 1;
    }
    let meta = fs::metadata(file).with_context(|| format!("stat {}", file.display()))?;
    fs::copy(file, &backup)
        .with_context(|| format!("back up {} to {}", file.display(), backup.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("write {}", tmp.path().display()))?;
    fs::set_permissions(
        tmp.path(),
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )
    .with_context(|| format!("chmod {}", tmp.path().display()))?;
    tmp.persist(file)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", file.display()))?;
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn config_write_keeps_mode_and_backup() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        fs::write(&file, "version = 2\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let backup = write_config(&file, "version = 2\n# x\n").unwrap();
        assert_eq!(fs::read_to_string(&backup).unwrap(), "version = 2\n");
        assert!(backup.to_string_lossy().ends_with(".bak"));
        assert_eq!(fs::read_to_string(&file).unwrap(), "version = 2\n# x\n");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let second = write_config(&file, "version = 2\n").unwrap();
        assert_ne!(second, backup);
    }
}
