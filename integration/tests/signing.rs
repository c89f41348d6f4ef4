//! End-to-end tests of signed bundles: `pack --sign` on the "connected"
//! side, then on the node the mirror, the importer and a real CRI pull
//! under `[verify] require = "enforce"`, and a real cosign (`cosign verify
//! --key` against the mirror, `cosign sign` the other way round).
//!
//! Keys are made with openssl (`genpkey`, EC P-256), as docs/bundles.md
//! says. cosign comes from `AIRGAP_COSIGN` (a path, from
//! `scripts/build-cosign.sh` / `scripts/build-test-tools.sh`); unset, the
//! cosign tests are recorded as skipped; set to a file that is not there,
//! they fail. cosign runs offline: `--insecure-ignore-tlog=true`,
//! `--tlog-upload=false`, a private `TUF_ROOT` and `HOME`.
//!
//! Root only, serialized with the other end-to-end tests; every part is
//! stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use airgap_integration::containerd::{ContainerdOptions, K8S_NS};
use airgap_integration::image::{self, BuiltImage, ImageSpec, SAMPLE_CHECK, SAMPLE_EXPECTED};
use airgap_integration::registry::http_status;
use airgap_integration::{
    can_run, daemon, free_port, process, serial, CriClient, Daemon, PrivateContainerd, Registry,
    TestDir,
};

const COSIGN_ENV: &str = "AIRGAP_COSIGN";
/// The registry the test images are named after: nothing answers for it,
/// only the mirror (so nothing but the archives can serve them).
const HOST: &str = "registry.airgap.test";

fn cosign_binary(test: &str) -> Result<Option<PathBuf>> {
    airgap_integration::test_tool(test, COSIGN_ENV, "scripts/build-cosign.sh")
}

/// Runs a test body that needs cosign.
fn with_cosign(test: &str, body: impl FnOnce(&str, &Cosign) -> Result<()>) {
    if !can_run(test) {
        return;
    }
    let result: Result<bool> = (|| {
        let Some(bin) = cosign_binary(test)? else {
            return Ok(false);
        };
        let home = TestDir::new("cosign-home")?;
        body(test, &Cosign { bin, home })?;
        Ok(true)
    })();
    match result {
        Ok(true) => eprintln!("== {test}: passed"),
        Ok(false) => {}
        Err(err) => panic!("{test}: {err:#}"),
    }
}

/// cosign with a private home and trust root: it never reads the
/// machine's, nor leaves anything there.
struct Cosign {
    bin: PathBuf,
    home: TestDir,
}

impl Cosign {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("TUF_ROOT", self.home.path().join("tuf"))
            .env("COSIGN_PASSWORD", "airgap-e2e")
            .env("COSIGN_EXPERIMENTAL", "0")
            .env("SIGSTORE_NO_CACHE", "1");
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<process::Output> {
        process::run_unchecked(&mut self.command(args), Duration::from_secs(120))
    }

    /// `cosign verify --key` of `image` at the mirror; `Ok(output)` when it
    /// verified.
    fn verify(&self, key: &Path, image: &str) -> Result<std::result::Result<String, String>> {
        let out = self.run(&[
            "verify",
            "--key",
            &key.to_string_lossy(),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--output",
            "json",
            image,
        ])?;
        Ok(if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        })
    }
}

/// An ECDSA P-256 key pair made with openssl: (private PEM, public PEM).
fn key_pair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    process::run(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key),
        Duration::from_secs(30),
    )?;
    process::run(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
        Duration::from_secs(30),
    )?;
    Ok((key, public))
}

/// `airgap-snapshotter pack --from SOURCE... [--sign KEY] -o OUT REF...`.
fn pack(out: &Path, sources: &[&Path], key: Option<&Path>, refs: &[&str]) -> Result<String> {
    let mut cmd = Command::new(daemon::binary()?);
    // For a key cosign encrypted (cosign generate-key-pair).
    cmd.env("COSIGN_PASSWORD", "airgap-e2e");
    cmd.arg("pack").arg("-o").arg(out);
    for s in sources {
        cmd.arg("--from").arg(s);
    }
    if let Some(key) = key {
        cmd.arg("--sign").arg(key);
    }
    cmd.args(refs);
    process::run(&mut cmd, Duration::from_secs(120))
}

/// An archive of one sample image `HOST/library/<name>:v1`.
fn sample(work: &Path, name: &str) -> Result<BuiltImage> {
    let spec = image::sample_spec(HOST, name, "v1")?;
    image::write_oci_archive(&spec, &work.join(format!("{name}.tar")))
}

/// Starts the daemon on `archives` with its mirror on a free port, `extra`
/// config (TOML) in its config file; returns it and the mirror's address.
fn daemon_with_mirror(
    work: &Path,
    archives: &[&Path],
    config: &str,
    args: &[&str],
) -> Result<(Daemon, String)> {
    let file = work.join("daemon.toml");
    std::fs::write(&file, config)?;
    let mirror = format!("127.0.0.1:{}", free_port()?);
    let mut all = vec!["--mirror-listen", &mirror, "--config"];
    let file = file.to_string_lossy().into_owned();
    all.push(&file);
    all.extend_from_slice(args);
    let daemon = Daemon::start_with_args(archives, &all)?;
    let port: u16 = mirror.rsplit(':').next().unwrap_or_default().parse()?;
    process::wait_until("the mirror to answer", Duration::from_secs(30), || {
        Ok(http_status(port, "/v2/").ok() == Some(200))
    })?;
    Ok((daemon, mirror))
}

fn enforce_config(public: &Path) -> String {
    enforce_config_keys(&[public])
}

fn enforce_config_keys(keys: &[&Path]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    format!(
        "[verify]\nkeys = [{}]\nrequire = \"enforce\"\n",
        keys.join(", ")
    )
}

/// (a) The mirror serves what `pack --sign` stored as cosign signatures:
/// real `cosign verify --key` succeeds for the signed image, fails for an
/// unsigned one and for one signed with another key; and still succeeds
/// under `enforce`, which serves signatures as they are.
#[test]
fn cosign_verifies_signed_bundles_at_the_mirror() {
    with_cosign("cosign_verify", |test, cosign| {
        let _serial = serial()?;
        let work = TestDir::new(test)?;
        let (key, public) = key_pair(work.path(), "site")?;
        let (other_key, _) = key_pair(work.path(), "other")?;
        let signed = sample(work.path(), "signed")?;
        let plain = sample(work.path(), "plain")?;
        let other = sample(work.path(), "otherkey")?;
        let bundle = work.path().join("bundle.tar.zst");
        let out = pack(&bundle, &[&signed.archive], Some(&key), &[&signed.name])?;
        ensure!(out.contains("signed 1 images"), "pack --sign said: {out}");
        let other_bundle = work.path().join("other.tar.zst");
        pack(
            &other_bundle,
            &[&other.archive],
            Some(&other_key),
            &[&other.name],
        )?;
        // A key cosign made (password-encrypted) signs as well.
        let prefix = work.path().join("made-by-cosign");
        let out = cosign.run(&[
            "generate-key-pair",
            "--output-key-prefix",
            &prefix.to_string_lossy(),
        ])?;
        ensure!(
            out.status.success(),
            "cosign generate-key-pair: {}",
            out.stderr
        );
        let by_cosign_key = sample(work.path(), "cosignkey")?;
        let cosign_key_bundle = work.path().join("cosignkey.tar.zst");
        pack(
            &cosign_key_bundle,
            &[&by_cosign_key.archive],
            Some(&work.path().join("made-by-cosign.key")),
            &[&by_cosign_key.name],
        )?;

        let cosign_pub = work.path().join("made-by-cosign.pub");
        for config in [String::new(), enforce_config_keys(&[&public, &cosign_pub])] {
            let (daemon, mirror) = daemon_with_mirror(
                work.path(),
                &[&bundle, &other_bundle, &cosign_key_bundle, &plain.archive],
                &config,
                &[],
            )?;
            eprintln!("== {test}: cosign verify at the mirror ({config:?})");
            let at_mirror = |b: &BuiltImage| format!("{mirror}/{}", b.name);
            match cosign.verify(&public, &at_mirror(&signed))? {
                Ok(json) => ensure!(
                    json.contains(&signed.manifest_digest),
                    "cosign verify of {} printed no {}: {json}",
                    signed.name,
                    signed.manifest_digest
                ),
                Err(e) => bail!(
                    "cosign verify of the signed {} failed:\n{e}\n--- daemon log:\n{}",
                    signed.name,
                    process::tail(daemon.log_path(), 30)
                ),
            }
            if let Err(e) = cosign.verify(&cosign_pub, &at_mirror(&by_cosign_key))? {
                bail!("cosign verify of the image signed with cosign's key failed:\n{e}");
            }
            for (b, what) in [(&plain, "unsigned"), (&other, "signed with another key")] {
                if let Ok(json) = cosign.verify(&public, &at_mirror(b))? {
                    bail!("cosign verify of {} ({what}) succeeded: {json}", b.name);
                }
            }
        }
        Ok(())
    });
}

/// (b) Under `enforce`, a CRI pull of a signed archived image pulls and
/// runs (the sandbox image signed too), while a pull of an unsigned
/// archived image is refused: the mirror answers 403 naming the image,
/// archive and reason, and no registry answers for it. The importer
/// registers the signed image only.
#[test]
fn enforce_refuses_unsigned_archived_images_to_cri_and_import() {
    let test = "enforce_cri";
    if !can_run(test) {
        return;
    }
    if let Err(err) = enforce_cri(test) {
        panic!("{test}: {err:#}");
    }
    eprintln!("== {test}: passed");
}

fn enforce_cri(test: &str) -> Result<()> {
    let _serial = serial()?;
    let work = TestDir::new(test)?;
    let (key, public) = key_pair(work.path(), "site")?;
    let signed = sample(work.path(), "signed")?;
    let plain = sample(work.path(), "plain")?;
    let pause_spec = ImageSpec {
        name: format!("{HOST}/library/pause:signed"),
        tag: "signed".to_string(),
        layers: image::pause_layers("pause:signed")?,
    };
    let pause = image::write_oci_archive_with_cmd(
        &pause_spec,
        &work.path().join("pause.tar"),
        image::LayerCompression::Gzip,
        Some(image::PAUSE_CMD),
    )?;
    let bundle = work.path().join("bundle.tar.zst");
    pack(
        &bundle,
        &[&signed.archive, &pause.archive],
        Some(&key),
        &[&signed.name, &pause.name],
    )?;

    let (mut daemon, mirror) = daemon_with_mirror(
        work.path(),
        &[&bundle, &plain.archive],
        &enforce_config(&public),
        &[],
    )?;
    let port: u16 = mirror.rsplit(':').next().unwrap_or_default().parse()?;
    // Where the images' registry would be: nothing listens.
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let hosts = work.path().join("certs.d");
    daemon::write_hosts_dir(&hosts, &mirror, Some(&nowhere))?;
    let containerd = PrivateContainerd::start(
        daemon.socket(),
        &ContainerdOptions {
            hosts_dir: Some(hosts),
            sandbox_image: Some(pause.name.clone()),
            ..Default::default()
        },
    )?;
    let mut cri = CriClient::connect(containerd.address())?;

    eprintln!("== {test}: CRI PullImage {} (signed)", signed.name);
    let id = cri.pull_image(&signed.name)?;
    ensure!(
        id == signed.config_digest,
        "PullImage answered {id}, expected {}",
        signed.config_digest
    );
    let run = cri.run_pod_once(&signed.name, &["/bin/sh", "-c", SAMPLE_CHECK])?;
    ensure!(
        run.exit_code == 0 && run.output == SAMPLE_EXPECTED,
        "the signed image's pod exited {} with:\n{}",
        run.exit_code,
        run.output
    );

    eprintln!("== {test}: CRI PullImage {} (unsigned)", plain.name);
    match cri.pull_image(&plain.name) {
        Ok(id) => bail!("the unsigned {} was pulled under enforce: {id}", plain.name),
        Err(e) => eprintln!("== {test}: refused as expected: {e:#}"),
    }
    let path = format!("/v2/{}/manifests/v1", plain.name.trim_end_matches(":v1"));
    ensure!(
        http_status(port, &path)? == 403,
        "the mirror does not answer 403 to GET {path}"
    );
    let refused = |log: &str| {
        log.lines().any(|l| {
            l.contains("refused")
                && l.contains(&plain.name)
                && l.contains("plain.tar")
                && l.contains("unsigned")
        })
    };
    ensure!(
        refused(&daemon.log()),
        "the daemon's log names no refusal of {} (archive plain.tar, unsigned):\n{}",
        plain.name,
        process::tail(daemon.log_path(), 40)
    );
    ensure!(
        cri.image_status(&plain.name)?.is_none(),
        "the unsigned image is in containerd"
    );

    // Registration: the signed images are registered, the unsigned not.
    drop(cri);
    cri_remove_all(&containerd)?;
    let address = containerd.address().to_string_lossy().into_owned();
    daemon.restart_with_args(&["--containerd-address", &address, "--import-mode", "lazy"])?;
    process::wait_until(
        "the signed image to be registered",
        Duration::from_secs(60),
        || Ok(containerd.image_refs(K8S_NS)?.contains(&signed.name)),
    )
    .with_context(|| process::tail(daemon.log_path(), 40))?;
    let refs = containerd.image_refs(K8S_NS)?;
    ensure!(
        !refs.contains(&plain.name),
        "the unsigned {} was registered: {refs:?}",
        plain.name
    );
    ensure!(
        daemon
            .log()
            .lines()
            .any(|l| l.contains("refused") && l.contains(&plain.name) && l.contains("register")),
        "no refusal to register {} in the daemon's log",
        plain.name
    );
    Ok(())
}

/// Removes the images the CRI pulls left, so that registration starts from
/// nothing.
fn cri_remove_all(containerd: &PrivateContainerd) -> Result<()> {
    for r in containerd.image_refs(K8S_NS)? {
        containerd.ctr(&["-n", K8S_NS, "images", "rm", &r])?;
    }
    Ok(())
}

/// (c) The other way round: an image signed by real `cosign sign` (a PEM
/// key imported with `cosign import-key-pair`) in a registry, packed with
/// its signature tag, is admitted under `enforce` by the daemon's own
/// verifier (the mirror serves its manifest), while an unsigned one is not.
#[test]
fn signatures_made_by_cosign_are_accepted_on_the_node() {
    with_cosign("cosign_sign", |test, cosign| {
        let _serial = serial()?;
        let registry = Registry::start()?;
        let work = TestDir::new(test)?;
        let (key, public) = key_pair(work.path(), "site")?;
        let spec = image::sample_spec(&registry.host(), "bycosign", "v1")?;
        let built = image::write_oci_archive(&spec, &work.path().join("bycosign.tar"))?;
        registry.push_oci_archive(&built.archive, "v1", "library/bycosign:v1")?;
        let plain_spec = image::sample_spec(&registry.host(), "notsigned", "v1")?;
        let plain = image::write_oci_archive(&plain_spec, &work.path().join("notsigned.tar"))?;
        registry.push_oci_archive(&plain.archive, "v1", "library/notsigned:v1")?;

        let prefix = work.path().join("import");
        let out = cosign.run(&[
            "import-key-pair",
            "--key",
            &key.to_string_lossy(),
            "--output-key-prefix",
            &prefix.to_string_lossy(),
            "-y",
        ])?;
        ensure!(
            out.status.success(),
            "cosign import-key-pair: {}",
            out.stderr
        );
        let cosign_key = work.path().join("import.key");
        let out = cosign.run(&[
            "sign",
            "--key",
            &cosign_key.to_string_lossy(),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "-y",
            &built.name,
        ])?;
        ensure!(
            out.status.success(),
            "cosign sign: {}{}",
            out.stdout,
            out.stderr
        );

        let sig_ref = format!(
            "{}/library/bycosign:sha256-{}.sig",
            registry.host(),
            built.manifest_digest.trim_start_matches("sha256:")
        );
        let bundle = work.path().join("from-registry.tar.zst");
        let from = format!("http://{}", registry.host());
        pack(
            &bundle,
            &[Path::new(&from)],
            None,
            &[&built.name, &sig_ref, &plain.name],
        )?;
        let (daemon, mirror) =
            daemon_with_mirror(work.path(), &[&bundle], &enforce_config(&public), &[])?;
        let port: u16 = mirror.rsplit(':').next().unwrap_or_default().parse()?;
        let manifest_path = |b: &BuiltImage| {
            let repo = b.name.trim_end_matches(":v1");
            format!("/v2/{repo}/manifests/v1")
        };
        let status = http_status(port, &manifest_path(&built))?;
        ensure!(
            status == 200,
            "the mirror answers {status} for the image cosign signed:\n{}",
            process::tail(daemon.log_path(), 30)
        );
        let status = http_status(port, &manifest_path(&plain))?;
        ensure!(
            status == 403,
            "the mirror answers {status} for the unsigned image"
        );
        Ok(())
    });
}

/// (d) The snapshotter's remote path under `enforce`: with the images in a
/// registry too (no mirror), a CRI pull of the unsigned archived image
/// works, but its layers are downloaded from the registry, not taken from
/// the archive (the refusal is logged with `action=mount`); the signed
/// image's layers come from the archive, none downloaded.
#[test]
fn enforce_takes_no_unsigned_layer_from_the_archives() {
    let test = "enforce_mount";
    if !can_run(test) {
        return;
    }
    if let Err(err) = enforce_mount(test) {
        panic!("{test}: {err:#}");
    }
    eprintln!("== {test}: passed");
}

fn enforce_mount(test: &str) -> Result<()> {
    let _serial = serial()?;
    let registry = Registry::start()?;
    let work = TestDir::new(test)?;
    let (key, public) = key_pair(work.path(), "site")?;
    let host = registry.host();
    let mut built = Vec::new();
    for name in ["signedlayers", "plainlayers"] {
        let spec = image::sample_spec(&host, name, "v1")?;
        let b = image::write_oci_archive(&spec, &work.path().join(format!("{name}.tar")))?;
        registry.push_oci_archive(&b.archive, "v1", &format!("library/{name}:v1"))?;
        built.push(b);
    }
    let (signed, plain) = (&built[0], &built[1]);
    let bundle = work.path().join("bundle.tar.zst");
    pack(&bundle, &[&signed.archive], Some(&key), &[&signed.name])?;
    let config = work.path().join("daemon.toml");
    std::fs::write(&config, enforce_config(&public))?;
    let daemon = Daemon::start_with_args(
        &[&bundle, &plain.archive],
        &["--config", &config.to_string_lossy()],
    )?;
    let containerd = PrivateContainerd::start(daemon.socket(), &ContainerdOptions::default())?;
    let mut cri = CriClient::connect(containerd.address())?;
    let layer_gets = |b: &BuiltImage, mark: usize| -> Vec<String> {
        registry
            .blob_gets_since(mark)
            .into_iter()
            .filter(|d| b.layer_digests.contains(d))
            .collect()
    };

    let mark = registry.mark();
    eprintln!("== {test}: CRI PullImage {} (signed)", signed.name);
    cri.pull_image(&signed.name)?;
    let gets = layer_gets(signed, mark);
    ensure!(
        gets.is_empty(),
        "layers of the signed image were downloaded: {gets:?}\n{}",
        process::tail(daemon.log_path(), 30)
    );

    let mark = registry.mark();
    eprintln!("== {test}: CRI PullImage {} (unsigned)", plain.name);
    cri.pull_image(&plain.name)?;
    let gets = layer_gets(plain, mark);
    ensure!(
        gets.len() == plain.layer_digests.len(),
        "the unsigned image's layers {:?} should all come from the registry, got {gets:?}",
        plain.layer_digests
    );
    ensure!(
        daemon.log().lines().any(|l| l.contains("refused")
            && l.contains(&plain.name)
            && l.contains("plainlayers.tar")
            && l.contains("mount")),
        "no refusal to mount {}'s layers in the daemon's log:\n{}",
        plain.name,
        process::tail(daemon.log_path(), 40)
    );
    Ok(())
}
