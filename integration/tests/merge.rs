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
    Ok(())
}
