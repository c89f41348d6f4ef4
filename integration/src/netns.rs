//! A test network of "hosts": network namespaces made with `ip`, removed on
//! drop. Nothing is added to the root namespace: the bridge lives in a
//! dedicated "switch" namespace `agsw-<pid>`, each node `ag<pid>-<n>` has a
//! veth pair whose other end is a port of that bridge, and its address
//! `10.213.<k>.<n>/24` exists only inside the node's namespace (with `lo`
//! up, so loopback listeners work there too).
//!
//! Processes enter a node with `setns(CLONE_NEWNET)` between fork and exec
//! ([`enter`]); the mount namespace stays the machine's, so the mounts the
//! daemon makes are seen by the containerd of the same node, and unix
//! sockets work across nodes (`ip netns exec` would unshare the mount
//! namespace too, hiding the daemon's mounts from containerd).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process;

/// Makes `cmd` run in the network namespace `netns` (a file such as
/// `/run/netns/NAME`), entered between fork and exec.
pub fn enter(cmd: &mut Command, netns: &Path) -> Result<()> {
    let file = std::fs::File::open(netns)
        .with_context(|| format!("opening the network namespace {}", netns.display()))?;
    // SAFETY: the closure only calls setns(2) on a descriptor opened
    // before the fork (close-on-exec, so it does not leak into the child).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A bridge in its own namespace and nodes attached to it.
pub struct TestNet {
    switch: String,
    subnet: u8,
    nodes: Vec<String>,
    /// Whether `/run/netns` was there before (`ip netns add` makes it, a
    /// mount of itself).
    run_netns_existed: bool,
}

/// One node of a [`TestNet`].
#[derive(Clone, Debug)]
pub struct Node {
    /// Its namespace's name (`ip netns list`).
    pub name: String,
    /// Its address on the test network.
    pub addr: String,
}

impl Node {
    /// `/run/netns/<name>`, for [`enter`].
    pub fn path(&self) -> PathBuf {
        Path::new(RUN_NETNS).join(&self.name)
    }

    /// A command that runs inside this node's namespace.
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(program);
        enter(&mut cmd, &self.path())?;
        Ok(cmd)
    }
}

const RUN_NETNS: &str = "/run/netns";

fn ip(args: &[&str]) -> Result<String> {
    process::run(Command::new("ip").args(args), Duration::from_secs(30))
}

impl TestNet {
    /// Creates the switch namespace with its bridge.
    pub fn new() -> Result<TestNet> {
        let pid = std::process::id();
        let net = TestNet {
            switch: format!("agsw-{pid}"),
            subnet: (pid % 200 + 20) as u8,
            nodes: Vec::new(),
            run_netns_existed: Path::new(RUN_NETNS).exists(),
        };
        ip(&["netns", "add", &net.switch])?;
        ip(&["-n", &net.switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.switch, "link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// The names of the namespaces this process's test networks use (for
    /// checking that none is left).
    pub fn leftovers() -> Result<Vec<String>> {
        let pid = std::process::id();
        let out = ip(&["netns", "list"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| *n == format!("agsw-{pid}") || n.starts_with(&format!("ag{pid}-")))
            .map(str::to_string)
            .collect())
    }

    /// Adds node number `n` (1..=250): its namespace, a veth pair into the
    /// switch, its address `10.213.<k>.<n>/24`.
    pub fn add_node(&mut self, n: u8) -> Result<Node> {
        let name = format!("ag{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        self.nodes.push(name.clone());
        let port = format!("p{n}");
        ip(&[
            "-n",
            &name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ])?;
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", &port, "up"])?;
        let addr = format!("10.213.{}.{n}", self.subnet);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(Node { name, addr })
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for name in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            // Whatever still runs in it (the parts own their processes and
            // stop them first; this is for a test that failed half-way).
            if let Ok(pids) = ip(&["netns", "pids", name]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if let Err(err) = ip(&["netns", "delete", name]) {
                eprintln!("warning: deleting the network namespace {name}: {err:#}");
            }
        }
        // Leave no `/run/netns` where there was none, unless someone else's
        // namespaces are in it now.
        let empty = std::fs::read_dir(RUN_NETNS).is_ok_and(|mut d| d.next().is_none());
        if !self.run_netns_existed && empty {
            let _ = nix::mount::umount2(RUN_NETNS, nix::mount::MntFlags::MNT_DETACH);
            if let Err(err) = std::fs::remove_dir(RUN_NETNS) {
                eprintln!("warning: removing {RUN_NETNS}: {err}");
            }
        }
    }
}
