//! `airgap-snapshotter config --merge` end to end: the containerd under test
//! (`AIRGAP_CONTAINERD_DIR`, or the system's 1.6) starts from its own
//! `containerd config default` (private paths only), wired by nothing but
//! `config --merge`; it loads the plugin, and a CRI pull of an archived
//! image takes every layer from the archive, resolved through the mirror
//! the merged hosts.toml names. A second merge changes nothing. Then
//! `doctor` on that node: all checks pass, the archived image is present
//! and an unknown one missing, and a mistake made on purpose (a registry
//! directory without the mirror, a broken archive, a wrong socket) is a
//! failed check with its fix and exit status 1.
//!
//! Root only (skipped with a message otherwise), serialized with the other
//! end-to-end tests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use airgap_integration::containerd::{self, K8S_NS, SNAPSHOTTER};
use airgap_integration::image;
use airgap_integration::{
    daemon, free_port, process, run_as_root, serial, CriClient, Daemon, PrivateContainerd,
    Registry, TestDir,
};

const COMMENT: &str = "# this node's containerd, kept by hand: comments must survive a merge\n";

/// `airgap-snapshotter config --merge FILE ARGS...`: its stdout.
fn merge(config: &Path, args: &[&str]) -> Result<String> {
    process::run(
        Command::new(daemon::binary()?)
            .arg("config")
            .arg("--merge")
            .arg(config)
            .args(args),
        Duration::from_secs(30),
    )
    .context("airgap-snapshotter config --merge")
}

#[test]
fn config_merge_wires_containerd_default_config() {
    let test = "config_merge";
    run_as_root(test, config_merge);
}

fn config_merge(test: &str) -> Result<()> {
    let _serial = serial()?;
    let version = containerd::version()?;
    let registry = Registry::start()?;
    let host = registry.host();
    let work = TestDir::new(test)?;
    let spec = image::sample_spec(&host, "merged", "v1")?;
    let file = work.path().join("merged.tar");
    let built = image::write_oci_archive(&spec, &file)?;
    registry.push_oci_archive(&file, "v1", "library/merged:v1")?;
    // An image only the registry has, for doctor's `upstream` status.
    let remote_spec = image::sample_spec(&host, "remote", "v1")?;
    let remote_file = work.path().join("remote.tar");
    image::write_oci_archive(&remote_spec, &remote_file)?;
    registry.push_oci_archive(&remote_file, "v1", "library/remote:v1")?;
    let daemon_config = work.path().join("daemon.toml");
    std::fs::write(
        &daemon_config,
        format!("[[upstream]]\nregistry = \"{host}\"\nendpoint = \"http://{host}\"\n"),
    )?;
    let daemon_config = daemon_config.to_string_lossy().into_owned();
    let mirror = format!("127.0.0.1:{}", free_port()?);
    let daemon = Daemon::start_with_args(
        &[&file],
        &["--mirror-listen", &mirror, "--config", &daemon_config],
    )?;

    // containerd's own default config, with only its paths made private.
    let dir = PrivateContainerd::dir()?;
    let config = dir.path().join("config.toml");
    let text = containerd::private_paths(&containerd::default_config()?, &version, dir.path())?;
    std::fs::write(&config, format!("{COMMENT}{text}"))?;

    let hosts = work.path().join("certs.d");
    let socket = daemon.socket().to_string_lossy().into_owned();
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let upstream = format!("http://{host}");
    let args = [
        "--socket",
        socket.as_str(),
        "--mirror",
        mirror.as_str(),
        "--upstream",
        upstream.as_str(),
        "--write",
        hosts_arg.as_str(),
    ];
    eprintln!("== {test}: config --merge on containerd {version}'s default config");
    let out = merge(&config, &args)?;
    eprintln!("{out}");
    ensure!(
        out.contains("+++ ") && out.contains("wrote "),
        "no diff / write reported:\n{out}"
    );
    let merged = std::fs::read_to_string(&config)?;
    ensure!(
        merged.starts_with(COMMENT),
        "the comment was lost:\n{merged}"
    );
    let backups: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
        .collect();
    ensure!(backups.len() == 1, "expected one backup, found {backups:?}");
    ensure!(
        std::fs::read_to_string(hosts.join("_default/hosts.toml"))?
            .contains(&format!("[host.\"http://{mirror}\"]")),
        "hosts.toml without the mirror"
    );
    // Twice: nothing changes.
    let out = merge(&config, &args)?;
    ensure!(out.contains("nothing changed"), "second merge:\n{out}");
    ensure!(
        std::fs::read_to_string(&config)? == merged,
        "the second merge changed the file"
    );

    eprintln!("== {test}: starting containerd {version} with the merged config");
    let containerd = PrivateContainerd::start_with_config(dir, config)?;
    let plugins = containerd.ctr(&["plugins", "ls"])?;
    let airgap = plugins
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&SNAPSHOTTER));
    ensure!(
        airgap
            .as_ref()
            .is_some_and(|f| f[0] == "io.containerd.snapshotter.v1" && f.last() == Some(&"ok")),
        "ctr plugins ls does not list the airgap snapshotter as ok: {airgap:?}\n{plugins}"
    );

    eprintln!("== {test}: CRI PullImage {}", built.name);
    let mut cri = CriClient::connect(containerd.address())?;
    let mark = registry.mark();
    let image_ref = cri.pull_image(&built.name)?;
    ensure!(
        image_ref == built.config_digest,
        "PullImage answered {image_ref}, expected {}",
        built.config_digest
    );
    // The merged config_path and hosts.toml send containerd to the mirror
    // first: the registry is not asked at all.
    registry.settle();
    let asked: Vec<String> = registry
        .access_lines()
        .into_iter()
        .skip(mark)
        .map(|l| l.path)
        .filter(|p| p.contains("/merged/"))
        .collect();
    ensure!(
        asked.is_empty(),
        "the pull went to the registry, not through the mirror: {asked:?}"
    );
    let downloaded: Vec<String> = registry
        .blob_gets_since(mark)
        .into_iter()
        .filter(|d| built.layer_digests.contains(d))
        .collect();
    ensure!(
        downloaded.is_empty(),
        "containerd downloaded layer blobs {downloaded:?} of an archived image"
    );
    let log = daemon.log();
    ensure!(
        log.contains("committed from archive"),
        "the daemon did not commit a layer from the archive:\n{log}"
    );
    let keys = containerd.snapshot_keys(K8S_NS)?;
    for chain_id in &built.chain_ids {
        ensure!(
            keys.contains(chain_id),
            "no snapshot {chain_id} in the airgap snapshotter; it has {keys:?}"
        );
    }

    eprintln!("== {test}: doctor on this node");
    let list = work.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# next release\n{}\n{host}/library/absent:v9\n{host}/library/remote:v1\n",
            built.name
        ),
    )?;
    let doctor_cmd = |extra: &[&str]| -> Result<Command> {
        let mut cmd = Command::new(daemon::binary()?);
        cmd.arg("doctor")
            .arg("--containerd-config")
            .arg(containerd.config_path())
            .arg("--containerd-address")
            .arg(containerd.address())
            .arg("--ctr")
            .arg(containerd::binary("ctr"))
            .arg("--root")
            .arg(daemon.root())
            .arg("--archives")
            .arg(daemon.archives_dir())
            .args(["--mirror-listen", mirror.as_str()])
            .args(["--config", daemon_config.as_str()])
            .args(extra);
        Ok(cmd)
    };
    let doctor = |extra: &[&str]| -> Result<(bool, serde_json::Value)> {
        let out =
            process::run_unchecked(doctor_cmd(extra)?.arg("--json"), Duration::from_secs(60))?;
        let json: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
        Ok((out.status.success(), json))
    };
    let failing = |json: &serde_json::Value| -> Vec<String> {
        json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "fail")
            .map(|c| format!("{}: {} (fix: {})", c["name"], c["detail"], c["fix"]))
            .collect()
    };
    let (ok, json) = doctor(&["--socket", &socket])?;
    ensure!(
        ok,
        "doctor failed on a node wired right: {:#?}",
        failing(&json)
    );
    let names: Vec<&str> = json["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "daemon socket",
        "containerd",
        "containerd loaded airgap",
        "registry config_path",
        "hosts.toml _default",
        "mirror",
        &format!("upstream {host}"),
    ] {
        ensure!(
            names.contains(&want),
            "doctor has no check {want:?}: {names:?}"
        );
    }
    let list_arg = list.to_string_lossy().into_owned();
    let table = process::run_unchecked(
        &mut doctor_cmd(&["--socket", &socket, "--images-from", &list_arg])?,
        Duration::from_secs(60),
    )?;
    eprintln!("{}", table.stdout);
    let (ok, json) = doctor(&["--socket", &socket, "--images-from", &list_arg])?;
    let statuses: Vec<(&str, &str)> = json["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["ref"].as_str().unwrap_or(""),
                i["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    ensure!(
        statuses
            == [
                (built.name.as_str(), "present"),
                (&*format!("{host}/library/absent:v9"), "missing"),
                (&*format!("{host}/library/remote:v1"), "upstream"),
            ],
        "image statuses {statuses:?}"
    );
    ensure!(!ok, "doctor exited 0 with a missing image");
    // Another node's platform: the archive holds only this machine's.
    let (ok, json) = doctor(&[
        "--socket",
        &socket,
        "--images-from",
        &list_arg,
        "--platform",
        "linux/s390x",
    ])?;
    let first = &json["images"][0];
    ensure!(
        !ok && first["status"] == "wrong-platform"
            && first["platforms"][0]
                .as_str()
                .is_some_and(|p| p.starts_with("linux/")),
        "for linux/s390x: {first}"
    );
    ensure!(failing(&json).is_empty(), "{:#?}", failing(&json));

    // Mistakes, one at a time: each a failed check naming it, exit 1.
    let registry_dir = hosts.join(&host);
    std::fs::create_dir_all(&registry_dir)?;
    std::fs::write(
        registry_dir.join("hosts.toml"),
        format!("server = \"http://{host}\"\n"),
    )?;
    let (ok, json) = doctor(&["--socket", &socket])?;
    let bad = failing(&json);
    ensure!(
        !ok && bad.len() == 1
            && bad[0].contains(&format!("hosts.toml {host}"))
            && bad[0].contains("--registry"),
        "a registry directory without the mirror: {bad:#?}"
    );
    std::fs::remove_dir_all(&registry_dir)?;

    let broken = daemon.archives_dir().join("broken.tar");
    std::fs::write(&broken, b"this is not an archive")?;
    let (ok, json) = doctor(&["--socket", &socket])?;
    let bad = failing(&json);
    ensure!(
        !ok && bad.len() == 1 && bad[0].contains("broken.tar"),
        "a broken archive: {bad:#?}"
    );
    std::fs::remove_file(&broken)?;

    let wrong = work.path().join("wrong.sock");
    let (ok, json) = doctor(&["--socket", &wrong.to_string_lossy()])?;
    let bad = failing(&json);
    ensure!(
        !ok && bad.iter().any(|b| b.contains("daemon socket"))
            && bad
                .iter()
                .any(|b| b.contains("address") && b.contains(&socket)),
        "a wrong socket: {bad:#?}"
    );

    eprintln!("== {test}: config --merge --revert restores the backup of the in-place merge");
    let config = containerd.config_path().to_path_buf();
    let out = merge(&config, &["--revert"])?;
    ensure!(
        std::fs::read_to_string(&config)? == format!("{COMMENT}{text}"),
        "--revert did not restore the original config:\n{out}"
    );
    let left: Vec<_> = std::fs::read_dir(config.parent().context("config's directory")?)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
        .collect();
    ensure!(left.is_empty(), "the restored backup is left: {left:?}");
    Ok(())
}

/// containerd 2.x with a config that imports a drop-in directory (the
/// default from 2.2: `imports = ['/etc/containerd/conf.d/*.toml']`; here a
/// private conf.d): `config --merge` writes the wiring as a drop-in there
/// and leaves config.toml as it was; containerd loads the plugin from it;
/// `doctor` finds it there; `--revert` removes that file and no other. On
/// 1.x, whose imports replace whole plugin tables, the same config is
/// edited in place instead.
#[test]
fn config_merge_writes_a_conf_d_drop_in() {
    let test = "config_merge_drop_in";
    run_as_root(test, config_merge_drop_in);
}

fn config_merge_drop_in(test: &str) -> Result<()> {
    let _serial = serial()?;
    let version = containerd::version()?;
    let daemon = Daemon::start_with_args(&[], &["--mirror-listen", "off"])?;
    let dir = PrivateContainerd::dir()?;
    let config = dir.path().join("config.toml");
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf_d)?;
    // A drop-in of the site's own, which nothing may touch.
    let site = conf_d.join("00-site.toml");
    let site_text = format!(
        "version = {}\n[plugins.'io.containerd.gc.v1.scheduler']\npause_threshold = 0.02\n",
        if version.is_2x() { 3 } else { 2 }
    );
    std::fs::write(&site, &site_text)?;
    let text = containerd::private_paths(&containerd::default_config()?, &version, dir.path())?;
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    let mut imports = toml_edit::Array::new();
    imports.push(format!("{}/*.toml", conf_d.display()));
    doc["imports"] = toml_edit::value(imports);
    let text = format!("{COMMENT}{doc}");
    std::fs::write(&config, &text)?;
    let hosts = dir.path().join("certs.d").to_string_lossy().into_owned();
    let socket = daemon.socket().to_string_lossy().into_owned();
    let args = [
        "--socket",
        socket.as_str(),
        "--mirror",
        "off",
        "--write",
        hosts.as_str(),
    ];
    let drop_in = conf_d.join("airgap-snapshotter.toml");

    if !version.is_2x() {
        eprintln!("== {test}: containerd {version} (1.x): a config importing conf.d/*.toml is edited in place");
        let out = merge(&config, &args)?;
        ensure!(
            std::fs::read_to_string(&config)? != text && !drop_in.exists(),
            "1.x: expected config.toml edited and no drop-in:\n{out}"
        );
        ensure!(
            std::fs::read_to_string(&site)? == site_text,
            "00-site.toml changed"
        );
        return Ok(());
    }

    eprintln!(
        "== {test}: config --merge --dry-run on containerd {version}, config importing {}/*.toml",
        conf_d.display()
    );
    let out = merge(&config, &[&args[..], &["--dry-run"]].concat())?;
    eprintln!("{out}");
    ensure!(
        out.contains(&format!("+++ {}", drop_in.display())) && out.contains("dry run"),
        "--dry-run does not show the drop-in:\n{out}"
    );
    ensure!(!drop_in.exists(), "--dry-run wrote {}", drop_in.display());
    ensure!(
        std::fs::read_to_string(&config)? == text,
        "--dry-run changed config.toml"
    );

    eprintln!("== {test}: config --merge");
    let out = merge(&config, &args)?;
    eprintln!("{out}");
    ensure!(out.contains("wrote "), "no write reported:\n{out}");
    ensure!(
        std::fs::read_to_string(&config)? == text,
        "config.toml changed although it imports a drop-in directory"
    );
    let written = std::fs::read_to_string(&drop_in)
        .with_context(|| format!("reading {}", drop_in.display()))?;
    ensure!(
        written.starts_with("# Written by `airgap-snapshotter config --merge`"),
        "the drop-in has no marker:\n{written}"
    );
    let backups: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
        .collect();
    ensure!(
        backups.is_empty(),
        "backups of an unchanged config.toml: {backups:?}"
    );
    let out = merge(&config, &args)?;
    ensure!(out.contains("nothing changed"), "second merge:\n{out}");
    ensure!(
        std::fs::read_to_string(&drop_in)? == written,
        "the second merge changed the drop-in"
    );

    // What containerd makes of config.toml and its drop-ins.
    let dump = process::run(
        containerd::command("containerd")
            .arg("--config")
            .arg(&config)
            .args(["config", "dump"]),
        Duration::from_secs(30),
    )?;
    let dumped: toml::Value = dump.parse().context("containerd config dump")?;
    let images = &dumped["plugins"]["io.containerd.cri.v1.images"];
    ensure!(
        images["snapshotter"].as_str() == Some(SNAPSHOTTER)
            && images["registry"]["config_path"].as_str() == Some(hosts.as_str()),
        "containerd config dump: CRI images table {images}"
    );

    eprintln!("== {test}: starting containerd {version}");
    let containerd = PrivateContainerd::start_with_config(dir, config.clone())?;
    let plugins = containerd.ctr(&["plugins", "ls"])?;
    let airgap = plugins
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&SNAPSHOTTER));
    ensure!(
        airgap
            .as_ref()
            .is_some_and(|f| f[0] == "io.containerd.snapshotter.v1" && f.last() == Some(&"ok")),
        "ctr plugins ls does not list the airgap snapshotter as ok: {airgap:?}\n{plugins}"
    );

    eprintln!("== {test}: doctor finds the plugin in the drop-in");
    let out = process::run_unchecked(
        Command::new(daemon::binary()?)
            .arg("doctor")
            .arg("--containerd-config")
            .arg(&config)
            .arg("--containerd-address")
            .arg(containerd.address())
            .arg("--ctr")
            .arg(containerd::binary("ctr"))
            .args(["--socket", &socket, "--mirror-listen", "off", "--json"])
            .arg("--root")
            .arg(daemon.root())
            .arg("--archives")
            .arg(daemon.archives_dir()),
        Duration::from_secs(60),
    )?;
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
    let checks: Vec<&serde_json::Value> = json["checks"].as_array().into_iter().flatten().collect();
    let found = checks
        .iter()
        .find(|c| c["name"] == "[proxy_plugins.airgap]")
        .with_context(|| format!("doctor has no [proxy_plugins.airgap] check: {checks:#?}"))?;
    ensure!(
        found["status"] == "ok"
            && found["detail"]
                .as_str()
                .is_some_and(|d| d.contains("airgap-snapshotter.toml")),
        "doctor: {found}"
    );
    let wiring_failures: Vec<_> = checks
        .iter()
        .filter(|c| c["status"] != "ok")
        .filter(|c| {
            let n = c["name"].as_str().unwrap_or("");
            n.contains("proxy_plugins")
                || n.contains("snapshotter")
                || n.contains("config_path")
                || n.contains("loaded airgap")
                || n.contains("unpack_config")
        })
        .collect();
    ensure!(wiring_failures.is_empty(), "doctor: {wiring_failures:#?}");

    eprintln!("== {test}: config --merge --revert");
    let out = merge(&config, &["--revert", "--dry-run"])?;
    ensure!(
        drop_in.exists() && out.contains("not removed"),
        "--revert --dry-run:\n{out}"
    );
    let out = merge(&config, &["--revert"])?;
    eprintln!("{out}");
    ensure!(
        !drop_in.exists(),
        "--revert left {}:\n{out}",
        drop_in.display()
    );
    ensure!(
        std::fs::read_to_string(&site)? == site_text,
        "--revert touched 00-site.toml"
    );
    ensure!(
        std::fs::read_to_string(&config)? == text,
        "--revert changed config.toml"
    );
    let out = merge(&config, &["--revert"])?;
    ensure!(out.contains("nothing removed"), "a second --revert:\n{out}");
    // A file of that name the merge did not write is never replaced.
    std::fs::write(&drop_in, "version = 3\n")?;
    let out = process::run_unchecked(
        Command::new(daemon::binary()?)
            .arg("config")
            .arg("--merge")
            .arg(&config)
            .args(args),
        Duration::from_secs(30),
    )?;
    ensure!(
        !out.status.success() && out.stderr.contains("not replacing it"),
        "merge over a foreign {}: {}\n{}",
        drop_in.display(),
        out.stdout,
        out.stderr
    );
    let out = merge(&config, &["--revert"])?;
    ensure!(
        drop_in.exists() && out.contains("nothing removed"),
        "--revert removed a file it did not write:\n{out}"
    );
    std::fs::remove_file(&drop_in)?;
    drop(containerd);
    Ok(())
}

/// containerd#12636 on the containerd under test (2.x): with a
/// colon-separated `config_path` CRI pulls through the transfer service
/// read no hosts.toml, so an archived image is fetched from its registry,
/// not through the mirror, and `doctor` says so with its fix; with
/// `use_local_image_pull = true` (one of the fixes doctor names) the same
/// list works and the mirror serves the pull. 1.x (CRI always pulls on the
/// client side) is skipped with a message.
#[test]
fn transfer_service_ignores_a_config_path_list() {
    let test = "config_path_list";
    run_as_root(test, config_path_list);
}

fn config_path_list(test: &str) -> Result<()> {
    let _serial = serial()?;
    let version = containerd::version()?;
    if !version.is_2x() {
        airgap_snapshotter::testsupport::skip(
            test,
            &format!("not applicable to containerd {version}: 1.x CRI never pulls through the transfer service"),
        );
        return Ok(());
    }
    let registry = Registry::start()?;
    let host = registry.host();
    let work = TestDir::new(test)?;
    let mut files = Vec::new();
    let mut built = Vec::new();
    for name in ["listed", "local"] {
        let spec = image::sample_spec(&host, name, "v1")?;
        let file = work.path().join(format!("{name}.tar"));
        built.push(image::write_oci_archive(&spec, &file)?);
        registry.push_oci_archive(&file, "v1", &format!("library/{name}:v1"))?;
        files.push(file);
    }
    let mirror = format!("127.0.0.1:{}", free_port()?);
    let files: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    let daemon = Daemon::start_with_args(&files, &["--mirror-listen", &mirror])?;
    let dir = PrivateContainerd::dir()?;
    let config = dir.path().join("config.toml");
    let text = containerd::private_paths(&containerd::default_config()?, &version, dir.path())?;
    std::fs::write(&config, &text)?;
    let hosts = work.path().join("certs.d");
    let socket = daemon.socket().to_string_lossy().into_owned();
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let upstream = format!("http://{host}");
    merge(
        &config,
        &[
            "--socket",
            &socket,
            "--mirror",
            &mirror,
            "--upstream",
            &upstream,
            "--write",
            &hosts_arg,
        ],
    )?;
    let edit = |local_pull: bool| -> Result<()> {
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&config)?.parse()?;
        let images = doc["plugins"]["io.containerd.cri.v1.images"]
            .as_table_like_mut()
            .context("no CRI images table")?;
        images.insert("use_local_image_pull", toml_edit::value(local_pull));
        doc["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] = toml_edit::value(
            format!("{hosts_arg}:{}/docker-certs.d", work.path().display()),
        );
        std::fs::write(&config, doc.to_string())?;
        Ok(())
    };
    edit(false)?;
    let mut containerd = PrivateContainerd::start_with_config(dir, config.clone())?;
    let doctor = |address: &Path| -> Result<serde_json::Value> {
        let out = process::run_unchecked(
            Command::new(daemon::binary()?)
                .arg("doctor")
                .arg("--containerd-config")
                .arg(&config)
                .arg("--containerd-address")
                .arg(address)
                .arg("--ctr")
                .arg(containerd::binary("ctr"))
                .args(["--socket", &socket, "--mirror-listen", &mirror, "--json"])
                .arg("--root")
                .arg(daemon.root())
                .arg("--archives")
                .arg(daemon.archives_dir()),
            Duration::from_secs(60),
        )?;
        let json: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
        json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "registry config_path")
            .cloned()
            .context("doctor has no registry config_path check")
    };
    // pull NAME: whether the registry was asked for the image (the mirror
    // bypassed).
    let pull = |cri: &mut CriClient, i: usize| -> Result<bool> {
        let mark = registry.mark();
        cri.pull_image(&built[i].name)?;
        registry.settle();
        let name = format!("/{}/", ["listed", "local"][i]);
        Ok(registry
            .access_lines()
            .into_iter()
            .skip(mark)
            .any(|l| l.path.contains(&name)))
    };

    eprintln!("== {test}: containerd {version}, config_path = \"{hosts_arg}:...\", CRI through the transfer service");
    let mut cri = CriClient::connect(containerd.address())?;
    ensure!(
        pull(&mut cri, 0)?,
        "containerd {version} read the hosts.toml of a colon-separated config_path through the transfer service: \
         containerd#12636 is fixed here, doctor's check must say which versions it applies to"
    );
    let check = doctor(containerd.address())?;
    ensure!(
        check["status"] == "fail"
            && check["detail"]
                .as_str()
                .is_some_and(|d| d.contains("12636"))
            && check["fix"]
                .as_str()
                .is_some_and(|f| f.contains("use_local_image_pull")),
        "doctor: {check}"
    );

    eprintln!("== {test}: use_local_image_pull = true");
    edit(true)?;
    containerd.restart()?;
    let mut cri = CriClient::connect(containerd.address())?;
    ensure!(
        !pull(&mut cri, 1)?,
        "with use_local_image_pull the pull still bypassed the mirror"
    );
    let check = doctor(containerd.address())?;
    ensure!(check["status"] == "ok", "doctor: {check}");
    drop(containerd);
    Ok(())
}
