//! Delta bundles end to end: release 1 packed in full on the "connected"
//! side; release 2 (a changed top layer, a new image, an image removed)
//! packed as a delta, once against the release-1 archive (`--base`) and
//! once against a node's `images --inventory` (`--base-inventory`), which
//! give the same archive. On a node holding base and delta, CRI pulls and
//! runs release 2 with no registry reachable; with the delta alone its
//! images are incomplete (`images`, `verify`, `doctor` name the base by
//! bundle ID and name), registration skips them, and `doctor` reports the
//! base deleted.
//!
//! Root only (a private containerd), serialized with the other end-to-end
//! tests; every part is stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use airgap_integration::containerd::{ContainerdOptions, K8S_NS};
use airgap_integration::image::{self, BuiltImage, Entry, ImageSpec, Layer};
use airgap_integration::registry::http_status;
use airgap_integration::{
    daemon, free_port, process, run_as_root, serial, CriClient, Daemon, PrivateContainerd, TestDir,
};

/// What the containers of release 2 print: the top layer of `app:2` and
/// the base layer it shares with `app:1`.
const CHECK: &str = "cat /data/release /data/file";

/// The two releases' archives as packed on the connected side.
struct Releases {
    /// Release 1 in full: app:1, old:1, pause.
    base: PathBuf,
    /// Release 2 as a delta of `base`: app:2, new:1, pause.
    delta: PathBuf,
    app2: BuiltImage,
    new1: BuiltImage,
    pause: BuiltImage,
    /// The bundle ID `pack` printed for the base.
    base_id: String,
}

fn bin() -> Result<PathBuf> {
    daemon::binary()
}

/// `airgap-snapshotter ARGS`, failing with its output.
fn cli(args: &[&str]) -> Result<String> {
    process::run(Command::new(bin()?).args(args), Duration::from_secs(120))
}

/// The top layer of `app` in release `n`.
fn top_layer(n: u32) -> Layer {
    Layer::new(vec![
        Entry::dir("data"),
        Entry::file("data/release", format!("release {n}\n")),
    ])
}

/// A release's images as OCI archives in `dir`: `app:<n>` (the sample base
/// layer of `app`, and a top layer saying `release <n>`), `other` (an image
/// only this release has) and the pause image.
fn write_release(dir: &Path, host: &str, n: u32, other: ImageSpec) -> Result<Vec<BuiltImage>> {
    std::fs::create_dir_all(dir)?;
    let base_layer = image::sample_layers("app")?.remove(0);
    let app = ImageSpec {
        name: format!("{host}/library/app:{n}"),
        tag: n.to_string(),
        layers: vec![base_layer, top_layer(n)],
    };
    let pause = ImageSpec {
        name: format!("{host}/library/pause:bundles"),
        tag: "bundles".into(),
        layers: image::pause_layers("pause:bundles")?,
    };
    let name = other
        .name
        .rsplit('/')
        .next()
        .unwrap_or("other")
        .replace(':', "-");
    Ok(vec![
        image::write_oci_archive(&app, &dir.join("app.tar"))?,
        image::write_oci_archive(&other, &dir.join(format!("{name}.tar")))?,
        image::write_oci_archive_with_cmd(
            &pause,
            &dir.join("pause.tar"),
            image::LayerCompression::Gzip,
            Some(image::PAUSE_CMD),
        )?,
    ])
}

/// Packs both releases in `work`, the delta both ways, and checks they
/// agree.
fn pack_releases(test: &str, work: &Path, host: &str) -> Result<Releases> {
    // old:1 (the sample image) is dropped by release 2; new:1 shares no
    // layer with release 1.
    let old = image::sample_spec(host, "old", "1")?;
    let new = ImageSpec {
        name: format!("{host}/library/new:1"),
        tag: "1".into(),
        layers: vec![image::busybox_layer(vec![
            Entry::dir("data"),
            Entry::file("data/file", "hello airgap\n"),
            Entry::file("data/marker", "new:1\n"),
        ])?],
    };
    let r1 = write_release(&work.join("src-1"), host, 1, old)?;
    let r2 = write_release(&work.join("src-2"), host, 2, new)?;
    let out = work.join("connected");
    std::fs::create_dir_all(&out)?;
    let base = out.join("release-1.tar.zst");
    let names = |imgs: &[BuiltImage]| imgs.iter().map(|i| i.name.clone()).collect::<Vec<_>>();

    eprintln!("== {test}: pack release 1 (full)");
    let mut args = vec![
        "pack".to_string(),
        "-o".into(),
        base.display().to_string(),
        "--from".into(),
        work.join("src-1").display().to_string(),
    ];
    args.extend(names(&r1));
    let printed = cli(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let base_id = printed
        .lines()
        .find_map(|l| l.strip_prefix("bundle "))
        .context(format!("pack printed no bundle ID:\n{printed}"))?
        .to_string();

    eprintln!("== {test}: pack release 2 as a delta, --base");
    let delta = out.join("release-2.tar.zst");
    let delta_args = |output: &Path, base_flag: &str, base_value: &Path| {
        let mut a = vec![
            "pack".to_string(),
            "-o".into(),
            output.display().to_string(),
            "--from".into(),
            work.join("src-2").display().to_string(),
            base_flag.into(),
            base_value.display().to_string(),
        ];
        a.extend(names(&r2));
        a
    };
    let a = delta_args(&delta, "--base", &base);
    let printed = cli(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(
        printed.contains(&format!("extends bundle {base_id} (release-1.tar.zst)")),
        "the delta does not name its base:\n{printed}"
    );

    eprintln!("== {test}: the node's inventory, then --base-inventory");
    let node = work.join("node-1");
    std::fs::create_dir_all(&node)?;
    std::fs::copy(&base, node.join("release-1.tar.zst"))?;
    let inventory = cli(&[
        "images",
        "--inventory",
        "--archives",
        &node.display().to_string(),
    ])?;
    let inv: Value = serde_json::from_str(&inventory)?;
    ensure!(
        inv["version"] == 1 && inv["bundles"][0]["id"] == base_id.as_str(),
        "inventory: {inventory}"
    );
    let inv_path = work.join("inventory.json");
    std::fs::write(&inv_path, &inventory)?;
    let again = work.join("again");
    std::fs::create_dir_all(&again)?;
    let again = again.join("release-2.tar.zst");
    let a = delta_args(&again, "--base-inventory", &inv_path);
    cli(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(
        std::fs::read(&again)? == std::fs::read(&delta)?,
        "--base and --base-inventory packed different archives"
    );

    let (base_len, delta_len) = (
        std::fs::metadata(&base)?.len(),
        std::fs::metadata(&delta)?.len(),
    );
    eprintln!("== {test}: release 1 {base_len} bytes, delta {delta_len} bytes");
    ensure!(
        delta_len * 2 < base_len,
        "the delta ({delta_len} B) is not much smaller than the base ({base_len} B)"
    );
    let [app2, new1, pause] = <[BuiltImage; 3]>::try_from(r2)
        .ok()
        .context("three images")?;
    Ok(Releases {
        base,
        delta,
        app2,
        new1,
        pause,
        base_id,
    })
}

/// A mirror address and containerd's hosts directory pointing at it, with
/// `host` (where no registry listens) as the upstream.
fn hosts_dir(work: &Path, mirror: &str, host: &str) -> Result<PathBuf> {
    let hosts = work.join("certs.d");
    daemon::write_hosts_dir(&hosts, mirror, Some(&format!("http://{host}")))?;
    Ok(hosts)
}

/// (1) A node with base and delta: CRI pulls and runs release 2 (the
/// changed image and the new one) with no registry reachable.
#[test]
fn base_plus_delta_pulls_and_runs_release_2_with_no_registry() {
    run_as_root("bundles_run", |test| {
        let _serial = serial()?;
        let work = TestDir::new("bundles-run")?;
        // Nothing listens there: a pull that needs the registry fails.
        let host = format!("127.0.0.1:{}", free_port()?);
        let r = pack_releases(test, work.path(), &host)?;

        let mirror = format!("127.0.0.1:{}", free_port()?);
        let daemon = Daemon::start_with_args(
            &[r.base.as_path(), r.delta.as_path()],
            &["--mirror-listen", &mirror],
        )?;
        let port: u16 = mirror.rsplit(':').next().unwrap_or_default().parse()?;
        process::wait_until("the mirror to answer", Duration::from_secs(30), || {
            Ok(http_status(port, "/v2/").ok() == Some(200))
        })?;
        let containerd = PrivateContainerd::start(
            daemon.socket(),
            &ContainerdOptions {
                hosts_dir: Some(hosts_dir(work.path(), &mirror, &host)?),
                sandbox_image: Some(r.pause.name.clone()),
                ..Default::default()
            },
        )?;
        let mut cri = CriClient::connect(containerd.address())?;
        for (img, expected) in [
            (&r.app2, "release 2\nhello airgap\n"),
            (&r.new1, "hello airgap\n"),
        ] {
            eprintln!("== {test}: CRI PullImage {}", img.name);
            let id = cri.pull_image(&img.name)?;
            ensure!(id == img.config_digest, "PullImage answered {id}");
            let command = if img.name == r.app2.name {
                CHECK
            } else {
                "cat /data/file"
            };
            let run = cri.run_pod_once(&img.name, &["/bin/sh", "-c", command])?;
            ensure!(
                run.exit_code == 0 && run.output == expected,
                "{} printed {:?} (exit {}), expected {expected:?}",
                img.name,
                run.output,
                run.exit_code
            );
        }
        // The shared base layer came from release 1, the new top from the delta.
        let log = daemon.log();
        ensure!(
            log.contains("committed from archive"),
            "no layer was committed from an archive"
        );
        let listed = containerd.ctr(&["-n", K8S_NS, "images", "ls", "-q"])?;
        ensure!(
            listed.contains(&r.app2.name),
            "containerd does not list {}:\n{listed}",
            r.app2.name
        );
        Ok(())
    });
}

/// `doctor --json` on `archives`: the checks named `delta ...`.
fn doctor_delta_checks(work: &Path, archives: &Path) -> Result<Vec<Value>> {
    let out = process::run_unchecked(
        Command::new(bin()?)
            .args(["doctor", "--json", "--archives"])
            .arg(archives)
            .arg("--root")
            .arg(work.join("doctor-root"))
            .arg("--socket")
            .arg(work.join("no.sock"))
            .args(["--mirror-listen", "off"])
            .arg("--containerd-config")
            .arg(work.join("no-config.toml"))
            .arg("--hosts-dir")
            .arg(work.join("no-hosts"))
            .args(["--ctr", "/bin/false"]),
        Duration::from_secs(60),
    )?;
    let json: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
    Ok(json["checks"]
        .as_array()
        .context("no checks")?
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("delta ") || n == "bundles")
        })
        .cloned()
        .collect())
}

/// (2) A node with the delta only (its base deleted): `images`, `verify`
/// and `doctor` show release 2 incomplete and name the base by bundle ID
/// and name; registration skips it and says why.
#[test]
fn delta_without_its_base_is_incomplete_and_reported() {
    run_as_root("bundles_incomplete", |test| {
        let _serial = serial()?;
        let work = TestDir::new("bundles-incomplete")?;
        let host = format!("127.0.0.1:{}", free_port()?);
        let r = pack_releases(test, work.path(), &host)?;
        let daemon = Daemon::start_with_archives(&[r.base.as_path(), r.delta.as_path()])?;
        let archives = daemon.archives_dir().to_path_buf();
        let archives_arg = archives.display().to_string();

        eprintln!("== {test}: base and delta: complete, doctor content");
        let checks = doctor_delta_checks(work.path(), &archives)?;
        ensure!(
            checks.len() == 1 && checks[0]["status"] == "ok",
            "doctor with the base present: {checks:#?}"
        );
        cli(&["verify", "--archives", &archives_arg])?;

        eprintln!("== {test}: the base deleted");
        std::fs::remove_file(archives.join("release-1.tar.zst"))?;
        let checks = doctor_delta_checks(work.path(), &archives)?;
        let detail = checks
            .iter()
            .find(|c| c["status"] == "fail")
            .and_then(|c| c["detail"].as_str())
            .with_context(|| format!("doctor reports no absent base: {checks:#?}"))?;
        ensure!(
            detail.contains(&r.base_id)
                && detail.contains("release-1.tar.zst")
                && detail.contains(&r.app2.name),
            "doctor's detail: {detail}"
        );

        let rows: Value =
            serde_json::from_str(&cli(&["images", "--json", "--archives", &archives_arg])?)?;
        let row = rows
            .as_array()
            .and_then(|a| a.iter().find(|i| i["ref"] == r.app2.name.as_str()))
            .context("images --json lists no app:2")?;
        ensure!(
            row["complete"] == false
                && row["incomplete"]["absent_bases"][0]["id"] == r.base_id.as_str()
                && row["incomplete"]["absent_bases"][0]["name"] == "release-1.tar.zst",
            "images --json: {row:#}"
        );
        let table = cli(&["images", "--archives", &archives_arg])?;
        ensure!(
            table.contains(&format!(
                "! {}: incomplete: needs base bundle {}",
                r.app2.name, r.base_id
            )),
            "images table:\n{table}"
        );
        let verify = process::run_unchecked(
            Command::new(bin()?).args(["verify", "--archives", &archives_arg]),
            Duration::from_secs(60),
        )?;
        ensure!(
            !verify.status.success()
                && verify
                    .stdout
                    .contains(&format!("image {}: incomplete: needs base", r.app2.name)),
            "verify: {}\n{}",
            verify.stdout,
            verify.stderr
        );

        eprintln!("== {test}: registration skips release 2 and says why");
        let containerd = PrivateContainerd::start(daemon.socket(), &ContainerdOptions::default())?;
        let out = cli(&[
            "import",
            "--archives",
            &archives_arg,
            "--root",
            &daemon.root().display().to_string(),
            "--containerd-address",
            &containerd.address().display().to_string(),
            "--import-mode",
            "lazy",
        ])?;
        // app:2 and the pause image need the base's layers; new:1 has all
        // of its own in the delta and is registered.
        for img in [&r.app2, &r.pause] {
            ensure!(
                out.contains(&format!(
                    "skipped     {}: incomplete: needs base bundle {}",
                    img.name, r.base_id
                )),
                "import did not skip {}:\n{out}",
                img.name
            );
        }
        ensure!(
            out.contains(&format!("registered  {}", r.new1.name)),
            "import did not register {}:\n{out}",
            r.new1.name
        );
        let listed = containerd.ctr(&["-n", K8S_NS, "images", "ls", "-q"])?;
        ensure!(
            !listed.contains(&r.app2.name) && listed.contains(&r.new1.name),
            "registered images:\n{listed}"
        );
        Ok(())
    });
}
