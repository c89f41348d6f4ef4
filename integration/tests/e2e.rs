//! End-to-end tests: a real containerd (1.6, 1.7 or 2.x, see
//! `AIRGAP_CONTAINERD_DIR` in the harness) with the airgap proxy snapshotter
//! and CRI set to use it, a real `docker-registry` on loopback holding the
//! images, real `ctr` and `runc`, and a CRI client playing kubelet.
//!
//! Root only (skipped with a message otherwise). The tests are serialized
//! with a cross-process lock (they share `/run/containerd/runc`), and every
//! part they start is stopped and removed on drop, also on failure.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tar::EntryType;

use airgap_integration::containerd::{ContainerdOptions, K8S_NS, SNAPSHOTTER};
use airgap_integration::cri::ImageNeverPull;
use airgap_integration::image::{
    self, sample_spec, ArchiveContainer, BuiltImage, Entry, ImageSpec, Layer, LayerCompression,
    SAMPLE_CHECK, SAMPLE_EXPECTED,
};
use airgap_integration::{
    can_run, serial, CriClient, Daemon, PrivateContainerd, Registry, SerialGuard, TestDir,
};
use airgap_integration::{mounts, process};

/// Every part of one test. Fields drop in order: the CRI client, containerd
/// (its workloads removed first), the registry, the daemon, the work
/// directory, and last the lock that serializes the tests.
struct Env {
    cri: CriClient,
    containerd: PrivateContainerd,
    registry: Registry,
    daemon: Daemon,
    work: TestDir,
    _serial: SerialGuard,
}

/// An archived test image: what to build, how its layers are compressed
/// and in which container the archive is.
struct TestImage {
    spec: ImageSpec,
    layers: LayerCompression,
    container: ArchiveContainer,
    /// Archive it as `docker save` does (skopeo `docker-archive:`) instead
    /// of as an OCI image layout.
    docker_save: bool,
    /// The image config's `Cmd` (`None`: `/bin/sh`).
    cmd: Option<&'static [&'static str]>,
}

impl From<ImageSpec> for TestImage {
    fn from(spec: ImageSpec) -> Self {
        TestImage {
            spec,
            layers: LayerCompression::Gzip,
            container: ArchiveContainer::Tar,
            docker_save: false,
            cmd: None,
        }
    }
}

/// Images built for a test, pushed to the registry; `archived` ones are
/// also put into the daemon's archives directory.
struct Images {
    archived: Vec<BuiltImage>,
    remote_only: Vec<BuiltImage>,
}

/// Starts the registry, builds and pushes the images `build` describes
/// (given the registry host), starts the daemon on the archived ones and a
/// private containerd wired to it, with the `options` made for the
/// registry host.
fn setup(
    test: &str,
    options: impl FnOnce(&str) -> ContainerdOptions,
    build: impl FnOnce(&str) -> Result<(Vec<TestImage>, Vec<ImageSpec>)>,
) -> Result<(Env, Images)> {
    let serial = serial()?;
    eprintln!("== {test}: starting docker-registry");
    let registry = Registry::start()?;
    let work = TestDir::new(test)?;
    let (archived_specs, remote_specs) = build(&registry.host())?;
    let mut images = Images {
        archived: Vec::new(),
        remote_only: Vec::new(),
    };
    let remote_specs = remote_specs.into_iter().map(TestImage::from).collect();
    for (specs, out) in [
        (archived_specs, &mut images.archived),
        (remote_specs, &mut images.remote_only),
    ] {
        for TestImage {
            spec,
            layers,
            container,
            docker_save,
            cmd,
        } in specs
        {
            // One file per image: `<repository>-<tag>.tar`.
            let file_name: String = spec
                .name
                .rsplit('/')
                .next()
                .unwrap_or(&spec.name)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let file = work.path().join(format!("{file_name}.tar"));
            ensure!(!file.exists(), "two test images named {}", spec.name);
            let mut built = image::write_oci_archive_with_cmd(&spec, &file, layers, cmd)?;
            let repo = spec
                .name
                .strip_prefix(&format!("{}/", registry.host()))
                .context("image name not on the test registry")?;
            registry.push_oci_archive(&file, &spec.tag, repo)?;
            if docker_save {
                let saved = work.path().join(format!("{file_name}-docker-save.tar"));
                process::run(
                    std::process::Command::new("skopeo")
                        .args(["copy", "--quiet"])
                        .arg(format!("oci-archive:{}:{}", file.display(), spec.tag))
                        .arg(format!("docker-archive:{}:{}", saved.display(), spec.name)),
                    Duration::from_secs(120),
                )?;
                std::fs::remove_file(&file)?;
                std::fs::rename(&saved, &file)?;
            }
            if container != ArchiveContainer::Tar {
                built.archive = image::compress_archive(&file, container)?;
                std::fs::remove_file(&file)?;
            }
            out.push(built);
        }
    }
    let files: Vec<&Path> = images
        .archived
        .iter()
        .map(|i| i.archive.as_path())
        .collect();
    eprintln!(
        "== {test}: starting airgap-snapshotter with {} archive(s)",
        files.len()
    );
    let daemon = Daemon::start_with_archives(&files)?;
    eprintln!("== {test}: starting a private containerd");
    let containerd = PrivateContainerd::start(daemon.socket(), &options(&registry.host()))?;
    let cri = CriClient::connect(containerd.address())?;
    Ok((
        Env {
            cri,
            containerd,
            registry,
            daemon,
            work,
            _serial: serial,
        },
        images,
    ))
}

/// A container id unique to this process and purpose (runc's state
/// directory under /run/containerd/runc is shared by every containerd).
fn container_id(purpose: &str) -> String {
    format!("airgap-e2e-{purpose}-{}", std::process::id())
}

/// `ctr -n k8s.io run --rm --snapshotter airgap IMAGE ID sh -c SAMPLE_CHECK`,
/// asserting that the layers were applied right.
fn run_sample_check(env: &Env, image: &str, purpose: &str) -> Result<()> {
    run_sample_check_in(env, K8S_NS, image, purpose)
}

/// [`run_sample_check`] in a given containerd namespace.
fn run_sample_check_in(env: &Env, namespace: &str, image: &str, purpose: &str) -> Result<()> {
    let run = |id: &str| {
        env.containerd.ctr(&[
            "-n",
            namespace,
            "run",
            "--rm",
            "--snapshotter",
            SNAPSHOTTER,
            image,
            id,
            "/bin/sh",
            "-c",
            SAMPLE_CHECK,
        ])
    };
    let out = image::run_sample_check(image, |attempt| {
        run(&container_id(&format!("{purpose}-{attempt}")))
    })?;
    ensure!(
        out == SAMPLE_EXPECTED,
        "container output of {image} differs\n--- got:\n{out}--- expected:\n{SAMPLE_EXPECTED}"
    );
    Ok(())
}

/// Reads an extended attribute without following symlinks.
fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is valid for its length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// Asserts that every copy of `data/xattr` in the daemon's snapshot
/// directories kept its extended attribute (busybox cannot read xattrs
/// from inside the container, so this looks from the host).
fn assert_xattrs_kept(env: &Env) -> Result<()> {
    let mut seen = 0;
    for dir in daemon_snapshot_dirs(env.daemon.root())? {
        let file = dir.join("fs/data/xattr");
        if std::fs::symlink_metadata(&file).is_err() {
            continue;
        }
        seen += 1;
        let value = lgetxattr(&file, image::XATTR_NAME);
        ensure!(
            value.as_deref() == Some(image::XATTR_VALUE),
            "{} has {}={value:?}, expected {:?}",
            file.display(),
            image::XATTR_NAME,
            String::from_utf8_lossy(image::XATTR_VALUE)
        );
    }
    ensure!(
        seen > 0,
        "no data/xattr under {}/snapshots/*/fs",
        env.daemon.root().display()
    );
    Ok(())
}

/// Layer blobs of `image` that the registry served since `mark`.
fn layer_gets(env: &Env, image: &BuiltImage, mark: usize) -> Vec<String> {
    env.registry
        .blob_gets_since(mark)
        .into_iter()
        .filter(|d| image.layer_digests.contains(d))
        .collect()
}

/// Asserts the airgap snapshotter holds a committed snapshot per chain ID.
fn assert_chain_snapshots(env: &Env, image: &BuiltImage) -> Result<()> {
    let keys: BTreeSet<String> = env.containerd.snapshot_keys(K8S_NS)?.into_iter().collect();
    for chain_id in &image.chain_ids {
        ensure!(
            keys.contains(chain_id),
            "no snapshot {chain_id} in the airgap snapshotter; it has {keys:?}"
        );
    }
    Ok(())
}

/// Sets up the parts (see [`setup`]) and runs `body`; a failure panics
/// while the parts are still alive, so their logs are printed on the way
/// out.
fn run_test(
    test: &str,
    build: impl FnOnce(&str) -> Result<(Vec<TestImage>, Vec<ImageSpec>)>,
    body: impl FnOnce(&str, &mut Env, &Images) -> Result<()>,
) {
    run_test_with(test, &ContainerdOptions::default(), build, body)
}

/// [`run_test`] with a containerd started with `options`.
fn run_test_with(
    test: &str,
    options: &ContainerdOptions,
    build: impl FnOnce(&str) -> Result<(Vec<TestImage>, Vec<ImageSpec>)>,
    body: impl FnOnce(&str, &mut Env, &Images) -> Result<()>,
) {
    run_test_with_host(test, |_| options.clone(), build, body)
}

/// [`run_test_with`] with options that name the registry host (given to
/// `options`), e.g. a sandbox image pushed there.
fn run_test_with_host(
    test: &str,
    options: impl FnOnce(&str) -> ContainerdOptions,
    build: impl FnOnce(&str) -> Result<(Vec<TestImage>, Vec<ImageSpec>)>,
    body: impl FnOnce(&str, &mut Env, &Images) -> Result<()>,
) {
    if !can_run(test) {
        return;
    }
    let (mut env, images) = or_panic(test, setup(test, options, build));
    let result = body(test, &mut env, &images);
    or_panic(test, result);
    eprintln!("== {test}: passed");
}

fn or_panic<T>(test: &str, result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{test}: {err:#}"),
    }
}

/// (a) An archived image pulled through CRI comes from the archive: the
/// registry serves the manifest and config, never a layer blob, and the
/// image runs with whiteouts, hardlinks and symlinks right.
#[test]
fn cri_pull_of_archived_image_downloads_no_layer() {
    let test = "cri_pull_archived";
    run_test(
        test,
        |host| Ok((vec![sample_spec(host, "archived", "v1")?.into()], vec![])),
        cri_pull_archived,
    );
}

fn cri_pull_archived(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    let mark = env.registry.mark();
    eprintln!(
        "== {test}: CRI PullImage {} (containerd {})",
        image.name,
        env.containerd.version()
    );
    let image_ref = env.cri.pull_image(&image.name)?;
    if env.containerd.version().is_2x() {
        // disable_snapshot_annotations = false: 2.1+ pulls on the client
        // side (cri_pull_through_the_transfer_service covers the default).
        let log = std::fs::read_to_string(env.containerd.log_path())?;
        ensure!(
            log.contains("local image pull"),
            "containerd {} did not say it falls back to the local image pull",
            env.containerd.version()
        );
    }
    ensure!(
        image_ref == image.config_digest,
        "PullImage answered {image_ref}, expected the image id {}",
        image.config_digest
    );
    let downloaded = layer_gets(env, image, mark);
    ensure!(
        downloaded.is_empty(),
        "containerd downloaded layer blobs {downloaded:?} of an archived image \
         (all blob GETs since the pull: {:?})",
        env.registry.blob_gets_since(mark)
    );
    assert_chain_snapshots(env, image)?;
    ensure!(
        env.cri.image_status(&image.name)?.is_some(),
        "CRI ImageStatus does not find {}",
        image.name
    );
    eprintln!("== {test}: running the image");
    run_sample_check(env, &image.name, "a")?;
    assert_xattrs_kept(env)?;
    // Usage reports the real size of a layer taken from the archive.
    let base = &image.chain_ids[0];
    let usage = env.containerd.ctr(&[
        "-n",
        K8S_NS,
        "snapshots",
        "--snapshotter",
        SNAPSHOTTER,
        "usage",
        "-b",
        base,
    ])?;
    let row: Vec<&str> = usage
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let busybox = std::fs::metadata(image::BUSYBOX)?.len();
    let (size, inodes): (u64, u64) = match row.as_slice() {
        [_, size, inodes, ..] => (size.parse()?, inodes.parse()?),
        _ => anyhow::bail!("unexpected ctr snapshots usage output:\n{usage}"),
    };
    ensure!(
        size >= busybox && inodes >= 20,
        "usage of {base}: {size} bytes, {inodes} inodes; expected at least {busybox} bytes (busybox) and 20 inodes"
    );
    env.daemon.check_running()?;
    Ok(())
}

/// (a, 2.x) The same with CRI as a 2.x node gets it from `airgap-snapshotter
/// config --containerd 2` alone (`disable_snapshot_annotations` left at its
/// default): 2.1+ pulls through the transfer service, which must take every
/// layer from the archive too. Not applicable to 1.x (no such mode).
#[test]
fn cri_pull_through_the_transfer_service_downloads_no_layer() {
    let test = "cri_pull_transfer";
    if !can_run(test) {
        return;
    }
    let version = or_panic(test, airgap_integration::containerd::version());
    if !version.is_2x() {
        airgap_snapshotter::testsupport::skip(
            test,
            &format!("not applicable to containerd {version}: CRI has no transfer-service pull before 2.1"),
        );
        return;
    }
    run_test_with(
        test,
        &ContainerdOptions {
            cri_transfer_service: true,
            ..Default::default()
        },
        |host| Ok((vec![sample_spec(host, "archived", "v1")?.into()], vec![])),
        cri_pull_transfer,
    );
}

fn cri_pull_transfer(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    let mark = env.registry.mark();
    eprintln!(
        "== {test}: CRI PullImage {} through the transfer service",
        image.name
    );
    let image_ref = env.cri.pull_image(&image.name)?;
    ensure!(
        image_ref == image.config_digest,
        "PullImage answered {image_ref}, expected the image id {}",
        image.config_digest
    );
    let log = std::fs::read_to_string(env.containerd.log_path())?;
    ensure!(
        !log.contains("local image pull"),
        "containerd fell back to the local image pull with disable_snapshot_annotations at its default"
    );
    let downloaded = layer_gets(env, image, mark);
    ensure!(
        downloaded.is_empty(),
        "the transfer service downloaded layer blobs {downloaded:?} of an archived image"
    );
    ensure!(
        env.daemon.log().contains("committed from archive"),
        "the daemon did not commit a layer from the archive"
    );
    assert_chain_snapshots(env, image)?;
    run_sample_check(env, &image.name, "transfer")?;
    assert_xattrs_kept(env)?;
    env.daemon.check_running()?;
    Ok(())
}

/// The sandbox ("pause") image of [`cri_pod_runs_archived_image`], on the
/// test registry and in the archives.
/// The sandbox image of a pod test: [`pause_image`], from its archive.
fn pause_options(host: &str) -> ContainerdOptions {
    ContainerdOptions {
        sandbox_image: Some(format!("{host}/library/pause:e2e")),
        ..Default::default()
    }
}

/// The archived images of a pod test: a sample image named `name:v1`,
/// then the pause image.
fn sample_with_pause(host: &str, name: &str) -> Result<(Vec<TestImage>, Vec<ImageSpec>)> {
    Ok((
        vec![sample_spec(host, name, "v1")?.into(), pause_image(host)?],
        vec![],
    ))
}

fn pause_image(host: &str) -> Result<TestImage> {
    Ok(TestImage {
        cmd: Some(image::PAUSE_CMD),
        ..TestImage::from(ImageSpec {
            name: format!("{host}/library/pause:e2e"),
            tag: "e2e".to_string(),
            layers: image::pause_layers("pause:e2e")?,
        })
    })
}

/// (a, pod) kubelet runs a pod of an archived image: CRI PullImage, then
/// RunPodSandbox (containerd pulls the sandbox image, archived too),
/// CreateContainer, StartContainer, ..., RemovePodSandbox. The container
/// prints what the layers must hold, no layer of either image is
/// downloaded, and nothing of the pod stays: no sandbox, no container, no
/// shim, no mount.
#[test]
fn cri_pod_runs_archived_image() {
    let test = "cri_pod";
    run_test_with_host(
        test,
        pause_options,
        |host| sample_with_pause(host, "podimage"),
        cri_pod,
    );
}

fn cri_pod(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let (image, pause) = (&images.archived[0], &images.archived[1]);
    let version = env.cri.version()?;
    eprintln!(
        "== {test}: CRI Version: {} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    ensure!(
        version.runtime_name == "containerd" && version.runtime_api_version == "v1",
        "unexpected CRI Version answer {version:?}"
    );
    let mark = env.registry.mark();
    eprintln!("== {test}: CRI PullImage {}", image.name);
    let image_ref = env.cri.pull_image(&image.name)?;
    ensure!(
        image_ref == image.config_digest,
        "PullImage answered {image_ref}, expected the image id {}",
        image.config_digest
    );

    eprintln!("== {test}: running a pod of {}", image.name);
    let run = env
        .cri
        .run_pod_once(&image.name, &["/bin/sh", "-c", SAMPLE_CHECK])?;
    ensure!(
        run.exit_code == 0 && run.stderr.is_empty(),
        "the pod's container exited with {} ({}), stderr:\n{}",
        run.exit_code,
        run.reason,
        run.stderr
    );
    ensure!(
        run.output == SAMPLE_EXPECTED,
        "pod output of {} differs\n--- got:\n{}--- expected:\n{SAMPLE_EXPECTED}",
        image.name,
        run.output
    );
    ensure!(
        run.image_id == image.config_digest,
        "the container ran image id {}, expected {}",
        run.image_id,
        image.config_digest
    );
    for built in [image, pause] {
        let downloaded = layer_gets(env, built, mark);
        ensure!(
            downloaded.is_empty(),
            "layer blobs {downloaded:?} of the archived {} were downloaded",
            built.name
        );
        assert_chain_snapshots(env, built)?;
    }
    // containerd pulled the sandbox image itself, and pins it.
    let pause_status = env.cri.image_status(&pause.name)?.with_context(|| {
        format!(
            "CRI ImageStatus does not find the sandbox image {}",
            pause.name
        )
    })?;
    eprintln!(
        "== {test}: sandbox image {} pinned={}",
        pause_status.id, pause_status.pinned
    );
    ensure!(
        pause_status.id == pause.config_digest,
        "the sandbox image is {}, expected {}",
        pause_status.id,
        pause.config_digest
    );
    // CRI reports the sandbox image pinned from 1.7 on (1.6 leaves the
    // field unset); the pod's image is not pinned.
    let pins = env.containerd.version().major >= 2 || env.containerd.version().minor >= 7;
    ensure!(
        pause_status.pinned == pins,
        "containerd {}: the sandbox image has pinned={}, expected {pins}",
        env.containerd.version(),
        pause_status.pinned
    );
    let image_status = env
        .cri
        .image_status(&image.name)?
        .with_context(|| format!("CRI ImageStatus does not find {}", image.name))?;
    ensure!(!image_status.pinned, "{} is pinned", image.name);
    let listed: Vec<String> = env.cri.list_images()?.into_iter().map(|i| i.id).collect();
    for built in [image, pause] {
        ensure!(
            listed.contains(&built.config_digest),
            "ListImages {listed:?} lacks {} ({})",
            built.config_digest,
            built.name
        );
    }

    // A failing command: exit code and streams come back apart.
    let failed = env.cri.run_pod_once(
        &image.name,
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
    )?;
    ensure!(
        (
            failed.exit_code,
            failed.stdout.as_str(),
            failed.stderr.as_str()
        ) == (3, "out\n", "err\n"),
        "expected exit code 3, stdout \"out\", stderr \"err\"; got {failed:?}"
    );
    // imagePullPolicy: Never with an image containerd lacks.
    let absent = image.name.replace("podimage", "absent");
    match env.cri.run_pod_once(&absent, &["/bin/true"]) {
        Err(err) if err.downcast_ref::<ImageNeverPull>().is_some() => {}
        other => anyhow::bail!(
            "a pod of {absent} (not present) gave {other:?}, expected ErrImageNeverPull"
        ),
    }

    // Nothing of the pods stays.
    let sandboxes = env.cri.list_pod_sandboxes()?;
    ensure!(sandboxes.is_empty(), "pod sandboxes left: {sandboxes:?}");
    let containers = env.cri.list_containers()?;
    ensure!(containers.is_empty(), "containers left: {containers:?}");
    process::wait_until("the pods' shims to exit", Duration::from_secs(15), || {
        Ok(env.containerd.shims().is_empty())
    })
    .with_context(|| format!("shims left: {:?}", env.containerd.shims()))?;
    let mounts = mounts::mounts_under(env.containerd.private_dir());
    ensure!(
        mounts.is_empty(),
        "mounts left under containerd's directory: {mounts:?}"
    );
    env.daemon.check_running()?;
    Ok(())
}

/// (b) An image whose layers are in no archive still pulls, by download.
#[test]
fn cri_pull_of_image_not_archived_downloads_it() {
    let test = "cri_pull_remote";
    run_test(
        test,
        |host| {
            Ok((
                vec![sample_spec(host, "archived", "v1")?.into()],
                vec![sample_spec(host, "remote", "v1")?],
            ))
        },
        cri_pull_remote,
    );
}

fn cri_pull_remote(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.remote_only[0];
    let mark = env.registry.mark();
    eprintln!("== {test}: CRI PullImage {}", image.name);
    env.cri.pull_image(&image.name)?;
    let downloaded: BTreeSet<String> = layer_gets(env, image, mark).into_iter().collect();
    let expected: BTreeSet<String> = image.layer_digests.iter().cloned().collect();
    ensure!(
        downloaded == expected,
        "an image not in the archives must be downloaded: layer GETs {downloaded:?}, expected {expected:?}"
    );
    assert_chain_snapshots(env, image)?;
    eprintln!("== {test}: running the image");
    run_sample_check(env, &image.name, "b")?;
    assert_xattrs_kept(env)?;
    Ok(())
}

/// (a*) Archives and layers in every compression and both layouts: zstd
/// layers in a `.tar.zst` archive, plain tar layers in a `.tar.gz` archive,
/// gzip layers in a plain tar, and `docker save` archives (plain and in a
/// `.tar.zst`; their layers are stored uncompressed). All pulled through
/// CRI from the archives (the registry holds the same image as OCI with
/// gzip layers: the chain IDs are the same), none downloaded.
#[test]
fn cri_pull_from_compressed_archives_downloads_no_layer() {
    run_test(
        "cri_pull_compressed",
        |host| {
            use ArchiveContainer as A;
            use LayerCompression as L;
            let variants = [
                ("zstd-in-zst", L::Zstd, A::Zstd, false),
                ("tar-in-gz", L::None, A::Gzip, false),
                ("gzip-in-tar", L::Gzip, A::Tar, false),
                ("docker-save", L::Gzip, A::Tar, true),
                ("docker-save-in-zst", L::Gzip, A::Zstd, true),
            ];
            let mut images = Vec::new();
            for (name, layers, container, docker_save) in variants {
                images.push(TestImage {
                    spec: sample_spec(host, name, "v1")?,
                    layers,
                    container,
                    docker_save,
                    cmd: None,
                });
            }
            Ok((images, vec![]))
        },
        cri_pull_compressed,
    );
}

fn cri_pull_compressed(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    for (n, image) in images.archived.iter().enumerate() {
        let mark = env.registry.mark();
        eprintln!(
            "== {test}: CRI PullImage {} from {}",
            image.name,
            image.archive.display()
        );
        env.cri.pull_image(&image.name)?;
        let downloaded = layer_gets(env, image, mark);
        ensure!(
            downloaded.is_empty(),
            "layers of {} were downloaded: {downloaded:?}",
            image.name
        );
        assert_chain_snapshots(env, image)?;
        run_sample_check(env, &image.name, &format!("c{n}"))?;
    }
    Ok(())
}

/// (a') An image whose base layer is archived (through another image of
/// the archives) and whose top layer is not: the base comes from the
/// archive, only the top layer is downloaded.
#[test]
fn cri_pull_of_partly_archived_image_downloads_only_the_rest() {
    run_test(
        "cri_pull_partial",
        |host| {
            let mut partial = sample_spec(host, "partial", "v1")?;
            // Same base layer as archived:v1, a top layer of its own.
            partial.layers = image::sample_layers("archived:v1")?;
            partial.layers[1]
                .entries
                .push(Entry::file("data/partial", "only in the registry\n"));
            Ok((
                vec![sample_spec(host, "archived", "v1")?.into()],
                vec![partial],
            ))
        },
        cri_pull_partial,
    );
}

fn cri_pull_partial(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let archived = &images.archived[0];
    let partial = &images.remote_only[0];
    ensure!(
        archived.layer_digests[0] == partial.layer_digests[0]
            && archived.layer_digests[1] != partial.layer_digests[1],
        "the test images should share exactly their base layer"
    );
    let mark = env.registry.mark();
    eprintln!("== {test}: CRI PullImage {}", partial.name);
    env.cri.pull_image(&partial.name)?;
    let downloaded: BTreeSet<String> = layer_gets(env, partial, mark).into_iter().collect();
    let expected: BTreeSet<String> = [partial.layer_digests[1].clone()].into();
    ensure!(
        downloaded == expected,
        "only the top layer {expected:?} should be downloaded, got {downloaded:?}"
    );
    assert_chain_snapshots(env, partial)?;
    run_sample_check(env, &partial.name, "a2")?;
    Ok(())
}

/// (a', 2.3+) A rebased image: not archived, its top layer the same (same
/// diffID) as an archived image's top layer on another base, and that base
/// already on the node (pulled before with another image, as a patched base
/// is). containerd 2.3+ names each layer's diffID and parent chain ID on
/// Prepare, so the top layer comes from the archive and nothing is
/// downloaded; 1.6 to 2.1 name only the chain ID, which no archive holds:
/// the top layer is downloaded, as before. (containerd fetches every layer
/// above the first one it must write, so a base not on the node yet means
/// the top layer's blob is downloaded on every version, and the remote path
/// only spares its apply.)
#[test]
fn cri_pull_of_rebased_image_takes_its_archived_layer_by_diff_id() {
    run_test(
        "cri_pull_rebased",
        |host| {
            let mut rebased = sample_spec(host, "rebased", "v1")?;
            // The top layer of archived:v1 on a base of its own.
            rebased.layers = image::sample_layers("archived:v1")?;
            rebased.layers[0]
                .entries
                .push(Entry::file("data/rebased", "another base\n"));
            // That base alone, pulled first.
            let mut base = sample_spec(host, "newbase", "v1")?;
            base.layers = vec![rebased.layers[0].clone()];
            Ok((
                vec![sample_spec(host, "archived", "v1")?.into()],
                vec![base, rebased],
            ))
        },
        cri_pull_rebased,
    );
}

fn cri_pull_rebased(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let archived = &images.archived[0];
    let (base, rebased) = (&images.remote_only[0], &images.remote_only[1]);
    ensure!(
        archived.layer_digests[0] != rebased.layer_digests[0]
            && base.layer_digests[0] == rebased.layer_digests[0]
            && archived.layer_digests[1] == rebased.layer_digests[1]
            && archived.chain_ids[1] != rebased.chain_ids[1],
        "the test images should share exactly their top layer, on different bases"
    );
    let version = env.containerd.version().clone();
    eprintln!("== {test}: CRI PullImage {} (the new base)", base.name);
    env.cri.pull_image(&base.name)?;
    let mark = env.registry.mark();
    eprintln!(
        "== {test}: CRI PullImage {} (containerd {version})",
        rebased.name
    );
    env.cri.pull_image(&rebased.name)?;
    let downloaded: BTreeSet<String> = layer_gets(env, rebased, mark).into_iter().collect();
    let by_diff_id = env
        .daemon
        .log()
        .contains("layer taken by its diffID from an archived image on another parent");
    if version.at_least(2, 3) {
        ensure!(
            downloaded.is_empty(),
            "containerd {version} sends diff-id: nothing should be downloaded, got {downloaded:?}"
        );
        ensure!(
            by_diff_id,
            "the daemon did not say it took the layer by its diffID"
        );
    } else {
        let top: BTreeSet<String> = [rebased.layer_digests[1].clone()].into();
        ensure!(
            downloaded == top,
            "containerd {version} sends no diff-id: the top layer {top:?} should be downloaded, got {downloaded:?}"
        );
        ensure!(!by_diff_id, "containerd {version} sent a diff-id label?");
    }
    assert_chain_snapshots(env, rebased)?;
    run_sample_check(env, &rebased.name, "rebased")?;
    env.daemon.check_running()?;
    Ok(())
}

/// (a'') Plain `ctr images pull` fetches the layers in the ctr process and
/// calls Prepare with no `snapshot.ref` label (containerd 1.6 and 1.7 by
/// default, 2.x with `--local`): the airgap snapshotter works as an
/// ordinary overlay snapshotter, for an archived image too, and never
/// answers ALREADY_EXISTS without a target (ctr would loop forever).
/// On 2.x, plain `ctr images pull` goes through the transfer service
/// instead, which passes `snapshot.ref` as CRI does: there the layers must
/// come from the archive, none downloaded.
#[test]
fn plain_ctr_pull_works_as_ordinary_snapshotter() {
    run_test(
        "plain_ctr_pull",
        |host| Ok((vec![sample_spec(host, "archived", "v1")?.into()], vec![])),
        plain_ctr_pull,
    );
}

fn plain_ctr_pull(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    let version = env.containerd.version().clone();
    let pull = |env: &mut Env, namespace: &str, local: bool| -> Result<Vec<String>> {
        eprintln!(
            "== {test}: ctr -n {namespace} images pull{} --snapshotter airgap {} (containerd {version})",
            if local { " --local" } else { "" },
            image.name
        );
        let mark = env.registry.mark();
        let mut args = vec!["-n", namespace, "images", "pull", "--plain-http"];
        if local {
            args.push("--local");
        }
        args.extend(["--snapshotter", SNAPSHOTTER, &image.name]);
        env.containerd.ctr(&args)?;
        let keys: BTreeSet<String> = env
            .containerd
            .snapshot_keys(namespace)?
            .into_iter()
            .collect();
        for chain_id in &image.chain_ids {
            ensure!(
                keys.contains(chain_id),
                "no snapshot {chain_id} after ctr pull; the snapshotter has {keys:?}"
            );
        }
        run_sample_check_in(env, namespace, &image.name, namespace)?;
        env.daemon.check_running()?;
        Ok(layer_gets(env, image, mark))
    };
    let all: BTreeSet<String> = image.layer_digests.iter().cloned().collect();
    if version.is_2x() {
        // The transfer service: the remote path, nothing downloaded.
        let downloaded = pull(env, "default", false)?;
        ensure!(
            downloaded.is_empty(),
            "ctr pull on containerd {version} (transfer service) downloaded layers {downloaded:?} of an archived image"
        );
        // `--local`: the plain path, every layer fetched by ctr.
        let downloaded: BTreeSet<String> = pull(env, "local", true)?.into_iter().collect();
        ensure!(
            downloaded == all,
            "ctr pull --local on containerd {version} should fetch every layer itself: got {downloaded:?}, expected {all:?}"
        );
    } else {
        let downloaded: BTreeSet<String> = pull(env, "default", false)?.into_iter().collect();
        ensure!(
            downloaded == all,
            "plain ctr pull on containerd {version} should fetch every layer itself: got {downloaded:?}, expected {all:?}"
        );
    }
    Ok(())
}

/// (a+) An archive dropped into the watched directory while the daemon
/// runs is used without a restart; deleting it afterwards breaks nothing
/// in use.
#[test]
fn archive_added_while_running_is_used() {
    run_test(
        "archive_added",
        |host| Ok((vec![], vec![sample_spec(host, "added", "v1")?])),
        archive_added,
    );
}

fn archive_added(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.remote_only[0];
    let dest = env.daemon.archives_dir().join("added-later.tar");
    eprintln!(
        "== {test}: copying {} into the archives",
        image.archive.display()
    );
    std::fs::copy(&image.archive, &dest)
        .with_context(|| format!("copying into {}", dest.display()))?;
    // The catalog logs each archive it indexed ("archive indexed", once it
    // is in the catalog: the debug line "indexed" comes before that, and a
    // pull started on it can race the catalog); give the watcher its
    // settle delay. Without that line the pull below tells the story.
    let needle = dest.display().to_string();
    let daemon = &env.daemon;
    let seen = process::wait_until(
        "the daemon to index the new archive",
        Duration::from_secs(30),
        || {
            Ok(daemon
                .log()
                .lines()
                .any(|l| l.contains("archive indexed") && l.contains(&needle)))
        },
    );
    if let Err(err) = seen {
        eprintln!("== {test}: {err:#}; pulling anyway");
    }
    let mark = env.registry.mark();
    env.cri.pull_image(&image.name)?;
    let downloaded = layer_gets(env, image, mark);
    ensure!(
        downloaded.is_empty(),
        "an archive added while the daemon runs was not used: downloaded {downloaded:?}"
    );
    run_sample_check(env, &image.name, "added")?;

    // Deleting the archive breaks nothing that is in use: the snapshots
    // were materialized, the image still runs.
    std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
    std::thread::sleep(Duration::from_secs(3));
    env.daemon.check_running()?;
    assert_chain_snapshots(env, image)?;
    run_sample_check(env, &image.name, "added-after-delete")?;
    Ok(())
}

/// (a#) Concurrent pulls (the same image twice, and another image sharing
/// its base layer) all take the layers from the archives, once.
#[test]
fn concurrent_pulls_share_archived_layers() {
    run_test(
        "concurrent",
        |host| {
            let first = sample_spec(host, "first", "v1")?;
            let mut second = sample_spec(host, "second", "v1")?;
            second.layers = image::sample_layers("first:v1")?;
            second.layers[1]
                .entries
                .push(Entry::file("data/second", "second\n"));
            Ok((vec![first.into(), second.into()], vec![]))
        },
        concurrent,
    );
}

/// CRI PullImage of every name at once, one client each (as many kubelets
/// pulling); every pull must succeed.
fn pull_at_once(env: &Env, names: &[String]) -> Result<()> {
    let address = env.containerd.address().to_path_buf();
    let results: Vec<Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let address = address.clone();
                scope.spawn(move || CriClient::connect(&address)?.pull_image(name))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("pull thread panicked")))
            })
            .collect()
    });
    for (name, result) in names.iter().zip(results) {
        result.with_context(|| format!("concurrent pull of {name}"))?;
    }
    Ok(())
}

fn concurrent(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let mark = env.registry.mark();
    let names = [
        images.archived[0].name.clone(),
        images.archived[0].name.clone(),
        images.archived[1].name.clone(),
    ];
    eprintln!("== {test}: pulling {names:?} at once");
    pull_at_once(env, &names)?;
    for (n, image) in images.archived.iter().enumerate() {
        let downloaded = layer_gets(env, image, mark);
        ensure!(
            downloaded.is_empty(),
            "concurrent pulls downloaded layers of {}: {downloaded:?}",
            image.name
        );
        assert_chain_snapshots(env, image)?;
        run_sample_check(env, &image.name, &format!("conc{n}"))?;
    }
    Ok(())
}

/// (c) A daemon restart keeps every snapshot usable.
#[test]
fn daemon_restart_keeps_snapshots_usable() {
    let test = "daemon_restart";
    run_test(
        test,
        |host| {
            Ok((
                vec![sample_spec(host, "archived", "v1")?.into()],
                vec![sample_spec(host, "remote", "v1")?],
            ))
        },
        daemon_restart,
    );
}

fn daemon_restart(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    for image in images.archived.iter().chain(&images.remote_only) {
        eprintln!("== {test}: CRI PullImage {}", image.name);
        env.cri.pull_image(&image.name)?;
        run_sample_check(env, &image.name, "c-before")?;
    }
    eprintln!("== {test}: restarting airgap-snapshotter");
    env.daemon.restart()?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    for image in images.archived.iter().chain(&images.remote_only) {
        assert_chain_snapshots(env, image)?;
        eprintln!("== {test}: running {} after the restart", image.name);
        run_sample_check(env, &image.name, "c-after")?;
    }
    // Pulling again after the restart finds everything in place.
    let mark = env.registry.mark();
    let archived = &images.archived[0];
    env.cri.pull_image(&archived.name)?;
    let downloaded = layer_gets(env, archived, mark);
    ensure!(
        downloaded.is_empty(),
        "pulling again after a restart downloaded {downloaded:?}"
    );
    Ok(())
}

/// (a, EROFS) A docker-save archive (its layers are uncompressed tars in a
/// plain tar): with layer mounts (`layer_mounts = "auto"`, the default, on a
/// kernel that can) every layer is an EROFS mount of its index with the
/// archive as backing file, not an extraction. The image runs right
/// (whiteouts, hard links, symlinks, xattrs), its layers are mounted again
/// by a restart that lost the mounts (as a reboot does), and containerd's
/// garbage collector unmounts them.
#[test]
fn docker_save_layers_are_mounted_from_the_archive() {
    let test = "erofs_docker_save";
    if !kernel_has_erofs_indexes(test) {
        return;
    }
    run_test(
        test,
        |host| {
            Ok((
                vec![TestImage {
                    spec: sample_spec(host, "mounted", "v1")?,
                    layers: LayerCompression::Gzip,
                    container: ArchiveContainer::Tar,
                    docker_save: true,
                    cmd: None,
                }],
                vec![],
            ))
        },
        erofs_docker_save,
    );
}

/// Whether the kernel's EROFS has chunked files (one file per feature in
/// `/sys/fs/erofs/features`); says the test is skipped when not.
fn kernel_has_erofs_indexes(test: &str) -> bool {
    let has = Path::new("/sys/fs/erofs/features/chunked_file").exists();
    if !has {
        eprintln!("skipped {test}: this kernel has no EROFS with chunked files");
    }
    has
}

/// EROFS mount points at or below `root`.
fn erofs_mounts(root: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("erofs "))
        })
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect())
}

fn erofs_docker_save(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    let mark = env.registry.mark();
    eprintln!(
        "== {test}: CRI PullImage {} from {}",
        image.name,
        image.archive.display()
    );
    env.cri.pull_image(&image.name)?;
    let downloaded = layer_gets(env, image, mark);
    ensure!(
        downloaded.is_empty(),
        "layers were downloaded: {downloaded:?}"
    );
    assert_chain_snapshots(env, image)?;
    let root = env.daemon.root().to_path_buf();
    let layers = image.chain_ids.len();
    let mounted = erofs_mounts(&root)?;
    ensure!(
        mounted.len() == layers,
        "{} EROFS mounts under the daemon's root for {layers} layers: {mounted:?}",
        mounted.len()
    );
    run_sample_check(env, &image.name, "e-before")?;
    assert_xattrs_kept(env)?;

    eprintln!("== {test}: restarting airgap-snapshotter without its mounts");
    env.daemon.stop()?;
    for m in erofs_mounts(&root)? {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", m.display()))?;
    }
    env.daemon.restart()?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    let mounted = erofs_mounts(&root)?;
    ensure!(
        mounted.len() == layers,
        "after the restart, {} EROFS mounts for {layers} layers: {mounted:?}",
        mounted.len()
    );
    run_sample_check(env, &image.name, "e-after")?;
    archive_gone_at_reboot(test, env, image, &root)?;

    let refs = env.containerd.image_refs(K8S_NS)?;
    let mut args = vec!["-n", K8S_NS, "images", "rm", "--sync"];
    args.extend(refs.iter().map(String::as_str));
    env.containerd.ctr(&args)?;
    let containerd = &env.containerd;
    process::wait_until(
        "the snapshots to be garbage collected",
        Duration::from_secs(30),
        || Ok(containerd.snapshot_keys(K8S_NS)?.is_empty()),
    )?;
    process::wait_until(
        "the EROFS mounts to be gone",
        Duration::from_secs(30),
        || Ok(erofs_mounts(&root)?.is_empty() && daemon_snapshot_dirs(&root)?.is_empty()),
    )
    .with_context(|| format!("left: {:?}", erofs_mounts(&root)))?;
    env.daemon.check_running()?;
    Ok(())
}

/// The archive moved out of the watched directory and the node rebooted
/// (the daemon stopped, its mounts gone, started again): a new container
/// either has every layer's files (mounted again from a private copy) or
/// fails to start with an error naming a layer; it never starts without
/// them. The archive back under another name: the layers are rebuilt from
/// it and the container runs right.
fn archive_gone_at_reboot(
    test: &str,
    env: &mut Env,
    image: &BuiltImage,
    root: &Path,
) -> Result<()> {
    eprintln!("== {test}: the archive moved away, the node rebooted");
    // The daemon's copy of the archive, in the directory it watches.
    let watched = env.daemon.archives_dir().join(
        image
            .archive
            .file_name()
            .context("archive without a file name")?,
    );
    let away = env
        .daemon
        .archives_dir()
        .with_file_name(format!("{test}-moved-away.tar"));
    std::fs::rename(&watched, &away)
        .with_context(|| format!("moving {} away", watched.display()))?;
    env.daemon.stop()?;
    for m in erofs_mounts(root)? {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", m.display()))?;
    }
    env.daemon.restart()?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    match run_sample_check(env, &image.name, "e-gone") {
        Ok(()) => eprintln!("== {test}: the layers were mounted again without the archive"),
        Err(err) => {
            let err = format!("{err:#}");
            ensure!(
                err.contains("cannot be mounted")
                    // A docker-save archive's layer digest is its diffID.
                    && image
                        .layer_digests
                        .iter()
                        .chain(&image.diff_ids)
                        .any(|d| err.contains(d.as_str())),
                "a container without the archive failed, but not naming a layer: {err}"
            );
            eprintln!("== {test}: refused by name, as expected");
        }
    }

    eprintln!("== {test}: the archive back under another name");
    let renamed = env.daemon.archives_dir().join("renamed-back.tar");
    std::fs::rename(&away, &renamed).with_context(|| format!("moving {} back", away.display()))?;
    let needle = renamed.display().to_string();
    let daemon = &env.daemon;
    process::wait_until(
        "the daemon to index the renamed archive",
        Duration::from_secs(60),
        || {
            Ok(daemon
                .log()
                .lines()
                .any(|l| l.contains("archive indexed") && l.contains(&needle)))
        },
    )?;
    run_sample_check(env, &image.name, "e-renamed")?;
    let layers = image.chain_ids.len();
    let mounted = erofs_mounts(root)?;
    ensure!(
        mounted.len() == layers,
        "after the rebuild, {} EROFS mounts for {layers} layers: {mounted:?}",
        mounted.len()
    );
    Ok(())
}

/// Layers prepared as their archives arrive (`--prepare-layers
/// on-arrival`): a docker-save `.tar` indexed in place and zstd layers in a
/// `.tar.zst` decompressed into the layer store before anyone pulls; the
/// CRI pull then only links and mounts what was prepared (every snapshot's
/// index is the store's, same inode). Deleting the archives keeps the
/// mounted layers readable for new containers (the mounts hold the files
/// open), while a new pull of the images takes its layers from the
/// registry.
#[test]
fn layers_prepared_on_arrival_are_mounted_and_outlive_their_archives() {
    let test = "erofs_on_arrival";
    if !kernel_has_erofs_indexes(test) {
        return;
    }
    run_test(
        test,
        |host| {
            Ok((
                vec![
                    TestImage {
                        spec: sample_spec(host, "arrival-plain", "v1")?,
                        layers: LayerCompression::Gzip,
                        container: ArchiveContainer::Tar,
                        docker_save: true,
                        cmd: None,
                    },
                    TestImage {
                        spec: sample_spec(host, "arrival-zstd", "v1")?,
                        layers: LayerCompression::Zstd,
                        container: ArchiveContainer::Zstd,
                        docker_save: false,
                        cmd: None,
                    },
                ],
                vec![],
            ))
        },
        erofs_on_arrival,
    );
}

/// Inode of each prepared index in the daemon's layer store
/// (`<root>/layers/<digest>/layer.erofs`, the layout of
/// plugin/src/snapshot/layer_store.rs); entries being built are skipped.
fn store_indexes(root: &Path) -> Result<Vec<u64>> {
    use std::os::unix::fs::MetadataExt;
    let dir = root.join("layers");
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        {
            out.push(std::fs::metadata(path.join("layer.erofs"))?.ino());
        }
    }
    Ok(out)
}

fn erofs_on_arrival(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = env.daemon.root().to_path_buf();
    let layers: usize = images.archived.iter().map(|i| i.chain_ids.len()).sum();
    eprintln!("== {test}: restarting airgap-snapshotter with --prepare-layers on-arrival");
    env.daemon
        .restart_with_args(&["--prepare-layers", "on-arrival"])?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    process::wait_until(
        "every layer to be prepared",
        Duration::from_secs(120),
        || Ok(store_indexes(&root)?.len() == layers),
    )
    .with_context(|| format!("prepared: {:?}", store_indexes(&root)))?;
    let prepared = store_indexes(&root)?;

    for (n, image) in images.archived.iter().enumerate() {
        let mark = env.registry.mark();
        eprintln!("== {test}: CRI PullImage {}", image.name);
        pull_after_restart(test, &mut env.cri, &image.name)?;
        let downloaded = layer_gets(env, image, mark);
        ensure!(
            downloaded.is_empty(),
            "layers were downloaded: {downloaded:?}"
        );
        assert_chain_snapshots(env, image)?;
        run_sample_check(env, &image.name, &format!("arrival{n}"))?;
    }
    let mounted = erofs_mounts(&root)?;
    ensure!(
        mounted.len() == layers,
        "{} EROFS mounts for {layers} layers: {mounted:?}",
        mounted.len()
    );
    // Every layer snapshot (the others are containers' and have no index)
    // links an index prepared on arrival.
    let mut linked = 0;
    for dir in daemon_snapshot_dirs(&root)? {
        let Ok(index) = std::fs::metadata(dir.join("layer.erofs")) else {
            continue;
        };
        ensure!(
            prepared.contains(&index.ino()),
            "{} is not an index prepared on arrival",
            dir.display()
        );
        linked += 1;
    }
    ensure!(
        linked == layers,
        "{linked} layer snapshots for {layers} layers"
    );

    eprintln!("== {test}: deleting the archives");
    for image in &images.archived {
        let name = image.archive.file_name().context("archive name")?;
        let archive = env.daemon.archives_dir().join(name);
        std::fs::remove_file(&archive)
            .with_context(|| format!("removing {}", archive.display()))?;
    }
    let daemon = &env.daemon;
    process::wait_until(
        "the daemon to forget the archives",
        Duration::from_secs(30),
        || Ok(daemon.log().matches("archive removed").count() >= images.archived.len()),
    )?;
    for (n, image) in images.archived.iter().enumerate() {
        run_sample_check(env, &image.name, &format!("orphan{n}"))?;
    }

    eprintln!("== {test}: pulling again after garbage collection: from the registry");
    remove_images_and_wait_for_gc(test, env)?;
    let image = &images.archived[0];
    let mark = env.registry.mark();
    env.cri.pull_image(&image.name)?;
    let downloaded = layer_gets(env, image, mark);
    ensure!(
        downloaded.len() == image.chain_ids.len(),
        "after the archive was deleted, {} of {} layers were downloaded",
        downloaded.len(),
        image.chain_ids.len()
    );
    run_sample_check(env, &image.name, "registry")?;
    env.daemon.check_running()?;
    Ok(())
}

/// The snapshot directories the daemon holds (`<root>/snapshots/<id>`,
/// the layout of plugin/src/snapshot).
fn daemon_snapshot_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("snapshots");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        out.push(entry?.path());
    }
    Ok(out)
}

/// (d) Removing the images and letting containerd's garbage collector run
/// removes the snapshots, through Remove and Cleanup.
#[test]
fn image_removal_garbage_collects_snapshots() {
    let test = "gc";
    run_test(
        test,
        |host| {
            Ok((
                vec![sample_spec(host, "archived", "v1")?.into()],
                vec![sample_spec(host, "remote", "v1")?],
            ))
        },
        gc,
    );
}

fn gc(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    for image in images.archived.iter().chain(&images.remote_only) {
        env.cri.pull_image(&image.name)?;
        run_sample_check(env, &image.name, "d")?;
    }
    ensure!(
        !daemon_snapshot_dirs(env.daemon.root())?.is_empty(),
        "the daemon holds no snapshot directories after two pulls"
    );
    let refs = env.containerd.image_refs(K8S_NS)?;
    eprintln!("== {test}: ctr images rm --sync {refs:?}");
    let mut args = vec!["-n", K8S_NS, "images", "rm", "--sync"];
    args.extend(refs.iter().map(String::as_str));
    env.containerd.ctr(&args)?;
    ensure!(
        env.cri.list_images()?.is_empty(),
        "CRI still lists images after removal"
    );
    let containerd = &env.containerd;
    let waited = process::wait_until(
        "the airgap snapshots to be garbage collected",
        Duration::from_secs(30),
        || Ok(containerd.snapshot_keys(K8S_NS)?.is_empty()),
    );
    let keys = containerd.snapshot_keys(K8S_NS)?;
    waited.with_context(|| format!("snapshots left: {keys:?}"))?;
    let root = env.daemon.root().to_path_buf();
    let waited = process::wait_until(
        "the daemon's snapshot directories to be removed",
        Duration::from_secs(30),
        || Ok(daemon_snapshot_dirs(&root)?.is_empty()),
    );
    let left = daemon_snapshot_dirs(&root)?;
    waited.with_context(|| format!("directories left: {left:?}"))?;
    env.daemon.check_running()?;
    Ok(())
}

/// `../` repeated: deep enough to leave any snapshot directory.
const UP: &str = "../../../../../../../../../../../..";

/// Hostile layers, one trick each (an extractor stops at the first bad
/// entry, so every trick gets its own image): each tries to write, link,
/// white out or follow a symlink out of the snapshot directory into
/// `canary`, which holds `victim` and `victim2`.
fn hostile_layers(canary: &Path) -> Vec<(&'static str, Layer)> {
    let c = canary.display().to_string();
    let reg = EntryType::Regular;
    let sym = EntryType::Symlink;
    let raw = |name: &str, kind: EntryType, link: &str, data: &str| {
        Entry::raw(name, kind, link, data.as_bytes().to_vec())
    };
    vec![
        (
            "dotdot",
            vec![raw(&format!("{UP}{c}/escaped-dotdot"), reg, "", "pwned\n")],
        ),
        (
            "absolute",
            vec![raw(&format!("{c}/escaped-absolute"), reg, "", "pwned\n")],
        ),
        (
            "symlink-abs",
            vec![
                raw("evil", sym, &c, ""),
                raw("evil/through-abs-symlink", reg, "", "pwned\n"),
                raw("evil/victim", reg, "", "overwritten\n"),
            ],
        ),
        (
            "symlink-rel",
            vec![
                raw("evil", sym, &format!("{UP}{c}"), ""),
                raw("evil/through-rel-symlink", reg, "", "pwned\n"),
                raw("evil/victim", reg, "", "overwritten\n"),
            ],
        ),
        (
            "symlink-file",
            vec![
                raw("evil", sym, &format!("{c}/victim"), ""),
                raw("evil", reg, "", "overwritten\n"),
            ],
        ),
        (
            "hardlink-abs",
            vec![
                raw("hl", EntryType::Link, &format!("{c}/victim"), ""),
                raw("hl", reg, "", "overwritten\n"),
            ],
        ),
        (
            "hardlink-rel",
            vec![
                raw("hl", EntryType::Link, &format!("{UP}{c}/victim"), ""),
                raw("hl", reg, "", "overwritten\n"),
            ],
        ),
        (
            "whiteout-dotdot",
            vec![raw(&format!("{UP}{c}/.wh.victim2"), reg, "", "")],
        ),
        (
            "whiteout-symlink",
            vec![
                raw("evil", sym, &c, ""),
                raw("evil/.wh.victim2", reg, "", ""),
            ],
        ),
        (
            "opaque-symlink",
            vec![
                raw("evil", sym, &c, ""),
                raw("evil/.wh..wh..opq", reg, "", ""),
            ],
        ),
    ]
    .into_iter()
    .map(|(trick, entries)| (trick, Layer::new(entries)))
    .collect()
}

/// Name, content and link count of every file in `dir`.
fn snapshot_of(dir: &Path) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            content,
            meta.nlink(),
        ));
    }
    out.sort();
    Ok(out)
}

/// (e) Hostile archived layers (path traversal, absolute names, symlink,
/// hardlink and whiteout escapes) leave the host untouched; each pull falls
/// back to the download or fails cleanly, and the daemon keeps serving.
#[test]
fn hostile_archived_layer_leaves_host_untouched() {
    let test = "hostile";
    if !can_run(test) {
        return;
    }
    let canary = or_panic(test, make_canary());
    let canary_path = canary.path().to_path_buf();
    run_test(
        test,
        |host| {
            let mut specs = Vec::new();
            for (trick, layer) in hostile_layers(&canary_path) {
                let mut spec = sample_spec(host, &format!("hostile-{trick}"), "v1")?;
                // A good base shared by all, then the hostile layer.
                spec.layers = vec![image::sample_layers("hostile")?.remove(0), layer];
                specs.push(spec.into());
            }
            specs.push(sample_spec(host, "archived", "v1")?.into());
            Ok((specs, vec![]))
        },
        |test, env, images| hostile(test, env, images, canary.path()),
    );
}

/// A directory with two files the hostile layers aim at.
fn make_canary() -> Result<TestDir> {
    let canary = TestDir::new("canary")?;
    std::fs::write(canary.path().join("victim"), "victim\n")?;
    std::fs::write(canary.path().join("victim2"), "victim2\n")?;
    Ok(canary)
}

fn hostile(test: &str, env: &mut Env, images: &Images, canary: &Path) -> Result<()> {
    let before = snapshot_of(canary)?;
    let (good, hostile) = images.archived.split_last().context("no images")?;
    for image in hostile {
        match env.cri.pull_image(&image.name) {
            Ok(_) => eprintln!("== {test}: {} pulled (sanitized or downloaded)", image.name),
            Err(err) => eprintln!("== {test}: {} failed to pull: {err:#}", image.name),
        }
        let after = snapshot_of(canary)?;
        ensure!(
            before == after,
            "{} changed the host: {before:?} became {after:?}",
            image.name
        );
        for name in [
            "escaped-dotdot",
            "escaped-absolute",
            "through-abs-symlink",
            "through-rel-symlink",
        ] {
            for dir in [Path::new("/"), Path::new("/tmp"), env.work.path()] {
                ensure!(
                    !dir.join(name).exists(),
                    "{} wrote {}",
                    image.name,
                    dir.join(name).display()
                );
            }
        }
        env.daemon.check_running()?;
    }
    // Failed unpacks left no active snapshot behind.
    let listing = env.containerd.ctr(&[
        "-n",
        K8S_NS,
        "snapshots",
        "--snapshotter",
        SNAPSHOTTER,
        "ls",
    ])?;
    let active: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().last() == Some("Active"))
        .collect();
    ensure!(
        active.is_empty(),
        "active snapshots left after the hostile pulls: {active:?}"
    );
    // The daemon still serves: a good archived image pulls from the archive
    // and runs.
    let mark = env.registry.mark();
    env.cri.pull_image(&good.name)?;
    let downloaded = layer_gets(env, good, mark);
    ensure!(
        downloaded.is_empty(),
        "after the hostile pulls, an archived image was downloaded: {downloaded:?}"
    );
    run_sample_check(env, &good.name, "e")?;
    Ok(())
}

/// Restarts the daemon pointed at the test's containerd, so that it
/// registers the archived images there (`--import-mode MODE`).
fn start_importing(env: &mut Env, mode: &str) -> Result<()> {
    let address = env.containerd.address().display().to_string();
    env.daemon
        .restart_with_args(&["--containerd-address", &address, "--import-mode", mode])?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(30))
}

/// Waits until CRI lists `image` (by tag) with its repo digest, as
/// kubelet would see it. containerd's CRI picks each image record up from
/// its own event, so the tag may show a moment before the digest.
fn wait_listed(env: &mut Env, image: &str) -> Result<airgap_integration::cri::v1::Image> {
    let mut found = None;
    process::wait_until(
        &format!("CRI to list {image} with its repo digest"),
        Duration::from_secs(60),
        || {
            found = env
                .cri
                .list_images()?
                .into_iter()
                .find(|i| i.repo_tags.iter().any(|t| t == image) && !i.repo_digests.is_empty());
            Ok(found.is_some())
        },
    )?;
    Ok(found.expect("found"))
}

/// (k) An archive in the watched directory is registered in containerd
/// with no pull at all: CRI lists and finds the image with the archive's
/// digests, pinned; kubelet's calls for a pod with `imagePullPolicy: Never`
/// run it (the pause image registered from an archive too), its layers
/// filled from the archive on first use, and the registry sees no request;
/// containerd's garbage collection and a restart of both daemons keep it;
/// the archive deleted, it is unregistered.
#[test]
fn imported_image_runs_without_a_pull() {
    let test = "import_lazy";
    run_test_with_host(
        test,
        pause_options,
        |host| sample_with_pause(host, "imported"),
        import_lazy,
    );
}

fn import_lazy(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let (image, pause) = (&images.archived[0], &images.archived[1]);
    let mark = env.registry.mark();
    eprintln!("== {test}: daemon registering into containerd");
    start_importing(env, "lazy")?;
    let listed = wait_listed(env, &image.name)?;
    wait_listed(env, &pause.name)?;
    ensure!(
        listed.id == image.config_digest,
        "CRI image id {} is not the config digest {}",
        listed.id,
        image.config_digest
    );
    let repo = image.name.rsplit_once(':').context("tagged name")?.0;
    let repo_digest = format!("{repo}@{}", image.manifest_digest);
    ensure!(
        listed.repo_digests.contains(&repo_digest),
        "RepoDigests {:?} lack {repo_digest}",
        listed.repo_digests
    );
    // CRI reports pins from 1.7 on; the records carry the label everywhere.
    let runtime = env.cri.version()?.runtime_version;
    ensure!(
        listed.pinned || runtime.starts_with("1.6"),
        "containerd {runtime} does not report {} pinned",
        image.name
    );
    let records = env.containerd.ctr(&["-n", K8S_NS, "images", "ls"])?;
    ensure!(
        records.contains("io.cri-containerd.pinned=pinned"),
        "image records are not pinned:\n{records}"
    );
    // Registered layers are committed but not extracted yet.
    assert_chain_snapshots(env, image)?;
    ensure!(
        !env.daemon.log().contains("imported layer extracted"),
        "lazy registration extracted layers"
    );

    eprintln!("== {test}: kubelet runs a pod, pull policy Never");
    let run = env
        .cri
        .run_pod_once(&image.name, &["/bin/sh", "-c", SAMPLE_CHECK])?;
    ensure!(
        run.exit_code == 0 && run.output == SAMPLE_EXPECTED,
        "pod of {} exited {} ({}), output:\n{}--- expected:\n{SAMPLE_EXPECTED}",
        image.name,
        run.exit_code,
        run.reason,
        run.output
    );
    let fills = env.daemon.log().matches("imported layer extracted").count();
    let layers = image.chain_ids.len() + pause.chain_ids.len();
    ensure!(fills == layers, "{fills} layer fills for {layers} layers");

    eprintln!("== {test}: containerd's garbage collection keeps it");
    let other = format!("{repo}:garbage");
    env.containerd
        .ctr(&["-n", K8S_NS, "images", "tag", &image.name, &other])?;
    env.containerd
        .ctr(&["-n", K8S_NS, "images", "rm", "--sync", &other])?;
    run_sample_check(env, &image.name, "import-after-gc")?;

    eprintln!("== {test}: both daemons restarted");
    env.daemon.restart()?;
    env.containerd.restart()?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(30))?;
    env.cri = CriClient::connect(env.containerd.address())?;
    let again = wait_listed(env, &image.name)?;
    ensure!(again.id == image.config_digest, "image changed on restart");
    run_sample_check(env, &image.name, "import-after-restart")?;
    let asked = env.registry.access_lines();
    ensure!(
        asked.len() == mark,
        "the registry was asked: {:?}",
        &asked[mark..]
    );

    eprintln!("== {test}: archive deleted");
    std::fs::remove_file(
        env.daemon
            .archives_dir()
            .join(image.archive.file_name().context("archive name")?),
    )?;
    process::wait_until(
        "the image to be unregistered",
        Duration::from_secs(60),
        || {
            Ok(!env
                .cri
                .list_images()?
                .iter()
                .any(|i| i.repo_tags.contains(&image.name)))
        },
    )?;
    ensure!(
        env.cri.image_status(&pause.name)?.is_some(),
        "the other archive's image went too"
    );
    Ok(())
}

/// (l) `airgap-snapshotter import` registers once and exits, next to a
/// daemon that does not register by itself; `eager` fills every layer in
/// the background before any container; a second run changes nothing.
#[test]
fn import_command_registers_once() {
    let test = "import_command";
    run_test(
        test,
        |host| {
            Ok((
                vec![sample_spec(host, "oneshot", "v1")?.into()],
                vec![sample_spec(host, "listed", "v1")?],
            ))
        },
        import_command,
    );
}

fn import_command(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    // k3s's habit: a list beside the archives; what no archive holds is
    // pulled through containerd (here from the test registry).
    let listed = &images.remote_only[0];
    std::fs::write(
        env.daemon.archives_dir().join("images.txt"),
        format!("# k3s-style list\n{}\n{}\n", image.name, listed.name),
    )?;
    let (archives, root, address) = (
        env.daemon.archives_dir().to_path_buf(),
        env.daemon.root().to_path_buf(),
        env.containerd.address().to_path_buf(),
    );
    let import = |mode: &str| -> Result<String> {
        process::run(
            std::process::Command::new(airgap_integration::daemon::binary()?)
                .arg("import")
                .arg("--archives")
                .arg(&archives)
                .arg("--root")
                .arg(&root)
                .arg("--containerd-address")
                .arg(&address)
                .args(["--import-mode", mode]),
            Duration::from_secs(120),
        )
    };
    eprintln!("== {test}: import --import-mode eager");
    let out = import("eager")?;
    ensure!(
        out.contains(&format!("registered  {}", image.name))
            && out.contains("1 registered, 0 already registered")
            && out.contains(&format!("pulled      {}", listed.name)),
        "unexpected import output:\n{out}"
    );
    wait_listed(env, &image.name)?;
    wait_listed(env, &listed.name)?;
    process::wait_until(
        "the eager fill of every layer",
        Duration::from_secs(60),
        || {
            let fills = env.daemon.log().matches("imported layer extracted").count();
            Ok(fills == image.chain_ids.len())
        },
    )?;
    eprintln!("== {test}: a second import changes nothing");
    let out = import("eager")?;
    ensure!(
        out.contains("0 registered, 1 already registered, 0 removed, 0 failed"),
        "second import output:\n{out}"
    );
    run_sample_check(env, &image.name, "import-command")?;

    eprintln!("== {test}: the archive replaced by a newer build of the same tag");
    let mut newer = sample_spec(&env.registry.host(), "oneshot", "v1")?;
    newer.layers = image::sample_layers("oneshot:v1 rebuilt")?;
    let replaced = archives.join(image.archive.file_name().context("archive name")?);
    let staged = env.work.path().join("newer.tar");
    let rebuilt = image::write_oci_archive(&newer, &staged)?;
    ensure!(
        rebuilt.config_digest != image.config_digest,
        "the rebuild is the same image"
    );
    std::fs::rename(&staged, &replaced)?;
    let out = import("lazy")?;
    ensure!(
        out.contains(&format!("registered  {}", image.name)),
        "the newer archive was not registered:\n{out}"
    );
    let listed = wait_listed(env, &image.name)?;
    ensure!(
        listed.id == rebuilt.config_digest,
        "{} still points at {}, not the newer {}",
        image.name,
        listed.id,
        rebuilt.config_digest
    );
    Ok(())
}

/// The image records named in `names` as `ctr images ls` prints them (the
/// fields of one line each: type, target digest, size, platforms, labels),
/// by name.
fn record_lines(env: &Env, names: &[&str]) -> Result<std::collections::BTreeMap<String, String>> {
    let out = env.containerd.ctr(&["-n", K8S_NS, "images", "ls"])?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            // Columns padded to the longest name: compare the fields.
            let fields = line.split_whitespace().collect::<Vec<_>>().join(" ");
            names.contains(&name).then(|| (name.to_string(), fields))
        })
        .collect())
}

/// Waits until `ready` holds of the records named in `names`.
fn wait_records(
    env: &Env,
    what: &str,
    names: &[&str],
    mut ready: impl FnMut(&std::collections::BTreeMap<String, String>) -> bool,
) -> Result<()> {
    let mut last = Default::default();
    process::wait_until(what, Duration::from_secs(60), || {
        last = record_lines(env, names)?;
        Ok(ready(&last))
    })
    .with_context(|| format!("records: {last:#?}"))
}

/// Waits until the daemon's catalog has dropped the deleted `archive` (it
/// may wait for the file to stay gone a while first).
fn wait_archive_removed(env: &Env, archive: &Path) -> Result<()> {
    let removed = format!("archive={}", archive.display());
    process::wait_until(
        "the catalog to drop the archive",
        Duration::from_secs(600),
        || {
            Ok(env
                .daemon
                .log()
                .lines()
                .any(|l| l.contains("archive removed") && l.contains(&removed)))
        },
    )
}

/// (m) The importer only ever changes or deletes image records it created.
/// kubelet pulls a tag from the registry (in no archive); then an archive
/// holding that very image under that name arrives and is deleted, and an
/// archive holding another build under that name arrives and is deleted.
/// kubelet's records (tag, repo digest, image id) stay exactly as they were
/// throughout (same target, no label of the importer's), the importer's own
/// records of the other build come and go, and the pulled image still runs.
#[test]
fn a_pulled_image_is_untouched_by_archives_of_its_name() {
    let test = "import_foreign";
    run_test(
        test,
        |host| Ok((Vec::new(), vec![sample_spec(host, "pulled", "v1")?])),
        import_foreign,
    );
}

fn import_foreign(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let pulled = &images.remote_only[0];
    start_importing(env, "lazy")?;
    eprintln!("== {test}: kubelet pulls {} from the registry", pulled.name);
    env.cri.pull_image(&pulled.name)?;
    let repo = pulled.name.rsplit_once(':').context("tagged name")?.0;
    let repo_digest = format!("{repo}@{}", pulled.manifest_digest);
    let kubelets = [
        pulled.name.as_str(),
        repo_digest.as_str(),
        pulled.config_digest.as_str(),
    ];
    let before = record_lines(env, &kubelets)?;
    ensure!(
        before.len() == 3,
        "kubelet's pull left the records {before:#?}, not {kubelets:?}"
    );
    let untouched = |env: &Env, when: &str| -> Result<()> {
        let now = record_lines(env, &kubelets)?;
        ensure!(
            now == before,
            "{when}: kubelet's records changed\n--- before: {before:#?}\n--- now: {now:#?}"
        );
        ensure!(
            !now.values().any(|l| l.contains("io.airgap-snapshotter")),
            "{when}: kubelet's records carry the importer's labels: {now:#?}"
        );
        Ok(())
    };
    let archives = env.daemon.archives_dir().to_path_buf();

    eprintln!("== {test}: an archive of the same image under the same name arrives");
    let same = archives.join("same.tar");
    std::fs::copy(&pulled.archive, &same)?;
    let left_alone = format!("image={}", pulled.name);
    // The pass that saw the archive either said it left the tag alone, or
    // changed kubelet's records (which `untouched` then reports).
    process::wait_until(
        "the importer to leave kubelet's tag alone",
        Duration::from_secs(60),
        || {
            let logged = env
                .daemon
                .log()
                .lines()
                .any(|l| l.contains("left alone") && l.contains(&left_alone));
            Ok(logged || record_lines(env, &kubelets)? != before)
        },
    )?;
    untouched(env, "archive of the same digest arrived")?;
    ensure!(
        !env.daemon.log().contains("image registered"),
        "the importer registered an image it holds no record of"
    );

    eprintln!("== {test}: that archive deleted");
    std::fs::remove_file(&same)?;
    wait_archive_removed(env, &same)?;

    eprintln!("== {test}: an archive of another build under the same name arrives");
    let mut other = sample_spec(&env.registry.host(), "pulled", "v1")?;
    other.layers = image::sample_layers("pulled:v1 rebuilt")?;
    let staged = env.work.path().join("rebuilt.tar");
    let rebuilt = image::write_oci_archive(&other, &staged)?;
    ensure!(
        rebuilt.manifest_digest != pulled.manifest_digest,
        "the rebuild is the same image"
    );
    let rebuilt_digest = format!("{repo}@{}", rebuilt.manifest_digest);
    let ours = [rebuilt_digest.as_str(), rebuilt.config_digest.as_str()];
    let other_archive = archives.join("rebuilt.tar");
    std::fs::rename(&staged, &other_archive)?;
    // Its repo digest and image id are the importer's to create; the tag
    // is kubelet's. The pass that creates them runs after the one that saw
    // the first archive go.
    wait_records(env, "the rebuild's own records", &ours, |r| {
        r.len() == 2
            && r.values()
                .all(|l| l.contains("io.airgap-snapshotter.created="))
    })?;
    untouched(env, "archive of another digest arrived")?;

    eprintln!("== {test}: that archive deleted");
    std::fs::remove_file(&other_archive)?;
    wait_archive_removed(env, &other_archive)?;
    wait_records(
        env,
        "the importer to delete the records it made",
        &ours,
        |r| r.is_empty(),
    )?;
    untouched(env, "both archives gone")?;
    run_sample_check(env, &pulled.name, "import-foreign")?;
    Ok(())
}

/// SIGTERM while the daemon indexes a large archive for the first time
/// (minutes of work) and a mirror request waits for that first scan: the
/// daemon exits cleanly within seconds, not when systemd's stop timeout
/// kills it. A hang check: the bound is generous.
#[test]
fn sigterm_during_a_slow_first_index_exits_promptly() {
    let test = "sigterm_index";
    if !can_run(test) {
        return;
    }
    or_panic(test, sigterm_index(test));
}

fn sigterm_index(test: &str) -> Result<()> {
    let _serial = serial()?;
    let work = TestDir::new(test)?;
    let slow = work.path().join("slow.tar.zst");
    airgap_snapshotter::testsupport::write_slow_to_index_archive(&slow, 8);
    let port = airgap_integration::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start_with_args(&[&slow], &["--mirror-listen", &listen])?;
    // What containerd resolving a tag does meanwhile: it waits for the scan.
    let lookup = std::thread::spawn(move || -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.write_all(
            b"GET /v2/library/busybox/manifests/latest?ns=docker.io HTTP/1.1\r\n\
              Host: mirror\r\nConnection: close\r\n\r\n",
        )?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        Ok(out)
    });
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !daemon.log().contains("archives scanned"),
        "the first scan is over already: the archive is not slow enough"
    );
    ensure!(
        !lookup.is_finished(),
        "the mirror request did not wait for the first scan"
    );
    eprintln!("== {test}: SIGTERM during the first scan");
    let started = std::time::Instant::now();
    // Fails unless the daemon exits cleanly within process::STOP_TIMEOUT.
    daemon.stop()?;
    let took = started.elapsed();
    eprintln!("== {test}: exited {took:?} after SIGTERM");
    ensure!(
        took < Duration::from_secs(8),
        "the daemon took {took:?} to exit"
    );
    let answer = lookup
        .join()
        .map_err(|_| anyhow::anyhow!("lookup thread panicked"))??;
    eprintln!(
        "== {test}: the waiting request got {:?}",
        answer.lines().next()
    );
    Ok(())
}

/// Every image name the CRI lists removed, then containerd's garbage
/// collector left to remove every snapshot: the daemon's snapshot
/// directories must all go (nothing orphaned).
fn remove_images_and_wait_for_gc(test: &str, env: &mut Env) -> Result<()> {
    let refs = env.containerd.image_refs(K8S_NS)?;
    eprintln!("== {test}: ctr images rm --sync {refs:?}");
    let mut args = vec!["-n", K8S_NS, "images", "rm", "--sync"];
    args.extend(refs.iter().map(String::as_str));
    env.containerd.ctr(&args)?;
    let containerd = &env.containerd;
    let waited = process::wait_until(
        "the airgap snapshots to be garbage collected",
        Duration::from_secs(60),
        || Ok(containerd.snapshot_keys(K8S_NS)?.is_empty()),
    );
    let keys = containerd.snapshot_keys(K8S_NS)?;
    waited.with_context(|| format!("snapshots left: {keys:?}"))?;
    let root = env.daemon.root().to_path_buf();
    let waited = process::wait_until(
        "the daemon's snapshot directories to be removed",
        Duration::from_secs(60),
        || Ok(daemon_snapshot_dirs(&root)?.is_empty()),
    );
    let left = daemon_snapshot_dirs(&root)?;
    waited.with_context(|| format!("directories left: {left:?}"))
}

/// Entries of a daemon directory (`staging`, `trash`).
fn entries_of(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL in the middle of a big layer's extraction from the archive,
/// then a restart: the next pull succeeds and runs, and nothing is
/// orphaned (no staged layer, nothing in the trash, and once the image is
/// removed, containerd's GC leaves no snapshot directory).
#[test]
fn sigkill_mid_extraction_then_restart_pulls_cleanly() {
    run_test(
        "sigkill_extract",
        |host| {
            let mut spec = sample_spec(host, "big", "v1")?;
            // A top layer of many files: its extraction takes a while.
            let mut entries = vec![Entry::dir("many")];
            for i in 0..20_000 {
                entries.push(Entry::file(&format!("many/f{i:05}"), format!("{i}\n")));
            }
            spec.layers.push(Layer::new(entries));
            Ok((vec![spec.into()], vec![]))
        },
        sigkill_mid_extraction,
    );
}

fn sigkill_mid_extraction(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    // Extraction, the path that writes a file per entry (a layer store
    // entry killed half-built is `layer_store`'s unit tests' case).
    env.daemon
        .restart_with_args(&["--layer-mounts", "extract"])?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    let root = env.daemon.root().to_path_buf();
    let staging = root.join("staging");
    let address = env.containerd.address().to_path_buf();
    let name = image.name.clone();
    eprintln!("== {test}: CRI PullImage {name}, killed mid-extraction");
    let pull = std::thread::spawn(move || CriClient::connect(&address)?.pull_image(&name));
    // Files of the big layer appearing in staging: extraction under way.
    let partial = |staging: &Path| {
        entries_of(staging)
            .iter()
            .any(|d| entries_of(&staging.join(d).join("fs/many")).len() > 10)
    };
    process::wait_until(
        "the big layer's extraction to start",
        Duration::from_secs(120),
        || Ok(partial(&staging)),
    )?;
    env.daemon.kill_and_restart()?;
    match pull.join() {
        Ok(Ok(_)) => eprintln!("== {test}: the interrupted pull still succeeded (downloaded)"),
        Ok(Err(err)) => eprintln!("== {test}: the interrupted pull failed: {err:#}"),
        Err(_) => anyhow::bail!("pull thread panicked"),
    }
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    ensure!(
        entries_of(&staging).is_empty(),
        "staging after the restart: {:?}",
        entries_of(&staging)
    );
    eprintln!("== {test}: pulling again");
    pull_after_restart(test, &mut env.cri, &image.name)?;
    assert_chain_snapshots(env, image)?;
    run_sample_check(env, &image.name, "sigkill")?;
    env.daemon.check_running()?;
    for dir in ["staging", "trash"] {
        let left = entries_of(&root.join(dir));
        ensure!(left.is_empty(), "{dir} holds {left:?} after the pull");
    }
    remove_images_and_wait_for_gc(test, env)
}

/// CRI PullImage of `name` right after the daemon restarted: containerd's
/// gRPC client to the snapshotter may still be backing off from the
/// refused dials of the restart (Unavailable); kubelet retries a failed
/// pull, so does this, for a while.
fn pull_after_restart(test: &str, cri: &mut CriClient, name: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match cri.pull_image(name) {
            Ok(_) => return Ok(()),
            Err(err)
                if format!("{err:#}").contains("unavailable")
                    && std::time::Instant::now() < deadline =>
            {
                eprintln!("== {test}: retrying the pull: {err:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(err) => return Err(err),
        }
    }
}

/// 20 CRI pulls at once of 4 images sharing their two lower layers: all
/// succeed, no layer is downloaded, and each distinct layer is staged
/// from the archive exactly once, mounted or extracted (the daemon logs
/// each).
#[test]
fn twenty_concurrent_pulls_extract_each_layer_once() {
    run_test(
        "twenty_pulls",
        |host| {
            let shared = image::sample_layers("shared:v1")?;
            let mut specs = Vec::new();
            for n in 0..4 {
                let mut spec = sample_spec(host, &format!("shared{n}"), "v1")?;
                spec.layers = shared.clone();
                spec.layers.push(Layer::new(vec![
                    Entry::dir("data"),
                    Entry::file(&format!("data/own{n}"), format!("image {n}\n")),
                ]));
                specs.push(spec.into());
            }
            Ok((specs, vec![]))
        },
        twenty_pulls,
    );
}

fn twenty_pulls(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let mark = env.registry.mark();
    let names: Vec<String> = (0..20)
        .map(|i| images.archived[i % images.archived.len()].name.clone())
        .collect();
    eprintln!("== {test}: 20 CRI pulls at once");
    pull_at_once(env, &names)?;
    let log = env.daemon.log();
    let mut chain_ids = BTreeSet::new();
    for image in &images.archived {
        let downloaded = layer_gets(env, image, mark);
        ensure!(
            downloaded.is_empty(),
            "downloaded layers of {}: {downloaded:?}",
            image.name
        );
        assert_chain_snapshots(env, image)?;
        chain_ids.extend(image.chain_ids.iter().cloned());
    }
    ensure!(chain_ids.len() == 6, "{chain_ids:?}");
    for chain_id in &chain_ids {
        let staged = log
            .lines()
            .filter(|l| {
                (l.contains("layer extracted from archive")
                    || l.contains("layer mounted from archive"))
                    && l.contains(chain_id.as_str())
            })
            .count();
        ensure!(staged == 1, "layer {chain_id} staged {staged} times");
    }
    run_sample_check(env, &images.archived[0].name, "twenty")?;
    Ok(())
}

/// (issue 19.1) A container runs on the layers of a docker-save `.tar`
/// (mounted over private copies, `layer_backing = "private"`, the
/// default); the archive is then rewritten in place, as `cp new.tar
/// old.tar` and the k3s upgrade do: first at the same size (one file's
/// bytes changed), then with another archive of another size. After
/// each, with the page cache dropped, `ctr task exec ... cat` in the
/// running container still gives the original bytes; the daemon logs the
/// rewrite at error level, counts it (`airgap_archive_rewrites_total`)
/// and `doctor` reports it.
#[test]
fn archive_rewritten_in_place_under_a_running_container() {
    let test = "archive_rewritten";
    if !kernel_has_erofs_indexes(test) {
        return;
    }
    run_test(
        test,
        |host| {
            Ok((
                vec![TestImage {
                    spec: sample_spec(host, "rewritten", "v1")?,
                    layers: LayerCompression::Gzip,
                    container: ArchiveContainer::Tar,
                    docker_save: true,
                    cmd: None,
                }],
                vec![sample_spec(host, "rewritten-other", "v1")?],
            ))
        },
        archive_rewritten,
    );
}

fn archive_rewritten(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let image = &images.archived[0];
    let root = env.daemon.root().to_path_buf();
    let metrics = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.to_string()
    };
    env.daemon
        .restart_with_args(&["--metrics-listen", &metrics])?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    eprintln!("== {test}: CRI PullImage {}", image.name);
    pull_after_restart(test, &mut env.cri, &image.name)?;
    let layers = image.chain_ids.len();
    let mounted = erofs_mounts(&root)?;
    ensure!(
        mounted.len() == layers,
        "{} EROFS mounts for {layers} layers: {mounted:?}",
        mounted.len()
    );
    for m in &mounted {
        let copy = m.parent().context("mount point")?.join("layer.tar");
        ensure!(copy.exists(), "{} has no private copy", copy.display());
    }
    let id = container_id("rewritten");
    env.containerd.ctr(&[
        "-n",
        K8S_NS,
        "run",
        "-d",
        "--null-io",
        "--snapshotter",
        SNAPSHOTTER,
        &image.name,
        &id,
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; sleep 2147483647 & wait",
    ])?;
    let mut execs = 0;
    let mut cat = |what: &str| -> Result<String> {
        std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")?;
        execs += 1;
        let exec_id = format!("cat{execs}");
        env.containerd.ctr(&[
            "-n",
            K8S_NS,
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            &id,
            "cat",
            what,
        ])
    };
    let original = cat("/data/file")?;
    ensure!(original == "hello airgap\n", "before: {original:?}");

    let name = image.archive.file_name().context("archive name")?;
    let archive = env.daemon.archives_dir().join(name);
    let ino = std::fs::metadata(&archive)?.ino();
    let rewrites = |n: usize| {
        let daemon = &env.daemon;
        process::wait_until(
            "the daemon to log the rewrite",
            Duration::from_secs(60),
            || Ok(daemon.log().matches("archive rewritten in place").count() >= n),
        )
    };

    eprintln!(
        "== {test}: rewriting {} in place, same size",
        archive.display()
    );
    let mut bytes = std::fs::read(&archive)?;
    let (from, to) = (b"hello airgap\n", b"HELLO AIRGAP\n");
    let mut changed = 0;
    for i in 0..bytes.len().saturating_sub(from.len()) {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            changed += 1;
        }
    }
    ensure!(changed > 0, "the file's bytes are not in the archive");
    let f = std::fs::OpenOptions::new().write(true).open(&archive)?;
    f.write_all_at(&bytes, 0)?;
    f.sync_all()?;
    drop(f);
    rewrites(1)?;
    let after = cat("/data/file")?;
    ensure!(after == original, "after a same-size rewrite: {after:?}");

    eprintln!("== {test}: copying another archive over it (another size)");
    let other = &images.remote_only[0].archive;
    ensure!(
        std::fs::metadata(other)?.len() != bytes.len() as u64,
        "same size"
    );
    std::fs::copy(other, &archive)?;
    ensure!(
        std::fs::metadata(&archive)?.ino() == ino,
        "not rewritten in place"
    );
    rewrites(2)?;
    let after = cat("/data/file")?;
    ensure!(
        after == original,
        "after another archive was copied over: {after:?}"
    );
    let marker = cat("/data/marker")?;
    ensure!(marker == "rewritten:v1\n", "marker: {marker:?}");

    // Counted, and reported by doctor (which reads the daemon's root).
    let scraped = http_get(&metrics, "/metrics")?;
    let count: f64 = scraped
        .lines()
        .find_map(|l| l.strip_prefix("airgap_archive_rewrites_total "))
        .context("no airgap_archive_rewrites_total")?
        .trim()
        .parse()?;
    ensure!(count >= 2.0, "airgap_archive_rewrites_total {count}");
    let out = process::run_unchecked(
        std::process::Command::new(airgap_integration::daemon::binary()?)
            .arg("doctor")
            .arg("--json")
            .arg("--root")
            .arg(&root)
            .arg("--archives")
            .arg(env.daemon.archives_dir())
            .arg("--socket")
            .arg(env.daemon.socket())
            .arg("--containerd-config")
            .arg(env.containerd.config_path())
            .arg("--containerd-address")
            .arg(env.containerd.address())
            .arg("--ctr")
            .arg(airgap_integration::containerd::binary("ctr"))
            .args(["--mirror-listen", "off", "--metrics-listen", "off"]),
        Duration::from_secs(60),
    )?;
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
    let check = json["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "archive rewrites"))
        .with_context(|| format!("no archive rewrites check: {json}"))?;
    ensure!(
        check["status"] == "warn"
            && check["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&*archive.to_string_lossy())),
        "doctor: {check}"
    );
    env.containerd
        .ctr(&["-n", K8S_NS, "task", "kill", "-s", "SIGKILL", &id])?;
    env.daemon.check_running()?;
    Ok(())
}

/// `GET path` over HTTP/1.0 from `addr`; the body.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    Ok(body.to_string())
}

/// Observability of a running daemon (docs/operations.md, Metrics): with registration
/// on, `/readyz` turns 200 once containerd answers the importer; a CRI pull
/// of an archived image through the real containerd shows in the Snapshots
/// API's metrics (Prepare calls, and the `AlreadyExists` the remote path
/// answers for every archived layer, read from containerd's own gRPC
/// client's traffic); `/healthz` and `airgap_build_info` answer.
#[test]
fn metrics_health_and_readiness_of_a_running_daemon() {
    let test = "observability";
    run_test(
        test,
        |host| Ok((vec![sample_spec(host, "observed", "v1")?.into()], vec![])),
        observability,
    );
}

fn observability(test: &str, env: &mut Env, images: &Images) -> Result<()> {
    let image = &images.archived[0];
    let metrics = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.to_string()
    };
    let address = env.containerd.address().display().to_string();
    env.daemon.restart_with_args(&[
        "--metrics-listen",
        &metrics,
        "--containerd-address",
        &address,
        "--import-mode",
        "lazy",
    ])?;
    env.containerd
        .wait_snapshotter_reachable(Duration::from_secs(60))?;
    ensure!(http_get(&metrics, "/healthz")? == "ok\n", "/healthz");
    eprintln!("== {test}: waiting for /readyz");
    process::wait_until("/readyz to answer 200", Duration::from_secs(60), || {
        Ok(http_get(&metrics, "/readyz").is_ok())
    })?;
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let prepares = "airgap_grpc_requests_total{method=\"Prepare\"}";
    let exists = "airgap_grpc_errors_total{method=\"Prepare\",code=\"AlreadyExists\"}";
    let before = http_get(&metrics, "/metrics")?;
    eprintln!("== {test}: CRI PullImage {}", image.name);
    pull_after_restart(test, &mut env.cri, &image.name)?;
    run_sample_check(env, &image.name, "o")?;
    let after = http_get(&metrics, "/metrics")?;
    ensure!(
        value(&after, prepares) > value(&before, prepares),
        "no Prepare counted:\n{after}"
    );
    // Registration (lazy) or the pull: every archived layer is answered
    // AlreadyExists by the remote path, a gRPC error as containerd sees it.
    ensure!(
        value(&after, exists) >= image.chain_ids.len() as f64,
        "{} layers, {exists} {}:\n{after}",
        image.chain_ids.len(),
        value(&after, exists)
    );
    ensure!(
        value(&after, "airgap_ready") == 1.0,
        "airgap_ready:\n{after}"
    );
    ensure!(
        value(&after, "airgap_containerd_reachable") == 1.0,
        "airgap_containerd_reachable:\n{after}"
    );
    ensure!(
        value(&after, "airgap_import_passes_total{result=\"ok\"}") >= 1.0,
        "no registration pass counted:\n{after}"
    );
    ensure!(
        after
            .lines()
            .any(|l| l.starts_with("airgap_build_info{") && l.ends_with(" 1")),
        "no airgap_build_info:\n{after}"
    );
    env.daemon.check_running()?;
    Ok(())
}
