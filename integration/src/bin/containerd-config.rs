//! `containerd-config [--cri-snapshotter NAME] DIR SNAPSHOTTER_SOCKET [HOSTS_DIR]`: prints the
//! config.toml of a private containerd whose root, state and sockets live in
//! DIR, wired to the airgap snapshotter at SNAPSHOTTER_SOCKET (and CRI to
//! the registry hosts directory HOSTS_DIR), exactly as the end-to-end tests
//! write it: `containerd config default` of the containerd on PATH (or in
//! `AIRGAP_CONTAINERD_DIR`) with `airgap-snapshotter config --containerd
//! <its version>` merged in (`AIRGAP_SNAPSHOTTER_BIN` names that binary).
//! `--cri-snapshotter overlayfs` makes CRI unpack with containerd's own
//! snapshotter (the benchmark's baselines). Used by `scripts/demo.sh`
//! (the benchmark calls the same library code); the detected version goes to stderr.

use std::path::PathBuf;

use airgap_integration::containerd::{self, ContainerdOptions};
use anyhow::{bail, Result};

fn main() -> Result<()> {
    const USAGE: &str =
        "usage: containerd-config [--cri-snapshotter NAME] DIR SNAPSHOTTER_SOCKET [HOSTS_DIR]";
    let mut args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let mut cri_snapshotter = None;
    if args
        .first()
        .is_some_and(|a| a.as_os_str() == "--cri-snapshotter")
    {
        if args.len() < 2 {
            bail!(USAGE);
        }
        cri_snapshotter = Some(args[1].to_string_lossy().into_owned());
        args.drain(..2);
    }
    let (dir, socket, hosts_dir) = match args.as_slice() {
        [dir, socket] => (dir, socket, None),
        [dir, socket, hosts] => (dir, socket, Some(hosts.clone())),
        _ => bail!(USAGE),
    };
    let options = ContainerdOptions {
        hosts_dir,
        cri_snapshotter,
        ..Default::default()
    };
    print!("{}", containerd::private_config(dir, socket, &options)?);
    Ok(())
}
