//! Live probes: the daemon's socket, the mirror, containerd (through
//! `ctr`: its version and its introspection service's plugin list), the
//! kernel's overlayfs and the free space under the root. The parsers of
//! `ctr` output are separate so they are tested without a containerd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Check, DoctorError};
use crate::setup::SNAPSHOTTER;

/// The daemon answers on its snapshotter socket.
pub fn daemon_socket(socket: &Path) -> Check {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Check::ok(
            "daemon socket",
            format!("{} accepts connections", socket.display()),
        ),
        Err(e) => Check::fail(
            "daemon socket",
            format!("{}: {e}", socket.display()),
            format!(
                "start the daemon (`systemctl start airgap-snapshotter`, or `airgap-snapshotter serve --socket {}`)",
                socket.display()
            ),
        ),
    }
}

/// The mirror answers `GET /v2/` with 200.
pub fn mirror(addr: SocketAddr) -> Check {
    let status = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    })();
    match status {
        Ok(line) if line.split_whitespace().nth(1) == Some("200") => {
            Check::ok("mirror", format!("http://{addr}/v2/ answers 200"))
        }
        Ok(line) => Check::fail(
            "mirror",
            format!("http://{addr}/v2/ answers {line:?}"),
            "check that the daemon, not another service, listens there (mirror_listen)",
        ),
        Err(e) => Check::fail(
            "mirror",
            format!("http://{addr}/v2/: {e}"),
            "start the daemon with its mirror on (mirror_listen), or fix hosts.toml and the daemon's address to agree",
        ),
    }
}

/// The server version in `ctr version` output.
pub fn parse_ctr_version(out: &str) -> Option<String> {
    let server = out.split("Server:").nth(1)?;
    server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

/// The status (`ok`, `error`, `skip`) of a plugin in `ctr plugins ls`
/// output (TYPE ID PLATFORMS STATUS).
pub fn parse_plugin_status(out: &str, plugin_type: &str, id: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == plugin_type && f[1] == id).then(|| f[f.len() - 1].to_string())
    })
}

fn ctr(ctr: &Path, address: &Path, args: &[&str]) -> Result<String, DoctorError> {
    let out = Command::new(ctr)
        .arg("--address")
        .arg(address)
        .args(["--timeout", "10s"])
        .args(args)
        .output()
        .map_err(|source| DoctorError::RunCtr {
            path: ctr.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(DoctorError::CtrFailed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// containerd answers (its version), and its introspection service lists
/// the airgap snapshotter as loaded.
pub fn containerd(ctr_bin: &Path, address: &Path) -> Vec<Check> {
    let a = address.display();
    if !address.exists() {
        // ctr would wait out its dial timeout.
        return vec![Check::fail(
            "containerd",
            format!("{a} does not exist: containerd is not running there"),
            format!("start containerd (`systemctl start containerd`), or point --containerd-address at its socket (not {a})"),
        )];
    }
    let version = match ctr(ctr_bin, address, &["version"]) {
        Ok(out) => parse_ctr_version(&out),
        Err(e) => {
            return vec![Check::fail(
                "containerd",
                format!("{a}: {e}"),
                format!("start containerd (`systemctl start containerd`), or point --containerd-address at its socket (not {a})"),
            )]
        }
    };
    let mut out = vec![Check::ok(
        "containerd",
        format!(
            "{a} answers, version {}",
            version.as_deref().unwrap_or("unknown")
        ),
    )];
    let name = "containerd loaded airgap";
    out.push(match ctr(ctr_bin, address, &["plugins", "ls"]) {
        Err(e) => Check::warn(name, format!("ctr plugins ls: {e}"), "run `ctr plugins ls` by hand"),
        Ok(list) => match parse_plugin_status(&list, "io.containerd.snapshotter.v1", SNAPSHOTTER) {
            Some(s) if s == "ok" => Check::ok(name, "the snapshotter plugin airgap is loaded (ok)"),
            Some(s) => Check::fail(
                name,
                format!("containerd lists the snapshotter plugin airgap as {s}"),
                "see `ctr plugins ls -d id==airgap` and containerd's log; restart containerd after the daemon is up",
            ),
            None => Check::fail(
                name,
                "containerd has no snapshotter plugin airgap: the running containerd was started without the proxy plugin",
                "wire the config (`airgap-snapshotter config --merge /etc/containerd/config.toml`) and restart containerd",
            ),
        },
    });
    out
}

/// The kernel has overlayfs (the snapshots are overlay mounts).
pub fn overlayfs() -> Check {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Check::ok("overlayfs", "the kernel has overlayfs")
    } else {
        Check::warn(
            "overlayfs",
            "overlay is not in /proc/filesystems (it may be a module not loaded yet)",
            "modprobe overlay",
        )
    }
}

/// Whether archived layers will be mounted (EROFS) or extracted, as far as
/// the kernel's EROFS features say without mounting anything (the daemon
/// probes with a real mount at start): `features` is the directory of
/// feature files (`/sys/fs/erofs/features`).
pub fn layer_mounts(mode: crate::config::LayerMode, features: &Path) -> Check {
    use crate::config::LayerMode;
    const NAME: &str = "layer mounts";
    if mode == LayerMode::Extract {
        return Check::ok(
            NAME,
            "layer_mounts = \"extract\": archived layers are extracted",
        );
    }
    // Chunk-indexed files and a device table are what tar indexes need;
    // file-backed mounts (Linux 6.12) have no feature file of their own.
    let missing: Vec<&str> = ["chunked_file", "device_table"]
        .into_iter()
        .filter(|f| !features.join(f).exists())
        .collect();
    if missing.is_empty() {
        return Check::ok(
            NAME,
            "the kernel's EROFS has chunked files and device tables: archived layers are mounted, not extracted (file-backed mounts need Linux 6.12+; the daemon's log says if its probe failed)",
        );
    }
    let detail = if features.exists() {
        format!("the kernel's EROFS lacks {}", missing.join(", "))
    } else {
        format!(
            "{} does not exist: no EROFS in this kernel (or the module is not loaded)",
            features.display()
        )
    };
    match mode {
        LayerMode::Erofs => Check::fail(
            NAME,
            format!("layer_mounts = \"erofs\", but {detail}: the daemon will not start"),
            "`modprobe erofs` on Linux 6.12+, or set layer_mounts = \"auto\"",
        ),
        _ => Check::warn(
            NAME,
            format!("{detail}: archived layers are extracted (slower pulls, more disk)"),
            "`modprobe erofs` on Linux 6.12+ to mount layers instead",
        ),
    }
}

/// Free space under the root against the budgets of the layer cache and
/// the layer store (their sum, `budget`).
pub fn free_space(root: &Path, budget: u64) -> Check {
    // The root may not exist yet: look at its closest existing ancestor.
    let mut dir = root;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let gib = |n: u64| format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64);
            let detail = format!(
                "{} free under {}, cache and layer store budgets {}",
                gib(free),
                dir.display(),
                gib(budget)
            );
            if free >= budget {
                Check::ok("free space", detail)
            } else {
                Check::warn(
                    "free space",
                    detail,
                    "free space there, or lower cache_bytes and layer_store_bytes to what the disk holds",
                )
            }
        }
        Err(e) => Check::warn(
            "free space",
            format!("statvfs {}: {e}", dir.display()),
            "check the root directory",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn layer_mounts_from_the_kernel_features() {
        use crate::config::LayerMode;
        let dir = tempfile::tempdir().unwrap();
        let features = dir.path().join("features");
        let status = |mode| layer_mounts(mode, &features).status;
        // No EROFS at all.
        assert_eq!(status(LayerMode::Auto), Status::Warn);
        assert_eq!(status(LayerMode::Erofs), Status::Fail);
        assert_eq!(status(LayerMode::Extract), Status::Ok);
        std::fs::create_dir(&features).unwrap();
        std::fs::write(features.join("chunked_file"), "").unwrap();
        let check = layer_mounts(LayerMode::Auto, &features);
        assert_eq!(check.status, Status::Warn);
        assert!(check.detail.contains("device_table"), "{}", check.detail);
        std::fs::write(features.join("device_table"), "").unwrap();
        assert_eq!(status(LayerMode::Auto), Status::Ok);
        assert_eq!(status(LayerMode::Erofs), Status::Ok);
    }

    #[test]
    fn ctr_outputs() {
        let v = "Client:\n  Version:  1.6.20~ds1\n  Revision: 1.6.20~ds1-1\n  Go version: go1.19.8\n\nServer:\n  Version:  2.1.9+unknown\n  Revision: \n  UUID: x\n";
        assert_eq!(parse_ctr_version(v).as_deref(), Some("2.1.9+unknown"));
        assert_eq!(parse_ctr_version("Client:\n  Version: 1\n"), None);
        let ls = "TYPE                                   ID        PLATFORMS      STATUS\n\
                  io.containerd.snapshotter.v1           overlayfs linux/amd64    ok\n\
                  io.containerd.snapshotter.v1           airgap    -              ok\n\
                  io.containerd.snapshotter.v1           btrfs     linux/amd64    skip\n";
        assert_eq!(
            parse_plugin_status(ls, "io.containerd.snapshotter.v1", "airgap").as_deref(),
            Some("ok")
        );
        assert_eq!(
            parse_plugin_status(ls, "io.containerd.snapshotter.v1", "btrfs").as_deref(),
            Some("skip")
        );
        assert_eq!(
            parse_plugin_status(ls, "io.containerd.snapshotter.v1", "zfs"),
            None
        );
    }

    #[test]
    fn dead_socket_and_mirror_fail_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let c = daemon_socket(&dir.path().join("none.sock"));
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("serve --socket"));
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s.sock")).unwrap();
        assert_eq!(daemon_socket(&dir.path().join("s.sock")).status, Status::Ok);
        drop(listener);
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(mirror(port).status, Status::Fail);
        assert_eq!(free_space(dir.path(), 1).status, Status::Ok);
        assert_eq!(free_space(dir.path(), u64::MAX).status, Status::Warn);
    }

    #[test]
    fn containerd_not_running() {
        let c = containerd(Path::new("/bin/false"), Path::new("/nonexistent.sock"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Status::Fail);
    }
}
