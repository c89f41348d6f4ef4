//! `airgap-snapshotter doctor` end to end, one node for every case: the
//! containerd under test (`AIRGAP_CONTAINERD_DIR`, or the system's 1.6)
//! started from its own `containerd config default` wired by `config
//! --merge`, the daemon with a mirror, a real `docker-registry` behind
//! htpasswd as its `[[upstream]]`, archives built by the project's fixture
//! builder (one of them arm64-only, or amd64-only on an arm64 machine).
//!
//! The correct node first (exit 0, no check failing), then one mistake at
//! a time, each a failed check by name, with its fix, and exit status 1:
//! plugin missing (the one case that starts a second containerd: doctor
//! must ask containerd whether it loaded the plugin), wrong socket, CRI
//! snapshotter left at overlayfs, annotations off (1.x: a warning, exit 1
//! with `--strict`), `unpack_config`
//! without overlayfs (2.x), a two-directory `config_path`, a registry
//! directory without the mirror, the upstream with a wrong password, an
//! unreadable (truncated) archive. A mistake that lives in a file is made
//! in a copy of that file, against the same running containerd and daemon.
//! Last, image lists in every format doctor reads (k3s `.txt`, `k0s
//! airgap list-images` output, a Kubekey manifest, the project's `[group]`
//! lists): present, wrong-platform, upstream and missing.
//!
//! Root only (skipped with a message otherwise), serialized with the other
//! end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use toml_edit::{DocumentMut, Item};

use airgap_integration::containerd::{self, Version};
use airgap_integration::image::{self, Entry, ImageSpec, Layer};
use airgap_integration::{
    daemon, free_port, process, run_as_root, serial, Daemon, PrivateContainerd, Registry, TestDir,
};

const USER: &str = "doctor";
const PASSWORD: &str = "not-a-real-secret-d0c7";

/// The platform that is not this machine's, for the foreign archive.
fn foreign_platform() -> (&'static str, Option<&'static str>, &'static str) {
    if std::env::consts::ARCH == "aarch64" {
        ("amd64", None, "linux/amd64")
    } else {
        ("arm64", Some("v8"), "linux/arm64")
    }
}

/// One doctor run: its exit code and `--json` output.
struct Outcome {
    code: Option<i32>,
    json: Value,
}

impl Outcome {
    fn failing(&self) -> Vec<&Value> {
        self.json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "fail")
            .collect()
    }

    fn failing_names(&self) -> Vec<String> {
        self.failing()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn show(&self) -> String {
        self.failing()
            .iter()
            .map(|c| format!("{}: {} (fix: {})", c["name"], c["detail"], c["fix"]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Exit status 1, and exactly the failed checks `names`; the first
    /// one's detail and fix contain `detail` and `fix`.
    fn expect(&self, names: &[&str], detail: &str, fix: &str) -> Result<()> {
        ensure!(
            self.code == Some(1),
            "exit status {:?}, expected 1; failing:\n{}",
            self.code,
            self.show()
        );
        let mut got = self.failing_names();
        got.sort();
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        ensure!(
            got == want,
            "failed checks {got:?}, expected {want:?}:\n{}",
            self.show()
        );
        let first = self
            .failing()
            .into_iter()
            .find(|c| c["name"] == names[0])
            .context("no such check")?
            .clone();
        let (d, f) = (
            first["detail"].as_str().unwrap_or(""),
            first["fix"].as_str().unwrap_or(""),
        );
        ensure!(
            d.contains(detail) && f.contains(fix),
            "{}: detail {d:?} should name {detail:?}, fix {f:?} should name {fix:?}",
            names[0]
        );
        Ok(())
    }

    /// `(ref, status)` of every listed image.
    fn images(&self) -> Vec<(String, String)> {
        self.json["images"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["ref"].as_str().unwrap_or("").to_string(),
                    i["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// What every doctor run of this node shares.
struct Node {
    version: Version,
    containerd: PrivateContainerd,
    daemon: Daemon,
    /// The merged config text and the directory its private paths are in.
    config_text: String,
    containerd_dir: PathBuf,
    hosts: PathBuf,
    mirror: String,
    daemon_config: PathBuf,
    work: PathBuf,
}

impl Node {
    /// `doctor --json` with this node's flags; `config`, `address` and
    /// `daemon_config` replace the node's own when given.
    fn doctor(
        &self,
        config: Option<&Path>,
        address: Option<&Path>,
        daemon_config: Option<&Path>,
        extra: &[&str],
    ) -> Result<Outcome> {
        let mut cmd = Command::new(daemon::binary()?);
        cmd.arg("doctor")
            .arg("--json")
            .arg("--containerd-config")
            .arg(config.unwrap_or(self.containerd.config_path()))
            .arg("--containerd-address")
            .arg(address.unwrap_or(self.containerd.address()))
            .arg("--ctr")
            .arg(containerd::binary("ctr"))
            .arg("--hosts-dir")
            .arg(&self.hosts)
            .arg("--config")
            .arg(daemon_config.unwrap_or(&self.daemon_config))
            .arg("--root")
            .arg(self.work.join("doctor-root"))
            .arg("--archives")
            .arg(self.daemon.archives_dir())
            .args(["--mirror-listen", self.mirror.as_str()])
            .args(extra);
        if !extra.contains(&"--socket") {
            cmd.arg("--socket").arg(self.daemon.socket());
        }
        let out = process::run_unchecked(&mut cmd, Duration::from_secs(60))?;
        let json: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
        Ok(Outcome {
            code: out.status.code(),
            json,
        })
    }

    /// A copy of the merged containerd config with `edit` applied, written
    /// as `<case>.toml` in the work directory.
    fn config_with(&self, case: &str, edit: impl FnOnce(&mut DocumentMut)) -> Result<PathBuf> {
        let mut doc: DocumentMut = self.config_text.parse()?;
        edit(&mut doc);
        let path = self.work.join(format!("{case}.toml"));
        std::fs::write(&path, doc.to_string())?;
        Ok(path)
    }

    /// CRI's table holding `snapshotter` and the one holding `registry`.
    fn cri_tables(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        if self.version.is_2x() {
            (
                vec!["plugins", "io.containerd.cri.v1.images"],
                vec!["plugins", "io.containerd.cri.v1.images", "registry"],
            )
        } else {
            (
                vec!["plugins", "io.containerd.grpc.v1.cri", "containerd"],
                vec!["plugins", "io.containerd.grpc.v1.cri", "registry"],
            )
        }
    }
}

/// The item at `path` (tables from the root), which must exist.
fn item_at<'d>(doc: &'d mut DocumentMut, path: &[&str]) -> &'d mut Item {
    let mut item = doc.as_item_mut();
    for k in path {
        item = item
            .get_mut(k)
            .unwrap_or_else(|| panic!("no {k} in {path:?}"));
    }
    item
}

/// `plugins."io.containerd.cri.v1.images"`, as doctor names tables.
fn header(path: &[&str]) -> String {
    path.iter()
        .map(|k| {
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                k.to_string()
            } else {
                format!("\"{k}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn doctor_names_each_mistake_with_its_fix() {
    let test = "doctor";
    run_as_root(test, doctor);
}

fn doctor(test: &str) -> Result<()> {
    let _serial = serial()?;
    let version = containerd::version()?;
    let registry = Registry::start_with_auth(USER, PASSWORD)?;
    let host = registry.host();
    let work = TestDir::new(test)?;

    // The archives: an image for this machine, one only for the other
    // platform; the registry has a third.
    let present = image::sample_spec(&host, "present", "v1")?;
    let present_file = work.path().join("present.tar");
    let built = image::write_oci_archive(&present, &present_file)?;
    let (arch, variant, foreign) = foreign_platform();
    let other = ImageSpec {
        name: format!("{host}/library/other-platform:v1"),
        tag: "v1".into(),
        layers: vec![Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/platform", format!("{foreign}\n")),
        ])],
    };
    let other_file = work.path().join("other-platform.tar");
    let (other_index, _) =
        image::write_foreign_platform_archive(&other, &other_file, arch, variant)?;
    let remote = image::sample_spec(&host, "remote", "v1")?;
    let remote_file = work.path().join("remote.tar");
    image::write_oci_archive(&remote, &remote_file)?;
    registry.push_oci_archive(&remote_file, "v1", "library/remote:v1")?;

    let password = work.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n"))?;
    let upstream_config = |password: &Path| {
        format!(
            "[[upstream]]\nregistry = \"{host}\"\nendpoint = \"http://{host}\"\n\
             username = \"{USER}\"\npassword_file = \"{}\"\n",
            password.display()
        )
    };
    let daemon_config = work.path().join("daemon.toml");
    std::fs::write(&daemon_config, upstream_config(&password))?;
    let mirror = format!("127.0.0.1:{}", free_port()?);
    let daemon = Daemon::start_with_args(
        &[&present_file, &other_file],
        &[
            "--mirror-listen",
            &mirror,
            "--config",
            &daemon_config.to_string_lossy(),
        ],
    )?;

    // containerd's own default config, wired by `config --merge` alone.
    let dir = PrivateContainerd::dir()?;
    let containerd_dir = dir.path().to_path_buf();
    let config = dir.path().join("config.toml");
    let text = containerd::private_paths(&containerd::default_config()?, &version, dir.path())?;
    std::fs::write(&config, text)?;
    let hosts = work.path().join("certs.d");
    process::run(
        Command::new(daemon::binary()?)
            .arg("config")
            .arg("--merge")
            .arg(&config)
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--mirror", &mirror, "--upstream", &format!("http://{host}")])
            .arg("--write")
            .arg(&hosts),
        Duration::from_secs(30),
    )?;
    let config_text = std::fs::read_to_string(&config)?;
    eprintln!("== {test}: containerd {version}, wired by config --merge");
    let containerd = PrivateContainerd::start_with_config(dir, config)?;
    let node = Node {
        version: version.clone(),
        containerd,
        daemon,
        config_text,
        containerd_dir,
        hosts: hosts.clone(),
        mirror: mirror.clone(),
        daemon_config: daemon_config.clone(),
        work: work.path().to_path_buf(),
    };

    let mut failures: Vec<String> = Vec::new();
    let mut passed = 0;
    let mut case = |name: &str, run: &mut dyn FnMut() -> Result<()>| {
        eprintln!("== {test}: {name}");
        match run() {
            Ok(()) => passed += 1,
            Err(e) => {
                eprintln!("   FAILED: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    };

    case("a node wired right: exit 0", &mut || {
        let o = node.doctor(None, None, None, &[])?;
        ensure!(
            o.code == Some(0) && o.failing().is_empty(),
            "exit {:?}:\n{}",
            o.code,
            o.show()
        );
        let names: Vec<&str> = o.json["checks"]
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
            "archives",
        ] {
            ensure!(names.contains(&want), "no check {want:?}: {names:?}");
        }
        Ok(())
    });

    case(
        "plugin missing (a containerd started without it)",
        &mut || {
            let dir = PrivateContainerd::dir()?;
            let own = node.containerd_dir.to_string_lossy().into_owned();
            let text = node
                .config_text
                .replace(&own, &dir.path().to_string_lossy());
            let mut doc: DocumentMut = text.parse()?;
            item_at(&mut doc, &["proxy_plugins"])
                .as_table_like_mut()
                .context("proxy_plugins")?
                .remove("airgap")
                .context("no [proxy_plugins.airgap] in the merged config")?;
            let config = dir.path().join("config.toml");
            std::fs::write(&config, doc.to_string())?;
            let other = PrivateContainerd::start_with_config(dir, config.clone())?;
            let o = node.doctor(Some(&config), Some(other.address()), None, &[])?;
            o.expect(
                &["[proxy_plugins.airgap]", "containerd loaded airgap"],
                "no [proxy_plugins.airgap]",
                "config --merge",
            )?;
            let loaded = o
                .failing()
                .into_iter()
                .find(|c| c["name"] == "containerd loaded airgap")
                .cloned()
                .unwrap_or_default();
            ensure!(
                loaded["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no snapshotter plugin airgap"),
                "{loaded}"
            );
            Ok(())
        },
    );

    case("wrong socket in the proxy plugin", &mut || {
        let wrong = node.work.join("elsewhere.sock");
        let file = node.config_with("wrong-socket", |doc| {
            *item_at(doc, &["proxy_plugins", "airgap", "address"]) =
                toml_edit::value(wrong.to_string_lossy().as_ref());
        })?;
        let o = node.doctor(Some(&file), None, None, &[])?;
        o.expect(
            &["proxy_plugins.airgap.address"],
            &wrong.to_string_lossy(),
            &node.daemon.socket().to_string_lossy(),
        )
    });

    case("daemon not on the socket doctor is given", &mut || {
        let wrong = node.work.join("not-the-daemon.sock");
        let o = node.doctor(None, None, None, &["--socket", &wrong.to_string_lossy()])?;
        // The config names the daemon's real socket: that mismatch too.
        o.expect(
            &["daemon socket", "proxy_plugins.airgap.address"],
            &wrong.to_string_lossy(),
            "airgap-snapshotter serve",
        )
    });

    let (images_table, registry_table) = node.cri_tables();
    case("CRI snapshotter left at overlayfs", &mut || {
        let file = node.config_with("cri-overlayfs", |doc| {
            let mut p = images_table.clone();
            p.push("snapshotter");
            *item_at(doc, &p) = toml_edit::value("overlayfs");
        })?;
        let o = node.doctor(Some(&file), None, None, &[])?;
        o.expect(
            &[&format!("{}.snapshotter", header(&images_table))],
            "\"overlayfs\"",
            "snapshotter = \"airgap\"",
        )
    });

    case("annotations off (containerd 1.x)", &mut || {
        if node.version.is_2x() {
            eprintln!(
                "   does not apply to containerd {}: 2.x CRI passes snapshot.ref either way",
                node.version
            );
            return Ok(());
        }
        let file = node.config_with("annotations-off", |doc| {
            let mut p = images_table.clone();
            p.push("disable_snapshot_annotations");
            *item_at(doc, &p) = toml_edit::value(true);
        })?;
        // A warning, not a failure: the layers still come from the archive
        // (k3s.rs pulls with annotations off on 1.x). Exit 1 with --strict.
        let name = format!("{}.disable_snapshot_annotations", header(&images_table));
        let o = node.doctor(Some(&file), None, None, &[])?;
        let warned: Vec<&Value> = o.json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "warn" && c["name"] == name.as_str())
            .collect();
        ensure!(
            o.code == Some(0)
                && o.failing().is_empty()
                && warned.len() == 1
                && warned[0]["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("is true")
                && warned[0]["fix"]
                    .as_str()
                    .unwrap_or("")
                    .contains("disable_snapshot_annotations = false"),
            "exit {:?}, warned {warned:?}, failing:\n{}",
            o.code,
            o.show()
        );
        let o = node.doctor(Some(&file), None, None, &["--strict"])?;
        ensure!(o.code == Some(1), "--strict: exit {:?}", o.code);
        Ok(())
    });

    case(
        "unpack_config without overlayfs (containerd 2.x)",
        &mut || {
            if !node.version.is_2x() {
                eprintln!(
                "   does not apply to containerd {}: 1.x is wired without unpack_config (its ctr pull does not unpack through the transfer service)",
                node.version
            );
                return Ok(());
            }
            let file = node.config_with("unpack-no-overlayfs", |doc| {
                let list = item_at(
                    doc,
                    &[
                        "plugins",
                        "io.containerd.transfer.v1.local",
                        "unpack_config",
                    ],
                )
                .as_array_of_tables_mut()
                .expect("unpack_config is an array of tables");
                list.retain(|t| t.get("snapshotter").and_then(Item::as_str) != Some("overlayfs"));
            })?;
            let o = node.doctor(Some(&file), None, None, &[])?;
            o.expect(&["transfer unpack_config"], "overlayfs", "config --merge")
        },
    );

    case("two-directory config_path", &mut || {
        let two = format!("{}:/etc/docker/certs.d", node.hosts.display());
        let file = node.config_with("two-dirs", |doc| {
            let mut p = registry_table.clone();
            p.push("config_path");
            *item_at(doc, &p) = toml_edit::value(two.as_str());
        })?;
        let o = node.doctor(Some(&file), None, None, &[])?;
        if !node.version.is_2x() {
            // 1.x's CRI reads each directory in turn: fine.
            let check = o.json["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "registry config_path")
                .context("no registry config_path check")?;
            ensure!(
                o.failing().is_empty() && check["status"] == "ok",
                "containerd {}: {check}\n{}",
                node.version,
                o.show()
            );
            return Ok(());
        }
        // 2.x CRI through the transfer service: containerd#12636.
        o.expect(
            &["registry config_path"],
            "12636",
            &format!("config_path = \"{}\"", node.hosts.display()),
        )?;
        let fix = o.failing()[0]["fix"].as_str().unwrap_or("").to_string();
        ensure!(fix.contains("use_local_image_pull = true"), "fix: {fix}");
        Ok(())
    });

    case("a registry directory without the mirror", &mut || {
        let dir = node.hosts.join(&host);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = \"http://{host}\"\n"),
        )?;
        let o = node.doctor(None, None, None, &[]);
        std::fs::remove_dir_all(&dir)?;
        o?.expect(
            &[&format!("hosts.toml {host}")],
            "",
            &format!("--registry {host}"),
        )
    });

    case("upstream with a wrong password", &mut || {
        let wrong = node.work.join("wrong-password");
        std::fs::write(&wrong, "not-the-password\n")?;
        let config = node.work.join("daemon-wrong-password.toml");
        std::fs::write(&config, upstream_config(&wrong))?;
        let o = node.doctor(None, None, Some(&config), &[])?;
        o.expect(
            &[&format!("upstream {host}")],
            "credentials",
            "password_file",
        )
    });

    case("an unreadable (truncated) archive", &mut || {
        // A compressed archive cut short, as an interrupted copy leaves it.
        let dir = node.work.join("more-archives");
        std::fs::create_dir_all(&dir)?;
        let gz = image::compress_archive(&present_file, image::ArchiveContainer::Gzip)?;
        let bytes = std::fs::read(&gz)?;
        let cut = dir.join("cut-short.tar.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
        let o = node.doctor(None, None, None, &["--archives", &dir.to_string_lossy()]);
        std::fs::remove_dir_all(&dir)?;
        o?.expect(
            &[&format!("archive {}", cut.display())],
            "unusable",
            &format!("verify {}", cut.display()),
        )
    });

    // Image lists, in every format doctor reads, naming the same four
    // references: archived here, archived for another platform only, only
    // in the registry, nowhere.
    let refs = [
        (present.name.clone(), "present"),
        (other.name.clone(), "wrong-platform"),
        (remote.name.clone(), "upstream"),
        (format!("{host}/library/absent:v9"), "missing"),
    ];
    let lists = [
        (
            "k3s-images.txt",
            format!(
                "{}\n{}\n{}\n{}\n",
                refs[0].0, refs[1].0, refs[2].0, refs[3].0
            ),
        ),
        (
            // `k0s airgap list-images` prints one reference a line.
            "k0s-list-images.out",
            refs.iter().map(|(r, _)| format!("{r}\n")).collect(),
        ),
        (
            "kubekey-manifest.yaml",
            format!(
                "apiVersion: kubekey.kubesphere.io/v1alpha2\nkind: Manifest\nmetadata:\n  name: sample\n\
                 spec:\n  arches:\n  - amd64\n  kubernetesDistributions:\n  - type: kubernetes\n    version: v1.30.4\n\
                 \x20 images:\n  - {}\n  - {}\n  - \"{}\"\n  - {}  # not pushed anywhere\n\
                 \x20 registry:\n    auths: {{}}\n",
                refs[0].0, refs[1].0, refs[2].0, refs[3].0
            ),
        ),
        (
            "project-groups.txt",
            format!(
                "# the images every node needs\n{}\n[core]\n{}\n[addons]\n{}\n{}\n",
                refs[0].0, refs[1].0, refs[2].0, refs[3].0
            ),
        ),
    ];
    for (file, text) in &lists {
        case(&format!("image list {file}"), &mut || {
            let path = node.work.join(file);
            std::fs::write(&path, text)?;
            let o = node.doctor(
                None,
                None,
                None,
                &["--images-from", &path.to_string_lossy()],
            )?;
            let want: Vec<(String, String)> = refs
                .iter()
                .map(|(r, s)| (r.clone(), s.to_string()))
                .collect();
            ensure!(o.images() == want, "statuses {:?}", o.images());
            ensure!(
                o.code == Some(1) && o.failing().is_empty(),
                "exit {:?} (expected 1 for the missing and wrong-platform images alone):\n{}",
                o.code,
                o.show()
            );
            ensure!(
                o.json["images"][0]["digest"] == built.manifest_digest.as_str(),
                "the archived image: {}",
                o.json["images"][0]
            );
            let wrong = &o.json["images"][1];
            ensure!(
                wrong["platforms"].as_array().is_some_and(
                    |p| p.len() == 1 && p[0].as_str().is_some_and(|p| p.starts_with(foreign))
                ) && wrong["digest"] == other_index.as_str()
                    && wrong["archive"]
                        .as_str()
                        .is_some_and(|a| a.ends_with("other-platform.tar")),
                "the other platform's image: {wrong}"
            );
            let up = &o.json["images"][2];
            ensure!(
                up["digest"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("sha256:")),
                "the upstream image has no digest: {up}"
            );
            Ok(())
        });
    }

    case(
        "[group] selection, and the other node's platform",
        &mut || {
            let path = node.work.join("project-groups.txt");
            // Only the lines before any section and [addons]: without the
            // other platform's image, one is still missing.
            let o = node.doctor(
                None,
                None,
                None,
                &[
                    "--images-from",
                    &path.to_string_lossy(),
                    "--group",
                    "addons",
                ],
            )?;
            let statuses: Vec<String> = o.images().into_iter().map(|(_, s)| s).collect();
            ensure!(
                statuses == ["present", "upstream", "missing"],
                "--group addons: {statuses:?}"
            );
            // The core group on a node of the other platform: the foreign image
            // is present there, this machine's is not.
            let o = node.doctor(
                None,
                None,
                None,
                &[
                    "--images-from",
                    &path.to_string_lossy(),
                    "--group",
                    "core",
                    "--platform",
                    foreign,
                ],
            )?;
            let statuses: Vec<String> = o.images().into_iter().map(|(_, s)| s).collect();
            ensure!(
                statuses == ["wrong-platform", "present"],
                "--group core --platform {foreign}: {statuses:?}"
            );
            // Only what this node can use: exit 0.
            let ok_list = node.work.join("ready.txt");
            std::fs::write(&ok_list, format!("{}\n{}\n", refs[0].0, refs[2].0))?;
            let o = node.doctor(
                None,
                None,
                None,
                &["--images-from", &ok_list.to_string_lossy()],
            )?;
            ensure!(
                o.code == Some(0),
                "present + upstream only: exit {:?} {:?}",
                o.code,
                o.images()
            );
            Ok(())
        },
    );

    eprintln!(
        "== {test}: {passed} cases passed, {} failed (containerd {version})",
        failures.len()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
